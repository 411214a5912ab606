"""Code rewards: find the one code block of a response, compare program output, and score test outcomes.

The environment runs the tests in a sandbox; this module only judges the evidence it is handed. CWM's
scheme is +1 when the response holds exactly one code block and every test passed within its time and
memory limits, else -1; the "fraction" scheme gives the share of tests passed (0 when nothing ran).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Sequence

from rewards.base import RewardResult

SCHEMES = ("cwm", "fraction")

# A fenced block: ``` or ~~~ (3+), an optional info string, the body, the same fence alone on its line.
_FENCE = re.compile(r"^[ \t]*(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^\n`]*)\n(?P<body>.*?)^[ \t]*(?P=fence)[ \t]*$",
                    re.MULTILINE | re.DOTALL)
_THINK_END = "</think>"


@dataclass(frozen=True)
class Extraction:
    """The code found in a response: `code` is None unless the format rule held; `reason` says why not."""

    code: str | None
    n_blocks: int
    reason: str = ""


def extract_code(response: str, require_think: bool = False) -> Extraction:
    """The single fenced code block of `response`, judged after `</think>` when the response reasons.

    The format rule is "exactly one code block": none or several is a parse failure. With
    `require_think`, the response must also hold exactly one `</think>` (CWM's reasoning format).

    >>> extract_code("Here:\\n```python\\nprint(1)\\n```\\n").code
    'print(1)\\n'
    >>> extract_code("<think>\\ntry ```x```\\n</think>\\n```py\\nx = 2\\n```").code
    'x = 2\\n'
    >>> e = extract_code("```\\na\\n```\\n```\\nb\\n```")
    >>> e.code, e.n_blocks, e.reason
    (None, 2, 'expected exactly one code block, found 2')
    >>> extract_code("no code", require_think=True).reason
    'expected exactly one </think>, found 0'
    """
    n_think = response.count(_THINK_END)
    if n_think > 1 or (require_think and n_think != 1):
        return Extraction(None, 0, f"expected exactly one {_THINK_END}, found {n_think}")
    answer = response.split(_THINK_END, 1)[1] if n_think else response
    blocks = [m.group("body") for m in _FENCE.finditer(answer)]
    if len(blocks) != 1:
        return Extraction(None, len(blocks), f"expected exactly one code block, found {len(blocks)}")
    return Extraction(blocks[0], 1)


_INT = re.compile(r"[+-]?\d+\Z")
_DECIMAL = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\Z")


def _int_key(token: str) -> tuple[bool, str]:
    """An integer token as (negative, digits) without `int()`: Python refuses to convert a string of more than
    4300 digits, and a program may print one."""
    digits = token.lstrip("+-").lstrip("0") or "0"
    return token.startswith("-") and digits != "0", digits


def _tokens_match(got: str, want: str, float_tol: float | None) -> bool:
    if got == want:
        return True
    if _INT.match(want):                 # an integer is answered by an integer, exactly, however long
        return bool(_INT.match(got)) and _int_key(got) == _int_key(want)
    if not (_DECIMAL.match(got) and _DECIMAL.match(want)):
        return False
    if float_tol is None:                # the same number, written differently (`0.50` for `0.5`)
        return Decimal(got) == Decimal(want)
    return math.isclose(float(got), float(want), rel_tol=float_tol, abs_tol=float_tol)


def outputs_match(got: str, expected: str, float_tol: float | None = None) -> bool:
    """Whether a program's stdout answers `expected`, as competitive-programming judges compare.

    Line ends, trailing spaces and trailing blank lines are ignored; otherwise lines are compared token by
    token. An expected integer needs an integer equal to it; other numbers must have the same exact value,
    or, only where the task gives a `float_tol`, be within that relative or absolute tolerance.

    >>> outputs_match("3 4\\r\\n5  \\n\\n", "3 4\\n5")
    True
    >>> outputs_match("0.50", "0.5"), outputs_match("0.3333333", "0.333333333")
    (True, False)
    >>> outputs_match("0.3333333", "0.333333333", float_tol=1e-6), outputs_match("1.5", "1.6", float_tol=1e-6)
    (True, False)
    >>> outputs_match("3.0000001", "3", float_tol=1e-6), outputs_match("12345678901234567891", "12345678901234567890")
    (False, False)
    >>> outputs_match("1\\n2", "1 2"), outputs_match("-0", "0"), outputs_match("9" * 5000, "1")
    (False, True, False)
    """
    def lines(text: str) -> list[list[str]]:
        rows = [line.split() for line in text.replace("\r\n", "\n").split("\n")]
        while rows and not rows[-1]:
            rows.pop()
        return rows

    g, w = lines(got), lines(expected)
    if len(g) != len(w):
        return False
    return all(len(a) == len(b) and all(_tokens_match(x, y, float_tol) for x, y in zip(a, b))
               for a, b in zip(g, w))


@dataclass(frozen=True)
class TestOutcome:
    """One test as the sandbox ran it. `status` is "pass", "wrong answer", "runtime error", "timeout",
    "memory", "output limit", ...; `detail` is short evidence (an error line, a diff)."""

    __test__ = False  # not a pytest test class

    name: str
    passed: bool
    public: bool = False
    status: str = ""
    detail: str = ""


def code_reward(parsed: bool, compiled: bool | None, tests: Sequence[TestOutcome], scheme: str = "cwm",
                expected_total: int | None = None, reason: str = "") -> RewardResult:
    """Score a submission from its evidence.

    `parsed`: the format rule held (exactly one code block); `compiled`: the code compiled (None when it
    never got that far); `tests`: what ran; `expected_total`: how many tests the task has (tests that never
    ran, e.g. after an early stop, count as failed). Outcomes: `parse`, `compile`, `pass`, `public_pass`
    (None when the task has no public test), `passed`, `total`, `failures` (the first few failing tests).

    >>> ok = [TestOutcome("t0", True, public=True), TestOutcome("t1", True)]
    >>> r = code_reward(True, True, ok)
    >>> r.value, r.outcomes["pass"], r.outcomes["public_pass"]
    (1.0, True, True)
    >>> bad = ok[:1] + [TestOutcome("t1", False, status="timeout")]
    >>> code_reward(True, True, bad).value, code_reward(True, True, bad, scheme="fraction").value
    (-1.0, 0.5)
    >>> code_reward(False, None, [], reason="expected exactly one code block, found 0").details
    'parse failed: expected exactly one code block, found 0'
    >>> code_reward(True, True, ok[:1], expected_total=2).value  # a test that never ran is a failure
    -1.0
    """
    if scheme not in SCHEMES:
        raise ValueError(f"unknown reward scheme {scheme!r}; choose one of {SCHEMES}")
    total = max(len(tests), expected_total or 0)
    passed = sum(t.passed for t in tests)
    public = [t for t in tests if t.public]
    all_pass = bool(parsed and compiled and total > 0 and passed == total)
    failures = [{"name": t.name, "status": t.status, "detail": t.detail[:500]} for t in tests if not t.passed][:5]
    outcomes = {
        "parse": parsed,
        "compile": compiled,
        "pass": all_pass,
        "public_pass": None if not public else bool(parsed and compiled and all(t.passed for t in public)),
        "passed": passed,
        "total": total,
        "failures": failures,
    }
    if not parsed:
        details = f"parse failed: {reason}" if reason else "parse failed"
    elif not compiled:
        details = f"compile failed: {reason}" if reason else "compile failed"
    elif all_pass:
        details = f"all {total} tests passed"
    else:
        first = failures[0] if failures else {"name": "-", "status": "not run"}
        details = f"{passed}/{total} tests passed; first failure {first['name']}: {first['status']}"
    if scheme == "cwm":
        value = 1.0 if all_pass else -1.0
    else:
        value = passed / total if parsed and compiled and total else 0.0
    return RewardResult(value, outcomes, details)


__all__ = ["Extraction", "SCHEMES", "TestOutcome", "code_reward", "extract_code", "outputs_match"]
