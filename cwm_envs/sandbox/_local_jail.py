"""The host side of the `local` sandbox: jails (a bubblewrap jail over a capped tmpfs, the fork-server running
in it), what one sandbox holds on the host (temp dir, uid, memory group, current and spare jail), and the
leftovers of owners that died without cleaning up (`gc_stale`). `local.py` has the why of each piece.
"""
from __future__ import annotations

import ctypes
import dataclasses
import json
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
from pathlib import Path, PurePosixPath

from cwm_envs.errors import SandboxError
from cwm_envs.sandbox import _cgroup, _seccomp
from cwm_envs.sandbox._frames import LEN, program_source

JAIL_WORKDIR = "/sandbox"
UID_BASE = 1_500_000_000   # far above any real account: sandbox uids own nothing on the host
UID_SLOTS = 1 << 16
PREFIX = "cwm-sandbox-"    # temp dirs and cgroups: PREFIX + "PIDNS-PID-START-random"
_ETC = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "localtime", "nsswitch.conf", "hosts",
        "mime.types", f"python3.{sys.version_info.minor}")
_SERVER_SOURCE = program_source("_forkserver.py")
SECCOMP = _seccomp.program()   # None on a machine without a filter written for it
HOST_GRACE_S = 15.0        # beyond the timeout, before the host gives up on a silent server
_LIBC = ctypes.CDLL(None, use_errno=True)
_MS_NOSUID, _MS_NODEV, _MNT_DETACH = 2, 4, 2


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


# -- owners, leftovers --------------------------------------------------------------------------------------
def _proc_start(pid: int) -> str | None:
    """A process's start time (clock ticks since boot): with the pid, it names the process across pid reuse."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _pid_ns() -> int:
    return os.stat("/proc/self/ns/pid").st_ino


def _owner_tag() -> str:
    return f"{_pid_ns()}-{os.getpid()}-{_proc_start(os.getpid())}"


def owner_alive(name: str) -> bool | None:
    """Whether the process that made `name` (a temp dir or cgroup name of ours) still lives; None when this
    process cannot tell (a name of another format, or an owner in another PID namespace)."""
    try:
        ns, pid, start = name[len(PREFIX):].split("-")[:3]
        ns_ino, pid_no = int(ns), int(pid)
    except ValueError:
        return None
    if not name.startswith(PREFIX) or ns_ino != _pid_ns():
        return None
    return _proc_start(pid_no) == start


def _mount_tmpfs(path: Path, size_mb: int, inodes: int) -> str:
    """Mount a tmpfs capped in size and inodes on `path`; '' when done, else why not."""
    opts = f"size={size_mb}m,nr_inodes={inodes},mode=0755".encode()
    if _LIBC.mount(b"cwm-sandbox", os.fsencode(path), b"tmpfs", _MS_NOSUID | _MS_NODEV, opts) != 0:
        return os.strerror(ctypes.get_errno())
    return ""


def _remove_tree(path: Path) -> None:
    """Detach the mounts at or below `path` (deepest first), then delete it."""
    real = os.path.realpath(path)
    try:
        points = [p for _root, p, _t, _o in _cgroup.mounts() if p == real or p.startswith(real + "/")]
    except OSError:
        points = []
    for point in sorted(points, key=len, reverse=True):
        _LIBC.umount2(os.fsencode(point), _MNT_DETACH)
    shutil.rmtree(path, ignore_errors=True)


def _empty_dir(path: Path) -> None:
    """Delete what is inside `path` (never following a link) and the dir's own extended attributes."""
    with os.scandir(path) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
    for name in os.listxattr(path):
        os.removexattr(path, name)


def gc_stale(tmp_root: str | os.PathLike | None = None) -> list[str]:
    """Remove what local sandboxes of dead owners left behind (an owner killed by SIGKILL runs no cleanup):
    their temp dirs under `tmp_root` (default: the system temp dir), with the tmpfs mounted there, and their
    memory cgroups (what still runs in one is killed first). Returns the paths removed. Nothing of a live
    owner, or of one this process cannot judge (another PID namespace), is touched."""
    removed = []
    root = Path(tmp_root or tempfile.gettempdir())
    try:
        entries = [p for p in root.iterdir() if p.name.startswith(PREFIX)]
    except OSError:
        entries = []
    for path in entries:
        if owner_alive(path.name) is False:
            _remove_tree(path)
            removed.append(str(path))
    for group in _cgroup.groups_named(PREFIX):
        if owner_alive(group.path.name) is False and group.remove(kill=True):
            removed.append(str(group.path))
    return removed


class _Server:
    """One bubblewrap jail running the fork-server; everything here is host-side plumbing."""

    def __init__(self, argv: list[str], log_path: Path, startup_timeout: float, pass_fds: tuple[int, ...] = ()):
        self.log_path = log_path
        with open(log_path, "wb") as log:
            try:
                self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                             start_new_session=True, bufsize=0, pass_fds=pass_fds)
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


class _Jail:
    """One jail: its writable files on the host (work/, tmp/, shm/ on a capped tmpfs where we may mount one,
    else only work/ as a plain dir) and the fork-server running over them."""

    def __init__(self, path: Path, uid: int | None, size_mb: int, inodes: int):
        self.path, self.server, self.mounted = path, None, False
        path.mkdir(mode=0o755)
        if uid is None:
            self.uncapped = ("not root, so no tmpfs can be mounted for the jail: the working dir is a plain host "
                             "dir without a size or inode cap; /tmp and /dev/shm are capped in size only")
        else:
            why = _mount_tmpfs(path, size_mb, inodes)
            self.mounted = not why
            self.uncapped = "" if self.mounted else f"mounting a tmpfs for the jail's files failed ({why})"
        self.work.mkdir()
        if uid is not None:
            os.chown(self.work, uid, uid)
        if self.mounted:
            for name in ("tmp", "shm"):
                (path / name).mkdir()
                os.chmod(path / name, 0o1777)

    @property
    def work(self) -> Path:
        return self.path / "work"

    @property
    def log(self) -> Path:
        return self.path.with_name(self.path.name + ".log")  # beside the jail, out of its reach

    def stop_server(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            server.stop()

    def destroy(self) -> None:
        self.stop_server()
        if self.mounted:
            _LIBC.umount2(os.fsencode(self.path), _MNT_DETACH)  # frees every page at once
            self.mounted = False
        shutil.rmtree(self.path, ignore_errors=True)
        try:
            self.log.unlink()
        except OSError:
            pass


@dataclasses.dataclass(frozen=True)
class _Spec:
    """How one sandbox's jails are made; fixed at construction."""

    uid: int
    root: bool
    python: str
    preload: tuple[str, ...]
    ro_binds: tuple[str, ...]
    site_packages: bool
    tmpfs_mb: int
    tmpfs_inodes: int
    startup_timeout: float

    def argv(self, jail: _Jail, group: _cgroup.MemoryGroup | None, seccomp_fd: int | None) -> list[str]:
        prefix = str(Path(self.python).resolve().parent.parent)
        # looked up here, not left to exec: behind the memory group's `sh` wrapper a missing bwrap reads as a
        # server that died
        bwrap = shutil.which("bwrap")
        if bwrap is None:
            raise SandboxError("bubblewrap (bwrap) is not installed: `apt-get install bubblewrap` (or `make system`)")
        argv = [bwrap, "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
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
        for path in ([] if under_usr else [prefix]) + list(self.ro_binds):
            for parent in reversed(PurePosixPath(path).parents[:-1]):  # bwrap would make them 0700
                if str(parent) not in made:
                    made.add(str(parent))
                    argv += ["--perms", "0755", "--dir", str(parent)]
            argv += ["--ro-bind", path, path]
        argv += ["--proc", "/proc", "--dev", "/dev", "--mqueue", "/dev/mqueue"]  # so the server can list queues
        if jail.mounted:
            argv += ["--bind", str(jail.path / "tmp"), "/tmp", "--bind", str(jail.path / "shm"), "/dev/shm"]
        else:
            size = str(self.tmpfs_mb << 20)
            argv += ["--perms", "1777", "--size", size, "--tmpfs", "/tmp",
                     "--perms", "1777", "--size", size, "--tmpfs", "/dev/shm"]
        argv += ["--bind", str(jail.work), JAIL_WORKDIR, "--chdir", JAIL_WORKDIR, "--clearenv"]
        # PYTHONNOUSERSITE: HOME is the working dir, so a user site there (a .pth, usercustomize) left by an
        # earlier run would otherwise run inside every later `python3` command.
        env = {"PATH": f"{prefix}/bin:/usr/local/bin:/usr/bin:/bin", "HOME": JAIL_WORKDIR, "TMPDIR": "/tmp",
               "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONNOUSERSITE": "1"}
        for key, value in env.items():
            argv += ["--setenv", key, value]
        if self.root:  # the server needs only these to drop to the sandbox uid and to kill its processes
            argv += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID",
                     "--cap-add", "CAP_KILL"]
        else:
            argv += ["--unshare-user"]
        if seccomp_fd is not None:
            argv += ["--seccomp", str(seccomp_fd)]
        cfg = {"uid": self.uid if self.root else None, "gid": self.uid if self.root else None,
               "workdir": JAIL_WORKDIR, "preload": list(self.preload), "env": env}
        flags = ["-I", "-B", "-X", "utf8"] + ([] if self.site_packages else ["-S"])
        argv += [self.python, *flags, "-c", _SERVER_SOURCE, json.dumps(cfg)]
        if group is not None:  # enter the memory group first: all the jail is born inside it
            argv = ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(group.procs), *argv]
        return argv


class _State:
    """What one sandbox holds on the host: its temp dir, uid, memory group, the current jail and a spare one.

    A weakref finalizer holds this, never the sandbox, so it is released even when a sandbox is dropped
    without close(); the background worker that retires old jails and warms the spare holds it too."""

    def __init__(self, spec: _Spec):
        self.spec = spec
        self.owner = os.getpid()  # a forked copy of the host must not tear down the parent's sandbox
        self.base: Path | None = None
        self.uid_sock: socket.socket | None = None
        self.group: _cgroup.MemoryGroup | None = None
        self.jail: _Jail | None = None
        self.spare: _Jail | None = None
        self.worker: threading.Thread | None = None
        self.jails_made = 0
        self.closing = False
        self.guard = threading.Lock()  # the spare and `closing`, shared with the worker
        self.uncapped: dict[str, str] = {}

    def new_jail(self) -> _Jail:
        """A jail with its server started and ready (this takes a jail start, tens of ms)."""
        with self.guard:
            n, self.jails_made = self.jails_made, self.jails_made + 1
        jail = _Jail(self.base / f"jail-{n}", self.spec.uid if self.spec.root else None, self.spec.tmpfs_mb,
                     self.spec.tmpfs_inodes)
        if jail.uncapped:
            self.uncapped["disk"] = jail.uncapped
        try:
            self.launch(jail)
        except BaseException:
            jail.destroy()
            raise
        return jail

    def launch(self, jail: _Jail) -> _Server:
        fd = None
        if SECCOMP is not None:  # bwrap reads the filter from a pipe (a few hundred bytes: fits its buffer)
            fd, w = os.pipe()
            os.write(w, SECCOMP)
            os.close(w)
        try:
            jail.server = _Server(self.spec.argv(jail, self.group, fd), jail.log, self.spec.startup_timeout,
                                  pass_fds=() if fd is None else (fd,))
        finally:
            if fd is not None:
                os.close(fd)
        return jail.server

    def server(self) -> _Server:
        """The current jail's server, (re)started when it is not running."""
        jail = self.jail
        if jail.server is not None and not jail.server.alive():  # died since the last call: start afresh
            jail.stop_server()
        return jail.server or self.launch(jail)

    def wipe(self) -> bool:
        """Empty the current jail in place, where that is provably complete: its writable dirs are our tmpfs,
        and its server says nothing but files is left (no IPC object, no process of the code). False when it
        is not (the caller swaps in a new jail instead)."""
        jail, uid = self.jail, self.spec.uid
        server = jail.server
        if not jail.mounted or server is None or not server.alive():
            return False
        try:
            server.send({"op": "leftovers"})
            left, _ = server.read_frame(time.monotonic() + HOST_GRACE_S)
        except (OSError, SandboxError):
            jail.stop_server()
            return False
        if left.get("ipc") != 0 or left.get("others", 1) > 0:
            return False
        try:
            for name in ("work", "tmp", "shm"):
                _empty_dir(jail.path / name)
            os.chown(jail.work, uid, uid)  # the code owns its working dir: it may have changed its mode
            os.chmod(jail.work, 0o755)
        except OSError:
            return False
        return True

    def swap(self, warm_spare: bool) -> None:
        """Make a fresh jail current: the warm spare when one is ready, else one started now; the old jail is
        destroyed, and the next spare started, in the background."""
        if self.worker is not None:
            self.worker.join()
            self.worker = None
        with self.guard:
            fresh, self.spare = self.spare, None
        if fresh is not None and (fresh.server is None or not fresh.server.alive()):
            fresh.destroy()
            fresh = None
        fresh = fresh or self.new_jail()
        old, self.jail = self.jail, fresh
        self.worker = threading.Thread(target=self._retire_and_refill, args=(old, warm_spare),
                                       name="cwm-sandbox-reset", daemon=True)
        self.worker.start()

    def _retire_and_refill(self, old: _Jail, warm_spare: bool) -> None:
        old.destroy()
        if not warm_spare or self.closing:
            return
        try:
            spare = self.new_jail()
        except Exception:  # the next reset() starts one on the clock, and raises there if it must
            return
        with self.guard:
            if not self.closing:
                self.spare, spare = spare, None
        if spare is not None:
            spare.destroy()

    def release(self) -> None:
        if os.getpid() != self.owner:
            return
        with self.guard:
            self.closing = True
        if self.worker is not None and self.worker is not threading.current_thread():
            self.worker.join(timeout=60)
            self.worker = None
        for jail in (self.jail, self.spare):
            if jail is not None:
                jail.destroy()
        self.jail = self.spare = None
        if self.base is not None:
            _remove_tree(self.base)
            self.base = None
        if self.group is not None:
            self.group.remove()
            self.group = None
        if self.uid_sock is not None:
            self.uid_sock.close()
            self.uid_sock = None
