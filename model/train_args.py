"""The settings of a training stage and their `cwm train STAGE` flags (kept free of heavy imports, so that
building the `cwm` command line does not load torch)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


SHARD_STRATEGIES = ("ddp", "fsdp", "hsdp")


@dataclass(kw_only=True)
class ShardArgs:
    """How a multi-process run splits the model (model/sharding.py); `cwm train rl` can take the same fields."""

    shard: str = "ddp"
    """ddp: a whole copy per rank (the default; small models). fsdp: FSDP2 full shard, one unit per decoder
    layer: weights, gradients and Adam state split over all ranks. hsdp: shard within groups of shard_group
    ranks (a node), replicate across groups"""
    shard_group: int = 0
    """hsdp: ranks per shard group (0: LOCAL_WORLD_SIZE, i.e. one node)"""
    activation_checkpointing: bool = False
    """recompute each decoder layer in the backward pass instead of keeping its activations"""
    cpu_offload: bool = False
    """fsdp/hsdp: keep sharded weights, gradients and optimizer state in host memory; the optimizer steps there"""


@dataclass
class TrainArgs(ShardArgs):
    """Budget and optimisation of one stage; each field has a CLI flag of the same name."""

    out: Path
    max_steps: int = 200
    """optimizer steps in total (a resumed run counts the steps it already did)"""
    minutes: float | None = None
    """wall-clock budget in total; the LR schedule follows whichever budget runs out first"""
    batch_size: int = 8
    """rows per micro-batch (per rank)"""
    grad_accum: int = 1
    """micro-batches per optimizer step"""
    seq_len: int = 512
    lr: float = 1e-3
    """peak learning rate (tiny models take a high one)"""
    min_lr_ratio: float = 0.1
    """cosine decays to lr * min_lr_ratio"""
    warmup_steps: int = 20
    weight_decay: float = 0.1
    """AdamW decay on matrices only; norms and embeddings' gains are left alone"""
    grad_clip: float = 1.0
    eval_every: int = 50
    eval_rows: int = 16
    save_every: int = 100
    keep_checkpoints: int = 2
    log_every: int = 5
    seed: int = 0
    dtype: str = "auto"
    """auto: bf16 on a GPU that supports it, fp32 on CPU (CPU bf16 is slower, not faster). Under fsdp/hsdp bf16
    means FSDP mixed precision (bf16 weights in compute, fp32 master weights and gradient reduction)"""
    resume: bool = True
    extra: dict = field(default_factory=dict)
    """stage-specific settings recorded in stage.json"""


_HELP = {
    "out": "output directory (model, metrics.jsonl, loss.png, checkpoints/); rerunning resumes",
    "max_steps": "optimizer steps in total", "minutes": "wall-clock budget in minutes, in total",
    "batch_size": "rows per micro-batch", "grad_accum": "micro-batches per optimizer step",
    "seq_len": "tokens per packed row", "lr": "peak learning rate", "min_lr_ratio": "final lr / peak lr",
    "warmup_steps": "linear warmup steps", "weight_decay": "AdamW weight decay (matrices only)",
    "grad_clip": "gradient norm clip", "eval_every": "steps between eval losses",
    "eval_rows": "packed rows in the eval set", "save_every": "steps between checkpoints",
    "keep_checkpoints": "checkpoints kept", "log_every": "steps between metrics lines", "seed": "seed",
    "dtype": "auto (bf16 on GPU, fp32 on CPU), fp32 or bf16",
    "shard": "ddp (whole model per rank), fsdp (FSDP2, one unit per decoder layer) or hsdp (shard within a "
             "node, replicate across nodes)",
    "shard_group": "hsdp: ranks per shard group (0: one node, LOCAL_WORLD_SIZE)",
    "activation_checkpointing": "recompute decoder layers in backward instead of storing activations",
    "cpu_offload": "fsdp/hsdp: sharded weights, gradients and Adam state in host memory",
}


def add_train_args(parser, **defaults) -> None:
    """Add one flag per TrainArgs field (`--max-steps`, ...), with stage-specific `defaults`."""
    from dataclasses import MISSING, fields

    for f in fields(TrainArgs):
        if f.name in ("extra", "resume"):
            continue
        default = defaults.get(f.name, f.default if f.default is not MISSING else None)
        flag = "--" + f.name.replace("_", "-")
        if f.type == "bool":
            parser.add_argument(flag, action="store_true", default=default, help=_HELP.get(f.name, ""))
            continue
        if f.name == "shard":
            parser.add_argument(flag, choices=SHARD_STRATEGIES, default=default, help=_HELP[f.name])
            continue
        kind = {"int": int, "float": float, "str": str, "Path": Path}[str(f.type).split(" ")[0]]
        parser.add_argument(flag, type=kind, default=default, required=f.name == "out",
                            help=_HELP.get(f.name, "") + (f" (default {default})" if default is not None else ""))
    parser.add_argument("--no-resume", dest="resume", action="store_false",
                        help="start over even if --out holds checkpoints")


def train_args_from(ns) -> TrainArgs:
    from dataclasses import fields

    return TrainArgs(**{f.name: getattr(ns, f.name) for f in fields(TrainArgs) if hasattr(ns, f.name)})
