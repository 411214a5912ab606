"""Sharded training of a CWM with PyTorch's FSDP2 (`torch.distributed.fsdp.fully_shard`), its checkpoints
in the distributed checkpoint format (DCP), and their export to a plain `save_pretrained` directory.

Units: the token embedding, each decoder layer, what is left of the trunk (the final norm) and the LM head
are one FSDP unit each. A rank holds 1/N of every unit and gathers one (plus the next, prefetched) while it
runs. The trunk and the head are two separate roots, so a caller may run the head on a subset of positions
after the trunk (the RL learner scores only sampled tokens); the CausalLM forward runs both as usual.

Precision: with `mixed_precision` the units compute in bf16 while the sharded master weights, the gradients'
reduction and Adam stay fp32 (CWM's own recipe trains in bf16 with fp32 reduction).

Checkpoints: `save_sharded` writes each rank's slices of the weights and the optimizer state into one DCP
directory; `load_sharded` reads them back into any number of ranks (DCP re-slices on load), or into a plain
unsharded model. `export_checkpoint` turns a DCP directory into safetensors files one unit at a time, so
exporting the 32B needs the memory of a layer, not of the model.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Iterator

import torch

from cwm_envs.errors import UsageError

DCP_DIR = "dcp"  # the DCP sub-directory of a sharded checkpoint (checkpoints/step-N/dcp)
_LAYER = re.compile(r"^(.*\.layers\.\d+)\.")


# --- wrapping -------------------------------------------------------------------------------------------

def device_mesh(strategy: str, world: int, device_type: str, shard_group: int = 0):
    """The DeviceMesh FSDP2 shards over: 1-D (fsdp) or replicate x shard (hsdp)."""
    from torch.distributed.device_mesh import init_device_mesh

    if strategy == "fsdp":
        return init_device_mesh(device_type, (world,), mesh_dim_names=("shard",))
    if strategy == "hsdp":
        group = shard_group or int(os.environ.get("LOCAL_WORLD_SIZE", world))
        if group < 1 or world % group:
            raise UsageError(f"--shard-group {group} does not divide the {world} ranks")
        return init_device_mesh(device_type, (world // group, group), mesh_dim_names=("replicate", "shard"))
    raise UsageError(f"no device mesh for strategy {strategy!r} (fsdp or hsdp)")


def enable_activation_checkpointing(model) -> None:
    """Recompute each decoder layer in the backward pass (non-reentrant: it composes with FSDP and DDP)."""
    if hasattr(model, "activation_checkpointing_enable"):  # its name in recent transformers 5.x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def shard_model(model, mesh, *, mixed_precision: bool = False, cpu_offload: bool = False,
                activation_checkpointing: bool = False):
    """Apply FSDP2 in place: one unit per decoder layer, the embedding, the trunk's rest, and the LM head.

    Parameters become DTensors holding this rank's slice; build the optimizer afterwards.
    """
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    if getattr(model.config, "tie_word_embeddings", False):
        raise UsageError("sharding assumes untied embeddings and LM head (every CWM preset unties them)")
    if activation_checkpointing:
        enable_activation_checkpointing(model)
    policy = dict(
        mesh=mesh,
        mp_policy=(MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
                   if mixed_precision else MixedPrecisionPolicy()),
        # pinned host memory speeds copies to a GPU; there is none to pin for on a CPU-only mesh
        offload_policy=CPUOffloadPolicy(pin_memory=mesh.device_type != "cpu") if cpu_offload else OffloadPolicy(),
    )
    decoder = model.get_decoder()
    for unit in (decoder.embed_tokens, *decoder.layers):
        fully_shard(unit, **policy)
    fully_shard(decoder, **policy)
    fully_shard(model.get_output_embeddings(), **policy)
    return model


def is_meta(model) -> bool:
    """Whether the model was built on the meta device (no storage yet)."""
    return any(p.is_meta for p in model.parameters())


def materialise(model, device) -> None:
    """Allocate a meta-device model's storage on `device` (values undefined until loaded) and rebuild the
    RoPE tables, which are computed at construction rather than loaded."""
    model.to_empty(device=device)
    decoder = model.get_decoder()
    decoder.rotary_emb = type(decoder.rotary_emb)(config=model.config).to(device)


def unit_of(name: str) -> str:
    """The unit a parameter belongs to: `model.layers.3` for a layer's, else its top module's path.

    >>> unit_of("model.layers.12.mlp.up_proj.weight"), unit_of("lm_head.weight"), unit_of("model.norm.weight")
    ('model.layers.12', 'lm_head', 'model.norm')
    """
    m = _LAYER.match(name)
    return m.group(1) if m else name.rsplit(".", 1)[0]


def group_by_unit(names) -> list[list[str]]:
    """Parameter names grouped by unit, units in first-seen order."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(unit_of(name), []).append(name)
    return list(groups.values())


# --- checkpoints ----------------------------------------------------------------------------------------

def is_sharded_checkpoint(path: str | Path) -> bool:
    """Whether `path` holds a DCP (sharded) checkpoint rather than a plain one."""
    return (Path(path) / DCP_DIR / ".metadata").is_file()


def save_sharded(path: str | Path, model, optimizer=None) -> None:
    """Every rank writes its slices of the weights (and the optimizer state) to the DCP directory `path`."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    if optimizer is None:
        state = {"model": get_model_state_dict(model)}
    else:
        msd, osd = get_state_dict(model, optimizer)
        state = {"model": msd, "optim": osd}
    dcp.save(state, checkpoint_id=str(path))


def load_sharded(path: str | Path, model, optimizer=None) -> None:
    """Fill `model` (and `optimizer`) from a DCP directory written by any number of ranks."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_state_dict,
        set_model_state_dict,
        set_state_dict,
    )

    if optimizer is None:
        state = {"model": get_model_state_dict(model)}
        dcp.load(state, checkpoint_id=str(path))
        set_model_state_dict(model, state["model"])
        return
    msd, osd = get_state_dict(model, optimizer)
    state = {"model": msd, "optim": osd}
    dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])


def load_pretrained(path: str | Path, model) -> None:
    """Fill a (sharded or plain) model from a `save_pretrained` directory; each rank reads only its slices
    of the safetensors files (how a 32B run starts from the published weights without a full copy per rank)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    if not list(Path(path).glob("*.safetensors")):
        raise UsageError(f"{path} holds no safetensors weights")
    state = get_model_state_dict(model)
    dcp.load(state, storage_reader=HuggingFaceStorageReader(str(path)))
    set_model_state_dict(model, state)


def _model_tensors(dcp_dir: Path) -> dict[str, object]:
    """Metadata of the model's tensors in a DCP directory, by parameter name (`model.` prefix removed)."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    meta = FileSystemReader(str(dcp_dir)).read_metadata()
    return {k[len("model."):]: md for k, md in meta.state_dict_metadata.items()
            if k.startswith("model.") and isinstance(md, TensorStorageMetadata)}


def iter_checkpoint_units(dcp_dir: str | Path, dtype: torch.dtype | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """The full tensors of a DCP checkpoint, one unit (a decoder layer, the embedding, ...) at a time,
    read in one process without a process group."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemReader

    tensors = _model_tensors(Path(dcp_dir))
    if not tensors:
        raise UsageError(f"{dcp_dir} holds no model weights")
    for names in group_by_unit(tensors):
        part = {n: torch.empty(tensors[n].size, dtype=tensors[n].properties.dtype) for n in names}
        with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
            warnings.simplefilter("ignore", UserWarning)
            dcp.load({"model": part}, storage_reader=FileSystemReader(str(dcp_dir)), no_dist=True)
        yield {n: (t.to(dtype) if dtype is not None else t) for n, t in part.items()}


def export_checkpoint(ckpt: str | Path, out: str | Path, *, dtype: torch.dtype | None = None,
                      max_file_bytes: int = 2 * 2**30) -> Path:
    """Write a sharded checkpoint `ckpt` (config.json, tokenizer, dcp/) as a `save_pretrained` directory:
    config, tokenizer and safetensors files of at most `max_file_bytes` with their index, which
    `from_pretrained`, `model.config.load_model` and `hf:` policies load. Memory: one file's worth."""
    from safetensors.torch import save_file
    from transformers import CwmConfig

    ckpt, out = Path(ckpt), Path(out)
    if not is_sharded_checkpoint(ckpt):
        raise UsageError(f"{ckpt} is not a sharded checkpoint (no {DCP_DIR}/.metadata)")
    out.mkdir(parents=True, exist_ok=True)
    for stale in list(out.glob("model*.safetensors")) + list(out.glob("model.safetensors.index.json")):
        stale.unlink()
    for f in ckpt.iterdir():  # config, generation config, tokenizer files
        if f.is_file() and f.name != "trainer_state.pt":
            shutil.copy2(f, out / f.name)
    files: list[dict[str, torch.Tensor]] = [{}]
    sizes = [0]
    written: list[str] = []
    weight_map: dict[str, int] = {}

    def flush() -> None:
        name = f"part-{len(written):05d}.safetensors"
        save_file({k: v.contiguous() for k, v in files[-1].items()}, out / name, metadata={"format": "pt"})
        for key in files[-1]:
            weight_map[key] = len(written)
        written.append(name)
        files[-1] = {}
        sizes[-1] = 0

    total = 0
    for unit in iter_checkpoint_units(ckpt / DCP_DIR, dtype):
        nbytes = sum(t.numel() * t.element_size() for t in unit.values())
        if files[-1] and sizes[-1] + nbytes > max_file_bytes:
            flush()
        files[-1].update(unit)
        sizes[-1] += nbytes
        total += nbytes
    flush()
    # HF's naming: model-0000i-of-0000n.safetensors, plus an index when there is more than one file.
    n = len(written)
    final = ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    for old, new in zip(written, final):
        (out / old).rename(out / new)
    if n > 1:
        index = {"metadata": {"total_size": total}, "weight_map": {k: final[i] for k, i in sorted(weight_map.items())}}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    if dtype is not None:
        config = CwmConfig.from_pretrained(out)
        config.dtype = dtype
        config.save_pretrained(out)
    return out
