"""The values a math answer parses to (`rewards.math_parse`), with the exact arithmetic the grammar does on
them: every literal an exact sympy Rational, powers computed exactly while their size is bounded, a `\\pm`
carried as the symbol PM until the value splits in two."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sympy
from sympy import Rational

MAX_POW_BITS = 200_000        # 2^(this many bits) is built exactly; larger powers stay unevaluated
PM = sympy.Symbol("PLUSMINUS__")  # stands for the sign of \pm until the value is split in two


@dataclass(frozen=True)
class Num:
    """A scalar (or a matrix: `expr` may be a sympy ImmutableMatrix).

    `decimal` keeps the literal of a bare decimal number ("0.3333") for the narrow approximation rule;
    `percent` / `degrees` record a trailing `%` / `^\\circ`.
    """

    expr: Any
    decimal: str | None = None
    percent: bool = False
    degrees: bool = False
    literal: str | None = None    # the digits of a bare integer literal (for base-n answers)


@dataclass(frozen=True)
class Text:
    """An answer kept as text: words, or math the grammar could not parse."""
    text: str
    parsed: bool = True           # False: this is the raw answer because the math grammar failed


@dataclass(frozen=True)
class Seq:
    """Several values: a tuple, a pair, a bare list, a set or a ratio (`kind` decides how they compare)."""
    kind: str                     # "tuple" (ordered), "pair" ("(a, b)": a point or an open interval),
    items: tuple                  # "list" (bare a, b, c), "set" (\{...\}), "ratio" (a:b)


@dataclass(frozen=True)
class Interval:
    """An interval; `lopen`/`ropen` mark open ends."""
    lo: Any
    hi: Any
    lopen: bool
    ropen: bool


@dataclass(frozen=True)
class SetOp:
    """A union, intersection or difference of sets, kept unevaluated."""
    op: str                       # "union" | "intersection" | "minus"
    items: tuple


@dataclass(frozen=True)
class Rel:
    """A (possibly chained) relation such as `x = 3` or `1 < x <= 2`."""
    ops: tuple                    # "=", "<", "<=", ">", ">=", "!=", "in", "approx"
    items: tuple


@dataclass(frozen=True)
class BaseNum:
    """A numeral in another base (`204_5`), equal to its value."""
    digits: str
    base: int


class ParseError(ValueError):
    """The answer is outside the math grammar: it is compared as text instead."""
    pass


def base_num(digits: str, base: int) -> BaseNum:
    """`204_5`; a numeral with a digit its base does not have (`9_2`) is no number at all."""
    try:
        int(digits, base)
    except ValueError:
        raise ParseError(f"{digits} is not a base-{base} numeral") from None
    return BaseNum(digits.lstrip("0") or "0", base)


# ------------------------------------------------------------------------------------ arithmetic
_SYM_CACHE: dict[str, sympy.Symbol] = {}


def sym(name: str) -> sympy.Symbol:
    """One sympy Symbol per name, so equal names give identical symbols."""
    if name not in _SYM_CACHE:
        _SYM_CACHE[name] = sympy.Symbol(name)
    return _SYM_CACHE[name]


def number_of(lit: str, rep: str | None) -> Rational:
    """Exact value of a decimal literal; `rep` is the repeating block of 0.1\\overline{6}."""
    mant, _, exp = lit.partition("e")
    intpart, _, frac = mant.partition(".")
    intpart = intpart or "0"
    value = Rational(int(intpart + frac), 10 ** len(frac))
    if rep:
        value += Rational(int(rep), (10 ** len(rep) - 1) * 10 ** len(frac))
    if exp:
        e = int(exp)
        if abs(e) > 10_000:
            raise ParseError("exponent too large")
        value *= Rational(10) ** e
    return value


def safe_pow(base, exp):
    """base**exp, exactly when the result is of bounded size, else left unevaluated."""
    if isinstance(base, sympy.MatrixBase):
        if exp.is_Integer and 0 <= int(exp) <= 64:
            return sympy.ImmutableMatrix(base ** int(exp))
        raise ParseError("matrix power")
    if exp == PM or (isinstance(exp, sympy.Basic) and exp.has(PM) and not exp.is_number):
        return sympy.Pow(base, exp)
    if exp == 0 and base.is_infinite:
        return sympy.nan  # \infty^0 is indeterminate (sympy says 1)
    if base.is_Rational and exp.is_Rational and base not in (0, 1, -1):
        num_bits = max(abs(base.p).bit_length(), abs(base.q).bit_length())
        if abs(exp) * num_bits > MAX_POW_BITS:
            return sympy.Pow(base, exp, evaluate=False)
    if exp.is_Integer and abs(int(exp)) > 10_000 and not base.is_Rational and base.is_number is False:
        return sympy.Pow(base, exp, evaluate=False)
    return sympy.Pow(base, exp)


def fold_assignment_list(items):
    """`n = 1, 2, 3` -> n = {1, 2, 3}: an assignment followed by bare values."""
    first = items[0]
    if (isinstance(first, Rel) and first.ops == ("=",) and is_symbol(first.items[0])
            and all(isinstance(x, Num) for x in items[1:]) and isinstance(first.items[1], Num)):
        return Rel(("=",), (first.items[0], Seq("list", (first.items[1],) + tuple(items[1:]))))
    return Seq("list", tuple(items))


def is_symbol(v) -> bool:
    """Whether a value is a bare variable or an undefined function such as f(x)."""
    return isinstance(v, Num) and isinstance(v.expr, (sympy.Symbol, sympy.core.function.AppliedUndef))


def scalar_of(v):
    """The sympy value of a scalar, or ParseError for a pair, set or text."""
    if isinstance(v, Num):
        return v.expr
    if isinstance(v, Seq) and v.kind == "pair":
        raise ParseError("a pair is not a scalar")
    raise ParseError(f"{type(v).__name__} is not a scalar")


def value_flags(v):
    """A scalar's (percent, degrees) marks, or None when it has neither."""
    if isinstance(v, Num) and (v.percent or v.degrees):
        return (v.percent, v.degrees)
    return None


def with_flags(v, **kw):
    """A scalar with percent/degrees marks set (a mark on a non-scalar is a ParseError)."""
    if not isinstance(v, Num):
        raise ParseError("flag on a non-scalar")
    return Num(v.expr, v.decimal, kw.get("percent", v.percent), kw.get("degrees", v.degrees), v.literal)


def arith(a, b, op: str):
    """`a * b` or `a / b` on scalars or matrices, keeping a percent/degrees mark; x/0 is zoo, 0/0 nan."""
    x, y = scalar_of(a), scalar_of(b)
    flags = value_flags(a) or value_flags(b)
    if op == "*":
        if isinstance(x, sympy.MatrixBase) or isinstance(y, sympy.MatrixBase):
            if isinstance(x, sympy.MatrixBase) and isinstance(y, sympy.MatrixBase) and x.shape[1] != y.shape[0]:
                raise ParseError("matrix shapes")
            out = sympy.ImmutableMatrix(x * y)
        else:
            out = x * y
    else:
        if isinstance(y, sympy.MatrixBase):
            raise ParseError("division by a matrix")
        if y == 0:
            out = sympy.nan if x == 0 else sympy.zoo
        else:
            out = x / y
            if isinstance(out, sympy.MatrixBase):
                out = sympy.ImmutableMatrix(out)
    if flags:
        return Num(out, percent=flags[0], degrees=flags[1])
    return Num(out)


def expand_pm(v):
    """Split a value holding \\pm into the set of its two values (1 \\pm \\sqrt{19} -> {1+sqrt19, 1-sqrt19})."""
    if isinstance(v, Num) and isinstance(v.expr, sympy.Basic) and v.expr.has(PM):
        vals = []
        for s in (1, -1):
            e = v.expr.subs(PM, s)
            vals.append(Num(e, percent=v.percent, degrees=v.degrees))
        return Seq("set", tuple(vals))
    if isinstance(v, Seq):
        out = []
        for x in v.items:
            y = expand_pm(x)
            if isinstance(y, Seq) and y.kind == "set" and isinstance(x, Num):
                out.extend(y.items)
            else:
                out.append(y)
        return Seq(v.kind, tuple(out))
    if isinstance(v, Rel):
        return Rel(v.ops, tuple(expand_pm(x) for x in v.items))
    return v
