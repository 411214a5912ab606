"""`cwm/Math-v0` (one response, one reward) and `cwm/MathTool-v0` (reasoning with a Python tool).

Both pose a math problem in CWM's chat format with the reasoning system prompt and CWM's math prompt
("Please reason step by step, and put your final answer within $\\boxed{}$."), and score the final
response with `rewards.math.cwm_reward`: the exact verifier of `rewards.math` behind CWM's format rules.

The easy task stream used for quick RL checks, single-digit addition and subtraction:
`gymnasium.make("cwm/Math-v0", source="generated", kinds=("add_sub",), difficulty=0)`.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

from cwm_envs.chat import REASONING_SYSTEM_PROMPT, assistant_header, format_chat, tool_message
from cwm_envs.envs.base import TextEnv
from cwm_envs.errors import InfraError, UsageError
from cwm_envs.sandbox import Limits, Sandbox, make_sandbox
from cwm_envs.sandbox.local import DEFAULT_PRELOAD
from cwm_envs.sources.math import MathGenerator, load_math
from cwm_envs.tasks import Task
from rewards.base import RewardResult
from rewards.math import VerifierUnavailable, cwm_reward

PROMPTS = {
    "cot": "{problem}\nPlease reason step by step, and put your final answer within $\\boxed{{}}$.",
    "direct": "{problem}\n\nWrap your answer in $\\boxed{{}}$.",
}


class MathEnv(TextEnv):
    """Answer a math problem in one response; the boxed final answer is checked exactly.

    >>> import gymnasium, cwm_envs
    >>> env = gymnasium.make("cwm/Math-v0", kinds=("add_sub",))
    >>> obs, info = env.reset(seed=0)
    >>> env.step(env.unwrapped.reference_response(env.unwrapped.task))[1]
    1.0

    ## Observation Space
    `AnyText(65536)`: the whole prompt in CWM's chat format, ending with the assistant header (and
    `<think>\\n` when `think=True`), ready for a model to continue. After the episode ends: "".

    ## Action Space
    `AnyText(131072)`: the model's whole response (its reasoning, `</think>`, then the answer).

    ## Rewards
    `reward_scheme="cwm"`: +1 when the response has exactly one `</think>` (with `think=True`), exactly one
    `\\boxed{}` after it, and that answer is equivalent to the gold answer (`rewards.math`); -1 otherwise.
    `"binary"`: 1 / 0 under the same rules. `info["outcomes"]` holds the evidence (extracted answer, its
    span in the response, the rule that decided, format checks); `info["details"]` one line; the final
    step's info also carries the gold `answer` (for logs: the rollout worker never hands it to a policy).

    ## Episode End
    Every step ends the episode (`terminated=True`).

    ## Arguments
    - `source`: "generated" (default: the seeded generator, no file needed), "math500", "aime24", "amc23",
      "gsm8k" (the shared data copies), a JSONL path, "hub:NAME", or a list of `Task`.
    - `kinds`, `difficulty`: the generator's problem kinds (default all) and difficulty 0-3 (default 0).
      Easy single-digit addition/subtraction: `kinds=("add_sub",), difficulty=0`.
    - `reward_scheme`: "cwm" (+1/-1) or "binary" (1/0).  `think`: thinking on (CWM's default) or off.
    - `prompt_style`: "cot" (CWM's step-by-step prompt) or "direct" ("Wrap your answer in $\\boxed{}$.").
    - `timeout_s`: hard limit on checking one answer.  `limit`: use only the first N problems of a file.
    - `prompts`: a directory of `NAME.txt` templates (or a dict) replacing ours (cwm_envs/prompts.py).
    - `reset(seed=..., options={"task": Task | task id | index})`: pose a given task; without one, a
      file's task is drawn with the env's seeded generator, a generated task from a drawn seed (an int
      choice is a generator seed).

    ## Version History
    - v0: initial version; the verifier hardened against constant answers (a failed parse never equals).
    """

    max_action_chars = 131_072

    def __init__(self, source: str | Path | Sequence[Task] = "generated", kinds: Sequence[str] | None = None,
                 difficulty: int = 0, reward_scheme: str = "cwm", think: bool = True, prompt_style: str = "cot",
                 timeout_s: float = 5.0, limit: int | None = None, render_mode: str | None = None,
                 sandbox: str | Sandbox | None = None, prompts=None):
        if prompt_style not in PROMPTS:
            raise UsageError(f"unknown prompt_style {prompt_style!r}; choose one of {sorted(PROMPTS)}")
        loaded = load_math(source, kinds=kinds, difficulty=difficulty, limit=limit)
        self.generator = loaded if isinstance(loaded, MathGenerator) else None
        super().__init__(tasks=None if self.generator else list(loaded), reward_scheme=reward_scheme,
                         render_mode=render_mode, sandbox=sandbox, prompts=prompts)
        self.think, self.prompt_style, self.timeout_s = bool(think), prompt_style, float(timeout_s)

    # -- the contract of TextEnv --------------------------------------------------------------------------
    def messages(self, task: Task) -> list[dict]:
        """The conversation that poses `task` (system prompt only when thinking is on, as in CWM)."""
        user = {"role": "user", "content": self.template(f"math_{self.prompt_style}", PROMPTS[self.prompt_style])
                .format(problem=task.prompt)}
        system = self.template("system", REASONING_SYSTEM_PROMPT)
        return ([{"role": "system", "content": system}] if self.think else []) + [user]

    def pose(self, task: Task) -> str:
        return format_chat(self.messages(task), add_generation_prompt=True, think=self.think)

    def judge(self, task: Task, response: str) -> RewardResult:
        """The reward of one final response to `task` (usable without reset())."""
        try:
            return cwm_reward(task.answer, response, think=self.think, scheme=self.reward_scheme,
                              timeout=self.timeout_s)
        except VerifierUnavailable as exc:  # the machine failed, not the model: never score it
            raise InfraError(str(exc)) from exc

    def reference_response(self, task: Task) -> str:
        """The gold answer in the format CWM's math reward pays for (reasoning closed, one box)."""
        return (f"The answer is {task.answer}.\n</think>\n" if self.think else "") + f"\\boxed{{{task.answer}}}"

    def draw_task(self, choice) -> Task:
        if self.generator is not None and choice is not None and not isinstance(choice, Task):
            if isinstance(choice, int) and not isinstance(choice, bool):
                return self.generator.task(choice)
            raise UsageError("with the generator, options['task'] is a Task or an integer seed")
        return super().draw_task(choice)

    def generate_task(self, rng) -> Task:
        return self.generator.sample(rng)

    def respond(self, action: str):
        obs, reward, terminated, truncated, info = super().respond(action)
        return obs, reward, terminated, truncated, {**info, "answer": self.task.answer,
                                                    "metadata": dict(self.task.metadata)}


# --------------------------------------------------------------------------------------------- with tools
TOOL_CALL_RE = re.compile(r"<tool: ([^>]*?)>\n(.*?)</tool>", re.S)   # CWM's ToolExecutor pattern
TOOL_OUTPUT_CHARS = 4096


TOOL_SYSTEM = ("\n\nYou may invoke tools during reasoning.\n\nThe following tools are available:\n\n"
               "- python: Run Python code in an isolated sandbox up to {max_tool_calls} times.\n\n"
               "Call it with <tool: python>\\nCODE</tool>; print what you want to see.")


def format_tool_result(result) -> str:
    """CWM's python tool feedback: `completed. [stdout]...[/stdout] [stderr]...[/stderr]`, `error: Timeout`,
    or `error: <traceback>` when the code raised."""
    if result.timed_out:
        return "error: Timeout"
    if result.limit_hit:
        return f"error: {result.limit_hit} limit exceeded"
    if result.exit_code not in (0, None):
        return f"error: {_tail(result.stderr.strip() or f'exit code {result.exit_code}')}"
    out = "completed."
    if result.stdout:
        out += f" [stdout]{_tail(result.stdout)}[/stdout]"
    if result.stderr:
        out += f" [stderr]{_tail(result.stderr)}[/stderr]"
    return out


def _tail(text: str) -> str:
    return text if len(text) <= TOOL_OUTPUT_CHARS else "..." + text[-TOOL_OUTPUT_CHARS:]


class MathToolEnv(MathEnv):
    """Solve a math problem while calling a Python tool (CWM's math-with-tools setting).

    ## Observation Space
    `AnyText(65536)`. At reset: the prompt in CWM's chat format; the system prompt adds "You may invoke
    tools during reasoning." and lists the tool, as CWM's `ToolExecutor` does, plus one line on the call
    format. After a turn with tool calls: one `tool: python` message per call, then the assistant header
    (with `<think>\\n` again when that turn had already closed its thinking, as in CWM).

    ## Action Space
    `AnyText(131072)`: one assistant turn. A tool call is `<tool: python>\\nCODE</tool>` (CWM's pattern
    `<tool: ([^>]*?)>\\n(.*?)</tool>`); every call in a turn runs, in order. A turn with no call is final.

    ## Rewards
    0 for a turn with tool calls; the final turn is scored as in `cwm/Math-v0` (`info["outcomes"]`).
    Reaching `max_turns` turns without a final answer truncates the episode with the wrong-answer reward.

    ## Episode End
    Terminated by a turn without tool calls; truncated after `max_turns` turns.

    ## Arguments
    As `cwm/Math-v0`, plus `max_tool_calls` (4, CWM's limit; later calls answer
    `error: maximum execution count (4) reached`), `tool_timeout_s` (10 s per call, CWM's), `max_turns`
    (8), and `sandbox`: a backend name or a shared `Sandbox` (a shared one is neither reset nor closed by the
    env; an owned one is reset between episodes, so no file or process of one episode reaches the next).

    ## Version History
    - v0: initial version; each episode now starts with a pristine sandbox.
    """

    def __init__(self, source: str | Path | Sequence[Task] = "generated", kinds: Sequence[str] | None = None,
                 difficulty: int = 0, reward_scheme: str = "cwm", think: bool = True, prompt_style: str = "cot",
                 timeout_s: float = 5.0, limit: int | None = None, render_mode: str | None = None,
                 max_tool_calls: int = 4, tool_timeout_s: float = 10.0, max_turns: int = 8,
                 sandbox: str | Sandbox = "local", memory_mb: int = 1024, prompts=None):
        super().__init__(source, kinds, difficulty, reward_scheme, think, prompt_style, timeout_s, limit, render_mode,
                         sandbox, prompts)
        if max_turns < 1 or max_tool_calls < 0:
            raise UsageError("max_turns must be at least 1 and max_tool_calls at least 0")
        self.max_tool_calls, self.tool_timeout_s, self.max_turns = max_tool_calls, float(tool_timeout_s), max_turns
        self.limits = Limits(memory_mb=memory_mb, processes=32, file_size_mb=16, open_files=256, output_bytes=1 << 16)
        self._calls = 0

    def messages(self, task: Task) -> list[dict]:
        msgs = super().messages(task)
        system = (self.template("system", REASONING_SYSTEM_PROMPT) if self.think else "You are a helpful AI assistant.")
        system += self.template("math_tool_system", TOOL_SYSTEM).format(max_tool_calls=self.max_tool_calls)
        return [{"role": "system", "content": system}] + [m for m in msgs if m["role"] != "system"]

    def pose(self, task: Task) -> str:
        self._calls = 0
        return super().pose(task)

    def reference_episode(self, task: Task) -> list[str]:
        """The oracle: for a task that carries the Python printing its answer (`needs_tool`), a turn that
        calls the tool with it, then the final answer; otherwise the answer alone (as `cwm/Math-v0`)."""
        code = task.metadata.get("tool_code")
        if not code or self.max_tool_calls < 1 or self.max_turns < 2:
            return [self.reference_response(task)]
        return [f"<tool: python>\n{code}\n</tool>", self.reference_response(task)]

    def make_sandbox(self) -> Sandbox:
        if self._sandbox_arg == "local":
            return make_sandbox("local", preload=DEFAULT_PRELOAD + ("sympy", "numpy"))
        return make_sandbox(self._sandbox_arg)

    def episode_info(self) -> dict:
        return {**super().episode_info(), "remaining_turns": self.max_turns - self.turn,
                "tool_calls_used": self._calls, "remaining_tool_calls": max(0, self.max_tool_calls - self._calls)}

    def respond(self, action: str):
        calls = TOOL_CALL_RE.findall(action)
        if not calls:
            return super().respond(action)
        feedback = "".join(tool_message(name, self._run_tool(name, code)) for name, code in calls)
        if self.turn >= self.max_turns:
            details = "turn limit reached without a final answer"
            return "", self.failure_reward(), False, True, {
                "answer": self.task.answer, "details": details,
                "outcomes": {"format_ok": False, "equal": False, "how": "turn limit"}}
        reopen = self.think and "</think>" in action
        obs = feedback + assistant_header() + ("<think>\n" if reopen else "")
        return obs, 0.0, False, False, {"tool_calls": len(calls)}

    def _run_tool(self, name: str, code: str) -> str:
        if name != "python":
            return "error: No such tool"
        if self._calls >= self.max_tool_calls:
            return f"error: maximum execution count ({self.max_tool_calls}) reached"
        self._calls += 1
        return format_tool_result(self.sandbox.run_python(code, timeout=self.tool_timeout_s, limits=self.limits))
