"""Find the final answer in a model's response, and the string clean-ups shared by the math verifier.

Pure string work (no sympy): it runs in the caller's process, bounded in time by linear scans and
non-backtracking patterns. Extractors, in tiers; the rightmost match of the first tier that has one wins:

1. `boxed`: `\\boxed{...}` / `\\fbox{...}`;  `final_answer`: "The final answer is X", "Final Answer: X"
2. `answer_is`: "the answer is X", "Answer: X"
3. `bold`: the last `**X**` that holds a number or LaTeX
4. `latex`: the last `$...$`, `$$...$$`, `\\(...\\)`, `\\[...\\]`;  `last_number`: the last number in the text;
   `bare`: the whole response, when it is a short formula rather than prose (`\\frac{10}{9}`)

Several boxes in a row with only separators between them (`\\boxed{1}, \\boxed{2}`) are one answer, a list.

When the response has a `</think>`, only the text after the last one is searched first (the reasoning
may try out answers); the whole text is searched when that part holds no answer.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_EXTRACTORS: tuple[str, ...] = ("boxed", "final_answer", "answer_is", "bold", "latex", "last_number", "bare")
TIERS: tuple[tuple[str, ...], ...] = (("boxed", "final_answer"), ("answer_is",), ("bold",),
                                      ("latex", "last_number", "bare"))
MAX_RESPONSE = 200_000   # characters searched from the end of a very long response
MAX_ANSWER = 2_000       # an extracted answer longer than this matches nothing (it is not a final answer)


@dataclass(frozen=True)
class Extraction:
    """The chosen answer span: `text` is what gets compared, `response[start:end]` is where it came from."""

    text: str
    method: str
    start: int
    end: int


# ---------------------------------------------------------------------------------------- boxed
_BOX_TOKEN_RE = re.compile(r"\\(?:boxed|fbox|framebox)\s*\{|\\(?:boxed|fbox|framebox)\s+(?=[^\s{$])|\\[{}]|[{}]")
_TOO_LONG = "\\text{(answer too long)}"   # stands for a box's content beyond MAX_ANSWER: it matches nothing


def find_boxed(text: str) -> list[tuple[int, int, str]]:
    """Every `\\boxed{...}` as (start, end, content), in order of start; one pass over the text.

    An unclosed box runs to the end of the text (boxes opened inside it are not listed again); a box whose
    content is longer than MAX_ANSWER characters gets a content that matches no gold answer.
    """
    out, stack, depth = [], [], 0
    for m in _BOX_TOKEN_RE.finditer(text):
        tok = m.group(0)
        if tok[0] == "\\" and tok[1] in "{}":
            continue                                   # an escaped brace
        if tok.endswith("{") and tok != "{":
            stack.append((m.start(), m.end(), depth))  # \boxed{ opens a box
            depth += 1
        elif tok == "{":
            depth += 1
        elif tok == "}":
            depth -= 1
            if stack and stack[-1][2] == depth:
                start, content_start, _ = stack.pop()
                out.append((start, m.end(), _content(text, content_start, m.start())))
        else:                                          # \boxed 5
            mm = re.compile(r"[^\s$]+").match(text, m.end())
            if mm:
                out.append((m.start(), mm.end(), mm.group(0)))
    if stack:  # unclosed: the outermost open box takes the rest of the text
        start, content_start, _ = stack[0]
        out.append((start, len(text), _content(text, content_start, len(text))))
    out.sort()
    return out


def _content(text: str, start: int, end: int) -> str:
    return text[start:end] if end - start <= MAX_ANSWER else _TOO_LONG


def count_boxed(text: str) -> int:
    """How many \\boxed{} answers the text holds (the format reward wants exactly one)."""
    return len(find_boxed(text))


_BOX_GAP_RE = re.compile(r"(?:\s|[,;.&$\\()\[\]]|\\quad|\\qquad|\b(?:and|or)\b"
                         r"|\\text\s*\{\s*(?:and|or|,)?\s*\}|[A-Za-z](?:_\{?\w+\}?)?\s*=|([+\-=*|~_#])\1{2,})*")
# "\boxed{(3, 3)} for part (a) and \boxed{(1, 1)}", "\boxed{1} papers and \boxed{2} bins": short words around "and"
_BOX_WORD_GAP_RE = re.compile(r"[^\d=\\{}]{0,30}\band\b[^\d=\\{}]{0,30}|\\text\s*\{[^{}]{0,40}\band\b[^{}]{0,40}\}\s*")


def last_boxed_group(text: str) -> list[tuple[int, int, str]]:
    """The last box together with the boxes just before it that only separators part
    (`\\boxed{1} and \\boxed{-2}` is one answer: 1, -2)."""
    boxes = find_boxed(text)
    if not boxes:
        return []
    group = [boxes[-1]]
    for prev in reversed(boxes[:-1]):
        gap = text[prev[1]:group[0][0]]
        if prev[1] > group[0][0] or len(gap) > 80:   # nested, or too far apart to be one answer
            break
        if _BOX_GAP_RE.fullmatch(gap) or _BOX_WORD_GAP_RE.fullmatch(gap.strip(" $")):
            group.insert(0, prev)
        else:
            break
    return group


# ------------------------------------------------------------------------------- answer phrases
_FINAL_RE = re.compile(r"final\s+answer\s*(?:is\s*[:：]?|[:：=])\s*(?:is\s*[:：]?\s*)?", re.I)
_ANSWER_RE = re.compile(r"\b(?:the\s+)?answer\s*(?:is|:|=|：)\s*(?:is\s*)?[:：]?\s*", re.I)
_DELIM_RE = re.compile(r"\\\$|\$\$|\$|\\\[|\\\]|\\\(|\\\)|\n")
_CLOSER = {"$$": "$$", "$": "$", "\\[": "\\]", "\\(": "\\)"}


def latex_envs(text: str, pos: int = 0, limit: int | None = None) -> list[tuple[int, int, str]]:
    """`$...$`, `$$...$$`, `\\(...\\)`, `\\[...\\]` spans as (start, end, content), in one pass; inline math
    does not cross a line break, an escaped `\\$` is a dollar sign."""
    out, open_ = [], None
    for m in _DELIM_RE.finditer(text, pos):
        tok = m.group(0)
        if tok == "\\$":
            continue
        if open_ is None:
            if tok in _CLOSER:
                open_ = (tok, m.start(), m.end())
            continue
        kind, start, content_start = open_
        if tok == "\n" and kind in ("$", "\\("):
            open_ = None
        elif tok == _CLOSER[kind] or (kind == "$" and tok == "$$"):
            if text[content_start:m.start()].strip():
                out.append((start, m.start() + len(_CLOSER[kind]), _content(text, content_start, m.start())))
            open_ = ("$", m.start() + 1, m.end()) if (kind == "$" and tok == "$$") else None
            if limit is not None and len(out) >= limit:
                break
    return out


_NUMBER_RE = re.compile(
    r"(?<![A-Za-z0-9_.])(?:[-−])?[$€£]?(?:[1-9]\d{0,2}(?: \d{3})+(?![\d,])(?:\.\d+)?|\d+(?:,\d+)+(?:\.\d+)?"
    r"|\d+(?:\.\d+)?(?:\s*/\s*\d+)?|\.\d+)(?:\s*(?:%|percent\b))?")


def _looks_bare(text: str) -> bool:
    """A short formula, not prose: no run of two words outside LaTeX commands and \\text{}."""
    outside = re.sub(r"\\[a-zA-Z]+(?:\s*\{[^{}]*\})?", " ", text)
    return not re.search(r"[A-Za-z]{3,}[\s,]+[A-Za-z]{2,}", outside) and not re.search(r"[:?]\s", outside)
_BOLD_RE = re.compile(r"\*\*([^*\n]{1,200}?)\*\*")


def _sentence_end(text: str, i: int) -> int:
    """End of the sentence starting at i: a full stop not inside a number, a newline, or the end."""
    n = len(text)
    j = i
    while j < n:
        ch = text[j]
        if ch == "\n":
            return j
        if ch == "$":  # skip over inline math wholesale
            k = text.find("$", j + 1)
            if k == -1:
                return n
            j = k + 1
            continue
        if ch in ".!?" and not (ch == "." and j + 1 < n and text[j + 1].isdigit()):
            return j
        j += 1
    return n


def _phrase_answer(text: str, start: int) -> tuple[int, int, str] | None:
    """The answer that follows an anchor such as "final answer is" at `start`."""
    n = len(text)
    i = start
    if i >= n:
        return None
    if text.startswith(("$", "\\[", "\\("), i):
        envs = latex_envs(text, i, limit=1)
        if envs and envs[0][0] == i:
            return envs[0]
    if text.startswith("\\boxed", i) or text.startswith("\\fbox", i):
        boxes = find_boxed(text[i:])
        if boxes:
            s, e, c = boxes[0]
            return (i + s, i + e, c)
    end = _sentence_end(text, i)
    segment = text[i:end]
    if not segment.strip():
        return None
    boxes = find_boxed(segment)
    if boxes:  # "... is therefore $\\boxed{5}$": the box is the answer
        s, e, c = boxes[-1]
        return (i + s, i + e, c)
    # "The largest $n$ is 34." -> the part after the last " is "
    k = segment.rfind(" is ")
    if k != -1:
        return _phrase_answer(text, i + k + 4)
    words = re.sub(r"\$[^$]*\$|\\\(.*?\\\)", " ", segment)
    if re.search(r"[A-Za-z]{3,}\s+[A-Za-z]{3,}", words) or len(segment) > 120:
        # a sentence, not an answer: the last formula or number inside it
        found = _last_env_or_number(segment)
        if found:
            s, e, c = found
            return (i + s, i + e, c)
        return None
    return (i, end, segment.strip())


def _last_env_or_number(text: str) -> tuple[int, int, str] | None:
    envs = latex_envs(text)
    best = envs[-1] if envs else None
    for m in _NUMBER_RE.finditer(text):
        if best is None or m.end() > best[1]:
            best = (m.start(), m.end(), m.group(0))
    return best


def _candidates(text: str, method: str) -> list[tuple[int, int, str]]:
    if method == "boxed":
        boxes = find_boxed(text)
        group = last_boxed_group(text)
        if len(group) > 1:  # several boxes in a row form one answer
            boxes = boxes[:-len(group)] + [(group[0][0], group[-1][1], ", ".join(c for _, _, c in group))]
        return boxes
    if method == "bare":
        stripped = text.strip()
        if stripped and len(stripped) <= 300 and _looks_bare(stripped):
            return [(text.index(stripped[0]), len(text.rstrip()), stripped)]
        return []
    if method in ("final_answer", "answer_is"):
        rx = _FINAL_RE if method == "final_answer" else _ANSWER_RE
        out = []
        for m in list(rx.finditer(text))[-3:]:   # the last few anchors are enough: the rightmost answer wins
            got = _phrase_answer(text, m.end())
            if got and got[2].strip():
                out.append(got)
        return out
    if method == "bold":
        return [(m.start(), m.end(), m.group(1)) for m in _BOLD_RE.finditer(text)
                if re.search(r"\d|\\[a-z]+", m.group(1))]
    if method == "latex":
        return latex_envs(text)
    if method == "last_number":
        return [(m.start(), m.end(), m.group(0)) for m in _NUMBER_RE.finditer(text)]
    raise ValueError(f"unknown extractor {method!r}; choose from {DEFAULT_EXTRACTORS}")


def extract_answer(response: str, extractors: tuple[str, ...] | list[str] = DEFAULT_EXTRACTORS) -> Extraction | None:
    """The final answer of `response`, or None. See the module docstring for the order.

    >>> extract_answer(r"so $x = 2$ and the total is \\boxed{\\frac{3}{4}}.").text
    '\\\\frac{3}{4}'
    >>> extract_answer("The answer is 42.", extractors=("boxed",)) is None
    True
    """
    if not isinstance(response, str) or not response:
        return None
    for name in extractors:
        if not any(name in tier for tier in TIERS):
            raise ValueError(f"unknown extractor {name!r}; choose from {DEFAULT_EXTRACTORS}")
    offset = max(0, len(response) - MAX_RESPONSE)
    text = response[offset:]
    regions = []
    k = text.rfind("</think>")
    if k != -1:
        regions.append(k + len("</think>"))
    regions.append(0)
    for base in regions:
        part = text[base:]
        for tier in TIERS:
            best = None
            for name in tier:
                if name not in extractors:
                    continue
                for s, e, c in _candidates(part, name):
                    if best is None or e > best[1]:
                        best = (s, e, c, name)
            if best is not None:
                s, e, c, name = best
                c = c.strip()  # never cut an answer short: a cut could hide its wrong part
                return Extraction(c if len(c) <= MAX_ANSWER else _TOO_LONG, name, offset + base + s, offset + base + e)
    return None


# --------------------------------------------------------------------------- string clean-ups
def strip_math_delimiters(s: str) -> str:
    """Remove `$`, `\\[ \\]`, `\\( \\)` and `\\boxed{}` wrappers (an escaped `\\$` stays)."""
    s = s.strip()
    s = re.sub(r"(?<!\\)\$", " ", s)
    s = re.sub(r"\\[\[\]()]", " ", s)
    for _ in range(4):
        boxes = find_boxed(s)
        if not boxes:
            break
        start, end, content = boxes[-1]
        s = s[:start] + " " + content + " " + s[end:]
    return s.strip()


def gold_answer(gold: str) -> str:
    """A dataset's answer field as the text to compare: the last `\\boxed{}` when a solution is given."""
    if not isinstance(gold, str):
        return ""
    group = last_boxed_group(gold)
    if group:
        return ", ".join(c.strip() for _, _, c in group)
    if len(gold) > 80 and not _looks_bare(gold):  # a worked solution: its final answer
        found = extract_answer(gold)
        if found is not None:
            return found.text
    return gold.strip()


WRAPPERS = ("text", "textbf", "textit", "textrm", "textnormal", "mbox", "mathrm", "mathit", "mathbf",
             "mathsf", "mathtt", "mathnormal", "texttt", "emph", "boldsymbol", "bm", "mathbb", "mathcal",
             "operatorname", "hbox", "textsf", "textup")

_SIMPLE_SUBS = [
    (re.compile(r"\\(?:left|right|bigl|bigr|Bigl|Bigr|biggl|biggr|Biggl|Biggr|big|Big|bigg|Bigg)(?![a-zA-Z])"), ""),
    (re.compile(r"\\(?:displaystyle|textstyle|scriptstyle|limits|nolimits|middle)(?![a-zA-Z])"), ""),
    (re.compile(r"\\[dtc]frac(?![a-zA-Z])"), r"\\frac"),
    (re.compile(r"\\[dt]binom(?![a-zA-Z])"), r"\\binom"),
    (re.compile(r"\\(?:leqslant|leq|le)(?![a-zA-Z])"), "≤"),
    (re.compile(r"\\(?:geqslant|geq|ge)(?![a-zA-Z])"), "≥"),
    (re.compile(r"\\(?:neq|ne)(?![a-zA-Z])"), "≠"),
    (re.compile(r"\\(?:approx|simeq|thickapprox|sim)(?![a-zA-Z])"), "≈"),
    (re.compile(r"\\(?:lt)(?![a-zA-Z])"), "<"),
    (re.compile(r"\\(?:gt)(?![a-zA-Z])"), ">"),
    (re.compile(r"\\(?:in)(?![a-zA-Z])"), "∈"),
    (re.compile(r"\\(?:cdot|times|ast|bullet)(?![a-zA-Z])"), "*"),
    (re.compile(r"\\(?:div)(?![a-zA-Z])"), "÷"),
    (re.compile(r"\\(?:cup)(?![a-zA-Z])"), "∪"),
    (re.compile(r"\\(?:cap)(?![a-zA-Z])"), "∩"),
    (re.compile(r"\\(?:setminus|backslash)(?![a-zA-Z])"), "∖"),
    (re.compile(r"\\(?:pm)(?![a-zA-Z])"), "±"),
    (re.compile(r"\\(?:mp)(?![a-zA-Z])"), "∓"),
    (re.compile(r"\\(?:colon)(?![a-zA-Z])"), ":"),
    (re.compile(r"\\(?:dots|ldots|cdots|dotsc|dotsb|dotsm)(?![a-zA-Z])"), "…"),
    (re.compile(r"\\(?:lvert|rvert|vert|mid)(?![a-zA-Z])"), "|"),
    (re.compile(r"\\(?:lVert|rVert|Vert)(?![a-zA-Z])"), "‖"),
    (re.compile(r"\\(?:langle)(?![a-zA-Z])"), "("),
    (re.compile(r"\\(?:rangle)(?![a-zA-Z])"), ")"),
    (re.compile(r"\\(?:degree)(?![a-zA-Z])"), "°"),
    (re.compile(r"\\(?:varnothing|emptyset)(?![a-zA-Z])"), "∅"),
    (re.compile(r"\\(?:infty|infinity|inf)(?![a-zA-Z])"), "∞"),
    (re.compile(r"\\(?:imath)(?![a-zA-Z])"), "i"),
    (re.compile(r"(?<!\\)\\(?:[,;:!> ]|quad|qquad|enspace|thinspace|medspace|thickspace|hspace\{[^}]*\}|phantom\{[^}]*\})"), " "),
]
_UNICODE = {"−": "-", "–": "-", "—": "-", "×": "*", "⋅": "*", "·": "*", "∗": "*", "√": "\\sqrt", "π": "\\pi ",
            "∞": "∞", "≤": "≤", "≥": "≥", "≠": "≠", "⩽": "≤", "⩾": "≥", "²": "^2", "³": "^3", "¹": "^1",
            "∪": "∪", "∩": "∩", "\u00a0": " ", "\u2009": " ", "\u202f": " ", "’": "'", "…": "…", "θ": "\\theta ",
            "α": "\\alpha ", "β": "\\beta ", "±": "±", "∓": "∓", "÷": "÷", "∈": "∈", "⁻": "^-"}


def normalize(s: str) -> str:
    """String-level clean-up that never changes meaning: spacing commands, \\left/\\right, frac variants,
    relation and operator spellings, unicode, thousands separators `{,}` / `,\\!`, trailing punctuation."""
    s = strip_math_delimiters(s)
    s = re.sub(r"^\*+|\*+$", "", s.strip())           # **bold** markers around an answer
    s = "".join(_UNICODE.get(ch, ch) for ch in s)
    s = re.sub(r"\s*\{\s*,\s*\}\s*", ",", s)          # 14{,}916
    s = re.sub(r"\{\s*([^{}]+?)\s*\\choose\s*([^{}]+?)\s*\}", r"\\binom{\1}{\2}", s)  # {n \choose k}
    s = s.replace("~", " ")
    if "\\begin" not in s:
        s = re.sub(r"\\\\(?=[a-zA-Z])", r"\\", s)       # a doubled backslash before a command
    s = re.sub(r"(\d),\\!\s*(?=\d)", r"\1,", s)          # 10,\!080
    for pat, rep in _SIMPLE_SUBS:
        s = pat.sub(rep, s)
    s = s.replace("\\%", "%").replace("\\$", " ").replace("\\#", "#").replace("\\&", "&")
    s = re.sub(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ", "°", s)
    s = s.replace("<=", "≤").replace(">=", "≥").replace("!=", "≠").replace("=<", "≤").replace("=>", "≥")
    s = s.replace("==", "=").replace("**", "^")
    s = re.sub(r"\s+", " ", s).strip()
    s = re.sub(r"[\s.;,:?]+$", "", s)
    return s.strip()


def normalize_text(s: str) -> str:
    """For text answers: wrappers, punctuation, case and articles removed ("The East." == "east")."""
    s = strip_math_delimiters(s)
    s = re.sub(r"\\(?:%s)\s*\{([^{}]*)\}" % "|".join(WRAPPERS), r" \1 ", s)
    s = re.sub(r"\\[a-zA-Z]+", " ", s)
    s = re.sub(r"[{}()\[\]$\\.,;:!?\"'`*_]", " ", s).lower()
    words = [w for w in s.split() if w not in ("the", "a", "an")]
    return " ".join(words)


__all__ = ["Extraction", "extract_answer", "find_boxed", "count_boxed", "strip_math_delimiters", "gold_answer",
           "DEFAULT_EXTRACTORS", "normalize", "normalize_text"]
