"""One container as the docker sandbox knows it (`Box`): its cgroup on this host, its exec server, the
killing of one execution's processes, and the cap of a writable image layer (`LayerGuard`); plus the naming
of the limit that ended a run (`classify`).

Each execution carries its own marker in its environment (`CWM_EXEC=<token>`). After a timeout, and after a
run that left processes behind, the processes with that marker (or with none) are SIGKILLed: from this host
where it sees the container's processes, else by a one-process helper inside the container
(`_docker_tool.py`). Children that called setsid are caught, background jobs of other executions are not.
When a fork bomb holds every pid, the pids limit is raised for a moment so the helper can start. Limits are
read back from the container's cgroup counters (forks refused at the pids limit, OOM kills): Docker 20.10
does not set OOMKilled for exec'd processes, so the counters are the reliable witness.
"""
from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
import weakref
from pathlib import Path

from cwm_envs.errors import SandboxError
from cwm_envs.sandbox import _docker_tool
from cwm_envs.sandbox._docker_exec import ISOLATED, MARKER, SILENCE_REMOTE_S, TOOL_SOURCE, ExecServer
from cwm_envs.sandbox._docker_reaper import remove_quietly


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


class Box:
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
        self.server: ExecServer | None = None
        self.server_starts_failed = 0
        self.server_lock = threading.Lock()
        self.live: set[str] = set()          # markers of the runs, helpers and server alive now (see _sweep)
        self.live_lock = threading.Lock()
        self.kill_lock = threading.Lock()    # one stop-and-kill from this host at a time (see kill_from_host)
        self.disk_hit = False                # set by the LayerGuard when it killed commands of this container
        try:                                 # may this process signal the container's processes itself?
            os.kill(self.init_pid, 0)
            self.host_kill = bool(self.cgroup)
        except OSError:
            self.host_kill = False

    def counters(self) -> dict | None:
        return _docker_tool.read_counters(self.cgroup) if self.cgroup else None

    def exec_server(self) -> ExecServer | None:
        """The container's exec server, started (again) when missing; None where it cannot start (an image
        whose python3 is too old), after which the classic path serves."""
        with self.server_lock:
            if self.server is None and self.server_starts_failed < 2:
                marker = f"server-{uuid.uuid4().hex}"
                self.add_live(marker)
                try:
                    self.server = ExecServer(self.container.client.api, self.container.id, self.python, self.ids,
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
            if proc_states([pid], set()).get(pid, "X") not in "TtZX":
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

    def kill_server(self, server: ExecServer) -> None:
        """SIGKILL the exec server (a stopped one too): from this host where it may, else as root inside."""
        pid = server.host_pid or (self._host_pid(server.pid) if self.host_kill else None)
        if pid is not None:
            _docker_tool._signal([pid], signal.SIGKILL)
            return
        try:
            self.container.exec_run([self.python, *ISOLATED, "-c", f"import os; os.kill({server.pid}, 9)"],
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
        LayerGuard.forget(self)
        self.drop_server()
        remove_quietly(self.container)

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
            return proc_states([self.init_pid], set()).get(self.init_pid, "Z") != "Z"
        try:
            self.container.reload()
            return self.container.status == "running"
        except Exception:                    # gone altogether
            return False

    # -- stopping one execution's processes ---------------------------------------------------------------
    def end_exec(self, exec_id: str) -> None:
        """SIGKILL the process a `docker exec` started, from this host where it sees it. The marker kill may
        miss it: its parent is outside the container, as the runtime's own processes' is, and a command may
        take their name."""
        pid = self.container.client.api.exec_inspect(exec_id).get("Pid")
        if self.host_kill and pid and pid in self.cgroup_pids():
            _docker_tool._signal([pid], signal.SIGKILL)
            end = time.monotonic() + 5.0
            while pid in self.cgroup_pids() and time.monotonic() < end:
                time.sleep(0.005)

    def exit_code(self, exec_id: str) -> int | None:
        """The exit status of a `docker exec` that closed its output; None while it still runs (after ~1 s)."""
        for _ in range(100):
            info = self.container.client.api.exec_inspect(exec_id)
            if not info.get("Running"):
                return info.get("ExitCode")
            time.sleep(0.01)
        return None

    def update(self, body: dict) -> None:
        """Change the container's resources (Docker's update endpoint)."""
        api = self.container.client.api   # the SDK's update_container lacks PidsLimit; this is the same endpoint
        try:
            api._raise_for_status(api._post_json(api._url("/containers/{0}/update", self.container.id), data=body))
        except Exception as exc:
            raise SandboxError(f"cannot update the limits of {self.container.short_id}: {exc}") from exc

    def tool(self, *args: str) -> dict | None:
        """Run the in-container helper as root; its counters, or None when it could not start or finish."""
        marker = f"helper-{uuid.uuid4().hex}"
        self.add_live(marker)
        try:
            res = self.container.exec_run([self.python, *ISOLATED, "-c", TOOL_SOURCE, *args], user="0",
                                          environment={MARKER: marker})
        finally:
            self.drop_live(marker)
        lines = res.output.decode("utf-8", "replace").strip().splitlines()
        if res.exit_code != 0 or not lines:
            return None
        try:
            return json.loads(lines[-1]) or {}
        except ValueError:
            return None

    def probe(self) -> dict | None:
        return self.tool("probe")

    def kill(self, token: str) -> dict:
        """SIGKILL every process of one execution; returns the counters after it (see the module docstring)."""
        if self.host_kill and self.kill_from_host(token):
            return self.counters()
        for attempt in range(3):
            bumped = attempt > 0 and self.applied[1]
            if bumped:                       # a fork bomb holds every pid: make room for the helper
                self.update({"PidsLimit": self.applied[1] + 16})
            try:
                got = self.tool("kill", token, *map(str, self.ids))
            except Exception:
                got = None
            finally:
                if bumped:
                    self.update({"PidsLimit": self.applied[1]})
            if got is not None:
                return self.counters() or got
        raise SandboxError(f"could not stop the processes of a command in {self.container.short_id}")

    def kill_from_host(self, token: str) -> bool:
        """Kill from this host: stop every process of the container first, then read their environments.

        A stopped fork bomb forks no more, and a stopped process holds no memory lock, which reading its
        environment waits for (under a CPU quota a throttled bomb turns that wait into seconds). Processes
        of other executions are continued afterwards; ones stopped before we came stay stopped."""
        with self.kill_lock:                 # another thread's stop-all would look like "stopped before we came"
            skip = {self.init_pid, self.server_host_pid()}    # the server never forks: it need not stop
            states = proc_states(self.cgroup_pids(), skip)
            already = {pid for pid, st in states.items() if st in "Tt"}
            for n in range(1000):
                running = [pid for pid, st in states.items() if st not in "TtZ"]
                if not running:
                    break
                _docker_tool._signal(running, signal.SIGSTOP)
                _docker_tool.pause(n)
                states = proc_states(self.cgroup_pids(), skip)
            else:                            # one would not stop (in uninterruptible sleep?): let them all go
                _docker_tool._signal(set(states) - already, signal.SIGCONT)
                return False
            doomed = [pid for pid, _st in _docker_tool._marked(token, self.cgroup_pids, skip)]
            _docker_tool._signal(doomed, signal.SIGKILL)
            _docker_tool._signal(set(states) - set(doomed) - already, signal.SIGCONT)
        end = time.monotonic() + 5.0
        while time.monotonic() < end:
            if not set(self.cgroup_pids()) & set(doomed):
                return True
            time.sleep(0.005)
        return False

    def kill_into(self, token: str, exec_id: str, result: list) -> None:
        """`kill` then `end_exec`, for a thread: the outcome (counters or the exception) lands in `result`."""
        try:
            result.append(self.kill(token))
            self.end_exec(exec_id)
        except BaseException as exc:
            result.append(exc)

class LayerGuard:
    """Caps the writable image layer of containers made with `read_only_root=False`, where the engine cannot
    (overlay2 without xfs project quotas). One thread of this process measures each guarded container's
    upper directory, and the /etc files Docker bind-mounts writable into it, every quarter second or so; when
    one is past its cap in bytes or inodes it SIGKILLs the container's commands (not its init, exec server
    or helpers). The sandbox measures again when a run ends, and replaces a container still over its cap, so
    quick runs cannot add up. The walk stops at twice the cap: a measure costs at most that many inodes.
    Containers whose layer this host cannot see (a remote engine) are not guarded."""

    _boxes: "weakref.WeakKeyDictionary[Box, dict]" = weakref.WeakKeyDictionary()
    _lock = threading.Lock()
    _thread: threading.Thread | None = None
    _thread_pid: int | None = None

    @classmethod
    def watch(cls, box: Box, cap_bytes: int, cap_inodes: int) -> bool:
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
    def forget(cls, box: Box) -> None:
        with cls._lock:
            cls._boxes.pop(box, None)

    @classmethod
    def over(cls, box: Box) -> bool:
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


def proc_states(pids: list[int], skip: set[int]) -> dict[int, str]:
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


def classify(stop: str | None, code: int | None, err: bytes, truncated: bool, before: dict | None,
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
