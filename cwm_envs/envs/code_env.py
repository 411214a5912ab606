"""`cwm/Code-v0`: write a program, get rewarded by tests that run in the sandbox.

Two task kinds share one environment:

- function completion (HumanEval style, "call"): the tests call the solution's entry point. They run in
  `code_harness.py`, which keeps the tests and the candidate in separate processes and reports through a
  per-run nonce, so that no code the candidate runs can forge a pass (see that module);
- competitive programming (LiveCodeBench style, "stdin"): each test feeds an input on stdin and compares
  stdout with the expected output (whitespace tolerant; integers exact, other numbers by exact value or
  within the task's own `float_tolerance`, `rewards.code.outputs_match`). The expected output never
  enters the sandbox.
"""
from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Sequence

from cwm_envs.envs.base import TextEnv
from cwm_envs.errors import UsageError
from cwm_envs.sandbox import Limits, Sandbox
from cwm_envs.sources.code import load_code_tasks
from cwm_envs.sources.code_gen import generate_task
from cwm_envs.sources.code_specs import CallSpec, StdinSpec, spec_for
from cwm_envs.tasks import Task
from rewards.base import RewardResult
from rewards.code import SCHEMES, TestOutcome, code_reward, extract_code, outputs_match

HARNESS_SOURCE = (Path(__file__).with_name("code_harness.py")).read_text()
FORMAT_RULE = "Answer with exactly one ```python code block```; nothing in it is run except that code."


# ---------------------------------------------------------------------------------------------------------
# Prompts.


PROMPTS = {
    "code_stdin": ("{problem}\n\nWrite a Python program that reads the input from standard input and prints the "
                   "answer to standard output. {format_rule}"),
    "code_starter": "{problem}\n\nComplete this starter code:\n```python\n{starter_code}\n```\n{format_rule}",
    "code_function": ("Complete the following Python function. Give the whole function (with the imports it needs). "
                      "{format_rule}\n\n```python\n{prompt}\n```"),
}


def render_prompt(task: Task, templates: dict[str, str] | None = None) -> str:
    """The observation that poses `task` (`templates`: the user's replacements of PROMPTS)."""
    spec, meta = spec_for(task), task.metadata
    templates = {**PROMPTS, **(templates or {})}
    if isinstance(spec, StdinSpec):
        return templates["code_stdin"].format(problem=task.prompt.rstrip(), format_rule=FORMAT_RULE)
    if meta.get("starter_code"):
        return templates["code_starter"].format(problem=task.prompt.rstrip(), format_rule=FORMAT_RULE,
                                                starter_code=meta["starter_code"].rstrip())
    return templates["code_function"].format(prompt=task.prompt.rstrip(), format_rule=FORMAT_RULE)


def program_for(spec: CallSpec | StdinSpec, code: str) -> str:
    """The program that runs: the task's context, then the model's code.

    A body-only completion (indented first line, as base models continue a HumanEval prompt) is appended
    to the context as is; a whole function follows it and replaces the prompt's stub.
    """
    if isinstance(spec, StdinSpec):
        return code
    first = next((line for line in code.splitlines() if line.strip()), "")
    joiner = "" if first[:1] in (" ", "\t") and spec.context.endswith("\n") else "\n\n"
    return spec.prelude + spec.context + joiner + code if spec.context else spec.prelude + code


def _compile_error(program: str) -> str | None:
    try:
        compile(program, "<solution>", "exec")
    except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


# ---------------------------------------------------------------------------------------------------------
# The environment.


class CodeEnv(TextEnv):
    """Write a Python solution; tests in the sandbox decide the reward.

    >>> import gymnasium, cwm_envs
    >>> env = gymnasium.make("cwm/Code-v0")
    >>> obs, info = env.reset(seed=0)
    >>> env.step(env.unwrapped.reference_response(env.unwrapped.task))[1]
    1.0
    >>> env.close()

    ## Observation Space
    `AnyText(65536)`: the problem (a function signature with docstring, or a statement with examples), and
    in the multi-turn variant, feedback on the public tests.

    ## Action Space
    `AnyText(65536)`: the model's response. It may reason first; only the text after `</think>` is read,
    and it must hold exactly one fenced code block (CWM's format rule).

    ## Rewards
    `reward_scheme="cwm"`: +1 if the response holds exactly one code block and every test passes within
    the time and memory limits, else -1. `"fraction"`: the share of tests passed (0 on a format or compile
    failure). `info["outcomes"]` holds the evidence: `parse`, `compile`, `pass`, `public_pass`, `passed`,
    `total`, `failures`. Standard-output tests compare integers exactly and other numbers by exact value,
    or within the task's own `metadata["float_tolerance"]` where it gives one.

    ## Episode End
    Single-turn (`max_turns=1`): every step ends the episode. Multi-turn: a submission that fails a public
    test, while turns remain, gets reward 0 and the public-test feedback as the next observation; a
    submission that passes the public tests (or the last turn) is judged on all tests and ends the episode.
    A task without public tests (HumanEval) is therefore judged in full at the first submission.

    ## Arguments
    - `tasks`: None for the embedded generator (seeded, no file), "humaneval", a path to a HumanEval or
      LiveCodeBench-format JSONL, or a list of `Task`.
    - `reward_scheme`: "cwm" or "fraction".  `max_turns`: 1, or more for retries with feedback.
    - `timeout_s`: wall-clock seconds per stdin test, and for the whole test run of a call-based task.
    - `memory_mb`: address-space limit of each process. `sandbox`: a backend name or a `Sandbox` to share
      (a shared one is neither reset nor closed by the env; an owned one is reset between episodes).
      `require_think`: demand exactly one `</think>`.
    - `prompts`: a directory of `NAME.txt` templates (or a dict) replacing ours (cwm_envs/prompts.py).
    - `reset(options={"task": Task | task id | index})` poses a given task.

    ## Version History
    - v0: initial version; integers on standard output compare exactly, a float tolerance only where the
      task gives one, and each episode starts with a pristine sandbox.
    """

    reward_schemes = SCHEMES

    def __init__(self, tasks: str | Path | Sequence[Task] | None = None, reward_scheme: str = "cwm",
                 max_turns: int = 1, timeout_s: float = 6.0, memory_mb: int = 1024,
                 sandbox: str | Sandbox = "local", require_think: bool = False, render_mode: str | None = None,
                 prompts=None):
        if max_turns < 1:
            raise UsageError("max_turns must be at least 1")
        if tasks is None or isinstance(tasks, (str, Path)) and str(tasks) == "generated":
            loaded = None
        elif isinstance(tasks, (str, Path)):
            loaded = load_code_tasks(tasks)
        else:
            loaded = list(tasks)
        super().__init__(tasks=loaded, reward_scheme=reward_scheme, render_mode=render_mode, sandbox=sandbox,
                         prompts=prompts)
        self.max_turns, self.require_think, self.timeout_s = max_turns, require_think, float(timeout_s)
        self.limits = Limits(memory_mb=memory_mb, processes=32, file_size_mb=16, open_files=256,
                             output_bytes=1 << 20)
        self._specs: dict[str, tuple[Task, CallSpec | StdinSpec]] = {}

    # -- the contract of TextEnv --------------------------------------------------------------------------
    def pose(self, task: Task) -> str:
        self._spec(task)  # a task without usable tests fails here, not mid-episode
        return render_prompt(task, self.prompt_overrides)

    def judge(self, task: Task, response: str) -> RewardResult:
        """Judge one response to `task` on all its tests; usable without reset()."""
        return self._judge(task, response, public_only=False)

    def reference_response(self, task: Task) -> str:
        """The task's own solution in a code block (HumanEval's canonical one, the generator's reference)."""
        meta = task.metadata
        if "canonical_solution" in meta:  # HumanEval: the canonical solution is the body that follows the prompt
            return f"```python\n{task.prompt}{meta['canonical_solution'].rstrip()}\n```"
        if task.answer:
            return f"```python\n{task.answer.rstrip()}\n```"
        raise UsageError(f"task {task.id} has no reference solution")

    def generate_task(self, rng) -> Task:
        return generate_task(int(rng.integers(0, 2**31 - 1)))

    def episode_info(self) -> dict:
        return {**super().episode_info(), "max_turns": self.max_turns, "remaining_turns": self.max_turns - self.turn}

    def respond(self, action: str):
        final = self.turn >= self.max_turns
        result = self._judge(self.task, action, public_only=not final)
        o = result.outcomes
        if not final and o["public_pass"] is not False and o["parse"] and o["compile"]:
            result, final = self.judge(self.task, action), True   # passed the public tests: judged on all
        info = {"outcomes": result.outcomes, "details": result.details, "final": final}
        if final:
            return "", float(result.value), True, False, info
        return self._feedback(result), 0.0, False, False, info

    # -- judging ------------------------------------------------------------------------------------------
    def _judge(self, task: Task, response: str, public_only: bool) -> RewardResult:
        spec = self._spec(task)
        extraction = extract_code(response, require_think=self.require_think)
        if extraction.code is None:
            return code_reward(False, None, [], self.reward_scheme, reason=extraction.reason)
        program = program_for(spec, extraction.code)
        error = _compile_error(program)
        if error:
            return code_reward(True, False, [], self.reward_scheme, reason=error)
        if isinstance(spec, StdinSpec):
            cases = [c for c in spec.cases if c[2] or not public_only]
            tests = self._run_stdin(program, cases, spec.float_tol)
            total = len(cases)
        else:
            tests = self._run_call(spec, program, public_only)
            total = sum(1 for _, public in spec.units if public or not public_only)
        return code_reward(True, True, tests, self.reward_scheme, expected_total=total)

    def _run_stdin(self, program: str, cases, float_tol: float | None) -> list[TestOutcome]:
        tests = []
        for k, (stdin, expected, public) in enumerate(cases):
            res = self.sandbox.run_python(program, stdin=stdin, timeout=self.timeout_s, limits=self.limits)
            status = _status(res)
            if status == "pass" and not outputs_match(res.stdout, expected, float_tol):
                status = "wrong answer"
            detail = "" if status == "pass" else _evidence(res, stdin if public else None, expected if public else None)
            tests.append(TestOutcome(f"test {k}", status == "pass", public, status, detail))
            if status != "pass" and self.reward_scheme == "cwm":
                break  # the verdict is -1 already; the tests not run count as failed
        return tests

    def _run_call(self, spec: CallSpec, program: str, public_only: bool) -> list[TestOutcome]:
        nonce = secrets.token_hex(16)  # only this process and the judge learn it, never the candidate
        payload = {"nonce": nonce, "solution": program, "tests": spec.public_module if public_only else spec.test_module,
                   "entry": list(spec.entry), "call_timeout_s": self.timeout_s, "deadline_s": self.timeout_s}
        res = self.sandbox.run_python(HARNESS_SOURCE, stdin=json.dumps(payload), timeout=self.timeout_s + 5.0,
                                      limits=self.limits)
        verdict = _verdict(res, nonce)
        selected = [(k, src, public) for k, (src, public) in enumerate(spec.units) if public or not public_only]
        if isinstance(verdict, str):  # no trustworthy verdict: every test fails, with the run as evidence
            return [TestOutcome(f"test {k}", False, public, verdict, _evidence(res)) for k, _, public in selected]
        tests = []
        for k, src, public in selected:
            ok, err = verdict["units"].get(str(k), (False, None))
            if ok:
                tests.append(TestOutcome(f"test {k}", True, public, "pass"))
                continue
            reason = verdict["load_error"] or err or verdict["aborted"] or "not run"
            status = ("load error" if verdict["load_error"] else "wrong answer" if reason.startswith("AssertionError")
                      else "timeout" if "timeout" in reason else "runtime error")
            tests.append(TestOutcome(f"test {k}", False, public, status, f"{src}\n-> {reason}"[:1000]))
        return tests

    # -- helpers ------------------------------------------------------------------------------------------

    def _spec(self, task: Task) -> CallSpec | StdinSpec:
        cached = self._specs.get(task.id)
        if cached is None or cached[0] is not task:
            cached = self._specs[task.id] = (task, spec_for(task))
        return cached[1]

    def _feedback(self, result: RewardResult) -> str:
        o = result.outcomes
        lines = [f"Your answer did not pass: {result.details}."]
        for f in o["failures"]:
            lines.append(f"- {f['name']}: {f['status']}" + (f"\n{f['detail']}" if f["detail"] else ""))
        lines.append(f"Turns left: {self.max_turns - self.turn}. {FORMAT_RULE}")
        return "\n".join(lines)


def _status(res) -> str:
    if res.timed_out:
        return "timeout"
    if res.limit_hit:
        return f"{res.limit_hit} limit"
    if res.exit_code != 0:
        return "runtime error"
    return "pass"


def _evidence(res, stdin: str | None = None, expected: str | None = None) -> str:
    parts = [f"exit code {res.exit_code}, {res.duration_s:.2f} s"
             + (", timed out" if res.timed_out else "") + (f", {res.limit_hit} limit" if res.limit_hit else "")]
    if stdin is not None:
        parts.append(f"input:\n{stdin[:300]}")
    if expected is not None:
        parts += [f"expected:\n{expected[:300]}", f"got:\n{res.stdout[:300]}"]
    tail = res.stderr.strip().splitlines()[-3:]
    if tail:
        parts.append("stderr: " + " | ".join(tail)[:300])
    return "\n".join(parts)


def _verdict(res, nonce: str) -> dict | str:
    """The judge's result line, only if the run ended cleanly and the line carries this run's nonce."""
    if res.timed_out:
        return "timeout"
    if res.limit_hit:
        return f"{res.limit_hit} limit"
    lines = [line for line in res.stdout.splitlines() if line.startswith(nonce + " ")]
    if res.exit_code != 0 or len(lines) != 1:
        return "no verdict"
    try:
        verdict = json.loads(lines[0][len(nonce) + 1:])
    except json.JSONDecodeError:
        return "no verdict"
    if not isinstance(verdict, dict) or not isinstance(verdict.get("units"), dict):
        return "no verdict"
    return verdict

