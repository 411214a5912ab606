"""The base image of the `docker` sandbox: built once, then reused by its tag.

Where no registry is reachable (an offline CI machine) the image is built from the machine's own Debian
mirror: `debootstrap --variant=minbase` into a temporary root, then `docker import`. The recipe's hash is
stored in a label, so an image is rebuilt only when the recipe changes or `force=True` asks for it.
Elsewhere any image with `python3` serves, e.g. `CWM_BASE_IMAGE=python:3.11-slim` (pulled when missing).

>>> image_tag("bookworm"), image_tag("bullseye")
('cwm-envs/base:bookworm', 'cwm-envs/base:bullseye')
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Callable

from cwm_envs.errors import DockerUnavailable, SandboxError, UsageError

IMAGE_REPO = "cwm-envs/base"
DEFAULT_SUITE = "bookworm"          # Debian 12, Python 3.11; "bullseye" gives Python 3.9
PACKAGES = ("python3", "python3-venv", "git", "patch", "ca-certificates")
RECIPE_VERSION = 1                  # bump when the build steps below change
RECIPE_LABEL = "cwm-envs.recipe"
WORKDIR = "/work"
_CHANGES = (                        # `docker import` keeps no config: give the image its environment
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    "ENV PYTHONDONTWRITEBYTECODE=1",
    f"WORKDIR {WORKDIR}",
    'CMD ["/bin/bash"]',
)


def image_tag(suite: str = DEFAULT_SUITE) -> str:
    """The tag of the offline base image for a Debian suite."""
    return f"{IMAGE_REPO}:{suite}"


def recipe_hash(suite: str, packages: tuple[str, ...] = PACKAGES) -> str:
    """A short hash of what goes into the image; stored as a label so a stale image is noticed."""
    recipe = json.dumps([RECIPE_VERSION, suite, sorted(packages), list(_CHANGES)])
    return hashlib.sha256(recipe.encode()).hexdigest()[:16]


def apt_mirror(sources_dir: str | Path = "/etc/apt") -> str:
    """The Debian mirror this machine is configured with (deb822 `URIs:` or one-line `deb` entries).

    Security and other special archives are skipped; the first ordinary archive wins.
    """
    root = Path(sources_dir)
    uris: list[str] = []
    for path in sorted((root / "sources.list.d").glob("*.sources")):
        for stanza in re.split(r"\n\s*\n", path.read_text(errors="replace")):
            fields = dict(re.findall(r"^([A-Za-z-]+):\s*(.*)$", stanza, re.M))
            if "deb" in fields.get("Types", "").split() and fields.get("Enabled", "yes") != "no":
                uris += fields.get("URIs", "").split()
    lists = [root / "sources.list", *sorted((root / "sources.list.d").glob("*.list"))]
    for path in lists:
        if path.is_file():
            for line in path.read_text(errors="replace").splitlines():
                m = re.match(r"^\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)", line)
                if m:
                    uris.append(m.group(1))
    plain = [u for u in uris if u.startswith(("http://", "https://", "file:/")) and "security" not in u]
    if not plain:
        raise SandboxError(f"no Debian mirror found in {root}/sources.list(.d); cannot build the base image "
                           "offline (set CWM_BASE_IMAGE to an image with python3 instead)")
    return plain[0]


def _client():
    import docker

    try:
        client = docker.from_env(timeout=120)
        client.ping()
        return client
    except Exception as exc:
        raise DockerUnavailable(f"no Docker engine answers ({type(exc).__name__}: {exc}); start dockerd "
                                "or run `make test`, which starts one") from exc


def ensure_base_image(base: str | None = None, *, suite: str | None = None, force: bool = False,
                      client=None, log: Callable[[str], None] = lambda _msg: None) -> str:
    """Make sure the sandbox image exists and return its tag; a no-op when it already does.

    `base` (or `CWM_BASE_IMAGE`) names any image with python3, pulled when missing; without one (or with a
    `cwm-envs/base:SUITE` tag) the offline image for `suite` is built with debootstrap.
    """
    base = base or os.environ.get("CWM_BASE_IMAGE") or None
    if base and not base.startswith(IMAGE_REPO + ":"):
        if suite:
            raise UsageError("give either a base image or a Debian suite, not both")
        return _ensure_pulled(client or _client(), base, force, log)
    if base:
        suite = base.split(":", 1)[1]
    suite = suite or DEFAULT_SUITE
    if not re.fullmatch(r"[a-z]+", suite):
        raise UsageError(f"not a Debian suite name: {suite!r}")
    client = client or _client()
    tag, want = image_tag(suite), recipe_hash(suite)
    if not force and _recipe_of(client, tag) == want:
        return tag
    # One build at a time on this host (test workers, parallel jobs): wait for a running one, then look again.
    # The lock is taken on this very file, so no lock file is left behind.
    with open(__file__) as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        have = _recipe_of(client, tag)
        if have == want and not force:
            return tag
        log(f"{tag}: " + ("missing" if have is None else "rebuild asked" if have == want
                          else f"recipe {have} is stale (now {want})") + ", building")
        build_offline_image(suite, tag, log=log)
    return tag


def _recipe_of(client, tag: str) -> str | None:
    import docker.errors

    try:
        return (client.images.get(tag).labels or {}).get(RECIPE_LABEL, "")
    except docker.errors.ImageNotFound:
        return None


def _ensure_pulled(client, name: str, force: bool, log) -> str:
    import docker.errors

    if not force:
        try:
            client.images.get(name)
            return name
        except docker.errors.ImageNotFound:
            pass
    log(f"pulling {name}")
    try:
        client.images.pull(name)
    except docker.errors.APIError as exc:
        raise SandboxError(f"cannot pull {name} ({exc.explanation or exc}); without a registry, leave "
                           "CWM_BASE_IMAGE unset to build the offline image") from exc
    return name


def build_offline_image(suite: str, tag: str, mirror: str | None = None,
                        log: Callable[[str], None] = lambda _msg: None) -> None:
    """debootstrap a minimal `suite` root from the machine's mirror and `docker import` it as `tag`.

    Needs root and the `debootstrap` and `docker` commands. The temporary root is always removed.
    """
    for tool in ("debootstrap", "docker", "tar"):
        if not shutil.which(tool):
            raise SandboxError(f"`{tool}` is missing; install it (`make test` installs debootstrap and "
                               "docker.io) or set CWM_BASE_IMAGE to an image with python3")
    if os.geteuid() != 0:
        raise SandboxError("building the offline base image needs root (debootstrap); run `make test` as "
                           "root or set CWM_BASE_IMAGE to an image with python3")
    mirror = mirror or apt_mirror()
    rootfs = Path(tempfile.mkdtemp(prefix="cwm-rootfs-", dir="/var/tmp"))
    with _sigterm_as_exit():
        try:
            _build(suite, tag, mirror, rootfs, log)
        finally:
            _remove_root(rootfs)


@contextlib.contextmanager
def _sigterm_as_exit():
    """While the root is being built, let SIGTERM unwind (so the `finally` removes the ~300 MB root)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _exit(signum, _frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, _exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _build(suite: str, tag: str, mirror: str, rootfs: Path, log: Callable[[str], None]) -> None:
    """debootstrap into `rootfs`, drop the package caches, and `docker import` the result as `tag`."""
    log(f"debootstrap {suite} from {mirror} (about a minute)")
    cmd = ["debootstrap", "--variant=minbase", "--include=" + ",".join(PACKAGES), suite, str(rootfs), mirror]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise SandboxError(f"debootstrap {suite} failed (exit {proc.returncode}):\n{tail}")
    _unmount_below(rootfs)
    for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):   # downloaded .debs and indexes
        for item in (rootfs / junk).glob("*"):
            if item.is_file():
                item.unlink()
    (rootfs / WORKDIR.lstrip("/")).mkdir(exist_ok=True)
    log(f"docker import -> {tag}")
    changes = [f"LABEL {RECIPE_LABEL}={recipe_hash(suite)} cwm-envs.suite={suite}", *_CHANGES]
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE)
    imp = subprocess.run(["docker", "import", *sum((["--change", c] for c in changes), []), "-", tag],
                         stdin=tar.stdout, capture_output=True, text=True)
    tar.stdout.close()
    if tar.wait() != 0 or imp.returncode != 0:
        raise SandboxError(f"docker import of {tag} failed: {imp.stderr.strip()[-500:]}")


def _mounts_below(root: Path) -> list[str]:
    prefix = str(root.resolve()) + "/"
    with open("/proc/mounts") as f:
        points = [line.split()[1].encode().decode("unicode_escape") for line in f]
    return sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True)


def _unmount_below(root: Path) -> None:
    """A failed debootstrap can leave /proc or /sys mounted inside the root; unmount them, deepest first."""
    for point in _mounts_below(root):
        subprocess.run(["umount", "-l", point], capture_output=True)


def _remove_root(root: Path) -> None:
    _unmount_below(root)
    if _mounts_below(root):   # never recurse into a mounted host filesystem
        raise SandboxError(f"{root} still has mounts below it; remove it by hand after unmounting them")
    subprocess.run(["rm", "-rf", "--one-file-system", str(root)], check=False)
