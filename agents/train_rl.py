"""The RL stage: `cwm train rl --env cwm/Math-v0 --model CKPT|preset --algo grpo|ppo --workers N --group G`.

One update: the rollout pool (Ray actors, agents/rollout.py) samples `--tasks` groups of `--group` episodes
with the current weights; the learner (an RLlib LearnerGroup, agents/grpo.py or agents/ppo.py) takes one
update on them; the new weights go back to the workers through the object store, tagged with the version.

Layout of `--out DIR` (as the other stages): the final model and tokenizer (`from_pretrained(DIR)`),
`stage.json`, `metrics.jsonl` (one row per update: reward mean/std, pass rate, KL to the start, entropy,
tokens/s, staleness, ...), `reward.png`, and `checkpoints/step-NNNNNN/` (model, tokenizer,
`trainer_state.pt` with the learner's optimizer state); a rerun with the same `--out` resumes from the newest.
"""
from __future__ import annotations

import json
import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cwm_envs.errors import UsageError

EVAL_SEED_BASE = 2 * 10**9  # reset seeds of held-out evaluation tasks (training draws seeds below 2**31 - 1)


@dataclass
class RLArgs:
    """One RL run; each field has a `cwm train rl` flag of the same name."""

    out: Path
    env: str = "cwm/Math-v0"
    env_kwargs: dict = field(default_factory=dict)
    """keyword arguments of gymnasium.make for training (JSON on the command line)"""
    eval_env_kwargs: dict | None = None
    """keyword arguments for held-out evaluation (default: env_kwargs)"""
    model: str = "cwm-micro"
    """a model directory (save_pretrained: model + tokenizer) or a preset name (fresh weights)"""
    algo: str = "grpo"
    workers: int = 1
    """rollout actors"""
    group: int = 8
    """samples per task (the GRPO group)"""
    tasks: int = 32
    """tasks per update"""
    steps: int = 100
    """updates in total (a resumed run counts those it already did)"""
    minutes: float | None = None
    """wall-clock budget of the training loop (whichever of steps and minutes ends first)"""
    seed: int = 0
    mode: str = "sync"
    """sync, or async (sample the next batch while the learner updates)"""
    max_staleness: int = 1
    """async: drop trajectories sampled more than this many versions ago"""
    num_learners: int = 0
    """0: learner in the driver; N: N data-parallel learner actors"""
    address: str | None = None
    """Ray cluster address (default: start a local Ray)"""
    num_cpus: int | None = None
    """CPUs of the local Ray (default: all)"""
    max_new_tokens: int = 48
    temperature: float = 1.0
    top_p: float = 1.0
    max_turns: int = 16
    lr: float = 1e-4
    warmup_updates: int = 10
    """learning-rate warm-up, in updates (Adam's first full-size steps wreck an SFT'd policy)"""
    minibatches: int = 2
    epochs: int = 1
    kl_coef: float = 0.0
    std_normalise: bool = False
    eval_tasks: int = 0
    """held-out tasks evaluated (sampled and greedy) before training and at the end"""
    eval_every: int = 0
    """also evaluate every N updates (0: only before and after)"""
    save_every: int = 0
    """checkpoint every N updates (0: at the end only)"""
    keep_checkpoints: int = 2
    resume: bool = True
    progress: bool | None = None
    """progress bar (default: when stderr is a terminal)"""
    torch_threads: int | None = None
    """torch threads of the learner in this process (default: torch's); rollout workers use one each"""


# --- model ------------------------------------------------------------------------------------------------

def load_policy(spec: str, *, seed: int, value_head: bool, **sampling):
    """An LMPolicy from a model directory, or a fresh preset with a tokenizer trained on the env's text."""
    import torch

    from agents.policy import LMPolicy

    path = Path(spec)
    head = None
    if (path / "config.json").is_file():
        from model.config import load_model
        from model.tokenizer import load_tokenizer

        model, tok = load_model(path), load_tokenizer(path)
        if value_head:
            head = _value_head(model.config.hidden_size)
            if (path / "value_head.pt").is_file():
                head.load_state_dict(torch.load(path / "value_head.pt"))
    else:
        from model.config import PRESETS, TOKENIZER_VOCAB, build_model
        from model.tokenizer import train_tokenizer

        if spec not in PRESETS:
            raise UsageError(f"--model {spec!r} is neither a model directory (no config.json) nor a preset "
                             f"({', '.join(PRESETS)})")
        from cwm_envs.chat import REASONING_SYSTEM_PROMPT

        tok = train_tokenizer([REASONING_SYSTEM_PROMPT, "0123456789 +-*/=()\\boxed{} </think> What is"] * 4,
                              vocab_size=max(300, min(TOKENIZER_VOCAB.get(spec, 1024), 512)))
        torch.manual_seed(seed)
        model = build_model(spec, vocab_size=len(tok))
        head = _value_head(model.config.hidden_size) if value_head else None
    return LMPolicy(model, tok, value_head=head, **sampling)


def _value_head(hidden: int):
    import torch

    head = torch.nn.Linear(hidden, 1)
    torch.nn.init.zeros_(head.weight), torch.nn.init.zeros_(head.bias)  # values start at 0
    return head


# --- the run ----------------------------------------------------------------------------------------------

class RLRun:
    """Driver of one run: rollout pool + learner group + metrics and checkpoints."""

    def __init__(self, args: RLArgs):
        import torch

        from agents import grpo, ppo
        from agents.lm_module import build_learner_group, lr_schedule, set_lm_weights
        from agents.rollout import EnvSpec, RolloutPool, init_ray
        from model.train_loop import resume_point

        if args.algo not in ("grpo", "ppo"):
            raise UsageError(f"--algo must be grpo or ppo, not {args.algo!r}")
        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        _check_env(args.env, args.env_kwargs)
        self.ckpt = resume_point(self.out) if args.resume else None
        if args.torch_threads:
            torch.set_num_threads(args.torch_threads)
        torch.manual_seed(args.seed)
        self.policy = load_policy(str(self.ckpt or args.model), seed=args.seed, value_head=args.algo == "ppo",
                                  temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens)
        common = dict(lr=args.lr, minibatches=args.minibatches, epochs=args.epochs, max_new_tokens=args.max_new_tokens,
                      temperature=args.temperature, kl_coef=args.kl_coef,
                      loss_rows=max(1, args.tasks * args.group // args.minibatches), warmup_updates=args.warmup_updates)
        if args.algo == "grpo":
            self.algo, self.algo_args = grpo, grpo.GRPOArgs(std_normalise=args.std_normalise, **common)
            learner_cls, settings = grpo.GRPOLearner, grpo.grpo_settings(self.algo_args)
        else:
            self.algo, self.algo_args = ppo, ppo.PPOArgs(**common)
            learner_cls, settings = ppo.PPOLearner, ppo.ppo_settings(self.algo_args)

        self.started_ray = init_ray(args.address, args.num_cpus)
        self.learners = build_learner_group(
            learner_cls, self.policy.model.config, lr=lr_schedule(args.lr, self.algo_args.warmup_updates),
            learner_settings=settings,
            num_learners=args.num_learners, value_head=args.algo == "ppo", temperature=args.temperature,
            grad_clip=self.algo_args.grad_clip, seed=args.seed)
        self.step, self.version, self.elapsed = 0, 0, 0.0
        start_weights = self.policy.get_weights()
        if self.ckpt:  # KL is measured to the start of the whole run, not of this resumption
            start_weights = _load_start(self.out / "start", self.policy)
        set_lm_weights(self.learners, start_weights)
        self.learners.foreach_learner(lambda learner: learner.snapshot_reference())
        if self.ckpt:
            self._restore(self.ckpt)
        else:
            self._save_start()
        self.pool = RolloutPool([EnvSpec(args.env, kwargs=args.env_kwargs)], self.policy.spec(),
                                self.policy.get_weights(), version=self.version, num_workers=args.workers,
                                mode=args.mode, max_staleness=args.max_staleness, seed=args.seed,
                                max_turns=args.max_turns)
        if self.ckpt:
            self.pool.rng.bit_generator.state = self._pool_state["rng"]
            self.pool._group = self._pool_state["group"]
        eval_kwargs = args.eval_env_kwargs if args.eval_env_kwargs is not None else args.env_kwargs
        self.eval_pool = self.pool if eval_kwargs == args.env_kwargs else None
        self.eval_env = EnvSpec(args.env, kwargs=eval_kwargs)

    # -- one update ------------------------------------------------------------------------------------

    def update(self) -> dict[str, Any]:
        from agents.lm_module import get_lm_weights, update_learners

        a = self.algo_args
        t0 = time.perf_counter()
        trajs, st = self.pool.sample(self.args.tasks, self.args.group)
        t1 = time.perf_counter()
        stale = [t.staleness(self.version) for t in trajs if t.ok]  # versions behind the weights we update
        multiple = a.minibatches * max(1, self.args.num_learners)
        arrays, info = self.algo.prepare_batch(trajs, a, multiple)
        learner: dict[str, float] = {}
        if arrays is not None:
            learner = update_learners(self.learners, arrays, minibatches=a.minibatches, epochs=a.epochs,
                                      updates_done=self.version)
            self.version += 1
        t2 = time.perf_counter()
        if arrays is not None:
            self.pool.set_weights(get_lm_weights(self.learners), self.version)
        t3 = time.perf_counter()
        self.step += 1

        ok = [t for t in trajs if t.ok]
        rewards = np.array([t.reward for t in ok]) if ok else np.zeros(0)
        row = {
            "step": self.step, "version": self.version,
            "reward_mean": float(rewards.mean()) if len(rewards) else None,
            "reward_std": float(rewards.std()) if len(rewards) else None,
            "pass_rate": float((rewards > 0).mean()) if len(rewards) else None,
            "kl_to_start": learner.get("kl_to_start"), "entropy": learner.get("entropy"),
            "policy_loss": learner.get("policy_loss"), "clip_frac": learner.get("clip_frac"),
            "vf_loss": learner.get("vf_loss"), "grad_norm": learner.get("gradients_default_optimizer_global_norm"),
            "tokens_per_s": st.policy_tokens / max(st.wall_s, 1e-9),
            "env_steps_per_s": st.env_steps / max(st.wall_s, 1e-9),
            "staleness_mean": float(np.mean(stale)) if stale else 0.0, "staleness_max": int(max(stale, default=0)),
            "dropped_stale": st.dropped_stale, "failed": st.failed, "worker_restarts": st.worker_restarts,
            "episodes": len(trajs), "trained_rows": info.get("rows", 0), "skipped_groups": info.get("skipped_groups", 0),
            "sample_s": t1 - t0, "update_s": t2 - t1, "sync_s": t3 - t2,
        }
        return {k: v for k, v in row.items() if v is not None}

    def evaluate(self, tasks: int, greedy: bool) -> dict[str, float]:
        """Held-out tasks (reset seeds from EVAL_SEED_BASE): pass rate, one sample each (or greedy)."""
        pool = self.eval_pool or self._eval_pool()
        trajs, _ = pool.sample(tasks, 1, greedy=greedy, seeds=[EVAL_SEED_BASE + i for i in range(tasks)])
        ok = [t for t in trajs if t.ok]
        return {"pass_rate": sum(t.reward > 0 for t in ok) / max(1, len(ok)),
                "reward_mean": float(np.mean([t.reward for t in ok])) if ok else 0.0, "tasks": len(ok)}

    def _eval_pool(self):
        from agents.rollout import RolloutPool

        self.eval_pool = RolloutPool([self.eval_env], self.policy.spec(), self.policy.get_weights(),
                                     version=self.version, num_workers=self.args.workers, seed=self.args.seed)
        return self.eval_pool

    def sync_eval_pool(self) -> None:
        from agents.lm_module import get_lm_weights

        if self.eval_pool is not None and self.eval_pool is not self.pool:
            self.eval_pool.set_weights(get_lm_weights(self.learners), self.version)

    # -- checkpoints -----------------------------------------------------------------------------------

    def current_policy(self):
        from agents.lm_module import get_lm_weights

        self.policy.set_weights(get_lm_weights(self.learners), self.version)
        return self.policy

    def save_model(self, path: Path) -> None:
        import torch

        policy = self.current_policy()
        policy.model.save_pretrained(path)
        policy.tokenizer.save_pretrained(path)
        if policy.value_head is not None:
            torch.save(policy.value_head.state_dict(), path / "value_head.pt")

    def save_checkpoint(self) -> Path:
        import torch

        from model.train_loop import checkpoints

        root = self.out / "checkpoints"
        final, tmp = root / f"step-{self.step:06d}", root / f".tmp-step-{self.step:06d}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        self.save_model(tmp)
        learner_state = self.learners.get_state()
        torch.save({"step": self.step, "version": self.version, "elapsed": self.elapsed, "learner": learner_state,
                    "pool": {"rng": self.pool.rng.bit_generator.state, "group": self.pool._group},
                    "args": _jsonable(asdict(self.args))}, tmp / "trainer_state.pt")
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in checkpoints(self.out)[: -self.args.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def _restore(self, ckpt: Path) -> None:
        import torch

        state = torch.load(ckpt / "trainer_state.pt", weights_only=False)
        self.learners.set_state(state["learner"])
        self.step, self.version, self.elapsed = state["step"], state["version"], state["elapsed"]
        self._pool_state = state["pool"]

    def _save_start(self) -> None:
        import torch

        start = self.out / "start"
        if not (start / "config.json").is_file():
            self.policy.model.save_pretrained(start)
            if self.policy.value_head is not None:
                torch.save(self.policy.value_head.state_dict(), start / "value_head.pt")

    def close(self) -> None:
        import ray

        for pool in {id(p): p for p in (self.pool, self.eval_pool) if p is not None}.values():
            pool.close()
        self.learners.shutdown()
        if self.started_ray:
            ray.shutdown()


def _load_start(path: Path, policy) -> dict:
    import torch

    from model.config import load_model

    lm = load_model(path)
    weights = {f"lm.{k}": v for k, v in lm.state_dict().items()}
    if (path / "value_head.pt").is_file():
        weights.update({f"value_head.{k}": v for k, v in torch.load(path / "value_head.pt").items()})
    return weights


def _jsonable(d: dict) -> dict:
    return json.loads(json.dumps(d, default=str))


def _check_env(env_id: str, kwargs: dict) -> None:
    """Fail fast, with one line, on an unknown env id or bad kwargs (before starting Ray)."""
    import gymnasium

    import cwm_envs  # noqa: F401

    try:
        gymnasium.make(env_id, **kwargs).close()
    except gymnasium.error.Error as exc:
        raise UsageError(f"cannot make env {env_id!r}: {exc}") from None
    except TypeError as exc:
        raise UsageError(f"bad --env-kwargs for {env_id}: {exc}") from None


def plot_rewards(metrics_path: Path, png: Path, title: str = "") -> None:
    """reward.png: training reward and pass rate per update, held-out pass rates where evaluated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    fig, ax = plt.subplots(figsize=(6, 4))
    train = [r for r in rows if "reward_mean" in r]
    if train:
        ax.plot([r["step"] for r in train], [r["reward_mean"] for r in train], lw=1, label="train reward (mean)")
        ax.plot([r["step"] for r in train], [r["pass_rate"] for r in train], lw=1, label="train pass rate")
    for key, style in (("eval_sampled", "o-"), ("eval_greedy", "s--")):
        pts = [r for r in rows if key in r]
        if pts:
            ax.plot([r["step"] for r in pts], [r[key] for r in pts], style, label=f"held-out {key[5:]} pass rate")
    ax.set_xlabel("update")
    ax.set_ylabel("reward / pass rate")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def run(args: RLArgs) -> dict[str, Any]:
    """Train until `steps` updates or `minutes` of wall clock; returns the stage summary (also stage.json)."""
    from tqdm import tqdm

    rl = RLRun(args)
    metrics = rl.out / "metrics.jsonl"
    if not rl.ckpt and metrics.exists():
        metrics.unlink()
    summary: dict[str, Any] = {"stage": "rl", "args": _jsonable(asdict(args)), "resumed_from": str(rl.ckpt or "")}
    try:
        def record(row: dict) -> None:
            with metrics.open("a") as fh:
                fh.write(json.dumps(row) + "\n")

        def evaluate(tag: str) -> dict:
            rl.sync_eval_pool()
            res = {"step": rl.step, "eval_sampled": rl.evaluate(args.eval_tasks, greedy=False)["pass_rate"],
                   "eval_greedy": rl.evaluate(args.eval_tasks, greedy=True)["pass_rate"]}
            record(res)
            summary[f"eval_{tag}"] = res
            return res

        if args.eval_tasks and not rl.ckpt:
            evaluate("start")
        budget = args.minutes * 60 if args.minutes else math.inf
        show = args.progress if args.progress is not None else sys.stderr.isatty()
        bar = tqdm(total=args.steps, initial=rl.step, desc="rl", disable=not show, dynamic_ncols=True)
        t_start = time.perf_counter() - rl.elapsed
        rows = []
        while rl.step < args.steps and time.perf_counter() - t_start < budget:
            row = rl.update()
            rl.elapsed = time.perf_counter() - t_start
            row["elapsed_s"] = round(rl.elapsed, 2)
            rows.append(row)
            record(row)
            bar.update(1)
            bar.set_postfix(reward=f"{row.get('reward_mean', float('nan')):.3f}",
                            pass_=f"{row.get('pass_rate', float('nan')):.2f}", tok_s=f"{row['tokens_per_s']:.0f}")
            if args.eval_every and args.eval_tasks and rl.step % args.eval_every == 0:
                evaluate(f"step{rl.step}")
            if args.save_every and rl.step % args.save_every == 0:
                rl.save_checkpoint()
        bar.close()
        if args.eval_tasks:
            evaluate("end")
        rl.save_checkpoint()
        rl.save_model(rl.out)
        plot_rewards(metrics, rl.out / "reward.png", title=f"{args.algo} on {args.env}")
        summary.update({
            "steps": rl.step, "version": rl.version, "elapsed_s": round(rl.elapsed, 1),
            "updates_this_run": len(rows),
            "first_reward": rows[0].get("reward_mean") if rows else None,
            "last_reward": rows[-1].get("reward_mean") if rows else None,
            "pool": asdict(rl.pool.stats),
        })
        (rl.out / "stage.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    finally:
        rl.close()
    return summary


# --- command line -----------------------------------------------------------------------------------------

def _json_arg(text: str | None, flag: str) -> dict | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{flag} is not JSON: {exc.msg}") from None
    if not isinstance(value, dict):
        raise UsageError(f"{flag} must be a JSON object")
    return value


def cmd_rl(ns) -> int:
    if ns.steps < 1 or ns.group < 1 or ns.tasks < 1 or ns.workers < 1:
        raise UsageError("--steps, --group, --tasks and --workers must be at least 1")
    if ns.algo == "grpo" and ns.group < 2:
        raise UsageError("GRPO needs --group >= 2 (advantages are relative to the group)")
    args = RLArgs(
        out=Path(ns.out), env=ns.env, env_kwargs=_json_arg(ns.env_kwargs, "--env-kwargs") or {},
        eval_env_kwargs=_json_arg(ns.eval_env_kwargs, "--eval-env-kwargs"), model=ns.model, algo=ns.algo,
        workers=ns.workers, group=ns.group, tasks=ns.tasks, steps=ns.steps, minutes=ns.minutes, seed=ns.seed,
        mode=ns.mode, max_staleness=ns.max_staleness, num_learners=ns.num_learners, address=ns.address,
        num_cpus=ns.num_cpus, max_new_tokens=ns.max_new_tokens, temperature=ns.temperature, top_p=ns.top_p,
        lr=ns.lr, warmup_updates=ns.warmup_updates, minibatches=ns.minibatches, epochs=ns.epochs, kl_coef=ns.kl_coef,
        std_normalise=ns.std_normalise, eval_tasks=ns.eval_tasks, eval_every=ns.eval_every,
        save_every=ns.save_every, resume=not ns.no_resume, torch_threads=ns.torch_threads)
    s = run(args)
    line = (f"rl: {s['steps']} updates in {s['elapsed_s']} s, train reward {s['first_reward']} -> {s['last_reward']}")
    if "eval_end" in s:
        start = s.get("eval_start", {})
        line += (f"; held-out pass rate sampled {start.get('eval_sampled', '?')} -> {s['eval_end']['eval_sampled']}, "
                 f"greedy {start.get('eval_greedy', '?')} -> {s['eval_end']['eval_greedy']}")
    print(line + f" -> {args.out}")
    return 0


def add_parser(train_group) -> None:
    """Add `cwm train rl` to the `cwm train` subcommands."""
    p = train_group.add_parser("rl", help="GRPO or PPO with Ray rollouts in a registered env",
                               description=__doc__.split("\n\n")[0])
    p.add_argument("--env", default="cwm/Math-v0", help="registered env id (default cwm/Math-v0)")
    p.add_argument("--env-kwargs", help='JSON keyword arguments for gymnasium.make, e.g. {"source": "generated"}')
    p.add_argument("--eval-env-kwargs", help="JSON keyword arguments for held-out evaluation (default: --env-kwargs)")
    p.add_argument("--model", default="cwm-micro", help="model directory (save_pretrained) or preset name")
    p.add_argument("--algo", default="grpo", choices=["grpo", "ppo"])
    p.add_argument("--workers", type=int, default=1, help="rollout workers (Ray actors)")
    p.add_argument("--group", type=int, default=8, help="samples per task (GRPO group)")
    p.add_argument("--tasks", type=int, default=32, help="tasks per update")
    p.add_argument("--steps", type=int, default=100, help="updates in total")
    p.add_argument("--minutes", type=float, help="wall-clock budget of the training loop")
    p.add_argument("--out", required=True, help="run directory (resumes from its newest checkpoint)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mode", default="sync", choices=["sync", "async"])
    p.add_argument("--max-staleness", type=int, default=1, help="async: drop samples older than K versions")
    p.add_argument("--num-learners", type=int, default=0, help="data-parallel learner actors (0: in the driver)")
    p.add_argument("--address", help="Ray cluster address (default: a local Ray)")
    p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray")
    p.add_argument("--max-new-tokens", type=int, default=48, help="tokens per turn")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate after the warm-up")
    p.add_argument("--warmup-updates", type=int, default=10, help="learning-rate warm-up in updates")
    p.add_argument("--minibatches", type=int, default=2, help="optimizer steps per epoch")
    p.add_argument("--epochs", type=int, default=1, help="passes over each batch")
    p.add_argument("--kl-coef", type=float, default=0.0, help="KL penalty to the start (default none, as CWM)")
    p.add_argument("--std-normalise", action="store_true", help="divide GRPO advantages by the group std")
    p.add_argument("--eval-tasks", type=int, default=0, help="held-out tasks evaluated before and after")
    p.add_argument("--eval-every", type=int, default=0, help="also evaluate every N updates")
    p.add_argument("--save-every", type=int, default=0, help="checkpoint every N updates (default: at the end)")
    p.add_argument("--no-resume", action="store_true", help="start afresh even if --out has checkpoints")
    p.add_argument("--torch-threads", type=int, help="learner threads (tiny models on a busy CPU: 1 is fastest)")
    p.set_defaults(func=cmd_rl)
