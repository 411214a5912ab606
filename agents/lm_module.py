"""The causal LM as an RLlib RLModule, the packing of trajectories into a train batch, and the LearnerGroup.

Our learners (GRPO, PPO) are RLlib `TorchLearner` subclasses driven by a `LearnerGroup`, so
`num_learners > 0` gives data-parallel (DDP) updates on a Ray cluster with no change to the loss code.
Sampling does not go through RLlib's EnvRunners (they cannot carry text, and an LM samples a whole turn at a
time); our Ray rollout workers (agents/rollout.py) produce `Trajectory` objects and `pack()` turns them into
the padded arrays the learner reads.
"""
from __future__ import annotations

import copy
import math
from dataclasses import asdict
from typing import Any, Sequence

import gymnasium
import numpy as np
import torch
from ray.rllib.core.learner.torch.torch_learner import TorchLearner
from ray.rllib.core.rl_module.torch.torch_rl_module import TorchRLModule

from agents.rl_args import UpdateArgs
from agents.trajectory import Trajectory

MODULE_ID = "default_policy"  # RLlib's DEFAULT_MODULE_ID (single-agent)


def k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(pi || ref) per sampled token: exp(ref - logp) - (ref - logp) - 1 >= 0."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


class LMLearner(TorchLearner):
    """What the GRPO and PPO learners share: Adam under the registered lr schedule, the loss normaliser, a
    frozen copy of the starting LM for KL-to-start (a metric, and a loss term when kl_coef > 0), metrics."""

    _ref = None

    def configure_optimizers_for_module(self, module_id, config=None):
        module = self._module[module_id]
        params = self.get_parameters(module)
        optimizer = torch.optim.Adam(params, lr=1e-3)  # the registered schedule sets the rate
        self.register_optimizer(module_id=module_id, optimizer=optimizer, params=params, lr_or_lr_schedule=config.lr)

    def snapshot_reference(self) -> None:
        self._ref = copy.deepcopy(self.module[self._module_id].unwrapped().lm).eval().requires_grad_(False)

    @property
    def _module_id(self) -> str:
        return next(iter(self.module.keys()))

    @staticmethod
    def normaliser(settings: dict, rows: int, config) -> float:
        """loss_rows x max_new_tokens per optimizer step; each of N data-parallel learners sees 1/N of the rows
        and DDP averages gradients, so each divides by 1/N of it."""
        return (settings["loss_rows"] or rows) * settings["max_new_tokens"] / max(1, config.num_learners)

    def kl_to_start(self, batch, fwd_out, mask: torch.Tensor, settings: dict, normaliser: float,
                    metrics: dict) -> torch.Tensor | float:
        """Put KL-to-start (k3, on `kl_rows` rows; all with kl_coef > 0) in `metrics`; return its loss term."""
        rows = mask.shape[0]
        kl_rows = rows if settings["kl_coef"] > 0 else min(rows, settings["kl_rows"])
        if self._ref is None or kl_rows <= 0:
            return 0.0
        T = fwd_out["T"]
        ids, attn = batch["input_ids"][:kl_rows, :T], batch["attention_mask"][:kl_rows, :T]
        with torch.no_grad():
            logits = self._ref(input_ids=ids, attention_mask=attn).logits[:, :-1].float() / settings["temperature"]
            ref_logp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
        m = mask[:kl_rows]
        kl = k3(fwd_out["logp"][:kl_rows], ref_logp) * m
        metrics["kl_to_start"] = kl.detach().sum() / m.sum().clamp(min=1)
        return settings["kl_coef"] * kl.sum() / normaliser if settings["kl_coef"] > 0 else 0.0

    def log_metrics(self, module_id, metrics: dict) -> None:
        for key, value in metrics.items():
            self.metrics.log_value((module_id, key), float(value), window=1)


class LMModule(TorchRLModule):
    """A transformers causal LM (`lm`) with an optional value head, whose train pass returns token log-probs.

    `model_config`: {"config": a transformers PretrainedConfig, "value_head": bool, "temperature": float}.
    The spaces are nominal (token ids in, a token out); RLlib only needs them to exist.
    """

    def setup(self):
        from transformers import AutoModelForCausalLM

        cfg = self.model_config["config"]
        self.lm = AutoModelForCausalLM.from_config(cfg)
        self.value_head = torch.nn.Linear(cfg.hidden_size, 1) if self.model_config.get("value_head") else None
        self.temperature = float(self.model_config.get("temperature", 1.0))

    def _forward(self, batch, **kwargs):
        raise NotImplementedError("LMModule samples through agents.policy.LMPolicy, not RLlib EnvRunners")

    def _forward_train(self, batch: dict[str, torch.Tensor], **kwargs) -> dict[str, torch.Tensor]:
        """Log-probs of the policy's tokens under `softmax(logits / T)`, their entropy, and values (if a head).

        Outputs are (B, T-1), position t scoring token t+1, zero where `token_mask` is 0. Rows are right-padded;
        the pass is trimmed to the longest real row of this minibatch, and the LM head runs only where the
        policy sampled (prompt and env positions cost the trunk, not the vocabulary projection). This assumes
        logits = lm_head(last hidden state), true of CWM and the Llama family.
        """
        T = int(batch["attention_mask"].sum(1).max())
        ids, attn = batch["input_ids"][:, :T], batch["attention_mask"][:, :T]
        hidden = self.lm.get_decoder()(input_ids=ids, attention_mask=attn).last_hidden_state[:, :-1]  # (B, T-1, H)
        sel = batch["token_mask"][:, 1:T] > 0
        logits = self.lm.get_output_embeddings()(hidden[sel]).float() / self.temperature  # (N, V)
        logp_all = torch.log_softmax(logits, dim=-1)
        logp = torch.zeros(sel.shape, dtype=logp_all.dtype, device=logp_all.device)
        logp[sel] = logp_all.gather(-1, ids[:, 1:][sel].unsqueeze(-1)).squeeze(-1)
        entropy = torch.zeros_like(logp, requires_grad=False)
        with torch.no_grad():
            entropy[sel] = -(logp_all.exp() * logp_all).sum(-1)
        fwd = {"logp": logp, "entropy": entropy, "T": T}
        if self.value_head is not None:
            fwd["values"] = self.value_head(hidden.float()).squeeze(-1)  # V(state before token t+1)
        return fwd

    def lm_weights(self) -> dict[str, torch.Tensor]:
        return {f"lm.{k}": v for k, v in self.lm.state_dict().items()}


def nominal_spaces(vocab_size: int) -> tuple[gymnasium.Space, gymnasium.Space]:
    """The observation and action spaces RLlib's module spec asks for (token ids; the LM reads them itself)."""
    return (gymnasium.spaces.Box(0, vocab_size - 1, shape=(1,), dtype=np.int64),
            gymnasium.spaces.Discrete(vocab_size))


def pack(trajs: Sequence[Trajectory], advantages: Sequence[Any], *, multiple: int = 1,
         extra: dict[str, Sequence[Any]] | None = None) -> dict[str, np.ndarray]:
    """Right-pad trajectories into arrays aligned with `input_ids` (B, T).

    `token_mask` is 1 where the policy sampled the token (env and prompt tokens are 0), `old_logp` the
    sampler's log-probs. `advantages` is one float per trajectory (GRPO) or one list per token (PPO).
    Rows are padded to a multiple of `multiple` with all-zero masks: with a token-sum loss and a constant
    normaliser such rows change nothing, and equal-sized minibatches/shards keep RLlib's iterator exact.
    `extra` adds per-token float arrays (e.g. "returns", "old_values").
    """
    n = len(trajs)
    B = max(multiple, math.ceil(n / multiple) * multiple)
    T = max(len(t.ids) for t in trajs)
    batch = {
        "input_ids": np.zeros((B, T), dtype=np.int64),
        "attention_mask": np.zeros((B, T), dtype=np.int64),
        "token_mask": np.zeros((B, T), dtype=np.float32),
        "old_logp": np.zeros((B, T), dtype=np.float32),
    }
    per_token_adv = n > 0 and not np.isscalar(advantages[0])
    batch["advantages"] = np.zeros((B, T) if per_token_adv else (B,), dtype=np.float32)
    for key in extra or {}:
        batch[key] = np.zeros((B, T), dtype=np.float32)
    for i, t in enumerate(trajs):
        L = len(t.ids)
        batch["input_ids"][i, :L] = t.ids
        batch["attention_mask"][i, :L] = 1
        batch["token_mask"][i, :L] = t.policy_mask
        batch["old_logp"][i, :L] = t.logprobs
        if per_token_adv:
            batch["advantages"][i, :L] = advantages[i]
        else:
            batch["advantages"][i] = advantages[i]
        for key, rows in (extra or {}).items():
            batch[key][i, :L] = rows[i]
    for i in range(n, B):  # padding rows: one real token so the forward pass has something to read
        batch["attention_mask"][i, 0] = 1
    return batch


def train_batch(arrays: dict[str, np.ndarray]):
    """The MultiAgentBatch a LearnerGroup takes (it converts numpy to tensors only in this form)."""
    from ray.rllib.policy.sample_batch import MultiAgentBatch, SampleBatch

    rows = len(arrays["input_ids"])
    return MultiAgentBatch({MODULE_ID: SampleBatch(arrays)}, env_steps=rows)


def update_learners(learner_group, arrays: dict[str, np.ndarray], *, minibatches: int, epochs: int,
                    updates_done: int = 0) -> dict:
    """One update on packed arrays: each learner takes its shard in `minibatches` steps per epoch.

    Returns the learner metrics averaged over learners. `arrays` rows must divide by learners x minibatches
    (`pack(..., multiple=...)`), or RLlib's cyclic iterator would repeat rows. `updates_done` counts the updates
    before this one: the learning-rate schedule (see `lr_schedule`) runs update k at its value for k. RLlib sets
    the rate for the next update after this one from the clock it is given, so it gets `updates_done + 1`
    (given `updates_done`, every update would run one step behind the schedule).
    """
    from ray.rllib.utils.metrics import NUM_ENV_STEPS_SAMPLED_LIFETIME
    from ray.rllib.utils.metrics.metrics_logger import MetricsLogger

    shards = max(1, len(learner_group))
    rows = len(arrays["input_ids"])
    if rows % (shards * minibatches):
        raise ValueError(f"{rows} rows do not split into {shards} learners x {minibatches} minibatches")
    results = learner_group.update(batch=train_batch(arrays), minibatch_size=rows // shards // minibatches,
                                   num_epochs=epochs, shuffle_batch_per_epoch=False,
                                   timesteps={NUM_ENV_STEPS_SAMPLED_LIFETIME: updates_done + 1})
    per_learner = [r.get(MODULE_ID, {}) for r in MetricsLogger.peek_results(results)]
    keys = {k for r in per_learner for k, v in r.items() if isinstance(v, (int, float, np.number))}
    return {k: float(np.mean([r[k] for r in per_learner if k in r])) for k in keys}


def lr_schedule(lr: float, warmup_updates: int) -> float | list:
    """RLlib's piecewise-linear schedule from lr / warmup_updates to lr over the first updates.

    Adam's first steps move every weight by about the learning rate whatever the gradient's size; on a policy
    already fit by SFT, whose gradients are small and noisy, a full first step wrecks it (we measured held-out
    accuracy 0.51 -> 0.13 after one update at 5e-4). Warming up avoids that.
    """
    if warmup_updates <= 1:
        return lr
    return [[0, lr / warmup_updates], [warmup_updates, lr]]


def build_learner_group(learner_class, policy_config, update: UpdateArgs, *, num_learners: int = 0,
                        value_head: bool = False, seed: int | None = None, resources_per_learner: dict | None = None):
    """A `LearnerGroup` of `learner_class` over an `LMModule` built from a transformers config.

    `update` (GRPOArgs or PPOArgs) travels whole: its lr and warm-up become RLlib's lr schedule, its grad clip
    and temperature configure the group and the module, and all of it reaches the learner as
    `config.learner_config_dict`. num_learners=0: one learner in this process; N>0: N Ray actors with DDP (gloo
    on CPU), the batch split between them.
    """
    from ray.rllib.algorithms.algorithm_config import AlgorithmConfig
    from ray.rllib.core.learner.learner_group import LearnerGroup
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    obs_space, act_space = nominal_spaces(policy_config.vocab_size)
    spec = RLModuleSpec(module_class=LMModule, observation_space=obs_space, action_space=act_space,
                        model_config={"config": policy_config, "value_head": value_head,
                                      "temperature": update.temperature})
    config = (
        AlgorithmConfig()
        .framework("torch")
        .rl_module(rl_module_spec=spec)
        .training(lr=lr_schedule(update.lr, update.warmup_updates), grad_clip=update.grad_clip,
                  grad_clip_by="global_norm")
        .learners(num_learners=num_learners, num_cpus_per_learner=1, learner_class=learner_class,
                  learner_config_dict=asdict(update),
                  custom_resources_per_learner=resources_per_learner or {})
        .debugging(seed=seed)
    )
    return LearnerGroup(config=config, module_spec=spec)


def set_lm_weights(learner_group, weights: dict[str, Any]) -> None:
    """Load `lm.*` / `value_head.*` weights (the policy layout) into every learner's module."""
    current = learner_group.get_weights()[MODULE_ID]
    state = {k: (weights[k] if k in weights else v) for k, v in current.items()}
    learner_group.set_weights({MODULE_ID: state})


def get_lm_weights(learner_group) -> dict[str, np.ndarray]:
    """The LM module's weights from a learner group (the policy layout rollout workers load)."""
    return learner_group.get_weights()[MODULE_ID]
