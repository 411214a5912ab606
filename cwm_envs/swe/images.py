"""Layered, content-addressed images for SWE tasks, built with the network off.

    base        cwm-envs/base:SUITE (cwm_envs.sandbox.images: debootstrap + `docker import`, or a registry image)
    tools       cwm-envs/swe-tools:SUITE-HASH  compilers, Python headers, a spec's Debian packages (shared)
    environment cwm-envs/swe-env:HASH        venv "testbed": one per (repo, version, Python), from its locks
    instance    cwm-envs/swe-instance:ID-HASH the repository at base_commit in /testbed, installed

Each tag carries the hash of everything that goes into its layer, so an unchanged layer is never rebuilt.
Requirements are resolved on the host as of the environment's date (resolve.py: `uv pip compile
--exclude-newer`), their exact releases downloaded into a wheelhouse (`pip download --no-deps` for the image's
Python and glibc; an sdist where no wheel fits, built in the image by the tools layer), and installed inside
with `--no-index --find-links --no-deps`. The only layer built with a network is the tools layer (apt from
the machine's Debian mirror); `PIP_NO_INDEX`/`PIP_FIND_LINKS` stay set in the image so that
an eval script's own `pip install -e .` finds its build tools offline too. A thin shim provides
`/opt/miniconda3/bin/activate` and `conda activate testbed`, so SWE-bench's eval scripts run unchanged.

The environment is a venv, and a venv is found only through the path its interpreter was started by: a link
to it elsewhere (tox-current-env links `.tox/py39/bin/python` to it, `os.path.realpath(sys.executable)`)
starts the base interpreter without the venv's packages. So the base interpreter's own site directory holds
a `.pth` that adds the venv's site-packages: however the interpreter is reached, it sees the environment,
as a conda prefix's interpreter does. (A conda-like prefix copied from Debian's Python does not work as one:
Debian's patched site/sysconfig send pip's installs to PREFIX/local/lib/pythonX.Y/dist-packages.)
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from cwm_envs.errors import InfraError, UsageError
from cwm_envs.swe.cache import cache_dir, named_lock
from cwm_envs.swe.dataset import SWEInstance
from cwm_envs.swe.failures import CompileError, MissingDistribution, ResolverConflict, classify
from cwm_envs.swe.repos import find_repo
from cwm_envs.swe.resolve import TOOLS, Lock, fetch_sdist, req_name, resolve
from cwm_envs.swe.specs import EnvSpec, env_spec, read_repo_file

RECIPE_VERSION = 5                       # bump when the Dockerfiles below change
TOOLS_RECIPE_VERSION = 3                 # the tools layer's own (its Dockerfile changes seldom; it is slow to build)
TOOLS_REPO, ENV_REPO, INSTANCE_REPO = "cwm-envs/swe-tools", "cwm-envs/swe-env", "cwm-envs/swe-instance"
TOOL_PACKAGES = ("build-essential", "python3-dev", "pkg-config", "locales")   # the build-tools layer
# Not the bare `cwm-envs` key: an image's labels pass to its containers (build steps included), and the
# docker sandbox's gc removes `cwm-envs` containers that have no live owner.
LABELS = {"cwm-envs.image": "swe"}
VENV = "/opt/miniconda3/envs/testbed"
GLIBC = {"bullseye": 31, "bookworm": 36}  # manylinux wheels a suite's glibc can load

# `source /opt/miniconda3/bin/activate; conda activate testbed` without conda: a venv under the same path.
ACTIVATE_SHIM = r"""# cwm-envs: a conda stand-in so SWE-bench eval scripts run unchanged (envs are venvs).
conda() {
    case "${1:-}" in
        activate)
            local env="${2:-testbed}"
            if [ ! -x "/opt/miniconda3/envs/$env/bin/python" ]; then
                echo "conda shim: no environment '$env'" >&2; return 1
            fi
            export VIRTUAL_ENV="/opt/miniconda3/envs/$env" CONDA_DEFAULT_ENV="$env"
            export PATH="$VIRTUAL_ENV/bin:${PATH:-/usr/bin:/bin}"
            hash -r 2>/dev/null || true ;;
        deactivate)
            if [ -n "${VIRTUAL_ENV:-}" ]; then PATH="${PATH#$VIRTUAL_ENV/bin:}"; fi
            unset VIRTUAL_ENV CONDA_DEFAULT_ENV ;;
        *)
            echo "conda shim: 'conda ${1:-}' is not available in cwm-envs images (offline venvs)" >&2
            return 1 ;;
    esac
}
"""


def _hash(*parts, version: int = RECIPE_VERSION) -> str:
    return hashlib.sha256(json.dumps([version, *parts], sort_keys=True).encode()).hexdigest()[:12]


def _client():
    from cwm_envs.sandbox.images import _client as base_client

    return base_client()


def image_exists(client, tag: str) -> bool:
    """Whether the engine already holds `tag`, so a build can be skipped."""
    import docker.errors

    try:
        client.images.get(tag)
        return True
    except docker.errors.ImageNotFound:
        return False


# --- wheelhouse ---------------------------------------------------------------------------------------------

def _platform_args(python: str, suite: str) -> list[str]:
    major, minor = python.split(".")[:2]
    args = ["--only-binary=:all:", "--python-version", f"{major}.{minor}", "--implementation", "cp"]
    for abi in (f"cp{major}{minor}", "abi3", "none"):
        args += ["--abi", abi]
    plats = [f"manylinux_2_{v}_x86_64" for v in range(GLIBC.get(suite, 31), 4, -1)]
    plats += ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64", "linux_x86_64", "any"]
    return args + sum((["--platform", p] for p in plats), [])


def build_wheelhouse(pins: list[str] | tuple[str, ...], python: str, suite: str,
                     log: Callable[[str], None] = lambda _m: None) -> Path:
    """Wheels (or, where a release has none for the image, its sdist) of exactly these `name==version`
    pins, for the image's Python and glibc; cached by content. Dependencies are not followed: the pins
    come from a complete lock (resolve.py)."""
    pins = sorted(set(pins))
    out = cache_dir() / "wheels" / _hash("wheelhouse", python, suite, pins)
    if (out / ".complete").exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    try:
        if pins:
            _download(tmp, pins, python, suite, log)
        (tmp / ".complete").write_text(json.dumps({"python": python, "suite": suite, "pins": pins}))
        if not out.exists():         # else another process finished the same wheelhouse first
            tmp.rename(out)
        return out
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def add_to_wheelhouse(wheels: Path, requirement: str, spec: EnvSpec, date: str, prefer: tuple[str, ...] = (),
                      log: Callable[[str], None] = lambda _m: None) -> tuple[str, ...]:
    """Resolve one more requirement as of `date` (keeping the `prefer` pins where they fit) and fetch the
    packages of its lock that the wheelhouse lacks (one writer at a time). Returns the new pins."""
    lock = resolve([requirement.split(";")[0].strip()], python=spec.python, glibc=GLIBC.get(spec.suite, 31),
                   date=date, prefer=prefer, log=log, what=f"missing {requirement}")
    have = {p.lower() for p in prefer}
    new = tuple(p for p in lock.pins if p not in have)
    with named_lock(f"wheels:{wheels}"):
        if new:
            _download(wheels, list(new), spec.python, spec.suite, log)
    return new


def _download(dest: Path, pins: list[str], python: str, suite: str, log: Callable[[str], None]) -> None:
    """`pip download --no-deps` of pinned releases for the target platform (one call per round of distinct
    names: two layers may pin two versions of one package); a release with no such wheel (old sdist-only
    ones) comes as its sdist, which the image builds with its build tools."""
    rounds: list[list[str]] = []
    for pin in dict.fromkeys(pins):
        name = req_name(pin)
        slot = next((r for r in rounds if all(req_name(p) != name for p in r)), None)
        if slot is None:
            rounds.append(slot := [])
        slot.append(pin)
    for todo in rounds:
        _download_round(dest, todo, python, suite, log)


def _download_round(dest: Path, todo: list[str], python: str, suite: str, log: Callable[[str], None]) -> None:
    sdists: list[str] = []
    todo = list(todo)
    for _ in range(len(todo) + 1):
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--disable-pip-version-check",
               "--dest", str(dest), *_platform_args(python, suite), *todo]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode == 0:
            break
        err = "\n".join(ln for ln in proc.stderr.splitlines() if "is ignored: it is neither" not in ln)
        missing = re.search(r"No matching distribution found for (\S+)", err)
        if not missing or missing.group(1) not in todo:
            raise MissingDistribution(f"pip download for Python {python} failed: {err.strip()[-800:]}")
        todo.remove(missing.group(1))
        sdists.append(missing.group(1))
        if not todo:
            break
    for req in sdists:
        log(f"no Python {python} wheel for {req}; the image builds it from its sdist")
        name, _, version = req.partition("==")
        try:
            blob, _, filename = fetch_sdist(name, version)
        except Exception as exc:
            raise MissingDistribution(f"{req}: neither a Python {python} wheel nor an sdist on the index "
                                      f"({type(exc).__name__}: {str(exc)[:300]})") from None
        (dest / filename).write_bytes(blob)
        with open(dest / ".sdists", "a") as fh:     # the env layer tries these apart (they may not compile)
            fh.write(req + "\n")


# --- docker build ------------------------------------------------------------------------------------------

def docker_build(client, context: Path, tag: str, labels: dict[str, str], timeout: float = 3600,
                 nocache: bool = False, network: str = "none") -> list[str]:
    """`docker build` of a generated context (network off unless asked); returns the log, raises InfraError."""
    import docker.errors

    lines: list[str] = []
    try:
        for chunk in client.api.build(path=str(context), tag=tag, network_mode=network, labels={**LABELS, **labels},
                                      rm=True, forcerm=True, decode=True, timeout=int(timeout), nocache=nocache):
            if "stream" in chunk:
                lines.append(chunk["stream"].rstrip("\n"))
            if "error" in chunk:
                detail = chunk.get("errorDetail", {}).get("message") or chunk["error"]
                tail = "\n".join(line for line in lines[-40:] if line.strip())
                raise InfraError(f"docker build {tag} failed: {detail.strip()}\n{tail}")
    except docker.errors.APIError as exc:
        raise InfraError(f"docker build {tag}: the engine refused ({exc.explanation or exc})") from exc
    return lines


def _build_with_wheels(client, ctx: Path, tag: str, labels: dict, wheels: Path, spec: EnvSpec, log,
                       nocache: bool = False, date: str = "", prefer: tuple[str, ...] = ()) -> list[str]:
    """docker_build with `wheels` copied in as ctx/wheels. A requirement the image's pip cannot find (a
    dependency of the repository that the lock did not foresee, e.g. one a pre_install step adds) is
    resolved as of `date`, fetched into the wheelhouse, and the build retried. A failed build that shows a
    compiler's or a wheel build's error is a CompileError."""
    for _ in range(10):
        shutil.rmtree(ctx / "wheels", ignore_errors=True)
        shutil.copytree(wheels, ctx / "wheels", ignore=shutil.ignore_patterns("requirements.txt", ".complete",
                                                                               ".sdists"))
        try:
            return docker_build(client, ctx, tag, labels, nocache=nocache)
        except InfraError as exc:
            missing = re.search(r"No matching distribution found for ([^\s;]+)", str(exc))
            if not missing:
                if classify(str(exc)) == "compile error":
                    raise CompileError(str(exc)) from None
                raise
            log(f"{tag}: the image's pip needs {missing.group(1)}; resolving it as of {date[:10] or 'today'}")
            prefer = prefer + add_to_wheelhouse(wheels, missing.group(1), spec, date, prefer, log)
    raise MissingDistribution(f"docker build {tag}: still missing requirements after 10 wheelhouse additions")


def build_tools_image(suite: str, apt_packages: tuple[str, ...] = (), *, client=None,
                      log: Callable[[str], None] = lambda _m: None) -> str:
    """The build-tools layer shared by every environment of a Debian suite: compilers and Python headers
    (C extensions of astropy, matplotlib, scikit-learn and old sdists build in the image), plus the Debian
    packages a spec's pre_install asks for. apt reaches the machine's Debian mirror over plain HTTP."""
    from cwm_envs.sandbox.images import ensure_base_image

    client = client or _client()
    base = ensure_base_image(f"cwm-envs/base:{suite}", client=client, log=log)
    packages = sorted(set(TOOL_PACKAGES) | set(apt_packages))
    key = _hash("tools", client.images.get(base).id, packages, version=TOOLS_RECIPE_VERSION)
    tag = f"{TOOLS_REPO}:{suite}-{key}"
    with named_lock(tag):
        if image_exists(client, tag):
            return tag
        log(f"building {tag} ({len(packages)} Debian packages)")
        with tempfile.TemporaryDirectory(prefix="cwm-swe-tools-") as tmp:
            ctx = Path(tmp)
            (ctx / "Dockerfile").write_text(f"""FROM {base}
RUN apt-get update -q \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends {' '.join(packages)} \\
 && rm -rf /var/lib/apt/lists/*
""")
            try:
                docker_build(client, ctx, tag, {"cwm-envs.swe.layer": "tools", "cwm-envs.swe.key": key},
                             network="bridge")
            except InfraError as exc:
                raise InfraError(f"the build-tools layer for {suite} could not be built (apt needs the Debian "
                                 f"mirror): {str(exc)[-600:]}") from None
    return tag


def env_locks(spec: EnvSpec, log: Callable[[str], None] = lambda _m: None) -> tuple[Lock, Lock, Lock]:
    """The three locks of an environment layer, installed in this order as SWE-bench installs them:
    build tools, the requirements (file or spec packages), then the spec's pip_packages (which may re-pin)."""
    glibc = GLIBC.get(spec.suite, 31)
    tools = resolve(list(TOOLS), python=spec.python, glibc=glibc, date=spec.date, log=log, what="build tools")
    reqs = resolve(spec.requirements, python=spec.python, glibc=glibc, date=spec.date, log=log,
                   what="requirements")
    then = resolve(spec.pip_packages, python=spec.python, glibc=glibc, date=spec.date, log=log,
                   what="pip_packages")
    return tools, reqs, then


def build_env_image(spec: EnvSpec, *, client=None, log: Callable[[str], None] = lambda _m: None,
                    rebuild: bool = False, info: dict | None = None) -> str:
    """The environment layer for `spec` (built when missing, or anew without Docker's cache) -> its tag.

    `info` (if given) receives the locks' notes, the dropped requirements and the pins installed."""
    client = client or _client()
    tools_tag = build_tools_image(spec.suite, spec.apt_packages, client=client, log=log)
    locks = env_locks(spec, log)
    if info is not None:
        info.update(lock_notes=[n for lk in locks for n in lk.notes],
                    dropped=[d for lk in locks for d in lk.dropped],
                    pins=sorted({p for lk in locks for p in lk.pins}))
    key = _hash("env", client.images.get(tools_tag).id, spec.python, [lk.pins for lk in locks], ACTIVATE_SHIM)
    tag = f"{ENV_REPO}:{key}"
    record = cache_dir() / "envs" / f"{key}.json"      # what the build could not compile (not in the image)
    with named_lock(tag):
        if image_exists(client, tag) and not rebuild:
            if info is not None and record.exists():
                info["dropped"] += json.loads(record.read_text()).get("not_built", [])
            return tag
        wheels = build_wheelhouse([p for lk in locks for p in lk.pins], spec.python, spec.suite, log=log)
        sdists = set((wheels / ".sdists").read_text().split()) if (wheels / ".sdists").exists() else set()
        log(f"building {tag} (Python {spec.python} on {spec.suite}, {sum(len(lk.pins) for lk in locks)} pins, "
            f"{len(sdists)} from sdists)")
        with tempfile.TemporaryDirectory(prefix="cwm-swe-env-") as tmp:
            ctx = Path(tmp)
            for name, lk in zip(("lock-tools.txt", "lock-requirements.txt", "lock-pip-packages.txt"), locks):
                (ctx / name).write_text("".join(p + "\n" for p in lk.pins if p not in sdists))
            (ctx / "lock-sdists.txt").write_text("".join(p + "\n" for p in sorted(sdists)))
            (ctx / "activate").write_text(ACTIVATE_SHIM)
            install = f"{VENV}/bin/python -m pip install -q --no-deps"
            (ctx / "Dockerfile").write_text(f"""FROM {tools_tag}
ENV PIP_NO_INDEX=1 PIP_FIND_LINKS=/opt/wheels PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
COPY wheels /opt/wheels
COPY activate /opt/miniconda3/bin/activate
COPY lock-*.txt /opt/cwm-lock/
RUN python3 -c 'import sys; v = "%d.%d" % sys.version_info[:2]; assert v == "{spec.python}", v' \\
 && python3 -m venv {VENV} \\
 && echo "import site; site.addsitedir('{VENV}/lib/python{spec.python}/site-packages')" \\
    > /usr/lib/python3/dist-packages/cwm-testbed.pth \\
 && {install} -r /opt/cwm-lock/lock-tools.txt \\
 && {install} -r /opt/cwm-lock/lock-requirements.txt \\
 && {install} -r /opt/cwm-lock/lock-pip-packages.txt
# sdists build here, each on its own: one that does not compile (a C library missing) is left out and named
RUN for req in $(cat /opt/cwm-lock/lock-sdists.txt); do \
      {install} "$req" >/tmp/sdist.log 2>&1 || {{ echo "cwm: could not build $req"; tail -5 /tmp/sdist.log; }}; \
    done; rm -f /tmp/sdist.log
""")
            lines = _build_with_wheels(client, ctx, tag, {"cwm-envs.swe.layer": "env", "cwm-envs.swe.key": key},
                                       wheels, spec, log, nocache=rebuild, date=spec.date,
                                       prefer=tuple(p for lk in locks for p in lk.pins))
        not_built = sorted({m.group(1) for ln in lines for m in [re.search(r"^cwm: could not build (\S+)", ln)] if m})
        if not_built:
            log(f"{tag}: left out (did not compile): {', '.join(not_built)}")
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps({"not_built": not_built}))
        if info is not None and not_built:
            info["dropped"] += not_built
            info["lock_notes"].append(f"sdists that did not compile, left out: {', '.join(not_built)}")
    return tag


def build_env_images(instances: list[SWEInstance], repos_dir: str | Path | None = None, *, client=None,
                     log: Callable[[str], None] = lambda _m: None) -> list[dict]:
    """The environment layer of every (repo, version) among `instances`, without building instances.

    Where no clone is at hand (repositories too large to bring to the machine) the requirement files come
    from the version's release sdist, and the date is the newest `created_at` of the version's instances.
    Returns one row per environment: tag, Python, seconds, size, notes (or the failure and its class)."""
    from tqdm import tqdm

    from cwm_envs.swe.specs import env_spec_for

    client = client or _client()
    groups: dict[tuple[str, str], list[SWEInstance]] = {}
    for inst in instances:
        groups.setdefault((inst.repo, inst.version), []).append(inst)
    rows = []
    for (repo, version), insts in tqdm(sorted(groups.items()), desc="swe env images", unit="image",
                                       disable=not sys.stderr.isatty()):   # builds take minutes: an ETA
        t = time.perf_counter()
        row = {"repo": repo, "version": version, "instances": len(insts)}
        try:
            try:
                repo_dir = find_repo(insts[0], repos_dir) if repos_dir else None
            except UsageError:
                repo_dir = None
            env_commit = insts[0].environment_setup_commit if repo_dir else ""
            date = "" if repo_dir else max(i.created_at for i in insts)
            spec = env_spec_for(repo, version, repo_dir, env_commit, date)
            info: dict = {}
            tag = build_env_image(spec, client=client, log=log, info=info)
            row.update(tag=tag, python=spec.python, date=spec.date[:10], pins=len(info.get("pins", ())),
                       dropped=", ".join(info.get("dropped", ())) or "-", failure="",
                       size_mb=round(client.images.get(tag).attrs["Size"] / 1e6, 1), notes="; ".join(spec.notes))
        except UsageError:
            raise
        except Exception as exc:
            row.update(tag="", failure=classify(exc), reason=f"{type(exc).__name__}: {str(exc)[:500]}")
        row["seconds"] = round(time.perf_counter() - t, 1)
        log(f"{repo} {version}: {row.get('tag') or row['failure']} ({row['seconds']} s)")
        rows.append(row)
    return rows


def _prepare_testbed(repo_dir: Path, commit: str, dest: Path) -> None:
    """A clone of `repo_dir` holding `commit` and its history only: no remotes, other branches, reflog, and
    only the tags of ancestors (versioning tools such as setuptools_scm read them, as in the official images)."""
    def git(*args, cwd=dest):
        proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise InfraError(f"git {' '.join(args[:3])} failed: {proc.stderr.strip()[-400:]}")
        return proc.stdout

    dest.mkdir(parents=True)
    git("init", "-q")
    src = str(Path(repo_dir).resolve())
    tags = git("tag", "--merged", commit, cwd=src).split()
    git("fetch", "-q", "--no-tags", src, commit, *(f"refs/tags/{t}:refs/tags/{t}" for t in tags))
    git("-c", "advice.detachedHead=false", "checkout", "-q", "-B", "main", commit)
    git("reflog", "expire", "--expire=now", "--all")


def build_requirements(repo_dir: Path, commit: str) -> list[str]:
    """`[build-system] requires` of the repo's pyproject.toml at `commit`: what `pip install -e .` fetches."""
    text = read_repo_file(repo_dir, commit, "pyproject.toml")
    if not text:
        return []
    try:
        import tomllib
    except ImportError:                          # Python 3.10
        return []
    try:
        return list(tomllib.loads(text).get("build-system", {}).get("requires", []))
    except tomllib.TOMLDecodeError:
        return []


def install_extras(install: tuple[str, ...]) -> str:
    """The extras an install command asks of the repository itself ("pip install -e .[test]" -> "[test]").

    >>> install_extras(("python -m pip install -e .[test] --verbose",)), install_extras(("python setup.py develop",))
    ('[test]', '')
    """
    for cmd in install:
        m = re.search(r"pip install\b.*?\s\.(\[[\w,.-]+\])?(?:\s|$)", cmd)
        if m:
            return m.group(1) or ""
    return ""


def _safe_edits(pre_install: tuple[str, ...]) -> list[str]:
    """The pre_install steps that only edit the checkout's files (`sed -i`, guarded by `grep -q`): run on a
    copy on the host too, so the instance's dependencies resolve from the edited setup.py / setup.cfg.

    >>> _safe_edits(("sed -i 's/Jinja2>=2.3/Jinja2<3.0/' setup.py", "apt-get install -y x", "sed -i s/a/b/ f; rm -rf /"))
    ["sed -i 's/Jinja2>=2.3/Jinja2<3.0/' setup.py"]
    """
    import shlex

    keep = []
    for step in pre_install:
        try:
            tokens = list(shlex.shlex(step, posix=True, punctuation_chars=True))
        except ValueError:
            continue
        commands, current = [], []
        for tok in tokens + ["&&"]:
            if tok in ("&&", "||"):
                commands.append(current)
                current = []
            else:
                current.append(tok)
        ok = all(cmd and not any(set(t) <= set("();<>|&") for t in cmd)
                 and ((cmd[0] == "sed" and "-i" in cmd) or (cmd[0] == "grep" and "-q" in cmd)) for cmd in commands)
        if ok:
            keep.append(step)
    return keep


def instance_date(instance: SWEInstance, repo_dir: Path) -> str:
    """The date an instance's own dependencies resolve as of: its `created_at`, or its base commit's date when
    that is later (the code can have moved on since the issue was filed)."""
    from cwm_envs.swe.resolve import iso_date
    from cwm_envs.swe.specs import commit_date

    dates = [iso_date(d) for d in (instance.created_at, commit_date(repo_dir, instance.base_commit)) if d]
    return max(dates) if dates else ""


def instance_lock(instance: SWEInstance, spec: EnvSpec, testbed: Path, build_reqs: list[str],
                  prefer: tuple[str, ...], log: Callable[[str], None], date: str = "") -> tuple[Lock | None, str]:
    """The repository's own dependencies (`.[extras]` and its build requirements) as of the instance's date,
    keeping the environment's pins where they fit -> (lock, note). None when uv cannot read the project's
    metadata on the host (then the image's pip finds them, date-resolved one at a time)."""
    date = date or instance.created_at or spec.date
    for step in _safe_edits(spec.pre_install):
        subprocess.run(["bash", "-c", step], cwd=testbed, capture_output=True, timeout=60)
    reqs = [f"./{testbed.name}{install_extras(spec.install)}", *build_reqs]
    try:
        lock = resolve(reqs, python=spec.python, glibc=GLIBC.get(spec.suite, 31), date=date, prefer=prefer,
                       log=log, what=f"{instance.instance_id} dependencies", cwd=testbed.parent, timeout=240)
    except (ResolverConflict, MissingDistribution):
        raise
    except InfraError as exc:
        note = f"the repository's dependencies were not resolved on the host ({str(exc)[:200]}); pip in the image " \
               "found them, each resolved as of the instance's date"
        log(note)
        return None, note
    finally:
        subprocess.run(["git", "checkout", "-q", "--", "."], cwd=testbed, capture_output=True)
    return lock, ""


def dropped_needed_by_tests(instance: SWEInstance, repo_dir: Path, dropped: list[str]) -> list[str]:
    """The dropped requirements (not on the index) that the instance's test files import outright."""
    if not dropped:
        return []
    texts = [instance.test_patch] + [read_repo_file(repo_dir, instance.base_commit, f) or ""
                                     for f in instance.test_files]
    needed = []
    for req in dropped:
        module = req_name(req).replace("-", "_")
        pattern = rf"^[+ ]?(?:import|from)\s+{re.escape(module)}\b"   # top level: an unconditional need
        if any(re.search(pattern, t, re.M | re.I) for t in texts):
            needed.append(req)
    return needed


def instance_tag(instance: SWEInstance, key: str) -> str:
    """The instance image's tag: its id plus the build key, so a changed recipe gets a new image."""
    return f"{INSTANCE_REPO}:{instance.instance_id.lower()[:100]}-{key[:8]}"


def build_instance_image(instance: SWEInstance, repos_dir: str | Path | None = None, *, client=None,
                         log: Callable[[str], None] = lambda _m: None, timings: dict | None = None,
                         rebuild: bool = False) -> str:
    """The instance image (environment + repo at base_commit in /testbed, installed) -> its tag.

    Cached by content hash; `rebuild` builds both layers anew without Docker's cache (wheels stay cached);
    `timings` (if given) receives the seconds spent on each layer, the Python used and every note (versions
    chosen, requirements dropped, substitutions).
    """
    client = client or _client()
    repo_dir = find_repo(instance, repos_dir)
    spec = env_spec(instance, repo_dir)
    t0 = time.perf_counter()
    env_info: dict = {}
    env_tag = build_env_image(spec, client=client, log=log, rebuild=rebuild, info=env_info)
    needed = dropped_needed_by_tests(instance, repo_dir, env_info.get("dropped", []))
    if needed:
        raise MissingDistribution(f"{instance.instance_id}: its tests import {', '.join(needed)}, which the package "
                                  "index does not provide (conda-only)")
    t1 = time.perf_counter()
    build_reqs = build_requirements(repo_dir, instance.base_commit)
    key = _hash("instance", client.images.get(env_tag).id, instance.repo, instance.base_commit, instance.created_at,
                spec.pre_install, spec.install, sorted(build_reqs))
    tag = instance_tag(instance, key)
    notes = list(spec.notes) + [n for n in env_info.get("lock_notes", []) if "cutoff moved" in n or "dropped" in n]
    with named_lock(tag):
        if rebuild or not image_exists(client, tag):
            log(f"building {tag}")
            with tempfile.TemporaryDirectory(prefix="cwm-swe-inst-") as tmp:
                ctx = Path(tmp)
                _prepare_testbed(repo_dir, instance.base_commit, ctx / "testbed")
                prefer = tuple(env_info.get("pins", ()))
                date = instance_date(instance, repo_dir) or spec.date
                lock, note = instance_lock(instance, spec, ctx / "testbed", build_reqs, prefer, log, date)
                notes += [note] if note else []
                pins = [p for p in lock.pins if p not in prefer] if lock else []
                wheels = build_wheelhouse(pins, spec.python, spec.suite, log=log)
                steps = ["source /opt/miniconda3/bin/activate", "conda activate testbed", "cd /testbed",
                         *spec.pre_install, *spec.install,
                         "git config --global user.email setup@swebench.config",
                         "git config --global user.name SWE-bench",
                         "git commit --allow-empty -qam SWE-bench"]
                (ctx / "setup.sh").write_text("#!/bin/bash\nset -euxo pipefail\n" + "\n".join(steps) + "\n")
                (ctx / "lock-instance.txt").write_text("".join(p + "\n" for p in (lock.pins if lock else ())))
                (ctx / "Dockerfile").write_text(f"""FROM {env_tag}
ENV PIP_FIND_LINKS="/opt/wheels /opt/wheels-instance"
COPY wheels /opt/wheels-instance
COPY lock-instance.txt /opt/cwm-lock/
COPY testbed /testbed
COPY setup.sh /root/setup.sh
RUN /bin/bash /root/setup.sh
WORKDIR /testbed
""")
                _build_with_wheels(client, ctx, tag, {"cwm-envs.swe.layer": "instance", "cwm-envs.swe.key": key,
                                                      "cwm-envs.swe.instance": instance.instance_id,
                                                      "cwm-envs.swe.env": env_tag}, wheels, spec, log,
                                   nocache=rebuild, date=date,
                                   prefer=prefer + tuple(lock.pins if lock else ()))
    if timings is not None:
        timings.update(env_s=round(t1 - t0, 2), instance_s=round(time.perf_counter() - t1, 2), notes=notes,
                       python=spec.python, suite=spec.suite, env_tag=env_tag, tag=tag,
                       dropped=env_info.get("dropped", []))
    return tag
