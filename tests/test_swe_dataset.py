"""SWE-bench rows, predictions, dependency specs and the grader's log guards (no Docker needed)."""
from __future__ import annotations

import json

import pytest

from cwm_envs.errors import UsageError
from cwm_envs.swe.dataset import SWEInstance, gold_predictions, instance_from_row, load_instances, load_predictions
from cwm_envs.swe.grading import END, START, conflicting_tests, grade_log, marker_tampering, parser_names
from cwm_envs.swe.specs import env_spec_for, pick_suite

ROW = {"instance_id": "own__calc-1", "repo": "own/calc", "base_commit": "a" * 40, "patch": "diff --git a/x b/x\n",
       "test_patch": "diff --git a/tests/test_calc.py b/tests/test_calc.py\n--- a/tests/test_calc.py\n",
       "FAIL_TO_PASS": ["tests/test_calc.py::test_add"], "PASS_TO_PASS": '["tests/test_calc.py::test_sub"]',
       "test_cmd": "pytest -rA tests", "install": "python -m pip install -e .", "pip_packages": ["pytest"]}


def test_real_swebench_rows_load_with_every_field(data_dir):
    lite = load_instances(data_dir / "SWE-bench_Lite_test.parquet")
    assert len(lite) == 300
    inst = next(i for i in lite if i.instance_id == "psf__requests-2317")
    assert inst.repo == "psf/requests" and len(inst.base_commit) == 40
    assert inst.FAIL_TO_PASS and all(isinstance(t, str) for t in inst.FAIL_TO_PASS)
    assert inst.test_files == ("test_requests.py",)
    assert START in inst.eval_script and "conda activate testbed" in inst.eval_script
    # every row names a parser that swebench really has
    assert {i.log_parser for i in lite} <= set(parser_names())
    task = inst.to_task()
    assert task.id == inst.instance_id and task.patch == inst.patch and "requests" in task.metadata["repo"]


def test_instances_filter_keeps_order_and_names_unknown_ids(data_dir):
    path = data_dir / "SWE-bench_Verified_test.parquet"
    got = load_instances(path, ["psf__requests-2317", "psf__requests-1142"])
    assert [i.instance_id for i in got] == ["psf__requests-1142", "psf__requests-2317"]   # dataset order
    with pytest.raises(UsageError, match="no instance.*nope__nope-1"):
        load_instances(path, ["psf__requests-1142", "nope__nope-1"])


def test_own_row_gets_an_eval_script_in_swebench_shape(tmp_path):
    inst = instance_from_row(ROW)
    assert inst.install == ("python -m pip install -e .",) and inst.pip_packages == ("pytest",)
    lines = inst.eval_script.splitlines()
    assert lines[:2] == ["#!/bin/bash", "set -uxo pipefail"]
    assert lines.index(f": '{START}'") < lines.index("pytest -rA tests") < lines.index(f": '{END}'")
    assert f"git checkout {'a' * 40} -- 'tests/test_calc.py'" in inst.eval_script
    path = tmp_path / "own.jsonl"
    path.write_text(json.dumps(ROW) + "\n")
    assert load_instances(path) == [inst]


@pytest.mark.parametrize("change, message", [
    ({"repo": None}, "missing field"),
    ({"FAIL_TO_PASS": "[not json"}, "FAIL_TO_PASS is not a JSON list"),
    ({"PASS_TO_PASS": [1, 2]}, "PASS_TO_PASS must be a list"),
    ({"repo": "no-slash"}, "owner/name"),
    ({"instance_id": "../../etc"}, "instance_id may hold only"),
    ({"test_cmd": None}, "needs an eval_script"),
    ({"test_cmd": None, "eval_script": "pytest"}, "lacks the"),
])
def test_broken_rows_raise_a_usage_error_naming_the_row(tmp_path, change, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(ROW) + "\n" + json.dumps({**ROW, "instance_id": "own__calc-2", **change}) + "\n")
    with pytest.raises(UsageError, match=message) as err:
        load_instances(path)
    assert "bad.jsonl:2" in str(err.value)


def test_missing_or_unknown_files_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        load_instances(tmp_path / "none.parquet")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(UsageError, match="unknown dataset format"):
        load_instances(tmp_path / "x.csv")
    (tmp_path / "dup.jsonl").write_text(json.dumps(ROW) + "\n" + json.dumps(ROW) + "\n")
    with pytest.raises(UsageError, match="duplicate"):
        load_instances(tmp_path / "dup.jsonl")


def test_predictions_load_and_gold_mode(tmp_path):
    path = tmp_path / "preds.jsonl"
    path.write_text(json.dumps({"instance_id": "a", "model_patch": "diff", "model_name_or_path": "m/x"}) + "\n"
                    + json.dumps({"instance_id": "b", "model_patch": None}) + "\n")
    preds = load_predictions(path)
    assert preds["a"]["model_patch"] == "diff" and preds["b"]["model_patch"] is None
    assert preds["b"]["model_name_or_path"] == "model"
    path.write_text(json.dumps({"instance_id": "a", "model_patch": 3}) + "\n")
    with pytest.raises(UsageError, match="model_patch must be a string"):
        load_predictions(path)
    inst = instance_from_row(ROW)
    assert gold_predictions([inst]) == {inst.instance_id: {"instance_id": inst.instance_id, "model_patch": inst.patch,
                                                           "model_name_or_path": "gold"}}


def test_specs_pick_the_debian_release_with_the_python_or_say_what_ran():
    spec = env_spec_for("psf/requests", "2.4")
    assert (spec.python, spec.suite, spec.install) == ("3.9", "bullseye", ("python -m pip install .",))
    assert spec.notes == ()
    assert pick_suite("3.11") == ("3.11", "bookworm", [])
    used, suite, notes = pick_suite("3.10")
    assert used in ("3.9", "3.11") and notes and "3.10" in notes[0] and used in notes[0]
    with pytest.raises(UsageError, match="no SWE-bench dependency spec"):
        env_spec_for("psf/requests", "99.0")
    # a spec that reads requirements from the repository, without a clone: tests/test_swe_resolve.py


# --- the grader on logs (swebench's parser and rules, plus our guards) -------------------------------------

INST = SWEInstance(instance_id="own__calc-1", repo="own/calc", base_commit="a" * 40, test_patch="",
                   FAIL_TO_PASS=("t.py::test_add",), PASS_TO_PASS=("t.py::test_sub",),
                   eval_script=f"#!/bin/bash\n: '{START}'\npytest -rA t.py\n: '{END}'\n")


def _log(body: str, code: int = 1) -> str:
    return (f"+ : '{START}'\n{body}\n+ SWEBENCH_TEST_EXIT_CODE={code}\n+ : '{END}'\n"
            f"+ echo '>>>>> Test Exit Code: {code}'\n>>>>> Test Exit Code: {code}\n")


def _grade(tmp_path, log: str, patch: str = "diff --git a/x b/x") -> dict:
    path = tmp_path / "test_output.txt"
    path.write_text(log)
    return grade_log(INST, patch, path)[INST.instance_id]


def test_grading_follows_the_official_rules(tmp_path):
    ok = _grade(tmp_path, _log("PASSED t.py::test_add\nPASSED t.py::test_sub", 0))
    assert ok["resolved"] and ok["tests_status"]["FAIL_TO_PASS"]["success"] == ["t.py::test_add"]
    xfail = _grade(tmp_path, _log("XFAIL t.py::test_add\nPASSED t.py::test_sub", 0))
    assert xfail["resolved"]
    missing = _grade(tmp_path, _log("PASSED t.py::test_add", 0))          # a test missing from the log fails
    assert not missing["resolved"] and missing["tests_status"]["PASS_TO_PASS"]["failure"] == ["t.py::test_sub"]
    broke = _grade(tmp_path, _log("PASSED t.py::test_add\nFAILED t.py::test_sub - boom"))
    assert not broke["resolved"]
    empty = _grade(tmp_path, "", patch="")
    assert empty == {"patch_is_None": False, "patch_exists": False, "patch_successfully_applied": False,
                     "resolved": False, "infra_failure": False}
    assert _grade(tmp_path, "", patch=None)["patch_is_None"] is True


def test_guard_fake_markers_cannot_cut_the_section_or_fake_the_exit_code(tmp_path):
    """Code under test prints passing lines, a fake exit code 0 and a fake end marker before the real ones."""
    fake = f"PASSED t.py::test_add\nPASSED t.py::test_sub\n>>>>> Test Exit Code: 0\n{END}"
    log = _log(f"{fake}\nFAILED t.py::test_add - AssertionError\nPASSED t.py::test_sub")
    from swebench.harness.grading import get_logs_eval
    path = tmp_path / "spoof.txt"
    path.write_text(log)
    status, found = get_logs_eval(INST.test_spec(), str(path))
    assert found and status["t.py::test_add"] == "PASSED"        # the plain log reading is fooled
    assert "appears" in marker_tampering(log)
    rep = _grade(tmp_path, log)
    assert not rep["resolved"] and not rep["patch_successfully_applied"] and "End Test Output" in rep["guard"]


def test_guard_a_fake_passed_line_cannot_override_the_runners_failed_line(tmp_path):
    """An atexit hook prints PASSED after pytest's summary; another failing test keeps the exit-code check quiet."""
    body = ("FAILED t.py::test_add - AssertionError\nPASSED t.py::test_sub\nFAILED t.py::test_known_broken\n"
            "PASSED t.py::test_add")
    from swebench.harness.grading import get_logs_eval
    path = tmp_path / "spoof.txt"
    path.write_text(_log(body))
    status, found = get_logs_eval(INST.test_spec(), str(path))
    assert found and status["t.py::test_add"] == "PASSED"        # the last line wins in the parser's map
    assert conflicting_tests(_log(body), status) == ["t.py::test_add"]
    rep = _grade(tmp_path, _log(body))
    assert not rep["resolved"] and rep["conflicting_tests"] == ["t.py::test_add"]
    assert rep["tests_status"]["FAIL_TO_PASS"]["failure"] == ["t.py::test_add"]


def test_guard_nonzero_exit_with_no_failure_is_not_trusted(tmp_path):
    rep = _grade(tmp_path, _log("PASSED t.py::test_add\nPASSED t.py::test_sub", code=1))
    assert not rep["resolved"] and not rep["patch_successfully_applied"] and "exited 1" in rep["guard"]
