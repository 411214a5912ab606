"""Trace prediction reward: compare predicted execution frames with the true ones.

Frames are plain mappings with the fields of CWM's trace format: `event` ("call" | "line" | "return" |
"exception"), `source` (the source line), `locals` ({name: repr}, ".." already resolved; empty for
return/exception) and `arg` (the repr of a returned value or raised exception, else None). The environment
parses the model's text (cwm_envs.tracing.format) and hands both lists here.

Exact match means the same number of frames, every field equal, and the same ending (whether the trace
ends with <|end_of_text|>). Partial credit, per field, averaged over the true frames (a missing frame
scores 0): `event_acc`, `line_acc` (source line), `locals_acc` (share of variables, over the union of
names, whose value matches), `arg_acc` (over return/exception frames only). The "partial" value is the
mean credit over the fields the true frames have: event, line, and locals (call/line) or value
(return/exception); a field empty on both sides pays nothing.
"""
from __future__ import annotations

from typing import Mapping, Sequence

from rewards.base import RewardResult

SCHEMES = ("cwm", "binary", "partial")


def locals_credit(pred: Mapping[str, str], true: Mapping[str, str]) -> float:
    """Share of variable names (union of both sides) with equal values; 1.0 when both are empty.

    >>> locals_credit({"a": "1", "b": "2"}, {"a": "1", "b": "3"})
    0.5
    >>> locals_credit({"a": "1"}, {"a": "1", "c": "[]"}), locals_credit({}, {})
    (0.5, 1.0)
    """
    names = set(pred) | set(true)
    if not names:
        return 1.0
    return sum(1 for n in names if n in pred and n in true and pred[n] == true[n]) / len(names)


def frame_credit(pred: Mapping, true: Mapping) -> dict[str, float | None]:
    """Per-field credit of one predicted frame against the true one (`arg` None where the frame has none)."""
    has_arg = true.get("event") in ("return", "exception")
    return {
        "event": float(pred.get("event") == true.get("event")),
        "line": float(pred.get("source") == true.get("source")),
        "locals": locals_credit(pred.get("locals") or {}, true.get("locals") or {}),
        "arg": float(pred.get("arg") == true.get("arg")) if has_arg else None,
    }


def trace_reward(predicted: Sequence[Mapping] | None, expected: Sequence[Mapping], *,
                 predicted_complete: bool = False, expected_complete: bool = False,
                 scheme: str = "cwm", parse_error: str = "") -> RewardResult:
    """Score predicted frames against the expected ones.

    `predicted` is None when the prediction did not parse (`parse_error` says why). Schemes: "cwm" +1 on
    an exact match else -1; "binary" 1 / 0; "partial" the mean credit over the fields the true frames
    have (0 when the prediction did not parse). Outcomes: `parse`, `exact`, `n_expected`, `n_predicted`, `frames_exact`
    (leading frames that match entirely), `ending` (same end-of-trace), and the four `*_acc` figures.

    >>> t = [{"event": "line", "source": "    x = 1\\n", "locals": {"a": "1"}, "arg": None},
    ...      {"event": "return", "source": "    return x\\n", "locals": {}, "arg": "1"}]
    >>> trace_reward(t, t, predicted_complete=True, expected_complete=True).value
    1.0
    >>> p = [t[0], dict(t[1], arg="2")]
    >>> r = trace_reward(p, t, predicted_complete=True, expected_complete=True)
    >>> r.value, r.outcomes["arg_acc"], r.outcomes["frames_exact"]
    (-1.0, 0.0, 1)
    >>> trace_reward(None, t, parse_error="no <|frame_sep|>").details
    'parse failed: no <|frame_sep|>'
    >>> trace_reward([], t[:1], scheme="partial").value  # nothing predicted: nothing earned
    0.0
    """
    if scheme not in SCHEMES:
        raise ValueError(f"unknown reward scheme {scheme!r}; choose one of {SCHEMES}")
    n_true = len(expected)
    if predicted is None:
        outcomes = {"parse": False, "exact": False, "n_expected": n_true, "n_predicted": 0, "frames_exact": 0,
                    "ending": False, "event_acc": 0.0, "line_acc": 0.0, "locals_acc": 0.0, "arg_acc": 0.0}
        value = {"cwm": -1.0, "binary": 0.0, "partial": 0.0}[scheme]
        return RewardResult(value, outcomes, f"parse failed: {parse_error}" if parse_error else "parse failed")

    sums = {"event": 0.0, "line": 0.0, "locals": 0.0, "arg": 0.0}
    n_args = sum(1 for f in expected if f.get("event") in ("return", "exception"))
    # the partial value counts only the fields a true frame has (no locals on a return, no value on a line),
    # so that a missing or junk frame earns nothing for a field that is empty on both sides
    earned, slots = 0.0, 3 * n_true     # event, line, and locals or value
    frames_exact, prefix = 0, True
    for i, true in enumerate(expected):
        if i >= len(predicted):
            prefix = False
            continue
        credit = frame_credit(predicted[i], true)
        for key, val in credit.items():
            sums[key] += val or 0.0
        earned += credit["event"] + credit["line"] + (credit["arg"] or 0.0) + (
            credit["locals"] if true.get("event") in ("call", "line") else 0.0)
        whole = all(v in (None, 1.0) for v in credit.values())
        if prefix and whole:
            frames_exact += 1
        else:
            prefix = False
    denominator = max(n_true, 1)
    acc = {
        "event_acc": sums["event"] / denominator if n_true else float(not predicted),
        "line_acc": sums["line"] / denominator if n_true else float(not predicted),
        "locals_acc": sums["locals"] / denominator if n_true else float(not predicted),
        "arg_acc": sums["arg"] / n_args if n_args else 1.0,
    }
    ending = predicted_complete == expected_complete
    exact = len(predicted) == n_true and frames_exact == n_true and ending
    outcomes = {"parse": True, "exact": exact, "n_expected": n_true, "n_predicted": len(predicted),
                "frames_exact": frames_exact, "ending": ending, **acc}
    if scheme == "cwm":
        value = 1.0 if exact else -1.0
    elif scheme == "binary":
        value = float(exact)
    else:
        value = earned / slots if slots else float(not predicted)
    details = ("exact match" if exact else
               f"{frames_exact}/{n_true} leading frames exact; {len(predicted)} predicted"
               f"{'' if ending else '; wrong ending'}")
    return RewardResult(value, outcomes, details)


__all__ = ["SCHEMES", "frame_credit", "locals_credit", "trace_reward"]
