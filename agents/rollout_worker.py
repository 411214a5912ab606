"""The rollout worker: env instances of any registered id and a policy replica, running batched multi-turn
episodes token-in/token-out (see `RolloutWorker`; the driver's side is agents/rollout_pool.py)."""
from __future__ import annotations

import threading
import time
import zlib
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import replace
from typing import Any, Callable, Sequence

import numpy as np
import torch

from agents.policy import LMPolicy, OracleHint, Turn
from agents.rollout_spec import EnvSpec, Request, RolloutStats, failed_trajectory, make_env, policy_info
from agents.trajectory import Trajectory
from cwm_envs.chat import EOS, EOT
from cwm_envs.errors import InfraError
from rewards.base import RewardResult


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
                self._out += [self._finish(ep) if ep.done else failed_trajectory(self.env_specs[ep.req.env].id, ep.req,
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


def rollout_documents(env_specs: Sequence[EnvSpec], policy_factory: Callable, batch: int = 256, **worker_kwargs):
    """SFT rows from a policy's rollouts, for `model.sft.run(documents=...)`: `(tokenizer, episodes, seed) ->
    ([(ids, loss mask)], counts)`, the rewarded episodes of seeds seed .. seed + episodes - 1 (one each, in
    this process, `batch` at a time: each live episode may hold a sandbox), laid out exactly as RL trains on
    them (the trajectory's own ids and policy mask).

    `policy_factory(tokenizer)` builds the policy (`make_policy(spec, tokenizer=tokenizer)`); its tokens must be
    the tokenizer's: the env's text is encoded with `tokenizer`."""
    def documents(tokenizer, episodes: int, seed: int):
        encode = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731  (a one-line helper)
        worker = RolloutWorker(env_specs, lambda: policy_factory(tokenizer), encode=encode, max_episodes=batch,
                               **worker_kwargs)
        try:
            reqs = [Request(env=i % len(env_specs), seed=seed + i, group=i, n=1) for i in range(episodes)]
            trajs, stats = worker.run(reqs, sample_seed=seed)  # in waves of `batch` episodes
        finally:
            worker.close()
        kept = [t for t in trajs if t.ok and t.reward > 0]
        scored = [t.reward for t in trajs if t.ok]
        counts = {"episodes": episodes, "kept": len(kept), "failed": stats.failed, "cut": stats.cut,
                  "mean_reward": float(np.mean(scored)) if scored else 0.0}
        return [(t.ids, t.policy_mask) for t in kept], counts
    return documents
