"""One episode as the learner sees it: the exact token ids, who produced each, and what it earned.

Token-in/token-out: `ids` is the sequence the sampler actually conditioned on and produced, never a
re-tokenisation of the conversation text (re-tokenising can split text differently from how it was sampled,
which silently makes training off-policy). `policy_mask[i]` is 1 where the policy sampled `ids[i]` and 0
for prompt and environment tokens, which the loss must never train on.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Trajectory:
    """An episode: prompt, policy turns and environment replies as one token sequence.

    Lists are aligned with `ids`. `logprobs[i]` is the sampler's log-probability of `ids[i]` at its
    temperature (0.0 where the policy did not sample), `values[i]` the value head's estimate of the state
    before `ids[i]` (PPO only), `versions[i]` the policy version whose weights sampled `ids[i]` (-1 where
    no sampler did): an episode that spans a weight update (async partial rollouts) holds several.
    `rewards` holds one entry per policy turn (the env step it led to); `reward` is their sum. An episode the
    rollout worker cut (`cut`: its turn, context or token budget ran out) is paid the env's failure reward.
    """

    ids: list[int]
    policy_mask: list[int]
    logprobs: list[float]
    rewards: list[float]
    version: int  # the oldest version that sampled a token of it (staleness counts from here)
    env_id: str = ""
    task_id: str = ""
    group: int = -1
    seed: int | None = None  # the reset seed that posed the task (replays the task)
    prompt_len: int = 0
    turn_ends: list[int] = field(default_factory=list)  # index of the last policy token of each turn
    values: list[float] | None = None
    text: str = ""  # the decoded policy turns, for logs and examples
    info: dict[str, Any] = field(default_factory=dict)  # the env's last info (evidence, task id, ...)
    error: str | None = None  # set when the env or worker failed: never trained on, counted apart
    infra: bool = False  # the error is the machinery's (sandbox, Docker, a model server), not the policy's
    versions: list[int] | None = None
    cut: str | None = None  # the worker's budget that ended the episode: max_turns, max_context, max_episode_tokens

    def __post_init__(self):
        n = len(self.ids)
        if not (len(self.policy_mask) == len(self.logprobs) == n):
            raise ValueError(f"misaligned trajectory: {n} ids, {len(self.policy_mask)} mask, {len(self.logprobs)} logprobs")
        for name in ("values", "versions"):
            if getattr(self, name) is not None and len(getattr(self, name)) != n:
                raise ValueError(f"misaligned trajectory: {n} ids, {len(getattr(self, name))} {name}")

    @property
    def reward(self) -> float:
        return float(sum(self.rewards))

    @property
    def num_policy_tokens(self) -> int:
        return int(sum(self.policy_mask))

    @property
    def ok(self) -> bool:
        return self.error is None

    def staleness(self, current_version: int) -> int:
        """How many learner updates happened since the weights that sampled this episode."""
        return current_version - self.version
