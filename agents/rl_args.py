"""The settings of an RL run, and its `cwm train rl` flags made from them (no torch or Ray imported here, so
that `cwm --help` stays fast).

As in cleanrl, each setting is a dataclass field with one default and a docstring, and the flags come from
the fields (model/train_args.py). The objects travel whole: `RLArgs` to `RLRun`, its `update` (a GRPOArgs or
PPOArgs, by `algo`) to the learners as their config and to `prepare_batch`.
"""
from __future__ import annotations

import argparse
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from cwm_envs.errors import UsageError
from model.train_args import (
    ShardArgs,
    add_flag,
    add_flags,
    field_default,
    field_docs,
    flag,
    from_flags,
    show_default,
)


@dataclass
class UpdateArgs:
    """Settings both learners share (GRPOArgs and PPOArgs add their own)."""

    lr: float = 1e-4
    """Adam learning rate (after warm-up); on the SFT'd ~1M-parameter preset 2e-4 and 5e-4 first rise, then fall"""
    warmup_updates: int = 10
    """learning-rate warm-up, in updates (Adam's first full-size steps wreck an SFT'd policy; see lr_schedule)"""
    eps_low: float = 0.2
    """lower clip: the ratio of a token with negative advantage is not pushed below 1 - eps_low"""
    eps_high: float = 0.25
    """upper clip (clip-higher): a token with positive advantage may grow up to 1 + eps_high"""
    kl_coef: float = 0.0
    """weight of a k3 KL penalty to the starting policy (CWM uses none)"""
    minibatches: int = 2
    """optimizer steps per epoch; with more than one, later minibatches are off-policy and clipping acts"""
    epochs: int = 1
    """passes over the batch per update"""
    grad_clip: float = 1.0
    """global-norm gradient clip"""
    max_new_tokens: int = 48
    """tokens the policy samples per turn; also the per-row token count of the constant loss normaliser"""
    temperature: float = 1.0
    """sampling temperature (the learner's log-probs use the same one)"""
    loss_rows: int = 0
    """rows in the constant loss normaliser (loss_rows x max_new_tokens) of each optimizer step; 0: the samples
    an update draws / minibatches (a learner used alone: the minibatch's rows), so skipped groups shrink the step"""
    kl_rows: int = 16
    """rows per minibatch on which the KL-to-start metric is measured (all rows when kl_coef > 0)"""

    def __post_init__(self):
        if min(self.minibatches, self.epochs, self.max_new_tokens) < 1 or not self.temperature > 0:
            raise UsageError("--minibatches, --epochs and --max-new-tokens must be at least 1, --temperature above 0")


@dataclass
class GRPOArgs(UpdateArgs):
    """Settings of the GRPO update (agents/grpo.py)."""

    std_normalise: bool = False
    """divide advantages by the group's reward std (the original GRPO; CWM does not)"""


@dataclass
class PPOArgs(UpdateArgs):
    """Settings of the PPO update (agents/ppo.py)."""

    eps_high: float = 0.2
    """policy ratio clip above 1 (symmetric clipping, as in PPO)"""
    gamma: float = 1.0
    """discount per sampled token (1: the episode's reward counts fully at every token)"""
    gae_lambda: float = 0.95
    """GAE's bias/variance trade-off"""
    vf_coef: float = 0.5
    """weight of the value loss"""
    vf_clip: float = 0.2
    """clip of the value change per update (0: off)"""
    whiten: bool = True
    """normalise advantages to mean 0, std 1 over the batch's policy tokens"""


ALGOS: dict[str, type[UpdateArgs]] = {"grpo": GRPOArgs, "ppo": PPOArgs}


@dataclass
class RLArgs(ShardArgs):
    """One RL run (`cwm train rl`); each field, and each field of `update`, has a flag of the same name.

    The sharding fields (ShardArgs: --shard, --shard-group, --activation-checkpointing, --cpu-offload) are the
    learners': `--shard fsdp --num-learners N` runs each update through N FSDP2 learners (agents/sharded.py)."""

    out: Path
    """run directory: model, metrics.jsonl, reward.png, checkpoints/ (a rerun resumes from the newest)"""
    env: str = "cwm/Math-v0"
    """registered env id"""
    env_kwargs: dict = field(default_factory=dict)
    """keyword arguments of gymnasium.make for training, e.g. {"source": "generated"}"""
    eval_env_kwargs: dict | None = None
    """keyword arguments of gymnasium.make for held-out evaluation (default: env_kwargs)"""
    model: str = "cwm-micro"
    """a model directory (save_pretrained: model + tokenizer) or a preset name (fresh weights)"""
    algo: Literal["grpo", "ppo"] = "grpo"
    """the learner: grpo, or ppo (value head + GAE); decides the type of `update`"""
    update: UpdateArgs | None = None
    """the learner's settings (GRPOArgs or PPOArgs, by algo); None: the algo's defaults"""
    workers: int = 1
    """rollout actors (Ray)"""
    group: int = 8
    """samples per task (the GRPO group)"""
    tasks: int = 32
    """tasks per update"""
    steps: int = 100
    """updates in total (a resumed run counts those it already did)"""
    minutes: float | None = None
    """wall-clock budget of the training loop in total (whichever of steps and minutes ends first)"""
    seed: int = 0
    """seed of fresh weights, task draws and sampling"""
    policy: str = "hf"
    """who samples the rollouts: hf (each worker holds a replica of --model, the default), hf:DIR (the same,
    DIR being --model), serve (one `cwm serve` per Ray node that the workers share; the learner's weights are
    pushed to it after each update), or, for evaluation-only rollouts (--steps 0), any other spec of the
    policy grammar: openai:URL (an external OpenAI-compatible server), oracle, wrong, noisy:P"""
    mode: Literal["sync", "async"] = "sync"
    """sync (each batch sampled with the newest weights), or async (rollouts never stop: weights land between
    turns, the learner takes the first groups to finish)"""
    max_staleness: int = 1
    """async: admission control: no episode starts more than this many versions before the update that trains
    on it (finished work is never discarded)"""
    env_threads: int = 1
    """env steps a rollout worker runs at once (envs that wait: sandboxes, containers); the async stream uses
    at least 4"""
    env_mix: dict = field(default_factory=dict)
    """more envs sampled in training beside --env (which has weight 1): {ENV_ID: {"weight": W, "kwargs": {...},
    "resources": {...}}}, e.g. {"cwm/SWE-v0": {"weight": 0.5}}; each env's workers are their own --workers"""
    num_learners: int = 0
    """0: learner in the driver; N: N learner actors (data-parallel copies, or the ranks the model is sharded
    over with --shard fsdp/hsdp)"""
    mixed_precision: bool = False
    """--shard fsdp/hsdp: bf16 compute with fp32 master weights and gradient reduction (for GPUs)"""
    address: str | None = None
    """Ray cluster address (default: start a local Ray); the project's code and CWM_* settings are shipped to
    its nodes, which need Ray and the dependencies but not this package (docs/cluster.md)"""
    num_cpus: int | None = None
    """CPUs of the local Ray (default: all)"""
    docker_resource: str = "docker"
    """custom Ray resource of the nodes that run Docker envs (`ray start --resources='{"docker": 8}'`): workers of
    cwm/SWE-v0 (or an env with sandbox="docker") ask for docker_slots units of it, text envs go anywhere"""
    docker_slots: int = 2
    """episodes (so containers) a Docker env's worker runs at once, and the units of docker_resource it holds:
    a node declaring N units runs at most N of this run's containers"""
    learner_resources: dict = field(default_factory=dict)
    """custom Ray resources of each learner actor (--num-learners N), e.g. {"learner": 1} to keep the learners on
    the nodes started with that resource, apart from the env nodes"""
    worker_retries: int = 2
    """times a share of a batch whose rollout worker died (its node lost) is sampled again on a fresh worker"""
    top_p: float = 1.0
    """nucleus sampling threshold (1: off)"""
    max_turns: int | None = None
    """policy turns per episode before the worker cuts it (default: the env's own limit, e.g. SWE-v0's 128;
    128 for an env without one)"""
    max_context: int | None = None
    """tokens of an episode in all (prompt, turns, env replies) before the worker cuts it; a turn may take only
    what is left (default: the model's context length)"""
    max_episode_tokens: int | None = None
    """policy tokens per episode, over all its turns, before the worker cuts it (default: no limit)"""
    on_cut: Literal["fail", "drop"] = "fail"
    """an episode the worker cut (turn, context or token budget): fail (trained on with the env's failure
    reward, -1 under CWM's scheme) or drop (left out of the update and counted)"""
    eval_tasks: int = 0
    """held-out tasks evaluated (sampled and greedy) before training and at the end"""
    eval_every: int = 0
    """also evaluate every N updates (0: only before and after)"""
    save_every: int = 0
    """checkpoint every N updates (0: at the end only)"""
    keep_checkpoints: int = 2
    """checkpoints kept in out/checkpoints"""
    resume: bool = True
    """resume from the newest checkpoint in out (--no-resume: start afresh)"""
    log_trajectories: int = 4
    """episodes of each update decoded into trajectories.jsonl for `cwm view` (0: none)"""
    progress: bool | None = None
    """progress bar (default: when stderr is a terminal)"""
    torch_threads: int | None = None
    """torch threads of the learner in this process (default: torch's; tiny models on a busy CPU: 1 is fastest);
    rollout workers use one each"""

    def __post_init__(self):
        if self.algo not in ALGOS:
            raise UsageError(f"--algo must be one of {', '.join(ALGOS)}, not {self.algo!r}")
        if self.update is None:
            self.update = ALGOS[self.algo]()
        elif type(self.update) is not ALGOS[self.algo]:
            raise ValueError(f"algo {self.algo!r} takes {ALGOS[self.algo].__name__}, not {type(self.update).__name__}")
        if self.log_trajectories < 0:
            raise UsageError("--log-trajectories must be 0 or more")
        if min(self.group, self.tasks, self.workers) < 1 or self.steps < 0:
            raise UsageError("--group, --tasks and --workers must be at least 1, --steps at least 0")
        for name in ("max_turns", "max_context", "max_episode_tokens"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
        if self.max_staleness < 0:
            raise UsageError("--max-staleness must be 0 or more")
        if self.shard == "ddp" and (self.activation_checkpointing or self.cpu_offload or self.mixed_precision
                                    or self.shard_group):  # the unsharded learner would ignore them
            raise UsageError("--activation-checkpointing, --cpu-offload, --mixed-precision and --shard-group "
                             "apply to sharded learners: give --shard fsdp or hsdp")
        kind = policy_kind(self.policy)
        if self.policy.startswith("hf:"):  # hf:DIR names the model the workers sample and the learner trains
            given = self.policy[3:]
            if self.model not in (RLArgs.model, given):
                raise UsageError(f"--policy {self.policy} and --model {self.model} name different models")
            self.model = given
        if kind not in TRAINABLE and self.steps:
            raise UsageError(f"--policy {self.policy} cannot be trained (the learner cannot update it): give "
                             "--steps 0 for evaluation-only rollouts, or --policy hf / serve")
        if kind == "serve" and self.algo == "ppo":
            raise UsageError("--policy serve samples no values: PPO needs the in-process policy (--policy hf)")
        if self.algo == "grpo" and self.group < 2:
            raise UsageError("GRPO needs --group >= 2 (advantages are relative to the group)")
        if self.docker_slots < 1 or self.worker_retries < 0:
            raise UsageError("--docker-slots must be at least 1 and --worker-retries at least 0")
        for env_id, entry in self.env_mix.items():
            if not isinstance(entry, dict) or set(entry) - {"weight", "kwargs", "resources"}:
                raise UsageError(f"--env-mix {env_id}: give an object with weight, kwargs and resources, not {entry!r}")
            weight = entry.get("weight", 1.0)
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
                raise UsageError(f"--env-mix {env_id}: weight must be a number above 0, not {weight!r}")
            for key in ("kwargs", "resources"):
                if not isinstance(entry.get(key, {}), dict):
                    raise UsageError(f"--env-mix {env_id}: {key} must be a JSON object")


TRAINABLE = ("hf", "serve")


def policy_kind(spec: str) -> str:
    """`hf`, `serve`, or a kind of the policy grammar (agents/policies.py), checked.

    >>> policy_kind("hf"), policy_kind("hf:runs/sft"), policy_kind("serve"), policy_kind("noisy:0.5")
    ('hf', 'hf', 'serve', 'noisy')
    """
    if spec in ("hf", "serve"):
        return spec
    from agents.policies import parse_spec

    return parse_spec(spec)[0]


# --- command line -----------------------------------------------------------------------------------------

def add_rl_flags(parser) -> None:
    """The flags of RLArgs, then one flag per field of the algos' update settings; its help gives each algo's
    default, or says which algo has the setting."""
    add_flags(parser, RLArgs, skip=("update",))
    group = parser.add_argument_group("update settings (RLArgs.update: GRPOArgs or PPOArgs, by --algo)")
    shared, docs = field_docs(UpdateArgs), {algo: field_docs(cls) for algo, cls in ALGOS.items()}
    defaults: dict[str, dict[str, Any]] = {}  # field -> {algo: its default}
    for algo, cls in ALGOS.items():
        for f in fields(cls):
            defaults.setdefault(f.name, {})[algo] = field_default(f)
    for name, by_algo in defaults.items():
        owner = next(iter(by_algo))
        shown = {algo: show_default(value) for algo, value in by_algo.items()}
        if len(shown) < len(ALGOS):
            note = f" ({' and '.join(shown)} only; default: {' / '.join(shown.values())})"
        elif len(set(shown.values())) == 1:
            note = f" (default: {next(iter(shown.values()))})"
        else:
            note = " (default: " + ", ".join(f"{algo} {value}" for algo, value in shown.items()) + ")"
        help = shared.get(name) or docs[owner][name]
        add_flag(group, name, typing.get_type_hints(ALGOS[owner])[name], help + note)


def rl_args_from(ns: argparse.Namespace) -> RLArgs:
    """RLArgs from the parsed flags: the algo's update settings from the flags given, the rest defaults."""
    algo = getattr(ns, "algo", RLArgs.algo)
    own = {f.name for f in fields(ALGOS[algo])}
    for other, cls in ALGOS.items():
        for f in fields(cls):
            if f.name not in own and hasattr(ns, f.name):
                raise UsageError(f"{flag(f.name)} is a setting of --algo {other}, not of --algo {algo}")
    return from_flags(RLArgs, ns, update=from_flags(ALGOS[algo], ns))
