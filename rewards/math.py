"""Math answer verification: `verify(gold, response)` -> RewardResult (1.0 correct, 0.0 wrong by default).

`gold` is a bare answer as datasets give it (`\\frac{3}{4}`, `(3, \\frac{\\pi}{2})`, `\\text{Evelyn}`,
`10\\%`; a full solution works too: its last `\\boxed{}` is used). `response` is a model's whole output.

>>> verify(r"\\frac{3}{4}", r"Adding up, the probability is $\\boxed{0.75}$.").value
1.0
>>> verify("10^{-10}", r"\\boxed{10^{-11}}").value
0.0
>>> r = verify("(x+1)^2", r"**Answer.** \\boxed{x^2 + 2x + 1}")
>>> r.value, r.outcomes["extracted"], r.outcomes["extraction"]
(1.0, 'x^2 + 2x + 1', 'boxed')
>>> is_equivalent("y = 2x + 3", "y=3+2x")
True

How (see `rewards.math_extract` for extraction and `rewards.math_compare` for the equivalence rules):
1. extraction, in the caller's process: the last `\\boxed{}` (after the last `</think>` when there is one),
   then, unless `extractors` says otherwise, "The final answer is ...", "Answer: ...", a bold final value,
   the last formula, the last number; the chosen span and method go into the evidence;
2. equal normalised strings are equal without further work, and two plain numbers (integers, decimals,
   integer fractions) are compared as exact fractions in the caller's process;
3. otherwise the exact comparison runs in a helper process under a hard time limit (`timeout`, default
   5 s), safe in any thread, asyncio task or Ray actor (`rewards.math_worker`). A timeout scores as wrong
   with `timed_out` in the evidence.

Bad input (None, bytes, a megabyte of braces) never raises: it scores as wrong, with the reason. Only a
helper process that cannot start raises `VerifierUnavailable` (a machine fault, not a wrong answer).

`cwm_reward(gold, response)` adds CWM's format rules (exactly one `</think>` when thinking, exactly one
`\\boxed{}`) and its +1/-1 scale; environments use it.
"""
from __future__ import annotations

import re
import threading
import time
from fractions import Fraction
from typing import Literal, Sequence

from rewards.base import RewardResult
from rewards.math_extract import (
    DEFAULT_EXTRACTORS,
    Extraction,
    count_boxed,
    extract_answer,
    find_boxed,
    gold_answer,
    normalize,
    strip_math_delimiters,
)
from rewards.math_worker import _POOLS, VerifierUnavailable, WorkerPool, run_in_thread

DEFAULT_TIMEOUT_S = 5.0
APPROX_MIN_DIGITS = 12   # as rewards.math_compare: a decimal this long may stand for a non-terminating value
Isolation = Literal["process", "thread", "inline"]

_settings = {"isolation": "process", "workers": 2, "memory_mb": 4096}
_pool: WorkerPool | None = None
_pool_lock = threading.Lock()


def configure(isolation: Isolation | None = None, workers: int | None = None, memory_mb: int | None = None) -> None:
    """Choose how the sympy part runs.

    isolation: "process" (default; a hard, killable time limit), "thread" (a daemon thread we stop
    waiting for: no extra process, but a runaway computation keeps its CPU), "inline" (no limit; for
    debugging). workers: helper processes shared by all threads (default 2). memory_mb: each helper's
    address-space limit (default 4096).
    """
    global _pool
    if isolation is not None and isolation not in ("process", "thread", "inline"):
        raise ValueError(f"isolation must be 'process', 'thread' or 'inline', not {isolation!r}")
    with _pool_lock:
        for key, value in (("isolation", isolation), ("workers", workers), ("memory_mb", memory_mb)):
            if value is not None:
                _settings[key] = value
        if _pool is not None:
            _pool.shutdown()
            _POOLS.remove(_pool)
            _pool = None


def shutdown() -> None:
    """Stop the helper processes now (they also stop at exit, or when this process dies)."""
    global _pool
    with _pool_lock:
        if _pool is not None:
            _pool.shutdown()
            _POOLS.remove(_pool)
            _pool = None


def helper_pids() -> list[int]:
    """Process ids of the idle helpers (for tests and leak checks)."""
    return _pool.pids() if _pool is not None else []


def _get_pool() -> WorkerPool:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = WorkerPool(_settings["workers"], _settings["memory_mb"])
            _POOLS.append(_pool)
        return _pool


_WEAK_EXTRACTIONS = ("bold", "latex", "last_number", "bare")
_ASSIGNED = re.compile(r"[A-Za-z](?:_\{?\w+\}?)?\s*=\s*([^=]+)")
_SIMPLE_NUMBER = re.compile(r"(-?)(?:([1-9]\d{0,2}(?:,\d{3})+|\d+)(?:\.(\d*))?|\.(\d+)|\\frac\{(\d+)\}\{(\d+)\}|(\d+)/(\d+))")


def _simple_number(s: str) -> tuple[Fraction, int] | None:
    """(value, significant digits of a decimal literal or 0) for an integer, decimal or integer fraction."""
    m = _SIMPLE_NUMBER.fullmatch(s) if len(s) <= 40 else None
    if not m:
        return None
    sign, whole, frac, frac_only, num, den, num2, den2 = m.groups()
    if num or num2:
        n, d = int(num or num2), int(den or den2)
        return (Fraction(-n if sign else n, d), 0) if d else None
    digits = (whole or "0").replace(",", "") + (frac or frac_only or "")
    value = Fraction(int(digits), 10 ** len(frac or frac_only or ""))
    return (-value if sign else value), (len(digits.lstrip("0")) if (frac or frac_only) else 0)


def _compare(gold: str, answer: str, timeout: float, strict_chains: bool = True) -> dict:
    """Normalised-string shortcut, plain numbers in exact fractions here, else the exact comparison in the
    helper process (or as configured)."""
    g, a = normalize(gold), normalize(answer)
    if g and g == a:
        return {"equal": True, "how": "same text after normalisation", "gold": g, "answer": a}
    if "=" not in g:  # `x = 5` answering 5
        m = _ASSIGNED.fullmatch(a)
        a = m.group(1) if m and _simple_number(m.group(1)) else a
    gn, an = _simple_number(g), _simple_number(a)
    if gn and an:
        if gn[0] == an[0]:
            return {"equal": True, "how": "exact", "gold": str(gn[0]), "answer": str(an[0])}
        if max(gn[1], an[1]) < APPROX_MIN_DIGITS:  # long decimals may stand for a fraction: the helper decides
            return {"equal": False, "how": "different", "gold": str(gn[0]), "answer": str(an[0])}
    mode = _settings["isolation"]
    request = {"gold": gold, "answer": answer, "budget": timeout, "strict_chains": strict_chains}
    if mode == "process":
        return _get_pool().run(request, timeout)
    from rewards.math_compare import compare

    def call(gold_text, answer_text, budget):
        v = compare(gold_text, answer_text, deadline=time.monotonic() + budget, strict_chains=strict_chains)
        return {"equal": v.equal, "how": v.how, "gold": v.gold, "answer": v.answer}

    if mode == "thread":
        return run_in_thread(call, (gold, answer, timeout), timeout)
    return call(gold, answer, timeout)


def is_equivalent(gold: str, answer: str, timeout: float = DEFAULT_TIMEOUT_S) -> bool:
    """Do two bare answers denote the same thing? (No extraction: `answer` is the answer itself.)

    >>> is_equivalent(r"\\frac{1}{2004!}", r"\\frac{1}{2006!}"), is_equivalent("[1, 2)", "1 \\\\le x < 2")
    (False, True)
    """
    if not isinstance(gold, str) or not isinstance(answer, str):
        return False
    return bool(_compare(gold_answer(gold), strip_math_delimiters(answer), timeout)["equal"])


def verify(gold: str, response: str, *, extractors: Sequence[str] = DEFAULT_EXTRACTORS,
           timeout: float = DEFAULT_TIMEOUT_S, correct: float = 1.0, wrong: float = 0.0) -> RewardResult:
    """Score a whole `response` against a `gold` answer: `correct` (1.0) when its final answer is equivalent,
    else `wrong` (0.0).

    extractors: which ways of finding the answer are allowed, from
    ("boxed", "final_answer", "answer_is", "bold", "latex", "last_number") (all by default; pass
    ("boxed",) to accept only a boxed answer). timeout: hard limit in seconds on the comparison.

    outcomes: extracted (the answer text), extraction (the method), span ([start, end) in response),
    gold (the gold text compared), equal, how (which rule decided), gold_parsed / answer_parsed (the values
    as read), timed_out, seconds.
    """
    start = time.perf_counter()
    outcomes: dict = {"extracted": None, "extraction": None, "span": None, "gold": None, "equal": False,
                      "how": None, "timed_out": False}
    if not isinstance(gold, str) or not isinstance(response, str):
        outcomes["how"] = "gold and response must be strings"
        return _result(wrong, outcomes, start, "bad input: gold and response must be strings")
    gold_text = gold_answer(gold)
    outcomes["gold"] = gold_text
    if not strip_math_delimiters(gold_text):
        outcomes["how"] = "empty gold"
        return _result(wrong, outcomes, start, "empty gold answer: nothing can match it")
    found = extract_answer(response, tuple(extractors))
    if found is None:
        outcomes["how"] = "no answer found"
        return _result(wrong, outcomes, start, f"no final answer found (looked for: {', '.join(extractors)})")
    outcomes.update(extracted=found.text, extraction=found.method, span=[found.start, found.end])
    # a formula picked from running text may be a derivation (`$\\frac12 \\$ = \\frac{10}{9}$`): its last value
    # counts; a boxed or announced answer must not be a false chain such as `\\boxed{1 = 5}`
    res = _compare(gold_text, found.text, timeout, strict_chains=found.method not in _WEAK_EXTRACTIONS)
    outcomes.update(equal=bool(res.get("equal")), how=res.get("how"), timed_out=bool(res.get("timed_out")),
                    gold_parsed=res.get("gold"), answer_parsed=res.get("answer"))
    verdict = "correct" if outcomes["equal"] else "wrong"
    details = f"{verdict}: {found.method} answer {found.text!r} vs gold {gold_text!r} ({outcomes['how']})"
    return _result(correct if outcomes["equal"] else wrong, outcomes, start, details)


def _result(value: float, outcomes: dict, start: float, details: str) -> RewardResult:
    outcomes["seconds"] = round(time.perf_counter() - start, 6)
    return RewardResult(float(value), outcomes, details)


def cwm_reward(gold: str, response: str, *, think: bool = True, scheme: Literal["cwm", "binary"] = "cwm",
               timeout: float = DEFAULT_TIMEOUT_S) -> RewardResult:
    """CWM's math reward: +1 when the format holds and the boxed answer verifies, else -1 (`scheme="cwm"`),
    or 1/0 (`scheme="binary"`).

    Format: with `think`, exactly one `</think>` (the answer is what follows it); exactly one `\\boxed{}`
    in the answer part.

    >>> cwm_reward("4", "<think>\\n2+2\\n</think>\\nThe sum is $\\\\boxed{4}$.").value
    1.0
    >>> cwm_reward("4", "<think>\\n2+2\\n</think>\\n$\\\\boxed{4}$ or $\\\\boxed{5}$").outcomes["format_ok"]
    False
    """
    if scheme not in ("cwm", "binary"):
        raise ValueError(f"scheme must be 'cwm' or 'binary', not {scheme!r}")
    good, bad = (1.0, -1.0) if scheme == "cwm" else (1.0, 0.0)
    if not isinstance(response, str) or not isinstance(gold, str):
        return RewardResult(bad, {"format_ok": False, "equal": False, "how": "bad input"}, "bad input")
    answer_part = response
    n_think_end = response.count("</think>")
    if think:
        if n_think_end != 1:
            return RewardResult(bad, {"format_ok": False, "think_ends": n_think_end, "boxed": None, "equal": False},
                                f"format: expected exactly one </think>, found {n_think_end}")
        answer_part = response.split("</think>", 1)[1]
    n_boxed = count_boxed(answer_part)
    if n_boxed != 1:
        return RewardResult(bad, {"format_ok": False, "think_ends": n_think_end, "boxed": n_boxed, "equal": False},
                            f"format: expected exactly one \\boxed{{}} in the answer, found {n_boxed}")
    res = verify(gold, answer_part, extractors=("boxed",), timeout=timeout)
    outcomes = {"format_ok": True, "think_ends": n_think_end, "boxed": 1, **res.outcomes}
    if think and outcomes.get("span"):
        offset = len(response) - len(answer_part)
        outcomes["span"] = [outcomes["span"][0] + offset, outcomes["span"][1] + offset]
    return RewardResult(good if res.value > 0 else bad, outcomes, res.details)


__all__ = ["verify", "is_equivalent", "cwm_reward", "extract_answer", "Extraction", "configure", "shutdown",
           "VerifierUnavailable", "DEFAULT_EXTRACTORS", "DEFAULT_TIMEOUT_S", "find_boxed"]
