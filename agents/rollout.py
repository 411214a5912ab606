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
  with that custom resource (declare it on the nodes: `ray start --resources='{"docker": 4}'`).
"""
from __future__ import annotations

import threading
import time
import zlib
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import numpy as np
import torch

from agents.policy import LMPolicy, OracleHint, Turn
from agents.trajectory import Trajectory
from cwm_envs.chat import EOS, EOT
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


class _Episode:
    __slots__ = ("req", "index", "env", "ids", "mask", "logprobs", "values", "versions", "rewards", "turn_ends",
                 "obs", "info", "prompt_len", "text", "transcript", "error", "infra", "done", "cut", "turn_limit",
                 "policy_tokens")

    def __init__(self, req: Request, index: int):
        self.req, self.index = req, index
        self.env = None
        self.ids, self.mask, self.logprobs, self.values, self.versions = [], [], [], [], []
        self.rewards, self.turn_ends, self.text = [], [], []
        self.obs, self.info, self.prompt_len, self.error, self.done = "", {}, 0, None, False
        self.transcript, self.infra, self.cut, self.turn_limit, self.policy_tokens = "", False, None, 0, 0

    def append(self, ids, mask_value, logprobs=None, values=None, version: int = -1):
        self.ids += ids
        self.mask += [mask_value] * len(ids)
        self.logprobs += logprobs if logprobs is not None else [0.0] * len(ids)
        self.values += values if values is not None else [0.0] * len(ids)
        self.versions += [version] * len(ids)


DEFAULT_MAX_TURNS = 128  # when neither the run nor the env sets a turn limit (CWM's SWE budget)


def env_turn_limit(env) -> int | None:
    """The env's own turn limit: `max_turns` on the unwrapped env (the suite's envs), else the registered
    `max_episode_steps` (gymnasium's TimeLimit)."""
    limit = getattr(env.unwrapped, "max_turns", None)
    if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
        return limit
    spec = getattr(env, "spec", None)
    return getattr(spec, "max_episode_steps", None) or None


def failure_reward(env) -> float:
    """What the env pays a failed episode (`TextEnv.failure_reward()`); -1, CWM's, for an env without one."""
    fn = getattr(env.unwrapped, "failure_reward", None)
    try:
        return float(fn()) if callable(fn) else -1.0
    except Exception:
        return -1.0


class RolloutWorker:
    """Runs episodes for requests with its own env instances and policy replica.

    Two ways in, sharing the env instances and the policy:
    - `run(requests)`: every episode of the requests, batched turn by turn in lockstep (all envs answer before
      the next turn is sampled), returned together: the sync pool, held-out evaluation, in-process use. A run
      repeats exactly for a seed.
    - `submit(requests)` + `poll()`: the async pool's stream. A background thread keeps the submitted episodes
      going: it samples a turn for every episode whose env has answered (after waiting at most
      `batch_wait_s` for the others, so a slow env holds up only its own episode), hands the actions to the
      env threads, and queues each group as soon as its last episode ends. New weights (`set_weights`) are
      loaded between turns, so an episode that spans an update goes on with the new weights; every token
      keeps the version that sampled it.

    Turn boundaries: every policy turn ends with the end-of-turn token (see agents/trajectory.py). An episode
    ends when the env ends it, or is cut (`Trajectory.cut`) when its turns (`max_turns`, default the env's own
    limit), its tokens in all (`max_context`) or its policy tokens (`max_episode_tokens`) run out: a cut
    episode is paid the env's failure reward (never 0 by accident) and its env is closed, not reused. The
    last turn's token budget is what the context and token budgets leave (`Turn.max_new_tokens`).

    Args:
        env_specs: the pool's env list (requests refer to it by index).
        policy: an `LMPolicy.spec()` dict (built here, weights from `weights`) or a zero-argument factory
            returning any policy with `act`, `encode`-compatible tokenisation and `set_weights`.
        encode: text -> token ids for env text when `policy` is a factory (an LMPolicy brings its own).
        max_turns, max_context, max_episode_tokens: the budgets above (None: the env's turn limit, else
            DEFAULT_MAX_TURNS; no context or token budget).
        num_threads: torch threads (a Ray actor gets as many as its CPUs).
        env_threads: env steps run at once (lockstep runs: 1 steps in turn; the stream uses at least 4).
        batch_wait_s: the stream's wait for other episodes' envs before it samples a turn.
        max_episodes: episodes of a lockstep run alive at once (0: all of a call's); more run in waves.
    """

    def __init__(self, env_specs: Sequence[EnvSpec], policy: dict | Callable, weights: dict | None = None,
                 version: int = 0, *, encode: Callable[[str], list[int]] | None = None, max_turns: int | None = None,
                 max_context: int | None = None, max_episode_tokens: int | None = None,
                 num_threads: int | None = None, env_threads: int = 1, batch_wait_s: float = 0.02,
                 max_episodes: int = 0):
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
        self.max_turns, self.max_context, self.max_episode_tokens = max_turns, max_context, max_episode_tokens
        self.max_episodes = max_episodes
        self._ends = [self.encode(EOT), self.encode(EOS)]  # token ids that close a turn
        self._free: dict[int, list] = {}
        self._env_threads = env_threads
        self._threads = ThreadPoolExecutor(env_threads, thread_name_prefix="cwm-env") if env_threads > 1 else None
        self._wrong: dict[tuple, str | None] = {}  # (env index, task id, turn) -> another task's action
        self._lock = threading.Lock()  # the free envs, the stats and the pending weights (env steps run on threads)
        self._model = threading.RLock()  # one turn's sampling, or one weight load, at a time
        self._pending: tuple[int, Any] | None = None  # the newest weights pushed, loaded at the next turn boundary
        self.batch_wait_s = batch_wait_s
        # the stream (submit/poll): started by the first submit
        self._cv = threading.Condition()
        self._queue: list[tuple[list[Request], int]] = []
        self._out: list[Trajectory] = []
        self._stream_stats = RolloutStats()
        self._stream: threading.Thread | None = None
        self._closing = False

    # -- weights ---------------------------------------------------------------------------------------

    def ping(self) -> int:
        return self.policy.version

    def set_weights(self, weights: dict, version: int) -> None:
        """Keep the newest weights; they are loaded at the next turn boundary (a turn being sampled on another
        thread finishes with the weights it started with)."""
        with self._lock:
            if version >= max(self.policy.version, self._pending[0] if self._pending else -1):
                self._pending = (version, weights)

    def _load_pending(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is not None:
            self.policy.set_weights(pending[1], pending[0])

    def _wait_for_version(self, version: int | None, timeout: float = 300) -> None:
        """Until weights of at least `version` have arrived (a pushed update may land after the call that needs
        it: the actor runs calls on several threads)."""
        deadline = time.monotonic() + timeout
        while version is not None:
            with self._lock:
                have = max(self.policy.version, self._pending[0] if self._pending else -1)
            if have >= version:
                return
            if time.monotonic() > deadline:
                raise InfraError(f"weights of version {version} did not reach the rollout worker in {timeout:.0f} s")
            time.sleep(0.005)

    # -- lockstep runs -----------------------------------------------------------------------------------

    def run(self, requests: Sequence[Request], sample_seed: int = 0, greedy: bool = False,
            min_version: int | None = None) -> tuple[list[Trajectory], RolloutStats]:
        """All episodes of `requests`, batched turn by turn; never raises for an env's fault."""
        self._wait_for_version(min_version)
        t0 = time.perf_counter()
        stats = RolloutStats()
        generator = torch.Generator().manual_seed(int(sample_seed))
        episodes = [_Episode(r, j) for r in requests for j in range(r.n)]
        wave = self.max_episodes or len(episodes) or 1
        for k in range(0, len(episodes), wave):
            self._run_wave(episodes[k:k + wave], stats, generator, greedy)
        stats.episodes = len(episodes)
        stats.failed = sum(ep.error is not None for ep in episodes)
        stats.wall_s = time.perf_counter() - t0
        return [self._finish(ep) for ep in episodes], stats

    def _run_wave(self, episodes: list, stats: RolloutStats, generator, greedy: bool) -> None:
        """Episodes alive at the same time, batched turn by turn until each has ended."""
        self._each(lambda ep: self._start(ep, stats), episodes)
        while True:
            live = [ep for ep in episodes if not ep.done]
            if not live:
                break
            stepping = self._turn(live, greedy, generator, stats)
            self._each(lambda job: self._step(job[0], job[1], stats), stepping)

    def _each(self, fn, items) -> None:
        """fn(item) for each item: in turn, or on the env threads (each episode owns its env)."""
        if self._threads is None or len(items) < 2:
            for item in items:
                fn(item)
        else:
            list(self._threads.map(fn, items))

    # -- the stream ----------------------------------------------------------------------------------------

    def submit(self, requests: Sequence[Request], sample_seed: int = 0, min_version: int | None = None) -> None:
        """Queue `requests` on the stream; their episodes start once weights of `min_version` are loaded."""
        with self._cv:
            if self._stream is None:
                self._stream_gen = torch.Generator().manual_seed(int(sample_seed))
                self._stream = threading.Thread(target=self._stream_loop, name="cwm-rollout-stream", daemon=True)
                self._stream.start()
            self._queue.append((list(requests), -1 if min_version is None else int(min_version)))
            self._cv.notify_all()

    def poll(self, timeout: float = 1.0) -> tuple[list[Trajectory], RolloutStats]:
        """The episodes of every group finished since the last poll (waits up to `timeout` for one), and what
        the stream did meanwhile."""
        with self._cv:
            if not self._out:
                self._cv.wait_for(lambda: self._out or self._closing, timeout=timeout)
            out, self._out = self._out, []
        with self._lock:
            stats = replace(self._stream_stats)
            self._stream_stats.__init__()
        stats.episodes, stats.failed = len(out), sum(not t.ok for t in out)
        return out, stats

    def _stream_loop(self) -> None:
        envs = ThreadPoolExecutor(max(4, self._env_threads), thread_name_prefix="cwm-stream-env")
        live: list[_Episode] = []
        jobs: dict[Future, _Episode] = {}
        groups: dict[int, list[_Episode]] = {}
        stats = self._stream_stats  # counted in place (env threads add to it); poll takes and zeroes it
        try:
            while True:
                with self._cv:
                    if self._closing:
                        return
                    have = self.policy.version if self._pending is None else self._pending[0]
                    admitted = [reqs for reqs, v in self._queue if v <= have]
                    self._queue = [(reqs, v) for reqs, v in self._queue if v > have]
                for reqs in admitted:
                    for r in reqs:
                        eps = [_Episode(r, j) for j in range(r.n)]
                        groups[r.group] = eps
                        for ep in eps:
                            live.append(ep)
                            jobs[envs.submit(self._start, ep, stats)] = ep
                busy = set(jobs.values())
                ready = [ep for ep in live if not ep.done and ep not in busy]
                if ready and jobs:  # a moment for the other envs, so that their turns share the batch
                    wait(list(jobs), timeout=self.batch_wait_s, return_when=ALL_COMPLETED)
                elif jobs:
                    wait(list(jobs), timeout=0.05, return_when=FIRST_COMPLETED)
                elif not ready:
                    with self._cv:
                        self._cv.wait(timeout=0.05)
                for fut in [f for f in jobs if f.done()]:
                    jobs.pop(fut)
                busy = set(jobs.values())
                ready = [ep for ep in live if not ep.done and ep not in busy]
                if ready:
                    for ep, action in self._turn(ready, False, self._stream_gen, stats):
                        jobs[envs.submit(self._step, ep, action, stats)] = ep
                finished = []
                for gid in [g for g, eps in groups.items() if all(ep.done and ep not in busy for ep in eps)]:
                    eps = groups.pop(gid)
                    finished += [self._finish(ep) for ep in eps]
                    live = [ep for ep in live if ep.req.group != gid]
                if finished:
                    with self._cv:
                        self._out += finished
                        self._cv.notify_all()
        except BaseException as exc:  # the stream must not die silently: fail what it holds, say why
            with self._cv:
                self._out += [self._finish(ep) if ep.done else _failed(self.env_specs[ep.req.env].id, ep.req,
                                                                       f"rollout stream failed: {exc!r}",
                                                                       self.policy.version)
                              for eps in groups.values() for ep in eps]
                self._cv.notify_all()
            raise
        finally:  # closing: let running env calls end (a while), then close every env still mid-episode
            wait(list(jobs), timeout=30)
            envs.shutdown(wait=False, cancel_futures=True)
            for ep in live:
                if not any(f for f, e in jobs.items() if e is ep and not f.done()):
                    self._drop_env(ep)

    # -- one turn of several episodes, one episode's env steps ---------------------------------------------

    def _room(self, ep: _Episode) -> tuple[int | None, str | None]:
        """Tokens the next turn may take (None: no budget) and, when none are left, which budget ran out."""
        room, why = None, None
        if self.max_context:
            room, why = self.max_context - len(ep.ids) - len(self._ends[0]), "max_context"
        if self.max_episode_tokens and (room is None or self.max_episode_tokens - ep.policy_tokens < room):
            room, why = self.max_episode_tokens - ep.policy_tokens, "max_episode_tokens"
        return room, (why if room is not None and room < 1 else None)

    def _turn(self, live: list[_Episode], greedy: bool, generator, stats: RolloutStats) -> list[tuple[_Episode, str]]:
        """Sample one turn for each live episode (cutting those with no budget left); return what to step."""
        acting, turns = [], []
        for ep in live:
            room, out_of = self._room(ep)
            if out_of:
                self._cut(ep, out_of, stats)
                continue
            acting.append(ep)
            turns.append(Turn(ep.ids, ep.obs, policy_info(ep.info), ep.transcript, room))
        if not acting:
            return []
        with self._model:
            self._load_pending()
            version = self.policy.version
            g0 = time.perf_counter()
            extra = {"oracle": [self._hint(ep) for ep in acting]} if getattr(self.policy, "needs_oracle", False) else {}
            completions = self.policy.act(turns, greedy=greedy, generator=generator, **extra)
            with self._lock:
                stats.generate_s += time.perf_counter() - g0
        stepping = []
        for ep, c in zip(acting, completions):
            if c.finish == "error":  # the policy's machinery failed: no turn, nothing to score
                ep.error, ep.infra, ep.done = c.error or "infra: the policy failed", True, True
                self._drop_env(ep)
                continue
            ep.append(c.ids, 1, c.logprobs, c.values, c.version if c.version is not None else version)
            ep.turn_ends.append(len(ep.ids) - 1)
            ep.policy_tokens += len(c.ids)
            ep.text.append(c.text)
            ep.transcript += c.raw if c.raw is not None else c.text
            if not any(end and c.ids[-len(end):] == end for end in self._ends):
                ep.append(self._ends[0], 0)  # the format closes the turn (stopped at </tool>, or at the budget)
                ep.transcript += EOT
            with self._lock:
                stats.policy_tokens += len(c.ids)
            over = ("max_context" if self.max_context and len(ep.ids) > self.max_context else
                    "max_episode_tokens" if self.max_episode_tokens and ep.policy_tokens > self.max_episode_tokens
                    else None)
            if over:  # a policy that ignored its turn budget: the turn is not played
                self._cut(ep, over, stats)
                continue
            stepping.append((ep, c.text))
        return stepping

    def _start(self, ep: _Episode, stats: RolloutStats) -> None:
        e0 = time.perf_counter()
        try:
            ep.env = self._acquire(ep.req.env)
            options = {"task": ep.req.task} if ep.req.task is not None else None
            obs, ep.info = ep.env.reset(seed=ep.req.seed, options=options)
            ep.turn_limit = self.max_turns or env_turn_limit(ep.env) or DEFAULT_MAX_TURNS
            ep.obs = obs
            ep.transcript = obs
            ep.append(self.encode(obs), 0)
            ep.prompt_len = len(ep.ids)
        except Exception as exc:  # an env fault ends this episode only
            self._fail(ep, exc)
        with self._lock:
            stats.env_s += time.perf_counter() - e0

    def _step(self, ep: _Episode, action: str, stats: RolloutStats) -> None:
        e0 = time.perf_counter()
        try:
            obs, reward, terminated, truncated, info = ep.env.step(action)
            with self._lock:
                stats.env_steps += 1
            ep.rewards.append(float(reward))
            ep.info, ep.obs = info, obs
            if terminated or truncated:
                ep.done = True
                self._release(ep)
            elif len(ep.turn_ends) >= ep.turn_limit:
                self._cut(ep, "max_turns", stats)
            else:
                reply = self.encode(obs)
                if self.max_context and len(ep.ids) + len(reply) + len(self._ends[0]) >= self.max_context:
                    self._cut(ep, "max_context", stats)  # the reply leaves no room for a token of the next turn
                else:
                    ep.append(reply, 0)
                    ep.transcript += obs
        except Exception as exc:
            self._fail(ep, exc)
        with self._lock:
            stats.env_s += time.perf_counter() - e0

    def _cut(self, ep: _Episode, reason: str, stats: RolloutStats) -> None:
        """End an episode the env did not end: pay the env's failure reward, close the env (it is mid-episode,
        holding a container or a sandbox's state: never handed to another episode)."""
        pay = failure_reward(ep.env)
        if len(ep.rewards) < len(ep.turn_ends) or not ep.rewards:  # the last turn was not stepped
            ep.rewards.append(pay)
        else:
            ep.rewards[-1] += pay
        ep.cut, ep.done, ep.info = reason, True, {**ep.info, "cut": reason}
        with self._lock:
            stats.cut += 1
        self._drop_env(ep)

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
        self._drop_env(ep)  # a failed instance may be in any state

    def _drop_env(self, ep: _Episode) -> None:
        if ep.env is not None:
            try:
                ep.env.close()
            except Exception:
                pass
            ep.env = None

    def _finish(self, ep: _Episode) -> Trajectory:
        spec = self.env_specs[ep.req.env]
        sampled = [v for v, m in zip(ep.versions, ep.mask) if m and v >= 0]
        return Trajectory(
            ids=ep.ids, policy_mask=ep.mask, logprobs=ep.logprobs, rewards=ep.rewards,
            version=min(sampled) if sampled else self.policy.version, versions=ep.versions,
            env_id=spec.id, task_id=str(ep.info.get("task_id", ep.req.seed)), group=ep.req.group, seed=ep.req.seed,
            prompt_len=ep.prompt_len, turn_ends=ep.turn_ends,
            values=ep.values if getattr(self.policy, "value_head", None) is not None else None,
            text="\n".join(ep.text), info=_plain(ep.info), error=ep.error, infra=ep.infra, cut=ep.cut,
        )

    def _acquire(self, env_index: int):
        with self._lock:
            free = self._free.setdefault(env_index, [])
            env = free.pop() if free else None
        return env if env is not None else make_env(self.env_specs[env_index])

    def _release(self, ep: _Episode) -> None:
        if ep.env is None:
            return
        with self._lock:
            self._free.setdefault(ep.req.env, []).append(ep.env)
        ep.env = None

    def close(self) -> None:
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        if self._stream is not None:
            self._stream.join(timeout=60)
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


def init_ray(address: str | None = None, num_cpus: int | None = None, runtime_env: dict | None = None) -> bool:
    """Connect to the cluster at `address`, or start a local Ray; True when this call started it.

    Joining a cluster ships the project's code and settings to its nodes (`runtime_env`, default
    `agents.cluster.project_runtime_env()`); a local Ray's workers import this process's copy."""
    import ray

    if ray.is_initialized():
        return False
    if address:
        from agents.cluster import project_runtime_env

        ray.init(address=address, log_to_driver=False,
                 runtime_env=runtime_env if runtime_env is not None else project_runtime_env())
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, runtime_env=runtime_env)
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
        max_turns, max_context, max_episode_tokens: the workers' episode budgets (see `RolloutWorker`).
    """

    def __init__(self, env_specs: Sequence[EnvSpec], policy: dict | Callable, weights: dict | None = None, *,
                 version: int = 0, num_workers: int = 1, mode: str = "sync", max_staleness: int = 1,
                 seed: int = 0, cpus_per_worker: float = 1, max_retries: int = 2, encode=None,
                 max_turns: int | None = None, max_context: int | None = None, max_episode_tokens: int | None = None,
                 startup_timeout: float = 300):
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
                                 num_threads=max(1, int(cpus_per_worker)))
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
        return [_failed(self.env_specs[r.env].id, r, f"worker died: {_last_line(exc)}", self.version)
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


def _failed(env_id: str, req: Request, error: str, version: int) -> Trajectory:
    return Trajectory(ids=[], policy_mask=[], logprobs=[], rewards=[], version=version, env_id=env_id,
                      task_id=str(req.seed), group=req.group, seed=req.seed, error=error)


def rollout_documents(env_specs: Sequence[EnvSpec], policy_factory: Callable, **worker_kwargs):
    """SFT rows from a policy's rollouts, for `model.sft.run(documents=...)`: `(tokenizer, episodes, seed) ->
    ([(ids, loss mask)], counts)`, the rewarded episodes of seeds seed .. seed + episodes - 1 (one each, in
    this process), laid out exactly as RL trains on them (the trajectory's own ids and policy mask).

    `policy_factory(tokenizer)` builds the policy (`make_policy(spec, tokenizer=tokenizer)`); its tokens must be
    the tokenizer's: the env's text is encoded with `tokenizer`."""
    def documents(tokenizer, episodes: int, seed: int):
        encode = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731  (a one-line helper)
        worker = RolloutWorker(env_specs, lambda: policy_factory(tokenizer), encode=encode, **worker_kwargs)
        try:
            reqs = [Request(env=i % len(env_specs), seed=seed + i, group=i, n=1) for i in range(episodes)]
            trajs, stats = worker.run(reqs, sample_seed=seed)
        finally:
            worker.close()
        kept = [t for t in trajs if t.ok and t.reward > 0]
        counts = {"episodes": episodes, "kept": len(kept), "failed": stats.failed, "cut": stats.cut,
                  "mean_reward": float(np.mean([t.reward for t in trajs if t.ok])) if stats.episodes > stats.failed else 0.0}
        return [(t.ids, t.policy_mask) for t in kept], counts
    return documents
