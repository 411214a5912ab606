"""`cwm/Trace-v0`: predict how a program's state changes, frame by frame, in CWM's trace format."""
from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from cwm_envs.envs.base import TextEnv
from cwm_envs.errors import UsageError
from cwm_envs.sandbox import Sandbox
from cwm_envs.sources.code import load_program_tasks
from cwm_envs.tasks import Task
from cwm_envs.tracing import format as fmt
from cwm_envs.tracing.format import TraceFormatError
from cwm_envs.tracing.tracer import TraceLimits, Tracer, TraceResult
from rewards.base import RewardResult
from rewards.trace import SCHEMES, trace_reward

FIELDS = ("code", "input")   # the metadata a task needs here
MODES = ("next", "rest")


class TraceEnv(TextEnv):
    """Given code, its input and a trace prefix, predict the next frame or the rest of the trace.

    >>> import gymnasium, cwm_envs
    >>> env = gymnasium.make("cwm/Trace-v0")
    >>> obs, info = env.reset(seed=0)
    >>> env.step(env.unwrapped.reference_response(env.unwrapped.task))[1]
    1.0
    >>> env.close()

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
    - `reward_scheme`, `timeout_s`, `sandbox` (a backend name or a shared `Sandbox`, not closed by the env;
      only the task's own code runs in it, never the agent's).
    - `reset(options={"task": Task | id | index, "cut": k})`: pose a given task and/or prefix length
      (1 <= k <= frames; k = frames asks for the end of the trace in "next" mode). By default "next"
      draws k at random and "rest" uses k = 1 (only the call frame: CRUXEval-O as a full trace). The posed
      task (`env.task`) carries its cut in `metadata["cut"]`, so `judge` and `reference_response` work on it
      without `reset()`.

    ## Version History
    - v0: initial version.
    """

    reward_schemes = SCHEMES

    def __init__(self, mode: str = "next", tasks: str | Path | Sequence[Task] | None = None,
                 reward_scheme: str = "cwm", max_frames: int = 256, max_repr: int = 200, timeout_s: float = 10.0,
                 sandbox: str | Sandbox = "local", render_mode: str | None = None):
        if mode not in MODES:
            raise UsageError(f"mode must be one of {MODES}, got {mode!r}")
        if max_frames < 2:
            raise UsageError("max_frames must be at least 2")
        generated = tasks is None or isinstance(tasks, str) and tasks == "generated"
        super().__init__(tasks=None if generated else load_program_tasks(tasks, FIELDS), reward_scheme=reward_scheme,
                         render_mode=render_mode)
        self.mode = mode
        self.limits = TraceLimits(max_events=max_frames, max_bytes=self.max_observation_chars * 4, max_repr=max_repr)
        self.timeout_s = float(timeout_s)
        self._tracer_sandbox = sandbox
        self._tracer: Tracer | None = None
        self.trace: TraceResult | None = None
        self.cut = 0

    # -- the contract of TextEnv --------------------------------------------------------------------------
    def draw_task(self, choice) -> Task:
        """A task with a complete trace within the limits, its cut in metadata (redrawn up to 20 times)."""
        explicit, cut = choice is not None, self.options.get("cut")
        for _ in range(1 if explicit else 20):
            task = load_program_tasks([choice], FIELDS)[0] if isinstance(choice, Task) else super().draw_task(choice)
            result = self._trace(task)
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
            posed = replace(task, metadata={**task.metadata, "cut": k})
            if len(self.pose(posed, result)) > self.max_observation_chars:
                if explicit:
                    raise UsageError(f"task {task.id}: the prefix is longer than {self.max_observation_chars} characters")
                continue
            self.trace, self.cut = result, k
            return posed
        raise UsageError("could not draw a task with a complete trace in 20 tries")

    def generate_task(self, rng) -> Task:
        from cwm_envs.sources.programs import generate_program

        seed = int(rng.integers(2**31))
        prog = generate_program(random.Random(seed), n_inputs=1)
        return Task(id=f"gen/{prog.family}/{seed}", prompt=prog.code,
                    metadata={"code": prog.code, "input": prog.inputs[0], "entry": prog.entry})

    def pose(self, task: Task, trace: TraceResult | None = None) -> str:
        trace, cut = (trace, task.metadata["cut"]) if trace is not None else self._traced(task)
        return fmt.context_prefix(trace.context) + "".join(fmt.frame_texts(trace.frames[:cut]))

    def reference_response(self, task: Task) -> str:
        """The true continuation (what the oracle answers)."""
        trace, cut = self._traced(task)
        expected, complete = self._expected(trace, cut)
        return fmt.emit_continuation(trace.frames[:cut], expected, complete)

    def judge(self, task: Task, response: str) -> RewardResult:
        """Judge a continuation of the task's prefix (its `metadata["cut"]`, 1 when absent)."""
        trace, cut = self._traced(task)
        expected, complete = self._expected(trace, cut)
        true = [f.to_dict() for f in expected]
        try:
            predicted, pred_complete = fmt.parse_frames(response.rstrip(), prefix=trace.frames[:cut])
        except TraceFormatError as exc:
            return trace_reward(None, true, expected_complete=complete, scheme=self.reward_scheme,
                                parse_error=str(exc))
        return trace_reward([f.to_dict() for f in predicted], true, predicted_complete=pred_complete,
                            expected_complete=complete, scheme=self.reward_scheme)

    def episode_info(self) -> dict:
        return {**super().episode_info(), "cut": self.cut, "n_frames": len(self.trace.frames)}

    def respond(self, action: str):
        obs, reward, terminated, truncated, info = super().respond(action)
        return obs, reward, terminated, truncated, {**info, "expected": self.reference_response(self.task)}

    def close(self):
        super().close()
        if self._tracer is not None:
            self._tracer.close()
            self._tracer = None

    # -- the trace --------------------------------------------------------------------------------------
    def expected_frames(self) -> tuple[list[fmt.Frame], bool]:
        """The frames the agent must predict after the current prefix, and whether the trace ends after them."""
        return self._expected(self.trace, self.cut)

    def _expected(self, trace: TraceResult, cut: int) -> tuple[list[fmt.Frame], bool]:
        frames = trace.frames
        if self.mode == "rest" or cut == len(frames):
            return frames[cut:], True
        return frames[cut:cut + 1], False

    def _traced(self, task: Task) -> tuple[TraceResult, int]:
        if task is self.task and self.trace is not None:
            return self.trace, self.cut
        result = self._trace(task)
        if result.status != "ok":
            raise UsageError(f"task {task.id} gives no complete trace within the limits ({result.status})")
        return result, min(int(task.metadata.get("cut", 1)), len(result.frames))

    def _trace(self, task: Task) -> TraceResult:
        m = task.metadata
        return self.tracer.trace_call(m["code"], m.get("entry", "f"), m["input"])

    @property
    def tracer(self) -> Tracer:
        if self._tracer is None:
            self._tracer = Tracer(sandbox=self._tracer_sandbox, limits=self.limits, timeout=self.timeout_s)
        return self._tracer
