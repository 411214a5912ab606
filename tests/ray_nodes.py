"""A Ray cluster of separate nodes on this machine (a head and worker raylets, each `ray start --block` in its
own process session and temp dir), whose Python has Ray and the dependencies but not this project.

Stopped by killing its own sessions, never with `ray stop` (that stops every Ray of the user on the machine,
other tests' and other sessions' included).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

# Ray 2.60 turns token authentication on when ~/.ray/auth_token exists, for `ray start --head` but not for
# the nodes that join it; the cluster and its drivers say the mode explicitly.
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           # a killed raylet is declared dead after ~2 s instead of ~15 s
           "RAY_health_check_period_ms": "500", "RAY_health_check_failure_threshold": "4",
           "RAY_health_check_timeout_ms": "500"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def node_python(root: Path) -> Path:
    """A venv whose site-packages reach this interpreter's packages by a plain path line: the dependencies
    import, and this project's editable install (a .pth hook in that directory) is not run, so a process of
    this Python cannot import the project unless Ray ships it."""
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv / "bin" / "python"


class Node:
    def __init__(self, name: str, proc: subprocess.Popen, log: Path):
        self.name, self.proc, self.log = name, proc, log

    def pids(self) -> list[int]:
        """Live processes of this node (its session: ray start, raylet, GCS, agents, workers)."""
        return [pid for pid, sid, _ in _processes() if sid == self.proc.pid]

    def raylet_pid(self) -> int | None:
        return next((pid for pid, sid, comm in _processes() if sid == self.proc.pid and comm == "raylet"), None)

    def kill(self) -> None:
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass


def _processes() -> list[tuple[int, int, str]]:
    """(pid, session id, command name) of every live process (zombies left out)."""
    out = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1: stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] != "Z":
            out.append((int(entry.name), int(fields[3]), comm))
    return out


def session_of(pid: int) -> int | None:
    return next((sid for p, sid, _ in _processes() if p == pid), None)


class LocalCluster:
    """`LocalCluster(root, {"a": {"num_cpus": 2, "resources": {...}}, ...}, head=...)`: start(), then `address`,
    `nodes`, `driver_env()`; stop() kills every process of its sessions and removes its temp dirs."""

    def __init__(self, root: Path, workers: dict[str, dict], head: dict | None = None):
        self.root, self.worker_specs, self.head_spec = Path(root), workers, head or {"num_cpus": 1}
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.nodes: dict[str, Node] = {}
        self.python: Path | None = None

    def _start(self, name: str, spec: dict, *role: str) -> Node:
        temp = Path(tempfile.mkdtemp(prefix=f"r{name}-", dir=self.root))  # short: Ray's socket paths have a limit
        ports = []
        for opt in ("--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--runtime-env-agent-port",
                    "--metrics-export-port", "--node-manager-port", "--object-manager-port"):
            ports += [opt, str(free_port())]   # 52365 and friends are taken by any other Ray on this machine
        cmd = [str(self.python), "-m", "ray.scripts.scripts", "start", "--block", *role, "--temp-dir", str(temp),
               "--num-cpus", str(spec.get("num_cpus", 1)), "--object-store-memory", str(100 * 2**20),
               "--resources", json.dumps(spec.get("resources", {})), "--disable-usage-stats", *ports]
        log = self.root / f"{name}.log"
        proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=self.node_env(), cwd=self.root,
                                start_new_session=True)
        return Node(name, proc, log)

    def launch(self) -> "LocalCluster":
        """Start every node's `ray start` without waiting for them (see `wait`)."""
        self.python = node_python(self.root)
        self.nodes["head"] = self._start("head", self.head_spec, "--head", "--port", str(self.port),
                                         "--include-dashboard=false")
        for name, spec in self.worker_specs.items():  # they wait for the head's GCS themselves
            self.nodes[name] = self._start(name, spec, "--address", self.address)
        return self

    def start(self, timeout: float = 120) -> "LocalCluster":
        return self.launch().wait(timeout)

    def wait(self, timeout: float = 120) -> "LocalCluster":
        """Until every node says it is up (a node that exits or takes too long: its log in the error)."""
        deadline = time.monotonic() + timeout
        for node in self.nodes.values():
            while "Ray runtime started" not in node.log.read_text():
                if node.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"Ray node {node.name} did not start:\n{node.log.read_text()[-3000:]}")
                time.sleep(0.2)
        return self

    def node_env(self) -> dict[str, str]:
        """The environment of the nodes' processes: no PYTHONPATH (nothing of this tree)."""
        return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | RAY_ENV

    def driver_env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, **RAY_ENV, **extra}

    def stop(self) -> None:
        for node in self.nodes.values():
            node.kill()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc):
        self.stop()
