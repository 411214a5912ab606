"""`cwm bench math`: accuracy and pass@k (unbiased) of a policy on MATH-500, AIME24, AMC23, GSM8K or a file.

Every sample goes through `cwm/Math-v0`'s reward path (`MathEnv.reset(options={"task": i})`, then `step`),
as an RL rollout's would, with the binary scheme (1 correct, 0 wrong). Policies are callables in the
`POLICIES` registry (name -> factory(tasks, args) -> respond(index, sample) -> response text), so an LM
policy can register itself later:

- `oracle`: the gold answer in a sentence with `\\boxed{}` (must score 100%);
- `wrong-gold`: the gold of another problem with a different answer (must score near 0);
- `noisy`: the oracle with probability --p-correct, else wrong-gold (seeded; exercises pass@k);
- `empty`: no answer at all.

The baseline (default `wrong-gold`, one sample per task) is measured in the same run. Reports: accuracy,
pass@k for each k <= samples, a per-subject and per-level table (MATH-500's subject/level, the
generator's kind/difficulty), verifier time per sample, timeouts.
"""
from __future__ import annotations

import collections
import random
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from benchmarks.report import pass_at_k, write_report
from cwm_envs.envs.math_env import MathEnv
from cwm_envs.errors import UsageError
from cwm_envs.sources.math import MathGenerator, load_math
from cwm_envs.tasks import Task

Respond = Callable[[int, int], str]


def _think(args) -> str:
    return "<think>\nI worked through the problem.\n</think>\n" if getattr(args, "think", True) else ""


def oracle(tasks: list[Task], args) -> Respond:
    return lambda i, s: f"{_think(args)}Therefore the final answer is $\\boxed{{{tasks[i].answer}}}$."


def wrong_gold(tasks: list[Task], args) -> Respond:
    """Answer with the gold of the next problem whose gold text differs (another problem's answer)."""
    def respond(i, s):
        for step in range(1, len(tasks)):
            other = tasks[(i + step) % len(tasks)].answer
            if other.strip() != tasks[i].answer.strip():
                return f"{_think(args)}Therefore the final answer is $\\boxed{{{other}}}$."
        return f"{_think(args)}I cannot tell."
    return respond


def noisy(tasks: list[Task], args) -> Respond:
    right, wrong = oracle(tasks, args), wrong_gold(tasks, args)
    p = getattr(args, "p_correct", 0.5)
    seed = getattr(args, "seed", 0)
    return lambda i, s: (right if random.Random(f"{seed}/{tasks[i].id}/{s}").random() < p else wrong)(i, s)


def empty(tasks: list[Task], args) -> Respond:
    return lambda i, s: f"{_think(args)}I am not able to solve this."


POLICIES: dict[str, Callable[[list[Task], object], Respond]] = {
    "oracle": oracle, "wrong-gold": wrong_gold, "noisy": noisy, "empty": empty,
}


def load_tasks(data: str, limit: int | None = None, seed: int = 0) -> list[Task]:
    source = load_math(data, limit=limit)
    if isinstance(source, MathGenerator):
        return source.take(limit or 100, seed)
    return source


def evaluate_policy(tasks: list[Task], policy: str, args, samples: int = 1, workers: int = 2,
                    progress: bool = False) -> dict:
    """Run `samples` responses per task through MathEnv; per-task correct counts and verifier timings."""
    if policy not in POLICIES:
        raise UsageError(f"unknown policy {policy!r}; choose one of {sorted(POLICIES)}")
    respond = POLICIES[policy](tasks, args)
    jobs = [(i, s) for i in range(len(tasks)) for s in range(samples)]
    local, envs, lock = threading.local(), [], threading.Lock()
    correct = collections.Counter()
    seconds, timeouts, examples = [], 0, {}

    def run(job):
        env = getattr(local, "env", None)
        if env is None:
            env = local.env = MathEnv(source=tasks, reward_scheme="binary", think=getattr(args, "think", True),
                                      timeout_s=getattr(args, "timeout_s", 5.0))
            with lock:
                envs.append(env)
        i, s = job
        env.reset(options={"task": i})
        _, reward, _, _, info = env.step(respond(i, s))
        return i, s, reward, info

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc=f"math {policy}", disable=not sys.stderr.isatty())
    start = time.perf_counter()
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for i, s, reward, info in pool.map(run, jobs):
                correct[i] += int(reward > 0)
                o = info["outcomes"]
                seconds.append(o.get("seconds", 0.0))
                timeouts += bool(o.get("timed_out"))
                if s == 0 and len(examples) < 3:
                    examples[tasks[i].id] = {"answer": tasks[i].answer, "extracted": o.get("extracted"),
                                             "how": o.get("how"), "reward": reward}
                if bar:
                    bar.update()
    finally:
        if bar:
            bar.close()
        for env in envs:
            env.close()
    return {"correct": [correct[i] for i in range(len(tasks))], "samples": samples,
            "wall_s": time.perf_counter() - start, "verify_s": seconds, "timeouts": timeouts, "examples": examples}


def _group_key(task: Task) -> tuple[str, str]:
    m = task.metadata
    return str(m.get("subject", "all")), str(m.get("level", "-"))


def summarize(tasks: list[Task], result: dict, ks: list[int]) -> tuple[dict, list[dict], list[dict]]:
    n, correct = result["samples"], result["correct"]
    summary = {"tasks": len(tasks), "samples_per_task": n, "accuracy": sum(correct) / (len(tasks) * n),
               "solved": sum(c > 0 for c in correct)}
    for k in ks:
        summary[f"pass@{k}"] = statistics.fmean(pass_at_k(n, c, k) for c in correct)
    by_subject, by_level = collections.defaultdict(list), collections.defaultdict(list)
    for task, c in zip(tasks, correct):
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
    if args.samples < 1:
        raise UsageError("--samples must be at least 1")
    for name in (args.policy, args.baseline):
        if name not in POLICIES and name != "none":
            raise UsageError(f"unknown policy {name!r}; choose one of {sorted(POLICIES)}")
    tasks = load_tasks(args.data, args.limit, args.seed)
    ks = sorted({int(k) for k in str(args.k).split(",") if k.strip() and int(k) <= args.samples} | {1})
    result = evaluate_policy(tasks, args.policy, args, args.samples, args.workers, progress=True)
    summary, subjects, levels = summarize(tasks, result, ks)
    summary = {"data": args.data, "policy": args.policy, **summary,
               "verify_median_ms": 1000 * _quantile(result["verify_s"], 0.5),
               "verify_p99_ms": 1000 * _quantile(result["verify_s"], 0.99), "timeouts": result["timeouts"],
               "wall_s": result["wall_s"]}
    details = {"policy": {"correct": result["correct"], "examples": result["examples"]}}
    if args.baseline != "none":
        base = evaluate_policy(tasks, args.baseline, args, 1, args.workers)
        summary["baseline_policy"] = args.baseline
        summary["baseline_accuracy"] = sum(base["correct"]) / len(tasks)
        details["baseline"] = {"correct": base["correct"], "examples": base["examples"]}
    path = write_report(args.out, f"Math benchmark: {args.policy} on {args.data}", summary, details,
                        tables={"per subject": subjects, "per level": levels})
    print(f"{args.data}: {args.policy} accuracy {summary['accuracy']:.4f} "
          f"({sum(result['correct'])}/{len(tasks) * args.samples})"
          + (f", baseline {args.baseline} {summary['baseline_accuracy']:.4f}" if args.baseline != "none" else "")
          + f"; report in {path}")
    return 0


def demo_section(args) -> None:
    """Math-v0: a few rollouts with the oracle, an equivalent rewrite and a wrong policy (reward and evidence)"""
    tasks = [MathGenerator(kinds=(kind,), difficulty=1).task(7) for kind in ("add_sub", "fractions", "quadratic")]
    env = MathEnv(source=tasks)
    rewrite = {"add_sub": lambda a: f"x = {a}", "fractions": lambda a: a.replace("\\frac", "\\dfrac"),
               "quadratic": lambda a: ", ".join(reversed(a.split(", ")))}
    try:
        for task in tasks:
            print(f"{task.id}: {task.prompt}  (gold {task.answer})")
            for label, answer in (("oracle", task.answer), ("rewrite", rewrite[task.metadata["kind"]](task.answer)),
                                  ("wrong", "1234")):
                obs, _ = env.reset(options={"task": task})
                _, reward, _, _, info = env.step(f"<think>\nworking\n</think>\nSo it is $\\boxed{{{answer}}}$.")
                o = info["outcomes"]
                print(f"  [{label:7s}] reward {reward:+.0f}  extracted {o.get('extracted')!r} at {o.get('span')}: "
                      f"{o.get('how')}")
        print("an observation (CWM chat format) ends with:\n" + obs[-200:])
    finally:
        env.close()


def register(sub) -> None:
    from benchmarks.cli import bench_group

    p = bench_group(sub).add_parser("math", help="accuracy / pass@k of a policy on MATH-500, AIME24, AMC23, GSM8K")
    p.add_argument("--out", required=True, help="report directory")
    p.add_argument("--data", default="math500",
                   help="math500, aime24, amc23, gsm8k, generated, a JSONL path or hub:NAME (default math500)")
    p.add_argument("--policy", default="oracle", help=f"policy (default oracle): {', '.join(POLICIES)}")
    p.add_argument("--samples", type=int, default=1, help="samples per task (default 1)")
    p.add_argument("--k", default="1,5,10", help="comma-separated k for pass@k (those <= samples)")
    p.add_argument("--baseline", default="wrong-gold", help="policy measured in the same run, or none")
    p.add_argument("--p-correct", type=float, default=0.5, help="noisy policy: chance of the right answer")
    p.add_argument("--limit", type=int, help="first N tasks only (generated: how many)")
    p.add_argument("--workers", type=int, default=2, help="parallel env threads (default 2)")
    p.add_argument("--timeout-s", type=float, default=5.0, help="verifier time limit per answer")
    p.add_argument("--no-think", dest="think", action="store_false", help="thinking off (no </think> required)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run_bench)
