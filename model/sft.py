"""Stage 3, supervised fine-tuning on oracle trajectories of any registered env (loss on the agent's tokens).

CWM's post-training starts with SFT before RL; here it gives the RL stage a tiny policy that sometimes
succeeds, so that rewards carry signal.

An episode is laid out exactly as the RL rollout lays it out (token in, token out): the env's observation
text is encoded as is (the env decides the prompt format), the action follows as `encode(action +
<|eot_id|>)`, then the next observation, and so on. Only action tokens carry loss.

The oracle is the env's own (looked up on `env.unwrapped`, as `cwm_envs.envs.base.TextEnv` defines it):
`reference_episode(task)` -> the actions of a whole episode, else `reference_response(task)` -> the one action
of a single-turn episode, where `task` is `env.unwrapped.task` after `reset()`. Every env of the suite has
both; a third-party env adds one of them. Episodes whose final reward is not positive are dropped, so the
oracle is verified by the env's own reward.
"""
from __future__ import annotations

import json
import os
import random
from pathlib import Path

import torch

from cwm_envs.chat import EOT
from cwm_envs.errors import UsageError
from model.tokenizer import load_tokenizer
from model.train_args import TrainArgs
from model.train_loop import endless, open_model, pack, resume_point, train


def oracle_actions(env) -> list[str]:
    """The env's oracle for the episode just reset: `reference_episode(task)`, else `[reference_response(task)]`."""
    inner = env.unwrapped
    task = getattr(inner, "task", None)
    if callable(getattr(inner, "reference_episode", None)):
        return list(inner.reference_episode(task))
    if callable(getattr(inner, "reference_response", None)):
        return [inner.reference_response(task)]
    raise UsageError(f"{env.spec.id if env.spec else type(inner).__name__} offers no oracle: it needs "
                     "`reference_response(task)` or `reference_episode(task)` on env.unwrapped "
                     "(see cwm_envs.envs.base.TextEnv)")


def make_env(env_id: str, env_kwargs: dict | None = None):
    """The env for `env_id`, with a usage error (not a traceback) for an id Gymnasium does not know."""
    import gymnasium

    import cwm_envs  # noqa: F401  (registers the cwm/ ids)

    try:
        return gymnasium.make(env_id, **(env_kwargs or {}))
    except gymnasium.error.Error as exc:
        raise UsageError(f"cannot make env {env_id!r}: {exc}") from None


def collect_episodes(env_id: str, episodes: int, seed: int = 0, env_kwargs: dict | None = None,
                     max_turns: int = 16) -> tuple[list[list[tuple[str, str]]], dict]:
    """Run the oracle for `episodes` episodes (reset seeds seed, seed+1, ...); keep the rewarded ones.

    Returns the kept episodes as [(observation, action), ...] and counts.
    """
    env = make_env(env_id, env_kwargs)
    kept, rewards = [], []
    try:
        for i in range(episodes):
            obs, _info = env.reset(seed=seed + i)
            turns, total = [], 0.0
            for action in oracle_actions(env)[:max_turns]:
                turns.append((obs, action))
                obs, reward, terminated, truncated, _info = env.step(action)
                total += float(reward)
                if terminated or truncated:
                    break
            rewards.append(total)
            if total > 0:
                kept.append(turns)
    finally:
        env.close()
    return kept, {"episodes": episodes, "kept": len(kept), "mean_oracle_reward": sum(rewards) / max(1, len(rewards))}


def episode_document(tokenizer, turns: list[tuple[str, str]]) -> tuple[list[int], list[int]]:
    """(ids, loss mask) of one episode, laid out as the RL rollout does; loss on action tokens only."""
    ids, mask = [], []
    for obs, action in turns:
        o = tokenizer.encode(obs, add_special_tokens=False)
        a = tokenizer.encode(action + EOT, add_special_tokens=False)
        ids += o + a
        mask += [0] * len(o) + [1] * len(a)
    return ids, mask


@torch.no_grad()
def evaluate(model, tokenizer, env_id: str, episodes: int, seed: int, env_kwargs: dict | None = None,
             max_new_tokens: int = 48, max_turns: int = 16) -> dict:
    """Greedy episodes of the model in the env: success rate (final reward > 0) and mean reward."""
    env = make_env(env_id, env_kwargs)
    stop = [tokenizer.convert_tokens_to_ids(EOT), tokenizer.eos_token_id]
    model.eval()
    rewards, samples = [], []
    try:
        for i in range(episodes):
            obs, _ = env.reset(seed=seed + i)
            context, total = [], 0.0
            for _ in range(max_turns):
                context += tokenizer.encode(obs, add_special_tokens=False)
                inp = torch.tensor([context[-(model.config.max_position_embeddings - max_new_tokens):]],
                                   device=model.device)
                gen = model.generate(inp, attention_mask=torch.ones_like(inp), max_new_tokens=max_new_tokens,
                                     do_sample=False, eos_token_id=stop, pad_token_id=tokenizer.pad_token_id)
                new = gen[0, inp.shape[1]:].tolist()
                context += new
                action = tokenizer.decode(new, skip_special_tokens=False).removesuffix(EOT)
                obs, reward, terminated, truncated, _ = env.step(action)
                total += float(reward)
                if terminated or truncated:
                    break
            rewards.append(total)
            if len(samples) < 3:
                samples.append(action)
    finally:
        env.close()
    return {"episodes": episodes, "success_rate": sum(r > 0 for r in rewards) / max(1, episodes),
            "mean_reward": sum(rewards) / max(1, episodes), "samples": samples}


def oracle_documents(env_id: str, env_kwargs: dict | None = None):
    """The default SFT rows: `(tokenizer, episodes, seed) -> ([(ids, loss mask)], counts)` of the env's rewarded
    oracle episodes."""
    def documents(tokenizer, episodes: int, seed: int):
        kept, counts = collect_episodes(env_id, episodes, seed=seed, env_kwargs=env_kwargs)
        return [episode_document(tokenizer, t) for t in kept], counts
    return documents


def run(args: TrainArgs, parent: str, env_id: str, episodes: int = 1000, env_kwargs: dict | None = None,
        eval_episodes: int = 20, documents=None) -> dict:
    """SFT on `documents(tokenizer, episodes, seed) -> ([(ids, loss mask)], counts)` (default: the env's oracle,
    `oracle_documents`; `cwm train sft --policy` passes a policy's rewarded rollouts, laid out the same way)."""
    out = Path(args.out)
    source = "oracle" if documents is None else "policy"
    documents = documents or oracle_documents(env_id, env_kwargs)
    ckpt = resume_point(out) if args.resume else None
    tokenizer = load_tokenizer(ckpt or parent)
    model = open_model(ckpt or parent, args)
    docs, counts = documents(tokenizer, episodes, args.seed)
    if not docs:
        raise UsageError(f"no episode of {episodes} in {env_id} was rewarded: nothing to learn from")
    print(f"{source}: {counts['kept']}/{episodes} episodes rewarded")
    too_long = sum(len(d[0]) > model.config.max_position_embeddings for d in docs)

    def epoch_docs(epoch: int):
        order = list(range(len(docs)))
        random.Random(args.seed * 31 + epoch).shuffle(order)
        return (docs[i] for i in order)

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows = pack(endless(epoch_docs), args.seq_len, pad_id=pad)  # whole episodes per row
    # eval loss on episodes of unseen seeds (the training seeds are seed .. seed + episodes - 1)
    held, _ = documents(tokenizer, max(4, args.eval_rows), args.seed + 10**6)
    # (repeated so that short episodes still fill whole packed rows)
    evals = list(pack(iter(held * 8), args.seq_len, pad_id=pad))[:args.eval_rows]
    args.extra.update({"parent": str(parent), "env": env_id, "env_kwargs": env_kwargs, "oracle": counts,
                       "episodes_longer_than_context": too_long})
    summary = train(model, tokenizer, rows, evals, args, resume_from=ckpt, title="sft")
    if eval_episodes and os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 evaluates
        if args.shard != "ddp":  # the trained weights are spread over the ranks: read the exported model
            from model.config import load_model

            model = load_model(out)
        result = evaluate(model, tokenizer, env_id, eval_episodes, seed=args.seed + 2 * 10**6, env_kwargs=env_kwargs)
        summary["greedy_eval"] = result
        (out / "stage.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
        print(f"greedy success on {eval_episodes} unseen tasks: {result['success_rate']:.2f}")
    return summary
