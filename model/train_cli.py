"""`cwm train pretrain|midtrain|sft`: the stages before RL, in CWM's order, registered here where their code is.

Each writes a model directory that the next stage takes with `--from`. On a cluster the same commands run
data-parallel under `torchrun --nproc_per_node N -m cwm_envs.cli train ...` (see model/train_loop.py). The
RL stage, and SFT on another policy's rollouts (`cwm train sft --policy`), are added by agents/cli.py.
"""
from __future__ import annotations

import os

from cwm_envs.cli import group

TRAIN_HELP = "training stages: pretrain, midtrain (traces), sft (oracle trajectories), rl"


def cmd_pretrain(args) -> int:
    """`cwm train pretrain`."""
    from model import pretrain
    from model.train_args import train_args_from

    summary = pretrain.run(train_args_from(args), args.preset, args.corpus, args.tokenizer, args.vocab_size)
    report(summary)
    return 0


def cmd_midtrain(args) -> int:
    """`cwm train midtrain`."""
    from model import midtrain
    from model.train_args import train_args_from

    summary = midtrain.run(train_args_from(args), getattr(args, "from"), args.traces, args.trajectories,
                           args.corpus, args.mix, args.obs_mask_share)
    report(summary)
    return 0


def cmd_sft(args, documents=None) -> int:
    """SFT on the env's oracle episodes, or on `documents` (rows laid out by a caller, e.g. a policy's rollouts)."""
    from model import sft
    from model.train_args import train_args_from

    summary = sft.run(train_args_from(args), getattr(args, "from"), args.env, args.episodes, env_kwargs_of(args),
                      args.eval_episodes, documents=documents)
    report(summary)
    return 0


def env_kwargs_of(args) -> dict:
    """The `--env-kwargs` JSON object of `cwm train sft` ({} when not given)."""
    from model.train_args import json_object

    return json_object(args.env_kwargs, "--env-kwargs") if args.env_kwargs else {}


def report(summary: dict) -> None:
    """One line per finished stage (under torchrun, rank 0 speaks for all)."""
    if os.environ.get("RANK", "0") != "0":
        return
    print(f"{summary['stage']}: {summary['steps']} steps, {summary['tokens']:,} tokens in {summary['elapsed_s']} s, "
          f"loss {summary['final_loss']}, eval loss {summary['final_eval_loss']} -> {summary['args']['out']}")


def register(sub) -> None:
    """Add pretrain, midtrain and sft to `cwm train` (once: agents/cli.py calls it too, to extend sft)."""
    from model.train_args import add_train_args  # light: no torch until a stage runs

    g = group(sub, "train", TRAIN_HELP)
    if "pretrain" in g.choices:
        return
    p = g.add_parser("pretrain", help="causal LM on code and text (default corpus: the Python stdlib and its docs)")
    p.add_argument("--preset", default="cwm-tiny", help="cwm-tiny (default), cwm-micro, cwm-1b or cwm-32b")
    p.add_argument("--corpus", default="default", help="'default' or a directory of text files")
    p.add_argument("--tokenizer", help="tokenizer directory (default: train one on the corpus into OUT/tokenizer)")
    p.add_argument("--vocab-size", type=int, help="BPE size of the trained tokenizer (default: the preset's)")
    add_train_args(p, max_steps=200, batch_size=8, seq_len=512, lr=1e-3)
    p.set_defaults(func=cmd_pretrain)

    p = g.add_parser("midtrain", help="execution traces + agent trajectories + pretrain replay, longer context")
    p.add_argument("--from", required=True, help="model directory of the previous stage")
    p.add_argument("--traces", required=True, help="traces JSONL (`cwm traces build --out traces.jsonl`)")
    p.add_argument("--trajectories", help='agent trajectories JSONL: {"messages": [{"role", "content"}, ...]}')
    p.add_argument("--corpus", default="default", help="pretrain corpus to replay ('default' or a directory)")
    p.add_argument("--mix", help="source weights, e.g. traces=0.6,trajectories=0.2,replay=0.2 (the default)")
    p.add_argument("--obs-mask-share", type=float, default=0.5,
                   help="share of trajectory observations left out of the loss (CWM: 0.5)")
    add_train_args(p, max_steps=200, batch_size=4, seq_len=1024, lr=5e-4, warmup_steps=10)
    p.set_defaults(func=cmd_midtrain)

    p = g.add_parser("sft", help="supervised fine-tuning on oracle trajectories of a registered env")
    p.add_argument("--from", required=True, help="model directory of the previous stage")
    p.add_argument("--env", required=True, help="registered env id, e.g. cwm/Math-v0")
    p.add_argument("--env-kwargs", help='JSON keyword arguments for gymnasium.make, e.g. {"source": "generated"}')
    p.add_argument("--episodes", type=int, default=1000, help="oracle episodes to collect (default 1000)")
    p.add_argument("--eval-episodes", type=int, default=20, help="greedy episodes on unseen seeds after training")
    add_train_args(p, max_steps=100, batch_size=4, seq_len=512, lr=1e-3, warmup_steps=10, eval_rows=8)
    p.set_defaults(func=cmd_sft)
