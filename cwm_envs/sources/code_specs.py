"""The tests of a code task as something the sandbox can run: every code source becomes one of two shapes.

- `CallSpec`: tests that call the solution (HumanEval's `check(candidate)`, LiveCodeBench functional rows, the
  generator's call tasks), each test statement wrapped so that one failure does not hide the others;
- `StdinSpec`: (input, expected output, public) triples for stdin/stdout programs.

`spec_for(task)` compiles a Task into its spec; a task without usable tests is a UsageError naming it.
"""
from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from typing import Sequence

from cwm_envs.errors import UsageError
from cwm_envs.tasks import Task

_LCB_PRELUDE = "from typing import *\n"  # LeetCode starter code names List, Optional... without importing them


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


def _wrap_check(test_code: str, where: str, public_units: int = 0, entry: str = "") -> tuple[tuple, str, str]:
    """Wrap each top-level test statement (one whose `assert` reads the candidate or a name `check` binds) of
    `check(candidate)` in try/except.

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
    # a unit tests the candidate: its assert reads the candidate or a name check() binds; `assert True, "..."`
    # (HumanEval has dozens) is no test, and would pay a "fraction" share to a solution that does nothing
    bound = {check.args.args[0].arg, entry} | {n.id for n in ast.walk(check) if isinstance(n, ast.Name)
                                               and isinstance(n.ctx, ast.Store)}
    units, body = [], []
    for stmt in check.body:
        if any(isinstance(n, ast.Assert) for n in ast.walk(stmt)) and any(
                isinstance(n, ast.Name) and n.id in bound for n in ast.walk(stmt)):
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
    units, module, public_module = _wrap_check(test_code, where, public_units, entry[-1])
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


__all__ = ["CallSpec", "StdinSpec", "spec_for"]
