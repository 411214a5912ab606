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
4. The seal, for tests run by pytest: the harness loads a plugin of its own (`SEAL_PLUGIN`, written into
   the grading container only, under a random name) that records each test's outcome and, when the session
   ends, writes them signed with a one-time key the plugin reads and deletes at start-up. A test the log
   reads as passing counts only if the seal confirms it; no valid seal (the runner exited early with
   `os._exit`, was killed, or the record was forged) resolves nothing. So printed PASSED lines, filtered
   FAILED lines and a forced exit status 0 no longer pay.
Still out of reach: code under test that patches the runner inside its own process (it shares the process,
so it could find the key); other runners (django, sympy, tox) keep guards 1-3 only. What the patch may
change at all is decided before the tests run (patch_rules.py, harness.py).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path

START, END = ">>>>> Start Test Output", ">>>>> End Test Output"
EXIT_MARK = ">>>>> Test Exit Code"
_FAIL_LINE = re.compile(r"^(?:FAILED|ERROR)\s+(\S+)", re.M)


HEADER = "#!/bin/bash\nset -uxo pipefail\n"
# Lines of an eval script's setup that shape the shell the tests run in (activation, directory, variables).
_SHELL_STATE = re.compile(r"^(?:source |\. |conda activate |cd |export |unset )")


def with_exit_code(eval_script: str) -> str:
    """The eval script, recording the test command's exit status after the end marker (swebench 5.x's
    own `record_test_exit_code`), so `get_logs_eval` can cross-check the log against it."""
    from swebench.harness.utils import parse_eval_script, record_test_exit_code

    lines = record_test_exit_code(parse_eval_script(eval_script))
    return HEADER + "\n".join(lines) + "\n"


def split_eval(script: str) -> tuple[str, str] | None:
    """`with_exit_code`'s script cut at the start marker: the setup part (activation, install, test files
    reset, test patch) and the test part, which first repeats the setup's shell-state lines (activation,
    `cd`, `export`) so the tests run as in one script. Between the two the grader checks what the setup
    did and every process it left is gone. None when the script has no such marker line.

    >>> script = HEADER + "source a\\ncd /testbed\\npip install -e .\\n: '>>>>> Start Test Output'\\nt\\n"
    >>> setup, tests = split_eval(script)
    >>> tests.splitlines()[2:]
    ['source a', 'cd /testbed', ": '>>>>> Start Test Output'", 't']
    """
    lines = script.split("\n")
    marker = f": '{START}'"
    if marker not in lines:
        return None
    at = lines.index(marker)
    setup, state, heredoc = lines[:at], [], None
    for line in setup[2:]:                               # skip the header; never read inside a here-document
        if heredoc is not None:
            heredoc = None if line == heredoc else heredoc
            continue
        m = re.search(r"<<-?\s*'?(\w+)'?\s*$", line)
        if m:
            heredoc = m.group(1)
        elif _SHELL_STATE.match(line):
            state.append(line)
    return "\n".join(setup) + "\n", HEADER + "\n".join(state + lines[at:])


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


# --- guard 4: the seal ------------------------------------------------------------------------------------

# Python 3.5-compatible and pytest >= 3.0 (old SWE-bench environments pin pytest 3.x); %(key)r and %(out)r are
# filled in per grading.
SEAL_PLUGIN = '''"""cwm-envs grader: records every test outcome and seals them at the end of the session."""
import hashlib
import hmac
import json
import os
import sys
from unittest import SkipTest

import pytest

# What decides a test's outcome inside pytest; code under test that replaces any of them voids the seal.
_WATCHED = (("_pytest.runner", "CallInfo", "from_call"), ("_pytest.runner", None, "call_and_report"),
            ("_pytest.runner", None, "call_runtest_hook"), ("_pytest.runner", None, "runtestprotocol"),
            ("_pytest.runner", None, "pytest_runtest_makereport"), ("_pytest.reports", "TestReport", "__init__"),
            ("_pytest.reports", "TestReport", "from_item_and_call"), ("_pytest.python", "Function", "runtest"),
            ("_pytest.python", None, "pytest_pyfunc_call"), ("_pytest.skipping", None, "pytest_runtest_makereport"),
            ("_pytest.runner", "CallInfo", "__init__"), ("_pytest.runner", "TestReport", "__init__"))
# pytest < 3.10 has no _pytest.reports (TestReport lives in _pytest.runner, CallInfo calls in __init__).
_MODULES = ("_pytest.python", "_pytest.reports", "_pytest.runner", "_pytest.skipping")


def _fingerprint():
    prints = {}
    for module, owner, name in _WATCHED:
        obj = sys.modules.get(module)
        if obj is not None and owner:
            obj = getattr(obj, owner, None)
        raw = obj.__dict__.get(name) if obj is not None and hasattr(obj, "__dict__") else None
        func = getattr(raw, "__func__", raw)
        prints["%%s.%%s" %% (owner or module, name)] = (id(raw), id(getattr(func, "__code__", None)))
    return prints


def _recorder():
    try:
        with open(%(key)r, "rb") as fh:
            key = fh.read()
        os.unlink(%(key)r)
    except OSError:                  # not the grader's run (a nested pytest): do nothing
        return None
    passed, xfailed, failed, tampered = set(), set(), set(), set()
    for module in _MODULES:
        try:
            __import__(module)
        except ImportError:
            pass
    expected = _fingerprint()

    def check():
        now = _fingerprint()
        tampered.update(k for k in expected if now.get(k) != expected[k])

    class Recorder(object):
        @pytest.hookimpl(hookwrapper=True, tryfirst=True)
        def pytest_runtest_makereport(self, item, call):
            check()
            raised = call.excinfo is not None and not call.excinfo.errisinstance((pytest.skip.Exception, SkipTest))
            outcome = yield
            report = outcome.get_result()
            marker = getattr(item, "get_closest_marker", None) or getattr(item, "get_marker", None)
            xfail = (marker is None or marker("xfail") is not None or
                     (call.excinfo is not None and call.excinfo.errisinstance(pytest.xfail.Exception)))
            if raised and not xfail:     # the test raised: failed, whatever the report says
                failed.add(report.nodeid)

        def pytest_runtest_logreport(self, report):
            if report.failed:
                failed.add(report.nodeid)
            elif report.skipped and hasattr(report, "wasxfail"):
                xfailed.add(report.nodeid)
            elif report.when == "call" and report.passed and not hasattr(report, "wasxfail"):
                passed.add(report.nodeid)

        def pytest_sessionfinish(self, session, exitstatus):
            check()
            body = json.dumps({"passed": sorted(passed - failed), "xfailed": sorted(xfailed - failed),
                               "failed": sorted(failed), "exitstatus": int(exitstatus),
                               "tampered": sorted(tampered)}, sort_keys=True)
            mac = hmac.new(key, body.encode("utf-8"), hashlib.sha256).hexdigest()
            fd = os.open(%(out)r, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.write(fd, (mac + "\\n" + body).encode("utf-8"))
            os.close(fd)

    return Recorder()


_pending = [_recorder()]


def pytest_configure(config):
    if _pending[0] is not None:      # the first session only: not the in-process runs of pytester
        config.pluginmanager.register(_pending.pop(), "cwm-seal")
        _pending.append(None)
'''

# Parsers that read pytest's own status lines (each repository's name for them aliases one of these): the
# seal can be checked against what they read.
PYTEST_PARSERS = ("parse_log_pytest", "parse_log_pytest_options", "parse_log_pytest_v2", "parse_log_matplotlib",
                  "parse_log_seaborn")


@dataclass
class Seal:
    """One grading's seal: the plugin's name and files in the container, its key, and what came back."""

    module: str = field(default_factory=lambda: "cwm_seal_" + secrets.token_hex(8))
    key: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    results: dict | None = None                 # the verified record, once read back
    why: str = "the test run left no seal"

    @property
    def key_path(self) -> str:
        return f"/run/{self.module}.key"

    @property
    def out_path(self) -> str:
        return f"/run/{self.module}.json"

    def plugin_source(self) -> str:
        return SEAL_PLUGIN % {"key": self.key_path, "out": self.out_path}

    def read(self, raw: bytes | None) -> None:
        """Verify what the plugin wrote (None: nothing was written) and keep it as `results`."""
        if not raw:
            self.results, self.why = None, ("the test runner never finished its session (no seal): it exited "
                                            "early (os._exit, a signal) or never started")
            return
        mac, _, body = raw.decode("utf-8", "replace").partition("\n")
        good = hmac.new(self.key, body.encode("utf-8"), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(mac.strip(), good):
            self.results, self.why = None, "the seal of the test run does not verify: the record was forged"
            return
        record = json.loads(body)
        if record.get("tampered"):
            self.results, self.why = None, ("the code under test replaced pytest's own machinery during the run ("
                                            + ", ".join(record["tampered"]) + "): its outcomes cannot be trusted")
            return
        self.results, self.why = record, ""


def seal_applies(instance) -> bool:
    """Whether a seal is asked of this instance: its test command runs pytest once, directly, and its log
    parser reads pytest's status lines. (tox, django's and sympy's runners: no seal.)"""
    from swebench.harness.log_parsers import PARSER_REGISTRY

    parser = PARSER_REGISTRY.get(instance.log_parser)
    if parser is None or parser not in {PARSER_REGISTRY[name] for name in PYTEST_PARSERS}:
        return False
    section = instance.eval_script.split(START, 1)[-1].split(END, 1)[0]
    runs = re.findall(r"(?:^|\s)(?:py\.test|pytest|python3?(?:\.\d+)?\s+-m\s+pytest)(?=\s|$)", section, re.M)
    return len(runs) == 1 and "PYTEST_ADDOPTS" not in instance.eval_script


def unconfirmed_tests(instance, status_map: dict[str, str], seal: Seal) -> list[str]:
    """Tests the log reads as passing that the seal does not confirm: the seal's outcomes are written as
    pytest's status lines and read by the instance's own parser, so names match however it transforms them."""
    from swebench.harness.log_parsers import PARSER_REGISTRY

    record = seal.results or {}
    lines = [f"PASSED {t}" for t in record.get("passed", [])] + [f"XFAIL {t}" for t in record.get("xfailed", [])]
    confirmed = PARSER_REGISTRY[instance.log_parser]("\n".join(lines), instance.test_spec())
    return sorted(t for t, s in status_map.items()
                  if s in ("PASSED", "XFAIL") and confirmed.get(t) not in ("PASSED", "XFAIL"))


def grade_log(instance, model_patch: str | None, log_path: str | Path, seal: Seal | None = None) -> dict:
    """The official per-instance report ({instance_id: {...}}) for an eval log, with our guards applied.

    `seal`: the grading's seal when one was asked for (guard 4). Extra keys beside the official ones: `guard`
    (why a log was not trusted), `conflicting_tests`, `unconfirmed_tests`.
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
    if seal is not None and seal.results is None:
        rep["guard"] = seal.why
        return {iid: rep}
    conflicts = conflicting_tests(log, status_map)
    for test in conflicts:
        status_map[test] = "FAILED"
    if conflicts:
        rep["conflicting_tests"] = conflicts
    unconfirmed = unconfirmed_tests(instance, status_map, seal) if seal is not None else []
    for test in unconfirmed:
        status_map[test] = "FAILED"
    if unconfirmed:
        rep["unconfirmed_tests"] = unconfirmed
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

