"""`cwm bench math`: accuracy and pass@k (unbiased) of any policy on MATH-500, AIME24, AMC23, GSM8K or a file.

Every sample goes through `cwm/Math-v0`'s reward path with the binary scheme (1 correct, 0 wrong), as an RL
rollout's would, driven by the shared runner (benchmarks/runner.py: `--policy SPEC`, N samples, per-sample
`samples.jsonl`, resume with the same `--out`). Scripted specs check the benchmark itself: `oracle` must
score 100%, `wrong` (another problem's gold answer) near 0, `noisy:P` exercises pass@k; `hf:DIR` and
`openai:URL` put a model in the loop.

The baseline (default `wrong`, one sample per task) is measured in the same run. Reports: accuracy,
pass@k for each k <= samples, a per-subject and per-level table (MATH-500's subject/level, the
generator's kind/difficulty), verifier time per sample, timeouts, infrastructure faults (never scored).
"""
from __future__ import annotations

import collections
import statistics
import sys

from benchmarks.report import write_report
from benchmarks.runner import add_prompts_arg, close_policy, open_policy, policy_config, run_samples
from cwm_envs.envs.math_env import MathEnv
from cwm_envs.sources.math import MathGenerator, load_math
from cwm_envs.tasks import Task


def load_tasks(data: str, limit: int | None = None, seed: int = 0) -> list[Task]:
    source = load_math(data, limit=limit)
    if isinstance(source, MathGenerator):
        return source.take(limit or 100, seed)
    return source


def env_kwargs(tasks: list[Task], args) -> dict:
    return {"source": tasks, "reward_scheme": "binary", "think": getattr(args, "think", True),
            "timeout_s": getattr(args, "timeout_s", 5.0), "prompts": getattr(args, "prompts", None)}


def evaluate(tasks: list[Task], policy, args, *, samples: int = 1, out=None, name: str = "samples",
             config: dict | None = None, progress: bool = False):
    """Run `samples` episodes per task through cwm/Math-v0 (see benchmarks/runner.py)."""
    return run_samples("cwm/Math-v0", env_kwargs(tasks, args), tasks, policy, samples=samples,
                       seed=getattr(args, "seed", 0), greedy=getattr(args, "temperature", 1.0) == 0, out=out,
                       name=name, config=config, env_threads=getattr(args, "workers", 2),
                       batch=getattr(args, "batch", 16), progress=progress, label=f"math {name}")


def _group_key(task: Task) -> tuple[str, str]:
    m = task.metadata
    return str(m.get("subject", "all")), str(m.get("level", "-"))


def summarize(tasks: list[Task], run, ks: list[int], samples: int) -> tuple[dict, list[dict], list[dict]]:
    summary = {**run.summary(ks, samples), "solved": sum(c > 0 for c in run.passed)}
    by_subject, by_level = collections.defaultdict(list), collections.defaultdict(list)
    for task, n, c in zip(tasks, run.scored, run.passed):
        if not n:
            continue
        subject, level = _group_key(task)
        by_subject[subject].append(c / n)
        by_level[level].append(c / n)
    subjects = [{"subject": k, "tasks": len(v), "accuracy": statistics.fmean(v)} for k, v in sorted(by_subject.items())]
    levels = [{"level": k, "tasks": len(v), "accuracy": statistics.fmean(v)} for k, v in sorted(by_level.items())]
    return summary, subjects, levels


def _quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else 0.0


def run_bench(args) -> int:
    from agents.policies import parse_spec, sampling_from

    sampling = sampling_from(args)
    for spec in (args.policy, args.baseline):
        if spec != "none":
            parse_spec(spec)
    tasks = load_tasks(args.data, args.limit, args.seed)
    ks = sorted({int(k) for k in str(args.k).split(",") if k.strip() and int(k) <= args.samples} | {1})
    policy = open_policy(args)
    try:
        run = evaluate(tasks, policy, args, samples=sampling.samples, out=args.out, config=policy_config(args),
                       progress=True)
    finally:
        close_policy(policy)
    seconds = [r["evidence"].get("seconds", 0.0) for r in run.records if r["status"] == "scored"]
    summary, subjects, levels = summarize(tasks, run, ks, sampling.samples)
    summary = {"data": args.data, "policy": args.policy, **summary,
               "verify_median_ms": 1000 * _quantile(seconds, 0.5), "verify_p99_ms": 1000 * _quantile(seconds, 0.99),
               "timeouts": sum(bool(r["evidence"].get("timed_out")) for r in run.records), "wall_s": run.wall_s}
    details = {"policy": {"passed": run.passed, "scored": run.scored}}
    if args.baseline != "none":
        base_policy = open_policy(args, args.baseline)
        try:
            base = evaluate(tasks, base_policy, args, samples=1, out=args.out, name="baseline_samples",
                            config=policy_config(args, args.baseline) | {"samples": 1})
        finally:
            close_policy(base_policy)
        summary["baseline_policy"] = args.baseline
        summary["baseline_accuracy"] = base.summary([1], 1)["accuracy"]
        details["baseline"] = {"passed": base.passed}
    path = write_report(args.out, f"Math benchmark: {args.policy} on {args.data}", summary, details,
                        tables={"per subject": subjects, "per level": levels})
    print(f"{args.data}: {args.policy} accuracy {_fmt(summary['accuracy'])} "
          f"({sum(run.passed)}/{sum(run.scored)} scored, {run.infra} infra faults)"
          + (f", baseline {args.baseline} {_fmt(summary['baseline_accuracy'])}" if args.baseline != "none" else "")
          + f"; report in {path}")
    if run.infra:
        print(f"{run.infra} samples hit infrastructure faults (not scored); rerun with the same --out to retry them",
              file=sys.stderr)
    return 0


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def demo_section(args) -> str:
    """Math-v0: a few rollouts with the oracle, an equivalent rewrite and a wrong policy (reward and evidence)"""
    tasks = [MathGenerator(kinds=(kind,), difficulty=1).task(7) for kind in ("add_sub", "fractions", "quadratic")]
    env = MathEnv(source=tasks)
    rewrite = {"add_sub": lambda a: f"x = {a}", "fractions": lambda a: a.replace("\\frac", "\\dfrac"),
               "quadratic": lambda a: ", ".join(reversed(a.split(", ")))}
    paid: dict[str, list[float]] = {}
    try:
        for task in tasks:
            print(f"{task.id}: {task.prompt}  (gold {task.answer})")
            for label, answer in (("oracle", task.answer), ("rewrite", rewrite[task.metadata["kind"]](task.answer)),
                                  ("wrong", "1234")):
                obs, _ = env.reset(options={"task": task})
                _, reward, _, _, info = env.step(f"<think>\nworking\n</think>\nSo it is $\\boxed{{{answer}}}$.")
                paid.setdefault(label, []).append(reward)
                o = info["outcomes"]
                print(f"  [{label:7s}] reward {reward:+.0f}  extracted {o.get('extracted')!r} at {o.get('span')}: "
                      f"{o.get('how')}")
        print("an observation (CWM chat format) ends with:\n" + obs[-200:])
    finally:
        env.close()
    return ", ".join(f"{label} {sum(r > 0 for r in rs)}/{len(rs)} paid" for label, rs in paid.items())


def register(sub) -> None:
    from agents.policies import add_policy_args
    from benchmarks.cli import bench_group

    p = bench_group(sub).add_parser("math", help="accuracy / pass@k of a policy on MATH-500, AIME24, AMC23, GSM8K")
    p.add_argument("--out", required=True, help="report directory (samples.jsonl beside it; rerun to resume)")
    p.add_argument("--data", default="math500",
                   help="math500, aime24, amc23, gsm8k, generated, a JSONL path or hub:NAME (default math500)")
    add_policy_args(p)
    p.add_argument("--k", default="1,5,10", help="comma-separated k for pass@k (those <= samples)")
    p.add_argument("--baseline", default="wrong", help="policy spec measured in the same run, or none (default wrong)")
    p.add_argument("--limit", type=int, help="first N tasks only (generated: how many)")
    p.add_argument("--workers", type=int, default=2, help="episodes judged at once (default 2)")
    p.add_argument("--batch", type=int, default=16, help="episodes per policy call (default 16)")
    p.add_argument("--timeout-s", type=float, default=5.0, help="verifier time limit per answer")
    add_prompts_arg(p)
    p.add_argument("--no-think", dest="think", action="store_false", help="thinking off (no </think> required)")
    p.set_defaults(func=run_bench)
