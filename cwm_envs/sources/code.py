"""Task sources for code: CRUXEval (execution prediction), HumanEval (function completion) and
LiveCodeBench-format JSONL (competitive programming, stdin/stdout or call-based tests).

Every loader takes a path (default: the copy in the shared data folder), returns a list of `Task`, and
raises a `UsageError` naming the file and row when a row is broken. The fields each family fills:

CRUXEval (`load_cruxeval`)
    id = "sample_N"; prompt = the code; answer = the output literal;
    metadata = {"code", "input", "output", "entry": "f"}  (input/output are Python literals as text;
    `input` may hold several comma-separated arguments, so the call is `f(<input>)`).
HumanEval (`load_humaneval`)
    id = task_id; prompt = the signature and docstring the model completes; answer = canonical_solution;
    tests = the `check(candidate)` test code; metadata = {"task_id", "entry_point", "canonical_solution", "test"}.
LiveCodeBench (`load_livecodebench`)
    id = question_id; prompt = question_content; answer = the row's `reference_solution` when it has one
    (not a LiveCodeBench field: rows our generator writes carry it, so the oracle can play them), else None;
    tests = a list of {"input", "output", "testtype" ("stdin" | "functional"), "public" (bool)}, public tests
    first; metadata = {"title", "platform", "difficulty", "contest_date", "starter_code", "func_name"
    (None for stdin problems)}.  `private_test_cases` may be plain JSON or LiveCodeBench's compressed form
    (base64 of zlib of a pickled JSON string); the pickle is read by an unpickler that admits only plain str.
"""
from __future__ import annotations

import base64
import io
import json
import pickle
import zlib
from pathlib import Path
from typing import Sequence

from cwm_envs.errors import UsageError
from cwm_envs.tasks import Task, read_jsonl, shared_data_dir

CRUXEVAL_FILE = "cruxeval.jsonl"
HUMANEVAL_FILE = "HumanEval.jsonl.gz"


def _rows(path: Path, required: tuple[str, ...], limit: int | None):
    for i, row in enumerate(read_jsonl(path)):
        if limit is not None and i >= limit:
            return
        missing = [k for k in required if not isinstance(row.get(k), str)]
        if missing:
            raise UsageError(f"{path}: row {i + 1} lacks string field(s) {', '.join(missing)}")
        yield row


def load_cruxeval(path: str | Path | None = None, limit: int | None = None) -> list[Task]:
    """CRUXEval rows (800 in the public file) as Tasks; see the module docstring for the fields."""
    path = Path(path) if path else shared_data_dir() / CRUXEVAL_FILE
    return [
        Task(id=r["id"], prompt=r["code"], answer=r["output"],
             metadata={"code": r["code"], "input": r["input"], "output": r["output"], "entry": "f"})
        for r in _rows(path, ("id", "code", "input", "output"), limit)
    ]


def load_humaneval(path: str | Path | None = None, limit: int | None = None) -> list[Task]:
    """HumanEval rows (164) as Tasks; the test code calls `check(<entry_point>)`."""
    path = Path(path) if path else shared_data_dir() / HUMANEVAL_FILE
    fields = ("task_id", "prompt", "entry_point", "canonical_solution", "test")
    return [
        Task(id=r["task_id"], prompt=r["prompt"], answer=r["canonical_solution"], tests=r["test"],
             metadata={k: r[k] for k in fields if k != "prompt"})
        for r in _rows(path, fields, limit)
    ]


class _StrOnlyUnpickler(pickle.Unpickler):
    """LiveCodeBench pickles a JSON string; refuse any global so a hostile file cannot run code."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"global {module}.{name} not allowed in test data")


def _decode_tests(raw, where: str) -> list[dict]:
    if isinstance(raw, list):
        return raw
    if not isinstance(raw, str) or not raw.strip():
        return []
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        pass
    try:
        text = _StrOnlyUnpickler(io.BytesIO(zlib.decompress(base64.b64decode(raw)))).load()
        return json.loads(text)
    except Exception as exc:  # any decoding failure means a broken row
        raise UsageError(f"{where}: test cases are neither JSON nor LiveCodeBench-compressed ({exc})") from None


def _tests(raw, public: bool, where: str) -> list[dict]:
    out = []
    for t in _decode_tests(raw, where):
        if not isinstance(t, dict) or not isinstance(t.get("input"), str) or not isinstance(t.get("output"), str):
            raise UsageError(f"{where}: each test needs string 'input' and 'output'")
        testtype = t.get("testtype", "stdin")
        if testtype not in ("stdin", "functional"):
            raise UsageError(f"{where}: unknown testtype {testtype!r}")
        out.append({"input": t["input"], "output": t["output"], "testtype": testtype, "public": public})
    return out


def load_livecodebench(path: str | Path, limit: int | None = None) -> list[Task]:
    """LiveCodeBench `code_generation_lite`-format JSONL (question_id, question_content, public/private tests)."""
    path = Path(path)
    tasks = []
    for i, r in enumerate(_rows(path, ("question_id", "question_content"), limit)):
        where = f"{path}: row {i + 1} ({r['question_id']})"
        meta = r.get("metadata") or {}
        if isinstance(meta, str):
            try:
                meta = json.loads(meta) if meta.strip() else {}
            except json.JSONDecodeError:
                raise UsageError(f"{where}: metadata is not JSON") from None
        tests = _tests(r.get("public_test_cases"), True, where) + _tests(r.get("private_test_cases"), False, where)
        if not tests:
            raise UsageError(f"{where}: no test cases")
        tasks.append(Task(
            id=r["question_id"], prompt=r["question_content"], tests=tests, answer=r.get("reference_solution") or None,
            metadata={"title": r.get("question_title", ""), "platform": r.get("platform", ""),
                      "difficulty": r.get("difficulty", ""), "contest_date": r.get("contest_date", ""),
                      "starter_code": r.get("starter_code", "") or "", "func_name": meta.get("func_name")},
        ))
    return tasks




def load_code_tasks(source: str | Path) -> list[Task]:
    """Tasks from a name ("humaneval") or a file: HumanEval .jsonl(.gz) or LiveCodeBench-format JSONL."""
    if str(source).lower() == "humaneval":
        return load_humaneval()
    path = Path(source)
    first = next(iter(read_jsonl(path)), None)
    if first is None:
        raise UsageError(f"{path}: no rows")
    if "canonical_solution" in first:
        return load_humaneval(path)
    if "question_id" in first:
        return load_livecodebench(path)
    raise UsageError(f"{path}: neither HumanEval nor LiveCodeBench rows")


def load_program_tasks(source: str | Path | Sequence[Task], fields: tuple[str, ...] = ("code", "input")) -> list[Task]:
    """Tasks about one function call (prediction and trace envs): "cruxeval" (the shared file), a
    CRUXEval-format JSONL path, or Tasks whose metadata holds `fields` as strings (and optionally `entry`)."""
    if isinstance(source, (str, Path)):
        tasks = load_cruxeval(None if str(source) == "cruxeval" else source)
    else:
        tasks = list(source)
    if not tasks:
        raise UsageError("no tasks")
    for t in tasks:
        if not all(isinstance(t.metadata.get(k), str) for k in fields):
            raise UsageError(f"task {t.id}: metadata needs string {', '.join(fields)}")
    return tasks


__all__ = ["load_code_tasks", "load_cruxeval", "load_humaneval", "load_livecodebench", "load_program_tasks"]
