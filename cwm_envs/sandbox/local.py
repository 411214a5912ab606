"""The `local` sandbox: a warm fork-server inside a bubblewrap jail, one forked child per execution.

Isolation, and why each piece:
- Namespaces (bubblewrap, Debian's `bubblewrap`): network (no interface but a loopback with nothing on it,
  so connecting anywhere fails at once), PID (the server can kill everything an execution started, even
  children that called setsid), mount, IPC, UTS.
- System calls: a seccomp filter (`_seccomp.py`) refuses new namespaces, io_uring, userfaultfd, the key
  store, bpf and perf events with EPERM: kernel attack surface that no sandboxed program needs.
- Filesystem: /usr, the Python install and a few /etc files read-only. The writable places, the working dir
  (seen as /sandbox inside), /tmp and /dev/shm, are three directories of one tmpfs per jail, mounted by the
  host with a size and an inode cap (`tmpfs_mb`, `tmpfs_inodes`), so the host's file methods work on it
  directly. Nothing else is mounted: not the project, not /root, not the rest of /etc.
- Identity: as root, each sandbox claims its own unprivileged uid (RLIMIT_NPROC does not bind root, and a
  uid per sandbox keeps sandboxes from sharing one process count). The server keeps only the capabilities to
  switch to it and to kill its processes; the jailed code has none, so it cannot signal the server. Not as
  root, bubblewrap's user namespace stands in (the code then runs as the invoking user's own uid).
- Limits: rlimits for CPU time, address space, processes, file size and open files per execution; a memory
  cgroup (v1 or v2, `_cgroup.py`) caps all the jail's processes together, memfds, SysV and POSIX shared
  memory included (`total_memory_mb`); the wall-clock deadline is kept by the server (never signal.alarm)
  and backed by the host; stdout and stderr are each capped at `output_bytes` (default 1 MiB).
- A cap that cannot be set here (not root, no memory cgroup this process may make, a machine without a
  filter) is named in `uncapped` and in one warning per process, never dropped silently.
- `reset()` leaves no file, process, shared memory or IPC object of an earlier run visible: it empties the
  jail's tmpfs in place when the server finds nothing else left (no IPC object; no process of the code ever
  outlives its run), else it swaps in a new jail (new namespaces, new tmpfs), kept warm in the background.
- A dead server (killed, crashed) is restarted transparently on the next call; the jail's files survive.
- Temp dirs and cgroups carry their owner's pid namespace, pid and start time in their name, so those of an
  owner killed by SIGKILL are removed by the next sandbox start and by `cwm sandbox gc` (`gc_stale`).

Each `LocalSandbox` runs one execution at a time (a lock), so use one per thread or worker for parallelism;
`arun` serves asyncio via a worker thread. The per-execution part lives in `_forkserver.py`, the host's jails
and leftovers in `_local_jail.py`.
"""
from __future__ import annotations

import dataclasses
import math
import os
import platform
import stat
import sys
import tempfile
import threading
import time
import warnings
import weakref
from pathlib import Path, PurePosixPath

from cwm_envs.errors import SandboxError, UsageError
from cwm_envs.sandbox import _cgroup
from cwm_envs.sandbox._local_jail import (
    HOST_GRACE_S,
    JAIL_WORKDIR,
    PREFIX,
    SECCOMP,
    _claim_uid,
    _owner_tag,
    _Spec,
    _State,
    gc_stale,
    owner_alive,
)
from cwm_envs.sandbox.base import ExecResult, Limits, Sandbox

DEFAULT_LIMITS = Limits(cpu_s=None, memory_mb=1024, processes=64, file_size_mb=64, open_files=256,
                        output_bytes=1 << 20)
# Imported once by the server so that each execution starts warm (forking copies them for free).
DEFAULT_PRELOAD = ("collections", "itertools", "functools", "math", "re", "json", "heapq", "bisect", "string",
                   "typing", "random", "dataclasses", "fractions", "decimal", "datetime", "copy", "operator",
                   "statistics", "traceback")
_warned: set[str] = set()


def _warn_uncapped(what: str, why: str) -> None:
    """Once per process and reason: a sandbox that runs without one of its caps says so."""
    message = f"local sandbox runs without its {what} cap: {why}"
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


class LocalSandbox(Sandbox):
    """Python code (a `str`) or a command (`list[str]`) run in a fresh forked child inside a jail.

    Arguments:
        limits: defaults for every execution (fields left None take DEFAULT_LIMITS; CPU time defaults to
            the timeout plus one second, so the wall clock usually ends a busy loop first).
        tmp_root: where the sandbox's temp dir goes (default: the system temp dir).
        preload: modules the server imports once, so executions start warm.
        python: the interpreter to run (default: this one's base install, never the project's venv).
        ro_binds: extra host paths mounted read-only at the same place (e.g. a site-packages dir).
        site_packages: let the code import the interpreter's site-packages (and run its .pth files). Off by
            default: the standard library only, and a lighter server whose forks cost less.
        tmpfs_mb, tmpfs_inodes: size and number of files of the jail's tmpfs, which holds the working dir,
            /tmp and /dev/shm together (files the host writes with `write_file` count too).
        total_memory_mb: memory of all the jail's processes together, shared memory included (a memory
            cgroup, where this process may make one; None: no such cap, only the per-process `memory_mb`).
        warm_spare: once `reset()` has had to swap jails (IPC objects were left), keep a spare jail started
            in the background so that the next swap is quick (it costs a second idle server, some 10 MB).
    """

    name = "local"

    def __init__(self, limits: Limits | None = None, *, tmp_root: str | os.PathLike | None = None,
                 preload: tuple[str, ...] = DEFAULT_PRELOAD, python: str | None = None,
                 ro_binds: tuple[str, ...] = (), site_packages: bool = False, tmpfs_mb: int = 256,
                 tmpfs_inodes: int = 16384, total_memory_mb: int | None = 4096, warm_spare: bool = True,
                 startup_timeout: float = 30.0):
        self.limits = DEFAULT_LIMITS.merged(limits)
        self._lock = threading.RLock()
        self._closed = False
        self._warm_spare = warm_spare
        root = os.geteuid() == 0
        uid_sock, self.uid = _claim_uid() if root else (None, os.getuid())
        python = python or os.path.realpath(getattr(sys, "_base_executable", sys.executable))
        spec = _Spec(self.uid, root, python, tuple(preload), tuple(ro_binds), site_packages, tmpfs_mb,
                     tmpfs_inodes, startup_timeout)
        self._state = state = _State(spec)
        state.uid_sock = uid_sock
        self._finalizer = weakref.finalize(self, state.release)
        try:
            gc_stale(tmp_root)
        except OSError:  # best effort: a leftover we cannot remove must not stop a new sandbox
            pass
        state.base = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{_owner_tag()}-", dir=tmp_root))
        if total_memory_mb:
            state.group, why = _cgroup.make_memory_group(state.base.name, total_memory_mb)
            if state.group is None:
                state.uncapped["memory"] = why
        else:
            state.uncapped["memory"] = "turned off (total_memory_mb=None)"
        if SECCOMP is None:
            state.uncapped["syscalls"] = f"no seccomp filter is written for this machine ({platform.machine()})"
        self._oom_seen = state.group.oom_kills() if state.group else 0
        with self._lock:
            state.jail = state.new_jail()
        for what, why in state.uncapped.items():
            if not why.startswith("turned off"):
                _warn_uncapped(what, why)

    @property
    def uncapped(self) -> dict[str, str]:
        """The caps this sandbox runs without, each with the reason: "memory" (no memory cgroup), "disk"
        (no capped tmpfs for the writable dirs), "syscalls" (no seccomp filter). Empty when all hold."""
        return dict(self._state.uncapped)

    @property
    def workdir(self) -> Path:
        """The host path of the current jail's working dir (/sandbox inside); a `reset()` may replace it."""
        return self._state.jail.work

    @property
    def memory_cgroup(self) -> Path | None:
        """The cgroup capping the jail's total memory, or None where none could be made."""
        return self._state.group.path if self._state.group else None

    @property
    def server_pid(self) -> int | None:
        """Host pid of the outer bwrap process of the current jail (for diagnostics and tests)."""
        server = self._state.jail.server if self._state.jail else None
        return server.proc.pid if server is not None else None

    def reset(self) -> None:
        """A pristine jail: no file, process, shared memory or IPC object of an earlier run is visible.

        Between runs no process of the code is left (the server kills them after each run), so when the
        server also finds no IPC object, emptying the jail's tmpfs is complete and the jail is kept (well
        under a millisecond for a few files). Otherwise a new jail, with new namespaces, replaces it: the
        first time one is started on the clock (tens of ms); from then on a spare is kept warm in the
        background (`warm_spare`) and swapped in. Limits, uid and memory group stay."""
        with self._lock:
            if self._closed:
                raise UsageError("this sandbox is closed")
            if not self._state.wipe():
                self._state.swap(self._warm_spare)

    # -- executions -------------------------------------------------------------------------------------
    def run(self, code_or_cmd: str | list[str], stdin: str | bytes | None = None, timeout: float = 10.0,
            limits: Limits | None = None) -> ExecResult:
        """Run Python source (str) or exec a command (list of args) in a fresh child; outcomes are data."""
        if isinstance(code_or_cmd, str):
            req = {"op": "run", "code": code_or_cmd}
        elif isinstance(code_or_cmd, (list, tuple)) and code_or_cmd and all(isinstance(a, str)
                                                                             for a in code_or_cmd):
            req = {"op": "run", "argv": list(code_or_cmd)}
        else:
            raise UsageError("run() takes Python source (str) or a command (non-empty list of str), "
                             f"got {code_or_cmd!r:.80}")
        if not timeout or timeout <= 0:
            raise UsageError(f"timeout must be positive, got {timeout!r}")
        lim = self.limits.merged(limits)
        if lim.cpu_s is None:
            lim = dataclasses.replace(lim, cpu_s=math.ceil(timeout) + 1)
        data = stdin.encode() if isinstance(stdin, str) else stdin
        req.update(timeout=float(timeout), limits=dataclasses.asdict(lim),
                   stdin_len=-1 if data is None else len(data))
        with self._lock:
            if self._closed:
                raise UsageError("this sandbox is closed")
            header, body = self._exchange(req, data or b"", timeout)
            if "error" in header:
                raise SandboxError(f"the sandbox server failed: {header['error']}")
            limit = header["limit_hit"]
            if self._state.group is not None:
                kills = self._state.group.oom_kills()
                if kills > self._oom_seen:  # the kernel killed a process of this execution for the group's memory
                    self._oom_seen, limit = kills, limit or "memory"
        n_out = header["stdout_len"]
        return ExecResult(stdout=body[:n_out].decode("utf-8", "replace"),
                          stderr=body[n_out:].decode("utf-8", "replace"),
                          exit_code=header["exit_code"], timed_out=header["timed_out"],
                          limit_hit=limit, duration_s=header["duration_s"],
                          truncated=header["truncated"])

    def run_python(self, code: str, *, stdin: str | bytes | None = None, timeout: float = 10.0,
                   limits: Limits | None = None) -> ExecResult:
        """Python source, as on every backend (here the same as `run(code)`)."""
        if not isinstance(code, str):
            raise UsageError("run_python takes the code as a string")
        return self.run(code, stdin=stdin, timeout=timeout, limits=limits)

    def _exchange(self, req: dict, payload: bytes, timeout: float) -> tuple[dict, bytes]:
        for attempt in range(2):
            server = self._state.server()
            try:
                server.send(req, payload)
                server.read_exact(1, time.monotonic() + HOST_GRACE_S)  # the ack: the code has not started yet
            except (BrokenPipeError, SandboxError):
                self._state.jail.stop_server()
                continue  # it never took the request: run it on a fresh server
            except BaseException:  # Ctrl-C mid-message: the protocol is out of step, so start afresh
                self._state.jail.stop_server()
                raise
            try:
                return server.read_frame(time.monotonic() + timeout + HOST_GRACE_S)
            except SandboxError as exc:
                self._state.jail.stop_server()
                raise SandboxError(f"local sandbox: {exc} during the execution; it restarts on the next "
                                   "call") from None
            except BaseException:  # Ctrl-C while the code runs: end it with the server, start afresh
                self._state.jail.stop_server()
                raise
        raise SandboxError("local sandbox: the server keeps dying")

    # -- files (host side, never following a link out of the working dir) ------------------------------
    def _parts(self, path: str) -> list[str]:
        p = PurePosixPath(path)
        if p.is_absolute():
            try:
                p = p.relative_to(JAIL_WORKDIR)
            except ValueError:
                raise UsageError(f"path {path!r} is outside the sandbox's working dir") from None
        parts = [x for x in p.parts if x != "."]
        if ".." in parts:
            raise UsageError(f"path {path!r} escapes the sandbox's working dir")
        return parts

    def _open_dir(self, parts: list[str], create: bool = False) -> int:
        """An fd of working-dir/parts, opened one component at a time with O_NOFOLLOW."""
        if self._closed:
            raise UsageError("this sandbox is closed")
        fd = os.open(self.workdir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for name in parts:
                if create:
                    try:
                        os.mkdir(name, 0o755, dir_fd=fd)
                        os.chown(name, self.uid, self.uid, dir_fd=fd, follow_symlinks=False)
                    except FileExistsError:
                        pass
                nfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                os.close(fd)
                fd = nfd
        except OSError as exc:
            os.close(fd)
            if exc.errno in (40, 20):  # ELOOP, ENOTDIR: a link or a file where a dir should be
                raise UsageError(f"{'/'.join(parts)!r} is not a directory inside the working dir") from None
            raise
        return fd

    def _open_file(self, path: str, flags: int, create: bool = False) -> int:
        """An fd of a regular file in the working dir. Never through a link; never blocking on a FIFO the code
        left there (O_NONBLOCK, then anything but a regular file is refused)."""
        parts = self._parts(path)
        if not parts:
            raise UsageError(f"path {path!r} names the working dir itself, not a file")
        dfd = self._open_dir(parts[:-1], create=create)
        try:
            fd = os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644, dir_fd=dfd)
        except OSError as exc:
            if exc.errno == 40:  # ELOOP
                raise UsageError(f"{path!r} is a symlink; the sandbox never reads or writes through links") from None
            if exc.errno == 6:   # ENXIO: a FIFO without a reader, or a socket
                raise UsageError(f"{path!r} is not a regular file") from None
            raise
        finally:
            os.close(dfd)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise UsageError(f"{path!r} is not a regular file")
        os.set_blocking(fd, True)
        return fd

    def write_file(self, path: str, content: str | bytes) -> None:
        data = content.encode() if isinstance(content, str) else bytes(content)
        with self._lock:
            fd = self._open_file(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, create=True)
            with os.fdopen(fd, "wb") as fh:
                if self._state.spec.root:
                    os.fchown(fd, self.uid, self.uid)
                fh.write(data)

    def read_file(self, path: str) -> bytes:
        with self._lock:
            with os.fdopen(self._open_file(path, os.O_RDONLY), "rb") as fh:
                return fh.read()

    def list_files(self, path: str = ".") -> list[str]:
        """Paths of the files under `path` (recursive, sorted), relative to the working dir."""
        parts = self._parts(path)
        with self._lock:
            dfd = self._open_dir(parts)
            try:
                found = [os.path.normpath(os.path.join(*parts, root, name))
                         for root, _dirs, files, _fd in os.fwalk(".", dir_fd=dfd) for name in files]
            finally:
                os.close(dfd)
        return sorted(found)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._finalizer()


__all__ = ["DEFAULT_LIMITS", "DEFAULT_PRELOAD", "JAIL_WORKDIR", "LocalSandbox", "gc_stale", "owner_alive"]
