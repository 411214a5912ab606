"""Plain data across a process boundary: the only thing a sandboxed candidate may hand back to a judge.

Why: a judge that compares a candidate's value in the candidate's own process can be lied to (an object
whose `__eq__` is always True, introspection that reads the expected value). So the candidate's value is
encoded inside the sandbox into a tagged JSON tree of built-in values only, and the judge decodes it in its
own process and compares there. Anything else (a function, a generator, an `int` subclass, a cycle, a tree
deeper than `MAX_DEPTH`) does not encode: the sandbox prints `ENCODE_ERROR` and the reason instead.

`encode` runs inside the sandbox (`sandbox_source()` gives this file's text to prepend to a program there);
`decode` runs in the judge and checks every node, since the bytes it reads may have been forged.

>>> decode(encode([1, (2.5, "a"), {b"k": None}, {3}, frozenset(), True, range(2, 9, 3)]))
[1, (2.5, 'a'), {b'k': None}, {3}, frozenset(), True, range(2, 9, 3)]
>>> encode(lambda: 0)
Traceback (most recent call last):
...
TypeError: not plain data: function
>>> decode('["i", "1", "extra"]')
Traceback (most recent call last):
...
ValueError: bad node for tag 'i'
"""
import json

MAX_DEPTH = 200
ENCODE_ERROR = "CWM-NOT-PLAIN-DATA: "


def encode(value):
    """A JSON text for `value`, built only from exact built-in types (subclasses refused)."""
    return json.dumps(_enc(value, 0), separators=(",", ":"))


def _enc(v, depth):
    if depth > MAX_DEPTH:
        raise TypeError("not plain data: nested deeper than %d" % MAX_DEPTH)
    t, d = type(v), depth + 1
    if v is None:
        return ["N"]
    if t is bool:
        return ["b", v]
    if t is int:
        return ["i", format(v, "x")]       # hex: no 4300-digit limit, no float rounding
    if t is float:
        return ["f", v.hex()]
    if t is complex:
        return ["c", v.real.hex(), v.imag.hex()]
    if t is str:
        return ["s", v]
    if t is bytes:
        return ["y", v.hex()]
    if t is list:
        return ["l", [_enc(x, d) for x in v]]
    if t is tuple:
        return ["t", [_enc(x, d) for x in v]]
    if t is set:
        return ["S", [_enc(x, d) for x in v]]
    if t is frozenset:
        return ["F", [_enc(x, d) for x in v]]
    if t is dict:
        return ["d", [[_enc(k, d), _enc(x, d)] for k, x in v.items()]]
    if t is range:
        return ["r", format(v.start, "x"), format(v.stop, "x"), format(v.step, "x")]
    raise TypeError("not plain data: %s" % t.__name__)


def decode(text):
    """The value `encode` wrote; ValueError for anything that is not exactly such a tree."""
    try:
        tree = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ValueError("not a plain-data encoding: %s" % type(exc).__name__) from None
    try:
        return _dec(tree, 0)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _int(s):
    if not isinstance(s, str) or not s or len(s) > 1 << 20:
        raise ValueError("bad integer")
    return int(s, 16)


def _dec(node, depth):
    if depth > MAX_DEPTH + 1:
        raise ValueError("nested deeper than %d" % MAX_DEPTH)
    if not isinstance(node, list) or not node or not isinstance(node[0], str):
        raise ValueError("bad node")
    tag, args, d = node[0], node[1:], depth + 1
    shape = {"N": 0, "b": 1, "i": 1, "f": 1, "c": 2, "s": 1, "y": 1, "l": 1, "t": 1, "S": 1, "F": 1, "d": 1,
             "r": 3}
    if tag not in shape or len(args) != shape[tag]:
        raise ValueError("bad node for tag %r" % tag)
    try:
        if tag == "N":
            return None
        if tag == "b" and isinstance(args[0], bool):
            return args[0]
        if tag == "i":
            return _int(args[0])
        if tag == "f" and isinstance(args[0], str):
            return float.fromhex(args[0])
        if tag == "c" and all(isinstance(a, str) for a in args):
            return complex(float.fromhex(args[0]), float.fromhex(args[1]))
        if tag == "s" and isinstance(args[0], str):
            return args[0]
        if tag == "y" and isinstance(args[0], str):
            return bytes.fromhex(args[0])
        if tag == "r":
            return range(*map(_int, args))
        if not isinstance(args[0], list):
            raise ValueError("bad container")
        if tag == "d":
            if not all(isinstance(p, list) and len(p) == 2 for p in args[0]):
                raise ValueError("bad dict item")
            return {_dec(k, d): _dec(v, d) for k, v in args[0]}
        items = [_dec(x, d) for x in args[0]]
        return {"l": list, "t": tuple, "S": set, "F": frozenset}[tag](items)
    except TypeError as exc:          # an unhashable key or member: not something `encode` writes
        raise ValueError("bad node: %s" % exc) from None
    raise ValueError("bad node for tag %r" % tag)


def sandbox_source():
    """This module's source, to put before a program that runs in a sandbox (where the project is absent)."""
    with open(__file__) as fh:
        return fh.read()


__all__ = ["ENCODE_ERROR", "decode", "encode", "sandbox_source"]
