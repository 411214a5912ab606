"""What an instance's environment needs: Python version, requirements, install commands.

SWE-bench 5.x no longer ships the per-version dependency specs (`MAP_REPO_VERSION_TO_SPECS`); 4.1.0 does.
Only that data is vendored, as `specs_swebench_4_1_0.json` (MIT, attribution inside), so the project keeps one
`swebench` dependency (5.x, for parsers and grading). The official images use conda; ours use a venv in a
Debian base that has the spec's Python (bullseye: 3.9, bookworm: 3.11). Where no base has the exact version,
the nearest is used and the substitution is said in `EnvSpec.notes`, never silently.

>>> spec = env_spec_for("psf/requests", "2.3")
>>> spec.python, spec.suite, spec.requirements, spec.pip_packages
('3.9', 'bullseye', ('pytest',), ())
"""
from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from cwm_envs.errors import UsageError

SPECS_FILE = Path(__file__).with_name("specs_swebench_4_1_0.json")
SUITES = {"3.9": "bullseye", "3.11": "bookworm"}   # Debian releases the offline base can be built from
DEFAULT_PYTHON = "3.11"
# conda packages that have no PyPI twin under the same name (dropped, and said so in the notes)
CONDA_ONLY = {"mkl", "mkl-service", "blas", "libblas", "openblas", "compilers", "cxx-compiler", "c-compiler",
              "gxx_linux-64", "gcc_linux-64", "libgfortran", "nomkl", "python", "pip", "setuptools_scm_git_archive",
              # GUI toolkits and system libraries conda ships (no usable wheel; tests skip without them)
              "pyqt", "wxpython", "pygobject", "gtk3", "ghostscript", "graphviz", "cairo", "ffmpeg", "imagemagick"}


# conda names whose PyPI project has another name (PyPI's `iris` is a placeholder that raises on import)
CONDA_TO_PYPI = {"iris": "scitools-iris", "pytables": "tables", "matplotlib-base": "matplotlib", "dask-core": "dask",
                 "python-graphviz": "graphviz", "pytorch": "torch", "libnetcdf": "netCDF4", "pyqt5": "PyQt5"}


# PyPI packages that load a C library conda installs beside them: its Debian package joins the tools layer
# (cfgrib without ecCodes raises RuntimeError on import, which xarray's importorskip does not catch)
SYSTEM_LIBS = {"cfgrib": ("libeccodes0",), "eccodes": ("libeccodes0",), "pylibmc": ("libmemcached-dev",),
               "python-ldap": ("libldap2-dev", "libsasl2-dev")}


@dataclass(frozen=True)
class EnvSpec:
    """The recipe of an environment layer (hashed into its tag) plus the instance-layer commands."""

    python: str                          # the Python version actually used
    suite: str                           # the Debian release of the base image
    requirements: tuple[str, ...] = ()   # pip requirement lines, installed from a host-built wheelhouse
    pip_packages: tuple[str, ...] = ()   # installed after them (may re-pin what they installed, as upstream)
    pre_install: tuple[str, ...] = ()    # run in /testbed before `install` (instance layer)
    install: tuple[str, ...] = ()        # run in /testbed when the instance image is built
    date: str = ""                       # resolve requirements as of this upload date ("" = today)
    apt_packages: tuple[str, ...] = ()   # Debian packages of the spec's pre_install (the tools layer)
    notes: tuple[str, ...] = field(default=(), compare=False)   # every substitution made, for the reports


@lru_cache(maxsize=1)
def _vendored() -> dict:
    return json.loads(SPECS_FILE.read_text())


def swebench_specs(repo: str, version: str) -> dict | None:
    """SWE-bench 4.1.0's spec for a repo version, or None when it has none."""
    return _vendored()["specs"].get(repo, {}).get(version)


def pick_suite(python: str) -> tuple[str, str, list[str]]:
    """The Debian suite for a Python version: (python used, suite, notes)."""
    if python in SUITES:
        return python, SUITES[python], []
    have = sorted(SUITES, key=lambda v: tuple(map(int, v.split("."))))
    want = tuple(map(int, python.split(".")[:2])) if re.fullmatch(r"\d+\.\d+(\.\d+)?", python) else (3, 11)
    # nearest version, the older one on a tie: the pins of the spec's time have wheels for the older Python
    best = min(have, key=lambda v: (abs(tuple(map(int, v.split(".")))[1] - want[1]), int(v.split(".")[1])))
    return best, SUITES[best], [f"spec asks Python {python}; no offline base has it, ran Python {best} instead"]


def read_repo_file(repo_dir: str | Path, commit: str, path: str) -> str | None:
    """A file's text at a commit of a local clone, or None if it is not there."""
    proc = subprocess.run(["git", "-C", str(repo_dir), "show", f"{commit}:{path}"], capture_output=True)
    return proc.stdout.decode("utf-8", "replace") if proc.returncode == 0 else None


def _requirements_txt(repo: str, read, commit: str) -> tuple[list[str], list[str]]:
    """The repo's requirements file at the env-setup commit, with `-r` includes expanded (as 4.1.0 does)."""
    for rel in _vendored()["reqs_paths"].get(repo, ["requirements.txt"]):
        text = read(rel)
        if text is None:
            continue
        base = rel.rsplit("/", 1)[0] + "/" if "/" in rel else ""
        lines: list[str] = []
        for line in text.splitlines():
            s = line.strip()
            if s.startswith("-r"):
                lines += (read(base + s[2:].strip()) or "").splitlines()
            else:
                lines.append(line)
        keep = [ln.strip() for ln in lines
                if ln.strip() and not ln.strip().startswith(("#", "-e .", ".[test", "-e", "-c", "--"))]
        keep = [re.sub(r"\s+#.*$", "", ln) for ln in keep]
        return [("types-setuptools" if ln.startswith("types-pkg_resources") else ln) for ln in keep], []
    return [], [f"no requirements file found at {commit[:12]}; installed the spec's pip packages only"]


def _conda_to_pip(item: str) -> str | None:
    """A conda spec ("numpy=1.19", "pytest") as a pip requirement, or None for conda-only packages.

    >>> _conda_to_pip("numpy=1.19"), _conda_to_pip("iris"), _conda_to_pip("mkl")
    ('numpy==1.19', 'scitools-iris', None)
    """
    name = re.split(r"[=<>! ]", item.strip(), 1)[0]
    if not name or name.lower() in CONDA_ONLY:
        return None
    rest = item.strip()[len(name):].strip()
    if rest.startswith("=") and not rest.startswith("=="):
        rest = "==" + rest[1:].rstrip("*").rstrip(".")
    return CONDA_TO_PYPI.get(name.lower(), name) + rest


def _environment_yml(repo: str, read, commit: str) -> tuple[list[str], list[str]]:
    """Dependencies of a conda environment.yml, as pip requirements (conda-only ones dropped and named)."""
    for rel in _vendored()["env_yml_paths"].get(repo, ["environment.yml"]):
        text = read(rel)
        if text is None:
            continue
        reqs, dropped, in_deps, in_pip = [], [], False, False
        for line in text.splitlines():
            if re.match(r"^dependencies\s*:", line):
                in_deps = True
                continue
            if in_deps and re.match(r"^\S", line):
                in_deps = False
            m = re.match(r"^\s*-\s*(.+?)\s*(#.*)?$", line) if in_deps else None
            if not m:
                continue
            item = m.group(1)
            if item.startswith("pip:"):
                in_pip = True
                continue
            if in_pip and len(line) - len(line.lstrip()) > 2:
                reqs.append(item)
                continue
            in_pip = False
            pip = _conda_to_pip(item)
            (reqs.append(pip) if pip else dropped.append(item))
        notes = [f"conda environment.yml translated to pip; dropped conda-only {', '.join(dropped)}"] if dropped else []
        return reqs, notes
    return [], [f"no environment.yml found at {commit[:12]}"]


def release_sdist_reader(repo: str, version: str):
    """(read(path) -> text, upload date) over the first `version.*` release's sdist of `repo` on the index
    (X.Y.0: the nearest to the version's environment_setup_commit; later patch releases come years later).

    Release sdists of django and matplotlib carry their requirement files (tests/requirements, requirements/,
    environment.yml): what an environment-only build reads when the repository is too large to clone here."""
    import io
    import tarfile

    from cwm_envs.swe.resolve import fetch_sdist

    name = repo.split("/")[1]
    try:
        blob, uploaded, _ = fetch_sdist(name, version + ".*", oldest=True)
        data = io.BytesIO(blob)
    except Exception as exc:
        raise UsageError(f"{repo} {version}: no clone, and no release sdist to read its requirement files from "
                         f"({type(exc).__name__}: {str(exc)[:200]}); give --repos") from None
    with tarfile.open(fileobj=data) as tar:
        files = {m.name.split("/", 1)[1]: m for m in tar.getmembers() if m.isfile() and "/" in m.name}
        texts = {rel: tar.extractfile(m).read().decode("utf-8", "replace") for rel, m in files.items()
                 if rel.endswith((".txt", ".yml", ".yaml"))}
    return texts.get, uploaded


def commit_date(repo_dir: str | Path, commit: str) -> str:
    """A commit's committer date (ISO 8601), or "" when the clone lacks it."""
    proc = subprocess.run(["git", "-C", str(repo_dir), "log", "-1", "--format=%cI", commit], capture_output=True,
                          text=True)
    return proc.stdout.strip() if proc.returncode == 0 else ""


def env_spec_for(repo: str, version: str, repo_dir: str | Path | None = None, env_commit: str = "",
                 date: str = "") -> EnvSpec:
    """The EnvSpec of a SWE-bench repo version (requirements files are read from the local clone).

    `date`: resolve as of it; by default the environment_setup_commit's date (the newest commit of the
    version, so one environment serves every instance of it)."""
    if not date and repo_dir is not None and env_commit:
        date = commit_date(repo_dir, env_commit)
    spec = swebench_specs(repo, version)
    if spec is None:
        raise UsageError(f"{repo} {version}: no SWE-bench dependency spec for this repo version; "
                         "give the row our own fields (python, pip_packages, install, test_cmd)")
    python, suite, notes = pick_suite(str(spec.get("python", DEFAULT_PYTHON)))
    reqs: list[str] = []
    packages = spec.get("packages", "")
    if packages in ("requirements.txt", "environment.yml"):
        if repo_dir is not None and env_commit:
            def read(rel, _dir=Path(repo_dir)):
                return read_repo_file(_dir, env_commit, rel)
        else:                                    # no clone (an environment-only build): the release's sdist
            read, uploaded = release_sdist_reader(repo, version)
            notes.append(f"{packages} read from the first sdist of {repo.split('/')[1]} {version}.* (no clone), "
                         f"uploaded {uploaded[:10]}: resolved as of then at the earliest")
            from cwm_envs.swe.resolve import iso_date

            date = max(iso_date(date), uploaded) if date else uploaded
        more, n = (_requirements_txt if packages == "requirements.txt" else _environment_yml)(repo, read,
                                                                                             env_commit or "sdist")
        reqs += more
        notes += n
    elif packages:
        import shlex

        items = shlex.split(packages)             # quoted ('numpy==1.19.2' 'pandas<2.0.0') or bare
        conv = [_conda_to_pip(p) for p in items]
        dropped = [p for p, c in zip(items, conv) if c is None]
        reqs += [c for c in conv if c]
        if dropped:
            notes.append(f"conda-only packages dropped: {', '.join(dropped)}")
    pre, apt, more = split_pre_install(tuple(spec.get("pre_install", ())))
    notes += more
    names = {re.split(r"[\s\[=<>!~;]", r.strip(), 1)[0].lower() for r in reqs + list(spec.get("pip_packages", ()))}
    apt += tuple(lib for name in sorted(names) for lib in SYSTEM_LIBS.get(name, ()) if lib not in apt)
    install = (spec["install"],) if spec.get("install") else ()
    return EnvSpec(python=python, suite=suite, requirements=tuple(reqs),
                   pip_packages=tuple(spec.get("pip_packages", ())), pre_install=pre, install=install,
                   date=date, apt_packages=apt, notes=tuple(notes))


def split_pre_install(steps: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...], list[str]]:
    """A spec's pre_install -> (steps run in the instance layer, Debian packages for the tools layer, notes).

    apt-get steps become packages of the tools layer (TeX Live, gigabytes, is left out and said so); steps
    that download (wget, curl) cannot run offline and are skipped, with a note.

    >>> split_pre_install(("apt-get update && apt-get install -y locales", "locale-gen en_US.UTF-8"))[:2]
    (('locale-gen en_US.UTF-8',), ('locales',))
    """
    keep, apt, notes, skipped, heavy = [], [], [], [], []
    for step in steps:
        if re.search(r"\bapt(-get)?\s", step):
            for m in re.finditer(r"apt(?:-get)?\s+install\s+([^&;|]+)", step):
                for pkg in m.group(1).split():
                    if pkg.startswith("-"):
                        continue
                    (heavy if pkg.startswith(("texlive", "cm-super")) else apt).append(pkg)
        elif re.search(r"\b(wget|curl)\b", step):
            skipped.append(step)
        else:
            keep.append(step)
    if heavy:
        notes.append(f"Debian packages left out of the tools layer (size): {', '.join(heavy)}")
    if skipped:
        notes.append(f"pre_install steps that download were skipped (no network in builds): {'; '.join(skipped)}")
    return tuple(keep), tuple(dict.fromkeys(apt)), notes


def env_spec(instance, repo_dir: str | Path | None = None) -> EnvSpec:
    """The EnvSpec of an instance: our own fields when it has them, else SWE-bench's spec for its version.

    Resolved as of the row's `created_at`; a row without one (our own tasks) as of its base commit's date, so
    that its environment does not drift with today's index (a repository committed today resolves as today)."""
    if instance.test_cmd or instance.pip_packages or instance.install or instance.python:
        python, suite, notes = pick_suite(instance.python or DEFAULT_PYTHON)
        date = instance.created_at
        if not date and repo_dir is not None:    # a row of our own without one: as of its base commit
            date = commit_date(repo_dir, instance.base_commit)
            if date:
                notes.append(f"no created_at: resolved as of the base commit's date, {date[:10]}")
        return EnvSpec(python=python, suite=suite, requirements=tuple(instance.pip_packages),
                       install=tuple(instance.install), date=date, notes=tuple(notes))
    env_commit = instance.environment_setup_commit or instance.base_commit
    date = commit_date(repo_dir, env_commit) if repo_dir is not None else ""
    return env_spec_for(instance.repo, instance.version, repo_dir, env_commit, date or instance.created_at)
