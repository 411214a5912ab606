"""Mutations of Python source for mutate-fix tasks: pure functions of the text, no repository, no Docker.

`find_mutations(source, path)` finds, inside functions only, the minimal text edits that break code: remove a
statement, swap two call arguments or two variables, flip an operator or a comparison, drop a return, change
a constant. Each is a minimal text edit, so the gold patch touches only the mutated lines. `Schedule` orders
them for a varied task set. `mutate.py` runs them against a repository's tests.

>>> src = "def f(a, b):\\n    return a - b\\n"
>>> sorted({m.kind for m in find_mutations(src, "m.py")})
['drop_return', 'flip_operator', 'swap_variables']
>>> [m.source for m in find_mutations(src, "m.py") if m.kind == "swap_variables"]
['def f(a, b):\\n    return b - a\\n']
"""
from __future__ import annotations

import ast
import random
import re
from dataclasses import dataclass

KINDS = ("remove_statement", "swap_arguments", "swap_variables", "flip_operator", "flip_comparison",
         "drop_return", "change_constant")


@dataclass(frozen=True)
class Mutation:
    """One candidate: where and what, and the whole mutated file (`source`)."""

    path: str
    kind: str
    function: str
    line: int
    before: str                      # the changed line(s) before and after, for the record
    after: str
    source: str


_FLIP_BIN = {ast.Add: "-", ast.Sub: "+", ast.Mult: "//", ast.Div: "*", ast.FloorDiv: "/", ast.Mod: "//",
             ast.Pow: "*", ast.LShift: ">>", ast.RShift: "<<", ast.BitAnd: "|", ast.BitOr: "&", ast.BitXor: "|"}
_BIN_TEXT = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//", ast.Mod: "%",
             ast.Pow: "**", ast.LShift: "<<", ast.RShift: ">>", ast.BitAnd: "&", ast.BitOr: "|", ast.BitXor: "^"}
_NON_COMMUTATIVE = (ast.Sub, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.LShift, ast.RShift)
_CMP_TEXT = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!=",
             ast.In: "in", ast.NotIn: "not in", ast.Is: "is", ast.IsNot: "is not"}
_FLIP_CMP = {ast.Lt: "<=", ast.LtE: "<", ast.Gt: ">=", ast.GtE: ">", ast.Eq: "!=", ast.NotEq: "==",
             ast.In: "not in", ast.NotIn: "in", ast.Is: "is not", ast.IsNot: "is"}
_REMOVABLE = (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Raise, ast.If)


class _Text:
    """Source text with AST positions (1-based lines, UTF-8 byte columns) turned into string offsets."""

    def __init__(self, source: str):
        self.source = source
        self.lines = source.splitlines(keepends=True)
        self.starts = [0]
        for line in self.lines:
            self.starts.append(self.starts[-1] + len(line))

    def offset(self, lineno: int, col: int) -> int:
        line = self.lines[lineno - 1] if lineno - 1 < len(self.lines) else ""
        return self.starts[lineno - 1] + len(line.encode()[:col].decode("utf-8", "ignore"))

    def span(self, node) -> tuple[int, int]:
        return self.offset(node.lineno, node.col_offset), self.offset(node.end_lineno, node.end_col_offset)

    def seg(self, a: int, b: int) -> str:
        return self.source[a:b]


def _gap_op(gap: str) -> str | None:
    """The operator between two operands: the gap without closing/opening parens and whitespace."""
    m = re.fullmatch(r"([\s\\)]*)(.+?)([\s\\(]*)", gap, re.S)
    return " ".join(m.group(2).split()) if m else None


class _Collector(ast.NodeVisitor):
    def __init__(self, text: _Text):
        self.t = text
        self.scope: list[str] = []
        self.depth = 0                   # how many function bodies we are inside
        self.edits: list[tuple[str, str, int, int, int, str]] = []   # (kind, function, line, start, end, new)

    def add(self, kind: str, node, start: int, end: int, new: str) -> None:
        if self.t.seg(start, end) != new:
            self.edits.append((kind, ".".join(self.scope), node.lineno, start, end, new))

    def visit_ClassDef(self, node):
        self.scope.append(node.name)
        self.generic_visit(node)
        self.scope.pop()

    def visit_FunctionDef(self, node):
        self.scope.append(node.name)
        self.depth += 1
        for stmt in node.body:            # decorators and defaults are left alone
            self.visit(stmt)
        self._statements(node.body)
        self.depth -= 1
        self.scope.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def generic_visit(self, node):
        if self.depth:
            for name in ("body", "orelse", "finalbody"):
                block = getattr(node, name, None)
                if not (isinstance(block, list) and block and isinstance(block[0], ast.stmt)):
                    continue
                if name == "orelse" and isinstance(node, ast.If) and len(block) == 1 and isinstance(block[0], ast.If):
                    continue              # an `elif`: removing it would leave a dangling branch
                self._statements(block)
        super().generic_visit(node)

    # statements: remove one, or drop a return
    def _statements(self, block: list) -> None:
        for stmt in block:
            if isinstance(stmt, ast.Return) and stmt.value is not None:
                self._remove(stmt, block, "drop_return")
            elif isinstance(stmt, _REMOVABLE) or (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call)):
                self._remove(stmt, block, "remove_statement")

    def _remove(self, stmt, block: list, kind: str) -> None:
        t = self.t
        first, last = t.lines[stmt.lineno - 1], t.lines[stmt.end_lineno - 1]
        head = first.encode()[:stmt.col_offset].decode("utf-8", "ignore")
        tail = last.encode()[stmt.end_col_offset:].decode("utf-8", "ignore")
        if head.strip() or (tail.strip() and not tail.strip().startswith("#")):
            return                        # shares its line with other code (`a = 1; b = 2`)
        start, end = t.starts[stmt.lineno - 1], t.starts[stmt.end_lineno]
        others = [s for s in block if s is not stmt and not _is_docstring(s)]
        self.add(kind, stmt, start, end, f"{head}pass\n" if not others else "")

    def visit_BinOp(self, node):
        if self.depth and type(node.op) in _BIN_TEXT:
            t = self.t
            (ls, le), (rs, re_) = t.span(node.left), t.span(node.right)
            gap = t.seg(le, rs)
            if _gap_op(gap) == _BIN_TEXT[type(node.op)]:
                i = gap.index(_BIN_TEXT[type(node.op)])
                self.add("flip_operator", node, le + i, le + i + len(_BIN_TEXT[type(node.op)]), _FLIP_BIN[type(node.op)])
                if isinstance(node.op, _NON_COMMUTATIVE) and isinstance(node.left, ast.Name) \
                        and isinstance(node.right, ast.Name) and gap.strip() == _BIN_TEXT[type(node.op)]:
                    self.add("swap_variables", node, ls, re_, t.seg(rs, re_) + gap + t.seg(ls, le))
        self.generic_visit(node)

    def visit_Compare(self, node):
        if self.depth:
            t = self.t
            operands = [node.left, *node.comparators]
            for k, op in enumerate(node.ops):
                _, le = t.span(operands[k])
                rs, _ = t.span(operands[k + 1])
                gap = t.seg(le, rs)
                if _gap_op(gap) == _CMP_TEXT[type(op)]:
                    m = re.search(r"\S.*\S|\S", gap.strip("()\\ \n\t"), re.S)
                    i = gap.index(m.group(0))
                    self.add("flip_comparison", node, le + i, le + i + len(m.group(0)), _FLIP_CMP[type(op)])
            if len(node.ops) == 1 and not isinstance(node.ops[0], (ast.Eq, ast.NotEq, ast.Is, ast.IsNot)) \
                    and isinstance(node.left, ast.Name) and isinstance(node.comparators[0], ast.Name):
                (ls, le), (rs, re_) = t.span(node.left), t.span(node.comparators[0])
                gap = t.seg(le, rs)
                if gap.strip() == _CMP_TEXT[type(node.ops[0])]:
                    self.add("swap_variables", node, ls, re_, t.seg(rs, re_) + gap + t.seg(ls, le))
        self.generic_visit(node)

    def visit_BoolOp(self, node):
        if self.depth and len(node.values) == 2:
            t = self.t
            _, le = t.span(node.values[0])
            rs, _ = t.span(node.values[1])
            gap = t.seg(le, rs)
            word = "and" if isinstance(node.op, ast.And) else "or"
            if _gap_op(gap) == word:
                i = re.search(rf"\b{word}\b", gap).start()
                self.add("flip_operator", node, le + i, le + i + len(word), "or" if word == "and" else "and")
        self.generic_visit(node)

    def visit_UnaryOp(self, node):
        if self.depth and isinstance(node.op, ast.Not):
            a, b = self.t.span(node)
            text = self.t.seg(a, b)
            if text.startswith("not"):
                self.add("flip_operator", node, a, b, text[3:].lstrip())
        self.generic_visit(node)

    def visit_Call(self, node):
        if self.depth:
            t = self.t
            for k in range(len(node.args) - 1):
                x, y = node.args[k], node.args[k + 1]
                if isinstance(x, ast.Starred) or isinstance(y, ast.Starred):
                    continue
                (xs, xe), (ys, ye) = t.span(x), t.span(y)
                between = t.seg(xe, ys)
                if between.strip() == "," and t.seg(xs, xe) != t.seg(ys, ye):
                    self.add("swap_arguments", node, xs, ye, t.seg(ys, ye) + between + t.seg(xs, xe))
        self.generic_visit(node)

    def visit_Constant(self, node):
        if self.depth and not isinstance(node.value, str):
            a, b = self.t.span(node)
            text = self.t.seg(a, b)
            if node.value is True or node.value is False:
                self.add("change_constant", node, a, b, str(not node.value))
            elif isinstance(node.value, int) and re.fullmatch(r"\d+", text):
                self.add("change_constant", node, a, b, str(node.value + 1))


def _is_docstring(stmt) -> bool:
    return isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str)


def find_mutations(source: str, path: str) -> list[Mutation]:
    """Every candidate mutation of one file's functions; each still parses and changes the AST."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    text = _Text(source)
    collector = _Collector(text)
    collector.visit(tree)
    original = ast.dump(tree)
    out, seen = [], set()
    for kind, function, line, start, end, new in collector.edits:
        mutated = source[:start] + new + source[end:]
        if mutated in seen:
            continue
        try:
            if ast.dump(ast.parse(mutated)) == original:
                continue
        except (SyntaxError, ValueError):
            continue
        seen.add(mutated)
        a_lines = source[text.starts[line - 1]:].splitlines()
        before = "\n".join(a_lines[:source[start:end].rstrip("\n").count("\n") + 1]).strip()
        after = ("\n".join(mutated[text.starts[line - 1]:].splitlines()[:new.count("\n") + 1]).strip()
                 if new else "(removed)")
        out.append(Mutation(path, kind, function, line, before, after, mutated))
    return out


class Schedule:
    """The order in which mutations are tried, for a varied task set: the kind with the fewest kept tasks
    first (then the fewest tried), and within it a function that has no task yet; seeded otherwise."""

    def __init__(self, mutations: list[Mutation], seed: int):
        rng = random.Random(seed)
        self.queues: dict[str, list[Mutation]] = {}
        for m in mutations:
            self.queues.setdefault(m.kind, []).append(m)
        for queue in self.queues.values():
            rng.shuffle(queue)
        self.kinds = sorted(self.queues)
        rng.shuffle(self.kinds)
        self.kept: dict[str, int] = {}
        self.tried: dict[str, int] = {}
        self.used: dict[tuple[str, str], int] = {}

    def next(self) -> Mutation | None:
        live = [k for k in self.kinds if self.queues[k]]
        if not live:
            return None
        kind = min(live, key=lambda k: (self.kept.get(k, 0), self.tried.get(k, 0), self.kinds.index(k)))
        queue = self.queues[kind]
        best = min(range(len(queue)), key=lambda i: self.used.get((queue[i].path, queue[i].function), 0))
        self.tried[kind] = self.tried.get(kind, 0) + 1
        return queue.pop(best)

    def keep(self, m: Mutation) -> None:
        self.kept[m.kind] = self.kept.get(m.kind, 0) + 1
        self.used[(m.path, m.function)] = self.used.get((m.path, m.function), 0) + 1
