"""New weights for a generation server, one unit (a decoder layer, the embedding, ...) at a time.

After an update the learner's ranks call `publish_weights(model, version, send)`: each unit's slices are
gathered (all ranks take part), the source rank hands the unit's full tensors to `send` as a `WeightShard`,
and the unit is dropped before the next is gathered. No rank ever holds the whole state dict: the peak is
one unit (a 32B layer is 0.45 B parameters, 0.9 GB in bf16). `send` is whatever carries a shard to the
server (an HTTP body, a Ray object ref, an NCCL broadcast); the server applies it with a `WeightReceiver`.

A stream is versioned: the receiver writes shards of version v in place as they come, checks that every
parameter arrived exactly once with its shape, and only then reports v as its version. Generating while a
stream is half applied would mix versions: the server pauses generation while `receiver.pending` is set (from
the first shard to the commit; a stream that fails midway leaves it set until a whole stream arrives), as
vLLM's weight-update path pauses its engine.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from model.sharding import group_by_unit


@dataclass
class WeightShard:
    """The full tensors of one unit of version `version`, the `index`-th of `count` in its stream."""

    version: int
    index: int
    count: int
    tensors: dict[str, torch.Tensor]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())


def publish_weights(model, version: int, send: Callable[[WeightShard], None], *, dtype: torch.dtype | None = None,
                    src: int = 0) -> int:
    """Stream `model`'s weights unit by unit to `send` (called on rank `src` only); returns the shard count.

    Collective when the model is sharded: every rank must call it. Tensors are on the CPU, in `dtype` if
    given (bf16 halves the transfer).
    """
    from torch.distributed.tensor import DTensor

    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    params = dict(model.named_parameters())
    units = group_by_unit(params)
    for index, names in enumerate(units):
        tensors = {}
        for name in names:
            t = params[name].detach()
            if isinstance(t, DTensor):
                t = t.full_tensor()  # all-gather of this parameter only
            if rank == src:
                tensors[name] = t.to("cpu", dtype or t.dtype, copy=True)
        if rank == src:
            send(WeightShard(version, index, len(units), tensors))
        del tensors
    return len(units)


class StaleWeights(ValueError):
    """A shard of a version the receiver already has (or is past)."""


class WeightReceiver:
    """Applies a stream of `WeightShard`s to a local (unsharded) model in place; see the module docstring."""

    def __init__(self, model, version: int = 0):
        self.model = model
        self.version = version
        self._params = dict(model.named_parameters())
        self._pending: tuple[int, int, set[str]] | None = None  # version, next index, names seen

    @property
    def pending(self) -> int | None:
        """The version being written (weights are mixed until it commits), or None."""
        return self._pending[0] if self._pending else None

    @torch.no_grad()
    def apply(self, shard: WeightShard) -> bool:
        """Write one shard; returns True when it completed its version (which `version` then reports)."""
        if shard.version <= self.version:
            raise StaleWeights(f"shard of version {shard.version}, receiver already at {self.version}")
        if shard.index == 0:
            self._pending = (shard.version, 0, set())
        if self._pending is None or self._pending[:2] != (shard.version, shard.index):
            expected = f"version {self._pending[0]} shard {self._pending[1]}" if self._pending else "shard 0"
            raise ValueError(f"out of order: got version {shard.version} shard {shard.index}, expected {expected}")
        version, index, seen = self._pending
        for name, tensor in shard.tensors.items():  # check the whole shard before writing any of it
            param = self._params.get(name)
            if param is None:
                raise ValueError(f"unknown parameter {name!r}")
            if tuple(param.shape) != tuple(tensor.shape) or name in seen:
                raise ValueError(f"{name}: shape {tuple(tensor.shape)} for {tuple(param.shape)}, or sent twice")
        for name, tensor in shard.tensors.items():
            self._params[name].copy_(tensor)
            seen.add(name)
        self._pending = (version, index + 1, seen)
        if shard.index < shard.count - 1:
            return False
        missing = set(self._params) - seen
        if missing:  # the weights stay mixed (still pending) until a whole stream arrives
            raise ValueError(f"version {version} ended without {len(missing)} parameters, e.g. {sorted(missing)[0]}")
        self._pending = None
        self.version = version
        return True
