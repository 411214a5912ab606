"""Shared fixtures: one Ray runtime per test session, and a Docker engine that must be up under CI=true."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from cwm_envs.tasks import shared_data_dir

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# Ctrl-C as a terminal delivers it, however the suite was started: a shell that starts a job in the background
# hands it SIGINT ignored, and Python then installs no KeyboardInterrupt handler (nor do its children).
signal.signal(signal.SIGINT, signal.default_int_handler)
# A test that uses one of these fixtures needs what the marker names (`-m "not docker"` deselects it).
FIXTURE_MARKERS = {"docker_engine": "docker", "ray_session": "ray"}


def pytest_collection_modifyitems(config, items):
    """Mark every test by what its fixtures need, so that no Docker or Ray test goes without its marker."""
    for item in items:
        for fixture, marker in FIXTURE_MARKERS.items():
            if fixture in getattr(item, "fixturenames", ()) and marker not in item.keywords:
                item.add_marker(getattr(pytest.mark, marker))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """../shared/data: the benchmark files (never copied into the project)."""
    path = shared_data_dir()
    if not path.is_dir():
        if IN_CI:
            pytest.fail(f"benchmark data missing at {path}")
        pytest.skip(f"benchmark data missing at {path}")
    return path


def _docker_up() -> str | None:
    try:
        import docker

        client = docker.from_env(timeout=10)
        client.ping()
        client.close()
        return None
    except Exception as exc:  # any failure to reach the engine
        return f"{type(exc).__name__}: {exc}"


@pytest.fixture(scope="session")
def docker_engine():
    """A reachable Docker engine. Under CI=true a missing engine fails the test instead of skipping it."""
    problem = _docker_up()
    if problem:
        msg = f"no Docker engine answers ({problem}); `make test` starts one"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    return True


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray runtime for the whole test session (about 3 s and 0.7 GB to start). Three logical CPUs:
    an RL run with two sharded learner actors beside its rollout worker (tests/test_sharded_learner.py)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run faster on one thread (and far faster when other processes share the cores)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

