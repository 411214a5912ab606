"""The `docker` sandbox: one container per episode, commands through `docker exec`, a warm pool for reset().

Why these choices:
- Commands run as an unprivileged user (SANDBOX_USER) unless a caller asks for root (`user=ROOT`, as SWE
  repositories do). The root filesystem is read-only; the writable areas (workdir, /tmp, /var/tmp, /dev/shm,
  the user's home) are tmpfs mounts capped in bytes and inodes. On this engine (overlay2 on ext4) Docker cannot
  cap a container's writable layer (`--storage-opt size` needs xfs with project quotas), and a tmpfs cap is the
  kernel's own: a full area gives ENOSPC, never a full host disk. Their contents count toward the memory limit.
  A caller that needs a writable image layer (SWE: `pip install -e .` into the image's venv) passes
  `read_only_root=False`; the layer is then watched from this host (`_LayerGuard`) and a command that grows it
  past the cap is killed.
- PID 1 is our own reaper (`_docker_tool.INIT`): a pid namespace's init gets no signal from inside it, so no
  command, root included, can end the container (Docker's init exits with its child, which root may kill).
- Trusted programs in the container (PID 1, the exec server, the helper, file reads and writes) and
  `run_python` start with the interpreter's absolute path, read from PID 1 before any command ran, and `-I`
  (`-I -S` for ours): nothing a command writes (a module in the workdir, a user site, a PATH shim,
  PYTHON* variables) changes what they import. With a read-only root nothing on their path is writable.
- Commands go through an exec server in the container (`_docker_tool.py serve`, started by one long-lived
  `docker exec` as root when the container starts): a command is then a fork, a switch to the sandbox's user
  and an exec, not a new `docker exec`, on which the engine alone spends ~50 ms. The server applies the marker,
  user, workdir, rlimits, deadline and output cap itself, and sends a heartbeat while a command runs: a server
  that a command stopped or killed (root may) is noticed within a second or two, the run comes back marked
  (`exit_code=None`, a note in stderr) and the next run starts a new server. A run that finds the server busy
  (another thread) or gone takes the classic path, one `docker exec` per command.
- Each execution carries its own marker in its environment (`CWM_EXEC=<token>`). After a timeout, and after
  a run that left processes behind, a one-process helper inside the container (`_docker_tool.py`) SIGKILLs
  every process with that marker (or with none): children that called setsid are caught, background jobs
  of other executions are not. When a fork bomb holds every pid, the pids limit is raised for a moment so
  the helper can start. With `background=True` a run's leftovers live on (an agent's server, say).
- Limits are read back from the container's cgroup counters (forks refused at the pids limit, OOM kills):
  from this host's /sys/fs/cgroup when it can see them (no extra exec), else through the helper. Docker
  20.10 does not set OOMKilled for exec'd processes, so the counters are the reliable witness.
- Every container is labelled `cwm-envs` with its owner's pid, process start time and host. The first
  sandbox of a process (and `cwm sandbox gc`) removes containers whose owner is dead; atexit, a chained
  SIGTERM handler and `close()` remove the process's own, so none outlives an exit, exception, Ctrl-C or SIGTERM.
- `reset()` takes a pre-started container from a pool that a background thread refills, and removes the
  old one in that thread, so a new episode starts in well under a millisecond instead of ~0.5 s. A new
  container has its own filesystem, processes and IPC namespace: nothing of an earlier episode is visible.
"""
from __future__ import annotations

import asyncio
import atexit
import base64
import dataclasses
import json
import os
import select
import signal
import socket
import statistics
import struct
import subprocess
import threading
import time
import uuid
import weakref
from pathlib import Path, PurePosixPath

from cwm_envs.errors import DockerUnavailable, SandboxError, UsageError
from cwm_envs.sandbox import _docker_tool
from cwm_envs.sandbox._frames import program_source
from cwm_envs.sandbox.base import ExecResult, Limits, Sandbox
from cwm_envs.sandbox.images import WORKDIR, ensure_base_image

LABEL = "cwm-envs"
PID_LABEL, START_LABEL, HOST_LABEL = "cwm-envs.owner-pid", "cwm-envs.owner-start", "cwm-envs.owner-host"
MARKER = _docker_tool.MARKER
DEFAULT_LIMITS = Limits(memory_mb=1024, processes=256, output_bytes=1 << 20)
DRAIN_FACTOR = _docker_tool.DRAIN_FACTOR   # past the cap, output is read and dropped up to 16x the cap
SERVER_GRACE_S = 30.0  # how long past a run's timeout the host waits for the server's reply
SILENCE_S = 1.0        # no heartbeat for this long: look at the server (stopped?); heartbeats come every 0.2 s
SILENCE_REMOTE_S = 5.0  # ... and where this host cannot see the container's processes, give up after this
SANDBOX_USER = "10001:10001"   # the default user of commands: a uid that no image or host account is likely to use
ROOT = "0:0"                   # user=ROOT: commands as root, for callers that need it (SWE repositories)
SANDBOX_HOME = "/home/sandbox"  # HOME of a non-root user (a capped tmpfs)
DISK_MB, DISK_INODES = 256, 32768  # default cap of each large writable area (workdir, /tmp, a writable layer)
# How SWE repositories run: as root (installs, any file of the repo and its venv), on a writable image layer
# (eval scripts `pip install -e .` into the venv) capped from this host, with room for builds and test caches.
REPO_SANDBOX = {"user": ROOT, "read_only_root": False, "disk_mb": 2048, "disk_inodes": 262144}
_TOOL_SOURCE = program_source("_docker_tool.py")
_ISOLATED = ("-I", "-S")       # how our own programs start: no site, no user site, no cwd, no PYTHON* variables

# ----------------------------------------------------------------------------------------------- process level

_lock = threading.RLock()
_client = None
_live: "weakref.WeakSet[DockerSandbox]" = weakref.WeakSet()
_hooks_pid: int | None = None
_gc_done_pid: int | None = None
_sigterm_pid: int | None = None
_prev_sigterm = None


def docker_client():
    """The process's Docker client; raises DockerUnavailable with a clear message when no engine answers."""
    global _client
    with _lock:
        if _client is None:
            import docker

            try:
                client = docker.from_env(timeout=120)
                client.ping()
            except Exception as exc:
                raise DockerUnavailable(
                    f"no Docker engine answers ({type(exc).__name__}: {exc}); start dockerd "
                    "(`bash scripts/ensure_docker.sh`) or run `make test`, which starts one") from exc
            _client = client
        return _client


def _proc_start(pid: int) -> str | None:
    """The start time of a process in clock ticks since boot, to tell a live owner from a reused pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


def _owner_labels() -> dict[str, str]:
    pid = os.getpid()
    return {LABEL: "1", PID_LABEL: str(pid), START_LABEL: _proc_start(pid) or "", HOST_LABEL: socket.gethostname()}


def _owner_alive(labels: dict[str, str]) -> bool:
    try:
        pid = int(labels[PID_LABEL])
    except ValueError:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    start = labels.get(START_LABEL)
    return not start or _proc_start(pid) in (None, start)


def gc_stale(client=None) -> list[dict]:
    """Remove containers labelled `cwm-envs` whose owner process is dead; return what was removed.

    Only containers made on this host are judged: a pid means nothing on another host.
    """
    client = client or docker_client()
    host = socket.gethostname()
    removed = []
    for c in client.containers.list(all=True, filters={"label": LABEL}, ignore_removed=True):
        labels = c.labels or {}
        if PID_LABEL not in labels or labels.get(HOST_LABEL) != host:
            continue                         # not made by a sandbox, or elsewhere: nothing to judge it by
        if _owner_alive(labels):
            continue
        _remove_quietly(c)
        removed.append({"id": c.short_id, "name": c.name, "owner_pid": labels.get(PID_LABEL, "?")})
    return removed


def _remove_quietly(container) -> None:
    try:
        container.remove(force=True, v=True)
    except Exception:   # already gone, or the engine is going down: nothing left to do
        pass


def _cleanup_all() -> None:
    """Close every sandbox of this process, then remove anything else labelled with its pid."""
    if _hooks_pid != os.getpid():           # a forked child must not remove its parent's containers
        return
    closers = [threading.Thread(target=sb.close) for sb in list(_live)]   # in parallel: exit stays quick
    for t in closers:
        t.start()
    for t in closers:
        t.join(timeout=90)
    if _client is not None:
        try:
            own = {"label": [f"{PID_LABEL}={os.getpid()}", f"{HOST_LABEL}={socket.gethostname()}"]}
            for c in _client.containers.list(all=True, filters=own, ignore_removed=True):
                _remove_quietly(c)
        except Exception:
            pass


def _on_sigterm(signum, frame):
    _cleanup_all()
    prev = _prev_sigterm
    if callable(prev):
        prev(signum, frame)
    else:                                    # SIG_DFL (or unknown): die by the signal, as without us
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)


def _after_fork_in_child() -> None:
    global _client, _hooks_pid, _gc_done_pid, _sigterm_pid
    _client, _hooks_pid, _gc_done_pid, _sigterm_pid = None, None, None, None
    _live.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _install_process_hooks(client) -> None:
    """Once per process: reap dead owners' containers, and make sure ours go at exit and on SIGTERM.

    The SIGTERM handler can only be set from the main thread; it is set by the first sandbox made there."""
    global _hooks_pid, _gc_done_pid, _prev_sigterm, _sigterm_pid
    with _lock:
        if _gc_done_pid != os.getpid():
            _gc_done_pid = os.getpid()
            gc_stale(client)
        if _hooks_pid != os.getpid():
            _hooks_pid = os.getpid()
            atexit.register(_cleanup_all)
        if _sigterm_pid != os.getpid() and threading.current_thread() is threading.main_thread():
            _sigterm_pid = os.getpid()
            prev = signal.getsignal(signal.SIGTERM)
            if prev is not signal.SIG_IGN and prev is not _on_sigterm:
                _prev_sigterm = prev
                signal.signal(signal.SIGTERM, _on_sigterm)


# ----------------------------------------------------------------------------------------------- exec streams

def _split_frames(buf: bytearray):
    """The complete frames of Docker's multiplexed exec stream in `buf`, as (stream, payload), removed from it
    (stream 1 is stdout, 2 stderr); a partial frame stays for the next read."""
    while len(buf) >= 8:
        stream, size = struct.unpack(">BxxxL", buf[:8])
        if len(buf) < 8 + size:
            return
        payload = bytes(buf[8:8 + size])
        del buf[:8 + size]
        yield stream, payload


def _pump(sock, stdin: bytes | None, deadline: float, cap: int) -> tuple[bytes, bytes, bool, str | None]:
    """Read Docker's multiplexed exec stream until EOF, the deadline, or too much output.

    Returns (stdout, stderr, truncated, stop) where stop is None (EOF), "timeout" or "output".
    """
    raw = getattr(sock, "_sock", sock)
    raw.setblocking(False)
    outs = {1: bytearray(), 2: bytearray()}
    seen, truncated, buf = 0, False, bytearray()
    pending = memoryview(stdin) if stdin is not None else None
    if pending is not None and not pending:
        raw.shutdown(socket.SHUT_WR)
        pending = None
    poller = select.poll()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return bytes(outs[1]), bytes(outs[2]), truncated, "timeout"
        poller.register(raw, select.POLLIN | (select.POLLOUT if pending is not None else 0))
        events = poller.poll(left * 1000)
        for _fd, ev in events:
            if ev & select.POLLOUT and pending is not None:
                try:
                    n = raw.send(pending[:1 << 16])
                    pending = pending[n:]
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:                   # the command exited without reading its stdin
                    pending = memoryview(b"")
                if not pending:
                    try:
                        raw.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    pending = None
            if ev & (select.POLLIN | select.POLLHUP | select.POLLERR):
                try:
                    data = raw.recv(1 << 16)
                except (BlockingIOError, InterruptedError):
                    continue
                if not data:
                    return bytes(outs[1]), bytes(outs[2]), truncated, None
                buf += data
                for stream, payload in _split_frames(buf):
                    out = outs.get(stream, outs[1])
                    room = cap - len(out)
                    if len(payload) > room:
                        truncated = True
                    out += payload[:max(0, room)]
                    seen += len(payload)
                if seen > DRAIN_FACTOR * cap + 2 * cap:
                    return bytes(outs[1]), bytes(outs[2]), True, "output"
        poller.unregister(raw)


class _ServerGone(Exception):
    """The exec server's stream ended, or it fell silent (`stalled`: stopped by a command, say); `started`
    says whether the command may have begun."""

    def __init__(self, started: bool, why: str, stalled: bool = False):
        super().__init__(why)
        self.started, self.stalled = started, stalled


class _ExecServer:
    """The host's end of one container's exec server: a `docker exec` of `_docker_tool serve` as root, whose
    commands run as the sandbox's user; it lives as long as the container and takes one request at a time
    (`lock`). `stalled(silence_s)` tells whether a server silent for that long is surely stuck."""

    def __init__(self, api, container_id: str, python: str, ids: tuple[int, int], marker: str,
                 stalled, ready_s: float = 60.0):
        self.marker, self.stalled = marker, stalled
        argv = [python, *_ISOLATED, "-c", _TOOL_SOURCE, "serve", str(ids[0]), str(ids[1])]
        exec_id = api.exec_create(container_id, argv, stdin=True, user="0", workdir="/",
                                  environment={MARKER: marker})["Id"]
        self.sock = api.exec_start(exec_id, socket=True)
        self.raw = getattr(self.sock, "_sock", self.sock)
        self.raw.setblocking(False)
        self.lock = threading.Lock()
        self._frames = bytearray()           # Docker's multiplexed stream, not yet split
        self._out = bytearray()              # the server's stdout, not yet consumed
        self.heard = time.monotonic()
        try:
            ready = self._frame(time.monotonic() + ready_s)[0]
        except (_ServerGone, TimeoutError):
            self.close()
            raise
        self.pid = ready["pid"]              # in the container's pid namespace
        self.host_pid: int | None = None     # on this host, once looked up (_Box.server_host_pid)

    def _fill(self, deadline: float, started: bool) -> None:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the exec server did not answer in time")
            if select.select([self.raw], [], [], min(left, SILENCE_S))[0]:
                break
            silent = time.monotonic() - self.heard
            if silent >= SILENCE_S and self.stalled(silent):
                raise _ServerGone(started, f"it fell silent for {silent:.1f} s", stalled=True)
        try:
            data = self.raw.recv(1 << 16)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            raise _ServerGone(started, f"its stream failed: {exc}") from exc
        if not data:
            raise _ServerGone(started, "its stream ended")
        self.heard = time.monotonic()
        self._frames += data
        for stream, payload in _split_frames(self._frames):
            if stream == 1:                  # stderr (2) is the server's own, sent to /dev/null anyway
                self._out += payload

    def _take(self, n: int, deadline: float, started: bool = True) -> bytes:
        while len(self._out) < n:
            self._fill(deadline, started)
        data = bytes(self._out[:n])
        del self._out[:n]
        return data

    def _frame(self, deadline: float) -> tuple[dict, list[bytes]]:
        head = json.loads(self._take(struct.unpack(">I", self._take(4, deadline))[0], deadline))
        payloads = [self._take(head[k], deadline) for k in ("stdout_len", "stderr_len") if k in head]
        return head, payloads

    def call(self, request: dict, stdin: bytes | None, deadline: float) -> tuple[dict, bytes, bytes]:
        """Send one request and wait for its reply; _ServerGone when the server is gone or stuck, TimeoutError
        when it has not answered by the deadline."""
        body = json.dumps({**request, "stdin_len": -1 if stdin is None else len(stdin)}).encode()
        try:
            self.raw.settimeout(max(1.0, deadline - time.monotonic()))
            self.raw.sendall(struct.pack(">I", len(body)) + body + (stdin or b""))
        except OSError as exc:               # includes a send timeout: the server is not reading
            raise _ServerGone(False, f"it does not take requests: {exc}") from exc
        finally:
            self.raw.setblocking(False)
        self.heard = time.monotonic()
        if self._take(1, deadline, started=False) != _docker_tool.ACK:   # from here on the command may run
            raise _ServerGone(False, "it answered out of turn")
        while (tag := self._take(1, deadline)) == _docker_tool.BEAT:
            pass
        if tag != _docker_tool.REPLY:
            raise _ServerGone(True, "its reply is garbled")
        head, (out, err) = self._frame(deadline)
        return head, out, err

    def close(self) -> None:
        try:
            self.sock.close()                # the server reads EOF and exits
        except OSError:
            pass


# ----------------------------------------------------------------------------------------------- the sandbox

def _cgroup_dirs(host_pid: int, cid: str) -> dict[str, list[str]]:
    """The container's cgroup directories on this host, from its init's /proc entry ({} where unseen:
    a remote engine, another pid namespace)."""
    try:
        lines = Path(f"/proc/{host_pid}/cgroup").read_text().splitlines()
    except OSError:
        return {}
    dirs: dict[str, list[str]] = {"pids": [], "memory": []}
    for line in lines:
        _, ctrls, path = line.split(":", 2)
        if cid not in path:
            continue
        for ctrl in ctrls.split(",") if ctrls else ("pids", "memory"):
            if ctrl in dirs:
                dirs[ctrl].append(f"/sys/fs/cgroup/{ctrl}{path}" if ctrls else f"/sys/fs/cgroup{path}")
    return dirs if _docker_tool.read_counters(dirs) else {}


class _Box:
    """One container and what the sandbox knows of it: its cgroup on this host, the limits applied to it, the
    interpreter its PID 1 runs (an absolute path, read before any command ran), its capped areas."""

    def __init__(self, container, applied: tuple[int | None, int | None], python: str, ids: tuple[int, int],
                 areas: list[str]):
        self.container = container
        self.applied = applied
        self.python, self.ids, self.areas = python, ids, areas
        container.reload()
        self.init_pid = container.attrs["State"]["Pid"]
        self.cgroup = _cgroup_dirs(self.init_pid, container.id)
        self.seen = {"pids": 0, "pids_max": 0, "oom": 0}    # last counters the helper reported
        self.server: _ExecServer | None = None
        self.server_starts_failed = 0
        self.server_lock = threading.Lock()
        self.live: set[str] = set()          # markers of the runs, helpers and server alive now (see _sweep)
        self.live_lock = threading.Lock()
        self.kill_lock = threading.Lock()    # one stop-and-kill from this host at a time (see _host_kill)
        self.disk_hit = False                # set by the _LayerGuard when it killed commands of this container
        try:                                 # may this process signal the container's processes itself?
            os.kill(self.init_pid, 0)
            self.host_kill = bool(self.cgroup)
        except OSError:
            self.host_kill = False

    def counters(self) -> dict | None:
        return _docker_tool.read_counters(self.cgroup) if self.cgroup else None

    def exec_server(self) -> _ExecServer | None:
        """The container's exec server, started (again) when missing; None where it cannot start (an image
        whose python3 is too old), after which the classic path serves."""
        with self.server_lock:
            if self.server is None and self.server_starts_failed < 2:
                marker = f"server-{uuid.uuid4().hex}"
                self.add_live(marker)
                try:
                    self.server = _ExecServer(self.container.client.api, self.container.id, self.python, self.ids,
                                              marker, self._stalled)
                except Exception:
                    self.server_starts_failed += 1
                    self.drop_live(marker)
            return self.server

    def _stalled(self, silent_s: float) -> bool:
        """Whether a server silent for `silent_s` is stuck: stopped or gone, where this host sees it (twice, a
        moment apart); else silent for SILENCE_REMOTE_S."""
        pid = self.server_host_pid()
        if pid is None:
            return silent_s >= SILENCE_REMOTE_S
        for look in range(2):
            if _states([pid], set()).get(pid, "X") not in "TtZX":
                return False
            time.sleep(0.2 * (1 - look))
        return True

    def server_host_pid(self) -> int | None:
        """This host's pid of the exec server, where this host sees the container's processes."""
        server = self.server
        if server is None or not self.host_kill:
            return None
        if server.host_pid is None:
            server.host_pid = self._host_pid(server.pid)
        return server.host_pid

    def _host_pid(self, ns_pid: int) -> int | None:
        """This host's pid of a process of the container, from its pid there (NSpid in /proc/PID/status)."""
        for pid in self.cgroup_pids():
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("NSpid:") and int(line.split()[-1]) == ns_pid:
                        return pid
            except (OSError, ValueError):
                continue
        return None

    def kill_server(self, server: _ExecServer) -> None:
        """SIGKILL the exec server (a stopped one too): from this host where it may, else as root inside."""
        pid = server.host_pid or (self._host_pid(server.pid) if self.host_kill else None)
        if pid is not None:
            _docker_tool._signal([pid], signal.SIGKILL)
            return
        try:
            self.container.exec_run([self.python, *_ISOLATED, "-c", f"import os; os.kill({server.pid}, 9)"],
                                    user="0", environment={MARKER: server.marker})
        except Exception:                    # the container is gone: so is the server
            pass

    def add_live(self, marker: str) -> None:
        with self.live_lock:
            self.live.add(marker)

    def drop_live(self, marker: str) -> None:
        with self.live_lock:
            self.live.discard(marker)

    def drop_server(self) -> None:
        with self.server_lock:
            server, self.server = self.server, None
        if server is not None:
            server.close()
            self.drop_live(server.marker)

    def remove(self) -> None:
        _LayerGuard.forget(self)
        self.drop_server()
        _remove_quietly(self.container)

    def cgroup_pids(self) -> list[int]:
        for d in self.cgroup.get("pids", ()):
            try:
                return [int(x) for x in Path(d, "cgroup.procs").read_text().split()]
            except OSError:
                continue
        return []

    def full_areas(self) -> list[str]:
        """The capped areas with no room or inode left, seen from this host through PID 1's root."""
        if not self.host_kill:
            return []
        return _docker_tool.full_areas(self.areas, f"/proc/{self.init_pid}/root")

    def alive(self) -> bool:
        """Whether the container still runs (its PID 1 is alive: nothing inside can end it)."""
        if self.host_kill:
            return _states([self.init_pid], set()).get(self.init_pid, "Z") != "Z"
        try:
            self.container.reload()
            return self.container.status == "running"
        except Exception:                    # gone altogether
            return False


class _LayerGuard:
    """Caps the writable image layer of containers made with `read_only_root=False`, where the engine cannot
    (overlay2 without xfs project quotas). One thread of this process measures each guarded container's
    upper directory, and the /etc files Docker bind-mounts writable into it, every quarter second or so; when
    one is past its cap in bytes or inodes it SIGKILLs the container's commands (not its init, exec server
    or helpers). The sandbox measures again when a run ends, and replaces a container still over its cap, so
    quick runs cannot add up. The walk stops at twice the cap: a measure costs at most that many inodes.
    Containers whose layer this host cannot see (a remote engine) are not guarded."""

    _boxes: "weakref.WeakKeyDictionary[_Box, dict]" = weakref.WeakKeyDictionary()
    _lock = threading.Lock()
    _thread: threading.Thread | None = None
    _thread_pid: int | None = None

    @classmethod
    def watch(cls, box: _Box, cap_bytes: int, cap_inodes: int) -> bool:
        attrs = box.container.attrs
        upper = (attrs.get("GraphDriver") or {}).get("Data", {}).get("UpperDir")
        if not upper or not box.host_kill or not os.path.isdir(upper):
            return False
        files = [attrs.get(k) for k in ("HostsPath", "HostnamePath", "ResolvConfPath") if attrs.get(k)]
        with cls._lock:
            cls._boxes[box] = {"upper": upper, "files": files, "cap": (cap_bytes, cap_inodes)}
            if cls._thread is None or cls._thread_pid != os.getpid() or not cls._thread.is_alive():
                cls._thread_pid = os.getpid()
                cls._thread = threading.Thread(target=cls._loop, name="cwm-docker-disk", daemon=True)
                cls._thread.start()
        return True

    @classmethod
    def forget(cls, box: _Box) -> None:
        with cls._lock:
            cls._boxes.pop(box, None)

    @classmethod
    def over(cls, box: _Box) -> bool:
        """Whether a guarded container's layer is past its cap now (False for one not guarded)."""
        with cls._lock:
            state = cls._boxes.get(box)
        if state is None:
            return False
        (cap_bytes, cap_inodes), used = state["cap"], _usage(state["upper"], state["files"], *state["cap"])
        return used[0] > cap_bytes or used[1] > cap_inodes

    @classmethod
    def _loop(cls) -> None:
        while True:
            t = time.monotonic()
            with cls._lock:
                boxes = list(cls._boxes)
                if not boxes:                # nothing to guard: the next watch() starts a new thread
                    cls._thread = None
                    return
            for box in boxes:
                try:
                    if cls.over(box):
                        box.disk_hit = True
                        with box.live_lock:
                            ours = {m for m in box.live if m.startswith(("server-", "helper-"))}
                        with box.kill_lock:
                            _docker_tool.kill_marked(None, box.cgroup_pids, {box.init_pid}, rounds=50, spare=ours)
                except Exception:            # a container going away mid-walk: the next round sees it gone
                    pass
            time.sleep(max(0.25, 4 * (time.monotonic() - t)))   # a long walk is not repeated at once


def _usage(root: str, files: list[str], max_bytes: int, max_inodes: int) -> tuple[int, int]:
    """(bytes, inodes) under `root` plus `files`; the count stops as soon as either passes its max."""
    size, count, stack = 0, 0, [root]
    for f in files:
        try:
            size += os.stat(f).st_blocks * 512
        except OSError:
            pass
    while stack:
        try:
            entries = os.scandir(stack.pop())
        except OSError:
            continue
        with entries:
            for entry in entries:
                count += 1
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                size += st.st_blocks * 512
                if size > max_bytes or count > max_inodes:
                    return size, count
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
    return size, count


class DockerSandbox(Sandbox):
    """Commands and code in a Docker container: one container per episode, a warm pool behind `reset()`.

    Arguments:
        image: any image with python3 (pulled when missing); default `$CWM_BASE_IMAGE` or the offline
            `cwm-envs/base:bookworm`, built on first use.
        limits: defaults for every run; memory (MB, no swap) and processes are the container's cgroup
            limits, `cpu_s`, `file_size_mb` and `open_files` become rlimits of each run (via `prlimit`),
            `output_bytes` caps stdout and stderr each.
        pool_size: pre-started containers kept ready for `reset()` (0: reset creates one, ~0.5 s).
        network: False (default) gives the container no network interface but loopback.
        cpus: CPU share of the container (1.0 = one core).
        workdir: where commands run and relative file paths point.
        user: "UID[:GID]" that commands run as; default SANDBOX_USER (unprivileged: it may write only the
            capped areas, read no root-only file, signal none of the sandbox's own processes). `ROOT` ("0:0")
            only where a caller needs it (SWE repositories: installs, any file of the image).
        read_only_root: True (default): the image is read-only, the workdir, /tmp, /var/tmp, /dev/shm and the
            home are empty tmpfs mounts (an image's files in the workdir are not seen). False keeps the
            image's layer writable (and its workdir's files, given to a non-root user), with /tmp, /var/tmp,
            /dev/shm and a non-root user's home still tmpfs; the layer is watched from this host
            (`_LayerGuard`): a run that takes it past the cap is killed and the container replaced.
        disk_mb, disk_inodes: cap of the workdir, /tmp and a writable layer each (the smaller areas get an
            eighth). A full area fails writes with ENOSPC and the run reports limit_hit="disk". tmpfs
            contents count toward the memory limit.
        background: keep processes a run leaves behind (default False: they are killed when it returns).
        exec_server: run commands through the container's exec server (default); False: one `docker exec`
            per command (~50 ms more each).
        shell: how a string command runs (`bash -c` by default).
        env: extra environment variables for every command.

    `run(str)` runs a shell command, `run(list)` an argv, `run_python(code)` Python code (the image's python3
    by its absolute path, isolated with `-I`). Outcomes (timeout, limit hit, truncated output) come back in the
    ExecResult (`exit_code` is None after a timeout, the output limit, or a command that killed or stopped the
    exec server running it; 128+N after signal N); only a fault of Docker itself raises SandboxError
    (DockerUnavailable when no engine answers); a container found dead is replaced for the next run. A job
    left running in the background that still holds the command's stdout delays its return by a 2 s grace, as
    Docker's stream does: redirect it (`cmd > log 2>&1 &`).
    Close the sandbox (or use `with`); one never closed is removed when the process exits.
    """

    name = "docker"

    def __init__(self, image: str | None = None, *, limits: Limits | None = None, pool_size: int = 1,
                 network: bool = False, cpus: float = 1.0, workdir: str = WORKDIR, user: str = SANDBOX_USER,
                 read_only_root: bool = True, disk_mb: int = DISK_MB, disk_inodes: int = DISK_INODES,
                 background: bool = False, shell: tuple[str, ...] = ("bash", "-c"),
                 env: dict[str, str] | None = None, exec_server: bool = True, client=None):
        if pool_size < 0 or cpus <= 0:
            raise UsageError("pool_size must be >= 0 and cpus > 0")
        if user is None or not all(part.isdigit() for part in str(user).split(":", 1)):
            raise UsageError(f"user must be 'UID' or 'UID:GID' (numbers; ROOT for root), got {user!r}")
        if disk_mb < 8 or disk_inodes < 64:
            raise UsageError("disk_mb must be >= 8 and disk_inodes >= 64")
        if not PurePosixPath(workdir).is_absolute():
            raise UsageError(f"workdir must be an absolute path, got {workdir!r}")
        self._closed = True                  # until a container exists, close() has nothing to do
        self.client = client or docker_client()
        self.image = ensure_base_image(image, client=self.client)
        self.limits = _merge(DEFAULT_LIMITS, limits)
        self.pool_size, self.network, self.cpus, self.background = pool_size, network, cpus, background
        self.workdir, self.shell, self.env = workdir, tuple(shell), dict(env or {})
        self.use_exec_server = exec_server
        self._ids = tuple(int(x) for x in (str(user).split(":") * 2)[:2])
        self.user = f"{self._ids[0]}:{self._ids[1]}"
        self.read_only_root, self.disk_mb, self.disk_inodes = read_only_root, disk_mb, disk_inodes
        # a uid without an /etc/passwd entry: tell programs who and where it is
        self._home = {"HOME": SANDBOX_HOME, "USER": "sandbox", "LOGNAME": "sandbox"} if self._ids[0] else {}
        self._cv = threading.Condition(threading.RLock())
        self._pool: list[_Box] = []
        self._retire: list[_Box] = []
        self._pool_error: BaseException | None = None
        _install_process_hooks(self.client)
        _live.add(self)
        self._closed = False
        self._box: _Box | None = None
        try:
            self._box = self._create()
        except BaseException:
            self.close()
            raise
        self._worker = threading.Thread(target=self._pool_loop, name="cwm-docker-pool", daemon=True)
        self._worker.start()

    # -- containers ------------------------------------------------------------------------------------
    def _tmpfs(self) -> dict[str, str]:
        """The capped tmpfs mounts: path -> mount options. Their contents are memory the container's cgroup
        pays for and cannot reclaim (no swap): all of them together stay under 3/5 of the memory limit, so
        filling them makes writes fail, not the OOM killer take the container's init or exec server."""
        uid, gid = self._ids
        mb = min(self.disk_mb, self.limits.memory_mb // 4) if self.limits.memory_mb else self.disk_mb
        big = f"size={max(1, mb)}m,nr_inodes={self.disk_inodes},exec"
        small = f"size={max(1, mb // 8)}m,nr_inodes={max(64, self.disk_inodes // 8)},exec"
        mounts = {"/tmp": big + ",mode=1777", "/var/tmp": small + ",mode=1777", "/dev/shm": small + ",mode=1777"}
        if self.read_only_root:
            mounts[self.workdir] = big + f",mode=0755,uid={uid},gid={gid}"
        if uid or self.read_only_root:       # root's home stays the image's where the image is writable
            mounts.setdefault(SANDBOX_HOME if uid else "/root", small + f",mode=0700,uid={uid},gid={gid}")
        return mounts

    def _ipc_sysctls(self) -> dict[str, str]:
        """Caps of the container's own IPC namespace: SysV shared memory outlives its processes and is memory
        the cgroup pays for, so at most a quarter of the memory limit; few message queues."""
        sysctls = {"kernel.msgmni": "64"}
        if self.limits.memory_mb:
            shm = (self.limits.memory_mb // 4) << 20
            sysctls.update({"kernel.shmmax": str(shm), "kernel.shmall": str(shm // 4096)})
        return sysctls

    def _create(self) -> _Box:
        import docker.errors
        from docker.types import LogConfig, Ulimit

        lim = self.limits
        uid, gid = self._ids
        init = [*_ISOLATED, "-c", _docker_tool.INIT]
        if not self.read_only_root and uid:  # hand the image's workdir to the user
            init += [self.workdir, str(uid), str(gid)]
        tmpfs = self._tmpfs()
        kwargs = dict(
            entrypoint=["python3", *init], detach=True, labels=_owner_labels(),
            network_mode="bridge" if self.network else "none", working_dir=self.workdir,
            environment={**self.env, MARKER: "keep"}, nano_cpus=int(self.cpus * 1e9),
            security_opt=["no-new-privileges"], hostname="sandbox", ipc_mode="private",
            read_only=self.read_only_root, tmpfs=tmpfs, sysctls=self._ipc_sysctls(),
            log_config=LogConfig(type="json-file", config={"max-size": "64k", "max-file": "1"}),
            ulimits=[Ulimit(name="core", soft=0, hard=0)],   # no core files in the capped areas
        )
        if lim.memory_mb:
            kwargs.update(mem_limit=f"{lim.memory_mb}m", memswap_limit=f"{lim.memory_mb}m")
        if lim.processes:
            kwargs["pids_limit"] = lim.processes
        try:
            container = self.client.containers.create(self.image, **kwargs)
        except docker.errors.DockerException as exc:
            raise SandboxError(f"cannot create a container from {self.image}: {exc}") from exc
        try:
            container.start()
            python = self._init_python(container)
            box = _Box(container, (lim.memory_mb, lim.processes), python, self._ids, sorted(tmpfs))
            if not self.read_only_root:
                _LayerGuard.watch(box, self.disk_mb << 20, self.disk_inodes)
            if self.use_exec_server:
                box.exec_server()            # now, off the clock of the first run
            return box
        except BaseException as exc:
            _remove_quietly(container)
            if isinstance(exc, docker.errors.DockerException):
                raise SandboxError(f"cannot start a container from {self.image}: {exc}") from exc
            raise

    def _init_python(self, container, wait_s: float = 60.0) -> str:
        """The real path of the image's python3, as PID 1 printed it before any command could run."""
        deadline = time.monotonic() + wait_s
        while True:
            line = container.logs(stdout=True, stderr=False).decode("utf-8", "replace").strip()
            if line.startswith("/"):
                return line.splitlines()[0]
            container.reload()
            if container.status != "running" or time.monotonic() > deadline:
                tail = container.logs().decode("utf-8", "replace").strip()[-300:]
                raise SandboxError(f"{self.image} has no working python3 to start the sandbox ({tail or container.status})")
            time.sleep(0.005)

    def _pool_loop(self) -> None:
        """Keep `pool_size` fresh containers ready; remove retired ones when there is nothing to fill."""
        failures = 0
        while True:
            with self._cv:
                while not self._closed and len(self._pool) >= self.pool_size and not self._retire:
                    self._cv.wait()
                if self._closed:
                    return
                victim = None if len(self._pool) < self.pool_size else self._retire.pop()
            if victim is not None:
                victim.remove()
                continue
            try:
                fresh = self._create()
            except Exception as exc:         # engine trouble: report it to reset(), back off, try again
                failures += 1
                with self._cv:
                    self._pool_error = exc
                    self._cv.notify_all()
                    self._cv.wait(min(30.0, 0.5 * 2 ** failures))
                continue
            failures = 0
            with self._cv:
                if self._closed:
                    fresh.remove()
                    return
                self._pool.append(fresh)
                self._pool_error = None
                self._cv.notify_all()

    def reset(self, timeout: float = 120.0) -> None:
        """Swap in a pristine container from the warm pool; the used one is removed in the background."""
        self._check_open()
        if self.pool_size == 0:
            fresh = self._create()
        else:
            with self._cv:
                begin = time.monotonic()
                while not self._pool and not self._closed:
                    waited = time.monotonic() - begin
                    if self._pool_error is not None and waited > 5:
                        raise SandboxError(f"the warm pool cannot start containers: {self._pool_error}")
                    if waited > timeout:
                        raise SandboxError(f"no pooled container became ready within {timeout:.0f} s")
                    self._cv.wait(0.25)
                self._check_open()
                fresh = self._pool.pop(0)
        with self._cv:
            self._box, old = fresh, self._box
            self._retire.append(old)
            self._cv.notify_all()

    @property
    def container_id(self) -> str:
        self._check_open()
        return self._box.container.id

    def _check_open(self) -> None:
        if self._closed:
            raise UsageError("this docker sandbox is closed")

    def close(self) -> None:
        """Remove the current, pooled and retired containers; safe to call twice (and from atexit)."""
        with self._cv:
            if self._closed:
                return
            self._closed = True
            self._cv.notify_all()
            doomed = [b for b in (self._box, *self._pool, *self._retire) if b is not None]
            self._pool, self._retire, self._box = [], [], None
        worker = getattr(self, "_worker", None)
        if worker is not None and worker is not threading.current_thread():
            worker.join(timeout=60)          # it removes what it was creating when it sees `closed`
        threads = [threading.Thread(target=b.remove) for b in doomed]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        _live.discard(self)

    # -- execution -------------------------------------------------------------------------------------
    def run(self, code_or_cmd: str | list[str], stdin: str | bytes | None = None, timeout: float = 10.0,
            limits: Limits | None = None, *, python: bool = False, workdir: str | None = None,
            env: dict[str, str] | None = None) -> ExecResult:
        """Run a shell command (str), an argv (list) or, with `python=True`, Python code; never raises for
        what the command does, only when Docker itself fails."""
        self._check_open()
        box = self._box
        if python:
            if not isinstance(code_or_cmd, str):
                raise UsageError("python=True takes the code as a string")
            argv = [box.python, "-I", "-c", code_or_cmd]
        elif isinstance(code_or_cmd, str):
            argv = [*self.shell, code_or_cmd]
        elif isinstance(code_or_cmd, (list, tuple)) and code_or_cmd and all(isinstance(a, str) for a in code_or_cmd):
            argv = list(code_or_cmd)
        else:
            raise UsageError(f"run() takes a shell command (str) or an argv (non-empty list of str), "
                             f"got {code_or_cmd!r:.80}")
        if not timeout or timeout <= 0:
            raise UsageError(f"timeout must be positive, got {timeout!r}")
        lim = _merge(self.limits, limits)
        data = stdin.encode() if isinstance(stdin, str) else stdin
        env = {**self._home, **self.env, **(env or {})}
        try:
            self._apply_limits(box, lim)
            token = uuid.uuid4().hex
            server = box.exec_server() if self.use_exec_server else None
            sweep = box.host_kill and not self.background
            before = set(box.cgroup_pids()) if sweep else None
            box.disk_hit = False
            box.add_live(token)
            try:
                res = None
                if server is not None and server.lock.acquire(blocking=False):   # busy: another thread's run
                    try:
                        res = self._run_served(box, server, argv, data, timeout, lim, workdir or self.workdir,
                                               env, token)
                    finally:
                        server.lock.release()
                if res is None:
                    res = self._run_exec(box, argv, data, timeout, lim, workdir or self.workdir, env, token)
            finally:
                box.drop_live(token)
            if sweep:
                self._sweep(box, before)
            if _LayerGuard.over(box):        # past the cap of the writable layer: a new container
                self._replace(box)
                res = dataclasses.replace(res, limit_hit="disk", stderr=res.stderr + (
                    f"sandbox: the container's writable layer passed its cap ({self.disk_mb} MB or "
                    f"{self.disk_inodes} inodes); the container was replaced and its changes are lost\n"))
        except SandboxError:
            if not box.alive():              # nothing inside can end PID 1: the engine or the host did
                self._replace(box)
            raise
        return res

    def _replace(self, box: _Box) -> None:
        """Swap a fresh container in for `box` (dead, or past its disk cap), so the next run works."""
        with self._cv:
            if self._box is not box or self._closed:
                return
        try:
            self.reset()
        except SandboxError:                 # no container to be had now: the next run raises again
            pass

    @staticmethod
    def _sweep(box: _Box, before: set[int]) -> None:
        """Kill what appeared in the container during a run unless its marker is that of a run, helper or
        server alive now. The marker is an environment variable: a command may set it to anything (the
        container's own "keep", another run's), so only a marker we know to be live spares a process.
        Processes started meanwhile by other means (a `docker exec` from outside) count as the run's."""
        def new() -> list[int]:
            return [pid for pid in box.cgroup_pids() if pid not in before]

        if new():
            with box.live_lock:
                live = set(box.live)
            with box.kill_lock:
                _docker_tool.kill_marked(None, new, {box.init_pid}, spare=live, everyone=box.cgroup_pids)

    def _run_served(self, box: _Box, server: _ExecServer, argv: list[str], data: bytes | None, timeout: float,
                    lim: Limits, workdir: str, env: dict[str, str], token: str) -> ExecResult | None:
        """One command through the container's exec server; None when it never started there."""
        before = box.counters()
        request = {"argv": argv, "env": env, "workdir": workdir, "token": token, "timeout": timeout,
                   "limits": {"cpu_s": lim.cpu_s, "file_size_mb": lim.file_size_mb, "open_files": lim.open_files},
                   "cap": lim.output_bytes or DEFAULT_LIMITS.output_bytes, "background": self.background,
                   "counters": before is None, "areas": box.areas}
        start = time.monotonic()
        try:
            head, out, err = server.call(request, data, start + timeout + SERVER_GRACE_S)
        except (_ServerGone, TimeoutError) as exc:
            stalled = isinstance(exc, TimeoutError) or exc.stalled
            if stalled:                      # stopped (by a command?) or hung: end it, a new one comes next run
                box.kill_server(server)
            box.drop_server()
            if isinstance(exc, _ServerGone) and not exc.started:
                return None
            if not box.alive():
                raise SandboxError(f"container {box.container.short_id} has stopped under a command") from exc
            # The command (root may) killed or stopped the server that ran it: its outcome is lost.
            after = self._kill(box, token)
            what = "stopped answering" if stalled else "died"
            return ExecResult(stdout="", stderr=f"sandbox: the exec server running this command {what} ({exc}); "
                              "the command's output and exit status are lost\n", exit_code=None,
                              timed_out=isinstance(exc, TimeoutError), duration_s=time.monotonic() - start,
                              limit_hit=_classify(None, None, b"", False, before, after, box.disk_hit))
        if "error" in head:                  # it could not start the command (e.g. no pid left to fork)
            return None
        after = box.counters() if before is not None else head["after"]
        before = before or head["before"]
        left = before and after and after["pids"] > before["pids"] and not self.background
        if head["stop"] or head["held"] or left:    # the host (or root helper) kills what the server could not
            after = self._kill(box, token)
        limit_hit = _classify(head["stop"], head["exit_code"], err, head["truncated"], before, after,
                              box.disk_hit or bool(head.get("full")))
        return ExecResult(stdout=out.decode("utf-8", "replace"), stderr=err.decode("utf-8", "replace"),
                          exit_code=head["exit_code"], timed_out=head["stop"] == "timeout", limit_hit=limit_hit,
                          duration_s=time.monotonic() - start, truncated=head["truncated"])

    def _run_exec(self, box: _Box, argv: list[str], data: bytes | None, timeout: float, lim: Limits, workdir: str,
                  env: dict[str, str], token: str) -> ExecResult:
        """One command as its own `docker exec` (the classic path): rlimits through `prlimit`."""
        rl = []
        if lim.cpu_s:
            cpu = max(1, round(lim.cpu_s))      # SIGXCPU at the soft limit, SIGKILL a second later
            rl.append(f"--cpu={cpu}:{cpu + 1}")
        if lim.file_size_mb:
            rl.append(f"--fsize={int(lim.file_size_mb * 2 ** 20)}")
        if lim.open_files:
            rl.append(f"--nofile={int(lim.open_files)}")
        if rl:
            argv = ["prlimit", *rl, "--", *argv]
        api = self.client.api
        before = box.counters()
        start = time.monotonic()
        try:
            exec_id = api.exec_create(box.container.id, argv, stdin=data is not None, user=self.user,
                                      workdir=workdir, environment={**env, MARKER: token})["Id"]
            sock = api.exec_start(exec_id, socket=True)
        except Exception as exc:
            raise SandboxError(f"docker exec failed in {box.container.short_id}: {exc}") from exc
        after = None
        try:
            out, err, truncated, stop = _pump(sock, data, start + timeout, lim.output_bytes or DEFAULT_LIMITS.output_bytes)
            if stop is not None:
                # Keep reading while the helper kills: the engine reports no exit (not even the helper's)
                # while a killed command's output sits unread in its pipe.
                outcome: list = []
                killer = threading.Thread(target=self._kill_into, args=(box, token, exec_id, outcome))
                killer.start()
                _drain(sock, time.monotonic() + 30.0)
                killer.join(timeout=30.0)
                if not outcome or isinstance(outcome[0], BaseException):
                    raise SandboxError(f"could not stop a timed-out command in {box.container.short_id}: "
                                       f"{outcome[0] if outcome else 'the helper did not finish'}")
                after = outcome[0]
        finally:
            sock.close()
        duration = time.monotonic() - start
        code = None if stop else self._exit_code(exec_id)
        if code is None and stop is None:    # it closed its output and lives on: end it
            self._end_exec(box, exec_id)
        if code == 126 and not box.alive():
            # The runtime could not exec: the container has stopped (nothing inside can end its PID 1).
            raise SandboxError(f"container {box.container.short_id} has stopped: {out.decode(errors='replace').strip()}")
        if stop is None:
            after = box.counters()
            if not self.background and (after is None or after["pids"] > before["pids"]):
                after = self._kill(box, token)    # processes left behind: a daemon, a fork bomb's children
            elif after is None:
                after = self._probe(box) if code not in (0, None) else None
        limit_hit = _classify(stop, code, err, truncated, before or box.seen, after,
                              box.disk_hit or bool(box.full_areas()))
        if after is not None and before is None:
            box.seen = after
        return ExecResult(stdout=out.decode("utf-8", "replace"), stderr=err.decode("utf-8", "replace"),
                          exit_code=code, timed_out=stop == "timeout", limit_hit=limit_hit,
                          duration_s=duration, truncated=truncated)

    async def arun(self, code_or_cmd, stdin=None, timeout: float = 10.0, limits: Limits | None = None, **kwargs):
        """`run` for asyncio: executes in a worker thread so the event loop keeps going."""
        return await asyncio.to_thread(self.run, code_or_cmd, stdin, timeout, limits, **kwargs)

    def run_python(self, code: str, **kwargs) -> ExecResult:
        """Python source, run by the image's python3 (`PYTHON -I -c CODE`, PYTHON its absolute path: no
        module, user site or PYTHON* variable a command left behind changes what it imports)."""
        if not isinstance(code, str):
            raise UsageError("run_python takes the code as a string")
        return self.run(code, python=True, **kwargs)

    def _end_exec(self, box: _Box, exec_id: str) -> None:
        """SIGKILL the process a `docker exec` started, from this host where it sees it. The marker kill may
        miss it: its parent is outside the container, as the runtime's own processes' is, and a command may
        take their name."""
        pid = self.client.api.exec_inspect(exec_id).get("Pid")
        if box.host_kill and pid and pid in box.cgroup_pids():
            _docker_tool._signal([pid], signal.SIGKILL)
            end = time.monotonic() + 5.0
            while pid in box.cgroup_pids() and time.monotonic() < end:
                time.sleep(0.005)

    def _exit_code(self, exec_id: str) -> int | None:
        for _ in range(100):
            info = self.client.api.exec_inspect(exec_id)
            if not info.get("Running"):
                return info.get("ExitCode")
            time.sleep(0.01)
        return None

    def _apply_limits(self, box: _Box, lim: Limits) -> None:
        """Memory and pids limits belong to the container: change them only when a run asks for others."""
        want = (lim.memory_mb, lim.processes)
        if want == box.applied:
            return
        body = {}
        if lim.memory_mb:
            body.update(Memory=lim.memory_mb * 2 ** 20, MemorySwap=lim.memory_mb * 2 ** 20)
        if lim.processes:
            body["PidsLimit"] = lim.processes
        self._update(box, body)
        box.applied = want

    def _update(self, box: _Box, body: dict) -> None:
        api = self.client.api   # the SDK's update_container lacks PidsLimit; this is the same endpoint
        try:
            api._raise_for_status(api._post_json(api._url("/containers/{0}/update", box.container.id), data=body))
        except Exception as exc:
            raise SandboxError(f"cannot update the limits of {box.container.short_id}: {exc}") from exc

    def _tool(self, box: _Box, *args: str) -> dict | None:
        """Run the in-container helper as root; its counters, or None when it could not start or finish."""
        marker = f"helper-{uuid.uuid4().hex}"
        box.add_live(marker)
        try:
            res = box.container.exec_run([box.python, *_ISOLATED, "-c", _TOOL_SOURCE, *args], user="0",
                                         environment={MARKER: marker})
        finally:
            box.drop_live(marker)
        lines = res.output.decode("utf-8", "replace").strip().splitlines()
        if res.exit_code != 0 or not lines:
            return None
        try:
            return json.loads(lines[-1]) or {}
        except ValueError:
            return None

    def _probe(self, box: _Box) -> dict | None:
        return self._tool(box, "probe")

    def _kill(self, box: _Box, token: str) -> dict:
        """SIGKILL every process of one execution; returns the counters after it (see the module docstring)."""
        if box.host_kill and self._host_kill(box, token):
            return box.counters()
        for attempt in range(3):
            bumped = attempt > 0 and box.applied[1]
            if bumped:                       # a fork bomb holds every pid: make room for the helper
                self._update(box, {"PidsLimit": box.applied[1] + 16})
            try:
                got = self._tool(box, "kill", token, *map(str, box.ids))
            except Exception:
                got = None
            finally:
                if bumped:
                    self._update(box, {"PidsLimit": box.applied[1]})
            if got is not None:
                return box.counters() or got
        raise SandboxError(f"could not stop the processes of a command in {box.container.short_id}")

    def _host_kill(self, box: _Box, token: str) -> bool:
        """Kill from this host: stop every process of the container first, then read their environments.

        A stopped fork bomb forks no more, and a stopped process holds no memory lock, which reading its
        environment waits for (under a CPU quota a throttled bomb turns that wait into seconds). Processes
        of other executions are continued afterwards; ones stopped before we came stay stopped."""
        with box.kill_lock:                  # another thread's stop-all would look like "stopped before we came"
            skip = {box.init_pid, box.server_host_pid()}    # the server never forks: it need not stop
            states = _states(box.cgroup_pids(), skip)
            already = {pid for pid, st in states.items() if st in "Tt"}
            for n in range(1000):
                running = [pid for pid, st in states.items() if st not in "TtZ"]
                if not running:
                    break
                _docker_tool._signal(running, signal.SIGSTOP)
                _docker_tool.pause(n)
                states = _states(box.cgroup_pids(), skip)
            else:                            # one would not stop (in uninterruptible sleep?): let them all go
                _docker_tool._signal(set(states) - already, signal.SIGCONT)
                return False
            doomed = [pid for pid, _st in _docker_tool._marked(token, box.cgroup_pids, skip)]
            _docker_tool._signal(doomed, signal.SIGKILL)
            _docker_tool._signal(set(states) - set(doomed) - already, signal.SIGCONT)
        end = time.monotonic() + 5.0
        while time.monotonic() < end:
            if not set(box.cgroup_pids()) & set(doomed):
                return True
            time.sleep(0.005)
        return False

    def _kill_into(self, box: _Box, token: str, exec_id: str, result: list) -> None:
        try:
            result.append(self._kill(box, token))
            self._end_exec(box, exec_id)
        except BaseException as exc:
            result.append(exc)

    # -- files -----------------------------------------------------------------------------------------
    def _abs(self, path: str) -> PurePosixPath:
        p = PurePosixPath(path)
        return p if p.is_absolute() else PurePosixPath(self.workdir) / p

    def write_file(self, path: str, content: str | bytes) -> None:
        """Write a file as the sandbox's user (parents created); relative paths are under the workdir. Only the
        writable areas take it: Docker's archive API sees neither a read-only root nor a tmpfs."""
        self._check_open()
        data = content.encode() if isinstance(content, str) else bytes(content)
        target = str(self._abs(path))
        res = self._file_op(_WRITE, target, data)
        if not res.ok:
            raise SandboxError(f"cannot write {target}: {(res.stderr.strip().splitlines() or [res])[-1]}")

    def read_file(self, path: str) -> bytes:
        """The bytes of a file in the container, read as the sandbox's user; FileNotFoundError when there is none."""
        self._check_open()
        target = str(self._abs(path))
        res = self._file_op(_READ, target, None)
        if res.exit_code == 2:
            raise FileNotFoundError(target)
        if res.exit_code == 3:
            raise IsADirectoryError(target)
        if not res.ok:
            raise SandboxError(f"cannot read {target}: {(res.stderr.strip().splitlines() or [res])[-1]}")
        return base64.b64decode(res.stdout)

    def _file_op(self, program: str, target: str, data: bytes | None) -> ExecResult:
        """A file read or write by our own program (`-I -S`, the interpreter's absolute path)."""
        argv = [self._box.python, *_ISOLATED, "-c", program, target]
        return self.run(argv, stdin=data, timeout=120, workdir="/", limits=Limits(output_bytes=_FILE_CAP))

    def list_files(self, path: str = ".") -> list[str]:
        """Paths of the files under `path` (recursive, sorted); relative to the workdir when `path` is."""
        target = self._abs(path)
        res = self.run(["find", str(target), "-type", "f", "-printf", "%P\\n"], timeout=60,
                       limits=Limits(output_bytes=64 << 20))
        if res.exit_code != 0:
            raise FileNotFoundError(str(target))
        base = PurePosixPath(path)
        return sorted(os.path.normpath(str(base / name)) for name in res.stdout.splitlines() if name)


_FILE_CAP = 96 << 20        # a file read is base64 on stdout: 64 MiB of file
_WRITE = """import os, sys
path = sys.argv[1]
os.makedirs(os.path.dirname(path), exist_ok=True)
with open(path, "wb") as f:
    f.write(sys.stdin.buffer.read())
"""
_READ = """import base64, sys
try:
    with open(sys.argv[1], "rb") as f:
        sys.stdout.write(base64.b64encode(f.read()).decode())
except FileNotFoundError:
    sys.exit(2)
except IsADirectoryError:
    sys.exit(3)
"""


def _states(pids: list[int], skip: set[int]) -> dict[int, str]:
    """pid -> state letter (R, S, T, Z...) from /proc/PID/stat, which never waits on the process; without
    `skip` and the runtime's own processes (runc starting an exec: never ours to stop)."""
    states, inside = {}, set(pids)
    for pid in pids:
        if pid not in skip:
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
                if not _docker_tool._runtime(stat, inside):
                    states[pid] = stat.rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError, ValueError):
                pass
    return states


def _classify(stop: str | None, code: int | None, err: bytes, truncated: bool, before: dict | None,
              after: dict | None, disk: bool = False) -> str | None:
    """Name the limit that ended a run, from the cgroup counters, the exit status, whether a capped area is
    full (`disk`) and Python's last words."""
    if stop == "output":
        return "output"
    if before and after:
        if after["pids_max"] > before["pids_max"]:
            return "processes"
        if after["oom"] > before["oom"]:
            return "memory"
    if code == 128 + signal.SIGXCPU:
        return "cpu"
    if code == 128 + signal.SIGXFSZ:
        return "file_size"
    lines = err.strip().splitlines()
    last = lines[-1] if lines else b""
    if last.startswith(b"MemoryError"):
        return "memory"
    if b"[Errno 27]" in last:                # EFBIG: RLIMIT_FSIZE (Python ignores SIGXFSZ and raises)
        return "file_size"
    if last.startswith(b"BlockingIOError: [Errno 11]") or b"can't start new thread" in last:
        return "processes"
    if disk or b"[Errno 28]" in last or b"No space left on device" in last:
        return "disk"
    return "output" if truncated else None


def _merge(base: Limits, over: Limits | None) -> Limits:
    if over is None:
        return base
    return dataclasses.replace(base, **{k: v for k, v in dataclasses.asdict(over).items() if v is not None})


def _drain(sock, deadline: float) -> None:
    """Read what a killed command still sends, so its exec finishes; give up at the deadline."""
    raw = getattr(sock, "_sock", sock)
    poller = select.poll()
    poller.register(raw, select.POLLIN)
    while (left := deadline - time.monotonic()) > 0:
        if not poller.poll(left * 1000):
            return
        try:
            if not raw.recv(1 << 16):
                return
        except (BlockingIOError, InterruptedError):
            continue
        except OSError:
            return


# ----------------------------------------------------------------------------------------------- bench + CLI

SNIPPET = "print(sum(i*i for i in range(1000)))"


def docker_figures(n: int = 50, image: str | None = None) -> dict:
    """Exec latency in a warm container (through the exec server), reset() from the warm pool, and two
    baselines, all measured in this call on `SNIPPET`: one `docker exec` per command (the classic path) and
    `docker run --rm`. Also the first exec after a reset."""
    def ms(xs):
        xs = sorted(xs)
        return round(1000 * statistics.median(xs), 3), round(1000 * xs[min(len(xs) - 1, int(0.9 * len(xs)))], 3)

    def check(res):
        if res.stdout.strip() != "332833500":
            raise SandboxError(f"the snippet gave {res!r}")

    def timed(sb, k: int) -> list[float]:
        """Seconds of each of k runs of the snippet, each checked."""
        secs = []
        for _ in range(k):
            t = time.perf_counter()
            res = sb.run_python(SNIPPET)
            secs.append(time.perf_counter() - t)
            check(res)
        return secs

    with DockerSandbox(image, pool_size=1) as sb:
        timed(sb, 3)                          # warm up
        cpu0 = _exec_cpu_s(sb._box)
        execs = timed(sb, n)
        cpu1 = _exec_cpu_s(sb._box)
        resets, colds = [], []
        for _ in range(max(5, n // 5)):
            with sb._cv:                      # the warm path: wait until the pool is full again
                while len(sb._pool) < sb.pool_size:
                    sb._cv.wait(0.05)
            t = time.perf_counter()
            sb.reset()
            resets.append(time.perf_counter() - t)
            colds += timed(sb, 1)             # the fresh container works at once
        image = sb.image
    with DockerSandbox(image, pool_size=0, exec_server=False) as sb:
        timed(sb, 3)                          # warm up
        classic = timed(sb, n)
    runs = []
    labels = [f"--label={k}={v}" for k, v in _owner_labels().items()]   # reaped by gc if we are killed
    for _ in range(max(5, n // 10)):
        t = time.perf_counter()
        proc = subprocess.run(["docker", "run", "--rm", "--network=none", *labels, image, "python3", "-c", SNIPPET],
                              capture_output=True, text=True)
        runs.append(time.perf_counter() - t)
        if proc.stdout.strip() != "332833500":
            raise SandboxError(f"docker run baseline failed: {proc.stderr.strip()[-300:]}")
    (e50, e90), (r50, r90), (c50, _), (b50, _), (x50, _) = ms(execs), ms(resets), ms(colds), ms(runs), ms(classic)
    return {"image": image, "snippet": SNIPPET, "n_exec": n, "n_reset": len(resets), "n_docker_run": len(runs),
            "exec_median_ms": round(e50, 1), "exec_p90_ms": round(e90, 1),
            "reset_median_ms": r50, "reset_p90_ms": r90,
            "first_exec_after_reset_median_ms": round(c50, 1),
            "docker_exec_per_command_median_ms": round(x50, 1),
            "docker_run_median_ms": round(b50, 1),
            "exec_speedup_vs_docker_exec": round(x50 / e50, 1),
            "exec_speedup_vs_docker_run": round(b50 / e50, 1),
            "cpu_ms_per_exec": round(1000 * (cpu1 - cpu0) / n, 1) if cpu0 is not None and cpu1 is not None else None,
            "load_avg_1m_after": round(os.getloadavg()[0], 2)}   # other work on the machine slows every figure


def _exec_cpu_s(box: _Box) -> float | None:
    """CPU seconds spent so far by everything an exec involves: this process, dockerd, containerd and the
    container's shim (which reaps runc and the exec'd processes, so their time lands in its children's
    share). Other programs' load does not inflate it, other Docker work at the same time does; None where
    /proc does not show them."""
    def cpu(pid: int, children: bool) -> float:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(f[11]) + int(f[12]) + (int(f[13]) + int(f[14]) if children else 0)
        return ticks / os.sysconf("SC_CLK_TCK")

    try:
        shim = int(Path(f"/proc/{box.init_pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        engine = [int(d) for d in os.listdir("/proc") if d.isdigit()
                  and _comm(int(d)) in ("dockerd", "containerd")]
        if len(engine) < 2:
            return None
        own = os.times()
        return own.user + own.system + sum(cpu(pid, False) for pid in engine) + cpu(shim, True)
    except (OSError, ValueError, IndexError):
        return None


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _cmd_gc(args) -> int:
    removed = gc_stale()
    for item in removed:
        print(f"removed {item['id']} {item['name']} (owner pid {item['owner_pid']} is gone)")
    print(f"{len(removed)} stale container(s) removed")
    return 0


def _cmd_image(args) -> int:
    import sys

    tag = ensure_base_image(args.base, suite=args.suite, force=args.force,
                            client=docker_client(), log=lambda m: print(m, file=sys.stderr))
    print(tag)
    return 0


def register_docker_commands(sandbox_group) -> None:
    """Add `cwm sandbox gc` and `cwm sandbox image` to the `cwm sandbox` subcommands."""
    p = sandbox_group.add_parser("gc", help="remove cwm-envs containers whose owner process is dead")
    p.set_defaults(func=_cmd_gc)
    p = sandbox_group.add_parser("image", help="make sure the docker sandbox's base image exists; print its tag")
    p.add_argument("--base", default=None,
                   help="an image with python3 to use instead (pulled when missing); default $CWM_BASE_IMAGE "
                        "or the offline Debian image")
    p.add_argument("--suite", default=None, help="Debian suite of the offline image (bookworm; bullseye has 3.9)")
    p.add_argument("--force", action="store_true", help="rebuild (or re-pull) even when the image exists")
    p.set_defaults(func=_cmd_image)


__all__ = ["DockerSandbox", "docker_client", "gc_stale", "docker_figures", "register_docker_commands",
           "DEFAULT_LIMITS"]
