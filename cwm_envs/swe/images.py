"""Layered, content-addressed images for SWE tasks, built with the network off.

    base        cwm-envs/base:SUITE (cwm_envs.sandbox.images: debootstrap + `docker import`, or a registry image)
    environment cwm-envs/swe-env:HASH        venv "testbed" with the repo version's dependencies
    instance    cwm-envs/swe-instance:ID-HASH the repository at base_commit in /testbed, installed

Each tag carries the hash of everything that goes into its layer, so an unchanged layer is never rebuilt.
Dependencies come from a wheelhouse built on the host (`pip download` / `pip wheel`, which reach PyPI) and are
installed inside with `--no-index --find-links`; `PIP_NO_INDEX`/`PIP_FIND_LINKS` stay set in the image so that
an eval script's own `pip install -e .` finds its build tools offline too. A thin shim provides
`/opt/miniconda3/bin/activate` and `conda activate testbed`, so SWE-bench's eval scripts run unchanged.

>>> split_repo("psf/requests"), split_repo("psf__requests")
(('psf', 'requests'), ('psf', 'requests'))
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

from cwm_envs.errors import InfraError, UsageError
from cwm_envs.swe.dataset import SWEInstance
from cwm_envs.swe.specs import EnvSpec, env_spec, read_repo_file

RECIPE_VERSION = 2                       # bump when the Dockerfiles below change
ENV_REPO, INSTANCE_REPO = "cwm-envs/swe-env", "cwm-envs/swe-instance"
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


def _hash(*parts) -> str:
    return hashlib.sha256(json.dumps([RECIPE_VERSION, *parts], sort_keys=True).encode()).hexdigest()[:12]


def cache_dir() -> Path:
    """Where wheelhouses and build contexts are cached: $CWM_CACHE or ~/.cache/cwm-envs."""
    return Path(os.environ.get("CWM_CACHE") or Path.home() / ".cache" / "cwm-envs")


def split_repo(name: str) -> tuple[str, str]:
    """"owner/name" or "owner__name" -> (owner, name)."""
    owner, sep, repo = name.partition("/") if "/" in name else name.partition("__")
    if not sep or not owner or not repo:
        raise UsageError(f"not a repository name (owner/name or owner__name): {name!r}")
    return owner, repo


def find_repo(instance: SWEInstance, repos_dir: str | Path | None) -> Path:
    """The local clone (bare or not) of an instance's repository.

    Looked for as `repos_dir/owner/name`, `owner__name`, `owner__name.git` or `name`; a row's own
    `repo_path` wins. The base commit must be in it.
    """
    owner, name = split_repo(instance.repo)
    candidates = [Path(instance.repo_path)] if instance.repo_path else []
    if repos_dir:
        root = Path(repos_dir)
        if not root.is_dir():
            raise UsageError(f"--repos {root}: no such directory")
        candidates += [root / owner / name, root / owner / f"{name}.git", root / f"{owner}__{name}",
                       root / f"{owner}__{name}.git", root / name, root / f"{name}.git"]
    if not candidates:
        raise UsageError(f"{instance.instance_id}: no repository source; pass --repos DIR (one clone per owner/name)")
    for path in candidates:
        if path.exists() and subprocess.run(["git", "-C", str(path), "rev-parse", "--git-dir"],
                                            capture_output=True).returncode == 0:
            kind = subprocess.run(["git", "-C", str(path), "cat-file", "-t", instance.base_commit],
                                  capture_output=True, text=True).stdout.strip()
            if kind != "commit":
                raise UsageError(f"{instance.instance_id}: base commit {instance.base_commit[:12]} is not in {path} "
                                 "(a shallow or stale clone?); fetch it first")
            return path
    raise UsageError(f"{instance.instance_id}: no clone of {instance.repo} under {repos_dir} "
                     f"(looked for {owner}/{name}, {owner}__{name}, {name})")


def _client():
    from cwm_envs.sandbox.images import _client as base_client

    return base_client()


def image_exists(client, tag: str) -> bool:
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


def build_wheelhouse(requirements: list[str] | tuple[str, ...], python: str, suite: str,
                     log: Callable[[str], None] = lambda _m: None, then: tuple[str, ...] = ()) -> Path:
    """Wheels for `requirements` (plus pip, setuptools, wheel) for the target Python, cached by content.

    `then` is a second set resolved on its own (SWE-bench installs a spec's pip_packages after the
    requirements file, and they may pin other versions of the same packages).

    Binary wheels are downloaded for the image's Python and glibc. pip evaluates environment markers with
    the host's Python, so a dependency that only an older Python needs can be missing: the image build
    names it and `add_to_wheelhouse` fetches it (see `_build_with_wheels`).
    """
    reqs = sorted(set(requirements) | {"pip", "setuptools", "wheel"})
    out = cache_dir() / "wheels" / _hash("wheels", python, suite, reqs, sorted(then))
    if (out / ".complete").exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    try:
        (tmp / "requirements.txt").write_text("\n".join(reqs) + "\n")
        _download(tmp, ["-r", str(tmp / "requirements.txt")], python, suite, log)
        if then:
            _download(tmp, list(then), python, suite, log)
        (tmp / ".complete").write_text(json.dumps({"python": python, "suite": suite}))
        if not out.exists():         # else another process finished the same wheelhouse first
            tmp.rename(out)
        return out
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def add_to_wheelhouse(wheels: Path, requirement: str, python: str, suite: str,
                      log: Callable[[str], None] = lambda _m: None) -> None:
    """Fetch one more requirement (and its dependencies) into an existing wheelhouse (one writer at a time)."""
    with _lock(f"wheels:{wheels}"):
        _download(wheels, [requirement.split(";")[0].strip()], python, suite, log)


def _download(dest: Path, what: list[str], python: str, suite: str, log: Callable[[str], None]) -> None:
    """`pip download` for the target platform; a requirement with no such wheel (an old sdist-only release)
    is built into a wheel on the host (`pip wheel --no-deps`, fine for pure-Python ones), then retried."""
    built: list[str] = []
    for _ in range(12):
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--dest", str(dest),
               "--find-links", str(dest), *_platform_args(python, suite), *what]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode == 0:
            return
        err = "\n".join(ln for ln in proc.stderr.splitlines() if "is ignored: it is neither" not in ln)
        missing = re.search(r"No matching distribution found for (\S+)", err)
        if not missing or missing.group(1) in built:
            raise InfraError(f"pip download for Python {python} failed: {err.strip()[-800:]}")
        req = missing.group(1)
        log(f"no Python {python} wheel for {req}; building one on the host")
        wheel = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--disable-pip-version-check",
                                "-w", str(dest), req], capture_output=True, text=True)
        if wheel.returncode != 0:
            raise InfraError(f"no wheel of {req} for Python {python}, and building one failed: "
                             f"{wheel.stderr.strip()[-500:]}")
        built.append(req)
    raise InfraError(f"pip download for Python {python}: too many sdist-only requirements")


# --- docker build ------------------------------------------------------------------------------------------

def docker_build(client, context: Path, tag: str, labels: dict[str, str], timeout: float = 3600,
                 nocache: bool = False) -> list[str]:
    """`docker build` of a generated context with the network off; returns the build log, raises InfraError."""
    import docker.errors

    lines: list[str] = []
    try:
        for chunk in client.api.build(path=str(context), tag=tag, network_mode="none", labels={**LABELS, **labels},
                                      rm=True, forcerm=True, decode=True, timeout=int(timeout), nocache=nocache):
            if "stream" in chunk:
                lines.append(chunk["stream"].rstrip("\n"))
            if "error" in chunk:
                detail = chunk.get("errorDetail", {}).get("message") or chunk["error"]
                tail = "\n".join(line for line in lines[-30:] if line.strip())
                raise InfraError(f"docker build {tag} failed: {detail.strip()}\n{tail}")
    except docker.errors.APIError as exc:
        raise InfraError(f"docker build {tag}: the engine refused ({exc.explanation or exc})") from exc
    return lines


def _build_with_wheels(client, ctx: Path, tag: str, labels: dict, wheels: Path, spec: EnvSpec, log,
                       nocache: bool = False) -> None:
    """docker_build with `wheels` copied in as ctx/wheels; a requirement the image's pip cannot find (a
    marker-only dependency the host's pip skipped) is fetched into the wheelhouse and the build retried."""
    for _ in range(8):
        shutil.rmtree(ctx / "wheels", ignore_errors=True)
        shutil.copytree(wheels, ctx / "wheels", ignore=shutil.ignore_patterns("requirements.txt", ".complete"))
        try:
            docker_build(client, ctx, tag, labels, nocache=nocache)
            return
        except InfraError as exc:
            missing = re.search(r"No matching distribution found for ([^\s;]+)", str(exc))
            if not missing:
                raise
            log(f"{tag}: the image's pip needs {missing.group(1)}; adding it to the wheelhouse")
            add_to_wheelhouse(wheels, missing.group(1), spec.python, spec.suite, log)
    raise InfraError(f"docker build {tag}: still missing requirements after 8 wheelhouse additions")


_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def _lock(key: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(key, threading.Lock())


def build_env_image(spec: EnvSpec, *, client=None, log: Callable[[str], None] = lambda _m: None,
                    rebuild: bool = False) -> str:
    """The environment layer for `spec` (built when missing, or anew without Docker's cache) -> its tag."""
    from cwm_envs.sandbox.images import ensure_base_image

    client = client or _client()
    # the offline Debian base by name (not CWM_BASE_IMAGE): the release decides the Python version
    base = ensure_base_image(f"cwm-envs/base:{spec.suite}", client=client, log=log)
    base_id = client.images.get(base).id
    key = _hash("env", base_id, spec.python, sorted(spec.requirements), list(spec.pip_packages), ACTIVATE_SHIM)
    tag = f"{ENV_REPO}:{key}"
    with _lock(tag):
        if image_exists(client, tag) and not rebuild:
            return tag
        wheels = build_wheelhouse(spec.requirements, spec.python, spec.suite, log=log, then=spec.pip_packages)
        n = len(spec.requirements) + len(spec.pip_packages)
        log(f"building {tag} (Python {spec.python} on {spec.suite}, {n} requirements)")
        with tempfile.TemporaryDirectory(prefix="cwm-swe-env-") as tmp:
            ctx = Path(tmp)
            (ctx / "requirements.txt").write_text("\n".join(spec.requirements) + "\n")
            (ctx / "pip_packages.txt").write_text("\n".join(spec.pip_packages) + "\n")
            (ctx / "activate").write_text(ACTIVATE_SHIM)
            (ctx / "Dockerfile").write_text(f"""FROM {base}
ENV PIP_NO_INDEX=1 PIP_FIND_LINKS=/opt/wheels PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
COPY wheels /opt/wheels
COPY activate /opt/miniconda3/bin/activate
COPY requirements.txt pip_packages.txt /opt/
RUN python3 -c 'import sys; v = "%d.%d" % sys.version_info[:2]; assert v == "{spec.python}", v' \\
 && python3 -m venv {VENV} \\
 && {VENV}/bin/python -m pip install -q -U pip \\
 && {VENV}/bin/python -m pip install -q -U setuptools wheel -r /opt/requirements.txt \\
 && if grep -q . /opt/pip_packages.txt; then {VENV}/bin/python -m pip install -q -r /opt/pip_packages.txt; fi
""")
            _build_with_wheels(client, ctx, tag, {"cwm-envs.swe.layer": "env", "cwm-envs.swe.key": key}, wheels,
                               spec, log, nocache=rebuild)
    return tag


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


def instance_tag(instance: SWEInstance, key: str) -> str:
    return f"{INSTANCE_REPO}:{instance.instance_id.lower()[:100]}-{key[:8]}"


def build_instance_image(instance: SWEInstance, repos_dir: str | Path | None = None, *, client=None,
                         log: Callable[[str], None] = lambda _m: None, timings: dict | None = None,
                         rebuild: bool = False) -> str:
    """The instance image (environment + repo at base_commit in /testbed, installed) -> its tag.

    Cached by content hash; `rebuild` builds both layers anew without Docker's cache (wheels stay cached);
    `timings` (if given) receives the seconds spent on each layer.
    """
    client = client or _client()
    repo_dir = find_repo(instance, repos_dir)
    spec = env_spec(instance, repo_dir)
    t0 = time.perf_counter()
    env_tag = build_env_image(spec, client=client, log=log, rebuild=rebuild)
    t1 = time.perf_counter()
    build_reqs = build_requirements(repo_dir, instance.base_commit)
    key = _hash("instance", client.images.get(env_tag).id, instance.repo, instance.base_commit,
                spec.pre_install, spec.install, sorted(build_reqs))
    tag = instance_tag(instance, key)
    with _lock(tag):
        if rebuild or not image_exists(client, tag):
            log(f"building {tag}")
            with tempfile.TemporaryDirectory(prefix="cwm-swe-inst-") as tmp:
                ctx = Path(tmp)
                _prepare_testbed(repo_dir, instance.base_commit, ctx / "testbed")
                wheels = build_wheelhouse(build_reqs, spec.python, spec.suite, log=log)
                steps = ["source /opt/miniconda3/bin/activate", "conda activate testbed", "cd /testbed",
                         *spec.pre_install, *spec.install,
                         "git config --global user.email setup@swebench.config",
                         "git config --global user.name SWE-bench",
                         "git commit --allow-empty -qam SWE-bench"]
                (ctx / "setup.sh").write_text("#!/bin/bash\nset -euxo pipefail\n" + "\n".join(steps) + "\n")
                (ctx / "Dockerfile").write_text(f"""FROM {env_tag}
ENV PIP_FIND_LINKS="/opt/wheels /opt/wheels-instance"
COPY wheels /opt/wheels-instance
COPY testbed /testbed
COPY setup.sh /root/setup.sh
RUN /bin/bash /root/setup.sh
WORKDIR /testbed
""")
                _build_with_wheels(client, ctx, tag, {"cwm-envs.swe.layer": "instance", "cwm-envs.swe.key": key,
                                                      "cwm-envs.swe.instance": instance.instance_id,
                                                      "cwm-envs.swe.env": env_tag}, wheels, spec, log,
                                   nocache=rebuild)
    if timings is not None:
        timings.update(env_s=round(t1 - t0, 2), instance_s=round(time.perf_counter() - t1, 2),
                       notes=list(spec.notes), python=spec.python, suite=spec.suite)
    return tag
