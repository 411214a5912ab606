"""Math task sources: MATH-500, AIME, AMC and GSM8K files, hub datasets, and a seeded generator.

Every loader returns a list of `Task(id, prompt=problem, answer=gold answer as LaTeX text, metadata)`;
a broken row raises a `UsageError` naming the file and row. `load_math(source)` picks one by name:

- "math500", "aime24", "amc23", "gsm8k": the copies in the shared data folder (see its SOURCES.md);
- a path to a JSONL file in any of those formats (detected per row: `problem`/`question` and `answer`;
  an answer that holds `#### N` is GSM8K's and N is the answer; a numeric answer becomes its shortest text);
- "hub:NAME" (or a name with a slash, e.g. "HuggingFaceH4/MATH-500"): the hub dataset, when the
  `datasets` package and a network are there (a clear error otherwise);
- "generated": `MathGenerator`, the embedded default, which needs no file.

The generator poses small problems with exact answers from sympy: `add_sub` (difficulty 0 is single-digit
addition and subtraction with a non-negative result), `arithmetic`, `fractions`, `linear`, `quadratic`,
`derivative`, `integral`, `sum`, `modular`. Difficulty runs 0-3. A task is a pure function of
(kind, difficulty, seed), so `MathGenerator(...).task(seed)` always gives the same problem.

`needs_tool` (only when named: it is not in the default mix, whose draws stay as they were) poses problems a
small model cannot do in its head but can hand to Python and copy back: the product of a 3-digit and a 2-digit
number (difficulty 0; two 4-, 5- and 6-digit numbers at 1, 2 and 3) or a modular power (a 3-digit exponent at
0, a 4-digit one above). Difficulty 0 is what a ~1M-parameter model learns to copy in minutes of SFT: every
digit of the call and of the printed answer must be copied exactly. Its tasks carry
`metadata["tool_code"]`, the Python that prints the answer, from which `cwm/MathTool-v0`'s oracle makes a
tool-using episode.
"""
from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Iterable, Sequence

from cwm_envs.errors import UsageError
from cwm_envs.tasks import Task, read_jsonl, shared_data_dir

FILES = {"math500": "math500.jsonl", "aime24": "aime24.jsonl", "amc23": "amc23.jsonl", "gsm8k": "gsm8k_test.jsonl"}
HUB_NAMES = {"math500": "HuggingFaceH4/MATH-500", "aime24": "Maxwell-Jia/AIME_2024", "amc23": "math-ai/amc23",
             "gsm8k": "openai/gsm8k"}
KINDS = ("add_sub", "arithmetic", "fractions", "linear", "quadratic", "derivative", "integral", "sum", "modular")
EXTRA_KINDS = ("needs_tool",)  # drawn only when asked for by name


# ----------------------------------------------------------------------------------------------- files
def _answer_text(value, where: str) -> str:
    """A dataset answer as text: 27.0 -> "27", "#### 1,000" stays for GSM8K's own parser."""
    if isinstance(value, bool) or value is None:
        raise UsageError(f"{where}: answer is missing")
    if isinstance(value, (int, float)):
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        return repr(value)
    if not isinstance(value, str) or not value.strip():
        raise UsageError(f"{where}: answer must be a non-empty string or a number")
    return value.strip()


def _gsm8k_answer(solution: str, where: str) -> str:
    m = re.search(r"####\s*(.+?)\s*$", solution.strip())
    if not m:
        raise UsageError(f"{where}: GSM8K answer has no '#### N' line")
    return m.group(1).replace(",", "").strip()


def task_from_row(row: dict, where: str, prefix: str, index: int) -> Task:
    """One row of any supported format as a Task (see the module docstring)."""
    problem = row.get("problem", row.get("question", row.get("Problem")))
    if not isinstance(problem, str) or not problem.strip():
        raise UsageError(f"{where}: row has no 'problem' or 'question' text")
    raw = row.get("answer", row.get("Answer"))
    meta = {k: row[k] for k in ("subject", "level", "unique_id", "url", "idx", "id") if k in row}
    if isinstance(raw, str) and "####" in raw:
        answer = _gsm8k_answer(raw, where)
        meta["solution"] = raw
    else:
        answer = _answer_text(raw, where)
        if isinstance(row.get("solution"), str):
            meta["solution"] = row["solution"]
    ident = row.get("unique_id")
    if ident is None:
        ident = row.get("id")
    if ident is None:
        ident = row.get("idx", index)
    return Task(id=f"{prefix}/{ident}", prompt=problem.strip(), answer=answer, metadata=meta)


def load_file(path: str | Path, prefix: str | None = None, limit: int | None = None) -> list[Task]:
    """A JSONL (or .jsonl.gz) file of math problems in any supported format."""
    path = Path(path)
    prefix = prefix or path.name.split(".")[0]
    tasks = []
    for i, row in enumerate(read_jsonl(path)):
        if limit is not None and i >= limit:
            break
        tasks.append(task_from_row(row, f"{path}: row {i + 1}", prefix, i))
    if not tasks:
        raise UsageError(f"{path}: no problems in the file")
    return tasks


def load_hub(name: str, split: str | None = None, limit: int | None = None) -> list[Task]:
    """A hub dataset by name (needs the `datasets` package and a network)."""
    try:
        import datasets  # noqa: F401 - optional dependency
    except ImportError:
        raise UsageError(f"hub dataset {name!r} needs the `datasets` package (pip install datasets) and a "
                         "network; offline, pass a local JSONL path or one of "
                         f"{sorted(FILES)}") from None
    if not _hub_reachable():
        raise UsageError(f"hub dataset {name!r}: the hub is not reachable from here (no network?); pass a local "
                         f"JSONL path or one of {sorted(FILES)}, or set HF_DATASETS_OFFLINE=1 to use a cached copy")
    try:
        config = "main" if name == "openai/gsm8k" else None
        ds = datasets.load_dataset(name, config, split=split or "test")
    except Exception as exc:  # noqa: BLE001 - the hub's errors are many; the user needs one line
        raise UsageError(f"cannot load hub dataset {name!r}: {exc}") from None
    tasks = []
    for i, row in enumerate(ds):
        if limit is not None and i >= limit:
            break
        tasks.append(task_from_row(dict(row), f"{name}: row {i + 1}", name.split("/")[-1], i))
    return tasks


def load_math(source: str | Path = "generated", *, kinds: Sequence[str] | None = None, difficulty: int = 0,
              limit: int | None = None) -> "list[Task] | MathGenerator":
    """Tasks for `source` (see the module docstring); "generated" returns a `MathGenerator`."""
    if isinstance(source, (list, tuple)):
        tasks = list(source)
        if not tasks or not all(isinstance(t, Task) for t in tasks):
            raise UsageError("a task list must be a non-empty list of Task")
        return tasks
    name = str(source)
    if name == "generated":
        return MathGenerator(kinds=kinds, difficulty=difficulty)
    if name in FILES:
        path = shared_data_dir() / FILES[name]
        if not path.exists():
            if _hub_available():
                return load_hub(HUB_NAMES[name], limit=limit)
            raise UsageError(f"{name}: {path} is missing (set CWM_DATA to the folder holding {FILES[name]})")
        return load_file(path, prefix=name, limit=limit)
    if name.startswith("hub:"):
        return load_hub(name[4:], limit=limit)
    path = Path(name)
    if path.exists():
        return load_file(path, limit=limit)
    if "/" in name and not name.startswith((".", "/")) and not path.suffix:
        return load_hub(name, limit=limit)
    raise UsageError(f"unknown math source {name!r}: use 'generated', one of {sorted(FILES)}, a JSONL path "
                     "or 'hub:NAME'")


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick look-up of the hub's host, so that offline use fails at once instead of after retries."""
    import os
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1":
        return True  # the user asks for the local cache
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _hub_available() -> bool:
    try:
        import datasets  # noqa: F401  (only checks that it is installed)
    except ImportError:
        return False
    return True


# ------------------------------------------------------------------------------------------ generator
class MathGenerator:
    """Seeded procedural problems with exact answers; `task(seed)` is deterministic, `sample(rng)` draws one."""

    def __init__(self, kinds: Sequence[str] | None = None, difficulty: int = 0):
        kinds = tuple(kinds) if kinds else KINDS
        unknown = [k for k in kinds if k not in KINDS + EXTRA_KINDS]
        if unknown:
            raise UsageError(f"unknown problem kind(s) {unknown}; choose from {KINDS + EXTRA_KINDS}")
        if not isinstance(difficulty, int) or not 0 <= difficulty <= 3:
            raise UsageError(f"difficulty must be an integer from 0 to 3, not {difficulty!r}")
        self.kinds, self.difficulty = kinds, difficulty

    def task(self, seed: int) -> Task:
        rng = random.Random(f"{seed}/{self.difficulty}/{','.join(self.kinds)}")
        kind = rng.choice(self.kinds)
        prompt, answer, *code = _MAKERS[kind](rng, self.difficulty)
        metadata = {"kind": kind, "difficulty": self.difficulty, "seed": seed, "source": "generated",
                    "subject": kind, "level": self.difficulty}
        if code:
            metadata["tool_code"] = code[0]
        return Task(id=f"gen/{kind}/d{self.difficulty}/{seed}", prompt=prompt, answer=answer, metadata=metadata)

    def sample(self, rng) -> Task:
        return self.task(int(rng.integers(0, 2**31 - 1)) if hasattr(rng, "integers") else rng.randrange(2**31 - 1))

    def take(self, n: int, seed: int = 0) -> list[Task]:
        return [self.task(seed + i) for i in range(n)]

    def __repr__(self) -> str:
        return f"MathGenerator(kinds={self.kinds}, difficulty={self.difficulty})"


def _latex(value) -> str:
    import sympy

    return sympy.latex(sympy.nsimplify(value) if isinstance(value, float) else value)


def _nonzero(rng: random.Random, lo: int, hi: int) -> int:
    while True:
        v = rng.randint(lo, hi)
        if v:
            return v


def _add_sub(rng, d):
    if d == 0:
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        if rng.random() < 0.5:
            return f"What is ${a} + {b}$?", str(a + b)
        a, b = max(a, b), min(a, b)
        return f"What is ${a} - {b}$?", str(a - b)
    hi = (99, 999, 99999)[d - 1]
    terms = [rng.randint(-hi if d >= 2 else 0, hi) for _ in range(2 + (d == 3))]
    expr, total = str(terms[0]), terms[0]
    for t in terms[1:]:
        if rng.random() < 0.5:
            expr, total = expr + (f" + {t}" if t >= 0 else f" + ({t})"), total + t
        else:
            expr, total = expr + (f" - {t}" if t >= 0 else f" - ({t})"), total - t
    return f"Compute ${expr}$.", str(total)


def _arithmetic(rng, d):
    from sympy import Integer, Rational

    hi = (9, 20, 50, 100)[d]
    n = 2 + d
    vals = [rng.randint(1, hi) for _ in range(n + 1)]
    expr, value = str(vals[0]), Integer(vals[0])
    for v in vals[1:]:
        op = rng.choice("+-*/" if d >= 2 else "+-*")
        if op == "/":
            expr, value = (f"\\frac{{{expr}}}{{{v}}}" if rng.random() < 0.5
                           else (f"({expr})" if " " in expr else expr) + f" \\div {v}"), value / v
        elif op == "*":
            expr, value = (f"({expr})" if " " in expr else expr) + f" \\times {v}", value * v
        else:
            expr, value = f"{expr} {op} {v}", value + v if op == "+" else value - v
    extra = " Give the answer as a fraction in lowest terms." if not Rational(value).is_integer else ""
    return f"Compute ${expr}$.{extra}", _latex(value)


def _fractions(rng, d):
    from sympy import Rational

    hi = (6, 10, 15, 30)[d]
    terms = [Rational(rng.randint(1, hi), rng.randint(2, hi)) for _ in range(2 + (d >= 2))]
    ops = [rng.choice("+-" if d == 0 else "+-*") for _ in terms[1:]]
    expr, value = _latex(terms[0]), terms[0]
    for op, t in zip(ops, terms[1:]):
        if op == "*":
            expr, value = f"{expr} \\cdot {_latex(t)}", value * t
        else:
            expr, value = f"{expr} {op} {_latex(t)}", value + t if op == "+" else value - t
    if d == 3:
        v = rng.randint(2, 5)
        expr, value = f"\\left({expr}\\right)^{{{v}}}", value ** v
    return f"Compute ${expr}$ and simplify.", _latex(value)


def _linear(rng, d):
    from sympy import Rational, Symbol, latex

    x = Symbol("x")
    hi = (9, 15, 30, 60)[d]
    sol = Rational(rng.randint(-hi, hi), 1 if d < 2 else rng.randint(1, 6))
    a, c = _nonzero(rng, -9, 9), rng.randint(-9, 9)
    while a == c:
        c = rng.randint(-9, 9)
    b = rng.randint(-hi, hi)
    dd = a * sol + b - c * sol  # a x + b = c x + dd holds at x = sol
    lhs, rhs = latex(a * x + b), latex(c * x + dd)
    return f"Solve for $x$: ${lhs} = {rhs}$.", _latex(sol)


def _quadratic(rng, d):
    from sympy import Rational, Symbol, expand, latex, sqrt

    x = Symbol("x")
    if d <= 1:
        r1, r2 = rng.randint(-9, 9), rng.randint(-9, 9)
        while r1 == r2:
            r2 = rng.randint(-9, 9)
        poly = expand((x - r1) * (x - r2))
        roots = sorted({r1, r2})
    elif d == 2:
        r1, r2 = Rational(rng.randint(-9, 9), rng.randint(1, 4)), rng.randint(-9, 9)
        while r1 == r2:
            r2 = rng.randint(-9, 9)
        poly = expand((x - r1) * (x - r2) * r1.q)
        roots = sorted({r1, Rational(r2)})
    else:
        p, k = rng.randint(-6, 6), rng.choice([2, 3, 5, 6, 7, 10, 11])
        poly = expand((x - p) ** 2 - k)
        roots = [p - sqrt(k), p + sqrt(k)]
    answer = ", ".join(_latex(r) for r in roots)
    return f"Find all real solutions of ${latex(poly)} = 0$. List them separated by commas.", answer


def _derivative(rng, d):
    from sympy import Symbol, cos, diff, exp, latex, sin

    x = Symbol("x")
    deg = 2 + d
    f = sum(rng.randint(-9, 9) * x ** k for k in range(deg + 1))
    if d >= 2:
        f = f + rng.randint(1, 5) * rng.choice([sin(x), cos(x), exp(x)])
    if d == 3:
        f = f * rng.choice([x, exp(x)])
    df = diff(f, x)
    if d <= 1:
        at = rng.randint(-3, 3)
        return f"Let $f(x) = {latex(f)}$. Compute $f'({at})$.", _latex(df.subs(x, at))
    return f"Find the derivative of $f(x) = {latex(f)}$ with respect to $x$.", latex(df)


def _integral(rng, d):
    from sympy import Symbol, cos, exp, integrate, latex, pi, simplify, sin

    x = Symbol("x")
    f = sum(rng.randint(-6, 6) * x ** k for k in range(1 + d + (d == 0)))
    if f == 0:
        f = x + 1
    a = rng.randint(-2, 1)
    b = a + rng.randint(1, 3)
    if d >= 2:
        g = rng.choice([exp(x), sin(x), cos(x)])
        f = f + g
        if g != exp(x):
            a, b = 0, rng.choice([pi / 2, pi])
    value = simplify(integrate(f, (x, a, b)))
    return f"Evaluate $\\int_{{{latex(a)}}}^{{{latex(b)}}} \\left({latex(f)}\\right)\\,dx$.", latex(value)


def _sum(rng, d):
    from sympy import Rational, Symbol, latex, summation

    k = Symbol("k")
    n = rng.randint(5, 10 + 20 * d)
    if d == 0:
        term = rng.randint(1, 5) * k + rng.randint(0, 5)
    elif d == 1:
        term = k ** 2 + rng.randint(-3, 3) * k
    elif d == 2:
        term = k ** 3 - rng.randint(1, 4) * k
    else:
        term = Rational(1, rng.randint(2, 4)) ** k
        n = rng.randint(4, 10)
    value = summation(term, (k, 1, n))
    return f"Compute $\\sum_{{k=1}}^{{{n}}} \\left({latex(term)}\\right)$.", _latex(value)


def _modular(rng, d):
    m = rng.randint(3, (13, 50, 100, 1000)[d])
    if d <= 1:
        a = rng.randint(10, 10 ** (2 + d))
        return f"What is the remainder when ${a}$ is divided by ${m}$?", str(a % m)
    a, e = rng.randint(2, 50), rng.randint(10, 10 ** d)
    return f"What is the remainder when ${a}^{{{e}}}$ is divided by ${m}$?", str(pow(a, e, m))


def _needs_tool(rng, d):
    """(problem, answer, the Python that prints the answer): a product of a 3-digit and a 2-digit number at
    difficulty 0, of two (3 + d)-digit numbers above it; or a power modulo a number (a 3-digit exponent mod a
    2-digit number at 0, a 4-digit exponent mod a 3-digit number above it)."""
    if rng.random() < 0.5:
        sizes = (3, 2) if d == 0 else (3 + d, 3 + d)
        a, b = (rng.randint(10 ** (n - 1), 10 ** n - 1) for n in sizes)
        return f"Compute ${a} \\times {b}$.", str(a * b), f"print({a} * {b})"
    if d == 0:
        a, e, m = rng.randint(2, 9), rng.randint(100, 999), rng.randint(11, 99)
    else:
        a, e, m = rng.randint(2, 99), rng.randint(1000, 9999), rng.randint(101, 999)
    return (f"What is the remainder when ${a}^{{{e}}}$ is divided by ${m}$?", str(pow(a, e, m)),
            f"print(pow({a}, {e}, {m}))")


_MAKERS = {"add_sub": _add_sub, "arithmetic": _arithmetic, "fractions": _fractions, "linear": _linear,
           "quadratic": _quadratic, "derivative": _derivative, "integral": _integral, "sum": _sum,
           "modular": _modular, "needs_tool": _needs_tool}


def iter_tasks(source: "list[Task] | MathGenerator", n: int | None = None, seed: int = 0) -> Iterable[Task]:
    """The first `n` tasks of a list, or `n` generated ones starting at `seed`."""
    if isinstance(source, MathGenerator):
        return source.take(n if n is not None else 100, seed)
    return source[:n] if n is not None else source


__all__ = ["load_math", "load_file", "load_hub", "task_from_row", "MathGenerator", "KINDS", "EXTRA_KINDS", "FILES", "iter_tasks"]
