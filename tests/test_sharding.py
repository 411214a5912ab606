"""Sharded training for real: two CPU processes on gloo run FSDP2 over cwm-tiny and must agree with the
unsharded loop on the same rows (loss at every step, weights after N steps); their DCP checkpoint resumes in
one process; the export loads with transformers and gives the sharded model's logits; and the weights
stream unit by unit into a server-side model."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from model.config import build_model, load_model
from model.tokenizer import load_tokenizer, train_tokenizer
from model.train_args import TrainArgs
from model.train_loop import open_model, resume_point, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WORKER = Path(__file__).with_name("sharded_worker.py")
ROOT = Path(__file__).resolve().parents[1]
STEPS, MORE = 3, 5  # the two-process run stops at STEPS; the one-process resume goes on to MORE
COMMON = dict(seq_len=32, lr=3e-3, warmup_steps=2, log_every=1, save_every=STEPS, eval_rows=0, eval_every=10**6)
PROBE = [5, 17, 99, 3, 250, 42, 8, 300]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(world: int, spec: dict, logs: Path, timeout: float = 300) -> None:
    """Start `world` worker processes as torchrun would; fail (and kill them all) past `timeout`."""
    port = free_port()
    procs = []
    logs.mkdir(parents=True, exist_ok=True)
    try:
        for rank in range(world):
            env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                   "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                   "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
            with open(logs / f"rank{rank}.log", "w") as log:
                procs.append(subprocess.Popen([sys.executable, str(WORKER), json.dumps(spec)], env=env, stdout=log,
                                              stderr=subprocess.STDOUT, start_new_session=True))
        deadline = time.monotonic() + timeout
        for p in procs:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, 9)
                p.wait()
    for rank, p in enumerate(procs):
        assert p.returncode == 0, f"rank {rank} failed:\n" + (logs / f"rank{rank}.log").read_text()[-3000:]


def losses(out: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def assert_same_weights(a, b, atol=1e-4):
    """Equal up to float summation order: two ranks reduce in another order than one process, and Adam's
    division by sqrt(v) lifts that rounding to ~1e-5 in 5 steps of lr 3e-3 (a lost optimizer state or a
    missing gradient average moves weights by ~lr)."""
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    worst = max((sa[k] - sb[k]).abs().max().item() for k in sa)
    assert worst < atol, f"weights differ by up to {worst}"


def prepare(root: Path) -> None:
    """Initial weights and tokenizer (root/init), packed rows (root/rows.json) and the unsharded reference
    run (root/ref: one process, MORE steps of global batch 4, a checkpoint at STEPS)."""
    tok = train_tokenizer(["def f(x):\n    return x + 1\n", "print('hello world')"] * 8, vocab_size=300)
    torch.manual_seed(0)
    build_model("cwm-tiny", vocab_size=len(tok)).save_pretrained(root / "init")
    tok.save_pretrained(root / "init")
    g = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(MORE * 4):
        ids = torch.randint(0, len(tok), (COMMON["seq_len"],), generator=g)
        labels = torch.where(torch.rand(ids.shape, generator=g) < 0.3, -100, ids)  # uneven label counts per row
        rows.append((ids.tolist(), labels.tolist()))
    (root / "rows.json").write_text(json.dumps(rows))
    ref = TrainArgs(out=root / "ref", max_steps=MORE, batch_size=4, **COMMON)
    train(load_model(root / "init"), tok, iter(rows), [], ref, title="unsharded")


def run_sharded(root: Path, name: str, world: int = 2, **settings) -> Path:
    """STEPS steps of batch 2 per rank on `world` processes, from root/init on root/rows.json, into root/name."""
    spec = {"init": str(root / "init"), "rows": str(root / "rows.json"), "out": str(root / name),
            "args": dict(max_steps=STEPS, batch_size=2, **COMMON)}
    spec["args"].update(settings.pop("args", {}))
    spec.update(settings)
    run_ranks(world, spec, root / f"logs-{name}")
    return root / name


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The reference and a two-process FSDP2 run that also probes, streams and measures."""
    root = tmp_path_factory.mktemp("sharding")
    prepare(root)
    run_sharded(root, "fsdp", probe=PROBE, stream=True, measure=[128, 4], args={"shard": "fsdp"})
    return root


def test_two_sharded_processes_match_the_unsharded_loop(runs):
    ref, fsdp = losses(runs / "ref"), losses(runs / "fsdp")
    assert sorted(fsdp) == list(range(1, STEPS + 1))
    assert fsdp == pytest.approx({s: ref[s] for s in fsdp}, abs=1e-4)
    stage = json.loads((runs / "fsdp" / "stage.json").read_text())
    assert stage["world_size"] == 2 and stage["args"]["shard"] == "fsdp"
    ckpt = runs / "fsdp" / "checkpoints" / f"step-{STEPS:06d}"
    assert sorted(p.name for p in (ckpt / "dcp").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert not list(ckpt.glob("*.safetensors"))  # no rank wrote a whole copy
    assert_same_weights(load_model(runs / "fsdp"), load_model(runs / "ref" / "checkpoints" / f"step-{STEPS:06d}"))


def test_export_loads_with_transformers_and_gives_the_sharded_logits(runs):
    from transformers import AutoModelForCausalLM

    sharded_logits = torch.load(runs / "fsdp" / "probe_logits.pt")
    for model in (AutoModelForCausalLM.from_pretrained(runs / "fsdp"), load_model(runs / "fsdp")):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([PROBE])).logits
        assert torch.allclose(logits, sharded_logits, atol=1e-5)
    assert load_tokenizer(runs / "fsdp").encode("print('hello')") == load_tokenizer(runs / "init").encode("print('hello')")


def test_weights_stream_one_unit_at_a_time_into_a_server_model(runs):
    exported = load_model(runs / "fsdp").state_dict()
    received = torch.load(runs / "fsdp" / "received.pt")
    assert received.keys() == exported.keys()
    assert all(torch.equal(received[k], exported[k]) for k in exported)
    stream = json.loads((runs / "fsdp" / "stream.json").read_text())
    layers = load_model(runs / "fsdp").config.num_hidden_layers
    # embedding, each layer, final norm, head: one shard each, together the model once, none near all of it
    assert stream["version"] == 1 and len(stream["shards"]) == layers + 3
    assert sum(stream["shards"]) == stream["total"] and max(stream["shards"]) < stream["total"] / 2


def test_plan_formula_is_within_ten_percent_of_a_measured_sharded_rank(runs):
    """model/plan.py's FSDP figure against torch's MemTracker on one of the two ranks (per-rank peak)."""
    result = json.loads((runs / "fsdp" / "measure.json").read_text())
    assert result["strategy"] == "fsdp" and result["ranks"] == 2
    assert 0.9 < result["ratio"] < 1.1, result
    assert result["measured"]["Optstate"] == pytest.approx(8 * result["parameters"] / 2, rel=0.01)  # half of 8P


def test_sharded_checkpoint_resumes_on_one_process_as_if_never_stopped(runs, tmp_path):
    out = tmp_path / "resumed"
    shutil.copytree(runs / "fsdp" / "checkpoints", out / "checkpoints")
    shutil.copy(runs / "fsdp" / "metrics.jsonl", out / "metrics.jsonl")
    rows = [tuple(r) for r in json.loads((runs / "rows.json").read_text())]
    args = TrainArgs(out=out, max_steps=MORE, batch_size=4, shard="fsdp", **COMMON)
    ckpt = resume_point(out)
    model = open_model(ckpt, args)
    assert next(model.parameters()).is_meta  # nothing is loaded whole: the loop reads the slices
    summary = train(model, load_tokenizer(ckpt), iter(rows), [], args, resume_from=ckpt, title="resumed")
    assert summary["world_size"] == 1 and summary["steps"] == MORE
    ref = losses(runs / "ref")
    assert losses(out) == pytest.approx(ref, abs=1e-4)
    assert_same_weights(load_model(out), load_model(runs / "ref"))
    assert not torch.distributed.is_initialized()  # the one-rank group it made for itself is gone


@pytest.mark.slow
def test_hybrid_shard_with_checkpointing_and_offload_matches_too(runs):
    """HSDP (2 replicas of a 1-rank shard group), activation checkpointing and CPU offload change where
    tensors live and when they are computed, not the arithmetic."""
    out = run_sharded(runs, "hsdp", args={"shard": "hsdp", "shard_group": 1, "activation_checkpointing": True,
                                          "cpu_offload": True})
    assert losses(out) == pytest.approx({s: v for s, v in losses(runs / "ref").items() if s <= STEPS}, abs=1e-4)
    assert_same_weights(load_model(out), load_model(runs / "ref" / "checkpoints" / f"step-{STEPS:06d}"))


def test_bf16_mixed_precision_keeps_fp32_master_weights(runs, tmp_path):
    """--dtype bf16 under FSDP: bf16 compute (losses near the fp32 run's, not equal), fp32 weights saved."""
    rows = [tuple(r) for r in json.loads((runs / "rows.json").read_text())]
    args = TrainArgs(out=tmp_path / "bf16", max_steps=2, batch_size=4, shard="fsdp", dtype="bf16", **COMMON)
    summary = train(open_model(runs / "init", args), load_tokenizer(runs / "init"), iter(rows), [], args)
    assert summary["precision"] == "bf16"
    bf16, fp32 = losses(tmp_path / "bf16"), losses(runs / "ref")
    assert all(bf16[s] == pytest.approx(fp32[s], rel=0.02) for s in bf16)
    assert any(bf16[s] != fp32[s] for s in bf16)  # it did compute in bf16
    model = load_model(tmp_path / "bf16")
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_cli_pretrain_sharded_resumes_from_its_dcp_checkpoint(tmp_path, capsys):
    """`cwm train pretrain --shard fsdp` in one process: the flags reach the loop, the checkpoint is a DCP
    directory, and a rerun with a larger budget resumes from it (pretrain.run opens it empty, the loop fills it)."""
    from cwm_envs.cli import main
    from model.corpus import stdlib_dir

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name in ("bisect.py", "colorsys.py"):
        shutil.copy(stdlib_dir() / name, corpus / name)
    out = tmp_path / "pre"
    base = ["train", "pretrain", "--preset", "cwm-micro", "--corpus", str(corpus), "--vocab-size", "300",
            "--out", str(out), "--shard", "fsdp", "--activation-checkpointing", "--batch-size", "2", "--seq-len",
            "64", "--eval-rows", "1", "--eval-every", "100", "--save-every", "100", "--warmup-steps", "1"]
    assert main(base + ["--max-steps", "2"]) == 0
    assert (out / "checkpoints" / "step-000002" / "dcp" / ".metadata").is_file()
    assert main(base + ["--max-steps", "3"]) == 0
    stage = json.loads((out / "stage.json").read_text())
    assert stage["steps"] == 3 and stage["resumed_from"].endswith("step-000002")
    assert stage["args"]["shard"] == "fsdp" and stage["args"]["activation_checkpointing"] is True
    assert load_model(out).config.vocab_size == len(load_tokenizer(out))
    assert "resuming from" in capsys.readouterr().out


def test_wrong_checkpoint_or_strategy_is_a_clear_error_and_leaves_no_process_group(runs, tmp_path, capsys):
    from cwm_envs.cli import main
    from cwm_envs.errors import UsageError

    plain = runs / "ref" / "checkpoints" / f"step-{STEPS:06d}"  # written by the unsharded loop
    args = TrainArgs(out=tmp_path / "x", max_steps=MORE, batch_size=4, shard="fsdp", **COMMON)
    with pytest.raises(UsageError, match="unsharded run"):
        train(open_model(plain, args), load_tokenizer(plain), iter([]), [], args, resume_from=plain)
    assert not torch.distributed.is_initialized()
    assert main(["model", "export", str(plain), "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert "not a sharded checkpoint" in err and len(err.strip().splitlines()) == 1
