"""Execution prediction (CRUXEval-O / -I): read the predicted value or input out of a response, check that
it is a safe expression, and score the sandbox's verdict.

Format rule (CWM style): after `</think>` (exactly one when `require_think`), exactly one fenced code
block. It holds either the completed assertion `assert f(INPUT) == OUTPUT` or just the predicted part
(OUTPUT for output prediction; the argument text INPUT for input prediction).

Why the expression check: the env evaluates the predicted text for real (in a sandbox process that holds
nothing of the judge's, see `cwm_envs.envs.prediction`), so it must stay an expression that computes a
value. It is re-emitted from its syntax tree (no comments, no trailing statements) and may use only
literals, containers, operators, comprehensions, lambdas, a few pure builtins, the public methods of the
built-in types (`'a'.upper()`, not `gi_frame` or `format`), and, for input prediction, the functions,
classes and variables the task's code defines (not its imports). No `f(...)` as a predicted output (that
would compare the function with itself), no `__import__`, `exit`, `open`, `eval`, `globals`.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass

from rewards.base import RewardResult
from rewards.code import extract_code

SCHEMES = ("cwm", "binary")
SAFE_BUILTINS = frozenset({
    "True", "False", "None", "dict", "list", "set", "tuple", "frozenset", "range", "str", "int", "float",
    "bool", "bytes", "complex", "len", "sorted", "reversed", "zip", "enumerate", "map", "filter", "abs", "min",
    "max", "sum", "chr", "ord", "round", "any", "all", "divmod", "pow", "repr", "hex", "oct", "bin",
})
# Attributes a predicted value may use: the public methods and fields of the plain built-in types. An
# allowlist, because a denylist misses something: generator and frame attributes (`gi_frame`, `f_globals`,
# `f_builtins`, `tb_frame`) need no underscore and lead to the interpreter. `format` reads attributes too.
SAFE_ATTRIBUTES = frozenset(
    name for kind in (str, bytes, list, tuple, dict, set, frozenset, int, float, complex, bool, range, slice)
    for name in dir(kind) if not name.startswith("_")) - {"format", "format_map"}
_ALLOWED_NODES = (
    ast.Expression, ast.Constant, ast.List, ast.Tuple, ast.Set, ast.Dict, ast.UnaryOp, ast.BinOp, ast.BoolOp,
    ast.Compare, ast.IfExp, ast.Subscript, ast.Slice, ast.Name, ast.Load, ast.Store, ast.Call, ast.keyword,
    ast.Attribute, ast.Lambda, ast.arguments, ast.arg, ast.ListComp, ast.SetComp, ast.DictComp,
    ast.GeneratorExp, ast.comprehension, ast.Starred, ast.JoinedStr, ast.FormattedValue,
    ast.unaryop, ast.operator, ast.boolop, ast.cmpop,
)


@dataclass(frozen=True)
class Prediction:
    """The predicted part, re-emitted from its syntax tree (`text`), or None with the `reason`."""

    text: str | None
    reason: str = ""


def unsafe_reason(tree: ast.AST, allowed_names: frozenset[str]) -> str | None:
    """Why `tree` may not be run as a predicted value, or None when it is a safe expression.

    >>> unsafe_reason(ast.parse("[1, 'a'.upper(), {2: (3,)}]", mode="eval"), SAFE_BUILTINS) is None
    True
    >>> unsafe_reason(ast.parse("__import__('os')", mode="eval"), SAFE_BUILTINS)
    "name '__import__' is not allowed"
    >>> unsafe_reason(ast.parse("().__class__", mode="eval"), SAFE_BUILTINS)
    "attribute '__class__' is not allowed"
    >>> unsafe_reason(ast.parse("[g.gi_frame for g in [(x for x in [])]]", mode="eval"), SAFE_BUILTINS)
    "attribute 'gi_frame' is not allowed"
    """
    bound = {a.arg for n in ast.walk(tree) if isinstance(n, ast.Lambda) for a in
             n.args.posonlyargs + n.args.args + n.args.kwonlyargs}
    bound |= {n.id for c in ast.walk(tree) if isinstance(c, ast.comprehension) for n in ast.walk(c.target)
              if isinstance(n, ast.Name)}
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED_NODES):
            return f"{type(node).__name__} is not allowed in a predicted value"
        if isinstance(node, ast.Name) and node.id not in allowed_names and node.id not in bound:
            return f"name {node.id!r} is not allowed"
        if isinstance(node, ast.Attribute) and node.attr not in SAFE_ATTRIBUTES:
            return f"attribute {node.attr!r} is not allowed"
    return None


def _assert_parts(tree: ast.Module, entry: str) -> tuple[ast.Call, ast.expr] | None:
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.Assert):
        return None
    test = tree.body[0].test
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)):
        return None
    call = test.left
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == entry):
        return None
    return call, test.comparators[0]


def _args_text(call: ast.Call) -> str:
    return ", ".join([ast.unparse(a) for a in call.args] + [ast.unparse(k) for k in call.keywords])


def parse_prediction(response: str, mode: str, entry: str = "f", code_names: frozenset[str] = frozenset(),
                     require_think: bool = False) -> Prediction:
    """The predicted output (`mode="output"`) or argument text (`mode="input"`) of a response.

    `code_names` are the names the task's code defines (allowed in predicted inputs only).

    >>> parse_prediction("```python\\nassert f([1, 2]) == [2, 1]\\n```", "output").text
    '[2, 1]'
    >>> parse_prediction("<think>\\nhm\\n</think>\\n```\\n'ab', k=2  # comment\\n```", "input").text
    "'ab', k=2"
    >>> parse_prediction("```\\nf('x')\\n```", "output").reason
    "name 'f' is not allowed"
    >>> parse_prediction("the answer is 3", "output").reason
    'expected exactly one code block, found 0'
    """
    if mode not in ("output", "input"):
        raise ValueError(f"mode must be 'output' or 'input', got {mode!r}")
    extraction = extract_code(response, require_think=require_think)
    if extraction.code is None:
        return Prediction(None, extraction.reason)
    content = extraction.code.strip()
    if not content:
        return Prediction(None, "the code block is empty")
    try:
        parts = _assert_parts(ast.parse(content), entry) if content.startswith("assert") else None
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        parts = None
    try:
        if parts is not None:
            call, rhs = parts
            node = ast.Expression(rhs) if mode == "output" else ast.Expression(call)
        elif mode == "output":
            node = ast.parse(content, mode="eval")
        else:
            node = ast.parse(f"{entry}(\n{content}\n)", mode="eval")  # newlines: a comment cannot eat ")"
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        return Prediction(None, f"not a Python expression: {getattr(exc, 'msg', exc)}")
    allowed = SAFE_BUILTINS | (code_names if mode == "input" else frozenset())
    if mode == "input":  # check the arguments, not the call to the entry itself
        args = node.body
        if not (isinstance(args, ast.Call) and isinstance(args.func, ast.Name) and args.func.id == entry):
            return Prediction(None, "expected the arguments of one call")
        for part in args.args + args.keywords:
            reason = unsafe_reason(part, allowed)
            if reason:
                return Prediction(None, reason)
        return Prediction(_args_text(args))
    reason = unsafe_reason(node, allowed)
    if reason:
        return Prediction(None, reason)
    return Prediction(ast.unparse(node.body))


def values_equal(got, want) -> bool:
    """Python equality of two plain-data values (decoded by `rewards.plain_data`, so no user `__eq__` runs),
    as CRUXEval's `assert f(x) == y` decides it; too deep to compare is unequal.

    >>> values_equal([1, (2, 3)], [1.0, (2, 3)]), values_equal({1, 2}, [1, 2]), values_equal(float("nan"), float("nan"))
    (True, False, False)
    """
    try:
        return bool(got == want)
    except RecursionError:
        return False


def prediction_reward(prediction: Prediction, passed: bool, scheme: str = "cwm",
                      timed_out: bool = False, detail: str = "") -> RewardResult:
    """+1 when the prediction parsed and the sandbox's assertion held, else -1 ("binary": 1 / 0).

    >>> prediction_reward(Prediction("3"), True).value, prediction_reward(Prediction(None, "x"), False).value
    (1.0, -1.0)
    """
    if scheme not in SCHEMES:
        raise ValueError(f"unknown reward scheme {scheme!r}; choose one of {SCHEMES}")
    parsed = prediction.text is not None
    ok = parsed and passed
    outcomes = {"parse": parsed, "pass": ok, "timed_out": timed_out, "prediction": prediction.text}
    if not parsed:
        details = f"parse failed: {prediction.reason}"
    elif ok:
        details = "assertion holds"
    else:
        details = "timed out" if timed_out else f"assertion failed{': ' + detail if detail else ''}"
    value = (1.0 if ok else -1.0) if scheme == "cwm" else float(ok)
    return RewardResult(value, outcomes, details)


__all__ = ["Prediction", "SAFE_ATTRIBUTES", "SAFE_BUILTINS", "SCHEMES", "parse_prediction", "prediction_reward", "unsafe_reason",
           "values_equal"]
