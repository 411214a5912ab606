"""cwm bench math / verifier / math-attacks: the runner through Math-v0's reward path, reports, the demo section."""
from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest

from agents.policies import make_policy
from benchmarks.math_bench import demo_section, evaluate, load_tasks, summarize
from benchmarks.math_verify_bench import make_pairs, rewrites

CWM = [sys.executable, "-m", "cwm_envs.cli"]
ARGS = SimpleNamespace(think=True, timeout_s=5.0, seed=0, workers=2, batch=32)


def test_oracle_scores_every_math500_problem_and_wrong_almost_none(data_dir):
    tasks = load_tasks("math500")
    oracle = evaluate(tasks, make_policy("oracle"), ARGS)
    assert sum(oracle.passed) == 500 and oracle.infra == oracle.errors == 0
    wrong = evaluate(tasks, make_policy("wrong"), ARGS)
    assert sum(wrong.passed) <= 5          # another problem's answer is right only by coincidence
    summary, subjects, levels = summarize(tasks, oracle, [1], 1)
    assert summary["accuracy"] == 1.0 and summary["pass@1"] == 1.0
    assert {row["subject"] for row in subjects} >= {"Algebra", "Geometry", "Precalculus"}
    assert [row["level"] for row in levels] == ["1", "2", "3", "4", "5"]


def test_cli_on_aime24_writes_json_markdown_and_samples(data_dir, tmp_path):
    out = tmp_path / "aime"
    proc = subprocess.run(CWM + ["bench", "math", "--data", "aime24", "--policy", "oracle", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    s = report["summary"]
    assert (s["tasks"], s["solved"], s["accuracy"]) == (30, 30, 1.0)
    assert s["baseline_policy"] == "wrong" and s["baseline_accuracy"] <= 0.1
    assert "| accuracy | 1 |" in (out / "report.md").read_text()
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 30 and all(r["passed"] and r["extracted"] and r["evidence"]["equal"] for r in rows)


def test_pass_at_k_with_several_samples(tmp_path):
    tasks = load_tasks("generated", limit=12)
    res = evaluate(tasks, make_policy("noisy:0.5"), ARGS, samples=4)
    summary, _, _ = summarize(tasks, res, [1, 2, 4], 4)
    assert 0.0 < summary["pass@1"] < 1.0
    assert summary["pass@1"] <= summary["pass@2"] <= summary["pass@4"] <= 1.0
    assert summary["pass@4"] == summary["solved"] / len(tasks)   # with k = n, pass@k is "any sample right"


def test_cli_user_errors_are_one_line(tmp_path):
    for extra in (["--policy", "telepathy"], ["--data", "no-such-benchmark"], ["--policy", "hf:/no/such/dir"]):
        proc = subprocess.run(CWM + ["bench", "math", "--out", str(tmp_path / "x")] + extra,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, extra
        assert len(proc.stderr.strip().splitlines()) == 1


def test_any_object_with_act_is_a_policy():
    from agents.policy import Completion

    class EchoSeven:
        version = 0

        def encode(self, text):
            return list(text.encode())

        def act(self, turns, **_):
            return [Completion(ids=[1], logprobs=[0.0], text="<think>\n</think>\n$\\boxed{7}$", finish="stop")
                    for _ in turns]

    tasks = load_tasks("generated", limit=5)
    res = evaluate(tasks, EchoSeven(), ARGS)
    assert sum(res.passed) == sum(t.answer == "7" for t in tasks) and sum(res.scored) == 5


def test_rewrite_labels_follow_their_rules():
    forms = {form: (answer, label) for form, answer, label in rewrites("\\frac{3}{4}")}
    assert forms["slash"] == ("3/4", 1) and forms["decimal"] == ("0.75", 1)
    assert forms["numerator_plus_one"] == ("\\frac{4}{4}", 0) and forms["negated"] == ("-\\frac{3}{4}", 0)
    forms = {form: (answer, label) for form, answer, label in rewrites("12345")}
    assert forms["thousands"] == ("12,345", 1) and forms["plus_one"] == ("12346", 0)
    assert "reordered" not in dict((f, a) for f, a, _ in rewrites("10,\\!080"))   # a number, not a list


def test_verifier_bench_cli_reports_both_verifiers(data_dir, tmp_path):
    pytest.importorskip("math_verify")
    out = tmp_path / "verifier"
    proc = subprocess.run(CWM + ["bench", "verifier", "--limit", "25", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    s = json.loads((out / "report.json").read_text())["summary"]
    assert s["pairs"] == len(make_pairs(25)) and s["positives"] > 0 and s["negatives"] > 0
    for name in ("ours", "mv"):
        assert s[f"{name}_median_ms"] > 0 and s[f"{name}_p99_ms"] >= s[f"{name}_median_ms"]
    assert s["ours_false_positives"] == 0 and s["ours_accuracy"] == 1.0


def test_math_attacks_bench_cli_reports_no_paid_constant(data_dir, tmp_path):
    out = tmp_path / "attacks"
    proc = subprocess.run(CWM + ["bench", "math-attacks", "--data", "aime24", "--every", "10", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    s = json.loads((out / "report.json").read_text())["summary"]
    assert s["ok"] is True and s["aime24_rows"] == 3 and s["aime24_oracle_paid"] == 1.0
    assert s["aime24_dishonest_payments"] == 0 and s["responses"] > 400
    bad = subprocess.run(CWM + ["bench", "math-attacks", "--data", "mnist", "--out", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr


def test_demo_section_shows_rewards_and_evidence(capsys):
    demo_section(SimpleNamespace(quick=True))
    out = capsys.readouterr().out
    assert "[oracle" in out and "[rewrite] reward +1" in out and "reward -1" in out and "extracted" in out
