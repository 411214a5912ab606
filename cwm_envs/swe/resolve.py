"""Resolve an environment's requirements as of a date, so an old commit's loose pins resolve as they did then.

Today's index no longer resolves many old requirement sets the way they resolved when the instance was made
(a plugin's newest release needs a newer host package; a pin's dependencies moved on). `resolve` asks
`uv pip compile` for the newest release of each requirement that had been uploaded by a date
(`--exclude-newer`), for the image's Python and glibc (`--python-version`, `--python-platform`), and returns
a complete lock: every package pinned with `==`, installed later with `--no-deps` from a wheelhouse.

How the date moves and what is dropped, each said in `Lock.notes`:
- a date before the image's Python had wheels is raised to that Python's floor (`PYTHON_FLOOR`);
- an exact pin uploaded after the date (SWE-bench's specs pin releases of their own time) moves the cutoff
  to that upload (uv's own hint gives it), so its dependencies resolve as of the pin;
- a requirement the index does not have at all (a conda-only package) is dropped when it was asked for by
  name; a missing dependency of something else is a `MissingDistribution`;
- a requirement whose lower bound is newer than the date (code that moved on before its issue was filed)
  gets that package alone resolved later, 90 days at a time;
- a requirement with no usable wheel for the image's Python whose metadata would need a build on the host
  (the numeric stack is never built there, `ONLY_BINARY`) is dropped when asked for by name; when asked for
  without an exact pin and its sdist failed to build on the host, later releases of it are tried first;
- any other unsatisfiable set is a `ResolverConflict`, with uv's explanation.
Build tools (pip, setuptools, wheel) are resolved as of `TOOLS_DATE` instead: source distributions need a
setuptools new enough to build them (as the official images had), whatever the instance's date.

Locks are cached on disk by their inputs, so a rebuild needs no index.

>>> parse_lock("numpy==1.23.0\\n# comment\\npandas==1.5.3 ; python_version >= '3.9'\\n")
('numpy==1.23.0', 'pandas==1.5.3')
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from cwm_envs.errors import InfraError, UsageError
from cwm_envs.swe.cache import cache_dir
from cwm_envs.swe.failures import MissingDistribution, ResolverConflict

TOOLS = ("pip", "setuptools", "wheel")
TOOLS_DATE = "2024-07-01T00:00:00Z"      # about when SWE-bench's official environment images were built
# The earliest cutoff for each Python the images run: a few months after its release, when the common
# binary packages had wheels for it (numpy's first cp39 wheels: 1.19.3, 2020-10-28). An instance older than
# that runs on a newer Python than it had (Debian ships no older one), where its own era's releases would not
# install or run (pytest 2.x has no `pytest` command and breaks on 3.9).
PYTHON_FLOOR = {"3.9": "2021-01-01T00:00:00Z", "3.11": "2023-01-15T00:00:00Z", "3.13": "2025-01-15T00:00:00Z"}
RESOLVE_VERSION = 6                      # bump when the resolution rules change (old locks are not reused)
_PUBLISHED = re.compile(r"`([^`]+)` was filtered by `exclude-newer`.*?The requested version, v(\S+?),? was "
                        r"published at (\S+?)\.?\s", re.S)
_NOT_FOUND = re.compile(r"Because (\S+?) was not found in the package registry")
_NO_VERSION = re.compile(r"there is no version of ([A-Za-z0-9._-]+)==")
_NO_WHEELS = re.compile(r"Because (?:all versions of )?([A-Za-z0-9._-]+)(?:[=<>!~]=?\S+)? (?:has|have) no usable wheels")
_FAILED_BUILD = re.compile(r"Failed to (?:download and )?build `([A-Za-z0-9._-]+)")
# Never built from source on the host, where uv would compile them for the host's Python to read an sdist's
# metadata (minutes, and for nothing: the image needs a wheel for its own Python, or builds the sdist itself)
ONLY_BINARY = ("numpy", "scipy", "pandas", "matplotlib", "h5py", "netcdf4", "pyarrow", "scikit-learn", "numba",
               "llvmlite", "shapely", "pyproj", "gdal", "rasterio", "cartopy", "grpcio", "tables", "cftime")
_FILTERED = re.compile(r"`([^`]+)` was filtered by `exclude-newer(?:-package)?`")
WHEEL_LAG = dt.timedelta(days=3)
PACKAGE_STEP = dt.timedelta(days=90)         # wheels of a release can be uploaded days after its first file
# How far an sdist the host cannot read is moved on, before it is dropped (bottleneck: 1.3.2 -> 1.3.4)
HOST_STEP, HOST_STEPS = dt.timedelta(days=180), 3


@dataclass(frozen=True)
class Lock:
    """A resolved requirement set: every package `name==version`, and what was changed to get there."""

    pins: tuple[str, ...]
    cutoff: str                                 # the upload date the resolution used in the end
    dropped: tuple[str, ...] = ()               # requirements the index does not have (named in notes)
    notes: tuple[str, ...] = field(default=(), compare=False)

    def versions(self) -> dict[str, str]:
        return dict(p.split("==", 1) for p in self.pins)


def uv_binary() -> str:
    """The `uv` executable: beside this Python (the `swe` extra installs it) or on PATH."""
    here = Path(sys.executable).with_name("uv")
    found = str(here) if here.exists() else shutil.which("uv")
    if not found:
        raise UsageError("resolving SWE environments needs `uv` (pip install 'cwm-envs[swe]' or pip install uv)")
    return found


def iso_date(value: str | dt.datetime) -> str:
    """A dataset's `created_at` (or a git date) as the RFC 3339 UTC timestamp uv takes.

    >>> iso_date("2022-03-03T15:14:54Z"), iso_date("2020-01-02 10:00:00+01:00")
    ('2022-03-03T15:14:54Z', '2020-01-02T09:00:00Z')
    """
    if isinstance(value, str):
        text = value.strip().replace(" ", "T", 1)
        try:
            value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise UsageError(f"not a date: {value!r}") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_lock(text: str) -> tuple[str, ...]:
    """The `name==version` lines of uv's output (markers and comments dropped, names lower-cased)."""
    pins = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].split(";", 1)[0].strip()
        if "==" in line and not line.startswith("-"):
            name, version = line.split("==", 1)
            pins.append(f"{name.strip().lower()}=={version.strip()}")
    return tuple(pins)


def req_name(requirement: str) -> str:
    """The normalised project name of a requirement line ("Jinja2[i18n]<3 ; ..." -> "jinja2")."""
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    return re.sub(r"[-_.]+", "-", m.group(1)).lower() if m else ""




def resolve(requirements: Iterable[str], *, python: str, glibc: int, date: str, prefer: Iterable[str] = (),
            log: Callable[[str], None] = lambda _m: None, timeout: float = 300.0, what: str = "requirements",
            cwd: str | Path | None = None) -> Lock:
    """Lock `requirements` as of `date` for CPython `python` on manylinux `glibc` (see the module docstring).

    `prefer` pins (`name==version`, e.g. what an earlier layer installed) are kept when they fit and are
    exempt from the date. Raises ResolverConflict / MissingDistribution / InfraError.
    """
    reqs = [r.strip() for r in requirements if r.strip()]
    prefer = sorted({p for p in prefer if "==" in p})
    date = iso_date(date) if date else ""
    key = hashlib.sha256(json.dumps([RESOLVE_VERSION, reqs, prefer, python, glibc, date, TOOLS_DATE]).encode())
    cached = cache_dir() / "locks" / f"{key.hexdigest()[:16]}.json"
    if cached.exists() and not any(r.startswith((".", "/", "file:")) for r in reqs):
        data = json.loads(cached.read_text())
        return Lock(tuple(data["pins"]), data["cutoff"], tuple(data["dropped"]), tuple(data["notes"]))
    if not reqs:
        return Lock((), date)
    cutoff, dropped, notes = date, [], []
    pinned_free: set[str] = set()                # exact pins taken regardless of the cutoff
    later_for: dict[str, str] = {}               # packages whose own cutoff moved past the stage's
    floor = PYTHON_FLOOR.get(python, "")
    if cutoff and floor > cutoff:
        notes.append(f"{what}: {cutoff[:10]} is before Python {python} had wheels; resolved as of {floor[:10]}")
        log(notes[-1])
        cutoff = floor
    for _ in range(20):
        proc = _compile(reqs, prefer, python, glibc, cutoff, timeout, cwd, pinned_free, later_for)
        if proc.returncode == 0:
            pins = parse_lock(proc.stdout)
            notes.append(f"{what} resolved as of {cutoff[:10] or 'today'} for Python {python}: " + " ".join(pins))
            log(notes[-1])
            lock = Lock(pins, cutoff, tuple(dropped), tuple(notes))
            if not any(r.startswith((".", "/", "file:")) for r in reqs):   # a local path changes under us
                cached.parent.mkdir(parents=True, exist_ok=True)
                cached.write_text(json.dumps({"pins": lock.pins, "cutoff": lock.cutoff, "dropped": lock.dropped,
                                              "notes": lock.notes}))
            return lock
        err = proc.stderr
        later = [(when, name, version) for name, version, when in _PUBLISHED.findall(err)
                 if any(req_name(r) == req_name(name) and "==" in r for r in reqs)]
        if later:                                 # a pin newer than the date: resolve as of that pin
            when, name, version = max(later)
            new = iso_date(dt.datetime.fromisoformat(iso_date(when).replace("Z", "+00:00")) + WHEEL_LAG)
            new = min(new, iso_date(dt.datetime.now(dt.timezone.utc)))
            if cutoff and new > cutoff:
                notes.append(f"{what}: {name}=={version} was published {when[:10]}, after {cutoff[:10]}; "
                             f"cutoff moved to {new[:10]}")
                log(notes[-1])
                cutoff = new
                continue
            if req_name(name) not in pinned_free:       # its wheels came later still: take the pin as it is
                pinned_free.add(req_name(name))
                continue
            raise ResolverConflict(f"{what}: uv keeps excluding {name}=={version}: {_tail(err)}")
        unfit = {req_name(m) for m in _NO_VERSION.findall(err)} - pinned_free
        unfit = {n for n in unfit if any(req_name(r) == n and "==" in r for r in reqs)}
        if cutoff and unfit and "exclude-newer" not in err:   # its files for this platform came even later
            pinned_free |= unfit
            notes.append(f"{what}: {', '.join(sorted(unfit))} pinned exactly; taken whatever its upload date")
            log(notes[-1])
            continue
        filtered = [req_name(m) for m in _FILTERED.findall(err)]
        if cutoff and filtered and "No solution found" in err:
            # a lower bound newer than the date (code that moved on before its issue was filed): that package
            # alone is looked for later, a step at a time
            name = filtered[0]
            step = _next_step(later_for.get(name, cutoff))
            if step:
                later_for[name] = step
                notes.append(f"{what}: a requirement needs a {name} newer than {cutoff[:10]}; {name} resolved "
                             f"as of {later_for[name][:10]}")
                log(notes[-1])
                continue
        unbuildable = {req_name(m) for m in _NO_WHEELS.findall(err) + _FAILED_BUILD.findall(err)}
        asked = [r for r in reqs if req_name(r) in unbuildable]
        # an unpinned sdist whose old release cannot be read on the host (bottleneck 1.3.2's build pins a numpy
        # that has no wheel for the host's Python): a later release of it, a step at a time, before dropping it
        failed_build = {req_name(m) for m in _FAILED_BUILD.findall(err)}
        movable = {}
        if cutoff:
            horizon = iso_date(dt.datetime.fromisoformat(cutoff.replace("Z", "+00:00")) + HOST_STEPS * HOST_STEP)
            for r in asked:
                name = req_name(r)
                if "==" in r or name not in failed_build:
                    continue
                when = _next_step(later_for.get(name, cutoff), HOST_STEP)
                if when and when <= horizon:
                    movable[name] = when
        if movable:
            later_for.update(movable)
            notes.append(f"{what}: {', '.join(sorted(movable))} could not be built on the host as of "
                         f"{cutoff[:10]}; resolved as of {max(movable.values())[:10]}")
            log(notes[-1])
            continue
        if asked:                                 # no wheel for this Python, and not built on the host
            for r in asked:
                reqs.remove(r)
                dropped.append(r)
            notes.append(f"{what}: no usable wheel for Python {python} (not built from source on the host), "
                         f"dropped: {', '.join(asked)}")
            log(notes[-1])
            continue
        if unbuildable:
            raise MissingDistribution(f"{what}: {', '.join(sorted(unbuildable))} (needed by another requirement) has "
                                      f"no usable wheel for Python {python}: {_tail(err)}")
        missing = {req_name(m) for m in _NOT_FOUND.findall(err)}
        asked = [r for r in reqs if req_name(r) in missing]
        if asked:                                 # named by the spec but not on the index: conda-only
            for r in asked:
                reqs.remove(r)
                dropped.append(r)
            notes.append(f"{what}: not on the package index, dropped: {', '.join(asked)}")
            log(notes[-1])
            continue
        if missing:
            raise MissingDistribution(f"{what}: {', '.join(sorted(missing))} (needed by another requirement) is "
                                      f"not on the package index: {_tail(err)}")
        if "No solution found" in err:
            raise ResolverConflict(f"{what} as of {cutoff[:10] or 'today'} for Python {python}: {_tail(err)}")
        if "Failed to build" in err or "Failed to download and build" in err:
            raise InfraError(f"{what}: uv could not read a package's metadata (build failed): {_tail(err)}")
        raise InfraError(f"{what}: uv pip compile failed: {_tail(err)}")
    raise ResolverConflict(f"{what}: no resolution after 20 rounds: {', '.join(notes[-3:])}")


def _next_step(since: str, step: dt.timedelta = PACKAGE_STEP) -> str | None:
    """The cutoff one `step` after `since` (today at most), or None once `since` is today already."""
    now = dt.datetime.now(dt.timezone.utc)
    step = dt.datetime.fromisoformat(since.replace("Z", "+00:00")) + step
    return iso_date(min(step, now)) if step < now + PACKAGE_STEP else None


def _compile(reqs: list[str], prefer: list[str], python: str, glibc: int, cutoff: str, timeout: float,
             cwd, free: set[str] = frozenset(), later_for: dict | None = None) -> subprocess.CompletedProcess:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="cwm-resolve-") as tmp:
        src, out = Path(tmp) / "requirements.in", Path(tmp) / "lock.txt"
        src.write_text("\n".join(reqs) + "\n")
        exempt = {req_name(p) for p in prefer} | set(free)
        if prefer:                               # uv keeps the pins of an existing output file when they fit
            out.write_text("\n".join(prefer) + "\n")
        cmd = [uv_binary(), "pip", "compile", str(src), "-o", str(out), "--quiet", "--no-header", "--no-annotate",
               "--no-python-downloads", "--python-version", python, "--python-platform",
               f"x86_64-manylinux_2_{glibc}", *sum((["--only-binary", n] for n in ONLY_BINARY), [])]
        if cutoff:                               # "" = today's index
            cmd += ["--exclude-newer", cutoff]
            for name in TOOLS:
                cmd += ["--exclude-newer-package", f"{name}={max(TOOLS_DATE, cutoff)}"]
            for name in sorted(exempt - set(TOOLS)):
                cmd += ["--exclude-newer-package", f"{name}={iso_date(dt.datetime.now(dt.timezone.utc))}"]
            for name, when in sorted((later_for or {}).items()):
                if name not in exempt and name not in TOOLS:
                    cmd += ["--exclude-newer-package", f"{name}={when}"]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("UV_", "PIP_"))}
        env["UV_NO_CONFIG"] = "1"
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
        except subprocess.TimeoutExpired:
            raise InfraError(f"uv pip compile ran past {timeout:.0f} s (building a package's metadata?)") from None
        if proc.returncode == 0:
            proc = subprocess.CompletedProcess(proc.args, 0, out.read_text(), proc.stderr)
        return proc


def fetch_sdist(name: str, version: str, oldest: bool = False) -> tuple[bytes, str, str]:
    """The newest (or `oldest`) non-yanked, non-pre-release sdist of `name` matching `version` ("3.2.*" or
    "1.6.1") on pip's default index -> (bytes, upload time, file name). Read through the index's JSON simple API, as pip
    reads it: `pip download --no-binary` would also build the sdist's metadata, which fails for old ones on
    the host's Python."""
    import urllib.request

    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version
    from pip._internal.models.index import PyPI

    wanted = SpecifierSet(f"=={version}")
    req = urllib.request.Request(f"{PyPI.simple_url}/{req_name(name)}/",
                                 headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        files = json.load(resp)["files"]
    best = None
    for f in files:
        fname = f["filename"]
        if not fname.endswith((".tar.gz", ".zip")) or f.get("yanked"):
            continue
        try:
            v = Version(re.sub(r"\.(tar\.gz|zip)$", "", fname).rsplit("-", 1)[1])
        except (InvalidVersion, IndexError):
            continue
        if v in wanted and not v.is_prerelease and (best is None or (v < best[0] if oldest else v > best[0])):
            best = (v, f)
    if best is None:
        raise LookupError(f"no sdist of {name} {version} on the index")
    with urllib.request.urlopen(best[1]["url"], timeout=300) as resp:
        return resp.read(), iso_date(best[1].get("upload-time") or "1970-01-01"), best[1]["filename"]


def _tail(err: str, n: int = 700) -> str:
    text = " ".join(line.strip() for line in err.strip().splitlines() if line.strip())
    return text[-n:]
