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

import ast
import json
import random
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from cwm_envs.errors import UsageError
from cwm_envs.envs.base import TextEnv
from cwm_envs.sandbox import Limits, Sandbox
from cwm_envs.tasks import Task, read_jsonl
from rewards.base import RewardResult
from rewards.code import SCHEMES, TestOutcome, code_reward, extract_code, outputs_match

HARNESS_SOURCE = (Path(__file__).with_name("code_harness.py")).read_text()
FORMAT_RULE = "Answer with exactly one ```python code block```; nothing in it is run except that code."
_LCB_PRELUDE = "from typing import *\n"  # LeetCode starter code names List, Optional... without importing them


# ---------------------------------------------------------------------------------------------------------
# Test specs: every task source becomes one of two shapes.


@dataclass(frozen=True)
class CallSpec:
    """Tests that call the solution (HumanEval `check(candidate)`, LiveCodeBench functional, generated).

    `context` is trusted task code (the HumanEval prompt: imports, helpers such as `poly`) that runs before
    the solution and before the tests; `units` are the tests (source, public) in order; `test_module` holds
    the test code with each test statement wrapped so that one failure does not hide the others.
    """

    context: str
    entry: tuple[str, ...]
    units: tuple[tuple[str, bool], ...]
    test_module: str
    public_module: str
    prelude: str = ""


@dataclass(frozen=True)
class StdinSpec:
    """Tests that feed stdin and compare stdout: (input, expected output, public) triples.

    `float_tol`: the tolerance for non-integer numbers, only when the task gives one
    (`metadata["float_tolerance"]`); otherwise numbers must have the same exact value.
    """

    cases: tuple[tuple[str, str, bool], ...]
    float_tol: float | None = None


def _wrap_check(test_code: str, where: str, public_units: int = 0) -> tuple[tuple, str, str]:
    """Wrap each top-level test statement (one that holds an `assert`) of `check(candidate)` in try/except.

    Returns (units, module, public-only module); both modules define `__cwm_units(candidate, record)`.
    """
    try:
        tree = ast.parse(test_code)
    except SyntaxError as exc:
        raise UsageError(f"{where}: test code does not parse ({exc.msg})") from None
    checks = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check"]
    if len(checks) != 1 or len(checks[0].args.args) != 1:
        raise UsageError(f"{where}: test code must define exactly one check(candidate)")
    check = checks[0]
    units, body = [], []
    for stmt in check.body:
        if any(isinstance(n, ast.Assert) for n in ast.walk(stmt)):
            index = len(units)
            units.append((ast.unparse(stmt), index < public_units))
            guard = ast.parse(f"try:\n    pass\nexcept BaseException as __cwm_e:\n    __cwm_record({index}, __cwm_e)\n"
                              f"else:\n    __cwm_record({index}, None)").body[0]
            guard.body = [stmt]
            body.append((guard, index < public_units))
        else:
            body.append((stmt, None))
    if not units:
        raise UsageError(f"{where}: check(candidate) holds no assert")
    check.args.args.append(ast.arg("__cwm_record"))
    modules = []
    for public_only in (False, True):
        check.body = [stmt for stmt, public in body if not public_only or public is not False]
        modules.append(ast.unparse(ast.fix_missing_locations(tree)) + "\n__cwm_units = check\n")
    return tuple(units), modules[0], modules[1]


def _call_spec(context: str, test_code: str, entry: tuple[str, ...], where: str, public_units: int = 0,
               prelude: str = "") -> CallSpec:
    units, module, public_module = _wrap_check(test_code, where, public_units)
    return CallSpec(context, entry, units, context + "\n\n" + module, context + "\n\n" + public_module, prelude)


def _functional_check(cases: Sequence[dict]) -> str:
    """LiveCodeBench functional tests as a check(): one JSON value per input line, tuples compared as lists."""
    lines = ["import json as __cwm_json", "", "def check(candidate):"]
    for case in cases:
        args = [json.loads(line) for line in case["input"].split("\n") if line.strip()]
        call = f"candidate(*__cwm_json.loads({json.dumps(args)!r}))"
        lines.append(f"    assert (lambda r: list(r) if isinstance(r, tuple) else r)({call}) == "
                     f"__cwm_json.loads({case['output']!r})")
    return "\n".join(lines) + "\n"


def spec_for(task: Task) -> CallSpec | StdinSpec:
    """The tests of `task`, whichever source it came from; a task without usable tests is a UsageError."""
    meta = task.metadata
    where = f"task {task.id}"
    if isinstance(task.tests, str):  # HumanEval-style check(candidate), or a generated one
        if not meta.get("entry_point"):
            raise UsageError(f"{where}: call-based tests need metadata['entry_point']")
        return _call_spec(task.prompt if "canonical_solution" in meta else meta.get("context", ""), task.tests,
                          ("function", meta["entry_point"]), where, int(meta.get("public_tests", 0)))
    if isinstance(task.tests, (list, tuple)) and task.tests:
        if not all(isinstance(t, dict) and isinstance(t.get("input"), str) and isinstance(t.get("output"), str)
                   for t in task.tests):
            raise UsageError(f"{where}: each test needs string 'input' and 'output'")
        kinds = {t.get("testtype", "stdin") for t in task.tests}
        if kinds == {"stdin"}:
            tol = meta.get("float_tolerance")
            if tol is not None and (isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 <= tol < 1):
                raise UsageError(f"{where}: float_tolerance must be a number in [0, 1), got {tol!r}")
            return StdinSpec(tuple((t["input"], t["output"], bool(t.get("public"))) for t in task.tests),
                             None if tol is None else float(tol))
        if kinds == {"functional"} and meta.get("func_name"):
            try:
                code = _functional_check(task.tests)
            except ValueError as exc:  # JSONDecodeError is one
                raise UsageError(f"{where}: functional test is not JSON ({exc})") from None
            entry = (("method", "Solution", meta["func_name"]) if "class Solution" in (meta.get("starter_code") or "")
                     else ("function", meta["func_name"]))
            return _call_spec("", code, entry, where, sum(bool(t.get("public")) for t in task.tests), _LCB_PRELUDE)
    raise UsageError(f"{where}: no tests this environment can run")


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
# The embedded default: a seeded generator of small problems (no file needed).

_CALL_TEMPLATES = [
    ("sum_above", "nums: list, k: int", "int", "Return the sum of the numbers in `nums` that are greater than `k`.",
     "    return sum(x for x in nums if x > k)\n",
     lambda r: ([r.randint(-20, 20) for _ in range(r.randint(0, 8))], r.randint(-5, 5))),
    ("count_vowels", "s: str", "int", "Return how many characters of `s` are vowels (a, e, i, o, u, either case).",
     "    return sum(c in 'aeiouAEIOU' for c in s)\n",
     lambda r: ("".join(r.choice("abcdeiouxyzAEIOU ") for _ in range(r.randint(0, 15))),)),
    ("reverse_words", "s: str", "str", "Return the words of `s` in reverse order, joined by single spaces.",
     "    return ' '.join(reversed(s.split()))\n",
     lambda r: (" ".join(r.choice(["cat", "dog", "owl", "a", "bee"]) for _ in range(r.randint(0, 6))),)),
    ("running_max", "nums: list", "list", "Return the list whose i-th item is the largest of nums[0..i].",
     "    out, best = [], None\n    for x in nums:\n        best = x if best is None or x > best else best\n"
     "        out.append(best)\n    return out\n",
     lambda r: ([r.randint(-50, 50) for _ in range(r.randint(0, 9))],)),
    ("second_largest", "nums: list", "int | None",
     "Return the second largest distinct value of `nums`, or None if there is none.",
     "    values = sorted(set(nums))\n    return values[-2] if len(values) > 1 else None\n",
     lambda r: ([r.randint(0, 6) for _ in range(r.randint(0, 6))],)),
    ("is_palindrome", "s: str", "bool",
     "Return True if `s` reads the same backwards, ignoring case and anything that is not a letter or digit.",
     "    t = [c.lower() for c in s if c.isalnum()]\n    return t == t[::-1]\n",
     lambda r: (r.choice(["Racecar", "No lemon, no melon", "abca", "", "ab", "Was it a rat I saw?", "xyz"]),)),
    ("digit_sum", "n: int", "int", "Return the sum of the decimal digits of abs(n).",
     "    return sum(int(d) for d in str(abs(n)))\n",
     lambda r: (r.randint(-10**6, 10**6),)),
    ("char_counts", "s: str", "dict", "Return a dict mapping each character of `s` to how often it occurs.",
     "    out = {}\n    for c in s:\n        out[c] = out.get(c, 0) + 1\n    return out\n",
     lambda r: ("".join(r.choice("abcab") for _ in range(r.randint(0, 8))),)),
]

_STDIN_TEMPLATES = [
    ("sum_list", "The first line holds n, the second n integers. Print their sum.",
     "def solve(data):\n    t = data.split()\n    return str(sum(int(x) for x in t[1:1 + int(t[0])]))\n",
     lambda r: (lambda xs: f"{len(xs)}\n{' '.join(map(str, xs))}\n")([r.randint(-1000, 1000) for _ in range(r.randint(1, 10))])),
    ("min_max", "The first line holds n, the second n integers. Print the smallest and the largest, separated by a space.",
     "def solve(data):\n    t = [int(x) for x in data.split()[1:]]\n    return f'{min(t)} {max(t)}'\n",
     lambda r: (lambda xs: f"{len(xs)}\n{' '.join(map(str, xs))}\n")([r.randint(-99, 99) for _ in range(r.randint(1, 8))])),
    ("products", "The first line holds T; each of the next T lines holds two integers a and b. Print a*b for each, one per line.",
     "def solve(data):\n    t = data.split()\n    n = int(t[0])\n"
     "    return '\\n'.join(str(int(t[1 + 2 * i]) * int(t[2 + 2 * i])) for i in range(n))\n",
     lambda r: (lambda ps: f"{len(ps)}\n" + "".join(f"{a} {b}\n" for a, b in ps))(
         [(r.randint(-10**9, 10**9), r.randint(-10**9, 10**9)) for _ in range(r.randint(1, 5))])),
    ("mean", "The first line holds n, the second n integers. Print their mean (an absolute or relative error of 1e-6 is accepted).",
     "def solve(data):\n    t = [int(x) for x in data.split()[1:]]\n    return repr(sum(t) / len(t))\n",
     lambda r: (lambda xs: f"{len(xs)}\n{' '.join(map(str, xs))}\n")([r.randint(0, 100) for _ in range(r.randint(1, 7))])),
]

N_GENERATED_TESTS = 8
N_PUBLIC_TESTS = 2


def generate_task(seed: int) -> Task:
    """A small problem with tests and a reference solution, the same for the same seed.

    Half are function completions (tests call the function), half read stdin; the first two tests are
    public (shown as examples in the prompt), the others hidden.
    """
    rng = random.Random(seed)
    if rng.random() < 0.5:
        name, params, ret, doc, body, gen = rng.choice(_CALL_TEMPLATES)
        ns: dict[str, Any] = {}
        exec(f"def {name}({params}):\n{body}", ns)  # our own reference code: computes the expected values
        argsets = [gen(rng) for _ in range(N_GENERATED_TESTS)]
        examples = "".join(f"    >>> {name}({', '.join(map(repr, a))})\n    {ns[name](*a)!r}\n" for a in argsets[:N_PUBLIC_TESTS])
        prompt = f'def {name}({params}) -> {ret}:\n    """{doc}\n\n{examples}    """\n'
        check = "def check(candidate):\n" + "".join(
            f"    assert candidate({', '.join(map(repr, a))}) == {ns[name](*a)!r}\n" for a in argsets)
        return Task(id=f"gen/{name}/{seed}", prompt=prompt, answer=f"def {name}({params}) -> {ret}:\n{body}",
                    tests=check, metadata={"entry_point": name, "public_tests": N_PUBLIC_TESTS, "source": "generated"})
    name, statement, solve_src, gen = rng.choice(_STDIN_TEMPLATES)
    ns = {}
    exec(solve_src, ns)
    inputs = [gen(rng) for _ in range(N_GENERATED_TESTS)]
    tests = [{"input": i, "output": ns["solve"](i) + "\n", "testtype": "stdin", "public": k < N_PUBLIC_TESTS}
             for k, i in enumerate(inputs)]
    examples = "".join(f"\n\nExample {k + 1}\nInput:\n{t['input'].rstrip()}\nOutput:\n{t['output'].rstrip()}"
                       for k, t in enumerate(tests[:N_PUBLIC_TESTS]))
    program = f"import sys\n\n{solve_src}\nprint(solve(sys.stdin.read()))\n"
    tolerance = {"float_tolerance": 1e-6} if "error of 1e-6 is accepted" in statement else {}
    return Task(id=f"gen/{name}/{seed}", prompt=statement + examples, answer=program, tests=tests,
                metadata={"source": "generated", **tolerance})


def load_tasks(source: str | Path) -> list[Task]:
    """Tasks from a name ("humaneval") or a file: HumanEval .jsonl(.gz) or LiveCodeBench-format JSONL."""
    from cwm_envs.sources.code import load_humaneval, load_livecodebench

    if str(source).lower() == "humaneval":
        return load_humaneval()
    path = Path(source)
    first = next(iter(read_jsonl(path)), None)
    if first is None:
        raise UsageError(f"{path}: no rows")
    if "canonical_solution" in first:
        return load_humaneval(path)
    if "question_id" in first:
        return load_livecodebench(path)
    raise UsageError(f"{path}: neither HumanEval nor LiveCodeBench rows")


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
            loaded = load_tasks(tasks)
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

