"""`cwm bench rl learn|trl|scaling`: evidence for the RL stage (Ray rollouts + GRPO on the RLlib Learner API).

- learn: per seed, a ~1M-parameter CWM (`cwm-micro`) with its own tokenizer is warmed up by a short SFT on
  oracle answers to single-digit addition/subtraction (`cwm/Math-v0`, generated, add_sub, difficulty 0), then
  trained with GRPO (`--algo ppo`: PPO with a value head and GAE) through the Ray path until a wall-clock budget. Held-out accuracy (reset seeds never drawn
  in training) is measured before and after: sampled (8 samples per problem), greedy, and pass@8. If pass@8
  does not rise while sampled accuracy does, the gain is sharpening: RL made the model pick, more often, an
  answer it could already produce.
- trl: per seed, the same warm model, env, reward and batch (32 prompts x 8 samples, 2 minibatches, lr 1e-4 after
  a 10-update warm-up, clip 0.2/0.25, no KL, fp32) trained by TRL's GRPOTrainer on the CPU, and by ours (Ray
  rollouts included), for the same number of updates: wall time per update and held-out accuracy side by side,
  and the mean over seeds of ours - TRL with its noise band (see the notes above `trl_run`).
- scaling: rollout throughput (env steps/s, tokens/s) with 1 and 2 Ray workers, and Ray's overhead against
  the same rollouts run in one process.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from benchmarks.report import pass_at_k, write_report

# torch, Ray, transformers and TRL are imported inside the functions that use them: `cwm` imports this module
# to build its parsers, and `cwm --help` should not wait for them.

MATH = "cwm/Math-v0"
# Single-digit addition/subtraction. Thinking off and the short prompt ("Wrap your answer in $\boxed{}$.") keep
# a prompt near 20 tokens instead of ~80 with the reasoning system prompt: on a 2-core CPU every update's
# sampling and learner pass scale with it. The reward is the env's own (+1/-1, exactly one \boxed{}).
EASY = {"source": "generated", "kinds": ["add_sub"], "difficulty": 0, "think": False, "prompt_style": "direct"}
NOISE_BAND = 0.035  # one standard error of an accuracy near 0.5 on 200 problems: sqrt(0.25 / 200)


# --- the warm start: tokenizer + cwm-micro + short SFT ----------------------------------------------------

def env_texts(n: int, seed: int = 0) -> list[str]:
    """Prompts and oracle replies of the easy math stream (what the tokenizer is trained on)."""
    import gymnasium

    import cwm_envs  # noqa: F401
    env = gymnasium.make(MATH, **EASY)
    texts = []
    for i in range(n):
        obs, _ = env.reset(seed=seed + i)
        texts += [obs, env.unwrapped.reference_response(env.unwrapped.task)]
    env.close()
    return texts


CALIBRATION_SEED_BASE = 3 * 10**9  # reset seeds of the problems that decide when the warm start is warm enough


def warm_start(out: Path, seed: int, target: float | None = 0.3, sft_lr: float = 1.5e-3, first: int = 150,
               chunk: int = 10, max_steps: int = 400, quiet: bool = True) -> Path:
    """cwm-micro with a tokenizer trained on the env's text, SFT'd on oracle episodes until its sampled accuracy
    on calibration problems reaches `target` (checked every `chunk` steps after `first`), or for `first`
    steps when `target` is None. Returns the model directory (save_pretrained), the RL stage's start.

    The SFT learning rate is constant after warm-up so that the run can be extended chunk by chunk; how many
    steps a seed needs varies (the accuracy rises steeply once the model starts to add).
    """
    import torch

    from model import sft
    from model.config import TOKENIZER_VOCAB, build_model
    from model.tokenizer import train_tokenizer
    from model.train_loop import TrainArgs

    out = Path(out)
    done = out / "sft" / "warm_start.json"
    if done.is_file():
        return out / "sft"
    if not (out / "base" / "config.json").is_file():
        tok = train_tokenizer(env_texts(400), vocab_size=TOKENIZER_VOCAB["cwm-micro"])
        torch.manual_seed(seed)
        model = build_model("cwm-micro", vocab_size=len(tok))
        model.save_pretrained(out / "base")
        tok.save_pretrained(out / "base")
    steps, history = first, []
    while True:
        args = TrainArgs(out=out / "sft", max_steps=steps, batch_size=16, seq_len=256, lr=sft_lr, min_lr_ratio=1.0,
                         warmup_steps=5, eval_every=10**9, eval_rows=0, save_every=10**9, keep_checkpoints=1,
                         log_every=10, seed=seed, resume=True)
        with _quiet(quiet):
            sft.run(args, str(out / "base"), MATH, episodes=1000, env_kwargs=EASY, eval_episodes=0)
        if target is None:
            break
        acc = calibration_accuracy(out / "sft")
        history.append({"steps": steps, "sampled": acc})
        if acc >= target or steps >= max_steps:
            break
        steps += chunk
    done.write_text(json.dumps({"steps": steps, "target": target, "history": history}) + "\n")
    return out / "sft"


def calibration_accuracy(model_dir: Path, problems: int = 100, samples: int = 4) -> float:
    """Sampled accuracy on calibration problems, in this process (no Ray needed for a few hundred episodes)."""
    from agents.policy import LMPolicy
    from agents.rollout import EnvSpec, RolloutWorker, draw_requests

    policy = LMPolicy.from_pretrained(model_dir, max_new_tokens=32)
    worker = RolloutWorker([EnvSpec(MATH, kwargs=dict(EASY))], policy.spec(), policy.get_weights())
    seeds = [CALIBRATION_SEED_BASE + i for i in range(problems)]
    trajs, _ = worker.run(draw_requests(None, [1.0], problems, samples, seeds=seeds, env=0), sample_seed=0)
    worker.close()
    return float(np.mean([t.ok and t.reward > 0 for t in trajs]))


class _quiet:
    """Silence a stage's own prints (the benchmark prints its own lines)."""

    def __init__(self, on: bool):
        self.on = on

    def __enter__(self):
        if self.on:
            import io

            self.saved, sys.stdout = sys.stdout, io.StringIO()

    def __exit__(self, *exc):
        if self.on:
            sys.stdout = self.saved


# --- held-out evaluation ------------------------------------------------------------------------------------

def heldout(pool, problems: int, samples: int = 8) -> dict[str, float]:
    """Accuracy on held-out problems (reset seeds from EVAL_SEED_BASE): sampled (mean over `samples` draws),
    greedy (one argmax answer), and pass@`samples`."""
    return heldout_detail(pool, problems, samples)[0]


def heldout_detail(pool, problems: int, samples: int = 8) -> tuple[dict[str, float], dict[str, list[float]]]:
    """`heldout`, plus each problem's sampled and greedy accuracy in reset-seed order (for paired comparisons
    of two models on the same problems)."""
    from agents.train_rl import EVAL_SEED_BASE

    seeds = [EVAL_SEED_BASE + i for i in range(problems)]
    sampled, _ = pool.sample(problems, samples, seeds=seeds)
    greedy, _ = pool.sample(problems, 1, seeds=seeds, greedy=True)
    by_task: dict[int, list[bool]] = {}
    for t in sampled:
        by_task.setdefault(t.seed, []).append(t.ok and t.reward > 0)
    greedy_by_task = {t.seed: float(t.ok and t.reward > 0) for t in greedy}
    per_problem = {"sampled": [float(np.mean(by_task[s])) for s in sorted(by_task)],
                   "greedy": [greedy_by_task[s] for s in sorted(greedy_by_task)]}
    summary = {
        "sampled": float(np.mean([c for cs in by_task.values() for c in cs])),
        "greedy": float(np.mean(per_problem["greedy"])),
        f"pass@{samples}": float(np.mean([pass_at_k(len(cs), sum(cs), samples) for cs in by_task.values()])),
    }
    return summary, per_problem


# --- learn ----------------------------------------------------------------------------------------------------

LR = 1e-4  # 5e-4 (the probe's) and 2e-4 rise, then fall within 60 updates here; 1e-4 keeps rising (see notes)


def rl_args(out: Path, model: Path, seed: int, minutes: float, steps: int, workers: int, threads: int = 1,
            lr: float = LR, algo: str = "grpo"):
    from agents.train_rl import RLArgs

    return RLArgs(out=out, env=MATH, env_kwargs=dict(EASY), model=str(model), algo=algo, workers=workers,
                  group=8, tasks=32, steps=steps, minutes=minutes, seed=seed, lr=lr, minibatches=2,
                  max_new_tokens=32, resume=False, num_cpus=2, torch_threads=threads)


def learn_one(out: Path, seed: int, minutes: float, workers: int, problems: int, sft_target: float,
              max_steps: int = 10**6, lr: float = LR, algo: str = "grpo") -> dict[str, Any]:
    """Warm start + GRPO or PPO (Ray path) on one seed; held-out accuracy before and after."""
    from agents.train_rl import RLRun

    t0 = time.perf_counter()
    model_dir = warm_start(out / "warm", seed, target=sft_target)
    t_sft = time.perf_counter() - t0
    sft_steps = json.loads((model_dir / "warm_start.json").read_text())["steps"]
    rl = RLRun(rl_args(out / "rl", model_dir, seed, minutes, max_steps, workers, lr=lr, algo=algo))
    try:
        before = heldout(rl.pool, problems)
        curve = []
        t1 = time.perf_counter()
        while rl.step < max_steps and time.perf_counter() - t1 < minutes * 60:
            row = rl.update()
            row["elapsed_s"] = round(time.perf_counter() - t1, 1)
            curve.append(row)
            print(f"  seed {seed} update {row['step']:3d}: train reward {row.get('reward_mean', float('nan')):+.3f} "
                  f"pass {row.get('pass_rate', float('nan')):.2f}  ({row['elapsed_s']:.0f} s)", flush=True)
        t_rl = time.perf_counter() - t1
        after = heldout(rl.pool, problems)
        rl.save_model(out / "rl")
    finally:
        rl.close()
    first = np.mean([r["pass_rate"] for r in curve[:3]]) if curve else float("nan")
    last = np.mean([r["pass_rate"] for r in curve[-3:]]) if curve else float("nan")
    return {
        "seed": seed, "sft_steps": sft_steps, "sft_s": round(t_sft, 1), "rl_s": round(t_rl, 1), "total_s": round(time.perf_counter() - t0, 1),
        "updates": len(curve), "s_per_update": round(t_rl / max(1, len(curve)), 2),
        "train_pass_first3": round(float(first), 3), "train_pass_last3": round(float(last), 3),
        **{f"before_{k}": round(v, 3) for k, v in before.items()},
        **{f"after_{k}": round(v, 3) for k, v in after.items()},
        "curve": [{k: r.get(k) for k in ("step", "reward_mean", "pass_rate", "kl_to_start", "entropy", "elapsed_s")}
                  for r in curve],
    }


def cmd_learn(args) -> int:
    import torch

    torch.set_num_threads(args.torch_threads)
    out = Path(args.out)
    runs = []
    for seed in args.seeds:
        print(f"seed {seed}: warm start (SFT to ~{args.sft_target} sampled accuracy), then {args.algo.upper()} for "
              f"{args.minutes} min", flush=True)
        runs.append(learn_one(out / f"seed{seed}", seed, args.minutes, args.workers, args.problems, args.sft_target,
                              args.max_steps, args.lr, args.algo))
        r = runs[-1]
        print(f"seed {seed}: held-out sampled {r['before_sampled']:.3f} -> {r['after_sampled']:.3f}, greedy "
              f"{r['before_greedy']:.3f} -> {r['after_greedy']:.3f}, pass@8 {r['before_pass@8']:.3f} -> "
              f"{r['after_pass@8']:.3f}; {r['updates']} updates in {r['rl_s']:.0f} s", flush=True)
    ok = [r["after_sampled"] >= 0.55 and r["after_greedy"] - r["before_greedy"] >= 0.10 for r in runs]
    gain = [r["after_sampled"] - r["before_sampled"] for r in runs]
    within = [r["after_sampled"] <= r["before_pass@8"] + NOISE_BAND for r in runs]
    summary = {
        "seeds": len(runs), "target_met_all_seeds": all(ok), "target_met": sum(ok),
        "sampled_before_mean": round(float(np.mean([r["before_sampled"] for r in runs])), 3),
        "sampled_after_mean": round(float(np.mean([r["after_sampled"] for r in runs])), 3),
        "greedy_before_mean": round(float(np.mean([r["before_greedy"] for r in runs])), 3),
        "greedy_after_mean": round(float(np.mean([r["after_greedy"] for r in runs])), 3),
        "pass@8_before_mean": round(float(np.mean([r["before_pass@8"] for r in runs])), 3),
        "pass@8_after_mean": round(float(np.mean([r["after_pass@8"] for r in runs])), 3),
        "noise_band": f"+-{NOISE_BAND * 100:.1f} points ({args.problems} problems)",
        "sharpening": ("all of the sampled gain stays within the SFT model's pass@8 on every seed" if all(within) else
                       f"on {len(runs) - sum(within)} seed(s) sampled accuracy after RL exceeds the SFT model's pass@8"),
        "mean_sampled_gain": round(float(np.mean(gain)), 3),
        "baseline": "the SFT model before RL, evaluated in the same run on the same held-out problems",
        "minutes_budget_rl": args.minutes, "max_wall_s_per_seed": max(r["total_s"] for r in runs),
    }
    table = [{k: v for k, v in r.items() if k != "curve"} for r in runs]
    write_report(out, f"{args.algo.upper()} learning on single-digit add/sub (cwm-micro, Ray rollouts)", summary,
                 details={"runs": runs, "setup": {"env": MATH, "env_kwargs": EASY, "tasks": 32, "group": 8,
                                                 "minibatches": 2, "lr": args.lr, "warmup_updates": 10, "algo": args.algo,
                                                 "workers": args.workers}},
                 tables={"per seed": table})
    _plot_curves(runs, out / "reward.png")
    print(f"report: {out / 'report.md'}")
    return 0


def _plot_curves(runs: list[dict], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in runs:
        ax.plot([c["elapsed_s"] for c in r["curve"]], [c["pass_rate"] for c in r["curve"]], lw=1,
                label=f"seed {r['seed']} (train pass rate)")
    ax.set_xlabel("seconds of GRPO")
    ax.set_ylabel("pass rate")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


# --- TRL comparison ---------------------------------------------------------------------------------------
#
# Both trainers run the same GRPO update on the same warm model, env, reward and batch: 32 prompts x 8 samples
# at temperature 1 (no top-k/top-p), 32 new tokens, 2 optimizer steps per update, Adam(0.9, 0.999, 1e-8) with
# no weight decay, lr 1e-4 after a 10-update linear warm-up, global-norm clip 1.0, clip 0.2/0.25, no KL, fp32.
# Differences that remain, none of which changes the update beyond a per-step scalar or noise:
# - loss normaliser: TRL's "dapo" divides each step's token sum by half the generation batch's completion
#   tokens; ours by a constant (128 rows x 32 tokens). Tokens weigh the same within a step either way; under
#   Adam only the step-to-step scale differs (TRL's gradients are ~32/mean-length times larger, so its clip
#   at 1.0 acts more often: both pre-clip norms are reported).
# - old log-probs: TRL recomputes them with an extra forward pass; ours uses the sampler's (equal in fp32).
# - minibatches: TRL shuffles the 256 rows before splitting them in two; ours keeps groups whole, and drops
#   zero-advantage groups (TRL keeps them; their advantage is 0, so they add no gradient).
# - warm-up: TRL's per optimizer step (0, 0.05, ..., 0.95 of lr, then lr); ours per update (0.1, 0.19, ...,
#   0.91 of lr for both steps of an update, then lr).
# - stops: TRL also stops at <|eom_id|>; ours at <|eot_id|> and <|end_of_text|> (the model never emits eom).
# - problems: both draw fresh generated problems (TRL from reset seeds seed*1e6+i, ours from the pool's rng).
# - processes: ours samples in 2 Ray worker processes (1 thread each) beside a 1-thread learner; TRL runs in
#   one process with 1 thread (its generation has no multi-process CPU path).

def _reward_fn(tokenizer):
    """TRL reward function: the env's own scoring (CWM's +1/-1 with format rules) of the text our rollouts hand
    the env (the sampled ids decoded with special tokens, a trailing end-of-turn cut, as LMPolicy.action_text),
    rather than TRL's `completions` (decoded with special tokens dropped)."""
    import gymnasium

    import cwm_envs  # noqa: F401
    from cwm_envs.chat import EOS, EOT
    from cwm_envs.tasks import Task

    env = gymnasium.make(MATH, **EASY).unwrapped

    def text(ids) -> str:
        t = tokenizer.decode(list(ids), skip_special_tokens=False)
        for end in (EOT, EOS):
            if t.endswith(end):
                return t[: -len(end)]
        return t

    def math_reward(prompts, completions, completion_ids, answer, **_):
        return [float(env.judge(Task(id="t", prompt="", answer=a), text(ids)).value)
                for ids, a in zip(completion_ids, answer)]

    return math_reward


def trl_run(model_dir: Path, out: Path, updates: int, seed: int, lr: float = LR) -> dict[str, Any]:
    """TRL GRPOTrainer on CPU with our setting; seconds per update (generation + 2 optimizer steps)."""
    import gymnasium
    from transformers import TrainerCallback

    try:
        from datasets import Dataset
        from trl import GRPOConfig, GRPOTrainer
    except ImportError:
        from cwm_envs.errors import UsageError

        raise UsageError("TRL is not installed: pip install -e '.[bench]'") from None

    import cwm_envs  # noqa: F401
    from model.config import load_model
    from model.tokenizer import load_tokenizer

    env = gymnasium.make(MATH, **EASY)
    rows = []
    for i in range(32 * updates):
        obs, _ = env.reset(seed=seed * 10**6 + i)
        rows.append({"prompt": obs, "answer": env.unwrapped.task.answer})
    env.close()
    tok, model = load_tokenizer(model_dir), load_model(model_dir)
    config = GRPOConfig(
        output_dir=str(out), use_cpu=True, beta=0.0, loss_type="dapo", scale_rewards="none", num_generations=8,
        per_device_train_batch_size=128, steps_per_generation=2, num_iterations=1, max_completion_length=32,
        max_steps=2 * updates, temperature=1.0, top_p=1.0, top_k=0, learning_rate=lr, weight_decay=0.0,
        # the same warm-up as ours (10 updates = 20 optimizer steps): without it both wreck the SFT policy
        lr_scheduler_type="constant_with_warmup", warmup_steps=20,
        epsilon=0.2, epsilon_high=0.25, max_grad_norm=1.0, logging_steps=1, report_to="none", save_strategy="no",
        seed=seed, shuffle_dataset=False, disable_tqdm=True, dataloader_num_workers=0,
        # GRPOConfig defaults to bf16 autocast and gradient checkpointing (even on a CPU); ours trains and samples
        # in fp32 without recomputation, so TRL gets the same (it is also what a 1M-parameter model wants)
        bf16=False, gradient_checkpointing=False,
    )

    class Clock(TrainerCallback):
        def __init__(self):
            self.stamps, self.load = [], []

        def on_step_end(self, args, state, control, **kw):
            self.stamps.append(time.perf_counter())
            self.load.append(os.getloadavg()[0])

    clock = Clock()
    trainer = GRPOTrainer(model=model, reward_funcs=_reward_fn(tok), args=config,
                          train_dataset=Dataset.from_list(rows), processing_class=tok, callbacks=[clock])
    t0 = time.perf_counter()
    with _quiet(True):  # TRL prints a dict per optimizer step when its progress bar is off
        trainer.train()
    total = time.perf_counter() - t0
    trainer.save_model(str(out / "model"))
    tok.save_pretrained(str(out / "model"))
    ends = clock.stamps[1::2]  # two optimizer steps per generation batch = one update
    per = np.diff([t0] + ends)
    logs = trainer.state.log_history
    rewards = [h["reward"] for h in logs if "reward" in h]  # logged once per generation batch
    grad_norms = [h["grad_norm"] for h in logs if "grad_norm" in h]  # pre-clip, per optimizer step
    return {"updates": len(ends), "s_per_update": round(float(np.median(per)), 3),
            "s_per_update_mean": round(total / max(1, len(ends)), 3), "load_1min_mean": round(float(np.mean(clock.load)), 2),
            "grad_norm_median": round(float(np.median(grad_norms)), 3) if grad_norms else None,
            "clipped_steps": sum(g > 1.0 for g in grad_norms),
            "train_reward_first": rewards[0] if rewards else None, "train_reward_last": rewards[-1] if rewards else None,
            "rewards": [round(float(r), 4) for r in rewards], "s_per_update_all": [round(float(x), 3) for x in per],
            "model": str(out / "model")}


def ours_run(model_dir: Path, out: Path, updates: int, seed: int, workers: int, lr: float = LR) -> dict[str, Any]:
    """Our Ray rollouts + RLlib learner for `updates` updates; seconds per update (sampling + learner + weight
    sync)."""
    from agents.train_rl import RLRun

    rl = RLRun(rl_args(out, model_dir, seed, None, updates, workers, lr=lr))
    try:
        rows, load = [], []
        t0 = time.perf_counter()
        while rl.step < updates:
            rows.append(rl.update())
            load.append(os.getloadavg()[0])
        total = time.perf_counter() - t0
        rl.save_model(out / "model")
    finally:
        rl.close()
    per = [r["sample_s"] + r["update_s"] + r["sync_s"] for r in rows]
    grad_norms = [r["grad_norm"] for r in rows if "grad_norm" in r]  # pre-clip, mean of the update's 2 steps
    return {"updates": len(rows), "s_per_update": round(float(np.median(per)), 3),
            "s_per_update_mean": round(total / max(1, len(rows)), 3), "load_1min_mean": round(float(np.mean(load)), 2),
            "sample_s_median": round(float(np.median([r["sample_s"] for r in rows])), 3),
            "learner_s_median": round(float(np.median([r["update_s"] for r in rows])), 3),
            "grad_norm_median": round(float(np.median(grad_norms)), 3) if grad_norms else None,
            "train_reward_first": rows[0].get("reward_mean"), "train_reward_last": rows[-1].get("reward_mean"),
            "rewards": [round(float(r.get("reward_mean", float("nan"))), 4) for r in rows],
            "s_per_update_all": [round(float(x), 3) for x in per], "model": str(out / "model")}


def eval_models(model_dirs: dict[str, str], problems: int, seed: int) -> dict[str, tuple[dict, dict]]:
    """`heldout_detail` of each model. Each gets a fresh pool with the same seed, so every model answers the same
    problems with the same sampler random streams (a paired comparison)."""
    from agents.policy import LMPolicy
    from agents.rollout import EnvSpec, RolloutPool

    out = {}
    for name, model_dir in model_dirs.items():
        policy = LMPolicy.from_pretrained(model_dir, max_new_tokens=32)
        pool = RolloutPool([EnvSpec(MATH, kwargs=dict(EASY))], policy.spec(), policy.get_weights(), num_workers=2,
                           seed=seed)
        try:
            out[name] = heldout_detail(pool, problems)
        finally:
            pool.close()
    return out


def paired_difference(ours: Sequence[Sequence[float]], base: Sequence[Sequence[float]]) -> dict[str, float]:
    """Mean over seeds of (ours - base) accuracy, with two standard errors of that mean:

    - eval: from each seed's per-problem paired differences, sd / sqrt(problems), combined over seeds as
      sqrt(sum se_s^2) / seeds (how much the same two models could differ on other problems and samples);
    - seeds: sd of the per-seed differences / sqrt(seeds) (run-to-run training noise; needs 2+ seeds).

    `se` is the larger; the band is 2 se (about 95%). Each argument holds one per-problem list per seed.

    >>> r = paired_difference([[1, 1, 0, 1], [1, 0, 1, 1]], [[1, 0, 0, 1], [1, 0, 1, 0]])
    >>> r["mean"], r["per_seed"]
    (0.25, [0.25, 0.25])
    """
    diffs = [np.asarray(a, float) - np.asarray(b, float) for a, b in zip(ours, base)]
    per_seed = [float(d.mean()) for d in diffs]
    se_eval = float(np.sqrt(sum(d.var(ddof=1) / len(d) for d in diffs)) / len(diffs))
    se_seeds = float(np.std(per_seed, ddof=1) / np.sqrt(len(per_seed))) if len(per_seed) > 1 else float("nan")
    se = max(se_eval, se_seeds) if len(per_seed) > 1 else se_eval
    return {"mean": round(float(np.mean(per_seed)), 4), "per_seed": [round(x, 4) for x in per_seed],
            "se_eval": round(se_eval, 4), "se_seeds": round(se_seeds, 4), "band": round(2 * se, 4)}


def _verdict(d: dict) -> str:
    if d["mean"] > d["band"]:
        return "better"
    return "equal (within noise)" if d["mean"] >= -d["band"] else "worse"


def trl_one(out: Path, model_dir: Path, args, seed: int) -> dict[str, Any]:
    """One seed: TRL (no Ray running), then ours (Ray), then the three models on the held-out problems."""
    from agents.rollout import init_ray

    print(f"seed {seed}: TRL GRPOTrainer, {args.updates} updates of 32 prompts x 8 samples on the CPU", flush=True)
    trl = trl_run(model_dir, out / "trl", args.updates, seed, args.lr)
    print(f"  {trl['s_per_update']:.2f} s per update (median), load {trl['load_1min_mean']:.1f}", flush=True)
    print(f"seed {seed}: ours (Ray rollouts, {args.workers} worker(s), RLlib learner), {args.updates} updates",
          flush=True)
    started = init_ray(num_cpus=2)
    try:
        ours = ours_run(model_dir, out / "ours", args.updates, seed, args.workers, args.lr)
        print(f"  {ours['s_per_update']:.2f} s per update (median), load {ours['load_1min_mean']:.1f}", flush=True)
        acc = eval_models({"start": str(model_dir), "ours": ours["model"], "trl": trl["model"]}, args.problems, seed)
    finally:
        if started:
            import ray

            ray.shutdown()
    row = {"seed": seed, "ours_s_per_update": ours["s_per_update"], "trl_s_per_update": trl["s_per_update"],
           "speedup": round(trl["s_per_update"] / ours["s_per_update"], 2),
           "ours_load": ours["load_1min_mean"], "trl_load": trl["load_1min_mean"]}
    for name in ("start", "ours", "trl"):
        row.update({f"{name}_{k}": round(v, 3) for k, v in acc[name][0].items()})
    print(f"seed {seed}: speed-up {row['speedup']:.2f}x; held-out sampled ours {row['ours_sampled']:.3f} vs TRL "
          f"{row['trl_sampled']:.3f}, greedy {row['ours_greedy']:.3f} vs {row['trl_greedy']:.3f} (start "
          f"{row['start_sampled']:.3f} / {row['start_greedy']:.3f})", flush=True)
    return {"row": row, "ours": ours, "trl": trl, "per_problem": {k: v[1] for k, v in acc.items()}}


def cmd_trl(args) -> int:
    import torch

    torch.set_num_threads(args.torch_threads)
    out = Path(args.out)
    runs = []
    for seed in args.seeds:
        model_dir = (Path(args.model) if args.model else
                     warm_start(out / f"seed{seed}" / "warm", seed, target=args.sft_target))
        runs.append(trl_one(out / f"seed{seed}", model_dir, args, seed))
    rows = [r["row"] for r in runs]
    diff = {m: paired_difference([r["per_problem"]["ours"][m] for r in runs],
                                 [r["per_problem"]["trl"][m] for r in runs]) for m in ("sampled", "greedy")}
    ours_s = float(np.mean([r["ours_s_per_update"] for r in rows]))
    trl_s = float(np.mean([r["trl_s_per_update"] for r in rows]))
    speedup = trl_s / ours_s
    mean = lambda key: round(float(np.mean([r[key] for r in rows])), 3)  # noqa: E731
    summary = {
        "seeds": len(rows), "updates": args.updates,
        "ours_s_per_update": round(ours_s, 3), "trl_s_per_update": round(trl_s, 3), "speedup": round(speedup, 2),
        "speedup_per_seed": [r["speedup"] for r in rows], "target_speedup": 1.3, "speed_target_met": speedup >= 1.3,
        "load_1min_mean": round(float(np.mean([r[k] for r in rows for k in ("ours_load", "trl_load")])), 2),
        "ours_heldout_sampled": mean("ours_sampled"), "trl_heldout_sampled": mean("trl_sampled"),
        "ours_heldout_greedy": mean("ours_greedy"), "trl_heldout_greedy": mean("trl_greedy"),
        "start_heldout_sampled": mean("start_sampled"), "start_heldout_greedy": mean("start_greedy"),
        "sampled_ours_minus_trl": f"{diff['sampled']['mean'] * 100:+.1f} +- {diff['sampled']['band'] * 100:.1f} points",
        "greedy_ours_minus_trl": f"{diff['greedy']['mean'] * 100:+.1f} +- {diff['greedy']['band'] * 100:.1f} points",
        "sampled_verdict": _verdict(diff["sampled"]), "greedy_verdict": _verdict(diff["greedy"]),
        "accuracy_equal_or_better": all(_verdict(d) != "worse" for d in diff.values()),
        "noise_band": ("2 standard errors of the mean over seeds of (ours - TRL), the larger of the paired "
                       f"per-problem evaluation error ({args.problems} problems) and the seed-to-seed error"),
        "baseline": "TRL GRPOTrainer (use_cpu, fp32, beta=0, loss_type=dapo, scale_rewards=none), same model, env "
                    "and batch, run in the same process before ours",
    }
    details = {"differences": diff, "runs": [{k: v for k, v in r.items() if k != "per_problem"} for r in runs],
               "setup": {"env": MATH, "env_kwargs": EASY, "tasks": 32, "group": 8, "minibatches": 2, "lr": args.lr,
                         "warmup_updates": 10, "workers": args.workers, "torch_threads": args.torch_threads}}
    write_report(out, "GRPO: ours vs TRL GRPOTrainer (CPU, cwm-micro, add/sub)", summary, details=details,
                 tables={"per seed": rows})
    _plot_trl(runs, out / "reward.png")
    print(f"mean over {len(rows)} seed(s): {ours_s:.2f} vs {trl_s:.2f} s per update ({speedup:.2f}x); held-out "
          f"sampled ours - TRL {summary['sampled_ours_minus_trl']} ({summary['sampled_verdict']}), greedy "
          f"{summary['greedy_ours_minus_trl']} ({summary['greedy_verdict']}); report: {out / 'report.md'}")
    return 0


def _plot_trl(runs: list[dict], png: Path) -> None:
    """Train reward per update, ours vs TRL, one panel per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(4 * len(runs), 3.5), sharey=True, squeeze=False)
    for ax, r in zip(axes[0], runs):
        for name, style in (("ours", "-"), ("trl", "--")):
            ys = r[name]["rewards"]
            ax.plot(range(1, len(ys) + 1), ys, style, lw=1.2, label="ours" if name == "ours" else "TRL GRPOTrainer")
        ax.set_title(f"seed {r['row']['seed']}")
        ax.set_xlabel("update")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("train reward (mean of 256)")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


# --- scaling --------------------------------------------------------------------------------------------------

def cmd_scaling(args) -> int:
    import ray
    import torch

    from agents.policy import LMPolicy
    from agents.rollout import EnvSpec, RolloutPool, RolloutWorker, draw_requests, init_ray

    out = Path(args.out)
    model_dir = Path(args.model) if args.model else warm_start(out / "warm", 0, target=args.sft_target)
    policy = LMPolicy.from_pretrained(model_dir, max_new_tokens=32)
    spec, weights = policy.spec(), policy.get_weights()
    env = EnvSpec(MATH, kwargs=dict(EASY))
    reqs = draw_requests(np.random.default_rng(0), [1.0], args.tasks, args.group)
    episodes = args.tasks * args.group

    def measure(run) -> dict:
        run()  # warm-up (env instances, allocator)
        t0 = time.perf_counter()
        stats = [run() for _ in range(args.repeats)]
        wall = (time.perf_counter() - t0) / args.repeats
        steps = stats[0].env_steps
        tokens = stats[0].policy_tokens
        return {"wall_s": round(wall, 3), "env_steps_per_s": round(steps / wall, 1), "tokens_per_s": round(tokens / wall, 1)}

    rows = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        worker = RolloutWorker([env], spec, weights)
        rows.append({"setup": f"one process, {threads} torch thread(s)", "workers": 0,
                     **measure(lambda: worker.run(reqs, sample_seed=0)[1])})
        worker.close()
    started = init_ray(num_cpus=2)
    try:
        for n in (1, 2):
            pool = RolloutPool([env], spec, weights, num_workers=n, seed=0)
            rows.append({"setup": f"Ray, {n} worker(s) x 1 thread", "workers": n,
                         **measure(lambda: pool.sample(args.tasks, args.group, seeds=[r.seed for r in reqs])[1])})
            pool.close()
    finally:
        if started:
            ray.shutdown()
    worker = RolloutWorker([env], spec, weights)
    trajs, _ = worker.run(reqs, sample_seed=0)
    worker.close()
    torch.set_num_threads(1)
    learner_rows = learner_overhead(model_dir, trajs)
    one_proc = rows[0]["wall_s"]
    ray1, ray2 = rows[2]["wall_s"], rows[3]["wall_s"]
    summary = {
        "episodes_per_batch": episodes, "env_steps_per_s_1_worker": rows[2]["env_steps_per_s"],
        "env_steps_per_s_2_workers": rows[3]["env_steps_per_s"], "tokens_per_s_1_worker": rows[2]["tokens_per_s"],
        "tokens_per_s_2_workers": rows[3]["tokens_per_s"], "speedup_2_vs_1_worker": round(ray1 / ray2, 2),
        "ray_overhead_1_worker": f"{(ray1 / one_proc - 1) * 100:+.1f}% vs one process with 1 thread",
        "baseline": "the same requests run by RolloutWorker in this process (1 and 2 torch threads)",
        "learner_rllib_s": learner_rows[0]["update_s"], "learner_plain_s": learner_rows[1]["update_s"],
        "learner_api_overhead": f"{(learner_rows[0]['update_s'] / learner_rows[1]['update_s'] - 1) * 100:+.1f}%",
    }
    write_report(out, "Rollout throughput: Ray workers vs one process; RLlib Learner vs a plain loop", summary,
                 tables={"rollouts": rows, "learner (1 thread)": learner_rows})
    for r in rows:
        print(f"{r['setup']:<36} {r['wall_s']:7.2f} s/batch  {r['env_steps_per_s']:8.1f} env steps/s  "
              f"{r['tokens_per_s']:9.1f} tokens/s")
    for r in learner_rows:
        print(f"{r['setup']:<70} {r['update_s']:7.3f} s/update")
    print(f"report: {out / 'report.md'}")
    return 0


def learner_overhead(model_dir: Path, trajs, repeats: int = 5) -> list[dict]:
    """Seconds per GRPO update on one batch: RLlib LearnerGroup (local learner) vs the same module and loss in a
    plain PyTorch loop (what RLlib's Learner API costs on top)."""
    import torch

    from agents.grpo import GRPOArgs, GRPOLearner, grpo_settings, grpo_token_loss, prepare_batch
    from agents.lm_module import LMModule, build_learner_group, set_lm_weights, update_learners
    from agents.policy import LMPolicy

    policy = LMPolicy.from_pretrained(model_dir)
    args = GRPOArgs(lr=LR, minibatches=2, max_new_tokens=32, loss_rows=128)
    arrays, _ = prepare_batch(trajs, args, multiple=2)
    lg = build_learner_group(GRPOLearner, policy.model.config, lr=args.lr, learner_settings=grpo_settings(args))
    set_lm_weights(lg, policy.get_weights())
    lg.foreach_learner(lambda learner: learner.snapshot_reference())
    update_learners(lg, arrays, minibatches=2, epochs=1)  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        update_learners(lg, arrays, minibatches=2, epochs=1)
    rllib_s = (time.perf_counter() - t0) / repeats
    lg.shutdown()

    module = LMModule(observation_space=None, action_space=None,
                      model_config={"config": policy.model.config, "temperature": 1.0})
    module.lm.load_state_dict(policy.model.state_dict())
    opt = torch.optim.Adam(module.parameters(), lr=args.lr)
    tensors = {k: torch.as_tensor(v) for k, v in arrays.items()}
    half = len(arrays["input_ids"]) // 2

    def plain():
        for part in (slice(0, half), slice(half, None)):
            b = {k: v[part] for k, v in tensors.items()}
            fwd = module._forward_train(b)
            T = fwd["T"]
            loss, _ = grpo_token_loss(fwd["logp"], b["old_logp"][:, 1:T], b["advantages"][:, None],
                                      b["token_mask"][:, 1:T], args.eps_low, args.eps_high)
            opt.zero_grad()
            (loss.sum() / (128 * 32)).backward()
            torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
            opt.step()

    plain()
    t0 = time.perf_counter()
    for _ in range(repeats):
        plain()
    plain_s = (time.perf_counter() - t0) / repeats
    rows = len(arrays["input_ids"])
    return [{"setup": f"learner: RLlib LearnerGroup, {rows} rows", "update_s": round(rllib_s, 3)},
            {"setup": f"learner: plain PyTorch loop, same module and loss, {rows} rows", "update_s": round(plain_s, 3)}]


# --- command line and demo ----------------------------------------------------------------------------------

def register(sub) -> None:
    from benchmarks.cli import bench_group

    rl = bench_group(sub).add_parser("rl", help="RL stage evidence: learning, TRL comparison, rollout scaling")
    g = rl.add_subparsers(dest="rl_command", metavar="COMMAND")
    rl.set_defaults(func=lambda _a, _p=rl: _p.print_help() or 2)

    p = g.add_parser("learn", help="GRPO (or PPO) lifts an SFT-warmed cwm-micro on add/sub, per seed")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--algo", choices=["grpo", "ppo"], default="grpo", help="the learner (PPO: value head + GAE)")
    p.add_argument("--minutes", type=float, default=8.0, help="RL wall-clock budget per seed")
    p.add_argument("--lr", type=float, default=LR)
    p.add_argument("--max-steps", type=int, default=10**6, help="also stop after this many updates")
    p.add_argument("--sft-target", type=float, default=0.3, help="SFT until this sampled accuracy")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--problems", type=int, default=200, help="held-out problems")
    p.add_argument("--torch-threads", type=int, default=1, help="threads of this process (SFT, learner)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_learn)

    p = g.add_parser("trl", help="ours vs TRL GRPOTrainer: seconds per update and accuracy after N updates")
    p.add_argument("--updates", type=int, default=30)
    p.add_argument("--lr", type=float, default=LR)
    p.add_argument("--model", help="warm model directory (default: build one as `learn` does)")
    p.add_argument("--sft-target", type=float, default=0.3, help="SFT until this sampled accuracy")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                   help="each seed: its own warm model (unless --model), then both trainers")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--problems", type=int, default=200)
    p.add_argument("--torch-threads", type=int, default=1, help="threads of this process (both trainers)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_trl)

    p = g.add_parser("scaling", help="rollout env steps/s and tokens/s with 1 and 2 workers; Ray overhead")
    p.add_argument("--model", help="model directory (default: build the warm model)")
    p.add_argument("--sft-target", type=float, default=0.3, help="SFT until this sampled accuracy")
    p.add_argument("--tasks", type=int, default=32)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_scaling)


def demo_section(args) -> None:
    """GRPO on the embedded default: Ray rollouts in cwm/Math-v0 (add/sub), reward before and after"""
    import tempfile

    from agents.train_rl import RLRun

    quick = getattr(args, "quick", False)
    with tempfile.TemporaryDirectory(prefix="cwm-demo-rl-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        model_dir = warm_start(tmp / "warm", 0, target=None, first=10 if quick else 150)
        print(f"warm start: cwm-micro + own tokenizer, SFT on oracle answers ({time.perf_counter() - t0:.0f} s)")
        a = rl_args(tmp / "rl", model_dir, 0, 0.15 if quick else 1.0, 2 if quick else 200, 1 if quick else 2)
        if quick:
            a.tasks, a.group = 4, 4
        rl = RLRun(a)
        try:
            problems = 16 if quick else 100
            before = heldout(rl.pool, problems, samples=2 if quick else 4)
            t1 = time.perf_counter()
            while rl.step < a.steps and time.perf_counter() - t1 < a.minutes * 60:
                row = rl.update()
                print(f"  update {row['step']:3d}: train reward {row.get('reward_mean', float('nan')):+.3f}")
            after = heldout(rl.pool, problems, samples=2 if quick else 4)
        finally:
            rl.close()
        print(f"held-out sampled accuracy {before['sampled']:.2f} -> {after['sampled']:.2f}, greedy "
              f"{before['greedy']:.2f} -> {after['greedy']:.2f} after {rl.step} GRPO updates "
              f"({time.perf_counter() - t1:.0f} s)")
