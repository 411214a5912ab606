"""Rollouts on Ray: workers own env instances and a policy replica; the driver asks for groups of G samples.

- `RolloutWorker` (a plain class; `ray.remote` makes it an actor) keeps a pool of env instances of any
  registered id, runs batched multi-turn episodes token-in/token-out, and returns `Trajectory` objects: in
  lockstep batches (`run`), or as a stream that keeps going while the learner updates (`submit`/`poll`). An
  env that raises during `reset`/`step` ends only its own episode (`Trajectory.error`), and is replaced. The
  turn boundaries (end-of-turn token, budgets, the pay of a cut episode) are the worker's: see its docstring.
- `RolloutPool` (the driver side) draws tasks (env by weight, reset seed), sends each worker its share,
  ships new weights through the object store tagged with a version, replaces a worker that died and retries
  its requests. In async mode the workers' streams never stop: weights land between turns (partial
  rollouts, each token tagged with its sampler's version), the learner takes the first groups to finish, and
  admission control bounds staleness (no finished work is thrown away).
- Workers are placed by resources: an `EnvSpec(resources={"docker": 1})` env runs only on workers created
  with that custom resource (declare it on the nodes: `ray start --resources='{"docker": 4}'`), and an
  `EnvSpec(max_episodes=N)` caps the episodes (so containers) its workers run at once (agents/cluster.py).
- A worker lost with its node (raylet killed, machine gone) costs only its in-flight episodes: they are
  counted (`episodes_lost`), its share is sampled again on a fresh worker that Ray places on a node still up,
  and the batch comes back whole.

The code lives in three modules: agents/rollout_spec.py (specs, requests, stats), agents/rollout_worker.py
(the worker), agents/rollout_pool.py (the pool, `init_ray`); this one is where callers import them from.
"""
from __future__ import annotations

from agents.rollout_pool import RolloutPool, init_ray
from agents.rollout_spec import (
    POLICY_INFO_KEYS,
    EnvSpec,
    Request,
    RolloutStats,
    chunk_seed,
    draw_requests,
    make_env,
    policy_info,
)
from agents.rollout_worker import DEFAULT_MAX_TURNS, RolloutWorker, env_turn_limit, failure_reward, rollout_documents

__all__ = ["DEFAULT_MAX_TURNS", "POLICY_INFO_KEYS", "EnvSpec", "Request", "RolloutPool", "RolloutStats",
           "RolloutWorker", "chunk_seed", "draw_requests", "env_turn_limit", "failure_reward", "init_ray", "make_env",
           "policy_info", "rollout_documents"]
