"""The `docker` sandbox: one container per episode, commands through `docker exec`, a warm pool for reset().

Why these choices:
- The container's PID 1 is Docker's init (tini) with `sleep infinity` beside it, so orphans of killed
  commands are reaped and the container lives until we remove it.
- Each execution carries its own marker in its environment (`CWM_EXEC=<token>`). On a timeout a one-process
  killer inside the container SIGKILLs every process with that marker (or with none), which catches children
  that called setsid and left the process group, while background jobs of earlier commands survive. When a
  fork bomb has used up the pids limit, the limit is raised for a moment so the killer can start.
- Every container is labelled `cwm-envs` with its owner's pid, process start time and host. The first
  sandbox of a process (and `cwm sandbox gc`) removes containers whose owner is dead; atexit, a chained
  SIGTERM handler and `close()` remove the process's own, so none outlives an exit, exception, Ctrl-C or SIGTERM.
- `reset()` takes a pre-started container from a pool that a background thread refills, and removes the
  old one in that thread, so an episode starts in a few milliseconds instead of ~0.5 s.
- A memory-limit kill is told apart from other SIGKILLs by the cgroup's `oom_kill` counter (Docker 20.10
  does not set OOMKilled for exec'd processes).
"""
from __future__ import annotations

import atexit
import io
import os
import select
import signal
import socket
import statistics
import struct
import subprocess
import tarfile
import threading
import time
import uuid
import weakref
from pathlib import PurePosixPath

from cwm_envs.errors import DockerUnavailable, SandboxError, UsageError
from cwm_envs.sandbox.base import ExecResult, Limits, Sandbox
from cwm_envs.sandbox.images import WORKDIR, ensure_base_image

LABEL = "cwm-envs"
PID_LABEL, START_LABEL, HOST_LABEL = "cwm-envs.owner-pid", "cwm-envs.owner-start", "cwm-envs.owner-host"
MARKER = "CWM_EXEC"
DEFAULT_LIMITS = Limits(memory_mb=1024, processes=256, output_bytes=1 << 20)
DRAIN_FACTOR = 16            # after the cap, output is read and dropped up to 16x the cap, then the run is killed

# Runs inside the container as one process (no fork: it must start even when a fork bomb holds every pid).
_KILLER = r"""
import os, sys
tok = ("%s=" % sys.argv[1] + sys.argv[2]).encode()
key = tok.split(b"=")[0] + b"="
for _ in range(500):
    hit = 0
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) in (1, os.getpid()):
            continue
        try:
            with open("/proc/%s/stat" % d, "rb") as f:
                if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                    continue
            with open("/proc/%s/environ" % d, "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        mark = [e for e in env if e.startswith(key)]
        if mark and mark[0] != tok:
            continue
        try:
            os.kill(int(d), 9)
            hit += 1
        except OSError:
            pass
    if not hit:
        print("clean")
        break
"""

# ----------------------------------------------------------------------------------------------- process level

_lock = threading.RLock()
_client = None
_live: "weakref.WeakSet[DockerSandbox]" = weakref.WeakSet()
_hooks_pid: int | None = None
_gc_done_pid: int | None = None
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
        pid = int(labels.get(PID_LABEL, ""))
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


def gc_stale(client=None, all_hosts: bool = False) -> list[dict]:
    """Remove containers labelled `cwm-envs` whose owner process is dead; return what was removed.

    Only containers made on this host are judged (a pid means nothing on another host) unless `all_hosts`.
    """
    client = client or docker_client()
    host = socket.gethostname()
    removed = []
    for c in client.containers.list(all=True, filters={"label": LABEL}, ignore_removed=True):
        labels = c.labels or {}
        if (not all_hosts and labels.get(HOST_LABEL, host) != host) or _owner_alive(labels):
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
    for sb in list(_live):
        sb.close()
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
    global _client, _hooks_pid, _gc_done_pid
    _client, _hooks_pid, _gc_done_pid = None, None, None
    _live.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _install_process_hooks(client) -> None:
    """Once per process: reap dead owners' containers, and make sure ours go at exit and on SIGTERM."""
    global _hooks_pid, _gc_done_pid, _prev_sigterm
    with _lock:
        if _gc_done_pid != os.getpid():
            _gc_done_pid = os.getpid()
            gc_stale(client)
        if _hooks_pid == os.getpid():
            return
        _hooks_pid = os.getpid()
        atexit.register(_cleanup_all)
        if threading.current_thread() is threading.main_thread():
            prev = signal.getsignal(signal.SIGTERM)
            if prev is not signal.SIG_IGN and prev is not _on_sigterm:
                _prev_sigterm = prev
                signal.signal(signal.SIGTERM, _on_sigterm)


# ----------------------------------------------------------------------------------------------- exec streams

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
                while len(buf) >= 8:
                    stream, size = struct.unpack(">BxxxL", buf[:8])
                    if len(buf) < 8 + size:
                        break
                    out = outs.get(stream, outs[1])
                    room = cap - len(out)
                    if size > room:
                        truncated = True
                    out += buf[8:8 + max(0, min(size, room))]
                    seen += size
                    del buf[:8 + size]
                if seen > DRAIN_FACTOR * cap + 2 * cap:
                    return bytes(outs[1]), bytes(outs[2]), True, "output"
        poller.unregister(raw)


# ----------------------------------------------------------------------------------------------- the sandbox

class DockerSandbox(Sandbox):
    """Commands and code in a Docker container: one container per episode, a warm pool behind `reset()`.

    Arguments:
        image: any image with python3 (pulled when missing); default `CWM_BASE_IMAGE` or the offline
            `cwm-envs/base:bookworm`, built on first use.
        limits: container-wide defaults for memory (MB), processes (pids limit) and output cap;
            `cpu_s`, `file_size_mb` and `open_files` become rlimits of each command (needs `prlimit`).
        pool_size: pre-started containers kept ready for `reset()` (0: reset creates one, ~0.5 s).
        network: False (default) gives the container no network at all.
        cpus: CPU share of the container (1.0 = one core).
        workdir: where commands run and relative file paths point.
        read_only: make the image's root file system read-only (workdir and /tmp stay writable; the
            workdir becomes a fresh volume, so files baked into the image there are copied in).
        shell: how a string command runs (`bash -c` by default).
        env: extra environment variables for every command.

    `run(str)` runs a shell command, `run(list)` an argv, `run(code, python=True)` / `run_python(code)`
    Python code. Outcomes (timeout, memory kill, truncated output) come back in the ExecResult; only a
    fault of Docker itself raises SandboxError (DockerUnavailable when no engine answers).
    """

    name = "docker"

    def __init__(self, image: str | None = None, *, limits: Limits | None = None, pool_size: int = 1,
                 network: bool = False, cpus: float = 1.0, workdir: str = WORKDIR, read_only: bool = False,
                 shell: tuple[str, ...] = ("bash", "-c"), env: dict[str, str] | None = None, client=None):
        if pool_size < 0 or cpus <= 0:
            raise UsageError("pool_size must be >= 0 and cpus > 0")
        self._closed = True                  # until a container exists, close() has nothing to do
        self.client = client or docker_client()
        self.image = ensure_base_image(image, client=self.client)
        self.limits = _merge(DEFAULT_LIMITS, limits)
        self.pool_size, self.network, self.cpus = pool_size, network, cpus
        self.workdir, self.read_only, self.shell = workdir, read_only, tuple(shell)
        self.env = dict(env or {})
        self._cv = threading.Condition(threading.RLock())
        self._pool: list = []
        self._retire: list = []
        self._pool_error: BaseException | None = None
        self._applied: tuple[int | None, int | None] = (self.limits.memory_mb, self.limits.processes)
        self._oom_seen = 0
        _install_process_hooks(self.client)
        _live.add(self)
        self._closed = False
        try:
            self._container = self._create()
        except BaseException:
            self.close()
            raise
        self._worker = threading.Thread(target=self._pool_loop, name="cwm-docker-pool", daemon=True)
        self._worker.start()

    # -- containers ------------------------------------------------------------------------------------
    def _create(self):
        import docker.errors
        from docker.types import Mount

        lim = self.limits
        kwargs = dict(
            command=["sleep", "infinity"], init=True, detach=True, labels=_owner_labels(),
            network_mode="bridge" if self.network else "none", working_dir=self.workdir,
            environment={**self.env, MARKER: "keep"}, nano_cpus=int(self.cpus * 1e9),
            security_opt=["no-new-privileges"], hostname="sandbox",
        )
        if lim.memory_mb:
            kwargs.update(mem_limit=f"{lim.memory_mb}m", memswap_limit=f"{lim.memory_mb}m")
        if lim.processes:
            kwargs["pids_limit"] = lim.processes
        if self.read_only:
            kwargs.update(read_only=True, tmpfs={"/tmp": "rw,exec,size=1g"},
                          mounts=[Mount(self.workdir, None, type="volume")])
        try:
            container = self.client.containers.create(self.image, **kwargs)
        except docker.errors.DockerException as exc:
            raise SandboxError(f"cannot create a container from {self.image}: {exc}") from exc
        try:
            container.start()
        except BaseException as exc:
            _remove_quietly(container)
            if isinstance(exc, docker.errors.DockerException):
                raise SandboxError(f"cannot start a container from {self.image}: {exc}") from exc
            raise
        return container

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
                _remove_quietly(victim)
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
                    _remove_quietly(fresh)
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
            old, self._container = self._container, fresh
            self._applied = (self.limits.memory_mb, self.limits.processes)
            self._oom_seen = 0
            self._retire.append(old)
            self._cv.notify_all()

    @property
    def container_id(self) -> str:
        self._check_open()
        return self._container.id

    def _check_open(self) -> None:
        if self._closed:
            raise SandboxError("this docker sandbox is closed")

    def close(self) -> None:
        """Remove the current, pooled and retired containers; safe to call twice (and from atexit)."""
        with self._cv:
            if self._closed:
                return
            self._closed = True
            self._cv.notify_all()
            doomed = [getattr(self, "_container", None), *self._pool, *self._retire]
            self._pool, self._retire, self._container = [], [], None
        worker = getattr(self, "_worker", None)
        if worker is not None and worker is not threading.current_thread():
            worker.join(timeout=60)          # it removes what it was creating when it sees `closed`
        threads = [threading.Thread(target=_remove_quietly, args=(c,)) for c in doomed if c is not None]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        _live.discard(self)

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    # -- execution -------------------------------------------------------------------------------------
    def run(self, code_or_cmd: str | list[str], stdin: str | bytes | None = None, timeout: float = 10.0,
            limits: Limits | None = None, *, python: bool = False, workdir: str | None = None,
            env: dict[str, str] | None = None) -> ExecResult:
        """Run a shell command (str), an argv (list) or, with `python=True`, Python code; never raises for
        what the command does, only when Docker itself fails."""
        self._check_open()
        if python:
            if not isinstance(code_or_cmd, str):
                raise UsageError("python=True takes the code as a string")
            argv = ["python3", "-c", code_or_cmd]
        elif isinstance(code_or_cmd, str):
            argv = [*self.shell, code_or_cmd]
        else:
            argv = [str(a) for a in code_or_cmd]
            if not argv:
                raise UsageError("empty command")
        lim = _merge(self.limits, limits)
        rl = []
        if lim.cpu_s:
            rl.append(f"--cpu={max(1, int(lim.cpu_s))}")
        if lim.file_size_mb:
            rl.append(f"--fsize={int(lim.file_size_mb * 2 ** 20)}")
        if lim.open_files:
            rl.append(f"--nofile={int(lim.open_files)}")
        if rl:
            argv = ["prlimit", *rl, "--", *argv]
        data = stdin.encode() if isinstance(stdin, str) else stdin
        container = self._container
        self._apply_limits(container, lim)
        token = uuid.uuid4().hex
        api = self.client.api
        start = time.monotonic()
        try:
            exec_id = api.exec_create(container.id, argv, stdin=data is not None, workdir=workdir or self.workdir,
                                      environment={**self.env, **(env or {}), MARKER: token})["Id"]
            sock = api.exec_start(exec_id, socket=True)
        except Exception as exc:
            raise SandboxError(f"docker exec failed in {container.short_id}: {exc}") from exc
        try:
            out, err, truncated, stop = _pump(sock, data, start + timeout, lim.output_bytes or DEFAULT_LIMITS.output_bytes)
            if stop is not None:
                # Keep reading while the killer works: the engine reports no exit (not even the killer's)
                # while a killed command's output sits unread in its pipe.
                failed: list[BaseException] = []
                killer = threading.Thread(target=self._kill_execution, args=(container, token, failed))
                killer.start()
                _drain(sock, time.monotonic() + 30.0)
                killer.join(timeout=30.0)
                if failed or killer.is_alive():
                    raise SandboxError(f"could not stop a timed-out command in {container.short_id}: "
                                       f"{failed[0] if failed else 'the killer did not finish'}")
        finally:
            sock.close()
        duration = time.monotonic() - start
        code = self._exit_code(exec_id)
        limit_hit = None
        if stop == "output" or (truncated and stop is None):
            limit_hit = "output"
        if stop is None and code is not None:
            limit_hit = self._limit_from_exit(container, code) or limit_hit
        return ExecResult(stdout=out.decode("utf-8", "replace"), stderr=err.decode("utf-8", "replace"),
                          exit_code=code, timed_out=stop == "timeout", limit_hit=limit_hit,
                          duration_s=duration, truncated=truncated)

    def run_python(self, code: str, **kwargs) -> ExecResult:
        """Run Python source with the image's python3 (`python3 -c CODE`)."""
        return self.run(code, python=True, **kwargs)

    def _exit_code(self, exec_id: str) -> int | None:
        for _ in range(50):
            info = self.client.api.exec_inspect(exec_id)
            if not info.get("Running"):
                return info.get("ExitCode")
            time.sleep(0.01)
        return None

    def _apply_limits(self, container, lim: Limits) -> None:
        """Memory and pids limits belong to the container: change them only when a run asks for others."""
        want = (lim.memory_mb, lim.processes)
        if want == self._applied:
            return
        body = {}
        if lim.memory_mb:
            body.update(Memory=lim.memory_mb * 2 ** 20, MemorySwap=lim.memory_mb * 2 ** 20)
        if lim.processes:
            body["PidsLimit"] = lim.processes
        self._update(container, body)
        self._applied = want

    def _update(self, container, body: dict) -> None:
        api = self.client.api   # the SDK's update_container lacks PidsLimit; this is the same endpoint
        try:
            api._raise_for_status(api._post_json(api._url("/containers/{0}/update", container.id), data=body))
        except Exception as exc:
            raise SandboxError(f"cannot update the limits of {container.short_id}: {exc}") from exc

    def _kill_execution(self, container, token: str, failed: list) -> None:
        """SIGKILL every process of one execution, setsid'd descendants included (see the module docstring).

        Runs in a thread beside the reader; a failure is appended to `failed`."""
        try:
            self._kill_marked(container, token)
        except BaseException as exc:
            failed.append(exc)

    def _kill_marked(self, container, token: str) -> None:
        for attempt in range(3):
            bumped = attempt > 0 and self._applied[1]
            if bumped:                       # a fork bomb holds every pid: make room for the killer
                self._update(container, {"PidsLimit": self._applied[1] + 16})
            try:
                res = container.exec_run(["python3", "-c", _KILLER, MARKER, token],
                                         environment={MARKER: "killer"})
                if b"clean" in res.output:
                    return
            except Exception:
                pass
            finally:
                if bumped:
                    self._update(container, {"PidsLimit": self._applied[1]})
        raise SandboxError(f"could not stop a timed-out command in {container.short_id}")

    def _limit_from_exit(self, container, code: int) -> str | None:
        if code == 128 + signal.SIGXCPU:
            return "cpu"
        if code == 128 + signal.SIGXFSZ:
            return "file_size"
        if code == 137:
            res = container.exec_run(["sh", "-c", "cat /sys/fs/cgroup/memory/memory.oom_control "
                                      "/sys/fs/cgroup/memory.events 2>/dev/null"],
                                     environment={MARKER: "probe"})
            counts = [int(line.split()[1]) for line in res.output.decode().splitlines()
                      if line.startswith("oom_kill ")]
            if counts and max(counts) > self._oom_seen:
                self._oom_seen = max(counts)
                return "memory"
        return None

    # -- files -----------------------------------------------------------------------------------------
    def _abs(self, path: str) -> str:
        p = PurePosixPath(path)
        return str(p if p.is_absolute() else PurePosixPath(self.workdir) / p)

    def write_file(self, path: str, content: str | bytes) -> None:
        self._check_open()
        data = content.encode() if isinstance(content, str) else content
        target = self._abs(path)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo(target.lstrip("/"))
            info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
            tar.addfile(info, io.BytesIO(data))
        try:
            ok = self._container.put_archive("/", buf.getvalue())
        except Exception as exc:
            raise SandboxError(f"cannot write {target}: {exc}") from exc
        if not ok:
            raise SandboxError(f"cannot write {target}")

    def read_file(self, path: str) -> bytes:
        """The bytes of a file in the container; FileNotFoundError when there is none."""
        import docker.errors

        self._check_open()
        target = self._abs(path)
        try:
            stream, _stat = self._container.get_archive(target)
            raw = b"".join(stream)
        except docker.errors.NotFound:
            raise FileNotFoundError(target) from None
        except Exception as exc:
            raise SandboxError(f"cannot read {target}: {exc}") from exc
        with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
            member = tar.next()
            if member is None or not member.isfile():
                raise IsADirectoryError(target)
            return tar.extractfile(member).read()

    def list_files(self, path: str = ".") -> list[str]:
        """Names in a directory of the container (not recursive), sorted; directories end with '/'."""
        target = self._abs(path)
        res = self.run(["find", target, "-mindepth", "1", "-maxdepth", "1", "-printf", "%f%y\\n"], timeout=30)
        if res.exit_code != 0:
            raise FileNotFoundError(target)
        names = []
        for line in res.stdout.splitlines():
            name, kind = line[:-1], line[-1:]
            names.append(name + "/" if kind == "d" else name)
        return sorted(names)


def _merge(base: Limits, over: Limits | None) -> Limits:
    if over is None:
        return base
    return Limits(**{k: (getattr(over, k) if getattr(over, k) is not None else getattr(base, k))
                     for k in Limits.__dataclass_fields__})


def _drain(sock, deadline: float) -> None:
    """Read what a killed command still sends, so its exec finishes; give up at the deadline."""
    raw = getattr(sock, "_sock", sock)
    while time.monotonic() < deadline:
        r, _, _ = select.select([raw], [], [], max(0.0, deadline - time.monotonic()))
        if not r:
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
    """Exec latency in a warm container, reset() from the warm pool, and `docker run --rm` as the baseline."""
    def ms(xs):
        xs = sorted(xs)
        return {"median": round(1000 * statistics.median(xs), 1),
                "p90": round(1000 * xs[min(len(xs) - 1, int(0.9 * len(xs)))], 1)}

    with DockerSandbox(image, pool_size=1) as sb:
        for _ in range(3):
            sb.run_python(SNIPPET)            # warm up
        execs = []
        for _ in range(n):
            t = time.perf_counter()
            res = sb.run_python(SNIPPET)
            execs.append(time.perf_counter() - t)
            if res.stdout.strip() != "332833500":
                raise SandboxError(f"snippet gave {res!r}")
        resets = []
        for _ in range(max(5, n // 5)):
            with sb._cv:                      # measure the warm path: wait until the pool is full again
                while len(sb._pool) < sb.pool_size:
                    sb._cv.wait(0.05)
            t = time.perf_counter()
            sb.reset()
            resets.append(time.perf_counter() - t)
        first = sb.run_python(SNIPPET)
        image = sb.image
    runs = []
    labels = [f"--label={k}={v}" for k, v in _owner_labels().items()]
    for _ in range(max(3, n // 10)):
        t = time.perf_counter()
        proc = subprocess.run(["docker", "run", "--rm", "--network=none", *labels, image, "python3", "-c", SNIPPET],
                              capture_output=True, text=True)
        runs.append(time.perf_counter() - t)
        if proc.stdout.strip() != "332833500":
            raise SandboxError(f"docker run baseline failed: {proc.stderr.strip()[-300:]}")
    e, r, b = ms(execs), ms(resets), ms(runs)
    return {"image": image, "n_exec": n, "n_reset": len(resets), "n_docker_run": len(runs),
            "exec_median_ms": e["median"], "exec_p90_ms": e["p90"],
            "reset_median_ms": r["median"], "reset_p90_ms": r["p90"],
            "first_exec_after_reset_ms": round(1000 * first.duration_s, 1),
            "docker_run_median_ms": b["median"],
            "exec_speedup_vs_docker_run": round(b["median"] / e["median"], 1)}


def _cmd_gc(args) -> int:
    removed = gc_stale(all_hosts=args.all_hosts)
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
    p.add_argument("--all-hosts", action="store_true", help="also judge containers made on other hosts")
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
