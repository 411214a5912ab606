"""`cwm bench swebench --agent SPEC`: episodes of cwm/SWE-v0 on the embedded tasks, SWE-bench predictions and
trajectories, then the harness's grading in the same run; a rerun with the same --out resumes."""
import argparse
import json

import pytest
import torch

pytestmark = pytest.mark.docker


def _args(out, agent, **kw):
    base = dict(out=str(out), dataset=None, repos=None, instances=None, predictions=None, gold=False, agent=agent,
                model=None, samples=1, temperature=0.0, top_p=1.0, max_tokens=16, seed=0, concurrency=2,
                request_timeout=60.0, retries=1, tokenizer=None, max_turns=3, context_tokens=131072,
                command_timeout=30.0, episode_timeout=600.0, workers=1, timeout=600.0, run_id="cwm", baseline="none")
    return argparse.Namespace(**{**base, **kw})


def _preds(out):
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


def test_oracle_agent_resolves_and_a_model_agent_gets_graded(docker_engine, tmp_path):
    from benchmarks.swebench_bench import _instances, run_swebench
    from model.config import build_model
    from model.tokenizer import train_tokenizer

    ids = [i.instance_id for i in _instances(_args(tmp_path, "oracle"))[0][:2]]
    assert run_swebench(_args(tmp_path / "oracle", "oracle", instances=ids)) == 0
    s = json.loads((tmp_path / "oracle" / "report.json").read_text())["summary"]
    assert (s["instances"], s["resolved"], s["errors"]) == (2, 2, 0)
    assert [p["instance_id"] for p in _preds(tmp_path / "oracle")] == ids

    ckpt = tmp_path / "tiny"   # random weights: its turns are gibberish, so no patch, but every instance graded
    tok = train_tokenizer(["<tool: bash>\nls\n</tool> user assistant"] * 4, vocab_size=300)
    torch.manual_seed(0)
    build_model("cwm-micro", vocab_size=len(tok), num_hidden_layers=1).save_pretrained(ckpt)
    tok.save_pretrained(ckpt)
    out = tmp_path / "hf"
    assert run_swebench(_args(out, f"hf:{ckpt}", instances=ids, max_turns=2)) == 0
    preds = _preds(out)
    assert sorted(p["instance_id"] for p in preds) == sorted(ids) and all(p["model_name_or_path"] for p in preds)
    s = json.loads((out / "report.json").read_text())["summary"]
    assert s["instances"] == 2 and s["resolved"] == 0 and s["empty_patch"] + s["unresolved"] + s["errors"] == 2
    trajs = [json.loads(line) for line in (out / "trajectories.jsonl").read_text().splitlines()]
    assert len(trajs) == 2 and all(t["turns"] >= 1 for t in trajs)
    assert run_swebench(_args(out, f"hf:{ckpt}", instances=ids, max_turns=2)) == 0   # resumed: nothing re-run
    assert len((out / "trajectories.jsonl").read_text().splitlines()) == 2
