"""PPO with a value head and GAE over the tokens the policy sampled, as an RLlib `TorchLearner`.

The MDP is token-level: the state is the prefix, the action the next sampled token, the env's reward for a
turn arrives on that turn's last token, and env tokens are transparent (the next state after a turn is the
prefix extended by the env reply, whose value the head estimates at the next sampled token). The value head
is a linear layer on the LM's last hidden state, sharing the trunk; the sampler returns its estimates, so
GAE needs no extra forward pass.

Deviations from cleanrl's ppo.py: the loss is a token sum over a constant normaliser (as for GRPO), no
entropy bonus (the token entropy is logged, not trained on), and advantages are whitened over the batch.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from agents.grpo import grpo_token_loss
from agents.lm_module import LMLearner, pack
from agents.rl_args import PPOArgs
from agents.trajectory import Trajectory


def gae(rewards: Sequence[float], values: Sequence[float], gamma: float, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """Generalised advantage estimates and returns for one episode; the state after the last step is terminal.

    >>> adv, ret = gae([0.0, 1.0], [0.0, 0.0], 1.0, 1.0)
    >>> adv.tolist(), ret.tolist()
    ([1.0, 1.0], [1.0, 1.0])
    """
    n = len(rewards)
    adv = np.zeros(n, dtype=np.float64)
    last = 0.0
    for t in reversed(range(n)):
        next_v = values[t + 1] if t + 1 < n else 0.0
        delta = rewards[t] + gamma * next_v - values[t]
        last = delta + gamma * lam * last
        adv[t] = last
    return adv.astype(np.float32), (adv + np.asarray(values, dtype=np.float64)).astype(np.float32)


def token_rewards(traj: Trajectory) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the policy's tokens and the reward each receives (a turn's reward on its last token)."""
    idx = np.flatnonzero(np.asarray(traj.policy_mask))
    r = np.zeros(len(idx), dtype=np.float32)
    where = {pos: k for k, pos in enumerate(idx)}
    for turn_end, reward in zip(traj.turn_ends, traj.rewards):
        if turn_end in where:
            r[where[turn_end]] += reward
    return idx, r


def prepare_batch(trajs: Sequence[Trajectory], args: PPOArgs, multiple: int) -> tuple[dict | None, dict]:
    """Per-token advantages and returns (GAE on the sampler's values), packed for the learner."""
    ok = [t for t in trajs if t.ok and t.num_policy_tokens > 0]
    if not ok:
        return None, {"rows": 0}
    if ok[0].values is None:
        raise ValueError("PPO needs the sampler's values: build the LMPolicy with a value head")
    advs, rets, vals = [], [], []
    for t in ok:
        idx, r = token_rewards(t)
        v = np.asarray(t.values, dtype=np.float32)[idx]
        a, ret = gae(r, v, args.gamma, args.gae_lambda)
        full_a, full_r = np.zeros(len(t.ids), np.float32), np.zeros(len(t.ids), np.float32)
        full_a[idx], full_r[idx] = a, ret
        advs.append(full_a), rets.append(full_r), vals.append(np.asarray(t.values, dtype=np.float32))
    if args.whiten:
        flat = np.concatenate([a[np.asarray(t.policy_mask) > 0] for a, t in zip(advs, ok)])
        mu, sd = flat.mean(), flat.std() + 1e-8
        advs = [np.where(np.asarray(t.policy_mask) > 0, (a - mu) / sd, 0.0).astype(np.float32) for a, t in zip(advs, ok)]
    arrays = pack(ok, advs, multiple=multiple, extra={"returns": rets, "old_values": vals})
    return arrays, {"rows": len(ok)}


class PPOLearner(LMLearner):
    """RLlib Learner for clipped PPO with a clipped value loss on `LMModule(value_head=True)`."""

    def compute_loss_for_module(self, *, module_id, config, batch, fwd_out):
        s = config.learner_config_dict
        T = fwd_out["T"]
        logp, values = fwd_out["logp"], fwd_out["values"]
        # Targets are tokens 1..T-1; the arrays are aligned with input_ids, so read them from index 1.
        mask = batch["token_mask"][:, 1:T]
        old_logp, adv = batch["old_logp"][:, 1:T], batch["advantages"][:, 1:T]
        returns, old_v = batch["returns"][:, 1:T], batch["old_values"][:, 1:T]
        normaliser = self.normaliser(s, mask.shape[0], config)

        pg, clipped = grpo_token_loss(logp, old_logp, adv, mask, s["eps_low"], s["eps_high"])
        v_loss = (values - returns) ** 2
        if s["vf_clip"] > 0:
            v_clipped = old_v + torch.clamp(values - old_v, -s["vf_clip"], s["vf_clip"])
            v_loss = torch.maximum(v_loss, (v_clipped - returns) ** 2)
        loss = (pg.sum() + s["vf_coef"] * 0.5 * (v_loss * mask).sum()) / normaliser

        n_tok = mask.sum().clamp(min=1)
        metrics = {
            "policy_loss": pg.detach().sum() / normaliser,
            "vf_loss": (v_loss.detach() * mask).sum() / n_tok,
            "clip_frac": clipped.float().sum() / n_tok,
            "entropy": (fwd_out["entropy"] * mask).sum() / n_tok,
            "value_mean": (values.detach() * mask).sum() / n_tok,
            "tokens": mask.sum(),
        }
        loss = loss + self.kl_to_start(batch, fwd_out, mask, s, normaliser, metrics)
        self.log_metrics(module_id, metrics)
        return loss

