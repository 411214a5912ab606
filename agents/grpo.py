"""GRPO in the form CWM reports, as an RLlib `TorchLearner`.

Per group of G samples of one task: advantage A_i = R_i - mean(R) (no std division unless asked), the same A
for every token the policy sampled. Loss per token: -min(r A, clip(r, 1 - eps_low, 1 + eps_high) A) with
r = pi(a|s) / pi_old(a|s) (clip-higher: eps_high > eps_low lets unlikely tokens grow), summed over tokens
and divided by a constant (no length normalisation). Groups whose advantages are all zero carry no signal and
are dropped before the update. No KL term by default; `kl_coef > 0` adds the k3 estimator against the start.

Deviations from the CWM report, for a CPU-sized setting: synchronous by default (the rollout pool has an
async mode with a staleness bound), and a short per-turn budget. The constant normaliser is
`loss_rows x max_new_tokens` per optimizer step, `loss_rows` being the samples an update draws divided by the
minibatches, so a batch thinned by skipped groups takes a proportionally smaller step.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch

from ray.rllib.core.learner.torch.torch_learner import TorchLearner

from agents.lm_module import pack
from agents.trajectory import Trajectory


@dataclass
class GRPOArgs:
    """Settings of the GRPO update (what `cwm train rl --algo grpo` exposes)."""

    lr: float = 1e-4
    """Adam learning rate (after warm-up); on the SFT'd ~1M-parameter preset 2e-4 and 5e-4 first rise, then fall"""
    eps_low: float = 0.2
    """lower clip: the ratio of a token with negative advantage is not pushed below 1 - eps_low"""
    eps_high: float = 0.25
    """upper clip (clip-higher): a token with positive advantage may grow up to 1 + eps_high"""
    std_normalise: bool = False
    """divide advantages by the group's reward std (the original GRPO; CWM does not)"""
    kl_coef: float = 0.0
    """weight of a k3 KL penalty to the starting policy (CWM uses none)"""
    warmup_updates: int = 10
    """the learning rate ramps up over this many updates (RLlib lr schedule; see lm_module.lr_schedule)"""
    minibatches: int = 2
    """optimizer steps per update; with more than one, later minibatches are off-policy and clipping acts"""
    epochs: int = 1
    """passes over the batch per update"""
    loss_rows: int = 0
    """rows in the constant loss normaliser (loss_rows x max_new_tokens) of each optimizer step; 0: the
    minibatch's rows. The trainer sets samples per update / minibatches, so skipped groups shrink the step."""
    max_new_tokens: int = 64
    """tokens per turn; also the per-row token count in the constant loss normaliser"""
    temperature: float = 1.0
    """sampling temperature (the learner's log-probs use the same one)"""
    grad_clip: float = 1.0
    """global-norm gradient clip"""
    kl_rows: int = 16
    """rows per minibatch on which the KL-to-start metric is measured (all rows when kl_coef > 0)"""


def group_advantages(rewards: Sequence[float], groups: Sequence[int], std_normalise: bool = False) -> np.ndarray:
    """A_i = R_i - mean(R over i's group), optionally / (std + 1e-4).

    >>> group_advantages([1, 0, 1, 1], [0, 0, 1, 1]).tolist()
    [0.5, -0.5, 0.0, 0.0]
    """
    r = np.asarray(rewards, dtype=np.float64)
    g = np.asarray(groups)
    adv = np.zeros_like(r)
    for gid in np.unique(g):
        idx = g == gid
        adv[idx] = r[idx] - r[idx].mean()
        if std_normalise:
            adv[idx] /= r[idx].std() + 1e-4
    return adv.astype(np.float32)


def select_informative(trajs: Sequence[Trajectory], std_normalise: bool = False) -> tuple[list[Trajectory], np.ndarray, int]:
    """Drop failed episodes and zero-advantage groups; return (kept, their advantages, groups skipped)."""
    ok = [t for t in trajs if t.ok]
    adv = group_advantages([t.reward for t in ok], [t.group for t in ok], std_normalise)
    by_group: dict[int, list[int]] = {}
    for i, t in enumerate(ok):
        by_group.setdefault(t.group, []).append(i)
    keep = [i for idx in by_group.values() if np.any(adv[idx] != 0) for i in idx]
    skipped = sum(1 for idx in by_group.values() if not np.any(adv[idx] != 0))
    return [ok[i] for i in keep], adv[keep], skipped


def grpo_token_loss(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor,
                    eps_low: float, eps_high: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped surrogate per token (B, T) and a clipped-token indicator; `adv` broadcasts over tokens.

    >>> l, c = grpo_token_loss(torch.log(torch.tensor([[1.5]])), torch.zeros(1, 1), torch.ones(1, 1), torch.ones(1, 1), 0.2, 0.25)
    >>> round(float(l), 3), bool(c)
    (-1.25, True)
    """
    ratio = torch.exp(logp - old_logp)
    surr = torch.minimum(ratio * adv, torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * adv)
    clipped = ((ratio < 1 - eps_low) & (adv < 0)) | ((ratio > 1 + eps_high) & (adv > 0))
    return -surr * mask, clipped & (mask > 0)


class ReferenceMixin:
    """Keeps a frozen copy of the starting LM for KL-to-start (metric, and the loss when kl_coef > 0)."""

    _ref = None

    def snapshot_reference(self) -> None:
        self._ref = copy.deepcopy(self.module[self._module_id].unwrapped().lm).eval().requires_grad_(False)

    @property
    def _module_id(self) -> str:
        return next(iter(self.module.keys()))

    def _ref_logp(self, batch, T: int, rows: int, temperature: float) -> torch.Tensor | None:
        if self._ref is None or rows <= 0:
            return None
        ids, attn = batch["input_ids"][:rows, :T], batch["attention_mask"][:rows, :T]
        with torch.no_grad():
            logits = self._ref(input_ids=ids, attention_mask=attn).logits[:, :-1].float() / temperature
            return torch.log_softmax(logits, -1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)


def k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(pi || ref) per sampled token: exp(ref - logp) - (ref - logp) - 1 >= 0."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


class GRPOLearner(ReferenceMixin, TorchLearner):
    """RLlib Learner computing the GRPO loss above on batches from `agents.lm_module.pack`."""

    def configure_optimizers_for_module(self, module_id, config=None):
        module = self._module[module_id]
        params = self.get_parameters(module)
        optimizer = torch.optim.Adam(params, lr=1e-3)  # the registered schedule sets the rate
        self.register_optimizer(module_id=module_id, optimizer=optimizer, params=params, lr_or_lr_schedule=config.lr)

    def compute_loss_for_module(self, *, module_id, config, batch, fwd_out):
        s = config.learner_config_dict
        T = fwd_out["T"]
        logp = fwd_out["logp"]
        mask = batch["token_mask"][:, 1:T]
        old_logp = batch["old_logp"][:, 1:T]
        adv = batch["advantages"][:, None]
        rows = mask.shape[0]
        # Each data-parallel learner sees 1/N of the rows; DDP averages gradients, so scale the normaliser.
        normaliser = (s["loss_rows"] or rows) * s["max_new_tokens"] / max(1, config.num_learners)
        token_loss, clipped = grpo_token_loss(logp, old_logp, adv, mask, s["eps_low"], s["eps_high"])
        loss = token_loss.sum() / normaliser

        kl_rows = rows if s["kl_coef"] > 0 else min(rows, s["kl_rows"])
        ref_logp = self._ref_logp(batch, T, kl_rows, s["temperature"])
        n_tok = mask.sum().clamp(min=1)
        metrics = {
            "policy_loss": loss.detach(),
            "clip_frac": clipped.float().sum() / n_tok,
            "ratio_mean": (torch.exp(logp - old_logp).detach() * mask).sum() / n_tok,
            "entropy": (fwd_out["entropy"] * mask).sum() / n_tok,
            "tokens": mask.sum(),
        }
        if ref_logp is not None:
            m = mask[:kl_rows]
            kl = k3(logp[:kl_rows], ref_logp) * m
            metrics["kl_to_start"] = kl.detach().sum() / m.sum().clamp(min=1)
            if s["kl_coef"] > 0:
                loss = loss + s["kl_coef"] * kl.sum() / normaliser
        for key, value in metrics.items():
            self.metrics.log_value((module_id, key), value.item() if torch.is_tensor(value) else value, window=1)
        return loss


def prepare_batch(trajs: Sequence[Trajectory], args: GRPOArgs, multiple: int) -> tuple[dict | None, dict]:
    """Advantages per group, informative groups only, packed for the learner (None when nothing is left)."""
    kept, adv, skipped = select_informative(trajs, args.std_normalise)
    info = {"rows": len(kept), "skipped_groups": skipped}
    return (pack(kept, adv.tolist(), multiple=multiple) if kept else None), info


def grpo_settings(args: GRPOArgs) -> dict:
    """The learner_config_dict the GRPOLearner reads."""
    return asdict(args)
