"""LaTeX / plain-text answer -> tokens for the math grammar (`rewards.math_parse`): numbers (thousands
separators, repeating decimals), identifiers, commands, operators and words; units, `\\text{...}` groups,
percent and degree words are settled here."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import sympy

from rewards.math_extract import WRAPPERS as _WRAPPERS
from rewards.math_values import ParseError

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
FUNCS = {
    "sin": sympy.sin, "cos": sympy.cos, "tan": sympy.tan, "cot": sympy.cot, "sec": sympy.sec, "csc": sympy.csc,
    "arcsin": sympy.asin, "arccos": sympy.acos, "arctan": sympy.atan, "arccot": sympy.acot,
    "arcsec": sympy.asec, "arccsc": sympy.acsc,
    "sinh": sympy.sinh, "cosh": sympy.cosh, "tanh": sympy.tanh, "coth": sympy.coth,
    "ln": sympy.log, "log": sympy.log, "lg": lambda x: sympy.log(x, 10), "exp": sympy.exp,
    "det": None, "gcd": None, "lcm": None, "max": None, "min": None,
}
INVERSE = {"sin": "arcsin", "cos": "arccos", "tan": "arctan", "cot": "arccot", "sec": "arcsec", "csc": "arccsc"}
GREEK = {
    "alpha", "beta", "gamma", "delta", "epsilon", "varepsilon", "zeta", "eta", "theta", "vartheta", "iota",
    "kappa", "lambda", "mu", "nu", "xi", "omicron", "rho", "sigma", "tau", "upsilon", "phi", "varphi", "chi",
    "psi", "omega", "Gamma", "Delta", "Theta", "Lambda", "Xi", "Pi", "Sigma", "Upsilon", "Phi", "Psi", "Omega",
}
RELS = {"=": "=", "<": "<", ">": ">", "≤": "<=", "≥": ">=", "≠": "!=", "≈": "approx", "∈": "in"}
# ------------------------------------------------------------------------------------------ tokens
@dataclass
class Tok:
    """One token of a math answer, with whether whitespace came before it (it can change the meaning)."""
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
    """Tokens of a normalised answer; `thousands`: read 1,000 as one number rather than a list."""
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
            elif len(word) >= 2 and low in FUNCS or low in ("sqrt", "pi"):
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
    if re.fullmatch(r"[A-Za-z]{2,}(?:[\s\-'][A-Za-z]+)*", stripped) and not (low in FUNCS):
        for w in stripped.split():
            push("WORD", w)
        return i
    # math inside a wrapper (\text{13}, \mathrm{e}, \text{(B)}): tokenize it in place
    for t in tokenize(stripped, thousands)[:-1]:
        push(t.kind, t.value, t.extra)
    return i
