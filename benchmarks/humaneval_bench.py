"""`cwm bench humaneval`: pass@1 and pass@k (unbiased) of a scripted policy on HumanEval through cwm/Code-v0.

Every sample goes the way an RL rollout's would: a response text, judged by `CodeEnv.judge` (the
sandboxed two-process judge). The policies are scripted, to check the benchmark and the environment
themselves: `oracle` answers with the canonical solution (must score 100%), `wrong` with the prompt and
`return None` (must score 0%), `other` with the canonical solution of the next task, `empty` with no
code block, `noisy` with the oracle's answer with probability --p-correct and the wrong one otherwise
(seeded), which exercises pass@k. The baseline (default `wrong`, one sample per task) is measured in the
same run. Tasks run in parallel, one sandbox per worker thread.
"""
from __future__ import annotations

import collections
import random
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from benchmarks.report import add_sampling_args, mean_pass_at_k, sampling_ks, write_report
from cwm_envs.envs.code_env import CodeEnv
from cwm_envs.errors import UsageError
from cwm_envs.tasks import Task


def _wrong(task: Task) -> str:
    return f"```python\n{task.prompt}    return None\n```"


def respond(policy: str, env: CodeEnv, tasks: list[Task], index: int, sample: int, seed: int = 0,
            p_correct: float = 0.5) -> str:
    """The scripted policy's response for sample `sample` of task `index` (the oracle is `env`'s)."""
    task = tasks[index]
    if policy == "oracle":
        return env.reference_response(task)
    if policy == "wrong":
        return _wrong(task)
    if policy == "other":
        other = tasks[(index + 1) % len(tasks)]
        return f"```python\n{task.prompt}{other.metadata['canonical_solution'].rstrip()}\n```"
    if policy == "empty":
        return "I would rather not write code today."
    if policy == "noisy":
        correct = random.Random(f"{seed}/{task.id}/{sample}").random() < p_correct
        return env.reference_response(task) if correct else _wrong(task)
    raise UsageError(f"unknown policy {policy!r}; choose one of {POLICIES}")


POLICIES = ("oracle", "wrong", "other", "empty", "noisy")


def evaluate_policy(tasks: list[Task], policy: str, samples: int = 1, workers: int = 2, timeout_s: float = 6.0,
                    seed: int = 0, p_correct: float = 0.5, progress: bool = False) -> dict:
    """Judge `samples` responses per task; returns per-task pass counts, statuses and the wall time."""
    if policy not in POLICIES:
        raise UsageError(f"unknown policy {policy!r}; choose one of {POLICIES}")
    jobs = [(i, s) for i in range(len(tasks)) for s in range(samples)]
    local, envs, lock = threading.local(), [], threading.Lock()

    def run(job):
        env = getattr(local, "env", None)
        if env is None:
            env = local.env = CodeEnv(tasks=tasks, timeout_s=timeout_s)
            with lock:
                envs.append(env)
        i, s = job
        return i, env.judge(tasks[i], respond(policy, env, tasks, i, s, seed, p_correct))

    passed = collections.Counter()
    statuses = collections.Counter()
    failing: dict[str, str] = {}
    start = time.perf_counter()
    try:
        from tqdm import tqdm

        with ThreadPoolExecutor(max(1, workers)) as pool:
            for i, result in tqdm(pool.map(run, jobs), total=len(jobs), desc=f"humaneval {policy}",
                                  disable=not progress, leave=False):
                o = result.outcomes
                if o["pass"]:
                    passed[i] += 1
                    statuses["pass"] += 1
                else:
                    status = ("parse" if not o["parse"] else "compile" if not o["compile"]
                              else o["failures"][0]["status"] if o["failures"] else "fail")
                    statuses[status] += 1
                    failing.setdefault(tasks[i].id, result.details)
    finally:
        for env in envs:
            env.close()
    return {"policy": policy, "samples": samples, "passed": [passed[i] for i in range(len(tasks))],
            "statuses": dict(statuses), "failing": failing, "time_s": time.perf_counter() - start}



def run_bench(args) -> int:
    from cwm_envs.sources.code import load_humaneval

    ks = sampling_ks(args)
    tasks = load_humaneval(args.data, limit=args.limit)
    if not tasks:
        raise UsageError("no HumanEval tasks to run")
    progress = sys.stderr.isatty()
    main = evaluate_policy(tasks, args.policy, args.samples, args.workers, args.timeout_s, args.seed,
                           args.p_correct, progress)
    summary = {"policy": args.policy, "tasks": len(tasks), "samples_per_task": args.samples,
               **mean_pass_at_k(main["passed"], args.samples, ks),
               "time_s": round(main["time_s"], 2), "samples_per_s": round(len(tasks) * args.samples / main["time_s"], 1),
               "workers": args.workers}
    if args.baseline != "none":
        base = evaluate_policy(tasks, args.baseline, 1, args.workers, args.timeout_s, args.seed, args.p_correct,
                               progress)
        summary.update({"baseline_policy": args.baseline, "baseline_pass@1": mean_pass_at_k(base["passed"], 1, [1])["pass@1"],
                        "baseline_time_s": round(base["time_s"], 2)})
    rows = [{"task": t.id, "passed": c, "samples": args.samples} for t, c in zip(tasks, main["passed"])]
    status_rows = [{"status": k, "samples": v} for k, v in sorted(main["statuses"].items(), key=lambda kv: -kv[1])]
    out = write_report(args.out, f"HumanEval through cwm/Code-v0 ({args.policy})", summary,
                       details={"per_task": rows, "failing": main["failing"], "statuses": main["statuses"]},
                       tables={"outcomes": status_rows})
    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.items()))
    print(f"report: {out}")
    return 0


def demo_section(args) -> None:
    """Code-v0: one episode that passes, one that fails"""
    env = CodeEnv()  # the embedded generator: no file needed
    try:
        for label, answer in (("reference solution", None), ("wrong solution", "```python\nprint(42)\n```")):
            obs, info = env.reset(seed=3)
            _, reward, _, _, info = env.step(answer or env.reference_response(env.task))
            o = info["outcomes"]
            print(f"[{label}] {info['task_id']}: reward {reward:+.0f}  parse={o['parse']} compile={o['compile']} "
                  f"pass={o['pass']} public_pass={o['public_pass']}  ({info['details']})")
        print("the prompt was:\n" + obs)
    finally:
        env.close()


def register(sub) -> None:
    from benchmarks.cli import bench_group

    p = bench_group(sub).add_parser("humaneval", help="pass@1 / pass@k of a scripted policy on HumanEval (cwm/Code-v0)")
    p.add_argument("--policy", choices=POLICIES, default="oracle", help="scripted policy (default oracle)")
    add_sampling_args(p, "task")
    p.add_argument("--baseline", choices=POLICIES + ("none",), default="wrong",
                   help="policy measured in the same run, one sample per task (default wrong)")
    p.add_argument("--p-correct", type=float, default=0.5, help="noisy policy: chance of the right answer")
    p.add_argument("--workers", type=int, default=2, help="parallel sandboxes (default 2)")
    p.add_argument("--timeout-s", type=float, default=6.0, help="time limit per task's test run")
    p.add_argument("--limit", type=int, help="first N tasks only")
    p.add_argument("--data", help="HumanEval .jsonl(.gz) (default: the shared data copy)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run_bench)
