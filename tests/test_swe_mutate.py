"""Mutate-fix tasks: the AST mutations, the failure report, and `cwm swe mutate` on a repository made here.

The end-to-end tests run the real command (a subprocess), build the real images and grade a task with the
SWE harness; a repository's commits have fixed dates, so reruns reuse its images.
"""
from __future__ import annotations

import ast
import datetime
import difflib
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cwm_envs.swe.mutate import KINDS, Schedule, failure_messages, find_mutations, is_test_path, problem_statement

SAMPLE = textwrap.dedent('''\
    """A module with one of everything."""
    LIMIT = 10


    def scale(values, factor=2):
        """Docstring with 3 numbers: 1 2 3."""
        out = []
        total = 0
        for v in values:
            if v > LIMIT and factor:
                continue
            out.append(v * factor)
            total += v
        return out


    class Box:
        def area(self, w, h):
            if not w:
                raise ValueError("empty")
            return max(w, h) - min(w, h) + pow(w, h) + (w < h)
    ''')

SHAPES = '''def rect_area(w, h):
    """Area of a w x h rectangle."""
    if w < 0 or h < 0:
        raise ValueError("negative side")
    return w * h


def perimeter(w, h):
    return 2 * (w + h)


def is_square(w, h):
    return w == h
'''

SHAPE_TESTS = '''import pytest

from shapes import is_square, perimeter, rect_area


def test_area():
    assert rect_area(3, 4) == 12


def test_negative_side():
    with pytest.raises(ValueError):
        rect_area(-1, 2)


def test_perimeter():
    assert perimeter(3, 4) == 14


def test_square():
    assert is_square(2, 2) and not is_square(2, 3)
'''


def test_every_kind_is_found_and_each_edit_is_minimal():
    muts = find_mutations(SAMPLE, "pkg/mod.py")
    assert {m.kind for m in muts} == set(KINDS)
    for m in muts:
        ast.parse(m.source)                                   # still valid Python
        changed = [ln for ln in difflib.ndiff(SAMPLE.splitlines(), m.source.splitlines()) if ln[:1] in "+-"]
        assert 1 <= len(changed) <= 3, (m.kind, changed)      # one line replaced (or one statement removed)
        assert m.function in ("scale", "Box.area") and m.path == "pkg/mod.py"
        assert '"""Docstring with 3 numbers: 1 2 3."""' in m.source     # docstrings are never touched
        assert "LIMIT = 10" in m.source and "factor=2" in m.source    # module constants and defaults neither
    flips = {m.after for m in muts if m.kind == "flip_comparison"}
    assert "if v >= LIMIT and factor:" in flips
    assert "return max(h, w) - min(w, h) + pow(w, h) + (w < h)" in {m.after for m in muts if m.kind == "swap_arguments"}


def test_sources_that_do_not_parse_give_no_mutations():
    assert find_mutations("def broken(:\n", "x.py") == []
    assert find_mutations("X = 1 + 2\n", "x.py") == []        # nothing outside functions


def test_schedule_rotates_over_kinds_and_functions():
    muts = find_mutations(SAMPLE, "m.py") + find_mutations(SHAPES, "shapes.py")
    sched = Schedule(muts, seed=3)
    first = [sched.next() for _ in range(len(KINDS))]
    assert {m.kind for m in first} == set(KINDS)             # one of each kind before any kind repeats
    again = Schedule(muts, seed=3)
    assert [again.next() for _ in range(len(KINDS))] == first   # seeded


def test_test_paths():
    assert is_test_path("tests/helpers/data.py") and is_test_path("src/pkg/test_io.py")
    assert not is_test_path("src/pkg/io.py") and not is_test_path("setup.py")


@pytest.mark.parametrize("module", ["cwm_envs.swe.mutations", "cwm_envs.swe.task_repo", "cwm_envs.swe.mutate"])
def test_doctests(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0


def test_problem_statement_from_a_real_pytest_run(tmp_path):
    (tmp_path / "shapes.py").write_text(SHAPES.replace("return w * h", "return w + h"))
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_shapes.py").write_text(SHAPE_TESTS)
    log = subprocess.run([sys.executable, "-m", "pytest", "-rA", "-p", "no:cacheprovider", "tests"], cwd=tmp_path,
                         capture_output=True, text=True).stdout
    messages = failure_messages(log)
    assert list(messages) == ["tests/test_shapes.py::test_area"]
    assert "assert 7 == 12" in messages["tests/test_shapes.py::test_area"]
    text = problem_statement("shapes", ["tests/test_shapes.py::test_area"], messages, "pytest -rA tests")
    assert "tests/test_shapes.py::test_area" in text and "assert 7 == 12" in text and "pytest -rA tests" in text
    assert "w + h" not in text and "rect_area" in text        # the behaviour, not the mutated code


def _cwm(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cwm_envs.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_usage_errors_are_one_line(tmp_path, capsys):
    from cwm_envs.cli import main

    assert main(["swe", "mutate", "--repo", str(tmp_path / "nope"), "--tests", "pytest", "--out", "t.jsonl"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such directory" in err
    assert main(["swe", "mutate", "--repo", str(tmp_path), "--out", "t.jsonl"]) == 2
    assert "--tests CMD is required" in capsys.readouterr().err


@pytest.fixture(scope="module")
def shapes_tasks(tmp_path_factory, docker_engine):
    """`cwm swe mutate` on a plain folder (not a git repository) holding the shapes module and its tests."""
    root = tmp_path_factory.mktemp("mut")
    repo = root / "shapes"
    (repo / "tests").mkdir(parents=True)
    (repo / "shapes.py").write_text(SHAPES)
    (repo / "tests" / "test_shapes.py").write_text(SHAPE_TESTS)
    out = root / "tasks.jsonl"
    t = time.perf_counter()
    res = _cwm("swe", "mutate", "--repo", str(repo), "--tests", "python -m pytest -rA tests", "--out", str(out),
               "--max-tasks", "3", "--install")
    assert res.returncode == 0, res.stderr
    assert "3 task(s)" in res.stdout
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    return rows, root / "tasks.repo", time.perf_counter() - t


def test_mutate_writes_swe_rows_with_fail_and_pass_lists(shapes_tasks):
    rows, task_repo, _ = shapes_tasks
    all_tests = {f"tests/test_shapes.py::{n}" for n in ("test_area", "test_negative_side", "test_perimeter", "test_square")}
    assert len(rows) == 3 and len({r["instance_id"] for r in rows}) == 3
    for row in rows:
        f2p, p2p = set(row["FAIL_TO_PASS"]), set(row["PASS_TO_PASS"])
        assert f2p and not (f2p & p2p) and f2p | p2p == all_tests
        assert all(t in row["problem_statement"] for t in f2p)
        assert row["mutation"]["after"] not in row["problem_statement"]
        assert row["test_patch"] == "" and row["repo_path"] == str(task_repo)
        # one orphan commit per task: its history cannot show the original code
        git = ["git", "--git-dir", str(task_repo)]
        log = subprocess.run([*git, "rev-list", row["base_commit"]], capture_output=True, text=True).stdout.split()
        assert log == [row["base_commit"]]
        gold = subprocess.run([*git, "diff", row["base_commit"], "refs/cwm/clean"], capture_output=True, text=True).stdout
        assert gold == row["patch"] and gold.startswith("diff --git a/shapes.py b/shapes.py")
        assert "git checkout" in row["eval_script"] and "tests/test_shapes.py" in row["eval_script"]
        # a dated row: its environment resolves as of when the tasks were made (a plain folder: now), not today
        made = datetime.datetime.fromisoformat(row["created_at"].replace("Z", "+00:00"))
        assert abs(datetime.datetime.now(datetime.timezone.utc) - made) < datetime.timedelta(hours=6)


def test_a_mutate_task_grades_with_the_harness(shapes_tasks, tmp_path):
    from cwm_envs.swe.dataset import load_instances
    from cwm_envs.swe.run import evaluate_instance

    rows, task_repo, _ = shapes_tasks
    inst = load_instances(task_repo.with_name("tasks.jsonl"))[0]
    gold = evaluate_instance(inst, {"model_patch": inst.patch}, repos_dir=None, log_dir=tmp_path / "gold")
    empty = evaluate_instance(inst, {"model_patch": ""}, repos_dir=None, log_dir=tmp_path / "empty")
    assert gold.status == "resolved", gold.error or gold.report
    assert empty.status == "empty_patch"


def test_tests_that_report_nothing_are_a_usage_error(tmp_path, docker_engine):
    from cwm_envs.errors import UsageError
    from cwm_envs.swe.mutate import mutate_repo

    repo = tmp_path / "quiet"
    repo.mkdir()
    (repo / "mod.py").write_text("def f(a, b):\n    return a - b\n")
    with pytest.raises(UsageError, match="reported no passing test"):
        mutate_repo(repo, "python -c 'import mod'", tmp_path / "t.jsonl", install=())
    assert not (tmp_path / "t.jsonl").exists()


def test_default_task_set_is_built_once_and_varied(docker_engine):
    from cwm_envs.swe.dataset import load_instances
    from cwm_envs.swe.mutate import DEFAULT_TASKS, default_task_file

    path = default_task_file()
    t = time.perf_counter()
    assert default_task_file() == path and time.perf_counter() - t < 1.0     # cached
    rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
    assert len(load_instances(path)) == DEFAULT_TASKS == len(rows)
    assert len({r["mutation"]["kind"] for r in rows}) >= 6
    assert len({r["mutation"]["function"] for r in rows}) == DEFAULT_TASKS
