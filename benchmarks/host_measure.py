"""What the host shows of processes and containers, for the performance benches: CPU seconds and memory from
/proc (a process, its descendants, the Docker engine), a container's cgroup counters and its containerd shim,
and a sampler of the containers' working sets and of the machine's other runnable tasks.
"""
from __future__ import annotations

import math
import os
import statistics
import threading
from pathlib import Path


def quantiles(xs: list[float]) -> dict:
    """p50 / p99 / max in milliseconds (nearest rank)."""
    if not xs:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None, "n": 0}
    xs = sorted(xs)
    p99 = xs[max(0, math.ceil(0.99 * len(xs)) - 1)]
    return {"p50_ms": round(1000 * statistics.median(xs), 1), "p99_ms": round(1000 * p99, 1),
            "max_ms": round(1000 * xs[-1], 1), "n": len(xs)}


def proc_stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def tree_cpu_s(root: int | None = None) -> float:
    """CPU seconds of `root` (default: this process, all threads) and every live descendant, each with the
    children it has reaped: sandbox servers and the executions they forked."""
    ticks, kids = {}, {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (f := proc_stat(int(name))):
            ticks[int(name)] = sum(int(x) for x in f[11:15])
            kids.setdefault(int(f[1]), []).append(int(name))
    total, todo = 0, [root or os.getpid()]
    while todo:
        pid = todo.pop()
        total += ticks.get(pid, 0)
        todo += kids.get(pid, [])
    return total / os.sysconf("SC_CLK_TCK")


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def engine_pids() -> list[int]:
    return [int(d) for d in os.listdir("/proc") if d.isdigit() and comm(int(d)) in ("dockerd", "containerd")]


def proc_cpu_s(pids) -> float:
    """CPU seconds of `pids` themselves plus the children they reaped (a shim reaps runc and exec'd processes)."""
    total = 0
    for pid in pids:
        if f := proc_stat(pid):
            total += sum(int(x) for x in f[11:15])
    return total / os.sysconf("SC_CLK_TCK")


def _kib_line_mb(path: str, key: str) -> float:
    """The `KEY: N kB` line of a /proc file, in MB (0.0 when the process is gone)."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def pss_mb(pid: int) -> float:
    """Proportional set size: the process's own memory plus its share of what it shares."""
    return _kib_line_mb(f"/proc/{pid}/smaps_rollup", "Pss:")


def rss_mb(pid: int) -> float:
    return _kib_line_mb(f"/proc/{pid}/status", "VmRSS:")


class Container:
    """What the host shows of one container: its cgroup (memory, CPU) and its containerd shim."""

    def __init__(self, client, cid: str):
        self.id = cid
        self.init_pid = client.api.inspect_container(cid)["State"]["Pid"]
        f = proc_stat(self.init_pid)
        self.shim_pid = int(f[1]) if f else 0
        self.dirs: dict[str, str] = {}
        try:
            lines = Path(f"/proc/{self.init_pid}/cgroup").read_text().splitlines()
        except OSError:
            lines = []
        for line in lines:
            _, ctrls, path = line.split(":", 2)
            if cid not in path:
                continue
            if not ctrls:                                        # cgroup v2: one directory for all
                self.dirs.setdefault("memory", f"/sys/fs/cgroup{path}")
                self.dirs.setdefault("cpu", f"/sys/fs/cgroup{path}")
            for ctrl in ctrls.split(","):
                if ctrl in ("memory", "cpuacct"):
                    self.dirs["memory" if ctrl == "memory" else "cpu"] = f"/sys/fs/cgroup/{ctrls}{path}"

    def _read(self, ctrl: str, name: str) -> str | None:
        try:
            return Path(self.dirs[ctrl], name).read_text()
        except (KeyError, OSError):
            return None

    def cpu_s(self) -> float | None:
        if (ns := self._read("cpu", "cpuacct.usage")) is not None:              # v1
            return int(ns) / 1e9
        if (stat := self._read("cpu", "cpu.stat")) is not None:                 # v2
            return int(stat.split("usage_usec", 1)[1].split()[0]) / 1e6
        return None

    def memory_mb(self) -> tuple[float | None, float | None]:
        """(working set, peak) in MB: usage minus inactive file cache (what `docker stats` shows)."""
        stat = self._read("memory", "memory.stat") or ""
        fields = dict(line.split() for line in stat.splitlines() if len(line.split()) == 2)
        usage = self._read("memory", "memory.usage_in_bytes") or self._read("memory", "memory.current")
        peak = self._read("memory", "memory.max_usage_in_bytes") or self._read("memory", "memory.peak")
        if usage is None:
            return None, None
        inactive = int(fields.get("total_inactive_file", fields.get("inactive_file", 0)))
        mb = lambda b: round(int(b) / 2**20, 1)  # noqa: E731  (a one-line local helper)
        return mb(max(0, int(usage) - inactive)), (mb(peak) if peak else None)


class Monitor(threading.Thread):
    """Samples, twice a second, the working set of every live container of the point and how many runnable
    tasks on the machine are not ours (/proc/loadavg's running count less our operations under way and this
    thread): the competition the simulation in benchmarks/scale_model.py is given."""

    def __init__(self):
        super().__init__(daemon=True)
        self.live: dict[str, Container] = {}
        self.peaks: dict[str, float] = {}
        self.total_peak = 0.0
        self.inflight = 0                         # our execs and resets under way now
        self.others: list[int] = []               # runnable tasks that were not ours, at each sample
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def enter(self, k: int) -> None:
        with self.lock:
            self.inflight += k

    def watch(self, c: Container) -> None:
        with self.lock:
            self.live[c.id] = c

    def drop(self, c: Container) -> None:
        with self.lock:
            self.live.pop(c.id, None)

    def run(self) -> None:
        while not self.stop.wait(0.5):
            self.sample()
        self.sample()                             # a short point still gets one sample of its containers

    def sample(self) -> None:
        """One sample: every live container's working set, and the runnable tasks that are not ours."""
        with self.lock:
            boxes, ours = list(self.live.values()), self.inflight
        try:
            running = int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])
            self.others.append(max(0, running - ours - 1))
        except (OSError, ValueError, IndexError):
            pass
        total = 0.0
        for c in boxes:
            ws, _ = c.memory_mb()
            if ws is not None:
                self.peaks[c.id] = max(self.peaks.get(c.id, 0.0), ws)
                total += ws
        self.total_peak = max(self.total_peak, total)
