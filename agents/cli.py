"""`cwm train ...`: the training stages, in CWM's order: pretrain -> midtrain -> sft -> rl.

pretrain, midtrain and sft live in model/ (this module only parses flags); each writes a model directory
that the next stage takes with `--from`. On a cluster the same commands run data-parallel under
`torchrun --nproc_per_node N -m cwm_envs.cli train ...` (see model/train_loop.py).
"""
from __future__ import annotations

import os

from cwm_envs.cli import group

TRAIN_HELP = "training stages: pretrain, midtrain (traces), sft (oracle trajectories), rl"


def cmd_pretrain(args) -> int:
    from model import pretrain
    from model.train_args import train_args_from

    summary = pretrain.run(train_args_from(args), args.preset, args.corpus, args.tokenizer, args.vocab_size)
    _report(summary)
    return 0


def cmd_midtrain(args) -> int:
    from model import midtrain
    from model.train_args import train_args_from

    summary = midtrain.run(train_args_from(args), getattr(args, "from"), args.traces, args.trajectories,
                           args.corpus, args.mix, args.obs_mask_share)
    _report(summary)
    return 0


def cmd_sft(args) -> int:
    from model import sft
    from model.train_args import json_object, train_args_from

    env_kwargs = json_object(args.env_kwargs, "--env-kwargs") if args.env_kwargs else {}
    documents = None
    if args.policy != "oracle":  # demonstrations from another policy's rewarded rollouts (rejection sampling)
        import functools

        from agents.policies import Sampling, make_policy, parse_spec
        from agents.rollout import EnvSpec, rollout_documents

        parse_spec(args.policy)
        sampling = Sampling(temperature=args.temperature, max_tokens=args.max_new_tokens, seed=args.seed)
        documents = rollout_documents([EnvSpec(args.env, kwargs=env_kwargs)],
                                      lambda tok: make_policy(args.policy, sampling, tokenizer=tok),
                                      max_turns=args.max_turns)
    summary = sft.run(train_args_from(args), getattr(args, "from"), args.env, args.episodes, env_kwargs,
                      args.eval_episodes, documents=documents)
    _report(summary)
    return 0


def _report(summary: dict) -> None:
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 speaks for all
        return
    print(f"{summary['stage']}: {summary['steps']} steps, {summary['tokens']:,} tokens in {summary['elapsed_s']} s, "
          f"loss {summary['final_loss']}, eval loss {summary['final_eval_loss']} -> {summary['args']['out']}")


def register(sub) -> None:
    from model.train_args import add_train_args  # light: no torch until a stage runs

    g = group(sub, "train", TRAIN_HELP)

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
    p.add_argument("--policy", default="oracle",
                   help="who demonstrates: oracle (the env's own, default), or any policy spec (hf:DIR, openai:URL, "
                        "noisy:P, ...): its rewarded episodes, laid out as RL lays them out (rejection sampling)")
    p.add_argument("--temperature", type=float, default=1.0, help="--policy hf:/openai: sampling temperature")
    p.add_argument("--max-new-tokens", type=int, default=256, help="--policy hf:/openai: tokens per turn")
    p.add_argument("--max-turns", type=int, help="--policy: turns per episode (default: the env's own limit)")
    add_train_args(p, max_steps=100, batch_size=4, seq_len=512, lr=1e-3, warmup_steps=10, eval_rows=8)
    p.set_defaults(func=cmd_sft)

    # --- the RL stage (`cwm train rl`) registers here, below this line -----------------------------------
    from agents.train_rl import add_parser as add_rl_parser

    add_rl_parser(g)
