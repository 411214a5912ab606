"""`cwm train rl --address` on a real multi-node Ray cluster on this machine: a head and two worker raylets
whose Python lacks this project (so the code must be shipped), a text env and the SWE env (Docker) mixed,
one worker node killed mid-episode, then the driver (the learner) killed and resumed."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from ray_nodes import LocalCluster, session_of

pytestmark = [pytest.mark.ray, pytest.mark.docker, pytest.mark.slow]

EASY = {"source": "generated", "kinds": ["add_sub"], "difficulty": 0}
TASKS, GROUP = 2, 2


def tiny_model(path: Path) -> Path:
    """A one-layer cwm-micro and a tokenizer trained on the math env's text, as a model directory."""
    import gymnasium
    import torch

    import cwm_envs  # noqa: F401  (registers the ids)
    from model.config import build_model
    from model.tokenizer import train_tokenizer

    env = gymnasium.make("cwm/Math-v0", **EASY)
    texts = [env.reset(seed=i)[0] for i in range(20)] + ["The answer is 7.\n</think>\n\\boxed{7}"] * 5
    env.close()
    tok = train_tokenizer(texts, vocab_size=400)
    torch.manual_seed(0)
    build_model("cwm-micro", vocab_size=len(tok), num_hidden_layers=1).save_pretrained(path)
    tok.save_pretrained(path)
    return path


class ContainerWatcher(threading.Thread):
    """Notes every cwm-envs container whose owner process belongs to one of the cluster's nodes."""

    def __init__(self, cluster: LocalCluster):
        super().__init__(daemon=True)
        import docker

        self.client = docker.from_env()
        self.sessions = {node.proc.pid: name for name, node in cluster.nodes.items()}
        self.seen: dict[str, tuple[str, float]] = {}  # container id -> (node name, first seen)
        self.halt = threading.Event()

    def run(self):
        while not self.halt.is_set():
            for c in self.client.containers.list(all=True, filters={"label": "cwm-envs"}, ignore_removed=True):
                pid = int((c.labels or {}).get("cwm-envs.owner-pid", 0))
                node = self.sessions.get(session_of(pid)) if pid else None
                if node and c.id not in self.seen:
                    self.seen[c.id] = (node, time.monotonic())
            self.halt.wait(0.2)

    def first_node(self, timeout: float) -> tuple[str, float]:
        deadline = time.monotonic() + timeout
        while not self.seen and time.monotonic() < deadline:
            time.sleep(0.1)
        assert self.seen, "no SWE container appeared on a worker node"
        return min(self.seen.values(), key=lambda v: v[1])

    def left(self) -> list[str]:
        """The noted containers that still exist."""
        import docker

        alive = []
        for cid in self.seen:
            try:
                self.client.containers.get(cid)
                alive.append(cid[:12])
            except docker.errors.NotFound:
                pass
        return alive


def wait_for(path: Path, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the run ended early (rc {proc.returncode})"
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.1)


def test_a_cluster_run_ships_its_code_survives_a_lost_node_and_resumes_after_a_learner_crash(tmp_path, docker_engine):
    root = Path(tempfile.mkdtemp(prefix="cwmc-", dir="/tmp"))  # short: Ray's socket paths have a length limit
    cluster = LocalCluster(root, head={"num_cpus": 1},
                           workers={"a": {"num_cpus": 2, "resources": {"docker": 2}},
                                    "b": {"num_cpus": 2, "resources": {"docker": 2}}})
    out = tmp_path / "run"
    mix = {"cwm/SWE-v0": {"weight": 1.0, "kwargs": {"max_turns": 2}}}  # the env ends (and pays) a stalled episode
    model = tmp_path / "model"
    cmd = [sys.executable, "-m", "cwm_envs.cli", "train", "rl", "--address", cluster.address, "--algo", "ppo",
           "--env", "cwm/Math-v0", "--env-kwargs", json.dumps(EASY), "--env-mix", json.dumps(mix),
           "--model", str(model), "--tasks", str(TASKS), "--group", str(GROUP), "--workers", "1",
           "--max-new-tokens", "8", "--docker-slots", "1", "--torch-threads", "1",
           "--steps", "2", "--save-every", "1", "--out", str(out)]
    here = Path(__file__).resolve().parents[1]
    # the driver imports this tree; its working directory (which Ray adds to workers' paths) does not hold it
    env = cluster.driver_env(PYTHONPATH=str(here))
    watcher = None
    try:
        cluster.launch()
        tiny_model(model)  # while the nodes come up
        cluster.wait()
        lacks = subprocess.run([str(cluster.python), "-c", "import agents"], capture_output=True, text=True, cwd=root,
                               env=cluster.node_env())
        assert lacks.returncode != 0 and "No module named 'agents'" in lacks.stderr  # the nodes lack the project
        watcher = ContainerWatcher(cluster)
        watcher.start()

        first = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                                 stderr=(tmp_path / "first.err").open("w"), start_new_session=True)
        try:
            # the first SWE container shows which node runs an episode now: kill that node's raylet
            lost, _ = watcher.first_node(timeout=240)
            assert lost in ("a", "b")
            os.kill(cluster.nodes[lost].raylet_pid(), signal.SIGKILL)
            killed_at = time.monotonic()
            # the learner (this driver) crashes after its first checkpoint
            wait_for(out / "checkpoints" / "step-000001", first, timeout=300)
            os.killpg(first.pid, signal.SIGKILL)
        finally:
            if first.poll() is None:
                os.killpg(first.pid, signal.SIGKILL)
            first.wait()

        second = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
        assert second.returncode == 0, (tmp_path / "first.err").read_text()[-2000:] + second.stderr[-3000:]
    finally:
        if watcher is not None:
            watcher.halt.set()
            watcher.join(timeout=10)
        cluster.stop()

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # every update applied once, in order, across the node loss and the driver's crash (PPO updates every batch)
    assert [r["step"] for r in rows] == [1, 2] and [r["version"] for r in rows] == [1, 2]
    assert all(r["episodes"] == TASKS * GROUP and r["failed"] == 0 for r in rows)  # each batch came back whole
    # the loss is counted with its restart (a kill that lands between two batches loses no episode: 0 and 0)
    lost, restarts = sum(r["episodes_lost"] for r in rows), sum(r["worker_restarts"] for r in rows)
    assert (lost >= 1) == (restarts >= 1), rows
    assert json.loads((out / "stage.json").read_text())["resumed_from"].endswith("step-000001")
    envs = {json.loads(line)["env_id"] for line in (out / "trajectories.jsonl").read_text().splitlines()}
    assert envs == {"cwm/Math-v0", "cwm/SWE-v0"}
    # the SWE worker came back on the node that survived, and ran episodes there
    survivor = "b" if lost == "a" else "a"
    assert any(node == survivor and t > killed_at for node, t in watcher.seen.values())
    # nothing left behind: no container of any node's processes, no process of any node
    assert watcher.left() == []
    assert all(node.pids() == [] for node in cluster.nodes.values())
