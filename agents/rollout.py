"""Rollouts on Ray: workers own env instances and a policy replica; the driver asks for groups of G samples.

- `RolloutWorker` (a plain class; `ray.remote` makes it an actor) keeps a pool of env instances of any
  registered id, runs batched multi-turn episodes token-in/token-out, and returns `Trajectory` objects. An env
  that raises during `reset`/`step` ends only its own episode (`Trajectory.error`), and is replaced.
- `RolloutPool` (the driver side) draws tasks (env by weight, reset seed), sends each worker its share,
  ships new weights through the object store tagged with a version, replaces a worker that died and retries
  its requests, and in async mode keeps one batch in flight while the learner updates, dropping (and
  counting) trajectories more than `max_staleness` versions old.
- Workers are placed by resources: an `EnvSpec(resources={"docker": 1})` env runs only on workers created
  with that custom resource (declare it on the nodes: `ray start --resources='{"docker": 4}'`).
"""
from __future__ import annotations

import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from agents.policy import LMPolicy, OracleHint, Turn
from agents.trajectory import Trajectory
from cwm_envs.errors import InfraError
from rewards.base import RewardResult


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
    workers that hold those Ray resources.
    """

    id: str
    weight: float = 1.0
    kwargs: dict = field(default_factory=dict)
    resources: dict = field(default_factory=dict)
    entry_point: Any = None


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
    dropped_stale: int = 0
    worker_restarts: int = 0
    retried_requests: int = 0
    generate_s: float = 0.0
    env_s: float = 0.0
    wall_s: float = 0.0

    def add(self, other: "RolloutStats") -> None:
        for name in self.__dataclass_fields__:
            if name != "wall_s":
                setattr(self, name, getattr(self, name) + getattr(other, name))


def make_env(spec: EnvSpec):
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


class _Episode:
    __slots__ = ("req", "index", "env", "ids", "mask", "logprobs", "values", "rewards", "turn_ends", "obs",
                 "info", "prompt_len", "text", "transcript", "error", "infra", "done")

    def __init__(self, req: Request, index: int):
        self.req, self.index = req, index
        self.env = None
        self.ids, self.mask, self.logprobs, self.values = [], [], [], []
        self.rewards, self.turn_ends, self.text = [], [], []
        self.obs, self.info, self.prompt_len, self.error, self.done = "", {}, 0, None, False
        self.transcript, self.infra = "", False

    def append(self, ids, mask_value, logprobs=None, values=None):
        self.ids += ids
        self.mask += [mask_value] * len(ids)
        self.logprobs += logprobs if logprobs is not None else [0.0] * len(ids)
        self.values += values if values is not None else [0.0] * len(ids)


class RolloutWorker:
    """Runs episodes for requests with its own env instances and policy replica.

    Args:
        env_specs: the pool's env list (requests refer to it by index).
        policy: an `LMPolicy.spec()` dict (built here, weights from `weights`) or a zero-argument factory
            returning any policy with `act`, `encode`-compatible tokenisation and `set_weights`.
        encode: text -> token ids for env text when `policy` is a factory (an LMPolicy brings its own).
        max_turns: turns per episode before it is cut (truncated).
        max_context: token ids per episode before it is cut.
        num_threads: torch threads (a Ray actor gets as many as its CPUs).
        env_threads: episodes whose env steps run at once (benchmarks judge on several sandboxes; 1: in turn).
    """

    def __init__(self, env_specs: Sequence[EnvSpec], policy: dict | Callable, weights: dict | None = None,
                 version: int = 0, *, encode: Callable[[str], list[int]] | None = None, max_turns: int = 16,
                 max_context: int | None = None, num_threads: int | None = None, env_threads: int = 1):
        if num_threads:
            torch.set_num_threads(num_threads)
        self.env_specs = list(env_specs)
        if isinstance(policy, dict):
            self.policy = LMPolicy.from_spec(policy, weights, version)
        else:
            self.policy = policy()
            if weights is not None:
                self.policy.set_weights(weights, version)
        self.encode = encode or self.policy.encode
        self.max_turns, self.max_context = max_turns, max_context
        self._free: dict[int, list] = {}
        self._threads = ThreadPoolExecutor(env_threads, thread_name_prefix="cwm-env") if env_threads > 1 else None
        self._wrong: dict[tuple, str | None] = {}  # (env index, task id, turn) -> another task's action
        self._lock = threading.Lock()  # the free envs and the stats, when env steps run on threads

    def ping(self) -> int:
        return self.policy.version

    def set_weights(self, weights: dict, version: int) -> None:
        self.policy.set_weights(weights, version)

    def run(self, requests: Sequence[Request], sample_seed: int = 0, greedy: bool = False) -> tuple[list[Trajectory], RolloutStats]:
        """All episodes of `requests`, batched turn by turn; never raises for an env's fault."""
        t0 = time.perf_counter()
        stats = RolloutStats()
        generator = torch.Generator().manual_seed(int(sample_seed))
        version = self.policy.version
        episodes = [_Episode(r, j) for r in requests for j in range(r.n)]
        self._each(lambda ep: self._start(ep, stats), episodes)
        turn = 0
        while True:
            live = [ep for ep in episodes if not ep.done]
            if not live:
                break
            turns = [Turn(ep.ids, ep.obs, policy_info(ep.info), ep.transcript) for ep in live]
            g0 = time.perf_counter()
            extra = {"oracle": [self._hint(ep) for ep in live]} if getattr(self.policy, "needs_oracle", False) else {}
            completions = self.policy.act(turns, greedy=greedy, generator=generator, **extra)
            stats.generate_s += time.perf_counter() - g0
            turn += 1
            stepping = []
            for ep, c in zip(live, completions):
                if c.finish == "error":  # the policy's machinery failed: no turn, nothing to score
                    ep.error, ep.infra, ep.done = c.error or "infra: the policy failed", True, True
                    self._release(ep)
                    continue
                ep.append(c.ids, 1, c.logprobs, c.values)
                ep.turn_ends.append(len(ep.ids) - 1)
                ep.text.append(c.text)
                ep.transcript += c.raw if c.raw is not None else c.text
                stats.policy_tokens += len(c.ids)
                stepping.append((ep, c.text))
            self._each(lambda job: self._step(job[0], job[1], turn, stats), stepping)
        stats.episodes = len(episodes)
        stats.failed = sum(ep.error is not None for ep in episodes)
        stats.wall_s = time.perf_counter() - t0
        return [self._finish(ep, version) for ep in episodes], stats

    # -- one episode's steps ---------------------------------------------------------------------------

    def _each(self, fn, items) -> None:
        """fn(item) for each item: in turn, or on the env threads (each episode owns its env)."""
        if self._threads is None or len(items) < 2:
            for item in items:
                fn(item)
        else:
            list(self._threads.map(fn, items))

    def _start(self, ep: _Episode, stats: RolloutStats) -> None:
        e0 = time.perf_counter()
        try:
            ep.env = self._acquire(ep.req.env)
            options = {"task": ep.req.task} if ep.req.task is not None else None
            obs, ep.info = ep.env.reset(seed=ep.req.seed, options=options)
            ep.obs = obs
            ep.transcript = obs
            ep.append(self.encode(obs), 0)
            ep.prompt_len = len(ep.ids)
        except Exception as exc:  # an env fault ends this episode only
            self._fail(ep, exc)
        with self._lock:
            stats.env_s += time.perf_counter() - e0

    def _step(self, ep: _Episode, action: str, turn: int, stats: RolloutStats) -> None:
        e0 = time.perf_counter()
        try:
            obs, reward, terminated, truncated, info = ep.env.step(action)
            with self._lock:
                stats.env_steps += 1
            ep.rewards.append(float(reward))
            ep.info, ep.obs = info, obs
            if terminated or truncated:
                ep.done = True
            elif turn >= self.max_turns:
                ep.done, ep.info = True, {**info, "cut": "max_turns"}
            else:
                reply = self.encode(obs)
                if self.max_context and len(ep.ids) + len(reply) >= self.max_context:
                    ep.done, ep.info = True, {**info, "cut": "max_context"}
                else:
                    ep.append(reply, 0)
                    ep.transcript += obs
        except Exception as exc:
            self._fail(ep, exc)
        with self._lock:
            stats.env_s += time.perf_counter() - e0
        if ep.done and ep.error is None:
            self._release(ep)

    def _hint(self, ep: _Episode) -> OracleHint:
        """The oracle channel: the task and the env's reference action for the episode's next turn (and, for
        a policy that sets `needs_wrong`, another task's action that this task's judge does not pay)."""
        inner = ep.env.unwrapped
        task = getattr(inner, "task", None)
        k = len(ep.turn_ends)
        actions = _reference_episode(inner, task)
        wrong = None
        if getattr(self.policy, "needs_wrong", False) and task is not None:
            key = (ep.req.env, getattr(task, "id", None), k)
            if key not in self._wrong:
                self._wrong[key] = _wrong_action(inner, task, k, actions)
            wrong = self._wrong[key]
        return OracleHint(task, actions[k] if k < len(actions) else None, wrong)

    def _fail(self, ep: _Episode, exc: BaseException) -> None:
        ep.error, ep.done, ep.infra = f"{type(exc).__name__}: {exc}", True, isinstance(exc, InfraError)
        if ep.env is not None:  # a failed instance may be in any state: drop it
            try:
                ep.env.close()
            except Exception:
                pass
            ep.env = None

    def _finish(self, ep: _Episode, version: int) -> Trajectory:
        spec = self.env_specs[ep.req.env]
        return Trajectory(
            ids=ep.ids, policy_mask=ep.mask, logprobs=ep.logprobs, rewards=ep.rewards, version=version,
            env_id=spec.id, task_id=str(ep.info.get("task_id", ep.req.seed)), group=ep.req.group, seed=ep.req.seed,
            prompt_len=ep.prompt_len, turn_ends=ep.turn_ends,
            values=ep.values if getattr(self.policy, "value_head", None) is not None else None,
            text="\n".join(ep.text), info=_plain(ep.info), error=ep.error, infra=ep.infra,
        )

    def _acquire(self, env_index: int):
        with self._lock:
            free = self._free.setdefault(env_index, [])
            env = free.pop() if free else None
        return env if env is not None else make_env(self.env_specs[env_index])

    def _release(self, ep: _Episode) -> None:
        with self._lock:
            self._free.setdefault(ep.req.env, []).append(ep.env)

    def close(self) -> None:
        for envs in self._free.values():
            for env in envs:
                try:
                    env.close()
                except Exception:
                    pass
        self._free.clear()
        if self._threads is not None:
            self._threads.shutdown(wait=True)


def _reference_episode(env, task) -> list[str]:
    try:
        return list(env.reference_episode(task))
    except Exception:                # no oracle, or none for this task: the hint says so
        return []


def _wrong_action(env, task, turn: int, actions: list[str], tries: int = 4) -> str | None:
    """The oracle's action at `turn` for another task of `env` (the next ones in its task list, or tasks its
    generator draws) that `env.judge(task, .)` does not pay; a single-turn action is checked with the judge,
    so a neighbour that shares the gold answer is skipped."""
    tasks = getattr(env, "tasks", None)
    if tasks:
        ids = [getattr(t, "id", None) for t in tasks]
        start = ids.index(task.id) if task.id in ids else -1
        others = [tasks[(start + d) % len(tasks)] for d in range(1, min(len(tasks), tries + 1))]
    else:
        rng = np.random.default_rng(zlib.crc32(str(task.id).encode()))
        try:
            others = [env.generate_task(rng) for _ in range(tries)]
        except Exception:
            return None
    fallback = None
    for other in others:
        if getattr(other, "id", None) == task.id:
            continue
        theirs = _reference_episode(env, other)
        if turn >= len(theirs) or (turn < len(actions) and theirs[turn] == actions[turn]):
            continue
        fallback = fallback or theirs[turn]
        if len(theirs) > 1 or not hasattr(env, "judge"):
            return theirs[turn]
        try:
            paid: RewardResult = env.judge(task, theirs[turn])
        except Exception:
            continue
        if paid.value <= 0 or paid.value <= getattr(env, "failure_reward", lambda: 0.0)():
            return theirs[turn]
    return fallback


def _plain(info: dict) -> dict:
    """Keep the picklable, small parts of an env's info (numpy scalars become Python numbers)."""
    out = {}
    for k, v in info.items():
        if isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, (str, int, float, bool, type(None), list, dict, tuple)):
            out[k] = v
    return out


def init_ray(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Connect to the cluster at `address`, or start a local Ray; True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    return True


class RolloutPool:
    """The driver's view of N rollout workers (Ray actors) per resource class.

    Args:
        env_specs: envs to sample from (mixed by `weight`).
        policy: as for `RolloutWorker`; weights: the initial weights (policy layout), `version` their tag.
        num_workers: actors per resource class (envs with equal `resources` share a class).
        mode: "sync" (each batch sampled with the newest weights) or "async" (the next batch is sampled while
            the learner updates; trajectories older than `max_staleness` versions are dropped and counted).
        seed: seeds task draws and samplers; a run is repeatable for a fixed seed and worker count.
        cpus_per_worker: Ray CPUs (and torch threads, at least one) per worker.
        max_retries: how often a request whose worker died is retried on a fresh worker.
        startup_timeout: seconds for the workers to come up; a cluster that lacks a needed resource fails
            at once with an InfraError naming it.
    """

    def __init__(self, env_specs: Sequence[EnvSpec], policy: dict | Callable, weights: dict | None = None, *,
                 version: int = 0, num_workers: int = 1, mode: str = "sync", max_staleness: int = 1,
                 seed: int = 0, cpus_per_worker: float = 1, max_retries: int = 2, encode=None,
                 max_turns: int = 16, max_context: int | None = None, startup_timeout: float = 300):
        import ray

        if mode not in ("sync", "async"):
            raise ValueError(f"mode must be 'sync' or 'async', not {mode!r}")
        if not ray.is_initialized():
            raise RuntimeError("call agents.rollout.init_ray() (or ray.init) before building a RolloutPool")
        self.env_specs = list(env_specs)
        self.weights_p = np.array([s.weight for s in self.env_specs], dtype=float)
        self.weights_p /= self.weights_p.sum()
        self.mode, self.max_staleness, self.max_retries = mode, max_staleness, max_retries
        self.version = version
        self.rng = np.random.default_rng(seed)
        self._seed = seed
        self._group = 0
        self._worker_args = dict(env_specs=self.env_specs, policy=policy, encode=encode, max_turns=max_turns,
                                 max_context=max_context, num_threads=max(1, int(cpus_per_worker)))
        self._weights_ref = ray.put(weights) if weights is not None else None
        self._actor_cls = ray.remote(RolloutWorker)
        self._cpus = cpus_per_worker
        self.classes: dict[tuple, list] = {}  # resource class -> actors
        classes = sorted({tuple(sorted(s.resources.items())) for s in self.env_specs})
        need = {"CPU": cpus_per_worker * num_workers * len(classes)}
        for res in classes:
            for k, v in res:
                need[k] = need.get(k, 0) + v * num_workers
        deadline = time.monotonic() + 15  # actors just killed release their resources a moment later
        while True:
            free = ray.available_resources()
            short = {k: v for k, v in need.items() if free.get(k, 0) < v}
            if not short or time.monotonic() > deadline or any(k not in ray.cluster_resources() for k in short):
                break
            time.sleep(0.5)
        if short:  # checked before starting any worker: an actor that cannot be placed would wait forever
            raise InfraError(f"the Ray cluster cannot place the rollout workers: they need {short}, it has "
                             f"{({k: free.get(k, 0) for k in short})} free (give a local Ray more CPUs with "
                             "--num-cpus; declare custom resources on the nodes, e.g. "
                             "`ray start --resources='{\"docker\": 4}'`)")
        for res in classes:
            self.classes[res] = [self._new_worker(res) for _ in range(num_workers)]
        try:  # every worker up (model built, weights loaded) before the first request
            ray.get([w.ping.remote() for w in self.workers], timeout=startup_timeout)
        except ray.exceptions.GetTimeoutError:
            self.close()
            raise InfraError(f"rollout workers did not start within {startup_timeout:.0f} s "
                             "(are the cluster's CPUs taken by other actors?)") from None
        self._inflight: list[_Chunk] = []
        self.stats = RolloutStats()

    # -- workers ---------------------------------------------------------------------------------------

    def _new_worker(self, res: tuple):
        return self._actor_cls.options(num_cpus=self._cpus, resources=dict(res), max_concurrency=1).remote(
            weights=self._weights_ref, version=self.version, **self._worker_args)

    @property
    def workers(self) -> list:
        return [w for ws in self.classes.values() for w in ws]

    def _replace(self, dead, res: tuple, index: int) -> bool:
        """Put a fresh worker where `dead` was (unless another failure already did); True if replaced."""
        import ray

        if self.classes[res][index] is not dead:
            return False
        try:
            ray.kill(dead)
        except Exception:
            pass
        self.classes[res][index] = self._new_worker(res)
        return True

    def set_weights(self, weights: dict, version: int) -> None:
        """Ship weights once through the object store; every worker loads them before its next request."""
        import ray

        self.version = version
        self._weights_ref = ray.put(weights)
        for w in self.workers:
            w.set_weights.remote(self._weights_ref, version)

    # -- requests --------------------------------------------------------------------------------------

    def make_requests(self, num_tasks: int, group: int, seeds: Sequence[int] | None = None,
                      env: int | None = None) -> list[Request]:
        reqs = draw_requests(self.rng, self.weights_p, num_tasks, group, self._group, seeds, env)
        self._group += num_tasks
        return reqs

    def _submit(self, requests: list[Request], greedy: bool = False, attempt: int = 0) -> None:
        """Split requests over the workers of their resource class (contiguous, deterministic shares)."""
        by_class: dict[tuple, list[Request]] = {}
        for r in requests:
            by_class.setdefault(tuple(sorted(self.env_specs[r.env].resources.items())), []).append(r)
        for res, reqs in by_class.items():
            workers = self.classes[res]
            for k, share in enumerate(np.array_split(np.arange(len(reqs)), len(workers))):
                if len(share) == 0:
                    continue
                chunk = [reqs[i] for i in share]
                c = _Chunk(None, workers[k], res, k, chunk, chunk_seed(self._seed, chunk[0].group), greedy, attempt)
                self._launch(c)

    def _launch(self, c: "_Chunk") -> None:
        c.ref = c.worker.run.remote(c.requests, c.sample_seed, c.greedy)
        self._inflight.append(c)

    def _collect(self, want_groups: int | None) -> tuple[list[Trajectory], RolloutStats]:
        """Wait for in-flight chunks (all, or until `want_groups` groups are back); retry dead workers."""
        import ray
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

        trajs: list[Trajectory] = []
        stats = RolloutStats()
        groups = 0
        while self._inflight and (want_groups is None or groups < want_groups):
            refs = [c.ref for c in self._inflight]
            ready, _ = ray.wait(refs, num_returns=1)
            c = self._inflight.pop(refs.index(ready[0]))
            try:
                got, st = ray.get(c.ref)
            except (RayActorError, ActorDiedError, ActorUnavailableError) as exc:
                if "creation task" in str(exc):  # the worker cannot even start: retrying will not help
                    raise InfraError(f"a rollout worker failed to start: {_last_line(exc)}") from None
                stats.worker_restarts += self._replace(c.worker, c.res, c.index)
                if c.attempt < self.max_retries:
                    stats.retried_requests += len(c.requests)
                    c.worker, c.attempt = self.classes[c.res][c.index], c.attempt + 1
                    self._launch(c)
                    continue
                # retries spent: these episodes fail, the rest of the batch stands
                got = [_failed(self.env_specs[r.env].id, r, f"worker died: {_last_line(exc)}", self.version)
                       for r in c.requests for _ in range(r.n)]
                st = RolloutStats(episodes=len(got), failed=len(got))
            trajs += got
            stats.add(st)
            groups += len(c.requests)
        return trajs, stats

    def sample(self, num_tasks: int, group: int, *, greedy: bool = False, seeds: Sequence[int] | None = None,
               env: int | None = None) -> tuple[list[Trajectory], RolloutStats]:
        """`num_tasks` groups of `group` episodes each, sorted by group id.

        Sync: sampled now with the current weights. Async: returns the batch that was sampled while the
        last update ran (and queues the next one), minus trajectories older than `max_staleness` versions.
        """
        t0 = time.perf_counter()
        if self.mode == "sync" or seeds is not None or greedy:
            if self._inflight and self.mode == "async":  # an eval call must not eat queued train groups
                pending, self._inflight = self._inflight, []
            else:
                pending = []
            self._submit(self.make_requests(num_tasks, group, seeds, env), greedy)
            trajs, stats = self._collect(None)
            self._inflight = pending
        else:
            if not self._inflight:
                self._submit(self.make_requests(num_tasks, group, None, env))
            self._submit(self.make_requests(num_tasks, group, None, env))  # the next batch starts now
            trajs, stats = self._collect(num_tasks)
            fresh = [t for t in trajs if t.staleness(self.version) <= self.max_staleness]
            stats.dropped_stale = len(trajs) - len(fresh)
            trajs = fresh
        trajs.sort(key=lambda t: t.group)
        stats.wall_s = time.perf_counter() - t0
        self.stats.add(stats)
        return trajs, stats

    def close(self) -> None:
        import ray

        for w in self.workers:
            try:
                ray.get(w.close.remote(), timeout=30)
            except Exception:
                pass
            ray.kill(w)
        self.classes.clear()
        self._inflight.clear()


@dataclass
class _Chunk:
    """Requests sent to one worker in one call (kept until answered, to retry if the worker dies)."""

    ref: Any
    worker: Any
    res: tuple
    index: int
    requests: list
    sample_seed: int
    greedy: bool
    attempt: int


def _last_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}"[:300]


def _failed(env_id: str, req: Request, error: str, version: int) -> Trajectory:
    return Trajectory(ids=[], policy_mask=[], logprobs=[], rewards=[], version=version, env_id=env_id,
                      task_id=str(req.seed), group=req.group, seed=req.seed, error=error)
