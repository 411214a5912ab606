"""`cwm bench rl trl`: ours vs TRL's GRPOTrainer on the same warm model, env, reward and batch, for the same
number of updates: seconds per update, and held-out accuracy compared problem by problem."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from benchmarks.report import write_report
from benchmarks.rl.common import EASY, LR, MATH, heldout_detail, rl_args, setup_of, silence, warm_start

# Both trainers run the same GRPO update on the same warm model, env, reward and batch (TRL's GRPOConfig is
# filled from the RLArgs ours runs with): 32 prompts x 8 samples at temperature 1 (no top-k/top-p), 32 new
# tokens, 2 optimizer steps per update, Adam(0.9, 0.999, 1e-8) with no weight decay, lr 1e-4 after a 10-update
# linear warm-up, global-norm clip 1.0, clip 0.2/0.25, no KL, fp32.
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

    import cwm_envs  # noqa: F401  (registers the cwm/* ids)
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
    """TRL GRPOTrainer on CPU with our setting (read from the RLArgs ours runs with); seconds per update
    (generation + 2 optimizer steps)."""
    import gymnasium
    from transformers import TrainerCallback

    try:
        from datasets import Dataset
        from trl import GRPOConfig, GRPOTrainer
    except ImportError:
        from cwm_envs.errors import UsageError

        raise UsageError("TRL is not installed: pip install -e '.[bench]'") from None

    import cwm_envs  # noqa: F401  (registers the cwm/* ids)
    from model.config import load_model
    from model.tokenizer import load_tokenizer

    ours = rl_args(out, model_dir, seed, None, updates, 1, lr=lr)
    u = ours.update
    env = gymnasium.make(MATH, **EASY)
    rows = []
    for i in range(ours.tasks * updates):
        obs, _ = env.reset(seed=seed * 10**6 + i)
        rows.append({"prompt": obs, "answer": env.unwrapped.task.answer})
    env.close()
    tok, model = load_tokenizer(model_dir), load_model(model_dir)
    config = GRPOConfig(
        output_dir=str(out), use_cpu=True, beta=u.kl_coef, loss_type="dapo", scale_rewards="none",
        num_generations=ours.group, per_device_train_batch_size=ours.tasks * ours.group // u.minibatches,
        steps_per_generation=u.minibatches, num_iterations=u.epochs, max_completion_length=u.max_new_tokens,
        max_steps=u.minibatches * updates, temperature=u.temperature, top_p=ours.top_p, top_k=0, learning_rate=u.lr,
        weight_decay=0.0,
        # the same warm-up as ours (10 updates = 20 optimizer steps): without it both wreck the SFT policy
        lr_scheduler_type="constant_with_warmup", warmup_steps=u.minibatches * u.warmup_updates,
        epsilon=u.eps_low, epsilon_high=u.eps_high, max_grad_norm=u.grad_clip, logging_steps=1, report_to="none",
        save_strategy="no",
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
    with silence():  # TRL prints a dict per optimizer step when its progress bar is off
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
            "clipped_steps": sum(g > u.grad_clip for g in grad_norms),
            "train_reward_first": rewards[0] if rewards else None, "train_reward_last": rewards[-1] if rewards else None,
            "rewards": [round(float(r), 4) for r in rewards], "s_per_update_all": [round(float(x), 3) for x in per],
            "model": str(out / "model")}


def ours_run(model_dir: Path, out: Path, updates: int, seed: int, workers: int, lr: float = LR) -> dict[str, Any]:
    """Our Ray rollouts + RLlib learner for `updates` updates; seconds per update (sampling + learner + weight
    sync)."""
    from agents.train_rl import RLRun

    rl = RLRun(rl_args(out, model_dir, seed, None, updates, workers, lr=lr))
    try:
        load = []
        t0 = time.perf_counter()
        rows = rl.train(lambda _row: load.append(os.getloadavg()[0]))
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
    mean = lambda key: round(float(np.mean([r[key] for r in rows])), 3)  # noqa: E731  (a one-line helper)
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
               "setup": {**setup_of(rl_args(out, Path(), 0, None, args.updates, args.workers, lr=args.lr)),
                         "workers": args.workers, "torch_threads": args.torch_threads}}
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
