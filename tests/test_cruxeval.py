"""CRUXEval: the loader, the tracer on all 800 rows, and `cwm bench cruxeval` (oracle 100%, baselines low)."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import cruxeval_bench, trace_bench
from cwm_envs.sources.code import load_cruxeval
from cwm_envs.tracing.corpus import build_corpus, iter_jobs

ROOT = Path(__file__).resolve().parent.parent


def test_loader_gives_800_rows_with_code_input_output(data_dir):
    tasks = load_cruxeval()
    assert len(tasks) == 800 and len({t.id for t in tasks}) == 800
    first = tasks[0]
    assert first.id == "sample_0" and first.metadata["input"] == "[1, 1, 3, 1, 3, 1]"
    assert first.answer == first.metadata["output"] and first.metadata["code"].startswith("def f(nums):")


def test_all_800_traced_return_values_equal_the_dataset_outputs(data_dir, tmp_path):
    out = tmp_path / "crux.jsonl"
    stats = build_corpus(iter_jobs("cruxeval"), out, workers=2, progress=False)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    outputs = {t.id: t.metadata["output"] for t in load_cruxeval()}
    assert stats.statuses == {"ok": 800} and stats.expect_mismatch == []
    assert sum(r["expect_equal"] for r in rows) == 800
    # Stronger than equality: the repr the tracer saw returned is the dataset's output text, byte for byte.
    assert [r["id"] for r in rows if r["returned"] != outputs[r["id"]]] == []
    assert all(r["trace"].endswith("<|end_of_text|>") for r in rows)


def _args(tmp_path, **kw):
    base = dict(out=str(tmp_path / "report"), mode="output", policy="oracle", samples=1, k="1", baseline="wrong",
                workers=2, timeout_s=5.0, limit=40, data=None, seed=0, model=None, temperature=1.0, top_p=1.0,
                max_tokens=64, concurrency=2, request_timeout=30.0, retries=1, tokenizer=None, batch=16)
    return argparse.Namespace(**{**base, **kw})


@pytest.mark.parametrize("mode", ["output", "input"])
def test_oracle_scores_100_and_the_baseline_does_not(data_dir, tmp_path, mode):
    assert cruxeval_bench.run_bench(_args(tmp_path, mode=mode)) == 0
    summary = json.loads((tmp_path / "report" / "report.json").read_text())["summary"]
    assert summary["pass@1"] == 1.0 and summary["tasks"] == 40
    assert summary["baseline_policy"] == "wrong" and summary["baseline_pass@1"] < 0.2


def test_pass_at_k_of_a_noisy_policy(data_dir, tmp_path):
    cruxeval_bench.run_bench(_args(tmp_path, policy="noisy:0.5", samples=4, k="1,2,4", baseline="empty", limit=20))
    s = json.loads((tmp_path / "report" / "report.json").read_text())["summary"]
    assert 0.2 < s["pass@1"] < 0.8 and s["pass@1"] <= s["pass@2"] <= s["pass@4"] <= 1.0
    assert s["baseline_pass@1"] == 0.0


def test_cli_cruxeval_tracer_policy(data_dir, tmp_path):
    out = tmp_path / "r"
    done = subprocess.run([sys.executable, "-m", "cwm_envs.cli", "bench", "cruxeval", "--mode", "output",
                           "--policy", "tracer", "--limit", "30", "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    s = json.loads((out / "report.json").read_text())["summary"]
    assert s["pass@1"] == 1.0 and s["tracer_return_equals_output"] == 30 and s["tracer_repr_identical"] == 30
    assert (out / "report.md").read_text().startswith("# CRUXEval-O")


def test_tracer_bench_measures_throughput_and_slowdown(data_dir, tmp_path):
    trace_bench.run_bench(argparse.Namespace(out=str(tmp_path), source="cruxeval", limit=15, repeats=5,
                                             batch=8, timeout_s=10.0))
    s = json.loads((tmp_path / "report.json").read_text())["summary"]
    assert s["functions"] == 15 and s["events"] > 15 and s["events_per_s"] > 0
    assert s["slowdown"] > 1 and s["baseline_untraced_s"] > 0 and s["hash_seed_fixed"]
    assert s["batched_traces_per_s"] > 0 and s["statuses"] == {"ok": 15}
