"""The GRPO and PPO learners with the LM sharded by FSDP2, inside RLlib's LearnerGroup.

`ShardedGRPOLearner` is `agents.grpo.GRPOLearner` (the same loss, minibatch loop, lr schedule, metrics)
whose module is sharded per decoder layer right after RLlib builds it (model/sharding.py), before the
optimizer is registered, so Adam holds only this learner's slices. The module is built on the meta device,
so no learner ever holds the whole model: weights arrive by `set_lm_weights` (a full dict, small models)
or `load_lm_weights` (each learner reads its slices of a `save_pretrained` directory: the 32B path).

What RLlib's LearnerGroup can and cannot host:
- `LearnerGroup(num_learners=N)` starts N actors joined in one torch process group (Ray Train's TorchConfig:
  gloo on CPU, NCCL on GPU), and `update()` sends every learner its slice of the batch: FSDP's collectives
  line up, and its reduce-scatter averages gradients as DDP would (so `LMLearner.normaliser`'s division by
  num_learners still holds). RLlib's DDP wrapper is skipped.
- `LearnerGroup.get_state()` / `get_weights()` ask one learner only; gathering sharded weights is a
  collective, so that call would hang. These learners raise instead, and `gather_lm_weights`,
  `publish_lm_weights`, `save_learners` and `load_learners` below go through `foreach_learner`, where every
  learner takes part. (`agents.lm_module.set_lm_weights` reads the current weights first: use this module's.)
- `num_learners=0` (one learner in the driver) works too: it shards over a one-rank group of its own.

Settings: the learners read `config.learner_config_dict`, which is the update args whole; `shard_update(update,
shard=..., ...)` gives GRPOArgs / PPOArgs with the fields of `ShardedUpdate` added (model.train_args.ShardArgs:
shard, shard_group, activation_checkpointing, cpu_offload; and mixed_precision: bf16 compute, fp32 reduce).
"""
from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from agents.grpo import GRPOLearner
from agents.ppo import PPOLearner
from agents.rl_args import GRPOArgs, PPOArgs, UpdateArgs
from model.train_args import ShardArgs


@dataclass(kw_only=True)
class ShardedUpdate(ShardArgs):
    """How a sharded learner splits the model; it reads these fields from the update args it is given."""

    mixed_precision: bool = False
    """bf16 compute with fp32 master weights and gradient reduction (for GPUs)"""


@dataclass
class ShardedGRPOArgs(GRPOArgs, ShardedUpdate):
    """GRPOArgs and how to shard the learners."""


@dataclass
class ShardedPPOArgs(PPOArgs, ShardedUpdate):
    """PPOArgs and how to shard the learners."""


def shard_update(update: UpdateArgs, shard: str = "fsdp", **settings) -> UpdateArgs:
    """`update` (GRPOArgs or PPOArgs) with sharding settings, for build_learner_group(Sharded*Learner, ...)."""
    cls = {GRPOArgs: ShardedGRPOArgs, PPOArgs: ShardedPPOArgs}[type(update)]
    return cls(**asdict(update), shard=shard, **settings)


def clip_sharded_gradients(gradients_dict: dict, *, grad_clip: float | None = None,
                           grad_clip_by: str = "global_norm"):
    """RLlib's global-norm clip for gradients that are DTensor slices: the norm is reduced over the ranks."""
    from torch.distributed.tensor import DTensor

    if grad_clip is None:
        return None
    if grad_clip_by != "global_norm":
        raise ValueError(f"sharded learners clip by global_norm only, not {grad_clip_by!r}")
    grads = [g for g in gradients_dict.values() if g is not None]
    norm = torch.nn.utils.get_total_norm(grads, 2.0)
    if isinstance(norm, DTensor):
        norm = norm.full_tensor()
    coeff = min(1.0, grad_clip / (float(norm) + 1e-6))
    for g in grads:
        g.mul_(coeff)
    return norm


class UnreadableState(dict):
    """Stands for a sharded learner's state in the driver: reading it raises a clear error."""

    def _refuse(self, *args, **kwargs):
        raise RuntimeError("a sharded learner's state is spread over all learners: use agents.sharded."
                           "gather_lm_weights / save_learners (LearnerGroup.get_state asks one learner only)")

    __getitem__ = get = keys = items = values = __iter__ = _refuse

    def __reduce__(self):  # travels from the learner actor without being read
        return (UnreadableState, ())


class ShardedLearner:
    """Mixin placed before an LMLearner subclass; see the module docstring."""

    _mesh = None
    _weights_loaded = False
    _owns_group = False

    # -- building ------------------------------------------------------------------------------------

    def _sharding(self) -> dict:
        """The ShardedUpdate fields of the update args (fsdp with the defaults when the args have none)."""
        given = self.config.learner_config_dict
        s = {k: given.get(k, v) for k, v in asdict(ShardedUpdate(shard="fsdp")).items()}
        if s["shard"] not in ("fsdp", "hsdp"):
            raise ValueError(f"a sharded learner shards with fsdp or hsdp, not {s['shard']!r}")
        return s

    def _make_module(self):
        """Build the module on the meta device, shard its LM (and value head), then allocate the slices."""
        import torch.distributed as dist
        from ray.rllib.core.learner.learner import Learner

        from model.sharding import device_mesh

        if not dist.is_initialized():  # num_learners=0: a one-rank group of our own, ended by shutdown()
            dist.init_process_group("nccl" if self._device.type == "cuda" else "gloo", store=dist.HashStore(),
                                    rank=0, world_size=1)
            self._owns_group = True
        s = self._sharding()
        self._mesh = device_mesh(s["shard"], dist.get_world_size(), self._device.type, s["shard_group"])
        with torch.device("meta"):
            module = Learner._make_module(self)  # not TorchLearner's: it would copy meta tensors to the device
        for m in module.values():
            self._shard(m.lm, m)
            # RLlib enters `no_sync()` (a DDP API) on every module when num_learners > 1; FSDP has nothing
            # to suppress there (the backward pass is over by then).
            m.no_sync = contextlib.nullcontext
        return module

    def _shard(self, lm, holder=None) -> None:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        from model.sharding import materialise, shard_model

        s = self._sharding()
        shard_model(lm, self._mesh, mixed_precision=s["mixed_precision"], cpu_offload=s["cpu_offload"],
                    activation_checkpointing=s["activation_checkpointing"])
        if holder is not None and holder.value_head is not None:  # its gradients must be averaged too
            fully_shard(holder.value_head, mesh=self._mesh, mp_policy=MixedPrecisionPolicy())
            holder.value_head.to_empty(device=self._device)
            with torch.no_grad():
                for p in holder.value_head.parameters():
                    p.zero_()  # values start at 0, as agents/train_rl.py's head does
        materialise(lm, "cpu" if s["cpu_offload"] else self._device)

    def shutdown(self) -> None:
        super().shutdown()
        if self._owns_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
            self._owns_group = False

    def _make_modules_ddp_if_necessary(self) -> None:
        """FSDP averages the gradients itself: no DDP wrapper."""

    @staticmethod
    def _get_clip_function() -> Callable:
        return clip_sharded_gradients

    def snapshot_reference(self) -> None:
        """A frozen copy of the current LM for KL-to-start, sharded the same way (a copy of each slice)."""
        from transformers import AutoModelForCausalLM

        lm = self.module[self._module_id].lm
        with torch.device("meta"):
            ref = AutoModelForCausalLM.from_config(lm.config)
        self._shard(ref)
        with torch.no_grad():
            for p_ref, p in zip(ref.parameters(), lm.parameters()):
                p_ref.to_local().copy_(p.detach().to_local())
        self._ref = ref.eval().requires_grad_(False)

    # -- weights and state (each called on every learner through foreach_learner) ---------------------

    def load_full_weights(self, weights: dict[str, Any]) -> None:
        """Set weights from a full state dict (`lm.*`, `value_head.*`, numpy or tensors); keys absent stay."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        module = self.module[self._module_id]
        known = {k for k, _ in module.named_parameters()}
        full = {k: torch.as_tensor(np.asarray(v)) for k, v in weights.items() if k in known}
        missing = {k for k in known if k.startswith("lm.")} - set(full)
        if missing and not self._weights_loaded:  # the slices hold uninitialised memory until the first load
            raise ValueError(f"the first weights must cover the whole LM; missing e.g. {sorted(missing)[0]}")
        set_model_state_dict(module, full, options=StateDictOptions(full_state_dict=True, strict=False))
        self._weights_loaded = True

    def load_pretrained_weights(self, path: str) -> None:
        from model.sharding import load_pretrained

        load_pretrained(path, self.module[self._module_id].lm)
        self._weights_loaded = True

    def full_weights(self) -> dict[str, np.ndarray]:
        """The whole module's weights on rank 0 (every learner gathers; the others get {})."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        sd = get_model_state_dict(self.module[self._module_id],
                                  options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return {k: v.float().numpy() for k, v in sd.items()}

    def publish(self, version: int, send: Callable) -> int:
        from model.weight_stream import publish_weights

        return publish_weights(self.module[self._module_id].lm, version, send)

    def save_sharded(self, path: str) -> None:
        from model.sharding import save_sharded

        save_sharded(path, self.module[self._module_id], self.get_optimizer(self._module_id))

    def load_sharded(self, path: str) -> None:
        from model.sharding import load_sharded

        load_sharded(path, self.module[self._module_id], self.get_optimizer(self._module_id))
        self._weights_loaded = True

    def get_state(self, *args, **kwargs):
        """What LearnerGroup.get_state / get_weights (one learner only) get: a state that refuses to be read.
        Raising here instead would make RLlib take this learner out of service and hang the next collective."""
        from ray.rllib.core import COMPONENT_RL_MODULE

        return {COMPONENT_RL_MODULE: UnreadableState()}

    def set_state(self, state: dict) -> None:
        """LearnerGroup.set_weights lands here on every learner: full weights in, slices kept."""
        from ray.rllib.core import COMPONENT_RL_MODULE

        extra = set(state) - {COMPONENT_RL_MODULE}
        if extra:
            raise RuntimeError(f"sharded learners restore {sorted(extra)} with agents.sharded.load_learners")
        self.load_full_weights(state[COMPONENT_RL_MODULE][self._module_id])

    def update(self, *args, **kwargs):
        if not self._weights_loaded:
            raise RuntimeError("the sharded learner has no weights yet: set_lm_weights or load_lm_weights first")
        return super().update(*args, **kwargs)


class ShardedGRPOLearner(ShardedLearner, GRPOLearner):
    """GRPOLearner (agents/grpo.py) with the LM sharded by FSDP2."""


class ShardedPPOLearner(ShardedLearner, PPOLearner):
    """PPOLearner (agents/ppo.py) with the LM and value head sharded by FSDP2."""


SHARDED_LEARNERS = {GRPOLearner: ShardedGRPOLearner, PPOLearner: ShardedPPOLearner}


# --- the driver's side: every call reaches every learner ---------------------------------------------------

def on_every_learner(learner_group, func: Callable) -> list:
    """`func(learner)` on every learner at once (collectives need them all); its results, or its first error
    raised here (`foreach_learner` itself hands errors back as values)."""
    results = []
    for result in learner_group.foreach_learner(func, healthy_only=False):
        if not result.ok:
            raise result.get()
        results.append(result.get())
    return results


def set_lm_weights(learner_group, weights: dict[str, Any]) -> None:
    """Load `lm.*` / `value_head.*` weights (the policy layout) into every learner's slices."""
    on_every_learner(learner_group, lambda learner, w=weights: learner.load_full_weights(w))


def load_lm_weights(learner_group, path: str | Path) -> None:
    """Every learner reads its slices of the LM from a `save_pretrained` directory (no full copy anywhere)."""
    on_every_learner(learner_group, lambda learner, p=str(path): learner.load_pretrained_weights(p))


def gather_lm_weights(learner_group) -> dict[str, np.ndarray]:
    """The whole module's weights in the driver, as `agents.lm_module.get_lm_weights` gives them (for
    in-process rollout workers and small models; a generation server takes `publish_lm_weights`)."""
    return next(r for r in on_every_learner(learner_group, lambda learner: learner.full_weights()) if r)


def publish_lm_weights(learner_group, version: int, send: Callable) -> None:
    """Stream the LM unit by unit to `send` (called in learner 0's process, e.g. an HTTP post to the
    server); see model/weight_stream.py."""
    on_every_learner(learner_group, lambda learner, v=version, f=send: learner.publish(v, f))


def save_learners(learner_group, path: str | Path) -> None:
    """A DCP checkpoint of the learners (weights and Adam state; every learner writes its slices)."""
    on_every_learner(learner_group, lambda learner, p=str(path): learner.save_sharded(p))


def load_learners(learner_group, path: str | Path) -> None:
    """Restore `save_learners`' checkpoint, on any number of learners."""
    on_every_learner(learner_group, lambda learner, p=str(path): learner.load_sharded(p))
