"""HumanEval through cwm/Code-v0: every canonical solution passes, a wrong one for each fails, and
`cwm bench humaneval` reports unbiased pass@k as JSON and Markdown."""
import json
import subprocess
import sys

import pytest

from benchmarks.humaneval_bench import evaluate_policy, respond
from benchmarks.report import mean_pass_at_k
from benchmarks.report import pass_at_k
from cwm_envs.envs.code_env import CodeEnv
from cwm_envs.sources.code import load_humaneval


@pytest.fixture(scope="module")
def tasks(data_dir):
    return load_humaneval(data_dir / "HumanEval.jsonl.gz")


def test_all_164_canonical_solutions_pass_and_a_wrong_one_for_each_fails(tasks):
    assert len(tasks) == 164
    oracle = evaluate_policy(tasks, "oracle", workers=2)
    assert oracle["passed"] == [1] * 164, oracle["failing"]
    wrong = evaluate_policy(tasks, "wrong", workers=2)  # the prompt with `return None` as the body
    assert wrong["passed"] == [0] * 164, [t.id for t, c in zip(tasks, wrong["passed"]) if c]
    assert sum(wrong["statuses"].values()) == 164 and "pass" not in wrong["statuses"]


@pytest.mark.slow
def test_another_tasks_canonical_solution_fails_everywhere(tasks):
    other = evaluate_policy(tasks, "other", workers=2)
    assert other["passed"] == [0] * 164


def test_noisy_policy_scores_exactly_its_correct_samples(tasks):
    subset, samples = tasks[:6], 4
    env = CodeEnv(tasks=subset)    # for its oracle: no sandbox starts until something runs
    result = evaluate_policy(subset, "noisy", samples=samples, seed=7, p_correct=0.5)
    expected = [sum(respond("noisy", env, subset, i, s, 7, 0.5) == env.reference_response(t) for s in range(samples))
                for i, t in enumerate(subset)]
    assert result["passed"] == expected
    assert 0 < sum(expected) < len(subset) * samples  # the seed gives a mix, so pass@k is exercised
    rates = mean_pass_at_k(result["passed"], samples, [1, 2, 4, 8])
    assert set(rates) == {"pass@1", "pass@2", "pass@4"}  # k above the sample count is left out
    assert rates["pass@1"] == pytest.approx(sum(expected) / (len(subset) * samples))
    assert rates["pass@2"] == pytest.approx(sum(pass_at_k(samples, c, 2) for c in expected) / len(subset))
    assert rates["pass@1"] <= rates["pass@2"] <= rates["pass@4"]


def test_bench_cli_writes_json_and_markdown(tmp_path):
    out = tmp_path / "he"
    proc = subprocess.run([sys.executable, "-m", "cwm_envs.cli", "bench", "humaneval", "--policy", "noisy",
                           "--samples", "3", "--k", "1,3", "--limit", "5", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    s = report["summary"]
    assert (s["policy"], s["tasks"], s["samples_per_task"], s["baseline_policy"]) == ("noisy", 5, 3, "wrong")
    assert 0.0 <= s["pass@1"] <= s["pass@3"] <= 1.0 and s["baseline_pass@1"] == 0.0
    assert len(report["details"]["per_task"]) == 5
    md = (out / "report.md").read_text()
    assert "pass@3" in md and "baseline_pass@1" in md
    bad = subprocess.run([sys.executable, "-m", "cwm_envs.cli", "bench", "humaneval", "--samples", "0",
                          "--out", str(tmp_path / "x")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "error" in bad.stderr and "Traceback" not in bad.stderr
