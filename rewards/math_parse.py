"""LaTeX / plain-text answers -> exact values: the parser behind `rewards.math`.

Why our own parser: answers are short, and the checks that matter (is `10^{-10}` the same as `10^{-11}`?)
need exact numbers. Here every literal becomes an exact sympy Rational (`0.1` is 1/10, never a float),
integer powers and factorials are computed exactly when their size is bounded, and an answer keeps its
shape (a tuple is not a set, `(1, 2]` is an interval, `\\text{Evelyn}` is text). Anything this grammar
does not know falls back to latex2sympy2_extended (see `rewards.math_compare`).

`parse(text)` never raises: an unparsable answer comes back as `Text(raw, parsed=False)`.
This module imports sympy, so it runs inside the verifier worker, not in the caller.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import sympy
from sympy import Integer, Rational

from rewards.math_extract import WRAPPERS as _WRAPPERS
from rewards.math_extract import normalize, normalize_text, strip_math_delimiters

MAX_POW_BITS = 200_000        # 2^(this many bits) is built exactly; larger powers stay unevaluated
MAX_FACTORIAL = 5_000         # n! computed exactly up to this n
MAX_TEXT = 2_000              # answers longer than this are not parsed as math (after extraction)
PM = sympy.Symbol("PLUSMINUS__")  # stands for the sign of \pm until the value is split in two


# --------------------------------------------------------------------------------------------- values
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
    text: str
    parsed: bool = True           # False: this is the raw answer because the math grammar failed


@dataclass(frozen=True)
class Seq:
    kind: str                     # "tuple" (ordered), "pair" ("(a, b)": a point or an open interval),
    items: tuple                  # "list" (bare a, b, c), "set" (\{...\}), "ratio" (a:b)


@dataclass(frozen=True)
class Interval:
    lo: Any
    hi: Any
    lopen: bool
    ropen: bool


@dataclass(frozen=True)
class SetOp:
    op: str                       # "union" | "intersection" | "minus"
    items: tuple


@dataclass(frozen=True)
class Rel:
    ops: tuple                    # "=", "<", "<=", ">", ">=", "!=", "in", "approx"
    items: tuple


@dataclass(frozen=True)
class BaseNum:
    digits: str
    base: int


class ParseError(ValueError):
    pass


def _base_num(digits: str, base: int) -> BaseNum:
    """`204_5`; a numeral with a digit its base does not have (`9_2`) is no number at all."""
    try:
        int(digits, base)
    except ValueError:
        raise ParseError(f"{digits} is not a base-{base} numeral") from None
    return BaseNum(digits.lstrip("0") or "0", base)


# ----------------------------------------------------------------------------------- normalisation
_UNITS = {
    "cm", "mm", "km", "m", "meter", "meters", "metre", "metres", "centimeter", "centimeters", "millimeter",
    "millimeters", "kilometer", "kilometers", "inch", "inches", "in", "ft", "foot", "feet", "yd", "yard", "yards",
    "mile", "miles", "mi", "unit", "units", "sq", "square", "cubic", "cent", "cents", "dollar", "dollars",
    "usd", "euro", "euros", "hour", "hours", "hr", "hrs", "h", "minute", "minutes", "min", "mins", "second",
    "seconds", "sec", "secs", "s", "day", "days", "week", "weeks", "month", "months", "year", "years", "yr",
    "yrs", "pound", "pounds", "lb", "lbs", "ounce", "ounces", "oz", "gram", "grams", "g", "kg", "kilogram",
    "kilograms", "liter", "liters", "litre", "litres", "l", "ml", "gallon", "gallons", "gal", "mph", "kph",
    "people", "person", "persons", "student", "students", "apple", "apples", "page", "pages", "mpg",
    "calories", "points", "point", "times", "ways", "way", "coins", "marbles", "tiles", "steps", "games",
    "handshakes", "numbers", "integers", "digits", "triangles", "squares", "rectangles", "sides", "edges",
    "vertices", "faces", "boxes", "books", "cups", "eggs", "feet^2", "meters^2", "inches^2", "cm^2", "m^2",
    "sq.", "km/h", "m/s", "cm/s", "ft/s", "units^2", "units^3", "cm^3", "m^3",
}
# bare (not \text-wrapped) abbreviations we drop after a value; single letters stay variables
_BARE_UNITS = {u for u in _UNITS if len(u) >= 2} - {"in", "sq", "square", "cubic", "times", "ways", "way"}
_SEPARATOR_WORDS = {"and", "or", "&", ","}
_PERCENT_WORDS = {"percent", "percentage", "pct", "per cent"}
_DEGREE_WORDS = {"degree", "degrees", "deg", "°"}
_FUNCS = {
    "sin": sympy.sin, "cos": sympy.cos, "tan": sympy.tan, "cot": sympy.cot, "sec": sympy.sec, "csc": sympy.csc,
    "arcsin": sympy.asin, "arccos": sympy.acos, "arctan": sympy.atan, "arccot": sympy.acot,
    "arcsec": sympy.asec, "arccsc": sympy.acsc,
    "sinh": sympy.sinh, "cosh": sympy.cosh, "tanh": sympy.tanh, "coth": sympy.coth,
    "ln": sympy.log, "log": sympy.log, "lg": lambda x: sympy.log(x, 10), "exp": sympy.exp,
    "det": None, "gcd": None, "lcm": None, "max": None, "min": None,
}
_INVERSE = {"sin": "arcsin", "cos": "arccos", "tan": "arctan", "cot": "arccot", "sec": "arcsec", "csc": "arccsc"}
_GREEK = {
    "alpha", "beta", "gamma", "delta", "epsilon", "varepsilon", "zeta", "eta", "theta", "vartheta", "iota",
    "kappa", "lambda", "mu", "nu", "xi", "omicron", "rho", "sigma", "tau", "upsilon", "phi", "varphi", "chi",
    "psi", "omega", "Gamma", "Delta", "Theta", "Lambda", "Xi", "Pi", "Sigma", "Upsilon", "Phi", "Psi", "Omega",
}
_RELS = {"=": "=", "<": "<", ">": ">", "≤": "<=", "≥": ">=", "≠": "!=", "≈": "approx", "∈": "in"}
# ------------------------------------------------------------------------------------------ tokens
@dataclass
class Tok:
    kind: str      # NUM, ID, CMD, OP, WORD, GROUP_TEXT, END
    value: str
    space: bool = False    # whitespace before this token
    extra: Any = None      # NUM: repeating digits; CMD: raw argument


_NUM_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)")
_THOUSANDS_RE = re.compile(r"[1-9]\d{0,2}(?:,\d{3})+(?:\.\d+)?(?!\d|,\d)")
_SPACE_THOUSANDS_RE = re.compile(r"[1-9]\d{0,2}(?: \d{3})+(?:\.\d+)?(?![\d])")


def _brace_group(s: str, i: int) -> tuple[str, int]:
    """s[i] == '{': return (content, index after the closing brace)."""
    depth, j = 0, i
    while j < len(s):
        if s[j] == "\\" and j + 1 < len(s):
            j += 2
            continue
        if s[j] == "{":
            depth += 1
        elif s[j] == "}":
            depth -= 1
            if depth == 0:
                return s[i + 1:j], j + 1
        j += 1
    raise ParseError("unbalanced braces")


def tokenize(s: str, thousands: bool = True) -> list[Tok]:
    toks: list[Tok] = []
    i, n = 0, len(s)
    space = False

    def push(kind, value, extra=None):
        nonlocal space
        toks.append(Tok(kind, value, space, extra))
        space = False

    def prev_is_value() -> bool:
        return bool(toks) and (toks[-1].kind in ("NUM", "ID") or toks[-1].value in (")", "]", "}", "%", "°", "!"))

    while i < n:
        c = s[i]
        if c.isspace():
            space = True
            i += 1
            continue
        if c.isdigit() or (c == "." and i + 1 < n and s[i + 1].isdigit()):
            m = None
            if thousands:
                m = _THOUSANDS_RE.match(s, i) or _SPACE_THOUSANDS_RE.match(s, i)
                if m and (i > 0 and (s[i - 1].isdigit() or s[i - 1] == ".")):
                    m = None
                # inside brackets "(12,102)" is a pair, not twelve thousand one hundred and two
                before = s[:i].rstrip()[-1:]
                after = s[m.end():].lstrip()[:1] if m else ""
                if m and (before in ("(", "[", ",") or after in (")", "]", ",")):
                    m = None
            if m:
                lit = m.group(0).replace(",", "").replace(" ", "")
                i = m.end()
            else:
                m = _NUM_RE.match(s, i)
                lit = m.group(0)
                i = m.end()
                if lit.endswith(".") and not (i < n and s[i:i + 9] == "\\overline"):
                    lit, i = lit[:-1], i - 1     # "5." at a sentence end
            # scientific notation: 1.5e-3, 2E+5, 1e6 (not when a letter follows: 2e x is 2*e*x)
            sm = re.compile(r"[eE]([+-]?\d+)(?![a-zA-Z\d])").match(s, i)
            if sm:
                lit = f"{lit}e{sm.group(1)}"
                i = sm.end()
            rep = None
            om = re.compile(r"\\overline\s*\{\s*(\d+)\s*\}|\\overline\s*(\d)").match(s, i)
            if om and "e" not in lit:
                rep = om.group(1) or om.group(2)
                i = om.end()
                if "." not in lit:
                    lit += "."
            push("NUM", lit, rep)
            continue
        if c.isalpha() and c.isascii():
            j = i
            while j < n and s[j].isalpha() and s[j].isascii():
                j += 1
            word = s[i:j]
            low = word.lower()
            i = j
            if low in ("square", "sq", "cubic") and prev_is_value():
                m2 = re.compile(r"\.?\s*([A-Za-z]+)").match(s, i)
                if m2 and m2.group(1).lower() in _UNITS:  # "5 square units", "2 cubic feet"
                    i = m2.end()
                    continue
            if len(word) >= 2 and low in _BARE_UNITS and prev_is_value() and not s[i:i + 1] == "(":
                i = _skip_unit_power(s, i)
            elif len(word) >= 2 and low in _FUNCS or low in ("sqrt", "pi"):
                push("CMD", low)
            elif low in ("infty", "infinity", "inf"):
                push("OP", "∞")
            elif low in _SEPARATOR_WORDS and toks:
                push("OP", ",")
            elif low in _PERCENT_WORDS:
                push("OP", "%")
            elif low in _DEGREE_WORDS and prev_is_value():
                push("OP", "°")
            elif len(word) >= 4 or low in ("no", "yes", "none", "odd", "all", "the", "is", "are", "not", "than"):
                push("WORD", word)
            else:
                for ch in word:
                    push("ID", ch)
            continue
        if c == "\\":
            m = re.compile(r"\\([a-zA-Z]+)").match(s, i)
            if not m:
                if i + 1 < n and s[i + 1] in "{}":
                    push("OP", "\\" + s[i + 1])
                    i += 2
                    continue
                if i + 1 < n and s[i + 1] == "\\":
                    push("OP", "ROW")
                    i += 2
                    continue
                i += 2
                space = True
                continue
            name = m.group(1)
            i = m.end()
            if name in _WRAPPERS:
                while i < n and s[i] == " ":
                    i += 1
                if i < n and s[i] == "{":
                    content, i = _brace_group(s, i)
                elif name == "operatorname":
                    continue
                else:
                    content, i = (s[i], i + 1) if i < n else ("", i)
                i = _text_group(content, name, s, i, toks, push, prev_is_value, thousands)
                continue
            if name in ("begin", "end"):
                if i < n and s[i] == "{":
                    env, i = _brace_group(s, i)
                    if env == "array" and i < n and s[i] == "{":
                        _, i = _brace_group(s, i)    # column spec
                    push("CMD", name, env.strip().rstrip("*"))
                continue
            push("CMD", name)
            continue
        if c == "&":
            push("OP", "&")
            i += 1
            continue
        if c == "\n":
            i += 1
            continue
        push("OP", c)
        i += 1
    toks.append(Tok("END", "", space))
    # a row break means something only inside \begin{...}...\end{...}; elsewhere it is a line break
    out, depth = [], 0
    for t in toks:
        if t.kind == "CMD" and t.value in ("begin", "end"):
            depth += 1 if t.value == "begin" else -1
        if t.kind == "OP" and t.value == "ROW" and depth <= 0:
            continue
        out.append(t)
    return out


def _skip_unit_power(s: str, i: int) -> int:
    m = re.compile(r"\s*\^\s*(?:\{\s*\d\s*\}|\d)").match(s, i)
    return m.end() if m else i


def _text_group(content, name, s, i, toks, push, prev_is_value, thousands) -> int:
    """Decide what a \\text{...}-like group means: nothing (a unit), a separator, %, degrees, math, or words."""
    stripped = content.strip()
    low = re.sub(r"\s+", " ", stripped.lower()).strip(" .")
    if not low:
        return i
    if (name == "mathbb" and stripped == "R") or low in ("all real numbers", "all reals", "the real numbers"):
        push("OP", "ℝ")
        return i
    if name in ("mathbf", "boldsymbol", "bm", "vec", "mathbb", "mathcal") and re.fullmatch(r"[A-Za-z]", stripped):
        push("ID", stripped)
        return i
    if low in _SEPARATOR_WORDS or low in ("and/or",):
        push("OP", ",")
        return i
    if low in _PERCENT_WORDS:
        push("OP", "%")
        return i
    if low in _DEGREE_WORDS:
        push("OP", "°")
        return i
    unit_words = low.replace("^", " ^").split()
    if (any(w in _UNITS for w in unit_words)
            and all(w in _UNITS or re.fullmatch(r"\^\{?\d\}?", w) or w in ("per", "/") for w in unit_words)):
        if prev_is_value():
            return _skip_unit_power(s, i)
    if name == "operatorname":
        push("CMD", low.replace(" ", ""))
        return i
    if re.fullmatch(r"[A-Za-z]{2,}(?:[\s\-'][A-Za-z]+)*", stripped) and not (low in _FUNCS):
        for w in stripped.split():
            push("WORD", w)
        return i
    # math inside a wrapper (\text{13}, \mathrm{e}, \text{(B)}): tokenize it in place
    for t in tokenize(stripped, thousands)[:-1]:
        push(t.kind, t.value, t.extra)
    return i


# ------------------------------------------------------------------------------------------ parser
_SYM_CACHE: dict[str, sympy.Symbol] = {}


def _sym(name: str) -> sympy.Symbol:
    if name not in _SYM_CACHE:
        _SYM_CACHE[name] = sympy.Symbol(name)
    return _SYM_CACHE[name]


def _number(lit: str, rep: str | None) -> Rational:
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


def _safe_pow(base, exp):
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


class _Parser:
    def __init__(self, toks: list[Tok]):
        self.toks = toks
        self.i = 0
        self.abs_depth = 0
        self.brace_depth = 0

    # -- helpers
    @property
    def tok(self) -> Tok:
        return self.toks[self.i]

    def peek(self, k: int = 1) -> Tok:
        return self.toks[min(self.i + k, len(self.toks) - 1)]

    def next(self) -> Tok:
        t = self.toks[self.i]
        self.i += 1
        return t

    def at(self, kind: str, value: str | None = None) -> bool:
        t = self.tok
        return t.kind == kind and (value is None or t.value == value)

    def expect(self, kind: str, value: str | None = None) -> Tok:
        if not self.at(kind, value):
            raise ParseError(f"expected {value or kind}, got {self.tok.value!r}")
        return self.next()

    # -- grammar
    def parse(self):
        if self.at("END"):
            raise ParseError("empty")
        v = self.parse_list(stop=("END",))
        if not self.at("END"):
            raise ParseError(f"unexpected {self.tok.value!r}")
        return v

    def parse_list(self, stop):
        """Items split by commas; semicolons split groups first (`p=5, q=2; p=7, q=2`)."""
        groups = [self.parse_group(stop)]
        while self.at("OP", ";"):
            while self.at("OP", ";"):
                self.next()
            if self.tok.kind == "END" or self.tok.value in stop:
                break
            groups.append(self.parse_group(stop))
        if len(groups) == 1:
            return groups[0]
        flat = []
        for g in groups:  # groups of one item are just items (-12; -11; -10)
            flat.append(g)
        return Seq("list", tuple(flat))

    def parse_group(self, stop):
        items = [self.parse_item()]
        while self.at("OP", ","):
            while self.at("OP", ","):
                self.next()
            if self.tok.kind == "END" or self.tok.value in stop or self.at("OP", ";"):
                break
            items.append(self.parse_item())
        if len(items) == 1:
            return items[0]
        return _fold_assignment_list(items)

    def parse_item(self):
        first = self.parse_setexpr()
        ops, items = [], [first]
        while self.tok.kind == "OP" and self.tok.value in _RELS:
            ops.append(_RELS[self.next().value])
            items.append(self.parse_setexpr())
        if not ops:
            return first
        return Rel(tuple(ops), tuple(items))

    def parse_setexpr(self):
        left = self.parse_ratio()
        items, op = [left], None
        while self.tok.kind == "OP" and self.tok.value in "∪∩∖":
            this = {"∪": "union", "∩": "intersection", "∖": "minus"}[self.next().value]
            if op and this != op:
                left = SetOp(op, tuple(items))
                items = [left]
            op = this
            items.append(self.parse_ratio())
        return SetOp(op, tuple(items)) if op else left

    def parse_ratio(self):
        left = self.parse_additive()
        if self.at("OP", ":") and self.peek().kind != "END":
            items = [left]
            while self.at("OP", ":"):
                self.next()
                items.append(self.parse_additive())
            return Seq("ratio", tuple(items))
        return left

    def parse_additive(self):
        sign = None
        if self.tok.kind == "OP" and self.tok.value in "+-±∓":
            sign = self.next().value
        first = self.parse_term()
        if sign is None and not (self.tok.kind == "OP" and self.tok.value in "+-±∓"):
            return first
        expr = _scalar(first)
        if sign:
            expr = {"+": 1, "-": -1, "±": PM, "∓": -PM}[sign] * expr
        flags = _flags(first)
        while self.tok.kind == "OP" and self.tok.value in "+-±∓":
            op = self.next().value
            term = self.parse_term()
            flags = flags or _flags(term)
            rhs = _scalar(term)
            expr = expr + {"+": 1, "-": -1, "±": PM, "∓": -PM}[op] * rhs
        return Num(expr, percent=flags[0], degrees=flags[1]) if flags else Num(expr)

    def _starts_factor(self) -> bool:
        t = self.tok
        if t.kind in ("NUM", "ID"):
            return True
        if t.kind == "CMD":
            return t.value not in ("end", "right", "rfloor", "rceil")
        if t.kind == "OP":
            if t.value == "|":
                return self.abs_depth == 0
            return t.value in ("(", "[", "{", "\\{", "∞", "‖")
        return False

    def parse_term(self):
        left = self.parse_signed_factor()
        while True:
            t = self.tok
            if t.kind == "OP" and t.value in ("*", "/", "÷"):
                self.next()
                right = self.parse_signed_factor()
                left = _arith(left, right, t.value)
            elif self._starts_factor():
                if isinstance(left, Num) and left.literal is not None and self.at("CMD", "frac"):
                    frac = self.try_simple_frac()
                    if frac is not None:       # mixed number 2\frac{1}{2}
                        left = Num(Integer(left.literal) + frac)
                        continue
                if (isinstance(left, Num) and left.literal is not None and self.tok.kind == "NUM" and self.tok.space
                        and self.peek().kind == "OP" and self.peek().value == "/" and self.peek(2).kind == "NUM"
                        and re.fullmatch(r"\d+", self.tok.value) and re.fullmatch(r"\d+", self.peek(2).value)
                        and int(self.peek(2).value) > int(self.tok.value) > 0):
                    num, den = int(self.next().value), (self.next(), int(self.next().value))[1]
                    left = Num(Integer(left.literal) + Rational(num, den))   # mixed number 2 1/2
                    continue
                if self.tok.kind == "NUM" and self.toks[self.i - 1].kind == "NUM":
                    raise ParseError("two numbers side by side")   # `1 2`: a list? 12? 1*2? (never a product)
                right = self.parse_signed_factor(implicit=True)
                left = _arith(left, right, "*")
            else:
                return left

    def try_simple_frac(self):
        save = self.i
        try:
            self.next()
            a = self.parse_arg()
            b = self.parse_arg()
            if isinstance(a, Num) and isinstance(b, Num) and a.literal and b.literal and int(b.literal) != 0:
                return Rational(int(a.literal), int(b.literal))
        except ParseError:
            pass
        self.i = save
        return None

    def parse_signed_factor(self, implicit=False):
        if not implicit and self.tok.kind == "OP" and self.tok.value in "+-":
            sign = self.next().value
            f = self.parse_signed_factor()
            return Num(-_scalar(f)) if sign == "-" else f
        return self.parse_power()

    def parse_power(self):
        base = self.parse_postfix(self.parse_primary())
        if self.at("OP", "^"):
            self.next()
            exp = self.parse_exponent()
            if isinstance(base, Num) and base.degrees:
                return base
            base = self.parse_postfix(Num(_safe_pow(_scalar(base), _scalar(exp))))
        return base

    def parse_exponent(self):
        if self.at("OP", "{"):
            return self.parse_braced()
        if self.tok.kind == "OP" and self.tok.value in "+-":
            sign = self.next().value
            e = self.parse_exponent()
            return Num(-_scalar(e)) if sign == "-" else e
        return self.parse_power()

    def parse_postfix(self, v):
        while True:
            if self.at("OP", "!"):
                self.next()
                x = _scalar(v)
                if x.is_Integer and 0 <= int(x) <= MAX_FACTORIAL:
                    v = Num(sympy.factorial(x))
                else:
                    v = Num(sympy.factorial(x, evaluate=False) if x.is_Integer else sympy.factorial(x))
            elif self.at("OP", "%"):
                self.next()
                v = _with(v, percent=True)
            elif self.at("OP", "°"):
                self.next()
                v = _with(v, degrees=True)
            elif self.at("OP", "'"):
                self.next()
                if isinstance(v, Num) and isinstance(v.expr, sympy.Symbol):
                    v = Num(_sym(v.expr.name + "'"))
            else:
                return v

    def parse_arg(self):
        """One LaTeX argument: {group}, or a single token (\\frac12 -> 1 then 2)."""
        t = self.tok
        if t.kind == "OP" and t.value == "{":
            return self.parse_braced()
        if t.kind == "NUM":
            self.next()
            lit = t.value
            if "." not in lit and len(lit) > 1:   # \frac12: first digit only
                self.toks.insert(self.i, Tok("NUM", lit[1:]))
                lit = lit[0]
            return Num(_number(lit, None), literal=lit)
        if t.kind == "ID":
            self.next()
            return Num(self._ident(t.value))
        return self.parse_primary()

    def parse_braced(self):
        self.expect("OP", "{")
        if self.at("OP", "}"):
            raise ParseError("empty group")
        v = self.parse_list(stop=("}",))
        self.expect("OP", "}")
        return v

    def _ident(self, name: str):
        if name == "e":
            return sympy.E
        if name == "i":
            return sympy.I
        return _sym(name)

    def parse_primary(self):
        t = self.tok
        if t.kind == "NUM":
            self.next()
            if self.at("OP", "_") and re.fullmatch(r"[0-9A-Fa-f]+", t.value):
                base = self.parse_subscript_text()
                if base.isdigit() and 2 <= int(base) <= 36:
                    return _base_num(t.value, int(base))
                raise ParseError("bad base subscript")
            value = _number(t.value, t.extra)
            is_dec = "." in t.value or "e" in t.value
            literal = t.value if re.fullmatch(r"\d+", t.value) else None
            return Num(value, decimal=t.value if is_dec and not t.extra else None, literal=literal)
        if t.kind == "ID":
            self.next()
            name = t.value
            if self.at("OP", "_"):
                sub = self.parse_subscript_text()
                return Num(_sym(f"{name}_{sub}"))
            if name in "fgh" and self.at("OP", "(") and not self.tok.space:
                self.next()
                args = self.parse_list(stop=(")",))
                self.expect("OP", ")")
                args = args.items if isinstance(args, Seq) else (args,)
                return Num(sympy.Function(name)(*[_scalar(a) for a in args]))
            return Num(self._ident(name))
        if t.kind == "OP":
            if t.value in ("(", "["):
                return self.parse_bracketed()
            if t.value == "{":
                v = self.parse_braced_or_set()
                return v
            if t.value == "\\{":
                self.next()
                if self.at("OP", "\\}"):
                    self.next()
                    return Seq("set", ())
                v = self.parse_list(stop=("\\}",))
                self.expect("OP", "\\}")
                return Seq("set", v.items if isinstance(v, Seq) and v.kind == "list" else (v,))
            if t.value == "|":
                self.next()
                self.abs_depth += 1
                v = self.parse_item()
                self.abs_depth -= 1
                self.expect("OP", "|")
                return Num(sympy.Abs(_scalar(v)))
            if t.value == "‖":
                self.next()
                v = self.parse_additive()
                self.expect("OP", "‖")
                return Num(sympy.Abs(_scalar(v)))
            if t.value == "∞":
                self.next()
                return Num(sympy.oo)
            if t.value == "∅":
                self.next()
                return Seq("set", ())
            if t.value == "ℝ":
                self.next()
                return Interval(Num(-sympy.oo), Num(sympy.oo), True, True)
        if t.kind == "CMD":
            return self.parse_command()
        if t.kind == "WORD":
            raise ParseError("words")
        raise ParseError(f"unexpected {t.value!r}")

    def parse_subscript_text(self) -> str:
        self.expect("OP", "_")
        if self.at("OP", "{"):
            depth = 0
            parts = []
            while True:
                t = self.next()
                if t.kind == "END":
                    raise ParseError("unbalanced subscript")
                if t.kind == "OP" and t.value == "{":
                    depth += 1
                    if depth == 1:
                        continue
                if t.kind == "OP" and t.value == "}":
                    depth -= 1
                    if depth == 0:
                        break
                parts.append(t.value)
            return "".join(parts)
        t = self.next()
        if t.kind == "END":
            raise ParseError("empty subscript")
        return t.value if t.kind != "NUM" else t.value[0]

    def parse_braced_or_set(self):
        self.expect("OP", "{")
        if self.at("OP", "}"):
            self.next()
            return Seq("set", ())
        v = self.parse_list(stop=("}",))
        self.expect("OP", "}")
        if isinstance(v, Seq) and v.kind == "list":
            return Seq("set", v.items)
        return v

    def parse_bracketed(self):
        open_ = self.next().value
        closers = (")", "]")
        if self.tok.kind == "OP" and self.tok.value in closers:
            raise ParseError("empty brackets")
        v = self.parse_list(stop=closers)
        if not (self.tok.kind == "OP" and self.tok.value in closers):
            raise ParseError("unclosed bracket")
        close = self.next().value
        if isinstance(v, Seq) and v.kind == "list":
            items = v.items
            if len(items) == 2 and all(isinstance(x, Num) for x in items):
                if open_ == "(" and close == ")":
                    return Seq("pair", items)
                return Interval(items[0], items[1], open_ == "(", close == ")")
            return Seq("tuple", items)
        if open_ == "(" and close == "]" or open_ == "[" and close == ")":
            raise ParseError("half-open bracket around one value")
        return v

    def parse_command(self):
        t = self.next()
        name = t.value
        if name == "frac":
            a = self.parse_arg()
            b = self.parse_arg()
            return _arith(a, b, "/")
        if name == "sqrt":
            index = None
            if self.at("OP", "["):
                self.next()
                index = self.parse_additive()
                self.expect("OP", "]")
            if self.at("OP", "("):
                arg = self.parse_primary()
            else:
                arg = self.parse_arg()
            x = _scalar(arg)
            return Num(sympy.sqrt(x) if index is None else sympy.root(x, _scalar(index)))
        if name == "binom":
            a, b = _scalar(self.parse_arg()), _scalar(self.parse_arg())
            if a.is_Integer and int(a) > 100_000:
                return Num(sympy.binomial(a, b, evaluate=False))
            return Num(sympy.binomial(a, b))
        if name == "pi":
            return Num(sympy.pi)
        if name in ("infty", "infinity"):
            return Num(sympy.oo)
        if name in ("lfloor", "lceil"):
            v = self.parse_additive()
            closer = "rfloor" if name == "lfloor" else "rceil"
            self.expect("CMD", closer)
            return Num((sympy.floor if name == "lfloor" else sympy.ceiling)(_scalar(v)))
        if name == "begin":
            return self.parse_environment(t.extra)
        if name in ("sum", "prod"):
            return self.parse_bigop(name)
        if name in _GREEK:
            return Num(_sym(name))
        if name in ("overline", "bar", "vec", "hat", "tilde", "widehat", "overrightarrow", "mathbf"):
            v = self.parse_arg()
            s = _scalar(v)
            return Num(_sym(f"{name}({s})"))
        if name == "angle" or name == "triangle":
            v = self.parse_primary()
            return Num(_sym(f"{name}{_scalar(v)}"))
        if name in _FUNCS:
            return self.parse_function(name)
        if name in ("quad", "qquad", "nonumber", "notag", "displaystyle"):
            return self.parse_primary()
        if name in ("equiv", "pmod", "bmod", "mod", "cong", "to", "rightarrow", "Rightarrow", "implies",
                    "iff", "forall", "exists", "int", "lim", "partial", "nabla", "cdots"):
            raise ParseError(f"unsupported \\{name}")
        # an unknown command names a symbol (\zzz)
        return Num(_sym(name))

    def parse_function(self, name: str):
        power = None
        if self.at("OP", "^"):
            self.next()
            power = _scalar(self.parse_exponent())
            if power == -1 and name in _INVERSE:
                name, power = _INVERSE[name], None
        base = None
        if name == "log" and self.at("OP", "_"):
            self.next()
            base = _scalar(self.parse_arg())
        if self.at("OP", "("):
            self.next()
            arg = self.parse_list(stop=(")",))
            self.expect("OP", ")")
        else:  # \sin 2x: the argument is the implicit product that follows
            arg = self.parse_power()
            while self._starts_factor() and not self.at("CMD") and not self.at("OP", "("):
                arg = _arith(arg, self.parse_power(), "*")
        fn = _FUNCS[name]
        if fn is None:
            args = arg.items if isinstance(arg, Seq) else (arg,)
            xs = [_scalar(a) for a in args]
            if name in ("gcd", "lcm") and len(xs) >= 2:
                out = xs[0]
                for x in xs[1:]:
                    out = (sympy.gcd if name == "gcd" else sympy.lcm)(out, x)
            elif name == "max":
                out = sympy.Max(*xs)
            elif name == "min":
                out = sympy.Min(*xs)
            elif name == "det" and len(xs) == 1 and isinstance(xs[0], sympy.MatrixBase):
                out = xs[0].det()
            else:
                raise ParseError(f"bad \\{name}")
            return Num(out)
        x = _scalar(arg)
        if base is not None and base.is_number and (base.is_positive is False or base == 1):
            return Num(sympy.nan)  # \log_0, \log_1, \log_{-2}: no such logarithm (sympy would say log_0 5 = 0)
        out = sympy.log(x, base) if base is not None else fn(x)
        return Num(out ** power if power is not None else out)

    def parse_bigop(self, name: str):
        var, lo, hi = None, None, None
        for _ in range(2):
            if self.at("OP", "_"):
                self.next()
                sub = self.parse_arg()
                if isinstance(sub, Rel) and sub.ops == ("=",) and isinstance(sub.items[0], Num):
                    var, lo = sub.items[0].expr, _scalar(sub.items[1])
                else:
                    raise ParseError("sum without a range")
            elif self.at("OP", "^"):
                self.next()
                hi = _scalar(self.parse_arg())
        if var is None or hi is None:
            raise ParseError("sum without a range")
        body = self.parse_power()
        while self._starts_factor() and not self.at("CMD", "sum"):
            body = _arith(body, self.parse_power(), "*")
        op = sympy.Sum if name == "sum" else sympy.Product
        expr = op(_scalar(body), (var, lo, hi))
        if lo.is_Integer and hi.is_Integer and int(hi) - int(lo) <= 1000:
            expr = expr.doit()
        return Num(expr)

    def parse_environment(self, env: str):
        if env not in ("pmatrix", "bmatrix", "matrix", "vmatrix", "Bmatrix", "smallmatrix", "array"):
            raise ParseError(f"environment {env}")
        rows, row = [], []
        while True:
            if self.at("END"):
                raise ParseError("unterminated matrix")
            if self.at("CMD", "end"):
                self.next()
                break
            if self.at("OP", "ROW"):
                self.next()
                rows.append(row)
                row = []
                continue
            if self.at("CMD", "hline"):
                self.next()
                continue
            row.append(_scalar(self.parse_additive()))
            if self.at("OP", "&"):
                self.next()
        if row:
            rows.append(row)
        rows = [r for r in rows if r]
        if not rows or len({len(r) for r in rows}) != 1:
            raise ParseError("ragged matrix")
        m = sympy.ImmutableMatrix(rows)
        if env == "vmatrix":
            return Num(m.det())
        return Num(m)


def _fold_assignment_list(items):
    """`n = 1, 2, 3` -> n = {1, 2, 3}: an assignment followed by bare values."""
    first = items[0]
    if (isinstance(first, Rel) and first.ops == ("=",) and _is_symbol(first.items[0])
            and all(isinstance(x, Num) for x in items[1:]) and isinstance(first.items[1], Num)):
        return Rel(("=",), (first.items[0], Seq("list", (first.items[1],) + tuple(items[1:]))))
    return Seq("list", tuple(items))


def _is_symbol(v) -> bool:
    return isinstance(v, Num) and isinstance(v.expr, (sympy.Symbol, sympy.core.function.AppliedUndef))


def _scalar(v):
    if isinstance(v, Num):
        return v.expr
    if isinstance(v, Seq) and v.kind == "pair":
        raise ParseError("a pair is not a scalar")
    raise ParseError(f"{type(v).__name__} is not a scalar")


def _flags(v):
    if isinstance(v, Num) and (v.percent or v.degrees):
        return (v.percent, v.degrees)
    return None


def _with(v, **kw):
    if not isinstance(v, Num):
        raise ParseError("flag on a non-scalar")
    return Num(v.expr, v.decimal, kw.get("percent", v.percent), kw.get("degrees", v.degrees), v.literal)


def _arith(a, b, op: str):
    x, y = _scalar(a), _scalar(b)
    flags = _flags(a) or _flags(b)
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


# --------------------------------------------------------------------------------------- entry points
def _choice(s: str) -> str | None:
    t = re.sub(r"\\(?:text|textbf|mathrm|mathbf|textrm)\s*\{([^{}]*)\}", r"\1", s).strip()
    m = re.fullmatch(r"\(?\s*([A-E])\s*\)?", t)
    return m.group(1) if m else None


def parse(text: str, *, thousands: bool = True):
    """Parse one answer. Returns a value (Num, Seq, Interval, SetOp, Rel, BaseNum, Text); never raises."""
    try:
        raw = text if isinstance(text, str) else str(text)
        if len(raw) > MAX_TEXT * 4:
            return Text(raw[:MAX_TEXT], parsed=False)
        s = normalize(raw)
        if not s:
            return Text("", parsed=False)
        if len(s) > MAX_TEXT:
            return Text(s, parsed=False)
        toks = tokenize(s, thousands=thousands)
        if all(t.kind in ("WORD", "END") or (t.kind == "OP" and t.value in ",.") for t in toks):
            words = " ".join(t.value for t in toks if t.kind == "WORD")
            return Text(words) if words else Text(s, parsed=False)
        value = _Parser(toks).parse()
        return _expand_pm(value)
    except (ParseError, RecursionError, ValueError, TypeError, ZeroDivisionError, AttributeError,
            IndexError, KeyError, NotImplementedError, OverflowError, sympy.SympifyError):
        return Text(text if isinstance(text, str) else "", parsed=False)


def parse_choice(text: str) -> str | None:
    """The option letter of a multiple-choice gold (`\\text{(B)}`, `(B)`, `B`), else None."""
    return _choice(strip_math_delimiters(text))


def _expand_pm(v):
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
            y = _expand_pm(x)
            if isinstance(y, Seq) and y.kind == "set" and isinstance(x, Num):
                out.extend(y.items)
            else:
                out.append(y)
        return Seq(v.kind, tuple(out))
    if isinstance(v, Rel):
        return Rel(v.ops, tuple(_expand_pm(x) for x in v.items))
    return v


__all__ = ["parse", "parse_choice", "normalize", "normalize_text", "strip_math_delimiters", "Num", "Text",
           "Seq", "Interval", "SetOp", "Rel", "BaseNum", "PM"]
