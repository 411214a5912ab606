"""Stage 2, mid-training: execution traces, agent trajectories and a replay of pretraining data.

CWM's mid-training teaches the model how code runs: Python execution traces (the frame-by-frame format of
cwm_envs/tracing) and agent trajectories in containers, mixed with pretraining data so nothing is forgotten,
at a longer context reached by RoPE scaling.

- traces: JSON lines with at least {"id", "code", "trace"} (`cwm traces build --out traces.jsonl`). Rows
  whose function is held out (`is_heldout`, a hash of the code) are left out, so that `cwm bench traces`
  measures functions the model never saw.
- trajectories (optional): JSON lines {"messages": [{"role", "content"}, ...]} in CWM's chat roles. Loss
  falls on assistant turns and on tool observations (predicting what the environment answers is the world
  model), except a random `obs_mask_share` of the observations (CWM masked 50%); system/user prompts are
  context only.
- replay: packed rows of the pretraining corpus.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Iterator

from cwm_envs.chat import format_message
from cwm_envs.errors import UsageError
from cwm_envs.tasks import read_jsonl
from model.config import extend_context, load_config
from model.corpus import hash_fraction
from model.pretrain import corpus_rows
from model.tokenizer import load_tokenizer, special_token_ids
from model.train_args import TrainArgs
from model.train_loop import Row, endless, mix, open_model, pack, resume_point, train

HELDOUT_SHARE = 0.1
DEFAULT_MIX = {"traces": 0.6, "trajectories": 0.2, "replay": 0.2}


def is_heldout(row: dict, share: float = HELDOUT_SHARE) -> bool:
    """Whether a trace row's function belongs to the held-out split (decided by its source code alone)."""
    return hash_fraction("trace/" + str(row.get("code", row.get("id")))) < share


def read_traces(path: str | Path, split: str) -> list[str]:
    """The trace texts of `path` in `split` ("train", "heldout" or "all"); a broken row is a UsageError."""
    from cwm_envs.tracing.format import TRACE_CONTEXT_START

    out = []
    for n, row in enumerate(read_jsonl(path), 1):
        trace = row.get("trace")
        if not isinstance(trace, str) or not trace.startswith(TRACE_CONTEXT_START):
            raise UsageError(f"{path}: row {n} has no trace in CWM's format (a 'trace' starting {TRACE_CONTEXT_START})")
        if split == "all" or is_heldout(row) == (split == "heldout"):
            out.append(trace)
    return out


def trace_documents(tokenizer, traces: list[str], seed: int) -> Iterator[tuple[list[int], list[int]]]:
    """Endless BOS + trace documents (special tokens read as such), reshuffled each epoch, loss everywhere."""
    bos = tokenizer.bos_token_id

    def docs(epoch: int):
        order = list(range(len(traces)))
        random.Random(seed * 7919 + epoch).shuffle(order)
        for i in range(0, len(order), 64):
            batch = tokenizer([traces[j] for j in order[i:i + 64]], add_special_tokens=False)["input_ids"]
            for ids in batch:
                yield [bos, *ids], [1] * (len(ids) + 1)

    return endless(docs)


def trajectory_document(tokenizer, messages: list[dict], obs_mask_share: float, rng: random.Random):
    """(ids, loss mask) of one chat trajectory: loss on assistant turns and on the observations that the
    draw keeps (each tool message is masked with probability `obs_mask_share`), never on system/user."""
    ids, mask = [tokenizer.bos_token_id], [0]
    for m in messages:
        role, content = m.get("role"), m.get("content")
        if not isinstance(role, str) or not isinstance(content, str):
            raise UsageError("a trajectory message needs string 'role' and 'content'")
        piece = tokenizer(format_message(role, content), add_special_tokens=False)["input_ids"]
        if role == "assistant":
            learn = True
        elif role.startswith("tool"):
            learn = rng.random() >= obs_mask_share
        else:
            learn = False
        ids += piece
        mask += [int(learn)] * len(piece)
    return ids, mask


def trajectory_documents(tokenizer, path: str | Path, obs_mask_share: float, seed: int):
    """Agent trajectories from JSON lines as documents, re-drawing the masked observations each epoch."""
    rows = []
    for n, row in enumerate(read_jsonl(path), 1):
        if not isinstance(row.get("messages"), list) or not row["messages"]:
            raise UsageError(f"{path}: row {n} has no 'messages' list")
        rows.append(row["messages"])

    def docs(epoch: int):
        rng = random.Random(seed * 104729 + epoch)  # a fresh draw of masked observations each epoch
        for i in rng.sample(range(len(rows)), len(rows)):
            yield trajectory_document(tokenizer, rows[i], obs_mask_share, rng)

    return endless(docs)


def parse_mix(text: str | None) -> dict[str, float]:
    """"traces=0.6,replay=0.4" -> weights (missing sources keep their default)."""
    weights = dict(DEFAULT_MIX)
    for part in filter(None, (text or "").split(",")):
        name, _, value = part.partition("=")
        if name.strip() not in DEFAULT_MIX:
            raise UsageError(f"--mix: unknown source {name!r} (sources: {', '.join(DEFAULT_MIX)})")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            raise UsageError(f"--mix: {part!r} is not NAME=WEIGHT") from None
    return weights


def run(args: TrainArgs, parent: str, traces: str, trajectories: str | None = None,
        corpus: str = "default", mix_spec: str | None = None, obs_mask_share: float = 0.5) -> dict:
    """`cwm train midtrain`: continue `parent` on traces, trajectories and pretraining replay; the summary."""
    out = Path(args.out)
    if not 0 <= obs_mask_share <= 1:
        raise UsageError(f"--obs-mask-share must be within [0, 1], got {obs_mask_share}")
    weights = parse_mix(mix_spec)
    if not trajectories:
        weights["trajectories"] = 0.0
    train_traces = read_traces(traces, "train")
    heldout = read_traces(traces, "heldout")
    if not train_traces:
        raise UsageError(f"{traces}: no training traces (all rows are held out, or the file is empty)")
    ckpt = resume_point(out) if args.resume else None
    source = ckpt or Path(parent)
    tokenizer = load_tokenizer(source)
    special_token_ids(tokenizer)  # the trace tokens must be single tokens
    if ckpt:
        model = open_model(ckpt, args)
        print(f"resuming from {ckpt}")
    else:
        model = open_model(parent, args, config=extend_context(load_config(parent), args.seq_len))

    sources: dict[str, Iterator[Row]] = {
        "traces": pack(trace_documents(tokenizer, train_traces, args.seed), args.seq_len),
        "replay": corpus_rows(tokenizer, corpus, "train", args.seq_len, args.seed),
    }
    if trajectories:
        sources["trajectories"] = pack(trajectory_documents(tokenizer, trajectories, obs_mask_share, args.seed),
                                       args.seq_len)
    rows = mix(sources, weights, args.seed)
    eval_source = pack(trace_documents(tokenizer, heldout or train_traces[:50], args.seed + 1), args.seq_len)
    evals = [next(eval_source) for _ in range(args.eval_rows)]
    args.extra.update({"parent": str(parent), "traces": str(traces), "trajectories": trajectories,
                       "mix": {k: v for k, v in weights.items() if v > 0}, "obs_mask_share": obs_mask_share,
                       "train_traces": len(train_traces), "heldout_traces": len(heldout),
                       "context": model.config.max_position_embeddings, "rope": model.config.rope_parameters})
    return train(model, tokenizer, rows, evals, args, resume_from=ckpt, title="midtrain")
