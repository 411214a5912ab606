"""The `local` sandbox: a warm fork-server inside a bubblewrap jail, one forked child per execution.

Isolation, and why each piece:
- Namespaces (bubblewrap, Debian's `bubblewrap`): network (no interface but a loopback with nothing on it,
  so connecting anywhere fails at once), PID (the server can kill everything an execution started, even
  children that called setsid), mount, IPC, UTS.
- Filesystem: /usr, the Python install and a few /etc files read-only; the private working dir (a temp dir,
  seen as /sandbox inside) writable; /tmp and /dev/shm private tmpfs capped at `tmpfs_mb`. Nothing else is
  mounted: not the project, not /root, not the rest of /etc.
- Identity: as root, each sandbox claims its own unprivileged uid (RLIMIT_NPROC does not bind root, and a
  uid per sandbox keeps sandboxes from sharing one process count). The server keeps only the capabilities to
  switch to it and to kill its processes; the jailed code has none, so it cannot signal the server. Not as
  root, bubblewrap's user namespace stands in (the code then runs as the invoking user's own uid).
- Limits: rlimits for CPU time, address space, processes, file size and open files per execution; where
  cgroup v1 allows, a memory group caps all the jail's processes together (`total_memory_mb`); the
  wall-clock deadline is kept by the server (never signal.alarm) and backed by the host; stdout and stderr
  are each capped at `output_bytes` (default 1 MiB), the excess dropped and marked.
- A dead server (killed, crashed) is restarted transparently on the next call; the working dir survives.

Each `LocalSandbox` runs one execution at a time (a lock), so use one per thread or worker for parallelism;
`arun` serves asyncio via a worker thread. The per-execution part lives in `_forkserver.py`.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import os
import random
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path, PurePosixPath

from cwm_envs.errors import SandboxError, UsageError
from cwm_envs.sandbox._frames import LEN, program_source
from cwm_envs.sandbox.base import ExecResult, Limits, Sandbox

JAIL_WORKDIR = "/sandbox"
DEFAULT_LIMITS = Limits(cpu_s=None, memory_mb=1024, processes=64, file_size_mb=64, open_files=256,
                        output_bytes=1 << 20)
# Imported once by the server so that each execution starts warm (forking copies them for free).
DEFAULT_PRELOAD = ("collections", "itertools", "functools", "math", "re", "json", "heapq", "bisect", "string",
                   "typing", "random", "dataclasses", "fractions", "decimal", "datetime", "copy", "operator",
                   "statistics", "traceback")
UID_BASE = 1_500_000_000   # far above any real account: sandbox uids own nothing on the host
UID_SLOTS = 1 << 16
_ETC = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "localtime", "nsswitch.conf", "hosts",
        "mime.types", f"python3.{sys.version_info.minor}")
_SERVER_SOURCE = program_source("_forkserver.py")
_HOST_GRACE_S = 15.0       # beyond the timeout, before the host gives up on a silent server


def _claim_uid() -> tuple[socket.socket, int]:
    """Claim a uid no other live sandbox on this host uses, held by an abstract socket (freed on exit)."""
    start = random.randrange(UID_SLOTS)
    for i in range(UID_SLOTS):
        slot = (start + i) % UID_SLOTS
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(f"\0cwm-envs-sandbox-uid-{slot}")
            return sock, UID_BASE + slot
        except OSError:
            sock.close()
    raise SandboxError("no free sandbox uid left")


def _children_of(pid: int) -> list[int]:
    kids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = Path(f"/proc/{name}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(name))
    return kids


def _memory_cgroup(name: str, limit_mb: int) -> Path | None:
    """A cgroup-v1 memory group for one sandbox, under this process's own, or None where we may not make one.

    RLIMIT_AS bounds each process, not their sum (64 processes x 1 GB would sink the host); the group bounds
    the whole jail, and its OOM counter tells a memory kill apart from other SIGKILLs."""
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if "memory" in controllers.split(","):
                parent = Path("/sys/fs/cgroup/memory") / path.lstrip("/")
                if (parent / "memory.limit_in_bytes").exists():
                    group = parent / name
                    group.mkdir(exist_ok=True)
                    (group / "memory.limit_in_bytes").write_text(str(limit_mb << 20))
                    return group
    except OSError:
        pass
    return None


def _oom_kills(group: Path) -> int:
    for line in (group / "memory.oom_control").read_text().splitlines():
        if line.startswith("oom_kill "):
            return int(line.split()[1])
    return 0


class _Server:
    """One bubblewrap jail running the fork-server; everything here is host-side plumbing."""

    def __init__(self, argv: list[str], log_path: Path, startup_timeout: float):
        self.log_path = log_path
        with open(log_path, "wb") as log:
            try:
                self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                             start_new_session=True, bufsize=0)
            except FileNotFoundError as exc:
                raise SandboxError("bubblewrap (bwrap) is not installed: `apt-get install bubblewrap` "
                                   "(or `make system`)") from exc
        self.buf = bytearray()
        self.wfd = self.proc.stdin.fileno()
        self.rfd = self.proc.stdout.fileno()
        self.poller = select.poll()
        self.poller.register(self.rfd, select.POLLIN)
        try:
            header, _ = self.read_frame(time.monotonic() + startup_timeout)
        except SandboxError as exc:
            self.stop()
            raise SandboxError(f"local sandbox failed to start: {exc}; bwrap said: {self.log()}") from None
        if not header.get("ready"):
            self.stop()
            raise SandboxError(f"local sandbox failed to start: {header}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace").strip()[-2000:] or "(nothing)"
        except OSError:
            return "(no log)"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, header: dict, payload: bytes = b"") -> None:
        data = json.dumps(header).encode()
        view = memoryview(b"".join((LEN.pack(len(data)), data, payload)))
        while view:
            view = view[os.write(self.wfd, view):]

    def read_exact(self, n: int, deadline: float) -> bytes:
        buf = self.buf  # bytes already read past the last message part (the ack and the reply come together)
        while len(buf) < n:
            wait = deadline - time.monotonic()
            if wait <= 0 or not self.poller.poll(wait * 1000):  # poll, not select: fds above 1024 are fine
                raise SandboxError("the sandbox server stopped answering")
            chunk = os.read(self.rfd, max(n - len(buf), 1 << 16))
            if not chunk:
                raise SandboxError("the sandbox server died")
            buf += chunk
        out = bytes(buf[:n])
        del buf[:n]
        return out

    def read_frame(self, deadline: float) -> tuple[dict, bytes]:
        (size,) = LEN.unpack(self.read_exact(LEN.size, deadline))
        header = json.loads(self.read_exact(size, deadline))
        body = self.read_exact(header.get("stdout_len", 0) + header.get("stderr_len", 0), deadline)
        return header, body

    def stop(self) -> None:
        """End the jail: closing the control pipe makes the server kill its namespace and exit."""
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            for pid in _children_of(self.proc.pid):  # bwrap's init: its death ends the whole PID namespace
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.proc.kill()
            self.proc.wait()


class _State:
    """What must be released even if the sandbox is never closed (held by a weakref finalizer)."""

    def __init__(self):
        self.owner = os.getpid()  # a forked copy of the host must not tear down the parent's sandbox
        self.server: _Server | None = None
        self.dir: Path | None = None
        self.uid_sock: socket.socket | None = None
        self.cgroup: Path | None = None

    def stop_server(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            server.stop()

    def release(self) -> None:
        if os.getpid() != self.owner:
            return
        self.stop_server()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
        if self.cgroup is not None:
            for _ in range(100):  # empty once the last killed process is reaped
                try:
                    self.cgroup.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.01)
            self.cgroup = None
        if self.uid_sock is not None:
            self.uid_sock.close()
            self.uid_sock = None


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
        tmpfs_mb: size of the private /tmp and /dev/shm.
        total_memory_mb: memory of all the jail's processes together (a cgroup-v1 memory group, where this
            process may create one; None: no such cap, only the per-process `memory_mb`).
    """

    name = "local"

    def __init__(self, limits: Limits | None = None, *, tmp_root: str | os.PathLike | None = None,
                 preload: tuple[str, ...] = DEFAULT_PRELOAD, python: str | None = None,
                 ro_binds: tuple[str, ...] = (), site_packages: bool = False, tmpfs_mb: int = 64, total_memory_mb: int | None = 4096,
                 startup_timeout: float = 30.0):
        self.limits = _merge(DEFAULT_LIMITS, limits)
        self._lock = threading.RLock()
        self._closed = False
        self._state = _State()
        self._finalizer = weakref.finalize(self, self._state.release)
        self._root = os.geteuid() == 0
        if self._root:
            self._state.uid_sock, self.uid = _claim_uid()
        else:
            self.uid = os.getuid()
        self._state.dir = Path(tempfile.mkdtemp(prefix="cwm-sandbox-", dir=tmp_root))
        self.workdir = self._state.dir / "work"
        self.workdir.mkdir()
        if self._root:
            os.chown(self.workdir, self.uid, self.uid)
        self._python = python or os.path.realpath(getattr(sys, "_base_executable", sys.executable))
        self._preload = tuple(preload)
        self._ro_binds = tuple(ro_binds)
        self._site_packages = site_packages
        self._tmpfs_mb = tmpfs_mb
        self._startup_timeout = startup_timeout
        if self._root and total_memory_mb:
            self._state.cgroup = _memory_cgroup(f"cwm-sandbox-{self.uid}", total_memory_mb)
        self._oom_seen = _oom_kills(self._state.cgroup) if self._state.cgroup else 0
        with self._lock:
            self._start()

    # -- the jail ---------------------------------------------------------------------------------------
    def _bwrap_argv(self) -> list[str]:
        prefix = str(Path(self._python).resolve().parent.parent)
        argv = ["bwrap", "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
                "--unshare-cgroup-try", "--new-session", "--hostname", "sandbox", "--ro-bind", "/usr", "/usr"]
        for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
            path = Path("/", name)
            if path.is_symlink():
                argv += ["--symlink", os.readlink(path), str(path)]
            elif path.is_dir():
                argv += ["--ro-bind", str(path), str(path)]
        for name in _ETC:
            argv += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
        made: set[str] = set()
        under_usr = prefix == "/usr" or prefix.startswith("/usr/")
        for path in ([] if under_usr else [prefix]) + list(self._ro_binds):
            for parent in reversed(PurePosixPath(path).parents[:-1]):  # bwrap would make them 0700
                if str(parent) not in made:
                    made.add(str(parent))
                    argv += ["--perms", "0755", "--dir", str(parent)]
            argv += ["--ro-bind", path, path]
        size = str(self._tmpfs_mb << 20)
        argv += ["--proc", "/proc", "--dev", "/dev",
                 "--perms", "1777", "--size", size, "--tmpfs", "/tmp",
                 "--perms", "1777", "--size", size, "--tmpfs", "/dev/shm",
                 "--bind", str(self.workdir), JAIL_WORKDIR, "--chdir", JAIL_WORKDIR, "--clearenv"]
        env = {"PATH": f"{prefix}/bin:/usr/local/bin:/usr/bin:/bin", "HOME": JAIL_WORKDIR, "TMPDIR": "/tmp",
               "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
        for key, value in env.items():
            argv += ["--setenv", key, value]
        if self._root:  # the server needs only these to drop to the sandbox uid and to kill its processes
            argv += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID",
                     "--cap-add", "CAP_KILL"]
        else:
            argv += ["--unshare-user"]
        cfg = {"uid": self.uid if self._root else None, "gid": self.uid if self._root else None,
               "workdir": JAIL_WORKDIR, "preload": list(self._preload), "env": env}
        flags = ["-I", "-B", "-X", "utf8"] + ([] if self._site_packages else ["-S"])
        argv += [self._python, *flags, "-c", _SERVER_SOURCE, json.dumps(cfg)]
        if self._state.cgroup is not None:  # enter the memory group first: all the jail is born inside it
            argv = ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self._state.cgroup / "cgroup.procs"), *argv]
        return argv

    def _start(self) -> _Server:
        if self._state.server is None:
            self._state.server = _Server(self._bwrap_argv(), self._state.dir / "server.log",
                                         self._startup_timeout)
        return self._state.server

    @property
    def memory_cgroup(self) -> Path | None:
        """The cgroup capping the jail's total memory, or None where none could be made."""
        return self._state.cgroup

    @property
    def server_pid(self) -> int | None:
        """Host pid of the outer bwrap process (for diagnostics and tests)."""
        server = self._state.server
        return server.proc.pid if server is not None else None

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
        lim = _merge(self.limits, limits)
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
            if self._state.cgroup is not None:
                kills = _oom_kills(self._state.cgroup)
                if kills > self._oom_seen:  # the kernel killed a process of this execution for the group's memory
                    self._oom_seen, limit = kills, limit or "memory"
        n_out = header["stdout_len"]
        return ExecResult(stdout=body[:n_out].decode("utf-8", "replace"),
                          stderr=body[n_out:].decode("utf-8", "replace"),
                          exit_code=header["exit_code"], timed_out=header["timed_out"],
                          limit_hit=limit, duration_s=header["duration_s"],
                          truncated=header["truncated"])

    def run_python(self, code: str, **kwargs) -> ExecResult:
        """Python source, as on every backend (here the same as `run(code)`)."""
        if not isinstance(code, str):
            raise UsageError("run_python takes the code as a string")
        return self.run(code, **kwargs)

    def _exchange(self, req: dict, payload: bytes, timeout: float) -> tuple[dict, bytes]:
        for attempt in range(2):
            server = self._start()
            if not server.alive():  # died since the last call (killed from outside): start afresh
                self._state.stop_server()
                server = self._start()
            try:
                server.send(req, payload)
                server.read_exact(1, time.monotonic() + _HOST_GRACE_S)  # the ack: the code has not started yet
            except (BrokenPipeError, SandboxError):
                self._state.stop_server()
                continue  # it never took the request: run it on a fresh server
            except BaseException:  # Ctrl-C mid-message: the protocol is out of step, so start afresh
                self._state.stop_server()
                raise
            try:
                return server.read_frame(time.monotonic() + timeout + _HOST_GRACE_S)
            except SandboxError as exc:
                self._state.stop_server()
                raise SandboxError(f"local sandbox: {exc} during the execution; it restarts on the next "
                                   "call") from None
            except BaseException:  # Ctrl-C while the code runs: end it with the server, start afresh
                self._state.stop_server()
                raise
        raise SandboxError("local sandbox: the server keeps dying")

    async def arun(self, code_or_cmd, stdin=None, timeout: float = 10.0, limits: Limits | None = None):
        """`run` for asyncio: executes in a worker thread so the event loop keeps going."""
        return await asyncio.to_thread(self.run, code_or_cmd, stdin, timeout, limits)

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

    def write_file(self, path: str, content: str | bytes) -> None:
        parts = self._parts(path)
        if not parts:
            raise UsageError(f"path {path!r} names the working dir itself, not a file")
        data = content.encode() if isinstance(content, str) else bytes(content)
        with self._lock:
            dfd = self._open_dir(parts[:-1], create=True)
            try:
                fd = os.open(parts[-1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644, dir_fd=dfd)
            except OSError as exc:
                if exc.errno == 40:
                    raise UsageError(f"{path!r} is a symlink; the sandbox never writes through links") from None
                raise
            finally:
                os.close(dfd)
            with os.fdopen(fd, "wb") as fh:
                if self._root:
                    os.fchown(fd, self.uid, self.uid)
                fh.write(data)

    def read_file(self, path: str) -> bytes:
        parts = self._parts(path)
        if not parts:
            raise UsageError(f"path {path!r} names the working dir itself, not a file")
        with self._lock:
            dfd = self._open_dir(parts[:-1])
            try:
                fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dfd)
            except OSError as exc:
                if exc.errno == 40:
                    raise UsageError(f"{path!r} is a symlink; the sandbox never reads through links") from None
                raise
            finally:
                os.close(dfd)
            with os.fdopen(fd, "rb") as fh:
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


def _merge(base: Limits, over: Limits | None) -> Limits:
    if over is None:
        return base
    return dataclasses.replace(base, **{k: v for k, v in dataclasses.asdict(over).items() if v is not None})
