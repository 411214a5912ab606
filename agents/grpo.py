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

from typing import Sequence

import numpy as np
import torch

from agents.lm_module import LMLearner, pack
from agents.rl_args import GRPOArgs
from agents.trajectory import Trajectory


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


class GRPOLearner(LMLearner):
    """RLlib Learner computing the GRPO loss above on batches from `agents.lm_module.pack`."""

    def compute_loss_for_module(self, *, module_id, config, batch, fwd_out):
        s = config.learner_config_dict
        T, logp = fwd_out["T"], fwd_out["logp"]
        mask = batch["token_mask"][:, 1:T]
        old_logp = batch["old_logp"][:, 1:T]
        adv = batch["advantages"][:, None]
        normaliser = self.normaliser(s, mask.shape[0], config)
        token_loss, clipped = grpo_token_loss(logp, old_logp, adv, mask, s["eps_low"], s["eps_high"])
        loss = token_loss.sum() / normaliser
        n_tok = mask.sum().clamp(min=1)
        metrics = {
            "policy_loss": loss.detach(),
            "clip_frac": clipped.float().sum() / n_tok,
            "ratio_mean": (torch.exp(logp - old_logp).detach() * mask).sum() / n_tok,
            "entropy": (fwd_out["entropy"] * mask).sum() / n_tok,
            "tokens": mask.sum(),
        }
        loss = loss + self.kl_to_start(batch, fwd_out, mask, s, normaliser, metrics)
        self.log_metrics(module_id, metrics)
        return loss


def prepare_batch(trajs: Sequence[Trajectory], args: GRPOArgs, multiple: int) -> tuple[dict | None, dict]:
    """Advantages per group, informative groups only, packed for the learner (None when nothing is left)."""
    kept, adv, skipped = select_informative(trajs, args.std_normalise)
    info = {"rows": len(kept), "skipped_groups": skipped}
    return (pack(kept, adv.tolist(), multiple=multiple) if kept else None), info

