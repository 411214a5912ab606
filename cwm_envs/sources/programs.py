"""Seeded generator of small Python programs with inputs, and type-directed input fuzzing.

The generator is the embedded default task source of the trace and prediction envs (no download needed):
`generate_program(rng)` picks one of several families (loops with branches, string building, dict counting,
recursion, exceptions, helper calls, while loops, list surgery), renames variables, varies constants and
operators, and draws inputs from the family's parameter types. Every program defines `f` (sometimes with a
helper) and finishes in well under a millisecond on its inputs.

Fuzzing makes more inputs for existing functions (`cwm traces build --fuzz K`): `fuzz_like(value)` draws a
new value of the same shape as an example (CRUXEval inputs), `value_for_annotation(ann)` one of an annotated
type (HumanEval signatures).

>>> import random
>>> p = generate_program(random.Random(0))
>>> p.entry, len(p.inputs) > 0, "def f(" in p.code
('f', True, True)
>>> generate_program(random.Random(0)) == p     # same seed, same program
True
"""
from __future__ import annotations

import ast
import random
import string
from dataclasses import dataclass

NAMES = ["acc", "total", "res", "out", "count", "buf", "val", "tmp", "cur", "best", "score", "memo"]
ITEMS = ["x", "item", "n", "v", "elem", "num"]
CHARS = ["ch", "c", "letter", "char"]
KEYS = ["k", "key", "word", "w"]


@dataclass(frozen=True)
class GeneratedProgram:
    """A program, its entry function and argument texts (CRUXEval style: `"[1, 2], 'a'"`)."""

    code: str
    entry: str
    inputs: tuple[str, ...]
    family: str


# -- values by type ------------------------------------------------------------------------------------
def value_of(spec: str, rng: random.Random):
    """A random value of a small type language: int, pos, str, word, list[int], list[str], dict[str,int]."""
    if spec == "int":
        return rng.randint(-9, 20)
    if spec == "pos":
        return rng.randint(0, 12)
    if spec == "str":
        return "".join(rng.choice(string.ascii_letters + string.digits + " -") for _ in range(rng.randint(0, 9)))
    if spec == "word":
        return "".join(rng.choice("abcdeflmnoprst") for _ in range(rng.randint(1, 6)))
    if spec == "list[int]":
        return [rng.randint(-5, 15) for _ in range(rng.randint(0, 7))]
    if spec == "list[str]":
        return [value_of("word", rng) for _ in range(rng.randint(0, 6))]
    if spec == "dict[str,int]":
        return {value_of("word", rng): rng.randint(0, 9) for _ in range(rng.randint(0, 5))}
    raise ValueError(f"unknown type {spec!r}")


def args_text(values) -> str:
    """Values as the argument list of a call, each as its repr."""
    return ", ".join(repr(v) for v in values)


# -- program families ----------------------------------------------------------------------------------
def _loop_branches(rng):
    acc, x = rng.choice(NAMES), rng.choice(ITEMS)
    k, m = rng.randint(2, 4), rng.randint(1, 5)
    op_then, op_else = rng.sample(["+=", "-=", "*="], 2)
    code = (f"def f(nums):\n    {acc} = {rng.randint(0, 3)}\n    for {x} in nums:\n"
            f"        if {x} % {k} == 0:\n            {acc} {op_then} {x}\n"
            f"        elif {x} > {m}:\n            {acc} {op_else} {m}\n        else:\n            continue\n"
            f"    return {acc}")
    return code, ["list[int]"]


def _string_build(rng):
    out, c = rng.choice(["out", "res", "buf"]), rng.choice(CHARS)
    test, action = rng.choice([("isdigit()", "str(int({c}) + 1)[-1]"), ("isupper()", "{c}.lower()"),
                               ("isalpha()", "{c} * 2"), ("isspace()", "'_'")])
    code = (f"def f(text):\n    {out} = ''\n    for {c} in text:\n        if {c}.{test}:\n"
            f"            {out} += {action.format(c=c)}\n        else:\n            {out} = {c} + {out}\n"
            f"    return {out}")
    return code, ["str"]


def _dict_count(rng):
    d, w = rng.choice(["counts", "seen", "table"]), rng.choice(KEYS)
    ret = rng.choice([f"sorted({d}.items())", f"max({d}, key={d}.get) if {d} else None",
                      f"[{w} for {w} in {d} if {d}[{w}] > 1]"])
    code = (f"def f(words):\n    {d} = {{}}\n    for {w} in words:\n"
            f"        {d}[{w}] = {d}.get({w}, 0) + 1\n    return {ret}")
    return code, ["list[str]"]


def _recursion(rng):
    kind = rng.randrange(3)
    if kind == 0:
        code = "def f(n):\n    if n <= 1:\n        return 1\n    return n * f(n - 1)"
        return code, ["pos"]
    if kind == 1:
        code = ("def f(nums):\n    if not nums:\n        return 0\n    head, rest = nums[0], nums[1:]\n"
                f"    return (head if head % 2 else {rng.randint(0, 3)}) + f(rest)")
        return code, ["list[int]"]
    code = "def f(s):\n    if len(s) < 2:\n        return s\n    return f(s[1:]) + s[0]"
    return code, ["word"]


def _exceptions(rng):
    name = rng.choice(["parse", "convert", "check"])
    code = (f"def {name}(token):\n    if not token:\n        raise ValueError('empty')\n    return int(token)\n\n"
            f"def f(text):\n    good, bad = [], 0\n    for token in text.split({rng.choice(['None', repr('-')])}):\n"
            f"        try:\n            good.append({name}(token))\n        except ValueError:\n            bad += 1\n"
            f"    return good, bad")
    return code, ["str"]


def _helper_calls(rng):
    h = rng.choice(["step", "scale", "clip"])
    a = rng.randint(1, 4)
    code = (f"def {h}(v, limit):\n    if v > limit:\n        return limit\n    return v * {a}\n\n"
            f"def f(nums, limit):\n    result = []\n    for v in nums:\n        result.append({h}(v, limit))\n"
            f"    return result")
    return code, ["list[int]", "pos"]


def _while_loop(rng):
    if rng.random() < 0.5:
        code = ("def f(n):\n    steps = 0\n    while n != 1 and steps < 30:\n        if n % 2 == 0:\n"
                "            n = n // 2\n        else:\n            n = 3 * n + 1\n        steps += 1\n"
                "    return steps")
        return code, ["pos"]
    code = ("def f(nums, target):\n    nums = sorted(nums)\n    lo, hi = 0, len(nums)\n    while lo < hi:\n"
            "        mid = (lo + hi) // 2\n        if nums[mid] < target:\n            lo = mid + 1\n"
            "        else:\n            hi = mid\n    return lo")
    return code, ["list[int]", "int"]


def _list_surgery(rng):
    op = rng.choice(["nums.insert(i, nums.pop())", "nums[i:i + 2] = nums[i:i + 2][::-1]", "del nums[i]"])
    code = (f"def f(nums, k):\n    nums = list(nums)\n    i = 0\n    while i < len(nums) and i < k:\n"
            f"        {op}\n        i += {rng.randint(1, 2)}\n    return nums")
    return code, ["list[int]", "pos"]


FAMILIES = {
    "loop_branches": _loop_branches, "string_build": _string_build, "dict_count": _dict_count,
    "recursion": _recursion, "exceptions": _exceptions, "helper_calls": _helper_calls,
    "while_loop": _while_loop, "list_surgery": _list_surgery,
}


def generate_program(rng: random.Random, n_inputs: int = 3, family: str | None = None) -> GeneratedProgram:
    """One program of a random (or the named) family with `n_inputs` argument texts drawn by type."""
    name = family or rng.choice(sorted(FAMILIES))
    code, specs = FAMILIES[name](rng)
    inputs = tuple(args_text([value_of(s, rng) for s in specs]) for _ in range(n_inputs))
    return GeneratedProgram(code, "f", inputs, name)


# -- fuzzing -------------------------------------------------------------------------------------------
def fuzz_like(value, rng: random.Random, depth: int = 0):
    """A random value shaped like `value` (same types, nearby sizes); unknown types come back unchanged."""
    if isinstance(value, bool) or value is None:
        return rng.choice([True, False]) if isinstance(value, bool) else None
    if isinstance(value, int):
        return value + rng.randint(-3, 3) if rng.random() < 0.5 else rng.randint(-10, 20)
    if isinstance(value, float):
        return round(value + rng.uniform(-2, 2), 2)
    if isinstance(value, str):
        pool = (value or string.ascii_lowercase) + string.ascii_lowercase[:6]
        n = max(0, len(value) + rng.randint(-2, 2))
        return "".join(rng.choice(pool) for _ in range(n))
    if depth > 3:
        return value
    if isinstance(value, list):
        if not value:
            return []
        n = max(0, len(value) + rng.randint(-2, 2))
        return [fuzz_like(rng.choice(value), rng, depth + 1) for _ in range(n)]
    if isinstance(value, tuple):
        return tuple(fuzz_like(v, rng, depth + 1) for v in value)
    if isinstance(value, dict):
        if not value:
            return {}
        items = list(value.items())
        n = max(0, len(items) + rng.randint(-1, 1))
        return dict((fuzz_like(k, rng, depth + 1), fuzz_like(v, rng, depth + 1)) for k, v in
                    (rng.choice(items) for _ in range(n)))
    if isinstance(value, set):
        return {fuzz_like(v, rng, depth + 1) for v in value}
    return value


def literal_args(input_text: str) -> list | None:
    """The argument values of an input text when every one is a plain literal (positional), else None."""
    try:
        call = ast.parse(f"f({input_text})", mode="eval").body
    except SyntaxError:
        return None
    if call.keywords or any(isinstance(a, ast.Starred) for a in call.args):
        return None
    try:
        return [ast.literal_eval(a) for a in call.args]
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None


def fuzz_inputs(input_text: str, n: int, rng: random.Random) -> list[str]:
    """Up to `n` new, distinct argument texts shaped like `input_text` (none when it is not all literals)."""
    values = literal_args(input_text)
    if values is None:
        return []
    out = []
    for _ in range(4 * n):
        text = args_text([fuzz_like(v, rng) for v in values])
        if text != input_text and text not in out:
            out.append(text)
        if len(out) == n:
            break
    return out


_ANN_BASE = {"int": "int", "float": "float", "str": "str", "bool": "bool"}


def value_for_annotation(node: ast.expr | None, rng: random.Random, depth: int = 0):
    """A random value of an annotation (`int`, `List[str]`, `Tuple[int, float]`, `Dict[str, int]`, `Optional`)."""
    if node is None or depth > 3:
        raise ValueError("no annotation")
    if isinstance(node, ast.Name) and node.id in _ANN_BASE:
        kind = node.id
        if kind == "int":
            return rng.randint(-10, 30)
        if kind == "float":
            return round(rng.uniform(-10, 10), 2)
        if kind == "bool":
            return rng.random() < 0.5
        return value_of("str", rng)
    if isinstance(node, ast.Subscript):
        base = node.value.id.lower() if isinstance(node.value, ast.Name) else ""
        args = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        if base == "list":
            return [value_for_annotation(args[0], rng, depth + 1) for _ in range(rng.randint(0, 6))]
        if base == "tuple":
            return tuple(value_for_annotation(a, rng, depth + 1) for a in args if not isinstance(a, ast.Constant))
        if base == "dict":
            return {value_for_annotation(args[0], rng, depth + 1): value_for_annotation(args[1], rng, depth + 1)
                    for _ in range(rng.randint(0, 4))}
        if base == "optional":
            return None if rng.random() < 0.2 else value_for_annotation(args[0], rng, depth + 1)
    raise ValueError(f"unsupported annotation {ast.unparse(node)}")


def fuzz_from_signature(code: str, entry: str, n: int, rng: random.Random) -> list[str]:
    """Up to `n` argument texts for `entry` drawn from its parameter annotations (none if any is missing)."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return []
    func = next((f for f in tree.body if isinstance(f, ast.FunctionDef) and f.name == entry), None)
    if func is None:
        return []
    params = func.args.posonlyargs + func.args.args
    out = []
    for _ in range(n):
        try:
            text = args_text([value_for_annotation(p.annotation, rng) for p in params])
        except ValueError:
            return out
        if text not in out:
            out.append(text)
    return out
