"""`cwm/OutputPrediction-v0` and `cwm/InputPrediction-v0`: CRUXEval-O / -I style execution prediction.

The reward comes from running code, never from comparing strings, so any equal value counts (`[1,2]` for
`[1, 2]`, any input that works): the predicted output is evaluated in the sandbox, or the task's function is
called there on the predicted input. The judge's side stays out of that process: only plain data
(`rewards.plain_data`) comes back, and the comparison with the reference value happens in the env's own
process, so no object, printout or introspection trick in the prediction can make it pass.
"""
from __future__ import annotations

import ast
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from cwm_envs.envs.base import TextEnv
from cwm_envs.errors import InfraError, UsageError
from cwm_envs.sandbox import Limits, Sandbox
from cwm_envs.sources.code import load_program_tasks
from cwm_envs.tasks import Task
from rewards import plain_data
from rewards.base import RewardResult
from rewards.prediction import SCHEMES, parse_prediction, prediction_reward, values_equal

FIELDS = ("code", "input", "output")   # the metadata a task needs here
FORMAT_RULE = "Answer with exactly one ```python code block``` holding the completed assertion."
PROMPTS = {
    "output": ("You are given a Python function and an assertion containing an input to the function. Complete "
               "the assertion with a literal (no unsimplified expressions, no function calls) containing the "
               "output when executing the provided code on the given input, even if the function is incorrect "
               "or incomplete.\n\n```python\n{code}\nassert {entry}({input}) == ??\n```\n\n" + FORMAT_RULE),
    "input": ("You are given a Python function and an output. Find any input such that executing the function "
              "on it leads to the given output. There may be several answers; give one.\n\n```python\n{code}\n"
              "assert {entry}(??) == {output}\n```\n\n" + FORMAT_RULE),
}


def defined_names(code: str) -> frozenset[str]:
    """Names the module level of `code` binds with def, class or assignment (not imports: a module such as
    `os` or `sys` in a predicted input would hand the candidate the interpreter)."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return frozenset()
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    return frozenset(names)


# Trusted programs import only from the Python installation: an earlier run in the same sandbox may have
# left a `json.py` in the working dir to take them over.
_ISOLATE = """import os as _o, sys as _s
_h = tuple(_o.path.join(_o.path.realpath(p), "") for p in {_s.prefix, _s.base_prefix, _s.exec_prefix})
_s.path[:] = [p for p in _s.path if p and _o.path.join(_o.path.realpath(p), "").startswith(_h)]
del _o, _s, _h
"""


def value_program(setup: str, expression: str, marker: str) -> str:
    """A program that runs `setup`, evaluates `expression` and prints `marker` + its plain-data encoding
    (or `marker` + ENCODE_ERROR + why, when the value is not plain data) as its last line."""
    return (f"{_ISOLATE}{plain_data.sandbox_source()}\n\n{setup}\n\n__cwm_value = ({expression}\n)\n"
            f"try:\n    __cwm_text = encode(__cwm_value)\nexcept (TypeError, RecursionError, ValueError) as __e:\n"
            f"    __cwm_text = ENCODE_ERROR + str(__e)\nprint('\\n' + {marker!r} + __cwm_text)\n")


@dataclass(frozen=True)
class _Value:
    """A value decoded from the sandbox, or why there is none."""

    value: object
    error: str = ""
    timed_out: bool = False


def _short_repr(value) -> str:
    try:
        text = repr(value)
    except (ValueError, RecursionError):   # an int beyond 4300 digits: Python refuses to print it
        return f"a {type(value).__name__} too large to show"
    return text if len(text) <= 200 else text[:197] + "..."


class PredictionEnv(TextEnv):
    """Predict what a function returns (`mode="output"`) or an input that makes it return a given value
    (`mode="input"`); one step, judged by running the prediction in the sandbox.

    >>> import gymnasium, cwm_envs
    >>> env = gymnasium.make("cwm/OutputPrediction-v0")
    >>> obs, info = env.reset(seed=0)
    >>> env.step(env.unwrapped.reference_response(env.unwrapped.task))[1]
    1.0
    >>> env.close()

    ## Observation Space
    `AnyText(32768)`: CRUXEval's prompt: the code and `assert f(INPUT) == ??` (output mode) or
    `assert f(??) == OUTPUT` (input mode), with the format rule.

    ## Action Space
    `AnyText(32768)`: the response. After `</think>` (if any), exactly one fenced code block holding
    `assert f(INPUT) == OUTPUT`, or just the missing part. The predicted part must be a safe expression
    (literals, containers, operators, lambdas, a few pure builtins, the built-in types' public methods; input
    mode may also use the functions, classes and variables the code defines), see `rewards.prediction`.

    ## Rewards
    `reward_scheme="cwm"`: +1 when the format holds and the predicted value (output mode), or the function's
    result on the predicted input (input mode), equals the reference, else -1; `"binary"`: 1 / 0. Only plain
    data (`rewards.plain_data`) comes back from the sandbox; the comparison runs in the env's process.
    `info["outcomes"]`: `parse`, `pass`, `timed_out`, `prediction`; the final info also has `expected`.

    ## Episode End
    Every step ends the episode (terminated).

    ## Arguments
    - `mode`: "output" or "input" (the registered ids fix it).
    - `tasks`: None for the embedded generator (seeded programs; the true output comes from running it),
      "cruxeval" for the 800 CRUXEval rows in the shared data, a CRUXEval-format JSONL path, or a list of
      Task with metadata code, input, output (and optionally entry, default "f").
    - `reward_scheme`, `require_think` (demand exactly one `</think>`), `timeout_s`, `memory_mb`,
      `sandbox` (a backend name, or a shared `Sandbox` that the env neither resets nor closes).
    - `prompts`: a directory of `NAME.txt` templates (or a dict) replacing ours (cwm_envs/prompts.py).
    - `reset(options={"task": Task | task id | index})` poses a given task.

    ## Version History
    - v0: initial version; judged on plain data outside the candidate's process, with a pristine sandbox per
      episode.
    """

    max_observation_chars = 32_768
    max_action_chars = 32_768
    reward_schemes = SCHEMES

    def __init__(self, mode: str = "output", tasks: str | Path | Sequence[Task] | None = None,
                 reward_scheme: str = "cwm", require_think: bool = False, timeout_s: float = 5.0,
                 memory_mb: int = 1024, sandbox: str | Sandbox = "local", render_mode: str | None = None,
                 prompts=None):
        if mode not in PROMPTS:
            raise UsageError(f"mode must be 'output' or 'input', got {mode!r}")
        generated = tasks is None or isinstance(tasks, str) and tasks == "generated"
        super().__init__(tasks=None if generated else load_program_tasks(tasks, FIELDS), reward_scheme=reward_scheme,
                         render_mode=render_mode, sandbox=sandbox, prompts=prompts)
        self.mode, self.require_think, self.timeout_s = mode, require_think, float(timeout_s)
        self.limits = Limits(memory_mb=memory_mb, processes=16, file_size_mb=16, output_bytes=1 << 20)
        self._references: dict[tuple, object] = {}

    # -- the contract of TextEnv --------------------------------------------------------------------------
    def pose(self, task: Task) -> str:
        m = task.metadata
        return self.template(f"prediction_{self.mode}", PROMPTS[self.mode]).format(code=m["code"].rstrip(), entry=m.get("entry", "f"), input=m["input"],
                                         output=m["output"])

    def reference_response(self, task: Task) -> str:
        """The dataset's own assertion in a code block."""
        m = task.metadata
        return f"```python\nassert {m.get('entry', 'f')}({m['input']}) == {m['output']}\n```"

    def draw_task(self, choice) -> Task:
        if isinstance(choice, Task):
            return load_program_tasks([choice], FIELDS)[0]
        return super().draw_task(choice)

    def respond(self, action: str):
        obs, reward, terminated, truncated, info = super().respond(action)
        m = self.task.metadata
        return obs, reward, terminated, truncated, {**info, "expected": m[self.mode]}

    def judge(self, task: Task, response: str) -> RewardResult:
        """Judge one response to `task`; usable without reset() (benchmarks call it directly).

        Output mode: the predicted value is evaluated alone in the sandbox (no task code, nothing of the
        judge's), input mode: the task's code is called on the predicted arguments there. Either way only
        plain data comes back, and it is compared here, in the judge's process, with the reference value
        (the function's real output, or the expected output), itself computed once per task by a trusted run.
        """
        m = task.metadata
        entry = m.get("entry", "f")
        prediction = parse_prediction(response, self.mode, entry, defined_names(m["code"]), self.require_think)
        if prediction.text is None:
            return prediction_reward(prediction, False, self.reward_scheme)
        want = self._reference_value(task)
        if self.mode == "output":
            got = self._value("", prediction.text)
        else:
            got = self._value(m["code"], f"{entry}({prediction.text})")
        if got.timed_out or got.error:
            return prediction_reward(prediction, False, self.reward_scheme, got.timed_out, got.error)
        passed = values_equal(got.value, want)
        return prediction_reward(prediction, passed, self.reward_scheme,
                                 detail="" if passed else f"got {_short_repr(got.value)}")

    def _reference_value(self, task: Task):
        """The value a prediction must equal, from a trusted run of the task's own code (cached per task)."""
        m = task.metadata
        key = (self.mode, m["code"], m["input"], m["output"], m.get("entry", "f"))
        if key not in self._references:
            expression = f"{m.get('entry', 'f')}({m['input']})" if self.mode == "output" else m["output"]
            ref = self._value(m["code"], expression)
            if ref.error or ref.timed_out:
                why = "timed out" if ref.timed_out else ref.error
                raise (InfraError if ref.timed_out else UsageError)(
                    f"task {task.id}: the reference {self.mode} could not be computed: {why}")
            if len(self._references) > 4096:
                self._references.clear()
            self._references[key] = ref.value
        return self._references[key]

    def _value(self, setup: str, expression: str) -> _Value:
        """Run `setup` then evaluate `expression` in the sandbox; the decoded plain-data value, or why not."""
        marker = f"cwm-value-{secrets.token_hex(8)}:"
        res = self.sandbox.run_python(value_program(setup, expression, marker), timeout=self.timeout_s,
                                      limits=self.limits)
        if res.timed_out:
            return _Value(None, "timed out", timed_out=True)
        lines = [ln[len(marker):] for ln in res.stdout.splitlines() if ln.startswith(marker)]
        if res.exit_code != 0 or not lines:
            tail = (res.stderr.strip().splitlines() or [res.limit_hit or f"exit code {res.exit_code}"])[-1]
            return _Value(None, tail[:300] or "no value printed")
        if lines[-1].startswith(plain_data.ENCODE_ERROR):
            return _Value(None, f"the value is {lines[-1][len(plain_data.ENCODE_ERROR):][:200]}")
        try:
            return _Value(plain_data.decode(lines[-1]))
        except ValueError as exc:
            return _Value(None, f"unreadable value: {exc}")

    def generate_task(self, rng) -> Task:
        """A seeded program whose output is found by running it (programs that raise are redrawn)."""
        import random

        from cwm_envs.sources.programs import generate_program

        for _ in range(20):
            seed = int(rng.integers(2**31))
            prog = generate_program(random.Random(seed), n_inputs=1)
            marker = f"cwm-out-{secrets.token_hex(8)}"
            res = self.sandbox.run_python(f"{prog.code}\n\nprint({marker!r} + repr({prog.entry}({prog.inputs[0]})))\n",
                                   timeout=self.timeout_s, limits=self.limits)
            lines = [ln for ln in res.stdout.splitlines() if ln.startswith(marker)]
            if res.ok and lines:
                output = lines[-1][len(marker):]
                return Task(id=f"gen/{prog.family}/{seed}", prompt=prog.code, answer=output,
                            metadata={"code": prog.code, "input": prog.inputs[0], "output": output,
                                      "entry": prog.entry})
        raise UsageError("could not generate a program that runs (20 tries)")


class OutputPredictionEnv(PredictionEnv):  # noqa: D101  (takes PredictionEnv's docstring)
    __doc__ = PredictionEnv.__doc__

    def __init__(self, **kwargs):
        super().__init__(mode="output", **kwargs)


class InputPredictionEnv(PredictionEnv):  # noqa: D101  (takes PredictionEnv's docstring)
    __doc__ = PredictionEnv.__doc__
    audit_exempt = {"constant": "any input that makes the function return the given output is a right answer, "
                                "so a constant input that works is a solution, not a hack"}

    def __init__(self, **kwargs):
        super().__init__(mode="input", **kwargs)
