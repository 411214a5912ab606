"""HumanEval through cwm/Code-v0: every canonical solution passes, a wrong one for each fails, and
`cwm bench humaneval` reports unbiased pass@k as JSON and Markdown."""
import json
import subprocess
import sys

import pytest

from agents.policies import make_policy
from benchmarks.report import pass_at_k
from benchmarks.runner import run_samples
from cwm_envs.envs.code_env import CodeEnv
from cwm_envs.sources.code import load_humaneval


@pytest.fixture(scope="module")
def tasks(data_dir):
    return load_humaneval(data_dir / "HumanEval.jsonl.gz")


def _run(tasks, spec, **kw):
    return run_samples("cwm/Code-v0", {"tasks": tasks}, tasks, make_policy(spec), env_threads=2, progress=False, **kw)


def test_all_164_canonical_solutions_pass_and_another_tasks_fails_each(tasks):
    assert len(tasks) == 164
    oracle = _run(tasks, "oracle")
    assert oracle.passed == [1] * 164, [r["error"] or r["evidence"] for r in oracle.records if not r["passed"]][:3]
    wrong = _run(tasks, "wrong")  # another task's canonical solution, checked to fail here
    assert wrong.passed == [0] * 164 and wrong.scored == [1] * 164
    assert all(r["completion"] != CodeEnv(tasks=tasks).reference_response(t) for r, t in zip(wrong.records, tasks))


def test_noisy_policy_scores_exactly_its_correct_samples(tasks):
    subset, samples = tasks[:6], 4
    env = CodeEnv(tasks=subset)    # for its oracle: no sandbox starts until something runs
    run = _run(subset, "noisy:0.5", samples=samples, seed=7)
    by_id = {t.id: t for t in subset}
    assert all(r["passed"] == (r["completion"] == env.reference_response(by_id[r["task_id"]])) for r in run.records)
    assert 0 < sum(run.passed) < len(subset) * samples  # the seed gives a mix, so pass@k is exercised
    assert run.pass_at(1) == pytest.approx(sum(run.passed) / (len(subset) * samples))
    assert run.pass_at(2) == pytest.approx(sum(pass_at_k(samples, c, 2) for c in run.passed) / len(subset))
    assert run.pass_at(1) <= run.pass_at(2) <= run.pass_at(4) and run.pass_at(8) is None


def test_bench_cli_writes_json_and_markdown(tmp_path):
    out = tmp_path / "he"
    proc = subprocess.run([sys.executable, "-m", "cwm_envs.cli", "bench", "humaneval", "--policy", "noisy:0.5",
                           "--samples", "3", "--k", "1,3", "--limit", "5", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    s = report["summary"]
    assert (s["policy"], s["tasks"], s["samples_per_task"], s["baseline_policy"]) == ("noisy:0.5", 5, 3, "wrong")
    assert 0.0 <= s["pass@1"] <= s["pass@3"] <= 1.0 and s["baseline_pass@1"] == 0.0
    assert len(report["details"]["per_task"]) == 5
    md = (out / "report.md").read_text()
    assert "pass@3" in md and "baseline_pass@1" in md
    bad = subprocess.run([sys.executable, "-m", "cwm_envs.cli", "bench", "humaneval", "--samples", "0",
                          "--out", str(tmp_path / "x")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "error" in bad.stderr and "Traceback" not in bad.stderr
