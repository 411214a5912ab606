"""What a cluster job ships and asks for (agents/cluster.py, agents/train_rl.env_specs), without a cluster."""
from __future__ import annotations

from pathlib import Path

from agents.cluster import env_specs, project_runtime_env, shipped_env_vars, worker_resources
from agents.rl_args import RLArgs


def test_the_runtime_env_carries_every_package_a_worker_imports_and_the_cwm_settings(monkeypatch):
    import os

    for name in list(os.environ):
        if name in shipped_env_vars():
            monkeypatch.delenv(name)
    monkeypatch.setenv("CWM_CACHE", "/data/cwm-cache")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    env = project_runtime_env({"env_vars": {"CWM_BASE_IMAGE": "python:3.11-slim"}})
    assert sorted(Path(p).name for p in env["py_modules"]) == ["agents", "cwm_envs", "model", "rewards"]
    root = Path(__file__).resolve().parents[1]
    assert all(Path(p).parent == root for p in env["py_modules"])  # this tree's copy, as the driver imports it
    assert "__pycache__" in env["excludes"]
    # the settings workers read travel; secrets stay on the driver
    assert env["env_vars"] == {"CWM_CACHE": "/data/cwm-cache", "HF_HUB_OFFLINE": "1", "CWM_BASE_IMAGE": "python:3.11-slim"}


def test_docker_envs_ask_for_their_slots_and_text_envs_for_nothing():
    args = RLArgs(out=Path("/runs/x"), env="cwm/Math-v0", docker_slots=3,
                  env_mix={"cwm/SWE-v0": {"weight": 0.5}, "cwm/Code-v0": {"kwargs": {"sandbox": "docker"}},
                           "cwm/Trace-v0": {"resources": {"tracer": 1}}})
    specs = {s.id: s for s in env_specs(args)}
    assert specs["cwm/Math-v0"].resources == {} and specs["cwm/Math-v0"].max_episodes == 0
    assert specs["cwm/SWE-v0"].resources == {"docker": 3.0} and specs["cwm/SWE-v0"].max_episodes == 3
    assert specs["cwm/SWE-v0"].weight == 0.5
    assert specs["cwm/Code-v0"].resources == {"docker": 3.0}  # a text env made on the Docker backend
    assert specs["cwm/Trace-v0"].resources == {"tracer": 1}  # an explicit placement wins
    assert worker_resources("cwm/Code-v0", {}, "docker", 3) == {}
