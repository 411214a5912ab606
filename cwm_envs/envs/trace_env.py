"""`cwm/Trace-v0`: predict how a program's state changes, frame by frame, in CWM's trace format."""
from __future__ import annotations

import random
from pathlib import Path
from typing import Sequence

import gymnasium as gym

from cwm_envs.errors import UsageError
from cwm_envs.sandbox import Sandbox
from cwm_envs.spaces import AnyText
from cwm_envs.tasks import Task, pick_task
from cwm_envs.tracing import format as fmt
from cwm_envs.tracing.format import TraceFormatError
from cwm_envs.tracing.tracer import TraceLimits, TraceResult, Tracer
from rewards.base import RewardResult
from rewards.trace import SCHEMES, trace_reward

MAX_OBS_CHARS = 65_536
MAX_ACTION_CHARS = 65_536
MODES = ("next", "rest")


def load_trace_tasks(source: str | Path | Sequence[Task]) -> list[Task]:
    """"cruxeval", a CRUXEval-format JSONL path, or Tasks whose metadata has code, input (and entry)."""
    from cwm_envs.sources.code import load_cruxeval

    if isinstance(source, (str, Path)):
        tasks = load_cruxeval(None if str(source) == "cruxeval" else source)
    else:
        tasks = list(source)
    if not tasks:
        raise UsageError("no trace tasks")
    for t in tasks:
        if not (isinstance(t.metadata.get("code"), str) and isinstance(t.metadata.get("input"), str)):
            raise UsageError(f"task {t.id}: metadata needs string code and input")
    return tasks


class TraceEnv(gym.Env):
    """Given code, its input and a trace prefix, predict the next frame or the rest of the trace.

    ## Observation Space
    `AnyText(65536)`: CWM trace text: `<|trace_context_start|>` + the code with `  # << START_OF_TRACE` on the
    entry line + `<|frame_sep|>`, then the first `cut` frames (at least the call frame, whose locals are the
    input), each ending with `<|frame_sep|>`. The model continues this text.

    ## Action Space
    `AnyText(65536)`: the continuation in the same format. Mode "next": exactly one frame
    (`<|line_sep|>{...}<|action_sep|>SOURCE<|frame_sep|>`, ...), or `<|end_of_text|>` when the entry scope has
    returned. Mode "rest": every remaining frame, then `<|end_of_text|>`. `".."` stands for a value unchanged
    within the segment, as in CWM; trailing whitespace is ignored.

    ## Rewards
    Exact match of the predicted frames (event, source line, locals with ".." resolved, value) and of the
    ending. `reward_scheme="cwm"`: +1 / -1; `"binary"`: 1 / 0; `"partial"`: the mean per-field credit.
    `info["outcomes"]` always carries the per-field partial credit (`event_acc`, `line_acc`, `locals_acc`,
    `arg_acc`, `frames_exact`, ...) and `parse` (False for text not in the trace format).

    ## Episode End
    Every step ends the episode (terminated).

    ## Arguments
    - `mode`: "next" (default) or "rest".
    - `tasks`: None for the embedded generator (seeded programs with inputs), "cruxeval" (800 rows of the
      shared data), a CRUXEval-format JSONL path, or a list of Task with metadata code, input (entry: "f").
    - `max_frames`: traces longer than this are redrawn (256); `max_repr`: characters per value (200).
    - `reward_scheme`, `timeout_s`, `sandbox` (a backend name or a shared `Sandbox`, not closed by the env).
    - `reset(options={"task": Task | id | index, "cut": k})`: pose a given task and/or prefix length
      (1 <= k <= frames; k = frames asks for the end of the trace in "next" mode). By default "next"
      draws k at random and "rest" uses k = 1 (only the call frame: CRUXEval-O as a full trace).

    ## Version History
    - v0: initial version.
    """

    metadata = {"render_modes": ["ansi"]}

    def __init__(self, mode: str = "next", tasks: str | Path | Sequence[Task] | None = None,
                 reward_scheme: str = "cwm", max_frames: int = 256, max_repr: int = 200, timeout_s: float = 10.0,
                 sandbox: str | Sandbox = "local", render_mode: str | None = None):
        if mode not in MODES:
            raise UsageError(f"mode must be one of {MODES}, got {mode!r}")
        if reward_scheme not in SCHEMES:
            raise UsageError(f"unknown reward_scheme {reward_scheme!r}; choose one of {SCHEMES}")
        if render_mode not in (None, "ansi"):
            raise UsageError(f"unsupported render_mode {render_mode!r}")
        if max_frames < 2:
            raise UsageError("max_frames must be at least 2")
        self.mode, self.reward_scheme, self.render_mode = mode, reward_scheme, render_mode
        generated = tasks is None or isinstance(tasks, str) and tasks == "generated"
        self.tasks = None if generated else load_trace_tasks(tasks)
        self.limits = TraceLimits(max_events=max_frames, max_bytes=MAX_OBS_CHARS * 4, max_repr=max_repr)
        self.timeout_s = float(timeout_s)
        self._sandbox_arg = sandbox
        self._tracer: Tracer | None = None
        self.observation_space = AnyText(MAX_OBS_CHARS)
        self.action_space = AnyText(MAX_ACTION_CHARS)
        self.task: Task | None = None
        self.trace: TraceResult | None = None
        self.cut = 0
        self._done, self._last = True, ""

    # -- gymnasium API ----------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        options = options or {}
        self.task, self.trace, obs = self._draw(options.get("task"), options.get("cut"))
        self._done, self._last = False, obs
        return obs, {"task_id": self.task.id, "cut": self.cut, "n_frames": len(self.trace.frames)}

    def step(self, action: str):
        if self.trace is None or self._done:
            raise UsageError("step() called before reset() or after the episode ended")
        if not isinstance(action, str):
            raise UsageError(f"the action must be a str, got {type(action).__name__}")
        result = self.evaluate(action)
        self._done = True
        self._last = result.details
        info = {"task_id": self.task.id, "cut": self.cut, "n_frames": len(self.trace.frames),
                "outcomes": result.outcomes, "details": result.details, "expected": self.reference_response()}
        return "", float(result.value), True, False, info

    def render(self):
        return self._last if self.render_mode == "ansi" else None

    def close(self):
        if self._tracer is not None:
            self._tracer.close()
            self._tracer = None

    # -- the task ---------------------------------------------------------------------------------------
    def expected_frames(self) -> tuple[list[fmt.Frame], bool]:
        """The frames the agent must predict after the prefix, and whether the trace ends after them."""
        frames = self.trace.frames
        if self.mode == "rest" or self.cut == len(frames):
            return frames[self.cut:], True
        return frames[self.cut:self.cut + 1], False

    def reference_response(self) -> str:
        """The true continuation (what the oracle answers)."""
        expected, complete = self.expected_frames()
        return fmt.emit_continuation(self.trace.frames[:self.cut], expected, complete)

    def evaluate(self, action: str) -> RewardResult:
        """Judge a continuation of the current prefix."""
        expected, complete = self.expected_frames()
        true = [f.to_dict() for f in expected]
        try:
            predicted, pred_complete = fmt.parse_frames(action.rstrip(), prefix=self.trace.frames[:self.cut])
        except TraceFormatError as exc:
            return trace_reward(None, true, expected_complete=complete, scheme=self.reward_scheme,
                                parse_error=str(exc))
        return trace_reward([f.to_dict() for f in predicted], true, predicted_complete=pred_complete,
                            expected_complete=complete, scheme=self.reward_scheme)

    def _draw(self, choice, cut) -> tuple[Task, TraceResult, str]:
        explicit = choice is not None
        for _ in range(1 if explicit else 20):
            task = self._pick_task(choice)
            m = task.metadata
            result = self.tracer.trace_call(m["code"], m.get("entry", "f"), m["input"])
            if result.status != "ok" or len(result.frames) < 2:
                if explicit:
                    raise UsageError(f"task {task.id} gives no complete trace within the limits "
                                     f"({result.status}: {result.error or len(result.frames)} frames)")
                continue
            n = len(result.frames)
            if cut is None:
                k = 1 if self.mode == "rest" else int(self.np_random.integers(1, n + 1))
            elif not (isinstance(cut, int) and 1 <= cut <= n):
                raise UsageError(f"cut must be an int in 1..{n} for task {task.id}, got {cut!r}")
            else:
                k = cut
            obs = fmt.context_prefix(result.context) + "".join(fmt.frame_texts(result.frames[:k]))
            if len(obs) > MAX_OBS_CHARS:
                if explicit:
                    raise UsageError(f"task {task.id}: the prefix is longer than {MAX_OBS_CHARS} characters")
                continue
            self.cut = k
            return task, result, obs
        raise UsageError("could not draw a task with a complete trace in 20 tries")

    def _pick_task(self, choice) -> Task:
        if isinstance(choice, Task):
            return load_trace_tasks([choice])[0]
        if self.tasks is not None:
            return pick_task(self.tasks, choice, self.np_random)
        if choice is not None:
            raise UsageError("with the generated source, options['task'] must be a Task")
        from cwm_envs.tracing.generate import generate_program

        seed = int(self.np_random.integers(2**31))
        prog = generate_program(random.Random(seed), n_inputs=1)
        return Task(id=f"gen/{prog.family}/{seed}", prompt=prog.code,
                    metadata={"code": prog.code, "input": prog.inputs[0], "entry": prog.entry})

    @property
    def tracer(self) -> Tracer:
        if self._tracer is None:
            self._tracer = Tracer(sandbox=self._sandbox_arg, limits=self.limits, timeout=self.timeout_s)
        return self._tracer
