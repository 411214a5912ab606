"""SWE-bench rows (parquet, JSONL or JSON files, or a hub name when online) as frozen `SWEInstance`s.

Rows keep SWE-bench's own field names, so a row of SWE-bench Lite or Verified loads as it is. Tasks that are
not from SWE-bench add a few optional fields of ours instead of an `eval_script`:

- `repo_path`: a local git repository to take the sources from (else `--repos DIR` / `repo`),
- `install`: shell commands run in `/testbed` when the image is built (e.g. `pip install -e .`),
- `test_cmd`: the test command (e.g. `pytest -rA tests/test_x.py`); an eval script is made from it,
- `python`: the Python version to build the environment for (default: the base image's),
- `pip_packages`: requirements installed into the environment (from a host-built wheelhouse),
- `log_parser`: a key of SWE-bench's `PARSER_REGISTRY` (default `parse_log_pytest`).

>>> inst = instance_from_row({"instance_id": "a__b-1", "repo": "a/b", "base_commit": "c0ffee",
...     "patch": "", "test_patch": "", "FAIL_TO_PASS": '["t::x"]', "PASS_TO_PASS": "[]",
...     "test_cmd": "pytest -rA t.py"})
>>> inst.FAIL_TO_PASS, inst.log_parser, ">>>>> Start Test Output" in inst.eval_script
(('t::x',), 'parse_log_pytest', True)
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

from cwm_envs.errors import UsageError
from cwm_envs.tasks import Task, read_jsonl

REQUIRED = ("instance_id", "repo", "base_commit", "test_patch", "FAIL_TO_PASS", "PASS_TO_PASS")
START, END = ">>>>> Start Test Output", ">>>>> End Test Output"   # the markers SWE-bench's grader slices on
HEREDOC = "EOF_114329324912"                                       # SWE-bench's delimiter for the test patch


@dataclass(frozen=True)
class SWEInstance:
    """One SWE-bench task instance; tuples instead of JSON strings for the test lists."""

    instance_id: str
    repo: str                                  # "owner/name"
    base_commit: str
    test_patch: str
    FAIL_TO_PASS: tuple[str, ...]
    PASS_TO_PASS: tuple[str, ...]
    patch: str = ""                            # the gold patch
    problem_statement: str = ""
    hints_text: str = ""
    created_at: str = ""
    version: str = ""
    environment_setup_commit: str = ""
    eval_script: str = ""
    log_parser: str = "parse_log_pytest"
    eval_type: str = "pass_and_fail"
    image: str = ""                            # the official image name, used only to compare with it
    # Optional fields of ours (tasks not from SWE-bench):
    repo_path: str | None = None
    install: tuple[str, ...] = ()
    test_cmd: str | None = None
    python: str | None = None
    pip_packages: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        """The id every task shares (`cwm_envs.tasks.Task.id`)."""
        return self.instance_id

    @property
    def prompt(self) -> str:
        """The text a task poses (`cwm_envs.tasks.Task.prompt`): the issue."""
        return self.problem_statement

    @property
    def test_files(self) -> tuple[str, ...]:
        """The files the test patch touches: reset to `base_commit` before the tests run."""
        return tuple(dict.fromkeys(re.findall(r"^diff --git a/.* b/(.*)$", self.test_patch, re.M)))

    def to_task(self) -> Task:
        """The generic Task record (prompt = the issue text, patch = the gold patch)."""
        meta = {k: v for k, v in asdict(self).items() if k not in ("instance_id", "problem_statement", "patch")}
        return Task(id=self.instance_id, prompt=self.problem_statement, patch=self.patch, tests=self.test_patch,
                    metadata=meta)

    def test_spec(self):
        """SWE-bench's own `TestSpec`, which its log parsers and grader take."""
        from swebench.types import TestSpec

        lines = [ln for ln in self.eval_script.strip().split("\n") if ln not in ("#!/bin/bash", "set -uxo pipefail")]
        return TestSpec(instance_id=self.instance_id, image=self.image, eval_script_list=lines, repo=self.repo,
                        version=self.version, FAIL_TO_PASS=list(self.FAIL_TO_PASS),
                        PASS_TO_PASS=list(self.PASS_TO_PASS), log_parser=self.log_parser, eval_type=self.eval_type)


def _test_list(value: Any, where: str, name: str) -> tuple[str, ...]:
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else []
        except json.JSONDecodeError:
            raise UsageError(f"{where}: {name} is not a JSON list of test ids") from None
    if value is None:
        value = []
    if not isinstance(value, (list, tuple)) or not all(isinstance(t, str) for t in value):
        raise UsageError(f"{where}: {name} must be a list of test ids")
    return tuple(value)


def _str_list(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,) if value.strip() else ()
    return tuple(str(v) for v in value)


def make_eval_script(base_commit: str, test_patch: str, test_cmd: str, test_files: Iterable[str]) -> str:
    """An eval script in SWE-bench's shape for a task that brings only a test command."""
    files = " ".join(f"'{f}'" for f in test_files)
    reset = f"git checkout {base_commit} -- {files} 2>/dev/null || true" if files else ": no test files"
    lines = ["#!/bin/bash", "set -uxo pipefail", "source /opt/miniconda3/bin/activate", "conda activate testbed",
             "cd /testbed", reset]
    if test_patch.strip():
        lines.append(f"git apply -v - <<'{HEREDOC}'\n{test_patch.rstrip(chr(10))}\n{HEREDOC}")
    lines += [f": '{START}'", test_cmd, f": '{END}'", reset]
    return "\n".join(lines) + "\n"


def instance_from_row(row: dict, where: str = "row") -> SWEInstance:
    """Check one dataset row and build its SWEInstance; a broken row raises a UsageError naming it."""
    if not isinstance(row, dict):
        raise UsageError(f"{where}: expected an object, got {type(row).__name__}")
    missing = [k for k in REQUIRED if row.get(k) in (None, "") and k not in ("test_patch",)]
    if missing:
        raise UsageError(f"{where}: missing field(s) {', '.join(missing)}")
    where = f"{where} ({row['instance_id']})"
    if not re.fullmatch(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+", str(row["repo"])):
        raise UsageError(f"{where}: repo must be 'owner/name', got {row['repo']!r}")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", str(row["instance_id"])):
        raise UsageError(f"{where}: instance_id may hold only letters, digits, '_', '.', '-'")
    test_patch = row.get("test_patch") or ""
    eval_script = row.get("eval_script") or ""
    test_cmd = row.get("test_cmd") or None
    if not eval_script:
        if not test_cmd:
            raise UsageError(f"{where}: needs an eval_script (SWE-bench) or a test_cmd (our own tasks)")
        files = re.findall(r"^diff --git a/.* b/(.*)$", test_patch, re.M)
        eval_script = make_eval_script(str(row["base_commit"]), test_patch, test_cmd, dict.fromkeys(files))
    if START not in eval_script or END not in eval_script:
        raise UsageError(f"{where}: eval_script lacks the '{START}' / '{END}' markers")
    return SWEInstance(
        instance_id=str(row["instance_id"]), repo=str(row["repo"]), base_commit=str(row["base_commit"]),
        test_patch=test_patch,
        FAIL_TO_PASS=_test_list(row["FAIL_TO_PASS"], where, "FAIL_TO_PASS"),
        PASS_TO_PASS=_test_list(row["PASS_TO_PASS"], where, "PASS_TO_PASS"),
        patch=row.get("patch") or "", problem_statement=row.get("problem_statement") or "",
        hints_text=row.get("hints_text") or "", created_at=str(row.get("created_at") or ""),
        version=str(row.get("version") or ""), environment_setup_commit=row.get("environment_setup_commit") or "",
        eval_script=eval_script, log_parser=row.get("log_parser") or "parse_log_pytest",
        eval_type=row.get("eval_type") or "pass_and_fail", image=row.get("image") or "",
        repo_path=row.get("repo_path") or None, install=_str_list(row.get("install")), test_cmd=test_cmd,
        python=str(row["python"]) if row.get("python") else None, pip_packages=_str_list(row.get("pip_packages")),
    )


def _rows(source: str | Path) -> Iterable[tuple[str, dict]]:
    path = Path(source)
    if path.suffix == ".parquet":
        if not path.exists():
            raise UsageError(f"no such file: {path}")
        import pyarrow.parquet as pq

        for i, row in enumerate(pq.read_table(path).to_pylist()):
            yield f"{path}:row {i}", row
    elif path.name.endswith((".jsonl", ".jsonl.gz")):
        for i, row in enumerate(read_jsonl(path), 1):
            yield f"{path}:{i}", row
    elif path.suffix == ".json":
        if not path.exists():
            raise UsageError(f"no such file: {path}")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise UsageError(f"{path}: not valid JSON ({exc.msg})") from None
        if not isinstance(data, list):
            raise UsageError(f"{path}: expected a JSON list of instances")
        for i, row in enumerate(data):
            yield f"{path}:[{i}]", row
    elif path.exists():
        raise UsageError(f"{path}: unknown dataset format (use .parquet, .jsonl, .jsonl.gz or .json)")
    elif re.fullmatch(r"[\w.-]+/[\w.-]+(:[\w.-]+)?", str(source)):
        yield from _hub_rows(str(source))
    else:
        raise UsageError(f"no such file: {path}")


def _hub_rows(name: str) -> Iterable[tuple[str, dict]]:
    """A hub dataset ("SWE-bench/SWE-bench_Lite[:split]"); needs a network and the `datasets` package."""
    name, _, split = name.partition(":")
    try:
        import datasets

        rows = datasets.load_dataset(name, split=split or "test")
    except ImportError:
        raise UsageError(f"{name}: not a file, and loading hub datasets needs the `datasets` package") from None
    except Exception as exc:
        raise UsageError(f"{name}: not a file, and the hub dataset could not be loaded ({type(exc).__name__}); "
                         "offline, pass a .parquet or .jsonl file") from None
    for i, row in enumerate(rows):
        yield f"{name}:{i}", dict(row)


def load_instances(source: str | Path, ids: Iterable[str] | None = None) -> list[SWEInstance]:
    """Load a dataset; `ids` keeps only those instances (in dataset order) and names any it cannot find."""
    wanted = list(ids) if ids else None
    out, seen = [], set()
    for where, row in _rows(source):
        iid = row.get("instance_id") if isinstance(row, dict) else None
        if wanted is not None and iid not in wanted:
            continue
        inst = instance_from_row(row, where)
        if inst.instance_id in seen:
            raise UsageError(f"{where}: duplicate instance_id {inst.instance_id}")
        seen.add(inst.instance_id)
        out.append(inst)
    if wanted is not None:
        unknown = [i for i in wanted if i not in seen]
        if unknown:
            raise UsageError(f"{source}: no instance(s) {', '.join(unknown[:5])}" + (" ..." if len(unknown) > 5 else ""))
    return out


def load_predictions(path: str | Path) -> dict[str, dict]:
    """SWE-bench predictions (`instance_id`, `model_patch`, `model_name_or_path`) from .jsonl or .json."""
    path = Path(path)
    if path.suffix == ".json":
        if not path.exists():
            raise UsageError(f"no such file: {path}")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise UsageError(f"{path}: not valid JSON ({exc.msg})") from None
        rows = list(data.values()) if isinstance(data, dict) else data
    else:
        rows = list(read_jsonl(path))
    preds: dict[str, dict] = {}
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not isinstance(row.get("instance_id"), str):
            raise UsageError(f"{path}: prediction {i} has no instance_id")
        patch = row.get("model_patch")
        if patch is not None and not isinstance(patch, str):
            raise UsageError(f"{path}: prediction {row['instance_id']}: model_patch must be a string or null")
        preds[row["instance_id"]] = {"instance_id": row["instance_id"], "model_patch": patch,
                                     "model_name_or_path": str(row.get("model_name_or_path") or "model")}
    return preds


def gold_predictions(instances: Iterable[SWEInstance]) -> dict[str, dict]:
    """Predictions made of the dataset's own patches (`--gold`: the validation mode)."""
    return {i.instance_id: {"instance_id": i.instance_id, "model_patch": i.patch, "model_name_or_path": "gold"}
            for i in instances}
