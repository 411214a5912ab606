"""`cwm model ...`: train a tokenizer with CWM's special tokens, describe a preset or a checkpoint, plan the memory
of a sharded run, export a sharded checkpoint."""
from __future__ import annotations

import json
import time
from pathlib import Path

from cwm_envs.cli import group


def cmd_tokenizer(args) -> int:
    from model.tokenizer import build_tokenizer, special_token_ids

    t0 = time.perf_counter()
    tok = build_tokenizer(args.out, args.corpus, args.vocab_size, int(args.max_mb * 1e6))
    ids = special_token_ids(tok)
    print(f"{len(tok)} tokens ({len(tok) - 256} BPE + 256 special) -> {args.out} in {time.perf_counter() - t0:.1f} s")
    for name, i in ids.items():
        print(f"  {i:>7}  {name}")
    return 0


def cmd_info(args) -> int:
    from model.config import PRESETS, describe, load_config, make_config

    target = args.target
    config = make_config(target) if target in PRESETS or not Path(target).exists() else load_config(target)
    info = describe(config)
    if args.json:
        print(json.dumps(info, default=str))
        return 0
    print(f"{target}:")
    for key, value in info.items():
        if key == "parameters":
            value = f"{value:,} ({value / 1e9:.2f} B)" if value > 1e9 else f"{value:,} ({value / 1e6:.2f} M)"
        print(f"  {key:<20} {value}")
    return 0


def cmd_plan(args) -> int:
    from cwm_envs.errors import UsageError
    from model.config import PRESETS, make_config
    from model.plan import Shape, fmt_gib, measure_step, table, tokens_time

    if args.preset not in PRESETS:
        raise UsageError(f"unknown preset {args.preset!r}; choose from {', '.join(PRESETS)}")
    config = make_config(args.preset, **({"vocab_size": args.vocab_size} if args.vocab_size else {}))
    if args.measure:
        if args.preset == "cwm-32b":
            raise UsageError("--measure builds the model for real on the CPU; cwm-32b would take ~0.5 TB: "
                             "measure cwm-tiny or cwm-1b")
        import torch

        torch.set_num_threads(args.threads or torch.get_num_threads())
        result = measure_step(config, args.seq_len, args.micro_batch)
        if args.json:
            print(json.dumps(result, default=float))
            return 0
        print(f"{args.preset} ({result['parameters']:,} parameters), one fp32 AdamW step on the CPU, "
              f"{args.micro_batch} x {args.seq_len} tokens:")
        print(f"  measured peak   {fmt_gib(result['measured_peak'])}  "
              + ", ".join(f"{k} {fmt_gib(v)}" for k, v in result["measured"].items() if v and k != "Total"))
        print(f"  formula         {fmt_gib(result['predicted_peak'])}  (formula / measured {result['ratio']:.3f})")
        return 0
    shape = Shape.of(config)
    kw = dict(seq_len=args.seq_len, micro_batch=args.micro_batch, bf16=args.dtype == "bf16",
              checkpointing=args.activation_checkpointing, shard_group=args.shard_group)
    rows = table(shape, args.gpus, args.gpu_mem, args.headroom, args.host_mem, **kw)
    update_s = None
    if args.tokens_per_update:
        update_s = tokens_time(shape, args.tokens_per_update, args.gpus, args.seq_len, config.sliding_window,
                               args.peak_tflops, args.mfu, args.activation_checkpointing)
    if args.json:
        print(json.dumps({"preset": args.preset, "shape": shape.__dict__, "settings": kw, "gpus": args.gpus,
                          "gpu_mem_gib": args.gpu_mem, "headroom": args.headroom, "rows": rows,
                          "update_s": update_s}, default=float))
        return 0
    print(f"{args.preset}: {shape.parameters:,} parameters ({shape.parameters / 1e9:.2f} B, counted on the meta "
          f"device), {shape.layers} layers of {shape.layer_parameters / 1e9:.3f} B, embedding and LM head "
          f"{shape.head / 1e9:.2f} B each")
    print(f"per rank at {args.gpus} GPUs, {args.micro_batch} x {args.seq_len} tokens per micro-batch, {args.dtype}, "
          f"activation checkpointing {'on' if args.activation_checkpointing else 'off'} (GiB; budget "
          f"{args.gpu_mem * (1 - args.headroom):.0f} of {args.gpu_mem:g}):")
    head = f"  {'strategy':<16}{'weights':>9}{'grads':>9}{'optim':>9}{'activ':>9}{'transient':>10}{'peak':>9}" \
           f"{'host':>9}  {'fits':<5}{'smallest N':>11}"
    print(head)
    for r in rows:
        name = f"hsdp ({args.shard_group}/group)" if r["strategy"] == "hsdp" else r["strategy"]
        cells = [fmt_gib(r[k]) for k in ("weights", "gradients", "optimizer", "activations", "transient", "peak", "host")]
        n = r["smallest_ranks"]
        print(f"  {name:<16}" + "".join(f"{c:>9}" for c in cells[:4]) + f"{cells[4]:>10}{cells[5]:>9}{cells[6]:>9}"
              f"  {'yes' if r['fits'] else 'no':<5}{n if n else 'never':>11}")
    print(f"  (peak = weights + optimizer + max(activations + transient, gradients); host: per rank, offload only, "
          f"budget {args.host_mem:g} GiB)")
    if update_s is not None:
        print(f"learner compute for {args.tokens_per_update:,} tokens on {args.gpus} GPUs at {args.mfu:.0%} of "
              f"{args.peak_tflops:g} TFLOP/s: {update_s:.0f} s (an estimate: 6 FLOPs per parameter per token, "
              f"attention, recompute)")
    return 0


def cmd_export(args) -> int:
    import torch

    from model.sharding import export_checkpoint

    dtype = {"keep": None, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    out = export_checkpoint(args.checkpoint, args.out, dtype=dtype)
    print(f"exported {args.checkpoint} -> {out} (load with from_pretrained, hf:{out})")
    return 0


def register(sub) -> None:
    g = group(sub, "model", "CWM model presets and tokenizer")
    p = g.add_parser("tokenizer", help="train a byte-level BPE with CWM's special tokens on a local corpus")
    p.add_argument("--out", required=True, help="directory for the tokenizer files")
    p.add_argument("--vocab-size", type=int, default=4096, help="BPE entries before the 256 special ids (default 4096)")
    p.add_argument("--corpus", default="default", help="'default' (Python stdlib sources and docs) or a directory")
    p.add_argument("--max-mb", type=float, default=4.0, help="MB of corpus text to learn merges from (default 4)")
    p.set_defaults(func=cmd_tokenizer)
    p = g.add_parser("info", help="architecture and parameter count of a preset or a checkpoint directory")
    p.add_argument("target", nargs="?", default="cwm-32b", help="preset name (cwm-32b, cwm-1b, cwm-tiny, cwm-micro) or a directory")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_info)
    p = g.add_parser("plan", help="per-rank memory of a training run under DDP, FSDP, HSDP and CPU offload; "
                                  "the smallest GPU count that fits")
    p.add_argument("--preset", default="cwm-32b", help="preset (default cwm-32b; counted on the meta device)")
    p.add_argument("--gpus", type=int, default=8, help="ranks to show the per-rank figures for (default 8)")
    p.add_argument("--gpu-mem", type=float, default=80, help="GiB per GPU (default 80)")
    p.add_argument("--headroom", type=float, default=0.1,
                   help="share of GPU memory kept free for the CUDA context and fragmentation (default 0.1)")
    p.add_argument("--host-mem", type=float, default=240,
                   help="GiB of host memory per GPU, for CPU offload (default 240: 2 TB shared by 8 GPUs)")
    p.add_argument("--seq-len", type=int, default=8192, help="tokens per row (default 8192)")
    p.add_argument("--micro-batch", type=int, default=1, help="rows per micro-batch per rank (default 1)")
    p.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16",
                   help="compute precision (bf16: FSDP mixed precision / autocast; master weights stay fp32)")
    p.add_argument("--activation-checkpointing", action="store_true", help="recompute layers in backward")
    p.add_argument("--shard-group", type=int, default=8, help="hsdp: GPUs per shard group (default 8, a node)")
    p.add_argument("--vocab-size", type=int, help="vocabulary size (default: the preset's)")
    p.add_argument("--tokens-per-update", type=int, help="also estimate the learner's compute time per update")
    p.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation for the estimate (default 0.4)")
    p.add_argument("--peak-tflops", type=float, default=989,
                   help="dense bf16 TFLOP/s per GPU for the estimate (default 989, an H100 SXM)")
    p.add_argument("--measure", action="store_true",
                   help="instead: run one fp32 training step of the preset on the CPU and compare its measured "
                        "peak with the formula (cwm-tiny, cwm-1b; use a short --seq-len)")
    p.add_argument("--threads", type=int, help="torch threads for --measure")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_plan)
    p = g.add_parser("export", help="a sharded (DCP) checkpoint as a save_pretrained directory, one layer at a time")
    p.add_argument("checkpoint", help="checkpoint directory (checkpoints/step-N of a --shard fsdp run)")
    p.add_argument("--out", required=True, help="output directory (loads with from_pretrained and hf:)")
    p.add_argument("--dtype", choices=("keep", "bf16", "fp32"), default="keep", help="weights' dtype (default keep)")
    p.set_defaults(func=cmd_export)
