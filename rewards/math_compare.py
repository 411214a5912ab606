"""Are two parsed answers the same mathematical object? Exact first, with evidence of how it was decided.

Rules, in the order they apply (each is a reason a pair can be *equal*; anything else is unequal):
- multiple choice: a gold `(B)` / `\\text{(B)}` matches an answer that names option B;
- text: `\\text{Evelyn}` matches "evelyn" (case, articles, punctuation ignored); a gold that does not
  parse matches only its own text (after the meaning-preserving `normalize`), so it can never match every answer;
- numbers: exact rationals (`0.5` = `\\frac12`, `10^{-10}` != `10^{-11}`, `2^{100}` != `2^{100}+1`);
  other constants are equal when their difference is zero symbolically or to hundreds of digits
  (sympy's adaptive evalf; not when either side holds a number beyond 10^(+-300), which could hide a
  difference that small), never by a fixed float tolerance; a decimal literal of at least 12 significant
  digits also matches a non-terminating value it rounds to in its last place (`0.0833333333333` for 1/12);
- no value: nan, complex infinity (`\\frac{1}{0}`), `\\sin\\infty`, `\\log_0`, `\\infty^0`, a base-n numeral with a
  digit its base lacks, numbers side by side (`1 2`), a degenerate interval: equal to nothing, on either side;
- expressions: the difference vanishes at POINTS random rational points drawn afresh on every call (an
  answer cannot be built to agree on them) and the answer has a value wherever the gold has one; when too
  few points can be evaluated, only exact simplification (expand, cancel, simplify) can say equal;
- equations: `lhs - rhs` of one is a nonzero constant multiple of the other's (`2x - y = 4` ==
  `y = 2x - 4`); inequalities the same with a positive multiple; an assignment `x = 5` matches `5`;
  a chain `x = 2 + 3 = 5` counts by its first left side and last right side when every step after the name
  holds (`x = 1 = 2` does not count); `a \\approx b` ends a chain;
- percent: `10\\%` matches `10`, `0.1` and `10\\%`; degrees: `30^\\circ` matches `30`, and `\\frac{\\pi}{6}`
  (an angle written with pi is converted; a bare number is not);
- tuples are ordered, sets and bare lists are not; `(a, b)` is a point, or an open interval when an end
  is infinite or the other side is an interval or inequality; intervals compare as sets of reals;
- matrices: same shape, entry by entry; a column vector also matches a tuple of its entries;
- base-n numbers: `204_5` matches `204_5` and `204` (its digits), not its decimal value; a plain integer gold
  matches a numeral of its value (`255` and `11111111_2`); a digit its base lacks (`9_2`) makes no number.
"""
from __future__ import annotations

import random
import re
import time
from dataclasses import dataclass

import sympy
from sympy import Rational

from rewards.math_parse import (
    BaseNum,
    Interval,
    Num,
    Rel,
    Seq,
    SetOp,
    Text,
    normalize,
    normalize_text,
    parse,
    parse_choice,
    strip_math_delimiters,
)

APPROX_MIN_DIGITS = 12       # significant digits a decimal needs before it may stand for an exact value
EVAL_DIGITS = 60
POINTS = 12                  # agreeing random points that make an identity (see _identity)


@dataclass
class Verdict:
    """Whether two answers are equal and `how` (the rule that decided), for the reward's evidence."""
    equal: bool
    how: str
    gold: str = ""
    answer: str = ""


class _Budget:
    def __init__(self, deadline: float | None):
        self.deadline = deadline

    def left(self) -> float:
        return float("inf") if self.deadline is None else self.deadline - time.monotonic()


# ------------------------------------------------------------------------------------ entry point
def compare(gold_text: str, answer_text: str, deadline: float | None = None, strict_chains: bool = True) -> Verdict:
    """Compare a gold answer and an extracted answer (both strings). Never raises.

    strict_chains: a purely numeric chain in the answer (`2 + 2 = 5`) must hold at every step before its
    last value counts (on for boxed answers: `\\boxed{1 = 5}` is no way to answer 5).
    """
    budget = _Budget(deadline)
    try:
        return _compare(gold_text, answer_text, budget, strict_chains)
    except RecursionError:
        return Verdict(False, "too deeply nested")
    except Exception as exc:  # noqa: BLE001 - bad input must never raise out of a reward function
        return Verdict(False, f"error: {type(exc).__name__}")


def _compare(gold_text: str, answer_text: str, budget: _Budget, strict_chains: bool = True) -> Verdict:
    if not isinstance(gold_text, str) or not isinstance(answer_text, str):
        return Verdict(False, "not a string")
    if not strip_math_delimiters(answer_text):
        return Verdict(False, "empty answer")
    letter = parse_choice(gold_text)
    if letter:
        got = _answer_choice(answer_text)
        return Verdict(got == letter, "choice", letter, got or "")
    gold = _parse_with_fallback(gold_text)
    if isinstance(gold, Text) and not gold.parsed:  # no value to compare: only the same text matches
        g, a = normalize(gold_text), normalize(answer_text)
        return Verdict(bool(g) and g == a, "same text (gold did not parse as math)", g, a)
    if isinstance(gold, Text):
        g, a = normalize_text(gold_text), normalize_text(answer_text)
        return Verdict(bool(g) and g == a, "text", g, a)
    answer = _parse_with_fallback(answer_text, thousands=isinstance(gold, (Num, BaseNum)))
    ctx = {"budget": budget, "how": "exact", "strict_chains": strict_chains}
    equal = _eq(gold, answer, ctx)
    if not equal and isinstance(gold, Num) and isinstance(answer, Seq) and answer.kind == "list":
        alt = _decimal_comma(answer_text)
        if alt is not None:
            equal = _eq(gold, alt, ctx)
    if not equal and isinstance(answer, Num) and isinstance(gold, Seq) and gold.kind == "list":
        alt = _decimal_comma(gold_text)
        if alt is not None:
            equal = _eq(alt, answer, ctx)
    return Verdict(bool(equal), ctx["how"] if equal else _why_not(gold, answer), _show(gold), _show(answer))


def _why_not(gold, answer) -> str:
    if isinstance(answer, Text) and not answer.parsed:
        return "answer did not parse"
    return "different"


def _show(v) -> str:
    """A short printable form of a parsed value, for the evidence."""
    try:
        out = _show_inner(v)
    except ValueError:  # an integer too long to print (Python caps int -> str at 4300 digits)
        return "<a number too large to print>"
    return out if len(out) <= 300 else out[:297] + "..."


def _show_inner(v) -> str:
    try:
        if isinstance(v, Num):
            s = str(v.expr)
            return s + ("%" if v.percent else "") + ("°" if v.degrees else "")
        if isinstance(v, Seq):
            inner = ", ".join(_show_inner(x) for x in v.items)
            return {"set": "{%s}", "tuple": "(%s)", "pair": "(%s)", "list": "%s", "ratio": "%s"}[v.kind] % (
                inner if v.kind != "ratio" else inner.replace(", ", ":"))
        if isinstance(v, Interval):
            return f"{'(' if v.lopen else '['}{_show_inner(v.lo)}, {_show_inner(v.hi)}{')' if v.ropen else ']'}"
        if isinstance(v, SetOp):
            return f" {v.op} ".join(_show_inner(x) for x in v.items)
        if isinstance(v, Rel):
            out = _show_inner(v.items[0])
            for op, x in zip(v.ops, v.items[1:]):
                out += f" {op} {_show_inner(x)}"
            return out
        if isinstance(v, BaseNum):
            return f"{v.digits}_{v.base}"
        if isinstance(v, Text):
            return v.text
    except ValueError:
        raise
    except Exception:  # noqa: BLE001  (sympy may raise anything on odd input; fall through to str())
        pass
    return type(v).__name__


def _answer_choice(text: str) -> str | None:
    s = strip_math_delimiters(text)
    s = re.sub(r"\\(?:text|textbf|mathrm|mathbf|textrm)\s*\{([^{}]*)\}", r"\1", s).strip()
    s = re.sub(r"^(?:the\s+)?(?:answer|option|choice)\s*(?:is)?\s*[:=]?\s*", "", s, flags=re.I)
    m = re.match(r"^\(?\s*([A-Ea-e])\s*\)?(?=$|[\s.:),])", s)
    if not m or re.search(r"(?<![A-Za-z])\(?[A-E]\)?(?![A-Za-z])", s[m.end():]):
        return None  # no option, or more than one named ("B or C")
    return m.group(1).upper()


def _decimal_comma(text: str):
    """`2,74` read as 2.74 (a European decimal comma), only for a lone `int,digits` answer."""
    s = normalize(text)
    m = re.fullmatch(r"(-?\d+),(\d{1,2}|\d{4,})", s)
    if not m and re.fullmatch(r"-?0,\d+", s):
        m = re.fullmatch(r"(-?\d+),(\d+)", s)
    if not m:
        return None
    return parse(f"{m.group(1)}.{m.group(2)}")


# ------------------------------------------------------------------------- latex2sympy fall-back
def _parse_with_fallback(text: str, thousands: bool = True):
    v = parse(text, thousands=thousands)
    if isinstance(v, Text) and not v.parsed:
        alt = _latex2sympy(text)
        if alt is not None:
            return alt
    return v


def _latex2sympy(text: str):
    """latex2sympy2_extended for what our grammar lacks (integrals, limits, ...); floats made exact."""
    s = normalize(text)
    if not s or len(s) > 500 or re.search(r"[a-zA-Z]{4,}", re.sub(r"\\[a-zA-Z]+", "", s)):
        return None
    if re.search(r"\d\s*_|\d\s+\d", s):
        return None  # it drops a numeral's subscript (`9_2`, refused by our grammar, would be 9) and adds
                     # numbers side by side (`1 2` would be 3)
    try:
        from latex2sympy2_extended import latex2sympy
        from latex2sympy2_extended.math_normalization import NormalizationConfig

        cfg = NormalizationConfig(basic_latex=True, units=True, malformed_operators=True, nits=True,
                                  boxed="all", equations=False)
        expr = latex2sympy(s, normalization_config=cfg)
        expr = _exact_floats(expr)
    except Exception:  # noqa: BLE001 - the fall-back parser failing only means "unparsed"
        return None
    return _from_sympy(expr)


def _exact_floats(expr):
    try:
        return expr.replace(lambda e: isinstance(e, sympy.Float), lambda f: Rational(str(f)))
    except Exception:  # noqa: BLE001  (sympy raises anything; keep the floats)
        return expr


def _from_sympy(expr):
    if isinstance(expr, sympy.MatrixBase):
        return Num(sympy.ImmutableMatrix(expr))
    if isinstance(expr, sympy.Interval):
        return Interval(Num(expr.start), Num(expr.end), bool(expr.left_open), bool(expr.right_open))
    if isinstance(expr, sympy.FiniteSet):
        return Seq("set", tuple(Num(x) for x in expr.args))
    if isinstance(expr, sympy.Tuple):
        return Seq("tuple", tuple(Num(x) for x in expr.args))
    if isinstance(expr, sympy.core.relational.Relational):
        op = {sympy.Eq: "=", sympy.Lt: "<", sympy.Le: "<=", sympy.Gt: ">", sympy.Ge: ">=", sympy.Ne: "!="}.get(
            type(expr))
        return Rel((op,), (Num(expr.lhs), Num(expr.rhs))) if op else None
    if isinstance(expr, sympy.Expr) and not isinstance(expr, sympy.Symbol) or isinstance(expr, sympy.Symbol):
        try:
            expr = expr.doit()
        except Exception:  # noqa: BLE001  (an unevaluable expression stays as written)
            pass
        return Num(expr)
    return None


# ------------------------------------------------------------------------------------ dispatcher
def _eq(g, a, ctx) -> bool:
    if ctx["budget"].left() <= 0:
        return False
    if isinstance(g, Text) or isinstance(a, Text):
        return False
    # an answer written as an assignment or a chain ends in its value: x = 5, 2 + 3 = 5
    if isinstance(a, Rel) and not isinstance(g, Rel):
        value = _answer_value(a, ctx)
        if value is not None:
            return _eq(g, value, ctx)
        if _set_like(g):  # an inequality answering an interval: x > 2 for (2, \infty)
            return _set_eq(_to_set(g), _to_set(a), ctx)
        return False
    if isinstance(g, Rel) and not isinstance(a, Rel):
        value = _gold_value(g)
        if value is not None:
            return _eq(value, a, ctx)
        gs = _to_set(g)
        if gs is not None and _set_like(a):
            return _set_eq(gs, _to_set(a), ctx)
        return False
    if isinstance(g, Rel) and isinstance(a, Rel):
        return _rel_eq(g, a, ctx)
    if isinstance(g, BaseNum) or isinstance(a, BaseNum):
        return _base_eq(g, a)
    if isinstance(g, Num) and _is_matrix(g.expr):
        return _matrix_eq(g, a, ctx)
    if isinstance(g, Num):
        if isinstance(a, Num):
            return not _is_matrix(a.expr) and _num_eq(g, a, ctx)
        if isinstance(a, Seq) and a.kind in ("set", "list") and a.items:
            # {x} is x; so is {x, x}: every element must be the gold (boxes that repeat one answer)
            return all(_eq(g, x, ctx) for x in a.items)
        return False
    if isinstance(g, Seq) and g.kind == "pair":
        # a point, unless an end is infinite or the answer is an interval: then the open interval
        if _is_interval_like(g) or isinstance(a, (Interval, SetOp)) or _is_interval_like(a):
            return _set_eq(_to_set(g), _to_set(a), ctx)
        return _seq_eq(g, a, ctx)
    if isinstance(g, (Interval, SetOp)) or _set_like(g) and isinstance(g, Seq) and g.kind == "list":
        return _set_eq(_to_set(g), _to_set(a), ctx)
    if isinstance(g, Seq):
        if _set_like(a) and isinstance(a, Seq) and a.kind == "list" and g.kind in ("set", "list"):
            return _set_eq(_to_set(g), _to_set(a), ctx)
        return _seq_eq(g, a, ctx)
    return False


def _is_matrix(x) -> bool:
    return isinstance(x, sympy.MatrixBase)


# ----------------------------------------------------------------------------------- relations
def _symbol_like(v) -> bool:
    """A left side that names something: x, f(x), AB, NO/BO, (p, q), a_3."""
    if isinstance(v, Seq):
        return all(_symbol_like(x) for x in v.items)
    if not isinstance(v, Num) or _is_matrix(v.expr) or not isinstance(v.expr, sympy.Basic):
        return False
    e = v.expr
    if not e.free_symbols or e.has(sympy.I, sympy.E, sympy.pi):
        return False
    return all(n in (1, -1) for n in e.atoms(sympy.Number))


def _cut_approx(rel: Rel) -> Rel:
    """`x = 1/3 \\approx 0.33` -> `x = 1/3`; `x \\approx 11` stays (an approximate assignment)."""
    if "approx" in rel.ops:
        k = rel.ops.index("approx")
        if k > 0:
            return Rel(rel.ops[:k], rel.items[:k + 1])
    return rel


def _answer_value(rel: Rel, ctx):
    """The value an answer chain settles on, or None when the chain is not a valid assignment."""
    rel = _cut_approx(rel)
    if rel.ops == ("in",):
        return rel.items[1]
    if not all(op in ("=", "approx") for op in rel.ops):
        return None
    last = rel.items[-1]
    if not ctx.get("strict_chains", True):
        return last
    # the chain must hold at every step after a name before its last value counts: 2 + 3 = 5 and
    # x = 2 + 3 = 5 do, 1 = 5 and x = 1 = 5 do not
    steps = list(zip(rel.ops, rel.items, rel.items[1:]))
    if _symbol_like(rel.items[0]):
        steps = steps[1:]
    for _, x, y in steps:
        if not (isinstance(x, Num) and isinstance(y, Num) and _num_eq(x, y, {"budget": ctx["budget"], "how": ""})):
            return None
    return last


def _gold_value(rel: Rel):
    rel = _cut_approx(rel)
    if rel.ops == ("in",) and _symbol_like(rel.items[0]):
        return rel.items[1]
    if all(op in ("=", "approx") for op in rel.ops) and any(_symbol_like(x) for x in rel.items[:-1]):
        return rel.items[-1]
    return None


def _rel_eq(g: Rel, a: Rel, ctx) -> bool:
    g, a = _cut_approx(g), _cut_approx(a)
    gv, av = _gold_value(g), _answer_value(a, ctx)
    # two assignments: same name(s), same value (x = 5 + 5 + 1 = 11 matches x = 11)
    if gv is not None and av is not None and _symbol_like(g.items[0]) and _symbol_like(a.items[0]):
        if _eq(g.items[0], a.items[0], {"budget": ctx["budget"], "how": ""}) and _eq(gv, av, ctx):
            ctx["how"] = "assignment"
            return True
    if g.ops == ("in",) or a.ops == ("in",) or len(g.ops) > 1 or len(a.ops) > 1:
        gs, as_ = _to_set(g), _to_set(a)
        if gs is not None and as_ is not None:
            return _set_eq(gs, as_, ctx)
        if len(g.ops) == len(a.ops) and len(g.ops) > 1:
            pairs = [Rel((op,), (x, y)) for op, x, y in zip(g.ops, g.items, g.items[1:])]
            apairs = [Rel((op,), (x, y)) for op, x, y in zip(a.ops, a.items, a.items[1:])]
            return all(_rel_eq(p, q, ctx) for p, q in zip(pairs, apairs))
        return False
    return _single_rel_eq(g, a, ctx)


_FLIP = {"<": ">", ">": "<", "<=": ">=", ">=": "<=", "=": "=", "!=": "!=", "approx": "approx"}


def _single_rel_eq(g: Rel, a: Rel, ctx) -> bool:
    gop, aop = g.ops[0], a.ops[0]
    if not all(isinstance(x, Num) and not _is_matrix(x.expr) for x in g.items + a.items):
        if gop == aop and all(_eq(x, y, ctx) for x, y in zip(g.items, a.items)):
            return True
        return False
    gl, gr = g.items[0].expr, g.items[1].expr
    al, ar = a.items[0].expr, a.items[1].expr
    # bring both to the form  F (op) 0  with op in {=, !=, <, <=}
    def canon(op, lhs, rhs):
        if op in (">", ">="):
            return _FLIP[op], rhs - lhs
        if op == "approx":
            op = "="
        return op, lhs - rhs

    gop, G = canon(gop, gl, gr)
    aop, A = canon(aop, al, ar)
    if gop != aop:
        return False
    if G.free_symbols != A.free_symbols:
        return False
    if G == A:
        ctx["how"] = "same relation"
        return True
    ratio = _constant_ratio(G, A, ctx)
    if ratio is None or ratio == 0:
        return False
    if gop in ("<", "<=") and not (ratio.is_real and ratio > 0):
        return False
    ctx["how"] = "equivalent equation" if gop == "=" else "equivalent relation"
    return True


def _constant_ratio(G, A, ctx):
    """c with G == c*A identically (c a nonzero constant), else None."""
    if A == 0 or G == 0:
        return None
    try:
        r = sympy.cancel(sympy.together(G / A))
    except Exception:  # noqa: BLE001  (sympy raises anything: no constant factor found)
        return None
    if r.is_number and r.free_symbols == set():
        if r.has(sympy.nan, sympy.zoo, sympy.oo, -sympy.oo):
            return None
        return r
    # not visibly constant: test c = G/A at one point, then G - c*A == 0 as an identity
    syms = sorted(G.free_symbols | A.free_symbols, key=str)
    for point in _random_points(syms, POINTS):
        try:
            av = A.subs(point)
            if av == 0 or not av.is_number:
                continue
            c = G.subs(point) / av
        except Exception:  # noqa: BLE001  (a point where sympy fails proves nothing; try the next)
            continue
        if c.has(sympy.nan, sympy.zoo) or c == 0:
            return None
        if _identity(G, c * A, ctx) is True:
            return c
        return None
    return None


# -------------------------------------------------------------------------------------- numbers
def _num_eq(g: Num, a: Num, ctx) -> bool:
    gv, av = g.expr, a.expr
    candidates = [(gv, av)]
    if g.percent and not a.percent:
        candidates.append((gv / 100, av))
    elif a.percent and not g.percent:
        candidates.append((gv, av / 100))
    # 30 degrees is pi/6: converted only when the other side is written with pi
    if g.degrees and not a.degrees and _has_pi(av):
        candidates.append((gv * sympy.pi / 180, av))
    elif a.degrees and not g.degrees and _has_pi(gv):
        candidates.append((gv, av * sympy.pi / 180))
    for x, y in candidates:
        if _value_eq(x, y, ctx):
            if (x, y) != (gv, av):
                ctx["how"] = "degrees to radians" if (g.degrees or a.degrees) else "percent"
            return True
    # the narrow approximation rule: a long decimal stands for the exact value it rounds to
    for dec, exact in ((a, gv), (g, av)):
        if dec.decimal and _approximates(dec.decimal, dec.expr, exact):
            ctx["how"] = f"decimal to {_sig_digits(dec.decimal)} significant digits"
            return True
    return False


def _has_pi(x) -> bool:
    return isinstance(x, sympy.Basic) and x.has(sympy.pi)


def _sig_digits(lit: str) -> int:
    mant = lit.split("e")[0].replace(".", "").lstrip("0")
    return len(mant)


def _approximates(lit: str, value, exact) -> bool:
    if _sig_digits(lit) < APPROX_MIN_DIGITS or not isinstance(exact, sympy.Basic) or exact.free_symbols:
        return False
    mant, _, e = lit.partition("e")
    places = len(mant.partition(".")[2]) - (int(e) if e else 0)
    scaled = exact * Rational(10) ** places
    if scaled.is_Rational and scaled.is_Integer:
        return False  # the exact value has a finite expansion at this length: it had to be written exactly
    try:
        diff = sympy.N(sympy.Abs(exact - value), 30)
        return bool(diff.is_number and diff <= Rational(1, 10 ** places) if places >= 0 else False)
    except Exception:  # noqa: BLE001  (sympy raises anything: not a close approximation)
        return False


def _undefined(v) -> bool:
    """No value at all: nan, complex infinity, an accumulation bound (`\\sin \\infty`). It equals nothing,
    not even itself."""
    return not isinstance(v, sympy.Basic) or v.has(sympy.nan, sympy.zoo, sympy.AccumBounds)


def _value_eq(x, y, ctx) -> bool:
    """x (the gold's side) and y (the answer's) are the same value, or the same function of their symbols."""
    if _undefined(x) or _undefined(y):
        return False
    if x == y:
        ctx["how"] = "exact" if x.is_Rational else "identical"
        return True
    if x.is_Rational and y.is_Rational:
        return False  # exact rational arithmetic: different rationals differ, however close
    if _huge_powers(x) or _huge_powers(y):   # `10^{10^{10}}`: x - y would compute it digit by digit
        if x.free_symbols or y.free_symbols:
            return False
        return _zero_constant(sympy.Add(x, sympy.Mul(-1, y, evaluate=False), evaluate=False)) is True
    d = x - y
    if d == 0:
        ctx["how"] = "exact"
        return True
    if d.is_Rational or _undefined(d):
        return False
    if not d.free_symbols:
        verdict = _zero_constant(d)
        if verdict is None:
            verdict = _symbolic_zero(d, ctx)
        if verdict:
            ctx["how"] = "exact constant" if ctx["how"] == "exact" else ctx["how"]
        return bool(verdict)
    verdict = _identity(x, y, ctx)
    if verdict:
        ctx["how"] = "identity"
    return bool(verdict)


# How hard evalf looks for a nonzero digit: (most digits, a value below 10^-tiny is zero at that precision,
# no part may lie beyond 10^(+-extreme) for that zero to count). A constant answer gets the long search; the
# value at a random point (one of POINTS) a shorter one.
CONSTANT_PRECISION = (400, 350, 300)
POINT_PRECISION = (100, 150, 100)


def _zero_constant(d, precision: tuple[int, int, int] = CONSTANT_PRECISION):
    """True: d is zero (symbolically, or to hundreds of digits); False: provably nonzero; None: unknown."""
    maxn, tiny, extreme = precision
    try:
        if not _huge_powers(d):   # expand would build 10^(10^10) digit by digit; evalf handles it at once
            e = sympy.expand(d)
            if e == 0:
                return True
            if e.is_Rational:
                return False
        dn = d.evalf(EVAL_DIGITS, maxn=maxn)
    except Exception:  # noqa: BLE001  (sympy raises anything: undecided)
        return None
    parts = [dn]
    if not dn.is_Number:
        try:
            re_, im_ = dn.as_real_imag()
            parts = [sympy.sympify(re_), sympy.sympify(im_)]
        except Exception:  # noqa: BLE001  (sympy raises anything: undecided)
            return None
    nonzero = no_digits = False
    for p in parts:
        if not p.is_Number or _undefined(p) or p.is_infinite:
            return None
        if p == 0:
            continue
        if isinstance(p, sympy.Float) and (p._prec <= 1 or abs(p) < sympy.Float(10) ** -tiny):
            no_digits = True   # evalf found no trustworthy digit: zero, or a difference built to be tinier
            continue
        nonzero = True
    if nonzero:
        return False
    return None if no_digits and _has_extreme_part(d, extreme) else True


def _has_extreme_part(d, limit: int) -> bool:
    """Does d hold a number beyond 10^(+-limit) (`10^{-900}`, `e^{-e^{10}}`)? Then agreement to the digits
    evalf tried proves nothing: `\\sqrt{25 + 10^{-900}}` is not 5. Rationals are sized exactly; powers and
    functions are evaluated roughly; sums and products are not (their cancellation is what is in question)."""
    big = 10 ** limit
    for k, sub in enumerate(sympy.preorder_traversal(d)):
        if k > 500:
            return True   # too big to inspect: do not trust the numbers
        if isinstance(sub, sympy.Rational):
            if sub != 0 and not (abs(sub.p) < big and sub.q < big and abs(sub) * big > 1):
                return True
        elif isinstance(sub, (sympy.Pow, sympy.Function)) and sub.is_number:
            try:
                v = abs(sub.evalf(5, maxn=30))
                if v.is_Number and v != 0 and not sympy.Rational(1, big) < v < big:
                    return True
            except Exception:  # noqa: BLE001  (unevaluable: treat as extreme (refuse))
                return True
    return False


def _symbolic_zero(d, ctx):
    """Exact simplification: True when sympy rewrites d to 0, else None (not proven)."""
    if ctx["budget"].left() < 0.05:
        return None
    try:
        s = sympy.simplify(d)
        return True if s == 0 else None
    except Exception:  # noqa: BLE001  (sympy raises anything: undecided)
        return None


_RANDOM = random.SystemRandom()   # fresh points on every call, from the OS: no seed for an answer to learn


def _random_points(syms, n: int) -> list[dict]:
    """n points drawn afresh: each symbol gets a random rational of magnitude 0.03..30 with a denominator
    between 10^6 and 10^9 (an answer cannot be made to vanish on every small denominator, as
    `\\sin(1000! \\pi x)` does), positive at half the points and negative at the other half (an answer that
    only agrees on a half-line, `|x|` for `x`, always meets a point where it differs)."""
    points: list[dict] = [{} for _ in range(n)]
    for s in syms:
        signs = [1] * (n // 2) + [-1] * (n - n // 2)
        _RANDOM.shuffle(signs)
        for point, sign in zip(points, signs):
            q = _RANDOM.randint(10 ** 6, 10 ** 9)
            point[s] = Rational(sign * max(1, round(q * 10 ** _RANDOM.uniform(-1.5, 1.5))), q)
    return points


def _huge_powers(d) -> bool:
    """A power with an exponent beyond 10^4 (`10^{10^{10}}`, `9^{9^9}`): never expanded, never substituted."""
    for p in d.atoms(sympy.Pow):
        e = p.exp
        if not e.is_number or e.is_Rational and abs(e) <= 10_000:
            continue
        try:
            if e.is_Rational or abs(e.evalf(15)) > 10_000:
                return True
        except Exception:  # noqa: BLE001  (unevaluable: treat as large (refuse))
            return True
    return False


def _identity(x, y, ctx):
    """Is x (the gold's side) identically y (the answer's)?

    At fresh random rational points first: one point where they differ, or where the answer has no value
    while the gold has one, settles it as unequal; POINTS points where both agree make an identity. An
    answer built to agree with the gold on a few points (a polynomial vanishing at small integers) cannot
    know these points. When too few points can be evaluated, only exact simplification can say equal.
    """
    d = x - y
    syms = sorted(d.free_symbols, key=str)
    agreed = 0
    points = [] if _huge_powers(d) else [p for _ in range(3) for p in _random_points(syms, POINTS)]
    for point in points:
        if ctx["budget"].left() <= 0:
            return None
        try:
            val = d.subs(point)
            if _undefined(val) or not val.is_number:
                gold_val = x.subs(point)
                if gold_val.is_number and not _undefined(gold_val):
                    return False   # `0^x` for 0: the answer breaks down where the gold has a value
                continue
            z = _zero_constant(val, POINT_PRECISION)
        except Exception:  # noqa: BLE001  (a point where sympy fails proves nothing; try the next)
            continue
        if z is False:
            return False
        if z is True:
            agreed += 1
        if agreed >= POINTS:
            return True
    try:
        if sympy.expand(d) == 0 or sympy.cancel(sympy.together(d)) == 0:
            return True
    except Exception:  # noqa: BLE001  (sympy raises anything: undecided)
        pass
    return _symbolic_zero(d, ctx)


# ---------------------------------------------------------------------------- sets and sequences
def _is_interval_like(v) -> bool:
    if isinstance(v, (Interval, SetOp)):
        return True
    if isinstance(v, Seq) and v.kind == "pair":
        return any(isinstance(x, Num) and x.expr in (sympy.oo, -sympy.oo) for x in v.items)
    return False


def _set_like(v) -> bool:
    if isinstance(v, Seq) and v.kind == "list" and v.items and all(isinstance(x, Rel) for x in v.items):
        return any(op not in ("=", "approx") for x in v.items for op in x.ops)  # x < 2 or x > 3
    return isinstance(v, (Interval, SetOp, Rel)) or isinstance(v, Seq) and v.kind in ("pair", "set")


def _to_set(v):
    """A sympy set for an interval, union, finite set or a one-variable relation; None when not one.

    Only `\\{\\}` / `\\emptyset` written as such is the empty set: a reversed interval (`[1, 0]`), a point
    `(3, \\frac{\\pi}{2})` read as an interval, or a contradiction (`x < x`) is no way to write it, and
    would otherwise equal every other empty reading.
    """
    out = _build_set(v)
    if out is not None and out.is_empty and not (isinstance(v, Seq) and v.kind == "set"):
        return None
    return out


def _build_set(v):
    try:
        if isinstance(v, Interval):
            return sympy.Interval(v.lo.expr, v.hi.expr, v.lopen, v.ropen)
        if isinstance(v, Seq) and v.kind == "pair":
            return sympy.Interval(v.items[0].expr, v.items[1].expr, True, True)
        if isinstance(v, Seq) and v.kind == "list" and all(isinstance(x, Rel) for x in v.items):
            parts = [_to_set(x) for x in v.items]   # x < 2 or x > 3
            return None if any(p is None for p in parts) else sympy.Union(*parts)
        if isinstance(v, Seq) and v.kind in ("set", "list"):
            return sympy.FiniteSet(*[x.expr for x in v.items])
        if isinstance(v, Num) and not _is_matrix(v.expr):
            return sympy.FiniteSet(v.expr)
        if isinstance(v, SetOp):
            parts = [_to_set(x) for x in v.items]
            if any(p is None for p in parts):
                return None
            if v.op == "union":
                return sympy.Union(*parts)
            if v.op == "intersection":
                return sympy.Intersection(*parts)
            out = parts[0]
            for p in parts[1:]:
                out = sympy.Complement(out, p)
            return out
        if isinstance(v, Rel):
            if v.ops == ("in",):
                return _to_set(v.items[1])
            simple = _simple_ray(v)
            if simple is not None:
                return simple
            rels = []
            for op, x, y in zip(v.ops, v.items, v.items[1:]):
                if not (isinstance(x, Num) and isinstance(y, Num)):
                    return None
                fn = {"<": sympy.Lt, "<=": sympy.Le, ">": sympy.Gt, ">=": sympy.Ge, "=": sympy.Eq,
                      "!=": sympy.Ne}.get(op)
                if fn is None:
                    return None
                rels.append(fn(x.expr, y.expr))
            cond = sympy.And(*rels)
            funcs = cond.atoms(sympy.core.function.AppliedUndef)  # 0 < f(x) < 1: f(x) is the variable
            if funcs:
                cond = cond.subs({f: sympy.Symbol(f"_{k}") for k, f in enumerate(funcs)})
            syms = cond.free_symbols
            if len(syms) != 1:
                return None
            return cond.as_set()
    except Exception:  # noqa: BLE001  (sympy raises anything: no solution set)
        return None
    return None


def _simple_ray(v: Rel):
    """`x > 2`, `-1 <= x < 3`: a variable compared with constants, read as an interval without solving."""
    var, lo, hi, lopen, ropen = None, -sympy.oo, sympy.oo, True, True
    for op, x, y in zip(v.ops, v.items, v.items[1:]):
        if op not in ("<", "<=", ">", ">="):
            return None
        if isinstance(y.expr, sympy.Symbol) and x.expr.is_number:    # c < x: flip to x > c
            x, y, op = y, x, _FLIP[op]
        if not (isinstance(x.expr, sympy.Symbol) and y.expr.is_number and y.expr.is_real is not False):
            return None
        if var is not None and x.expr != var:
            return None
        var = x.expr
        if op in ("<", "<="):
            hi, ropen = y.expr, op == "<"
        else:
            lo, lopen = y.expr, op == ">"
    return sympy.Interval(lo, hi, lopen, ropen)


def _set_eq(gs, as_, ctx) -> bool:
    if gs is None or as_ is None:
        return False
    try:
        if gs == as_:
            ctx["how"] = "same set"
            return True
        diff = gs.symmetric_difference(as_)
        if diff is sympy.S.EmptySet or diff == sympy.S.EmptySet:
            ctx["how"] = "same set"
            return True
        # finite sets with elements sympy cannot order: element-wise
        if isinstance(gs, sympy.FiniteSet) and isinstance(as_, sympy.FiniteSet):
            return _unordered([Num(x) for x in gs.args], [Num(x) for x in as_.args], ctx)
        if isinstance(gs, sympy.Interval) and isinstance(as_, sympy.Interval):
            return (gs.left_open == as_.left_open and gs.right_open == as_.right_open
                    and _value_eq(gs.start, as_.start, ctx) and _value_eq(gs.end, as_.end, ctx))
    except Exception:  # noqa: BLE001  (sympy raises anything: not equal)
        return False
    return False


def _items(v):
    if isinstance(v, Seq):
        return list(v.items)
    if isinstance(v, Num) and _is_matrix(v.expr) and 1 in v.expr.shape:
        return [Num(x) for x in v.expr]
    if isinstance(v, Interval):
        return None
    return [v]


def _assignment_values(v):
    """`p = 5, q = 2` -> (5, 2): a list of assignments read as the tuple of their values."""
    if isinstance(v, Seq) and v.kind == "list" and len(v.items) > 1 and all(
            isinstance(x, Rel) and x.ops == ("=",) and _symbol_like(x.items[0]) for x in v.items):
        return Seq("tuple", tuple(x.items[1] for x in v.items))
    return None


def _seq_eq(g: Seq, a, ctx) -> bool:
    items = _items(a)
    if items is None:
        return False
    values = _assignment_values(g)
    if values is not None and isinstance(a, Seq) and a.kind in ("tuple", "pair"):
        return _seq_eq(values, a, ctx)
    if g.kind in ("tuple", "pair", "ratio"):
        if isinstance(a, Seq) and g.kind == "ratio" and a.kind != "ratio":
            return False
        if len(items) != len(g.items):
            return False
        if all(_eq(x, y, ctx) for x, y in zip(g.items, items)):
            ctx["how"] = "ordered " + g.kind
            return True
        return False
    # set or bare list: order does not matter
    if isinstance(a, Seq) and a.kind == "ratio":
        return False
    if _unordered(list(g.items), items, ctx):
        ctx["how"] = "same elements"
        return True
    return False


def _unordered(gold_items, answer_items, ctx) -> bool:
    """Set equality: every gold item is among the answer's and every answer item among the gold's
    (a repeated element counts once, as in a set)."""
    if not gold_items or not answer_items:
        return not gold_items and not answer_items
    sub = {"budget": ctx["budget"], "how": ""}
    matched = [False] * len(answer_items)
    for x in gold_items:
        hit = False
        for k, y in enumerate(answer_items):
            if _eq(x, y, sub):
                matched[k] = hit = True
        if not hit:
            return False
    return all(matched)


def _matrix_eq(g: Num, a, ctx) -> bool:
    m = g.expr
    if isinstance(a, Num) and _is_matrix(a.expr):
        if a.expr.shape != m.shape:
            return False
        ok = all(_value_eq(x, y, ctx) or _num_eq(Num(x), Num(y), ctx) for x, y in zip(m, a.expr))
        if ok:
            ctx["how"] = "same matrix"
        return ok
    rows = _nested_rows(a)
    if rows is not None and len(rows) == m.shape[0] and all(len(r) == m.shape[1] for r in rows) and m.shape[0] > 1:
        ok = all(_eq(Num(m[i, j]), rows[i][j], ctx) for i in range(m.shape[0]) for j in range(m.shape[1]))
        if ok:
            ctx["how"] = "matrix as nested lists"
        return ok
    if 1 in m.shape and isinstance(a, Seq) and a.kind in ("tuple", "pair", "list"):
        if len(a.items) != len(m):
            return False
        ok = all(_eq(Num(x), y, ctx) for x, y in zip(m, a.items))
        if ok:
            ctx["how"] = "vector as tuple"
        return ok
    return False


def _nested_rows(a):
    """[[1, 2], [3, 4]] (read as a tuple of closed intervals or of tuples) as rows of values, else None."""
    if not (isinstance(a, Seq) and a.kind in ("tuple", "list") and len(a.items) > 1):
        return None
    rows = []
    for row in a.items:
        if isinstance(row, Interval) and not row.lopen and not row.ropen:
            rows.append([row.lo, row.hi])
        elif isinstance(row, Seq) and row.kind in ("tuple", "pair"):
            rows.append(list(row.items))
        else:
            return None
    return rows


def _base_eq(g, a) -> bool:
    """Same base and value; a base-n gold also takes its digits written bare (`204` for `204_5`, the subscript
    forgotten), a plain gold takes a numeral of its value (`11111111_2` for 255). A numeral that cannot be
    read in its base (`9_2`, or `19` against a base-8 gold) is no value and equals nothing."""
    def digits_value(digits: str, base: int):
        try:
            return int(digits, base)
        except ValueError:
            return None

    if isinstance(g, BaseNum) and isinstance(a, BaseNum):
        gv, av = digits_value(g.digits, g.base), digits_value(a.digits, a.base)
        return g.base == a.base and gv is not None and gv == av
    if isinstance(g, BaseNum) and isinstance(a, Num) and a.literal is not None:
        gv, av = digits_value(g.digits, g.base), digits_value(a.literal, g.base)
        return gv is not None and gv == av
    if isinstance(a, BaseNum) and isinstance(g, Num) and isinstance(g.expr, sympy.Integer):
        av = digits_value(a.digits, a.base)
        return av is not None and av == int(g.expr)
    return False
