"""The settings of a training stage and their `cwm train STAGE` flags (kept free of heavy imports, so that
building the `cwm` command line does not load torch).

Settings are dataclasses in cleanrl's style: each field has one default and a docstring under it. `add_flags`
makes one flag per field from them (name, type, help, default), so that nothing is written twice; the RL
stage's settings (agents/rl_args.py) use the same functions.
"""
from __future__ import annotations

import argparse
import ast
import inspect
import json
import textwrap
import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal

from cwm_envs.errors import UsageError


@dataclass(kw_only=True)
class ShardArgs:
    """How a multi-process run splits the model (model/sharding.py); the RL stage's settings can inherit them."""

    shard: Literal["ddp", "fsdp", "hsdp"] = "ddp"
    """ddp: a whole copy of the model per rank (small models). fsdp: FSDP2 full shard, one unit per decoder
    layer: weights, gradients and Adam state split over all ranks. hsdp: shard within groups of --shard-group
    ranks (a node), replicate across the groups"""
    shard_group: int = 0
    """hsdp: ranks per shard group (0: LOCAL_WORLD_SIZE, one node)"""
    activation_checkpointing: bool = False
    """recompute each decoder layer in the backward pass instead of keeping its activations"""
    cpu_offload: bool = False
    """fsdp/hsdp: keep the sharded weights, gradients and Adam state in host memory (the optimizer steps there)"""


@dataclass
class TrainArgs(ShardArgs):
    """Budget and optimisation of one stage; each field has a CLI flag of the same name."""

    out: Path
    """output directory (model, metrics.jsonl, loss.png, checkpoints/); rerunning resumes"""
    max_steps: int = 200
    """optimizer steps in total (a resumed run counts the steps it already did)"""
    minutes: float | None = None
    """wall-clock budget in total; the LR schedule follows whichever budget runs out first"""
    batch_size: int = 8
    """rows per micro-batch (per rank)"""
    grad_accum: int = 1
    """micro-batches per optimizer step"""
    seq_len: int = 512
    """tokens per packed row"""
    lr: float = 1e-3
    """peak learning rate (tiny models take a high one)"""
    min_lr_ratio: float = 0.1
    """cosine decays to lr * min_lr_ratio"""
    warmup_steps: int = 20
    """linear warm-up steps"""
    weight_decay: float = 0.1
    """AdamW decay on matrices only; norms and embeddings' gains are left alone"""
    grad_clip: float = 1.0
    """global gradient-norm clip"""
    eval_every: int = 50
    """steps between eval losses"""
    eval_rows: int = 16
    """packed rows in the eval set"""
    save_every: int = 100
    """steps between checkpoints"""
    keep_checkpoints: int = 2
    """checkpoints kept"""
    log_every: int = 5
    """steps between metrics lines"""
    seed: int = 0
    """seed of the weights, the data order and sampling"""
    dtype: Literal["auto", "fp32", "bf16"] = "auto"
    """auto: bf16 on a GPU that supports it, fp32 on CPU (CPU bf16 is slower, not faster); bf16 is autocast, or
    under fsdp/hsdp FSDP mixed precision (bf16 compute, fp32 master weights and gradient reduction)"""
    resume: bool = True
    """resume from the newest checkpoint in --out (--no-resume: start over)"""
    extra: dict = field(default_factory=dict)
    """stage-specific settings recorded in stage.json (not a flag: each stage fills it)"""


def add_train_args(parser, **defaults) -> None:
    """Add one flag per TrainArgs field (`--max-steps`, ...), with stage-specific `defaults`."""
    add_flags(parser, TrainArgs, defaults=defaults, skip=("extra",))


def train_args_from(ns) -> TrainArgs:
    """TrainArgs from parsed `cwm train` flags."""
    return from_flags(TrainArgs, ns)


# --- flags from dataclasses ---------------------------------------------------------------------------------

def flag(name: str) -> str:
    """The flag of a field: `max_steps` -> `--max-steps`."""
    return "--" + name.replace("_", "-")


def field_docs(cls) -> dict[str, str]:
    """The docstring under each field of dataclass `cls` (and of the dataclasses it inherits), on one line."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):  # a subclass's docstring replaces its parent's
        if not is_dataclass(klass):
            continue
        try:
            body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        except (OSError, TypeError):  # no source (a bytecode-only install): flags without help
            continue
        for node, after in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                    and isinstance(after.value.value, str)):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def field_default(f) -> Any:
    """A field's default (MISSING when it has none)."""
    return f.default_factory() if f.default_factory is not MISSING else f.default


def show_default(value: Any) -> str:
    """A default as --help shows it (a dict as JSON, as the flag takes it)."""
    return json.dumps(value) if isinstance(value, dict) else str(value)


def add_flag(parser, name: str, annotation: Any, help: str, default: Any = argparse.SUPPRESS,
             required: bool = False) -> None:
    """One flag for a field annotated `annotation`: bool -> `--x/--no-x`, Literal -> choices, dict -> a JSON
    string (decoded by `from_flags`, which can say what is wrong in one line). With the default SUPPRESS the
    flag sets nothing unless given, so the dataclass's own default applies."""
    kind = annotation
    options = [a for a in typing.get_args(kind) if a is not type(None)]
    if typing.get_origin(kind) is not Literal and options:  # X | None
        kind = options[0]
    choices = typing.get_args(kind) if typing.get_origin(kind) is Literal else None
    help = help.replace("%", "%%")  # argparse formats help with %
    if kind is bool:
        parser.add_argument(flag(name), action=argparse.BooleanOptionalAction, default=default, help=help)
    elif choices:
        parser.add_argument(flag(name), choices=choices, default=default, help=help)
    else:
        parser.add_argument(flag(name), type=str if kind is dict else kind, default=default, help=help,
                            metavar="JSON" if kind is dict else None, required=required)


def add_flags(parser, cls, *, defaults: dict | None = None, skip: tuple[str, ...] = ()) -> None:
    """One flag per field of dataclass `cls`, its help the field's docstring and default. `defaults`: a
    command's own defaults for some fields (e.g. a stage's step budget); the others stay the dataclass's."""
    hints, docs, defaults = typing.get_type_hints(cls), field_docs(cls), defaults or {}
    for f in fields(cls):
        if f.name in skip:
            continue
        default = defaults.get(f.name, field_default(f))
        shown = "" if default is None or default is MISSING else f" (default: {show_default(default)})"
        add_flag(parser, f.name, hints[f.name], docs.get(f.name, "") + shown,
                 default=defaults.get(f.name, argparse.SUPPRESS), required=default is MISSING)


def from_flags(cls, ns, **given):
    """`cls` from the parsed flags (fields whose flag was not given keep their default); JSON flags decoded."""
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        if f.name in given or not hasattr(ns, f.name):
            continue
        value = getattr(ns, f.name)
        if isinstance(value, str) and dict in (hints[f.name], *typing.get_args(hints[f.name])):
            value = json_object(value, flag(f.name))
        given[f.name] = value
    return cls(**given)


def json_object(text: str, what: str) -> dict:
    """`text` decoded as a JSON object, or a one-line usage error saying what is wrong."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{what} is not JSON: {exc.msg}") from None
    if not isinstance(value, dict):
        raise UsageError(f"{what} must be a JSON object")
    return value
