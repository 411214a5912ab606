"""`cwm bench verifier`: our math verifier against math-verify 0.9.0, per answer pair, in the same process.

Pairs come from MATH-500's gold answers rewritten in several forms by string rules that keep the meaning
(verbatim in a box, an unboxed "final answer is" sentence, `\\dfrac` for `\\frac`, spaces removed, `a/b`,
`2a/2b` and terminating decimals for integer fractions, thousands separators, an `x = ...` assignment,
reversed order for unordered lists, `\\left( \\right)` around pairs, an inequality for a ray, both values of
`a \\pm b`, a tuple for a column vector) and wrong answers made the same way (integer + 1, integer + 10^-9,
a fraction's numerator + 1, a flipped sign, a tuple's two entries swapped, one of the two values of `a \\pm b`,
the integer answer of another problem). Labels follow from the rule, never from either verifier.

Both verifiers see the same (gold, whole response) pair: ours is `rewards.math.verify(gold, response)`;
math-verify is `verify(parse("$gold$"), parse(response))`, its documented use. The calls alternate pair by
pair so that load on the machine hits both alike; a warm-up (helper start, imports) is not timed. Reports
per-pair median / p90 / p99 / max time, accuracy on positives and negatives, per-form tables.
"""
from __future__ import annotations

import logging
import re
import statistics
import sys
import time
from fractions import Fraction

from benchmarks.report import write_report
from cwm_envs.errors import UsageError
from cwm_envs.sources.math import load_math

_INT = re.compile(r"-?\d+")
_FRAC = re.compile(r"(-?)\\[dt]?frac\{(\d+)\}\{(\d+)\}")
_PAIR = re.compile(r"\((-?\d+),\s*(-?\d+)\)")
_RAY = re.compile(r"([(\[])([^,]+),([^,]+)([)\]])")
_PM = re.compile(r"([^\\]*?\S)\s*\\pm\s*([^,]+)")
_COLUMN = re.compile(r"\\begin\{pmatrix\}((?:[^&\\]|\\(?!\\))+(?:\\\\(?:[^&\\]|\\(?!\\))+)+)\\end\{pmatrix\}")


def _strip_spaces(s: str) -> str:
    """Remove spaces that separate nothing (keep `\\cot x`, drop `2 \\sqrt{5}` -> `2\\sqrt{5}`)."""
    return re.sub(r"(?<![A-Za-z])\s+|\s+(?![A-Za-z])", "", s)


def _top_level_split(s: str) -> list[str] | None:
    parts, depth, cur = [], 0, ""
    for ch in s:
        depth += ch in "([{" and 1 or (ch in ")]}" and -1 or 0)
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts] if len(parts) > 1 else None


def _terminating(fr: Fraction) -> str | None:
    d = fr.denominator
    for p in (2, 5):
        while d % p == 0:
            d //= p
    if d != 1:
        return None
    s = f"{float(fr):.12f}".rstrip("0").rstrip(".")
    return s if Fraction(s) == fr else None


def rewrites(gold: str) -> list[tuple[str, str, int]]:
    """(form, answer, label) pairs for one gold answer; label 1 = same answer, 0 = a different one."""
    g = gold.strip()
    out = [("verbatim", g, 1)]
    if "\\frac" in g and "\\dfrac" not in g:
        out.append(("dfrac", g.replace("\\frac", "\\dfrac"), 1))
    if " " in g and "\\text" not in g and "\\mbox" not in g:
        out.append(("no_spaces", _strip_spaces(g), 1))
    if _INT.fullmatch(g):
        n = int(g)
        if abs(n) >= 1000:
            out.append(("thousands", f"{n:,}", 1))
        out.append(("assignment", f"x = {n}", 1))
        out.append(("plus_one", str(n + 1), 0))
        out.append(("times_ten", str(10 * n), 0) if n else ("one", "1", 0))
        if n:
            out.append(("negated", str(-n), 0))
    m = _FRAC.fullmatch(g)
    if m:
        sign, a, b = m.group(1), int(m.group(2)), int(m.group(3))
        fr = Fraction(a, b) * (-1 if sign else 1)
        out.append(("slash", f"{sign}{a}/{b}", 1))
        dec = _terminating(fr)
        if dec:
            out.append(("decimal", dec, 1))
        out.append(("numerator_plus_one", f"{sign}\\frac{{{a + 1}}}{{{b}}}", 0))
        out.append(("negated", g[1:] if sign else f"-{g}", 0))
    m = _PAIR.fullmatch(g.replace("\\left", "").replace("\\right", ""))
    if m and m.group(1) != m.group(2):
        out.append(("left_right", f"\\left( {m.group(1)}, {m.group(2)} \\right)", 1))
        out.append(("swapped", f"({m.group(2)}, {m.group(1)})", 0))
    listed = not g.startswith(("(", "[", "\\left")) and not re.search(r"\d,(?:\\!)?\s*\d{3}", g)
    m = _RAY.fullmatch(g.replace("\\left", "").replace("\\right", "").replace(" ", ""))
    if m:  # (a, \infty) -> x > a and friends
        lo, a, b, hi = m.groups()
        if a.endswith("\\infty") and not b.endswith("\\infty") and a.startswith("-"):
            out.append(("inequality", "x " + ("<" if hi == ")" else "\\le") + f" {b}", 1))
        elif b.endswith("\\infty") and not a.endswith("\\infty"):
            out.append(("inequality", "x " + (">" if lo == "(" else "\\ge") + f" {a}", 1))
    m = _PM.fullmatch(g)
    if m:  # a \pm b -> both values; one of them alone is not the answer
        a, b = m.group(1).strip(), m.group(2).strip()
        out.append(("pm_split", f"{a} + {b}, {a} - {b}", 1))
        out.append(("pm_half", f"{a} + {b}", 0))
    m = _COLUMN.fullmatch(g)
    if m:
        out.append(("vector_tuple", "(" + ", ".join(x.strip() for x in m.group(1).split("\\\\")) + ")", 1))
    if _INT.fullmatch(g):
        out.append(("near_miss", f"{g} + 10^{{-9}}", 0))
    m = _FRAC.fullmatch(g)
    if m:
        out.append(("frac_scaled", f"{m.group(1)}\\frac{{{2 * int(m.group(2))}}}{{{2 * int(m.group(3))}}}", 1))
    parts = _top_level_split(g.strip("\\{}").strip()) if listed else None
    if parts and len(set(parts)) == len(parts) and "=" not in g:
        inner = ", ".join(reversed(parts))
        out.append(("reordered", f"\\{{{inner}\\}}" if g.startswith("\\{") else inner, 1))
    return out


def make_pairs(limit: int | None = None) -> list[dict]:
    tasks = load_math("math500", limit=limit)
    ints = [t.answer.strip() for t in tasks if _INT.fullmatch(t.answer.strip())]
    pairs = []
    for k, task in enumerate(tasks):
        for form, answer, label in rewrites(task.answer):
            style = "sentence" if form == "verbatim" and k % 2 else "boxed"
            response = (f"The final answer is ${answer}$. I hope it is correct." if style == "sentence"
                        else f"So we get $\\boxed{{{answer}}}$.")
            pairs.append({"id": task.id, "form": form, "gold": task.answer, "response": response, "label": label})
        if _INT.fullmatch(task.answer.strip()) and ints:   # another problem's (different) integer answer
            other = next((x for x in ints[k % len(ints):] + ints if int(x) != int(task.answer)), None)
            if other is not None:
                pairs.append({"id": task.id, "form": "other_problem", "gold": task.answer,
                              "response": f"So we get $\\boxed{{{other}}}$.", "label": 0})
    return pairs


def _stats(xs: list[float]) -> dict:
    xs = sorted(xs)
    q = lambda p: xs[min(len(xs) - 1, int(p * len(xs)))]  # noqa: E731  (a one-line local helper)
    return {"median_ms": 1000 * statistics.median(xs), "p90_ms": 1000 * q(0.90), "p99_ms": 1000 * q(0.99),
            "max_ms": 1000 * xs[-1], "mean_ms": 1000 * statistics.fmean(xs)}


def run_pairs(pairs: list[dict], progress: bool = False) -> list[dict]:
    from math_verify import parse as mv_parse, verify as mv_verify

    from rewards.math import verify

    logging.getLogger("math_verify").setLevel(logging.CRITICAL)

    def theirs(p):
        try:
            return bool(mv_verify(mv_parse(f"${p['gold']}$"), mv_parse(p["response"])))
        except Exception:  # noqa: BLE001 - a raising baseline counts as "not equal"
            return False

    def ours(p):
        return verify(p["gold"], p["response"]).value == 1.0

    for p in pairs[:20]:  # warm-up: helper start, imports, caches of both
        ours(p), theirs(p)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(pairs), desc="verifier pairs", disable=not sys.stderr.isatty())
    rows = []
    for k, p in enumerate(pairs):
        order = (("ours", ours), ("mv", theirs)) if k % 2 == 0 else (("mv", theirs), ("ours", ours))
        row = dict(p)
        for name, fn in order:
            t = time.perf_counter()
            row[name] = fn(p)
            row[f"{name}_s"] = time.perf_counter() - t
        rows.append(row)
        if bar:
            bar.update()
    if bar:
        bar.close()
    return rows


def report(rows: list[dict]) -> tuple[dict, list[dict], list[dict]]:
    summary = {"pairs": len(rows), "positives": sum(r["label"] for r in rows),
               "negatives": sum(1 - r["label"] for r in rows)}
    for name in ("ours", "mv"):
        st = _stats([r[f"{name}_s"] for r in rows])
        summary.update({f"{name}_{k}": v for k, v in st.items()})
        summary[f"{name}_accuracy"] = statistics.fmean(r[name] == bool(r["label"]) for r in rows)
        summary[f"{name}_false_positives"] = sum(r[name] and not r["label"] for r in rows)
        summary[f"{name}_false_negatives"] = sum(r["label"] and not r[name] for r in rows)
    summary["median_speedup"] = summary["mv_median_ms"] / summary["ours_median_ms"]
    summary["p99_speedup"] = summary["mv_p99_ms"] / summary["ours_p99_ms"]
    forms = []
    for form in sorted({r["form"] for r in rows}):
        sub = [r for r in rows if r["form"] == form]
        forms.append({"form": form, "pairs": len(sub), "label": sub[0]["label"],
                      "ours_correct": sum(r["ours"] == bool(r["label"]) for r in sub),
                      "mv_correct": sum(r["mv"] == bool(r["label"]) for r in sub),
                      "ours_median_ms": 1000 * statistics.median(r["ours_s"] for r in sub),
                      "mv_median_ms": 1000 * statistics.median(r["mv_s"] for r in sub)})
    disagreements = [{k: r[k] for k in ("id", "form", "gold", "response", "label", "ours", "mv")}
                     for r in rows if r["ours"] != r["mv"]][:60]
    return summary, forms, disagreements


def run_bench(args) -> int:
    try:
        import math_verify  # noqa: F401  (only checks that the baseline is installed)
    except ImportError:
        raise UsageError("the baseline needs math-verify (pip install math-verify)") from None
    pairs = make_pairs(args.limit)
    rows = run_pairs(pairs, progress=True)
    summary, forms, disagreements = report(rows)
    summary = {"baseline": "math-verify 0.9.0 parse+verify, same process, alternating", **summary}
    path = write_report(args.out, "Math verifier vs math-verify on MATH-500 rewrites", summary,
                        {"disagreements": disagreements}, tables={"per form": forms})
    print(f"{len(rows)} pairs: ours median {summary['ours_median_ms']:.2f} ms p99 {summary['ours_p99_ms']:.1f} ms "
          f"acc {summary['ours_accuracy']:.4f} FP {summary['ours_false_positives']}; math-verify median "
          f"{summary['mv_median_ms']:.2f} ms p99 {summary['mv_p99_ms']:.1f} ms acc {summary['mv_accuracy']:.4f} "
          f"FP {summary['mv_false_positives']}; report in {path}")
    return 0


def register(sub) -> None:
    from benchmarks.cli import bench_group

    p = bench_group(sub).add_parser("verifier", help="our math verifier vs math-verify: speed and accuracy per pair")
    p.add_argument("--out", required=True, help="report directory")
    p.add_argument("--limit", type=int, help="first N MATH-500 problems only")
    p.set_defaults(func=run_bench)
