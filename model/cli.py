"""`cwm model ...`: train a tokenizer with CWM's special tokens, describe a preset or a checkpoint."""
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
