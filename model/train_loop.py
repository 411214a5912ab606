"""The training machinery every stage shares: packing, AdamW with warmup + cosine, gradient accumulation,
bf16 on GPUs / fp32 on CPUs, periodic eval loss, checkpoints with `save_pretrained` and resume, a progress
bar, `metrics.jsonl` and `loss.png`.

Data reaches the loop as an endless iterator of packed rows: `seq_len` token ids and as many labels, where a
label of -100 takes a token out of the loss (prompts in SFT, masked observations in mid-training).

Data-parallel: launched by `torchrun --nproc_per_node N cwm train ...` (or a Ray Train worker that sets the
same RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR variables), each rank takes every N-th row, gradients are
averaged by DistributedDataParallel, and rank 0 alone writes metrics and checkpoints. Without those
variables it is a plain single-process loop.

Sharded (`--shard fsdp|hsdp`, model/sharding.py): the same data split, but FSDP2 holds 1/N of the weights,
gradients and optimizer state on each rank. Checkpoints are then DCP directories that every rank writes
(`checkpoints/step-N/dcp`, resumable on any number of ranks, or unsharded), and the final model is exported
from the last one into `--out` as a plain `save_pretrained` directory.

Layout of `--out DIR`: the final model and tokenizer (load with `from_pretrained(DIR)`), `stage.json`,
`metrics.jsonl`, `loss.png`, and `checkpoints/step-NNNNNN/` (model, tokenizer, `trainer_state.pt`), of
which the last `keep_checkpoints` are kept; a rerun with the same `--out` resumes from the newest.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch

from cwm_envs.errors import UsageError
from model.train_args import TrainArgs

IGNORE = -100  # label value that the loss skips (transformers' convention)

Row = tuple[list[int], list[int]]  # (input_ids, labels), both seq_len long


# --- data -----------------------------------------------------------------------------------------------

def pack(docs: Iterable[tuple[list[int], list[int]]], seq_len: int, pad_id: int | None = None) -> Iterator[Row]:
    """Concatenate (ids, loss_mask) documents and cut the stream into rows of `seq_len` tokens.

    Packing wastes no compute on padding; a document may run on into the next row, as in GPT pretraining.
    With `pad_id`, a document never does (unless longer than a row): the rest of the row is padding with no
    loss. SFT needs that: an episode's answer copies from its prompt, and an answer whose prompt went to the
    row before teaches the model to make numbers up.
    """
    ids: list[int] = []
    labels: list[int] = []
    for doc_ids, mask in docs:
        if pad_id is not None and ids and len(ids) + len(doc_ids) > seq_len:
            yield ids + [pad_id] * (seq_len - len(ids)), labels + [IGNORE] * (seq_len - len(ids))
            ids, labels = [], []
        ids.extend(doc_ids)
        labels.extend(t if m else IGNORE for t, m in zip(doc_ids, mask))
        while len(ids) >= seq_len:
            yield ids[:seq_len], labels[:seq_len]
            del ids[:seq_len], labels[:seq_len]


def endless(make_docs: Callable[[int], Iterable[tuple[list[int], list[int]]]]) -> Iterator[tuple[list[int], list[int]]]:
    """Documents of epoch 0, 1, 2, ... forever (`make_docs(epoch)` reshuffles by epoch)."""
    epoch = 0
    while True:
        empty = True
        for doc in make_docs(epoch):
            empty = False
            yield doc
        if empty:
            raise UsageError("no documents to train or evaluate on (is the corpus or trace file empty?)")
        epoch += 1


def mix(sources: dict[str, Iterator[Row]], weights: dict[str, float], seed: int) -> Iterator[Row]:
    """Rows drawn from several endless sources in proportion to `weights` (seeded, so resumable)."""
    import random

    rng = random.Random(seed)
    names = [n for n in sources if weights.get(n, 0) > 0]
    probs = [weights[n] for n in names]
    while True:
        yield next(sources[rng.choices(names, probs)[0]])


# --- distributed and precision --------------------------------------------------------------------------

@dataclass
class Dist:
    """This process's place in the process group (one rank and no group when run alone)."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owned: bool = False  # this process made a one-rank process group (sharding needs one); train() ends it

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(need_group: bool = False) -> Dist:
    """Join the process group that torchrun (or Ray Train) describes in the environment, if any.

    `need_group`: a single process gets a one-rank group of its own (FSDP and DCP want one).
    """
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        if not need_group or dist.is_initialized():
            return Dist()
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1)
        return Dist(owned=True)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def pick_device(d: Dist) -> torch.device:
    """This rank's GPU when there is one, else the CPU."""
    if torch.cuda.is_available():
        torch.cuda.set_device(d.local_rank)
        return torch.device("cuda", d.local_rank)
    return torch.device("cpu")


def autocast_for(device: torch.device, dtype: str):
    """The autocast context and the resolved dtype name for `dtype` (auto: bf16 where the GPU has it)."""
    if dtype == "auto":
        dtype = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if dtype == "fp32":
        return nullcontext(), "fp32"
    if dtype == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16), "bf16"
    raise ValueError(f"dtype must be auto, fp32 or bf16, not {dtype!r}")


# --- schedule and optimizer -----------------------------------------------------------------------------

def lr_at(args: TrainArgs, step: int, elapsed_s: float) -> float:
    """Linear warmup over `warmup_steps`, then cosine to `min_lr_ratio * lr` as the budget is used up."""
    if step < args.warmup_steps:
        return args.lr * (step + 1) / args.warmup_steps
    progress = (step - args.warmup_steps) / max(1, args.max_steps - args.warmup_steps)
    if args.minutes:
        progress = max(progress, elapsed_s / (args.minutes * 60))
    progress = min(1.0, progress)
    floor = args.lr * args.min_lr_ratio
    return floor + 0.5 * (args.lr - floor) * (1 + math.cos(math.pi * progress))


def make_optimizer(model: torch.nn.Module, args: TrainArgs, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on norms and biases)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95), eps=1e-8, fused=device.type == "cuda")


# --- checkpoints ----------------------------------------------------------------------------------------

def open_model(path: str | Path, args: TrainArgs, config=None):
    """The model a stage starts or resumes from: loaded whole, or, when the run shards it or `path` is a
    sharded checkpoint, an empty model on the meta device that `train` fills (each rank reads only its
    slices; a 32B never exists whole in one process). `config` replaces the saved one."""
    from transformers import CwmForCausalLM

    from model.config import load_config, load_model
    from model.sharding import is_sharded_checkpoint

    if args.shard == "ddp" and not is_sharded_checkpoint(path):
        return load_model(path, config=config)
    config = config or load_config(path)
    config._name_or_path = str(path)  # where train() reads the weights from
    with torch.device("meta"):
        return CwmForCausalLM(config)


def checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints under `out/checkpoints`, oldest first."""
    root = Path(out) / "checkpoints"
    found = [p for p in root.glob("step-*") if (p / "trainer_state.pt").is_file()] if root.is_dir() else []
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def resume_point(out: Path) -> Path | None:
    """The newest complete checkpoint of a previous run into `out`, if any (load the model from it)."""
    found = checkpoints(out)
    return found[-1] if found else None


def save_checkpoint(model, tokenizer, optimizer, state: dict, args: TrainArgs, dist: Dist | None = None) -> Path:
    """Write `checkpoints/step-N` atomically (a temp dir renamed at the end) and drop the oldest ones.

    Sharded runs call it on every rank: each writes its slices into `dcp/`, rank 0 the rest.
    """
    from model.sharding import DCP_DIR, save_sharded

    dist = dist or Dist()
    sharded = args.shard != "ddp"
    root = Path(args.out) / "checkpoints"
    final = root / f"step-{state['step']:06d}"
    tmp = root / f".tmp-step-{state['step']:06d}"
    if dist.main:
        shutil.rmtree(tmp, ignore_errors=True)
    if sharded:
        if dist.world > 1:
            torch.distributed.barrier()  # nobody writes into the temp dir before it is cleared
        save_sharded(tmp / DCP_DIR, model, optimizer)  # returns once every rank's slices and the index are on disk
        if not dist.main:
            return final
        model.config.save_pretrained(tmp)
        saved = {**state, "rng": torch.get_rng_state(), "sharded": True, "world": dist.world}
    else:
        model.save_pretrained(tmp)
        saved = {**state, "optimizer": optimizer.state_dict(), "rng": torch.get_rng_state()}
    tokenizer.save_pretrained(tmp)
    torch.save(saved, tmp / "trainer_state.pt")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in checkpoints(args.out)[: -args.keep_checkpoints]:
        shutil.rmtree(old, ignore_errors=True)
    return final


# --- metrics --------------------------------------------------------------------------------------------

def plot_losses(metrics_path: Path, png: Path, title: str = "") -> None:
    """loss.png: train loss per logged step and eval loss, from metrics.jsonl (the last value per step wins)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, evals = {}, {}
    for line in metrics_path.read_text().splitlines():
        row = json.loads(line)
        if "loss" in row:
            train[row["step"]] = row["loss"]
        if "eval_loss" in row:
            evals[row["step"]] = row["eval_loss"]
    fig, ax = plt.subplots(figsize=(6, 4))
    if train:
        ax.plot(list(train), list(train.values()), label="train loss", lw=1)
    if evals:
        ax.plot(list(evals), list(evals.values()), "o-", label="eval loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def _batch(rows: list[Row], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.tensor([r[0] for r in rows], dtype=torch.long, device=device)
    labels = torch.tensor([r[1] for r in rows], dtype=torch.long, device=device)
    return ids, labels


@torch.no_grad()
def eval_loss(model, rows: list[Row], batch_size: int, device: torch.device, autocast) -> float | None:
    """Mean loss per predicted token over `rows` (None when they hold no label)."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(rows), batch_size):
        ids, labels = _batch(rows[i:i + batch_size], device)
        n = int((labels[:, 1:] != IGNORE).sum())
        if n == 0:
            continue
        with autocast:
            out = model(input_ids=ids, labels=labels, num_items_in_batch=n)
        total += float(out.loss) * n
        count += n
    model.train()
    return total / count if count else None


# --- the loop -------------------------------------------------------------------------------------------

def train(model, tokenizer, rows: Iterator[Row], eval_rows: list[Row], args: TrainArgs,
          resume_from: Path | None = None, title: str = "training") -> dict:
    """Train `model` on `rows` until the step or time budget runs out; save the result to `args.out`.

    `resume_from` is a checkpoint dir the caller opened the model from (`open_model(resume_point(out), args)`):
    the optimizer, step counter, elapsed time and data position are restored from it (and, for a sharded
    checkpoint, the weights). Under `args.shard` fsdp/hsdp the model is sharded here. Returns the summary
    that is also written to `stage.json`.
    """
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Writing model shards" bars at every checkpoint are noise
    from model.sharding import (
        DCP_DIR,
        device_mesh,
        enable_activation_checkpointing,
        export_checkpoint,
        is_meta,
        is_sharded_checkpoint,
        load_pretrained,
        load_sharded,
        materialise,
        shard_model,
    )

    out = Path(args.out)
    sharded = args.shard != "ddp"
    empty = is_meta(model)  # open_model() gave an empty model: its weights come from a directory below
    sharded_resume = resume_from is not None and is_sharded_checkpoint(resume_from)
    if sharded_resume and not empty:
        raise UsageError("a sharded checkpoint resumes into the empty model that open_model(ckpt, args) gives")
    if resume_from is not None and sharded and not sharded_resume:
        raise UsageError(f"{resume_from} was saved by an unsharded run: resume it with --shard ddp "
                         "(or start a new --out from its exported model)")
    weights_from = Path(model.name_or_path) if empty and resume_from is None else None
    dist = setup_distributed(need_group=sharded)
    device = pick_device(dist)
    autocast, precision = autocast_for(device, args.dtype)
    torch.manual_seed(args.seed + dist.rank)
    if sharded:
        mesh = device_mesh(args.shard, dist.world, device.type, args.shard_group)
        shard_model(model, mesh, mixed_precision=precision == "bf16", cpu_offload=args.cpu_offload,
                    activation_checkpointing=args.activation_checkpointing)
        autocast = nullcontext()  # FSDP's mixed-precision policy casts the units itself
    elif args.activation_checkpointing:
        enable_activation_checkpointing(model)
    if empty:
        materialise(model, "cpu" if args.cpu_offload else device)
    if not sharded:
        model.to(device)
    if weights_from is not None:  # each rank reads its slices (all of them, unsharded)
        if is_sharded_checkpoint(weights_from):
            load_sharded(weights_from / DCP_DIR, model)
        else:
            load_pretrained(weights_from, model)
    model.train()
    model.config.use_cache = False
    optimizer = make_optimizer(model, args, device)

    state = {"step": 0, "rows": 0, "elapsed_s": 0.0, "tokens": 0}
    last_ckpt = None
    if resume_from is not None:
        saved = torch.load(Path(resume_from) / "trainer_state.pt", map_location="cpu", weights_only=False)
        if sharded_resume:
            load_sharded(Path(resume_from) / DCP_DIR, model, optimizer)
            last_ckpt = Path(resume_from)
        else:
            optimizer.load_state_dict(saved.pop("optimizer"))
        torch.set_rng_state(saved.pop("rng"))
        state.update({k: saved[k] for k in state})
        rows = islice(rows, state["rows"], None)  # the data stream is deterministic: skip what was used
    rank_rows = islice(rows, dist.rank, None, dist.world)

    ddp = model
    if dist.world > 1 and not sharded:
        from torch.nn.parallel import DistributedDataParallel

        ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
    metrics_path = out / "metrics.jsonl"
    log = open(metrics_path, "a") if dist.main else None

    def record(row: dict) -> None:
        if log:
            log.write(json.dumps(row) + "\n")
            log.flush()

    from tqdm.auto import tqdm

    bar = tqdm(total=args.max_steps, initial=state["step"], desc=title, unit="step",
               disable=not (dist.main and sys.stderr.isatty()))
    rows_per_step = args.batch_size * args.grad_accum * dist.world
    start_elapsed = state["elapsed_s"]
    t0 = time.perf_counter()
    last_loss = last_eval = None
    window_tokens, window_t = 0, time.perf_counter()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def elapsed() -> float:
        return start_elapsed + time.perf_counter() - t0

    def out_of_budget() -> bool:
        """Whether to stop; under DDP rank 0 decides for all (clocks differ, and a rank left behind hangs)."""
        stop = state["step"] >= args.max_steps or (args.minutes is not None and elapsed() >= args.minutes * 60)
        if dist.world > 1:
            flag = torch.tensor([int(stop)], device=device)
            torch.distributed.broadcast(flag, 0)
            stop = bool(flag.item())
        return stop

    stop = out_of_budget()
    while not stop:
        lr = lr_at(args, state["step"], elapsed())
        for group in optimizer.param_groups:
            group["lr"] = lr
        micro = [_batch(list(islice(rank_rows, args.batch_size)), device) for _ in range(args.grad_accum)]
        if any(ids.shape[0] < args.batch_size for ids, _ in micro):
            raise ValueError("the training data ran out (an endless iterator is expected)")
        # Normalise by the label count of the whole (global) step, so accumulation and DDP give the mean.
        n_items = torch.tensor(sum(int((lab[:, 1:] != IGNORE).sum()) for _, lab in micro), device=device)
        if dist.world > 1:
            torch.distributed.all_reduce(n_items)
        n_items = int(n_items)
        step_loss = 0.0
        for i, (ids, labels) in enumerate(micro):
            last = dist.world == 1 or sharded or i == len(micro) - 1  # FSDP reduce-scatters every micro-batch
            sync = nullcontext() if last else ddp.no_sync()
            with sync, autocast:
                loss = ddp(input_ids=ids, labels=labels, num_items_in_batch=max(1, n_items)).loss
            (loss * dist.world).backward()  # DDP and FSDP average gradients over ranks; the sum is what we want
            step_loss += float(loss.detach())
        if n_items:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        state["step"] += 1
        state["rows"] += rows_per_step
        state["tokens"] += rows_per_step * args.seq_len
        window_tokens += rows_per_step * args.seq_len
        if dist.world > 1:  # each rank's loss is its share of the global mean: the sum is the mean
            total = torch.tensor([step_loss], device=device)
            torch.distributed.all_reduce(total)
            step_loss = float(total)
        last_loss = step_loss
        stop = out_of_budget()
        bar.update(1)

        if state["step"] % args.log_every == 0 or stop:
            now = time.perf_counter()
            tps = window_tokens / max(1e-9, now - window_t)
            window_tokens, window_t = 0, now
            record({"step": state["step"], "loss": round(last_loss, 5), "lr": lr, "tokens": state["tokens"],
                    "tokens_per_s": round(tps, 1), "elapsed_s": round(elapsed(), 2)})
            bar.set_postfix(loss=f"{last_loss:.3f}", tok_s=f"{tps:.0f}")
        if eval_rows and (state["step"] % args.eval_every == 0 or stop):
            last_eval = eval_loss(model, eval_rows, args.batch_size, device, autocast)
            record({"step": state["step"], "eval_loss": last_eval})
        if (dist.main or sharded) and (state["step"] % args.save_every == 0 or stop):
            state["elapsed_s"] = elapsed()
            last_ckpt = save_checkpoint(model, tokenizer, optimizer, state, args, dist)
    bar.close()
    state["elapsed_s"] = elapsed()

    summary = {
        "stage": title, "steps": state["step"], "tokens": state["tokens"], "elapsed_s": round(state["elapsed_s"], 1),
        "final_loss": last_loss, "final_eval_loss": last_eval, "precision": precision, "device": str(device),
        "world_size": dist.world, "resumed_from": str(resume_from) if resume_from else None,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(args).items()},
    }
    if device.type == "cuda":
        summary["peak_memory_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    if sharded and last_ckpt is None:  # no step ran and nothing was resumed: checkpoint what there is
        last_ckpt = save_checkpoint(model, tokenizer, optimizer, state, args, dist)
    if dist.main:
        if sharded:  # the final model from the last checkpoint, one unit at a time
            export_checkpoint(last_ckpt, out)
        else:
            model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        (out / "stage.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
        log.close()
        plot_losses(metrics_path, out / "loss.png", title)
    if dist.world > 1:
        torch.distributed.barrier()
    if dist.owned:
        torch.distributed.destroy_process_group()
    return summary

