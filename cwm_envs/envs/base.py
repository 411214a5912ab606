"""The base every text env subclasses: one task per episode, text in, text out, a verifiable reward.

A subclass says only what is particular to it:
- `draw_task(choice) -> Task`: the task to pose; `choice` is `options["task"]` (a Task, an index, an id) or
  None to draw one with `self.np_random`. The default picks from `self.tasks`, or asks `generate_task(rng)`.
- `pose(task) -> str`: the first observation.
- `judge(task, response) -> RewardResult`: the reward of a final response, usable without `reset()`
  (benchmarks and `cwm audit` call it directly).
- `reference_response(task) -> str`: a response that `judge` pays. It is the one oracle: SFT data, oracle
  policies, benchmarks and `cwm audit` all use it. An env whose oracle needs several turns also overrides
  `reference_episode(task)` (the oracle's actions, in order).
- A multi-turn env overrides `respond(action)`, which returns what `step` returns; the default judges the
  action and ends the episode.

The base does the checks every env would repeat: render mode, reward scheme, the action's type, `step()`
before `reset()` or after the end, the observation's length. It also owns the sandbox: made on first use,
reset between episodes (nothing of an earlier episode is visible: files, processes, shared memory, IPC),
closed with the env. A `Sandbox` handed in by the caller is shared: the env neither resets nor closes it.
Prompts are templates a user may replace (`prompts=DIR`, cwm_envs/prompts.py); an env reads each through
`self.template(name, default)`.

>>> import gymnasium, cwm_envs
>>> env = gymnasium.make("cwm/Math-v0")
>>> obs, info = env.reset(seed=0)
>>> env.step(env.unwrapped.reference_response(env.unwrapped.task))[1]
1.0
"""
from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from cwm_envs.errors import UsageError
from cwm_envs.prompts import load_prompts
from cwm_envs.sandbox import Sandbox, make_sandbox
from cwm_envs.spaces import AnyText
from cwm_envs.tasks import Task, pick_task
from rewards.base import RewardResult


class TextEnv(gym.Env):
    """Base class of the suite's text envs (see the module docstring for the contract)."""

    metadata = {"render_modes": ["ansi"]}
    reward_schemes: tuple[str, ...] = ("cwm", "binary")
    max_observation_chars = 65_536
    max_action_chars = 65_536
    audit_exempt: dict[str, str] = {}   # `cwm audit` families that cannot be hacks here, with the reason

    def __init__(self, *, tasks: list[Task] | None = None, reward_scheme: str = "cwm",
                 render_mode: str | None = None, sandbox: str | Sandbox | None = None, prompts=None):
        if reward_scheme not in self.reward_schemes:
            raise UsageError(f"unknown reward_scheme {reward_scheme!r}; choose one of {self.reward_schemes}")
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise UsageError(f"unsupported render_mode {render_mode!r}")
        if tasks is not None and not tasks:
            raise UsageError("tasks is empty")
        self.tasks = tasks
        self.prompt_overrides = load_prompts(prompts)
        self.reward_scheme, self.render_mode = reward_scheme, render_mode
        self.observation_space = AnyText(self.max_observation_chars)
        self.action_space = AnyText(self.max_action_chars)
        self.task: Task | None = None
        self.options: dict = {}
        self.turn = 0
        self._done, self._last = True, ""
        self._sandbox_arg = sandbox
        self._owns_sandbox = not isinstance(sandbox, Sandbox)
        self._sandbox: Sandbox | None = None if self._owns_sandbox else sandbox
        self._sandbox_used = False

    def template(self, name: str, default: str) -> str:
        """The prompt template `name` (cwm_envs/prompts.py): the user's, else `default` (ours)."""
        return self.prompt_overrides.get(name, default)

    # -- what a subclass provides ---------------------------------------------------------------------------
    def pose(self, task: Task) -> str:
        """The first observation of an episode on `task`."""
        raise NotImplementedError

    def judge(self, task: Task, response: str) -> RewardResult:
        """The reward of a final `response` to `task`, with its evidence."""
        raise NotImplementedError

    def reference_response(self, task: Task) -> str:
        """A response to `task` that `judge` pays (the oracle)."""
        raise NotImplementedError

    def reference_episode(self, task: Task) -> list[str]:
        """The oracle's actions for a whole episode on `task`, in order (one for a single-turn env)."""
        return [self.reference_response(task)]

    def generate_task(self, rng: np.random.Generator) -> Task:
        """A task of the embedded generator, drawn with `rng` (envs without `tasks` must provide it)."""
        raise NotImplementedError(f"{type(self).__name__} has no task generator: pass tasks=[...]")

    def draw_task(self, choice: Any) -> Task:
        """The task `reset(options={"task": choice})` poses (None: draw one)."""
        if isinstance(choice, Task):
            return choice
        if self.tasks is not None:
            return pick_task(self.tasks, choice, self.np_random)
        if choice is not None:
            raise UsageError("the embedded generator takes no task choice; pass a Task or tasks=[...]")
        return self.generate_task(self.np_random)

    def respond(self, action: str) -> tuple[str, float, bool, bool, dict]:
        """One turn (what `step` returns, before the base adds `episode_info`): judge and end, by default."""
        result = self.judge(self.task, action)
        return "", float(result.value), True, False, {"outcomes": result.outcomes, "details": result.details}

    def episode_info(self) -> dict:
        """What `reset` and every `step` report: no gold answer, no test (a policy may read it)."""
        return {"task_id": self.task.id, "turn": self.turn}

    def failure_reward(self) -> float:
        """What a failed episode is paid: -1 under CWM's scheme, else 0."""
        return -1.0 if self.reward_scheme == "cwm" else 0.0

    # -- the Gymnasium API ----------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._fresh_sandbox()
        self.options = dict(options or {})      # other reset options a subclass reads (e.g. a trace's cut)
        self.task = self.draw_task(self.options.get("task"))
        self.turn, self._done = 0, False
        obs = self.pose(self.task)
        if len(obs) > self.max_observation_chars:
            raise UsageError(f"task {self.task.id}: the prompt of {len(obs)} characters exceeds "
                             f"{self.max_observation_chars}")
        self._last = obs
        return obs, self.episode_info()

    def step(self, action: str):
        if self.task is None or self._done:
            raise UsageError("step() called before reset() or after the episode ended")
        if not isinstance(action, str):
            raise UsageError(f"the action must be a str, got {type(action).__name__}")
        self.turn += 1
        obs, reward, terminated, truncated, info = self.respond(action)
        self._done = bool(terminated or truncated)
        obs = obs[-self.max_observation_chars:] if obs else obs
        self._last = info.get("details", "") if self._done else obs
        return obs, float(reward), terminated, truncated, {**self.episode_info(), **info}

    def render(self):
        return self._last if self.render_mode == "ansi" else None

    def close(self):
        if self._owns_sandbox and self._sandbox is not None:
            self._sandbox.close()
            self._sandbox = None

    # -- the sandbox ----------------------------------------------------------------------------------------
    @property
    def sandbox(self) -> Sandbox:
        """This env's sandbox, made on first use (`make_sandbox`); reset before the next episode."""
        if self._sandbox is None:
            self._sandbox = self.make_sandbox()
        self._sandbox_used = True
        return self._sandbox

    def make_sandbox(self) -> Sandbox:
        return make_sandbox("local" if self._sandbox_arg is None else self._sandbox_arg)

    def _fresh_sandbox(self) -> None:
        if self._owns_sandbox and self._sandbox is not None and self._sandbox_used:
            self._sandbox.reset()
        self._sandbox_used = False
