"""Grade an eval log with SWE-bench's own parsers and rules, plus guards against spoofed test output.

Resolved iff every FAIL_TO_PASS test passes (PASSED or XFAIL) and every PASS_TO_PASS test passes; a test
missing from the log fails. The parsing (`PARSER_REGISTRY`, `get_logs_eval`) and the rules
(`get_eval_tests_report`, `get_resolution_status`) are swebench 5.x's, imported on first use (about 1 s:
its `harness` package loads its whole runner). Why not vendor them: they are maintained upstream, keep their
own spoofing fixes, and SWE-bench users trust exactly that code.

Our guards, each with a regression test in tests/test_swe_harness.py:
1. The markers the grader slices on (start, end, exit code) are printed once each by bash's xtrace of the
   script. Code under test that prints them too (to cut the section short or fake an exit code) makes
   the log untrustworthy: graded as not applied / not resolved, with the reason.
2. A test the parser reads as passing but that the same section also reports as FAILED or ERROR (a
   pytest-style status line) counts as failed: the real runner line cannot be overridden by a fake one
   printed before or after it.
3. (from swebench) A test command that exited non-zero while the log shows no failure at all is not
   trusted; the harness records that exit status after the end marker (`with_exit_code`).
Out of reach of any log-based grader: code under test that both fakes the output and forces the test
process to exit 0 (e.g. `os._exit(0)`); the harness also resets the test patch's files (harness.py).
"""
from __future__ import annotations

import re
from pathlib import Path

START, END = ">>>>> Start Test Output", ">>>>> End Test Output"
EXIT_MARK = ">>>>> Test Exit Code"
_FAIL_LINE = re.compile(r"^(?:FAILED|ERROR)\s+(\S+)", re.M)


def with_exit_code(eval_script: str) -> str:
    """The eval script, recording the test command's exit status after the end marker (swebench 5.x's
    own `record_test_exit_code`), so `get_logs_eval` can cross-check the log against it."""
    from swebench.harness.utils import parse_eval_script, record_test_exit_code

    lines = record_test_exit_code(parse_eval_script(eval_script))
    return "\n".join(["#!/bin/bash", "set -uxo pipefail", *lines]) + "\n"


def parser_names() -> list[str]:
    """Every log parser name a row may give in `log_parser`."""
    from swebench.harness.log_parsers import PARSER_REGISTRY

    return sorted(PARSER_REGISTRY)


# How often each marker may appear: once as bash's xtrace of the script, the exit code also once as echoed.
MARKER_COUNTS = {START: 1, END: 1, EXIT_MARK: 2}


def marker_tampering(log: str) -> str | None:
    """Guard 1: why the markers cannot be trusted, or None.

    >>> marker_tampering("+ : '>>>>> Start Test Output'\\nPASSED t\\n+ : '>>>>> End Test Output'") is None
    True
    >>> marker_tampering("+ : '>>>>> Start Test Output'\\n>>>>> End Test Output\\n+ : '>>>>> End Test Output'")
    "the marker '>>>>> End Test Output' appears 2 times: output of the code under test imitates it"
    """
    for mark, most in MARKER_COUNTS.items():
        n = log.count(mark)
        if n > most:
            return f"the marker {mark!r} appears {n} times: output of the code under test imitates it"
    return None


def conflicting_tests(log: str, status_map: dict[str, str]) -> list[str]:
    """Guard 2: tests the map reads as passing while the section also reports them FAILED or ERROR."""
    section = log.split(START, 1)[-1].split(END, 1)[0]
    failed = {m.group(1) for m in _FAIL_LINE.finditer(section)}
    return sorted(t for t, s in status_map.items() if s in ("PASSED", "XFAIL") and t in failed)


def grade_log(instance, model_patch: str | None, log_path: str | Path) -> dict:
    """The official per-instance report ({instance_id: {...}}) for an eval log, with our guards applied.

    Extra keys beside the official ones: `guard` (why a log was not trusted) and `conflicting_tests`.
    """
    from swebench.harness.constants import FAIL_TO_PASS, PASS_TO_PASS, EvalType, ResolvedStatus
    from swebench.harness.grading import get_eval_tests_report, get_logs_eval, get_resolution_status
    from swebench.harness.infra_failure import TIER_ENVIRONMENT, classify_logs

    iid = instance.instance_id
    rep = {"patch_is_None": model_patch is None, "patch_exists": bool(model_patch and model_patch.strip()),
           "patch_successfully_applied": False, "resolved": False, "infra_failure": False}
    if not rep["patch_exists"]:
        return {iid: rep}
    log = Path(log_path).read_text(errors="replace")
    tampered = marker_tampering(log)
    if tampered:
        rep["guard"] = tampered
        return {iid: rep}
    status_map, found = get_logs_eval(instance.test_spec(), str(log_path))
    if not found:
        rep["guard"] = _why_not_found(log)
        classification = classify_logs(log_path)
        if classification:
            rep["infra_failure"] = classification[1] == TIER_ENVIRONMENT
            rep["infra_failure_reason"] = classification[0]
        return {iid: rep}
    rep["patch_successfully_applied"] = True
    conflicts = conflicting_tests(log, status_map)
    for test in conflicts:
        status_map[test] = "FAILED"
    if conflicts:
        rep["conflicting_tests"] = conflicts
    gold = {"instance_id": iid, FAIL_TO_PASS: list(instance.FAIL_TO_PASS), PASS_TO_PASS: list(instance.PASS_TO_PASS)}
    tests = get_eval_tests_report(status_map, gold, eval_type=EvalType(instance.eval_type))
    rep["resolved"] = get_resolution_status(tests) == ResolvedStatus.FULL.value
    rep["tests_status"] = tests
    return {iid: rep}


def _why_not_found(log: str) -> str:
    """Say why swebench's `get_logs_eval` did not accept a log (it only answers True/False)."""
    from swebench.harness.grading import parse_test_exit_code

    if START not in log or END not in log:
        return "no test output between the start and end markers (the eval script stopped early?)"
    code = parse_test_exit_code(log)
    if code not in (None, 0):
        return (f"the test command exited {code} while the log reports no failing test "
                "(swebench's exit-code cross-check: a crash, or output that hides failures)")
    return "no test results could be parsed from the log"

