"""Memory cgroups for the `local` sandbox, on the v1 (legacy or hybrid) and the v2 (unified) hierarchy.

RLIMIT_AS bounds each process, not their sum, and nothing bounds memfds, SysV shared memory or tmpfs pages
(they are not in any address space once unmapped); a memory cgroup bounds all of them together, for every
process of the jail, and its OOM counter tells a memory kill apart from other SIGKILLs.

Where the group goes: under this process's own memory cgroup (never above it, which would escape a limit
someone set on us), or under `$CWM_SANDBOX_CGROUP` (a directory of either hierarchy delegated for this). On
v2 a group may only hand the memory controller to its children when it holds no process itself, so a process
living in a leaf cgroup needs such a delegated directory (e.g. `systemd-run -p Delegate=yes`).
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

ENV_PARENT = "CWM_SANDBOX_CGROUP"


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def mounts() -> list[tuple[str, str, str, str]]:
    """(root inside the filesystem, mount point, fs type, super options) of this process's mounts."""
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        pre, post = line.split(" - ", 1)
        fields, tail = pre.split(), post.split()
        out.append((_unescape(fields[3]), _unescape(fields[4]), tail[0], tail[2] if len(tail) > 2 else ""))
    return out


def hierarchy() -> str:
    """What `stat -fc %T /sys/fs/cgroup` tells: "v2" (cgroup2fs), "hybrid" (v1 with a v2 beside it) or "v1"."""
    found = {point: fstype for _root, point, fstype, _opts in mounts()}
    if found.get("/sys/fs/cgroup") == "cgroup2":
        return "v2"
    return "hybrid" if "cgroup2" in found.values() else "v1"


def memory_parent() -> tuple[Path | None, int, str]:
    """(directory to make groups in, hierarchy version 1 or 2, why not when the directory is None)."""
    override = os.environ.get(ENV_PARENT)
    if override:
        path = Path(override)
        if (path / "memory.limit_in_bytes").exists():
            return path, 1, ""
        if "memory" in _read(path / "cgroup.controllers").split():
            return path, 2, ""
        return None, 0, f"${ENV_PARENT}={override} is not a cgroup directory with the memory controller"
    own = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        own["v2" if controllers == "" else controllers] = path
    v1 = next((path for names, path in own.items() if "memory" in names.split(",")), None)
    for root, point, fstype, opts in mounts():
        if v1 is not None and fstype == "cgroup" and "memory" in opts.split(","):
            return Path(point) / _relative(v1, root), 1, ""
        if v1 is None and "v2" in own and fstype == "cgroup2":
            if "memory" not in _read(Path(point) / "cgroup.controllers").split():
                return None, 0, f"the cgroup v2 hierarchy at {point} has no memory controller"
            return Path(point) / _relative(own["v2"], root), 2, ""
    return None, 0, "no memory cgroup controller is mounted"


def _relative(path: str, mount_root: str) -> str:
    if mount_root != "/" and path.startswith(mount_root):
        path = path[len(mount_root):]
    return path.lstrip("/")


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


@dataclass(frozen=True)
class MemoryGroup:
    """One sandbox's memory cgroup: the jail enters it by writing its pid to `procs` before it starts."""

    path: Path
    version: int

    @property
    def procs(self) -> Path:
        return self.path / "cgroup.procs"

    def oom_kills(self) -> int:
        """Processes the kernel killed for this group's limit so far."""
        text = _read(self.path / ("memory.oom_control" if self.version == 1 else "memory.events"))
        for line in text.splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
        return 0

    def remove(self, wait_s: float = 1.0, kill: bool = False) -> bool:
        """rmdir the group (it empties once its killed processes are reaped); `kill` SIGKILLs what is left."""
        end = time.monotonic() + wait_s
        while True:
            if kill:
                for pid in _read(self.procs).split():
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
            try:
                self.path.rmdir()
                return True
            except FileNotFoundError:
                return True
            except OSError:
                if time.monotonic() > end:
                    return False
                time.sleep(0.01)


def make_memory_group(name: str, limit_mb: int) -> tuple[MemoryGroup | None, str]:
    """A memory group capped at `limit_mb` (swap included where the kernel counts it), or (None, why not)."""
    parent, version, why = memory_parent()
    if parent is None:
        return None, f"{why} (cgroup hierarchy: {hierarchy()})"
    group = parent / name
    try:
        if version == 2 and "memory" not in _read(parent / "cgroup.subtree_control").split():
            try:
                (parent / "cgroup.subtree_control").write_text("+memory")
            except OSError as exc:
                hint = (" (it holds processes itself, so it may not give the controller to child groups)"
                        if exc.errno == 16 else "")
                return None, (f"cannot enable the memory controller for the children of {parent}: "
                              f"{exc.strerror}{hint}; set ${ENV_PARENT} to a delegated cgroup")
        group.mkdir(exist_ok=True)
        limit = str(limit_mb << 20)
        if version == 1:
            (group / "memory.limit_in_bytes").write_text(limit)
            swap = group / "memory.memsw.limit_in_bytes"   # memory + swap: pages swapped out still count
        else:
            (group / "memory.max").write_text(limit)
            swap = group / "memory.swap.max"                # swap alone: none at all
            limit = "0"
        if swap.exists():
            swap.write_text(limit)
        # A jail enters its group the same way (sh writes its own pid, then execs bwrap): try it once now, so a
        # group that may not be entered (v2 rules, delegation) is reported here instead of failing every start.
        joined = subprocess.run(["sh", "-c", 'echo $$ > "$0"', str(group / "cgroup.procs")], capture_output=True,
                                text=True, timeout=30)
        if joined.returncode != 0:
            raise OSError(f"a process may not enter it ({joined.stderr.strip() or joined.returncode})")
    except OSError as exc:
        try:
            group.rmdir()
        except OSError:
            pass
        return None, f"cannot make a memory cgroup under {parent}: {exc.strerror or exc}"
    return MemoryGroup(group, version), ""


def groups_named(prefix: str) -> list[MemoryGroup]:
    """The groups whose name starts with `prefix` in the directory where this process makes its own."""
    parent, version, _ = memory_parent()
    if parent is None:
        return []
    try:
        return [MemoryGroup(p, version) for p in parent.iterdir() if p.name.startswith(prefix) and p.is_dir()]
    except OSError:
        return []
