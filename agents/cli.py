"""`cwm train rl`, and `cwm train sft --policy SPEC` (demonstrations from a policy's rewarded rollouts).

pretrain, midtrain and sft are registered by model/train_cli.py, where their code is; this module adds what
needs rollouts: the RL stage, and the `--policy` options of sft.
"""
from __future__ import annotations

from cwm_envs.cli import group
from model import train_cli


def cmd_sft(args) -> int:
    """`cwm train sft`: the oracle's episodes, or (`--policy`) another policy's rewarded rollouts."""
    documents = None
    if args.policy != "oracle":  # rejection sampling: the policy's episodes that were paid
        from agents.policies import Sampling, make_policy, parse_spec
        from agents.rollout import EnvSpec, rollout_documents

        parse_spec(args.policy)
        sampling = Sampling(temperature=args.temperature, max_tokens=args.max_new_tokens, seed=args.seed)
        documents = rollout_documents([EnvSpec(args.env, kwargs=train_cli.env_kwargs_of(args))],
                                      lambda tok: make_policy(args.policy, sampling, tokenizer=tok),
                                      max_turns=args.max_turns)
    return train_cli.cmd_sft(args, documents)


def register(sub) -> None:
    """Extend `cwm train sft` with `--policy`, and add `cwm train rl`."""
    from agents.train_rl import add_parser as add_rl_parser

    train_cli.register(sub)  # the model's stages first (a no-op when its entry point already ran)
    g = group(sub, "train", train_cli.TRAIN_HELP)
    p = g.choices["sft"]
    p.add_argument("--policy", default="oracle",
                   help="who demonstrates: oracle (the env's own, default), or any policy spec (hf:DIR, openai:URL, "
                        "noisy:P, ...): its rewarded episodes, laid out as RL lays them out (rejection sampling)")
    p.add_argument("--temperature", type=float, default=1.0, help="--policy hf:/openai: sampling temperature")
    p.add_argument("--max-new-tokens", type=int, default=256, help="--policy hf:/openai: tokens per turn")
    p.add_argument("--max-turns", type=int, help="--policy: turns per episode (default: the env's own limit)")
    p.set_defaults(func=cmd_sft)
    add_rl_parser(g)
