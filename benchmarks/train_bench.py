"""`cwm bench train`: training throughput and peak memory of our loop against a plain transformers Trainer.

Both train the same `cwm-tiny` (same seed, so the same initial weights) on the same packed rows of the
default corpus, in the same order, with the same optimizer settings (AdamW 0.9/0.95, wd 0.1, clip 1.0, warmup then cosine to
10%). Each run is a fresh subprocess, so its peak resident memory (ru_maxrss; CUDA: max allocated) is its
own. Throughput is measured between the end of the warm-up steps and the last step, from per-step
timestamps, so start-up, tokenizer training and the final save are not counted. Runs alternate
(ours, Trainer, ours, Trainer, ...) so that load from other processes on the machine hits both alike;
the best round of each is reported, with every round in the details. The Trainer's warmup starts at
lr 0 (its first step does not move the weights), so its loss trails ours by about one step.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WARM_STEPS = 3


def _rows(tokenizer_dir: str, n: int, seq_len: int) -> list:
    from model.pretrain import corpus_rows
    from model.tokenizer import load_tokenizer

    rows = corpus_rows(load_tokenizer(tokenizer_dir), "default", "train", seq_len, seed=0)
    return [next(rows) for _ in range(n)]


def _peak_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _rate(stamps: list[tuple[int, float]], tokens_per_step: int) -> float:
    """Tokens/s between step WARM_STEPS and the last step."""
    (s0, t0), (s1, t1) = stamps[WARM_STEPS - 1], stamps[-1]
    return (s1 - s0) * tokens_per_step / (t1 - t0)


def worker_ours(ns) -> dict:
    import torch
    from transformers import CwmForCausalLM

    from model.config import make_config
    from model.tokenizer import load_tokenizer
    from model.train_args import TrainArgs
    from model.train_loop import train

    tok = load_tokenizer(ns.tokenizer)
    rows = torch.load(ns.data)
    torch.manual_seed(0)
    model = CwmForCausalLM(make_config(ns.preset, vocab_size=len(tok)))
    with tempfile.TemporaryDirectory() as out:
        args = TrainArgs(out=Path(out), max_steps=ns.steps, batch_size=ns.batch_size, seq_len=ns.seq_len,
                         lr=1e-3, warmup_steps=WARM_STEPS, log_every=1, eval_rows=0, save_every=10**9,
                         resume=False)
        summary = train(model, tok, iter(rows), [], args, title="ours")
        lines = [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    stamps = [(r["step"], r["elapsed_s"]) for r in lines if "loss" in r]
    losses = [r["loss"] for r in lines if "loss" in r]
    return {"tokens_per_s": _rate(stamps, ns.batch_size * ns.seq_len), "peak_mb": _peak_mb(),
            "final_loss": summary["final_loss"], "mean_loss": sum(losses) / len(losses)}


def worker_trainer(ns) -> dict:
    import torch
    from transformers import CwmForCausalLM, Trainer, TrainerCallback, TrainingArguments

    from model.config import make_config
    from model.tokenizer import load_tokenizer

    tok = load_tokenizer(ns.tokenizer)
    rows = torch.load(ns.data)
    dataset = [{"input_ids": torch.tensor(ids), "labels": torch.tensor(labels)} for ids, labels in rows]
    torch.manual_seed(0)
    model = CwmForCausalLM(make_config(ns.preset, vocab_size=len(tok)))
    stamps: list[tuple[int, float]] = []
    losses: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            stamps.append((state.global_step, time.perf_counter()))

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(logs["loss"])

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, max_steps=ns.steps, per_device_train_batch_size=ns.batch_size,
            learning_rate=1e-3, weight_decay=0.1, adam_beta1=0.9, adam_beta2=0.95, max_grad_norm=1.0,
            warmup_steps=WARM_STEPS, lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr_rate": 0.1},
            logging_steps=1, save_strategy="no", eval_strategy="no", report_to="none", disable_tqdm=True,
            train_sampling_strategy="sequential",  # the rows in our order, so the two loss curves are comparable
            dataloader_num_workers=0, use_cpu=not torch.cuda.is_available(), seed=0,
            bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        )
        Trainer(model=model, args=args, train_dataset=dataset, callbacks=[Clock()]).train()
    return {"tokens_per_s": _rate(stamps, ns.batch_size * ns.seq_len), "peak_mb": _peak_mb(),
            "final_loss": losses[-1], "mean_loss": sum(losses) / len(losses)}


def _run_worker(kind: str, common: list[str]) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.train_bench", "--worker", kind, *common]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_bench(args) -> int:
    from benchmarks.report import write_report
    from model.config import TOKENIZER_VOCAB
    from model.tokenizer import build_tokenizer

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        import torch

        tok_dir = args.tokenizer or str(Path(tmp) / "tok")
        if not args.tokenizer:
            build_tokenizer(tok_dir, "default", TOKENIZER_VOCAB.get(args.preset, 4096), max_chars=2_000_000)
        rows = _rows(tok_dir, args.steps * args.batch_size, args.seq_len)
        torch.save(rows, Path(tmp) / "rows.pt")
        common = ["--tokenizer", tok_dir, "--data", str(Path(tmp) / "rows.pt"), "--preset", args.preset,
                  "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len)]
        rounds = []
        for r in range(args.rounds):
            for kind in ("ours", "trainer"):
                res = _run_worker(kind, common)
                rounds.append({"round": r, "loop": kind, **{k: round(v, 3) if isinstance(v, float) else v
                                                              for k, v in res.items()}})
                print(f"round {r} {kind:<8} {res['tokens_per_s']:8.0f} tok/s  peak {res['peak_mb']:7.0f} MB  "
                      f"loss {res['final_loss']:.3f} (mean {res['mean_loss']:.3f})")
    best = {k: max((x for x in rounds if x["loop"] == k), key=lambda x: x["tokens_per_s"]) for k in ("ours", "trainer")}
    summary = {
        "model": args.preset, "device": "cuda" if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)",
        "tokens_per_step": args.batch_size * args.seq_len, "steps": args.steps,
        "ours_tokens_per_s": best["ours"]["tokens_per_s"], "trainer_tokens_per_s": best["trainer"]["tokens_per_s"],
        "speedup_vs_trainer": round(best["ours"]["tokens_per_s"] / best["trainer"]["tokens_per_s"], 3),
        "ours_peak_mb": best["ours"]["peak_mb"], "trainer_peak_mb": best["trainer"]["peak_mb"],
        "ours_final_loss": best["ours"]["final_loss"], "trainer_final_loss": best["trainer"]["final_loss"],
        "ours_mean_loss": best["ours"]["mean_loss"], "trainer_mean_loss": best["trainer"]["mean_loss"],
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    write_report(args.out, "Training throughput: our loop vs transformers Trainer", summary,
                 details={"method": __doc__}, tables={"rounds": rounds})
    print(json.dumps(summary, indent=2))
    return 0


def _add_common(p) -> None:
    p.add_argument("--preset", default="cwm-tiny")
    p.add_argument("--steps", type=int, default=30, help="optimizer steps per run (default 30)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=512)


def register(sub) -> None:
    from benchmarks.cli import bench_group

    p = bench_group(sub).add_parser("train", help="training tokens/s and peak memory: our loop vs transformers Trainer")
    p.add_argument("--out", required=True, help="report directory")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds of both loops (default 2)")
    p.add_argument("--tokenizer", help="tokenizer directory (default: train one on the default corpus)")
    _add_common(p)
    p.set_defaults(func=run_bench)


def demo_section(args) -> str:
    """CWM model: presets, the tokenizer with CWM's special tokens, a few pretrain steps of cwm-tiny"""
    from transformers import CwmForCausalLM

    from cwm_envs.chat import format_chat
    from model.config import describe, make_config
    from model.corpus import sample_text
    from model.pretrain import corpus_rows
    from model.tokenizer import special_token_ids, train_tokenizer
    from model.train_args import TrainArgs
    from model.train_loop import train

    for preset in ("cwm-32b", "cwm-tiny"):
        info = describe(make_config(preset))
        print(f"{preset}: {info['parameters'] / 1e6:,.1f} M parameters, {info['layers']} layers "
              f"({info['local/global layers']} local/global), heads {info['heads']}, context {info['context']}")
    t0 = time.perf_counter()
    tok = train_tokenizer(sample_text("default", 300_000 if args.quick else 2_000_000), vocab_size=4096)
    ids = special_token_ids(tok)
    print(f"tokenizer: {len(tok)} tokens trained on the Python stdlib in {time.perf_counter() - t0:.1f} s; "
          f"<|eot_id|>={ids['<|eot_id|>']}, <|frame_sep|>={ids['<|frame_sep|>']} (CWM: 128009, 128100)")
    chat = format_chat([{"role": "user", "content": "What is 2+3?"}])
    print(f"chat prompt {chat!r}\n  -> {len(tok.encode(chat, add_special_tokens=False))} tokens")
    steps, seq = (4, 128) if args.quick else (30, 256)
    with tempfile.TemporaryDirectory() as out:
        model = CwmForCausalLM(make_config("cwm-tiny", vocab_size=len(tok)))
        rows = corpus_rows(tok, "default", "train", seq, seed=0)
        evals = [next(corpus_rows(tok, "default", "eval", seq, seed=0)) for _ in range(4)]
        summary = train(model, tok, rows, evals, TrainArgs(out=Path(out), max_steps=steps, batch_size=8, seq_len=seq,
                        warmup_steps=max(1, steps // 5), log_every=max(1, steps // 5), eval_every=steps,
                        eval_rows=4, save_every=steps, resume=False), title="pretrain")
        losses = [json.loads(x)["loss"] for x in (Path(out) / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    print(f"pretrain cwm-tiny: {steps} steps x {8 * seq} tokens in {summary['elapsed_s']} s, loss "
          + " -> ".join(f"{x:.2f}" for x in losses) + f"; eval loss {summary['final_eval_loss']:.2f}")
    print("full stages: cwm train pretrain | midtrain --traces | sft --env (see `cwm train --help`)")
    return f"cwm-tiny pretrain: loss {losses[0]:.2f} -> {losses[-1]:.2f} in {steps} steps"


if __name__ == "__main__":  # a worker: one training run, one JSON line on stdout
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", choices=["ours", "trainer"], required=True)
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--data", required=True)
    _add_common(parser)
    ns = parser.parse_args()
    result = (worker_ours if ns.worker == "ours" else worker_trainer)(ns)
    print(json.dumps(result))
