"""Mutate-fix tasks from any Python repository with tests (CWM's ForagerAgent idea), and the default task set.

`cwm swe mutate --repo PATH --tests CMD --out tasks.jsonl`:

1. The repository's committed files (or its files, if it is not a git repository) become an orphan commit
   in a bare task repository beside the output (`tasks.repo/`); its image is built as for any SWE task.
2. Mutations are found in the AST of every non-test Python file, inside functions only: remove a
   statement, swap two call arguments or two variables, flip an operator or a comparison, drop a return,
   change a constant. Each is a minimal text edit, so the gold patch touches only the mutated lines.
3. Each mutation runs the test command in a container of the clean image; it is kept only if at least one
   test that passes on the clean code fails: FAIL_TO_PASS = those tests, PASS_TO_PASS = the other passing
   ones. Mutations that make the tests hang are dropped.
4. A kept mutation becomes its own orphan commit (no history, so `git log` / `git diff` cannot reveal the
   original code) and a SWE-bench-format row: the problem statement names the failing tests and their
   assertion messages, never the mutation; the gold patch is the reverse diff; the eval script restores the
   test files and test configuration to the base commit and removes new conftest/config files first.

The rows load with `cwm_envs.swe.dataset.load_instances` and run through the SWE harness unchanged
(`cwm swe eval --dataset tasks.jsonl --gold` resolves every one). `default_task_file()` builds the
default set from the embedded repository (default_repo.py) on first use and caches it.

>>> src = "def f(a, b):\\n    return a - b\\n"
>>> sorted({m.kind for m in find_mutations(src, "m.py")})
['drop_return', 'flip_operator', 'swap_variables']
>>> [m.source for m in find_mutations(src, "m.py") if m.kind == "swap_variables"]
['def f(a, b):\\n    return b - a\\n']
"""
from __future__ import annotations

import ast
import fcntl
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from cwm_envs.errors import InfraError, UsageError

KINDS = ("remove_statement", "swap_arguments", "swap_variables", "flip_operator", "flip_comparison",
         "drop_return", "change_constant")
DEFAULT_TASKS = 8                       # size of the embedded default task set
GIT_ENV = {"GIT_AUTHOR_NAME": "cwm-envs", "GIT_AUTHOR_EMAIL": "cwm-envs@example.com",
           "GIT_COMMITTER_NAME": "cwm-envs", "GIT_COMMITTER_EMAIL": "cwm-envs@example.com",
           "GIT_AUTHOR_DATE": "2024-01-01T00:00:00Z", "GIT_COMMITTER_DATE": "2024-01-01T00:00:00Z"}
ACTIVATE = "source /opt/miniconda3/bin/activate && conda activate testbed && cd /testbed"
PASSING = ("PASSED", "XFAIL")
CONFIG_FILES = ("pyproject.toml", "setup.cfg", "tox.ini", "pytest.ini")
# files a patch must not add: they could change how the tests run or what they report
INJECTED = r"(^|/)(conftest\.py|pytest\.ini|tox\.ini|setup\.cfg|sitecustomize\.py|usercustomize\.py|[^/]*\.pth)$"
SKIP_DIRS = {".git", ".hg", ".svn", ".venv", "venv", "env", "__pycache__", ".tox", ".nox", "build", "dist",
             "node_modules", ".mypy_cache", ".pytest_cache", ".eggs"}


# --- finding mutations --------------------------------------------------------------------------------------

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


# --- the task repository (bare git, one orphan commit per task) ----------------------------------------------

def is_test_path(path: str) -> bool:
    """Whether a repository path is test code (a test file, conftest, or anything under a tests folder).

    >>> [is_test_path(p) for p in ("tests/util.py", "pkg/test_x.py", "pkg/x_test.py", "conftest.py", "pkg/x.py")]
    [True, True, True, True, False]
    """
    parts = path.split("/")
    name = parts[-1]
    return (any(p in ("test", "tests", "testing") for p in parts[:-1]) or name.startswith("test_")
            or name.endswith("_test.py") or name == "conftest.py")


class TaskRepo:
    """A bare git repository holding the clean tree and one orphan commit per mutation."""

    def __init__(self, path: Path):
        self.path = path
        if not (path / "HEAD").exists():
            path.mkdir(parents=True, exist_ok=True)
            self.git("init", "-q", "--bare")
        self._index = tempfile.mkdtemp(prefix="cwm-mutate-index-")

    def git(self, *args: str, input: bytes | None = None, env: dict | None = None, cwd: Path | None = None) -> str:
        proc = subprocess.run(["git", "--git-dir", str(self.path), *args], input=input, capture_output=True,
                              env={**os.environ, **GIT_ENV, **(env or {})}, cwd=cwd)
        if proc.returncode != 0:
            raise InfraError(f"git {' '.join(args[:2])} failed: {proc.stderr.decode(errors='replace').strip()[-400:]}")
        return proc.stdout.decode()

    def import_tree(self, snapshot: Path, force: bool) -> str:
        """The tree of a directory's files -> tree id; its .gitignore applies unless `force`."""
        env = {"GIT_INDEX_FILE": f"{self._index}/clean", "GIT_WORK_TREE": str(snapshot)}
        self.git("add", "-A", *(["-f"] if force else []), ".", env=env, cwd=snapshot)
        return self.git("write-tree", env=env).strip()

    def commit(self, tree: str, message: str, ref: str) -> str:
        sha = self.git("commit-tree", tree, "-m", message).strip()
        self.git("update-ref", ref, sha)
        return sha

    def with_file(self, tree: str, path: str, content: str) -> str:
        """`tree` with one file's content replaced -> new tree id (the file keeps its mode)."""
        mode = self.git("ls-tree", tree, "--", path).split()[0]
        blob = self.git("hash-object", "-w", "--stdin", input=content.encode()).strip()
        env = {"GIT_INDEX_FILE": f"{self._index}/task"}
        self.git("read-tree", tree, env=env)
        self.git("update-index", "--cacheinfo", f"{mode},{blob},{path}", env=env)
        return self.git("write-tree", env=env).strip()

    def files(self, tree: str) -> list[str]:
        return self.git("ls-tree", "-r", "--name-only", "-z", tree).split("\0")[:-1]

    def diff(self, a: str, b: str) -> str:
        return self.git("diff", "--no-color", "--no-ext-diff", a, b)

    def close(self) -> None:
        shutil.rmtree(self._index, ignore_errors=True)


def snapshot_repo(repo: Path, dest: Path) -> bool:
    """The repository's committed files at HEAD (a git repository: returns True) or its files (any other folder)."""
    if subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", "-q", "HEAD"], capture_output=True).returncode == 0:
        tar = subprocess.Popen(["git", "-C", str(repo), "archive", "--format=tar", "HEAD"], stdout=subprocess.PIPE)
        untar = subprocess.run(["tar", "-x", "-C", str(dest)], stdin=tar.stdout, capture_output=True)
        tar.stdout.close()
        if tar.wait() != 0 or untar.returncode != 0:
            raise InfraError(f"git archive of {repo} failed: {untar.stderr.decode(errors='replace')[-300:]}")
        return True
    for root, dirs, files in os.walk(repo):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info"))
        rel = Path(root).relative_to(repo)
        (dest / rel).mkdir(parents=True, exist_ok=True)
        for name in files:
            if not name.endswith((".pyc", ".pyo")):
                shutil.copy2(Path(root) / name, dest / rel / name, follow_symlinks=False)
    return False


def source_date(repo: Path, from_git: bool) -> str:
    """The tasks' `created_at`: the source's HEAD commit date (a git repository), else now. Their environments
    resolve as of it, so they do not drift with the package index (the task commits carry a fixed date)."""
    import datetime as dt

    from cwm_envs.swe.specs import commit_date

    when = commit_date(repo, "HEAD") if from_git else ""
    return when or dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def eval_script(base: str, test_cmd: str, protected: list[str]) -> str:
    """SWE-bench's eval script shape; test files and test configuration are reset to `base` around the run."""
    from cwm_envs.swe.dataset import END, START

    quoted = " ".join("'" + p.replace("'", "'\\''") + "'" for p in protected)
    reset = f"git checkout {base} -- {quoted}" if protected else ": nothing to reset"
    strip = f"git ls-files --others -z | grep -zE '{INJECTED}' | xargs -0 -r rm -f --"
    lines = ["#!/bin/bash", "set -uxo pipefail", "source /opt/miniconda3/bin/activate", "conda activate testbed",
             "cd /testbed", reset, strip, f": '{START}'", test_cmd, f": '{END}'", reset]
    return "\n".join(lines) + "\n"


# --- running the tests --------------------------------------------------------------------------------------

_SUMMARY = re.compile(r"^(FAILED|ERROR) (\S+)(?: - (.*))?$", re.M)
_BLOCK = re.compile(r"^_{3,} (?:ERROR at \w+ of )?(\S+(?: \S+)*?) _{3,}$", re.M)


def failure_messages(log: str, lines: int = 4) -> dict[str, str]:
    """What pytest said about each failed test: the `E` lines of its traceback (the assertion and its
    explanation), else the message of its `-rA` summary line. Keys are the test ids of the summary.

    >>> log = ("____ test_a ____\\n    assert f() == 2\\nE   assert 1 == 2\\nE    +  where 1 = f()\\n"
    ...        "=== short test summary info ===\\nFAILED t.py::test_a - assert 1 == 2\\nERROR t.py::test_b")
    >>> failure_messages(log)
    {'t.py::test_a': 'assert 1 == 2\\n +  where 1 = f()', 't.py::test_b': ''}
    """
    blocks: dict[str, str] = {}
    heads = list(_BLOCK.finditer(log))
    for k, head in enumerate(heads):
        end = heads[k + 1].start() if k + 1 < len(heads) else len(log)
        body = log[head.end():end].split("\n=", 1)[0]
        err = [ln[1:].rstrip() for ln in body.splitlines() if ln.startswith("E ")]
        if err:
            blocks.setdefault(head.group(1), textwrap.dedent("\n".join(err[:lines])).strip("\n"))
    out = {}
    for m in _SUMMARY.finditer(log):
        test = m.group(2)
        name = test.split("::", 1)[-1].replace("::", ".")
        out[test] = blocks.get(name) or blocks.get(name.rsplit(".", 1)[-1]) or (m.group(3) or "").strip()
    return out


def problem_statement(name: str, failing: list[str], messages: dict[str, str], test_cmd: str,
                      shown: int = 6) -> str:
    """What a user reporting the failures would write: the failing tests and their messages, no cause."""
    lines = [f"Some tests of {name} fail on the current code, although they are correct:", ""]
    for test in failing[:shown]:
        msg = (messages.get(test) or messages.get(test.split("::")[0], ""))[:600]
        lines.append(f"- `{test}`" + (":\n" + textwrap.indent(msg, "      ") if msg else " fails"))
    if len(failing) > shown:
        lines.append(f"- and {len(failing) - shown} more")
    lines += ["", f"The tests run with `{test_cmd}`. Find the defect in the library code and fix it so that "
              "these tests pass and the others keep passing. Do not change the tests."]
    return "\n".join(lines)


def _statuses(instance, log: str) -> dict[str, str]:
    from swebench.harness.log_parsers import PARSER_REGISTRY

    parser = PARSER_REGISTRY.get(instance.log_parser)
    if parser is None:
        raise UsageError(f"unknown log parser {instance.log_parser!r}")
    return parser(log, instance.test_spec())


# --- the whole run ------------------------------------------------------------------------------------------

def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.").lower() or "repo"


def mutate_repo(repo: str | Path, test_cmd: str, out: str | Path, *, max_tasks: int = 20, seed: int = 0,
                max_candidates: int | None = None, pip_packages: tuple[str, ...] = ("pytest",),
                install: tuple[str, ...] | None = None, python: str | None = None, name: str | None = None,
                log_parser: str = "parse_log_pytest", files: tuple[str, ...] = (), progress: bool | None = None,
                log: Callable[[str], None] = lambda _m: None) -> dict:
    """Make mutate-fix tasks for `repo`; write OUT (JSONL rows) and OUT's task repository. Returns a summary."""
    from tqdm import tqdm

    from cwm_envs.sandbox.docker_backend import REPO_SANDBOX, DockerSandbox
    from cwm_envs.swe.dataset import instance_from_row
    from cwm_envs.swe.harness import EVAL_LIMITS
    from cwm_envs.swe.images import build_instance_image

    repo, out = Path(repo).resolve(), Path(out).resolve()
    if not repo.is_dir():
        raise UsageError(f"--repo {repo}: no such directory")
    if not test_cmd.strip() or "\n" in test_cmd.strip():
        raise UsageError("--tests must be one command line (e.g. `python -m pytest -rA tests`)")
    if max_tasks < 1:
        raise UsageError("--max-tasks must be at least 1")
    name = name or repo.name
    slug = _slug(name)
    repo_dir = out.with_name(out.name.split(".")[0] + ".repo")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cwm-mutate-") as tmp:
        snap = Path(tmp) / "src"
        snap.mkdir()
        from_git = snapshot_repo(repo, snap)
        created_at = source_date(repo, from_git)
        if repo_dir.exists():
            if not (repo_dir / "refs" / "cwm").is_dir():
                raise UsageError(f"{repo_dir} exists and is not a task repository of ours; choose another --out")
            shutil.rmtree(repo_dir)
        tasks_repo = TaskRepo(repo_dir)
        try:
            tree0 = tasks_repo.import_tree(snap, force=from_git)
            clean = tasks_repo.commit(tree0, name, "refs/cwm/clean")
            paths = tasks_repo.files(tree0)
            if install is None:
                has_build = any(p in ("pyproject.toml", "setup.py", "setup.cfg") for p in paths)
                install = ("python -m pip install -e .",) if has_build else ()
            protected = [p for p in paths if is_test_path(p) or p in CONFIG_FILES]
            sources = [p for p in paths if p.endswith(".py") and not is_test_path(p) and p != "setup.py"
                       and (not files or any(p == f or p.startswith(f.rstrip("/") + "/") for f in files))]
            if not sources:
                raise UsageError(f"{repo}: no Python source files outside the tests to mutate")
            candidates = []
            for p in sources:
                candidates += find_mutations((snap / p).read_text(encoding="utf-8", errors="replace"), p)
            schedule = Schedule(candidates, seed)
            limit = min(len(candidates), max_candidates or len(candidates))
            base_row = {"repo": f"local/{slug}", "test_patch": "", "PASS_TO_PASS": [], "test_cmd": test_cmd,
                        "install": list(install), "pip_packages": list(pip_packages), "repo_path": str(repo_dir),
                        "log_parser": log_parser, "created_at": created_at, **({"python": python} if python else {})}
            clean_inst = instance_from_row({**base_row, "instance_id": f"{slug}-clean", "base_commit": clean,
                                            "FAIL_TO_PASS": []})
            log(f"building the image of the clean repository ({len(candidates)} candidate mutations)")
            image = build_instance_image(clean_inst, log=log)
            rows, skipped = [], {"no_test_failed": 0, "timed_out": 0}
            with DockerSandbox(image, pool_size=0, workdir="/testbed", limits=EVAL_LIMITS, **REPO_SANDBOX) as sb:
                base_log, base_s, _ = _run_tests(sb, test_cmd, timeout=1800)
                baseline = _statuses(clean_inst, base_log)
                passing = sorted(t for t, s in baseline.items() if s in PASSING)
                if not passing:
                    raise UsageError(f"`{test_cmd}` reported no passing test on the clean repository (for pytest, "
                                     f"add -rA so that each result is printed). Output tail:\n{base_log[-1500:]}")
                timeout = max(10.0, 5 * base_s)     # a mutation that makes the tests hang is dropped
                bar = tqdm(total=limit, desc="mutate", unit="mut", disable=not (progress if progress is not None
                                                                                else sys.stderr.isatty()))
                tried = 0
                while len(rows) < max_tasks and tried < limit:
                    m = schedule.next()
                    tried += 1
                    bar.update(1)
                    sb.write_file(f"/testbed/{m.path}", m.source)
                    mlog, _, timed_out = _run_tests(sb, test_cmd, timeout=timeout)
                    sb.run(f"{ACTIVATE} && git checkout -q -- . && git clean -fdq", timeout=60)
                    if timed_out:
                        skipped["timed_out"] += 1
                        continue
                    after = _statuses(clean_inst, mlog)
                    failing = [t for t in passing if after.get(t) not in PASSING]
                    if not failing:
                        skipped["no_test_failed"] += 1
                        continue
                    schedule.keep(m)
                    n = len(rows) + 1
                    iid = f"{slug}-mutate-{n:03d}"
                    tree = tasks_repo.with_file(tree0, m.path, m.source)
                    base = tasks_repo.commit(tree, name, f"refs/cwm/tasks/{iid}")
                    rows.append({**base_row, "instance_id": iid, "base_commit": base,
                                 "patch": tasks_repo.diff(base, clean),
                                 "FAIL_TO_PASS": failing, "PASS_TO_PASS": [t for t in passing if t not in failing],
                                 "problem_statement": problem_statement(name, failing, failure_messages(mlog), test_cmd),
                                 "eval_script": eval_script(base, test_cmd, protected),
                                 "mutation": {k: v for k, v in asdict(m).items() if k != "source"}})
                    bar.set_postfix(kept=len(rows))
                bar.close()
        finally:
            tasks_repo.close()
    if not rows:
        raise UsageError(f"{repo}: none of {tried} mutations made a test fail; are the tests thorough, "
                         "and does the test command run them?")
    for row in rows:                         # every row must load as a SWE instance
        instance_from_row(row, f"{out}:{row['instance_id']}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_name(out.name + ".tmp")
    tmp_out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp_out.replace(out)
    kinds: dict[str, int] = {}
    for r in rows:
        kinds[r["mutation"]["kind"]] = kinds.get(r["mutation"]["kind"], 0) + 1
    return {"tasks": len(rows), "tried": tried, "candidates": len(candidates),
            "skipped": skipped, "kinds": kinds, "tests": len(passing), "out": str(out), "repo": str(repo_dir),
            "clean_image": image, "seconds": round(time.perf_counter() - t0, 1)}


def _run_tests(sb, test_cmd: str, timeout: float) -> tuple[str, float, bool]:
    res = sb.run(f"{ACTIVATE} && {test_cmd} 2>&1", timeout=timeout)
    if res.limit_hit == "memory":
        return res.stdout, res.duration_s, True
    return res.stdout + res.stderr, res.duration_s, res.timed_out


# --- the embedded default task set --------------------------------------------------------------------------

_default_lock = threading.Lock()


def default_task_file(log: Callable[[str], None] = lambda _m: None) -> Path:
    """The default task set's JSONL (mutations of the embedded `tinylib`), built on first use and cached.

    Cached under the SWE cache directory by a hash of the repository's files and this module, so a change
    to either makes a new set; a file lock lets parallel processes build it once.
    """
    from cwm_envs.swe import default_repo
    from cwm_envs.swe.images import cache_dir

    key = hashlib.sha256(json.dumps([default_repo.VERSION, default_repo.FILES, default_repo.TEST_CMD, DEFAULT_TASKS,
                                     Path(__file__).read_text()], sort_keys=True).encode()).hexdigest()[:12]
    folder = cache_dir() / "swe-default" / key
    path = folder / "tasks.jsonl"
    if path.exists():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    with _default_lock, open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not path.exists():
                log(f"building the default SWE task set in {folder} (once; about a minute)")
                with tempfile.TemporaryDirectory(prefix="cwm-tinylib-") as tmp:
                    src = default_repo.write_default_repo(Path(tmp) / default_repo.NAME)
                    mutate_repo(src, default_repo.TEST_CMD, path, max_tasks=DEFAULT_TASKS, seed=0,
                                name=default_repo.NAME, install=default_repo.INSTALL, log=log)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return path


# --- CLI ----------------------------------------------------------------------------------------------------

def _cmd_mutate(args) -> int:
    from cwm_envs.swe import default_repo

    log = (lambda m: print(m, file=sys.stderr, flush=True)) if args.verbose else (lambda _m: None)
    with tempfile.TemporaryDirectory(prefix="cwm-tinylib-") as tmp:
        if args.repo is None:
            if args.tests:
                raise UsageError("--tests goes with --repo (the embedded repository brings its own test command)")
            repo, tests, name = default_repo.write_default_repo(Path(tmp) / default_repo.NAME), default_repo.TEST_CMD, default_repo.NAME
        else:
            if not args.tests:
                raise UsageError("--tests CMD is required with --repo (e.g. --tests 'python -m pytest -rA tests')")
            repo, tests, name = Path(args.repo), args.tests, args.name
        summary = mutate_repo(repo, tests, args.out, max_tasks=args.max_tasks, seed=args.seed,
                              max_candidates=args.max_candidates, pip_packages=tuple(args.pip),
                              install=tuple(args.install) if args.install is not None else None, python=args.python,
                              name=name, files=tuple(args.files or ()), log=log)
    print(f"{summary['tasks']} task(s) from {summary['tried']} tried of {summary['candidates']} candidate mutations "
          f"({summary['skipped']['no_test_failed']} made no test fail, {summary['skipped']['timed_out']} hung) "
          f"in {summary['seconds']} s -> {summary['out']} (git objects in {summary['repo']})")
    print("kinds: " + ", ".join(f"{k} {v}" for k, v in sorted(summary["kinds"].items())))
    return 0


def register(swe_group) -> None:
    """Add `cwm swe mutate` to the `cwm swe` subcommands."""
    p = swe_group.add_parser("mutate", help="make mutate-fix SWE tasks from a Python repository with tests",
                             description="Mutate functions of a repository, keep the mutations that make tests "
                                         "fail, and write SWE-bench-format task rows (run them with cwm/SWE-v0 "
                                         "or `cwm swe eval`). Without --repo, uses the embedded default repository.")
    p.add_argument("--repo", default=None, help="a local Python repository (its committed files if it is a git repo)")
    p.add_argument("--tests", default=None, help="test command run in the repository root, e.g. "
                                                 "'python -m pytest -rA tests' (pytest needs -rA)")
    p.add_argument("--out", required=True, help="output JSONL; the task commits go to a bare repo beside it (NAME.repo)")
    p.add_argument("--max-tasks", type=int, default=20, help="stop after this many tasks (default 20)")
    p.add_argument("--max-candidates", type=int, default=None, help="try at most this many mutations")
    p.add_argument("--seed", type=int, default=0, help="order in which mutations are tried (default 0)")
    p.add_argument("--pip", nargs="*", default=["pytest"], metavar="REQ",
                   help="requirements installed in the image (default: pytest)")
    p.add_argument("--install", nargs="*", default=None, metavar="CMD",
                   help="install commands run in the repo root (default: pip install -e . when it has a build file)")
    p.add_argument("--python", default=None, help="Python version of the image (3.11 or 3.9; default 3.11)")
    p.add_argument("--name", default=None, help="name used in task ids and problem statements (default: folder name)")
    p.add_argument("--files", nargs="*", default=None, metavar="PATH", help="only mutate these files or folders")
    p.add_argument("-v", "--verbose", action="store_true", help="print image builds")
    p.set_defaults(func=_cmd_mutate)
