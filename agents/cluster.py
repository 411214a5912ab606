"""Running on a Ray cluster: the code and settings shipped to the nodes, and what runs where.

- Code: a job started with `init_ray(address)` carries the project's packages (agents, cwm_envs, model,
  rewards) in its Ray runtime environment (`py_modules`), so a node needs Python, Ray and the dependencies,
  not this package. Ray zips each package once (by content hash) and every node unpacks it before its first
  worker of the job starts. Settings a worker reads from its environment (CWM_*, the Hugging Face offline
  switches) travel as the runtime environment's variables.
- Placement: rollout workers of an env that runs Docker containers (cwm/SWE-v0, or any env made with
  `sandbox="docker"`) ask for `docker_slots` units of the `docker_resource` custom resource and run at most
  that many episodes at once, so they go only to nodes that declare it, and a node declaring N units never
  holds more than N of the run's episode containers. Text envs ask for CPUs only and go anywhere. Learner
  actors (`--num-learners N`) ask for `learner_resources`, e.g. a `learner` unit declared only on the head.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

PACKAGES = ("agents", "cwm_envs", "model", "rewards")  # what a rollout or learner process imports
EXCLUDES = ["__pycache__", "*.pyc", ".pytest_cache"]
SHIPPED_ENV_PREFIXES = ("CWM_",)
SHIPPED_ENV_NAMES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT")
DOCKER_ENVS = ("cwm/SWE-v0",)  # envs whose every episode runs in a Docker container


def package_dirs() -> list[Path]:
    """The directories of the project's packages, as this process imports them."""
    import importlib

    return [Path(importlib.import_module(name).__file__).parent for name in PACKAGES]


def shipped_env_vars(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The settings of this process's environment that workers read too (CWM_*, HF offline switches)."""
    environ = os.environ if environ is None else environ
    return {k: v for k, v in environ.items() if k.startswith(SHIPPED_ENV_PREFIXES) or k in SHIPPED_ENV_NAMES}


def project_runtime_env(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A Ray runtime environment that carries the project's code and settings to every worker of a job.

    For `ray.init(address=..., runtime_env=project_runtime_env())` when not going through `init_ray`.
    `extra` entries are merged in (its `env_vars` over the shipped ones)."""
    env: dict[str, Any] = {"py_modules": [str(p) for p in package_dirs()], "excludes": list(EXCLUDES)}
    env_vars = shipped_env_vars()
    extra = dict(extra or {})
    env_vars.update(extra.pop("env_vars", {}))
    if env_vars:
        env["env_vars"] = env_vars
    env.update(extra)
    return env


def needs_docker(env_id: str, kwargs: dict | None = None) -> bool:
    """Whether the workers of this env run Docker containers (and so must sit on a Docker node)."""
    return env_id in DOCKER_ENVS or (kwargs or {}).get("sandbox") == "docker"


def worker_resources(env_id: str, kwargs: dict | None, docker_resource: str, docker_slots: int) -> dict[str, float]:
    """The custom resources a rollout worker of this env asks for beside its CPU (none for a text env)."""
    return {docker_resource: float(docker_slots)} if needs_docker(env_id, kwargs) else {}


LOCAL_DOCKER_UNITS = 1024.0   # the docker resource of a local Ray (containers are capped per worker, not per node)


def start_ray(args) -> bool:
    """Join the cluster at --address, or start a local Ray: one node that runs every env, so it offers the
    docker resource that Docker envs' workers ask for. True when this call started it."""
    from agents.rollout import init_ray

    return init_ray(args.address, args.num_cpus, resources={args.docker_resource: LOCAL_DOCKER_UNITS})


def env_specs(args) -> list:
    """The envs a run (`RLArgs`) samples, --env first, then --env-mix, each placed by its resources (Docker
    envs on nodes with the docker resource, at most docker_slots episodes per worker)."""
    from dataclasses import replace

    entries = [(args.env, {"kwargs": args.env_kwargs}), *args.env_mix.items()]
    specs = []
    for env_id, entry in entries:
        kwargs = entry.get("kwargs", {})
        docker = needs_docker(env_id, kwargs)
        resources = entry.get("resources")
        if resources is None:
            resources = worker_resources(env_id, kwargs, args.docker_resource, args.docker_slots)
        specs.append(replace(env_spec(env_id, kwargs), weight=float(entry.get("weight", 1.0)), resources=resources,
                             max_episodes=args.docker_slots if docker else 0))
    return specs


def env_spec(env_id: str, kwargs: dict):
    """The pool's EnvSpec of `env_id`. An env registered in this process with a class (a script's
    `gymnasium.register("my/Env-v0", entry_point=MyEnv)`) travels to the workers with its class, which
    register it there; ids with an importable entry point (`cwm/*`, "module:id") are made by name."""
    import gymnasium

    from agents.rollout import EnvSpec

    registered = gymnasium.registry.get(env_id)
    entry = registered.entry_point if registered is not None and callable(registered.entry_point) else None
    return EnvSpec(env_id, kwargs=kwargs, entry_point=entry)
