"""What a rollout is asked for and what it costs: the env specs a pool samples from, the requests (one GRPO
group each) and the per-batch stats; shared by the worker (agents/rollout_worker.py) and the driver's pool
(agents/rollout_pool.py)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from agents.trajectory import Trajectory

# The part of an env's info a policy may see: budgets and counters. Everything else (outcomes, details,
# expected values, submissions) can carry the gold answer or the tests, and stays on the trajectory for logs.
POLICY_INFO_KEYS = frozenset({"task_id", "turn", "max_turns", "remaining_turns", "remaining_tokens",
                              "tool_calls_used", "remaining_tool_calls", "cut", "final"})


def policy_info(info: dict) -> dict:
    """What of `info` a policy is handed (see POLICY_INFO_KEYS)."""
    return {k: v for k, v in info.items() if k in POLICY_INFO_KEYS}


@dataclass(frozen=True)
class EnvSpec:
    """An env the pool samples from: registered `id`, mixing `weight`, `kwargs` for `gymnasium.make`.

    `entry_point` registers `id` on the worker first (for envs outside `cwm_envs`); `resources` places it on
    workers that hold those Ray resources; `max_episodes` (0: no cap) is how many episodes of the batch a
    worker of its resource class runs at once (each SWE episode holds a container).
    """

    id: str
    weight: float = 1.0
    kwargs: dict = field(default_factory=dict)
    resources: dict = field(default_factory=dict)
    entry_point: Any = None
    max_episodes: int = 0


@dataclass(frozen=True)
class Request:
    """Run `n` episodes of the task that `env.reset(seed=seed)` poses (one GRPO group), or of `task` (a
    reset option: a Task, an index or an id into the env's tasks) when it is given."""

    env: int  # index into the pool's EnvSpec list
    seed: int
    group: int
    n: int
    task: Any = None


@dataclass
class RolloutStats:
    """What a batch of rollouts cost."""

    episodes: int = 0
    env_steps: int = 0
    policy_tokens: int = 0
    failed: int = 0  # episodes whose env (or worker, after retries) failed
    cut: int = 0  # episodes the worker ended on a budget (paid the env's failure reward)
    worker_restarts: int = 0
    retried_requests: int = 0
    episodes_lost: int = 0  # in flight on a worker that died (sampled again while retries last)
    generate_s: float = 0.0
    env_s: float = 0.0
    wall_s: float = 0.0

    def add(self, other: "RolloutStats") -> None:
        for name in self.__dataclass_fields__:
            if name != "wall_s":
                setattr(self, name, getattr(self, name) + getattr(other, name))


def make_env(spec: EnvSpec):
    """An env instance of `spec` (registering its entry point first, for envs outside cwm_envs)."""
    import gymnasium

    import cwm_envs  # noqa: F401  (registers the cwm/* ids)

    if spec.entry_point is not None and spec.id not in gymnasium.registry:
        gymnasium.register(id=spec.id, entry_point=spec.entry_point)
    return gymnasium.make(spec.id, **spec.kwargs)


def draw_requests(rng: np.random.Generator, env_probs: Sequence[float], num_tasks: int, group: int,
                  first_group: int = 0, seeds: Sequence[int] | None = None, env: int | None = None) -> list[Request]:
    """`num_tasks` requests of `group` episodes: env by `env_probs` (or `env`), reset seed drawn (or `seeds`)."""
    reqs = []
    for i in range(num_tasks):
        e = env if env is not None else int(rng.choice(len(env_probs), p=env_probs))
        seed = int(seeds[i]) if seeds is not None else int(rng.integers(2**31 - 1))
        reqs.append(Request(env=e, seed=seed, group=first_group + i, n=group))
    return reqs


def chunk_seed(pool_seed: int, first_group: int) -> int:
    """The sampler seed of a worker's share of a batch: fixed by the pool's seed and the share's first group,
    so a run repeats whichever worker process serves it."""
    return pool_seed * 1_000_003 + first_group


def failed_trajectory(env_id: str, req: Request, error: str, version: int) -> Trajectory:
    """An episode that could not run (its worker or stream failed): no tokens, the error, never scored."""
    return Trajectory(ids=[], policy_mask=[], logprobs=[], rewards=[], version=version, env_id=env_id,
                      task_id=str(req.seed), group=req.group, seed=req.seed, error=error)
