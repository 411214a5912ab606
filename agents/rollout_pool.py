"""The driver's side of rollouts: a pool of `RolloutWorker` actors per resource class on Ray (see
`RolloutPool`), and `init_ray`."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from agents.rollout_spec import EnvSpec, Request, RolloutStats, chunk_seed, draw_requests, failed_trajectory
from agents.rollout_worker import RolloutWorker
from agents.trajectory import Trajectory
from cwm_envs.errors import InfraError


def init_ray(address: str | None = None, num_cpus: int | None = None, runtime_env: dict | None = None,
             resources: dict | None = None) -> bool:
    """Connect to the cluster at `address`, or start a local Ray; True when this call started it.

    Joining a cluster ships the project's code and settings to its nodes (`runtime_env`, default
    `agents.cluster.project_runtime_env()`); a local Ray's workers import this process's copy, and it declares
    `resources` (e.g. the docker resource that Docker envs' workers ask for: this machine runs them)."""
    import ray

    if ray.is_initialized():
        return False
    if address:
        from agents.cluster import project_runtime_env

        ray.init(address=address, log_to_driver=False,
                 runtime_env=runtime_env if runtime_env is not None else project_runtime_env())
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, runtime_env=runtime_env,
                 resources=resources)
    return True


class RolloutPool:
    """The driver's view of N rollout workers (Ray actors) per resource class.

    Args:
        env_specs: envs to sample from (mixed by `weight`).
        policy: as for `RolloutWorker`; weights: the initial weights (policy layout), `version` their tag.
        num_workers: actors per resource class (envs with equal `resources` share a class).
        mode: "sync": each batch is sampled now, with the newest weights. "async": the workers' streams run
            all the time; `sample` hands over the first `num_tasks` groups to finish (a slow env's group does
            not hold up the batch), and new episodes are admitted only while at most `max_staleness` + 1
            batches of groups are outstanding (running or finished and not yet taken), so that an episode
            starts at most `max_staleness` versions before the update that trains on it (nothing finished is
            thrown away; a group overtaken by many others can be older: see `Trajectory.version`).
        seed: seeds task draws and samplers; a sync run is repeatable for a fixed seed and worker count.
        cpus_per_worker: Ray CPUs (and torch threads, at least one) per worker.
        max_retries: how often a request whose worker died is retried on a fresh worker.
        startup_timeout: seconds for the workers to come up; a cluster that lacks a needed resource fails
            at once with an InfraError naming it.
        max_turns, max_context, max_episode_tokens, env_threads: the workers' episode budgets and env threads
            (see `RolloutWorker`).
    """

    def __init__(self, env_specs: Sequence[EnvSpec], policy: dict | Callable, weights: dict | None = None, *,
                 version: int = 0, num_workers: int = 1, mode: str = "sync", max_staleness: int = 1,
                 seed: int = 0, cpus_per_worker: float = 1, max_retries: int = 2, encode=None,
                 max_turns: int | None = None, max_context: int | None = None, max_episode_tokens: int | None = None,
                 env_threads: int = 1, startup_timeout: float = 300):
        import ray

        if mode not in ("sync", "async"):
            raise ValueError(f"mode must be 'sync' or 'async', not {mode!r}")
        if max_staleness < 0:
            raise ValueError("max_staleness must be 0 or more")
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
                                 max_context=max_context, max_episode_tokens=max_episode_tokens,
                                 num_threads=max(1, int(cpus_per_worker)), env_threads=env_threads)
        self._caps: dict[tuple, int] = {}  # resource class -> episodes a worker runs at once (0: no cap)
        for s in self.env_specs:
            if s.max_episodes:
                res = _res_key(s.resources)
                self._caps[res] = min(self._caps.get(res) or s.max_episodes, s.max_episodes)
        self._weights_ref = ray.put(weights) if weights is not None else None
        self._actor_cls = ray.remote(RolloutWorker)
        self._cpus = cpus_per_worker
        self.classes: dict[tuple, list] = {}  # resource class -> actors
        classes = sorted({_res_key(s.resources) for s in self.env_specs})
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
        # the async stream: groups submitted and not yet back (by group id), finished groups not yet taken
        self._outstanding: dict[int, _Chunk] = {}
        self._polls: dict[tuple, Any] = {}  # (resource class, worker index) -> its poll in flight
        self._ready: list[list[Trajectory]] = []
        self._partial: dict[int, list[Trajectory]] = {}
        self._stream_stats = RolloutStats()
        self._batch: tuple[int, int, int | None] | None = None  # the async batch shape: tasks, group, env
        self.stats = RolloutStats()

    # -- workers ---------------------------------------------------------------------------------------

    def _new_worker(self, res: tuple):
        # several concurrent calls: poll waits while submit, set_weights and an evaluation's run go through
        return self._actor_cls.options(num_cpus=self._cpus, resources=dict(res), max_concurrency=4).remote(
            weights=self._weights_ref, version=self.version, max_episodes=self._caps.get(res, 0),
            **self._worker_args)

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
        self._polls.pop((res, index), None)
        return True

    def set_weights(self, weights: dict, version: int) -> None:
        """Ship weights once through the object store; workers load them at their next turn boundary (async:
        running episodes go on with them). Async: admits the episodes the new version allows."""
        import ray

        self.version = version
        self._weights_ref = ray.put(weights)
        for w in self.workers:
            w.set_weights.remote(self._weights_ref, version)
        if self.mode == "async" and self._batch is not None:
            self._admit(self.max_staleness + 1)

    # -- requests --------------------------------------------------------------------------------------

    def make_requests(self, num_tasks: int, group: int, seeds: Sequence[int] | None = None,
                      env: int | None = None) -> list[Request]:
        reqs = draw_requests(self.rng, self.weights_p, num_tasks, group, self._group, seeds, env)
        self._group += num_tasks
        return reqs

    def _class_of(self, r: Request) -> tuple:
        return _res_key(self.env_specs[r.env].resources)

    def _submit(self, requests: list[Request], greedy: bool = False, attempt: int = 0) -> None:
        """Split requests over the workers of their resource class (contiguous, deterministic shares)."""
        by_class: dict[tuple, list[Request]] = {}
        for r in requests:
            by_class.setdefault(self._class_of(r), []).append(r)
        for res, reqs in by_class.items():
            workers = self.classes[res]
            for k, share in enumerate(np.array_split(np.arange(len(reqs)), len(workers))):
                if len(share) == 0:
                    continue
                chunk = [reqs[i] for i in share]
                c = _Chunk(None, workers[k], res, k, chunk, chunk_seed(self._seed, chunk[0].group), greedy, attempt)
                self._launch(c)

    def _launch(self, c: "_Chunk") -> None:
        c.ref = c.worker.run.remote(c.requests, c.sample_seed, c.greedy, self.version)
        self._inflight.append(c)

    def _collect(self, want_groups: int | None) -> tuple[list[Trajectory], RolloutStats]:
        """Wait for in-flight chunks (all, or until `want_groups` groups are back); retry dead workers."""
        import ray

        trajs: list[Trajectory] = []
        stats = RolloutStats()
        groups = 0
        while self._inflight and (want_groups is None or groups < want_groups):
            refs = [c.ref for c in self._inflight]
            ready, _ = ray.wait(refs, num_returns=1)
            c = self._inflight.pop(refs.index(ready[0]))
            try:
                got, st = ray.get(c.ref)
            except _actor_errors() as exc:
                stats.episodes_lost += sum(r.n for r in c.requests)
                restarted, retry = self._after_death(c, exc)
                stats.worker_restarts += restarted
                if retry:
                    stats.retried_requests += len(c.requests)
                    self._launch(c)
                    continue
                got = self._given_up(c, exc)
                st = RolloutStats(episodes=len(got), failed=len(got))
            trajs += got
            stats.add(st)
            groups += len(c.requests)
        return trajs, stats

    def _after_death(self, c: "_Chunk", exc: BaseException) -> tuple[bool, bool]:
        """A chunk's worker died: replace it; (whether this call replaced it, whether to retry the chunk)."""
        from ray.exceptions import RuntimeEnvSetupError

        if isinstance(exc, RuntimeEnvSetupError):  # a node cannot unpack the shipped code: every retry would fail
            raise InfraError(f"a node could not set up the job's runtime environment: {_last_line(exc)}") from None
        if getattr(exc, "actor_init_failed", False):  # the worker cannot even start: retrying will not help
            raise InfraError(f"a rollout worker failed to start: {_last_line(exc)}") from None
        restarted = self._replace(c.worker, c.res, c.index)
        if c.attempt < self.max_retries:
            c.worker, c.attempt = self.classes[c.res][c.index], c.attempt + 1
            return restarted, True
        return restarted, False

    def _given_up(self, c: "_Chunk", exc: BaseException) -> list[Trajectory]:
        """Retries spent: these episodes fail (infrastructure), the rest of the batch stands."""
        return [failed_trajectory(self.env_specs[r.env].id, r, f"worker died: {_last_line(exc)}", self.version)
                for r in c.requests for _ in range(r.n)]

    def sample(self, num_tasks: int, group: int, *, greedy: bool = False, seeds: Sequence[int] | None = None,
               env: int | None = None) -> tuple[list[Trajectory], RolloutStats]:
        """`num_tasks` groups of `group` episodes each, sorted by group id.

        Sync, or given `seeds` or `greedy` (held-out evaluation): sampled now with the current weights (in
        async mode beside the running stream, which keeps its groups). Async: the first `num_tasks` groups the
        streams finish (see the class docstring).
        """
        t0 = time.perf_counter()
        if self.mode == "sync" or seeds is not None or greedy:
            pending, self._inflight = self._inflight, []
            self._submit(self.make_requests(num_tasks, group, seeds, env), greedy)
            trajs, stats = self._collect(None)
            self._inflight = pending
        else:
            trajs, stats = self._take(num_tasks, group, env)
        trajs.sort(key=lambda t: t.group)
        stats.wall_s = time.perf_counter() - t0
        self.stats.add(stats)
        return trajs, stats

    # -- the async stream --------------------------------------------------------------------------------

    def _take(self, num_tasks: int, group: int, env: int | None) -> tuple[list[Trajectory], RolloutStats]:
        self._batch = (num_tasks, group, env)
        self._admit(self.max_staleness + 1)
        self._stream_stats = RolloutStats()
        while len(self._ready) < num_tasks:
            self._pump()
        taken, self._ready = self._ready[:num_tasks], self._ready[num_tasks:]
        self._admit(self.max_staleness)  # the next episodes start now, while the learner updates
        trajs = [t for g in taken for t in g]
        stats = self._stream_stats
        stats.episodes, stats.failed = len(trajs), sum(not t.ok for t in trajs)
        return trajs, stats

    def _admit(self, batches: int) -> None:
        """Start new groups while fewer than `batches` batches of groups are outstanding: a group admitted now
        is taken within `batches` calls of `sample`, each after at most one update."""
        tasks, group, env = self._batch
        room = batches * tasks - len(self._outstanding) - len(self._ready)
        if room <= 0:
            return
        load: dict[tuple, int] = {}
        for c in self._outstanding.values():
            load[(c.res, c.index)] = load.get((c.res, c.index), 0) + 1
        per_worker: dict[tuple, list[Request]] = {}
        for r in self.make_requests(room, group, None, env):
            res = self._class_of(r)
            index = min(range(len(self.classes[res])), key=lambda i: load.get((res, i), 0))
            load[(res, index)] = load.get((res, index), 0) + 1
            per_worker.setdefault((res, index), []).append(r)
        for (res, index), reqs in per_worker.items():
            worker = self.classes[res][index]
            for r in reqs:
                self._outstanding[r.group] = _Chunk(None, worker, res, index, [r], chunk_seed(self._seed, r.group),
                                                    False, 0)
            worker.submit.remote(reqs, chunk_seed(self._seed, reqs[0].group), self.version)

    def _pump(self, timeout: float = 5.0) -> None:
        """Wait for any worker's stream to hand back finished groups; replace a worker that died and resubmit
        its outstanding groups."""
        import ray

        for key in {(c.res, c.index) for c in self._outstanding.values()}:
            if key not in self._polls:
                self._polls[key] = self.classes[key[0]][key[1]].poll.remote(1.0)
        if not self._polls:
            raise RuntimeError("nothing outstanding to wait for")
        keys = list(self._polls)
        done, _ = ray.wait([self._polls[k] for k in keys], num_returns=1, timeout=timeout)
        for ref in done:
            key = keys[[self._polls[k] for k in keys].index(ref)]
            self._polls.pop(key)
            try:
                got, st = ray.get(ref)
            except _actor_errors() as exc:
                self._resubmit_after_death(key, exc)
                continue
            self._stream_stats.add(st)
            for t in got:
                if t.group not in self._outstanding:
                    continue  # a group already given up or resubmitted elsewhere
                part = self._partial.setdefault(t.group, [])
                part.append(t)
                if len(part) == self._outstanding[t.group].requests[0].n:
                    self._outstanding.pop(t.group)
                    self._ready.append(self._partial.pop(t.group))

    def _resubmit_after_death(self, key: tuple, exc: BaseException) -> None:
        lost = [c for c in self._outstanding.values() if (c.res, c.index) == key]
        if not lost:
            return
        self._stream_stats.episodes_lost += sum(c.requests[0].n for c in lost)
        self._stream_stats.worker_restarts += self._replace(lost[0].worker, *key)
        for c in lost:
            self._partial.pop(c.requests[0].group, None)
            if c.attempt < self.max_retries:
                c.worker, c.attempt = self.classes[c.res][c.index], c.attempt + 1
                self._stream_stats.retried_requests += 1
            else:
                self._outstanding.pop(c.requests[0].group)
                self._ready.append(self._given_up(c, exc))
        again = [c for c in lost if c.requests[0].group in self._outstanding]
        if again:
            again[0].worker.submit.remote([c.requests[0] for c in again], again[0].sample_seed, self.version)

    def close(self) -> None:
        import ray

        for w in self.workers:
            try:
                ray.get(w.close.remote(), timeout=60)
            except Exception:
                pass
            ray.kill(w)
        self.classes.clear()
        self._inflight.clear()
        self._outstanding.clear()
        self._polls.clear()


def _actor_errors() -> tuple:
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RuntimeEnvSetupError

    return (RayActorError, ActorDiedError, ActorUnavailableError, RuntimeEnvSetupError)


def _res_key(resources: dict) -> tuple:
    """A resource class: the sorted (name, amount) pairs its workers ask for."""
    return tuple(sorted(resources.items()))


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
