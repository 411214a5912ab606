"""`cwm bench cruxeval --mode output|input`: pass@1 and pass@k (unbiased) on CRUXEval through
cwm/OutputPrediction-v0 / cwm/InputPrediction-v0.

Every sample is a response text judged by `PredictionEnv.judge` (the completed assertion run in the
sandbox). The policies are scripted, to check the benchmark, the env and the tracer:
  oracle   the dataset's own assertion (must score 100%)
  tracer   output mode: the repr of the value the tracer saw the function return (CRUXEval's 800 rows
           checked against our tracer through the env); input mode: same as oracle
  wrong    the answer of the next row (almost always wrong)
  empty    no code block (format failure)
  noisy    oracle with probability --p-correct, else wrong (seeded): exercises pass@k
The baseline policy (default `wrong`, one sample per row) is measured in the same run. Rows run in
parallel, one env (one sandbox) per worker thread.
"""
from __future__ import annotations

import collections
import json
import random
import sys
import threading
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.report import add_sampling_args, mean_pass_at_k, sampling_ks, write_report
from cwm_envs.envs.prediction import PredictionEnv
from cwm_envs.errors import UsageError
from cwm_envs.tasks import Task

POLICIES = ("oracle", "tracer", "wrong", "empty", "noisy")


def _answer(task: Task, mode: str, value: str) -> str:
    m = task.metadata
    if mode == "output":
        return f"```python\nassert f({m['input']}) == {value}\n```"
    return f"```python\nassert f({value}) == {m['output']}\n```"


def respond(policy: str, env: PredictionEnv, tasks: list[Task], index: int, sample: int, *, seed: int = 0,
            p_correct: float = 0.5, traced: dict[str, str] | None = None) -> str:
    """The scripted policy's response for sample `sample` of row `index`."""
    task, mode = tasks[index], env.mode
    key = "output" if mode == "output" else "input"
    wrong = _answer(task, mode, tasks[(index + 1) % len(tasks)].metadata[key])
    if policy == "oracle" or (policy == "tracer" and mode == "input"):
        return env.reference_response(task)
    if policy == "tracer":
        value = (traced or {}).get(task.id)
        return _answer(task, mode, value) if value is not None else "the tracer saw no return value"
    if policy == "wrong":
        return wrong
    if policy == "empty":
        return "I cannot tell."
    if policy == "noisy":
        correct = random.Random(f"{seed}/{task.id}/{sample}").random() < p_correct
        return env.reference_response(task) if correct else wrong
    raise UsageError(f"unknown policy {policy!r}; choose one of {POLICIES}")


def traced_outputs(tasks: list[Task], workers: int, progress: bool) -> tuple[dict[str, str], dict]:
    """repr of each row's traced return value (and the tracer's status counts), traced in parallel."""
    from cwm_envs.tracing.corpus import Job, build_corpus

    jobs = [Job(t.id, "cruxeval", t.metadata["code"], t.metadata.get("entry", "f"), t.metadata["input"],
                expect=t.metadata["output"]) for t in tasks]
    with tempfile.TemporaryDirectory(prefix="cwm-crux-") as tmp:
        out = Path(tmp) / "traces.jsonl"
        stats = build_corpus(jobs, out, workers=workers, progress=progress, total=len(jobs))
        rows = [json.loads(line) for line in out.open()]
    values = {r["id"]: r["returned"] for r in rows if r["returned"] is not None}
    outputs = {t.id: t.metadata["output"] for t in tasks}
    return values, {"statuses": dict(stats.statuses), "expect_mismatch": stats.expect_mismatch,
                    "return_equals_output": sum(1 for r in rows if r["expect_equal"] is True),
                    "repr_identical": sum(1 for r in rows if r["returned"] == outputs[r["id"]])}


def evaluate_policy(tasks: list[Task], mode: str, policy: str, samples: int = 1, workers: int = 2,
                    timeout_s: float = 5.0, seed: int = 0, p_correct: float = 0.5, progress: bool = False,
                    traced: dict[str, str] | None = None) -> dict:
    """Judge `samples` responses per row; per-row pass counts, outcome counts and the wall time."""
    if policy not in POLICIES:
        raise UsageError(f"unknown policy {policy!r}; choose one of {POLICIES}")
    jobs = [(i, s) for i in range(len(tasks)) for s in range(samples)]
    local, envs, lock = threading.local(), [], threading.Lock()

    def run(job):
        env = getattr(local, "env", None)
        if env is None:
            env = local.env = PredictionEnv(mode=mode, tasks=tasks, timeout_s=timeout_s)
            with lock:
                envs.append(env)
        i, s = job
        text = respond(policy, env, tasks, i, s, seed=seed, p_correct=p_correct, traced=traced)
        return i, env.judge(tasks[i], text)

    passed, statuses, failing = collections.Counter(), collections.Counter(), {}
    start = time.perf_counter()
    try:
        from tqdm import tqdm

        with ThreadPoolExecutor(max(1, workers)) as pool:
            for i, result in tqdm(pool.map(run, jobs), total=len(jobs), desc=f"cruxeval-{mode[0]} {policy}",
                                  disable=not progress, leave=False):
                o = result.outcomes
                status = "pass" if o["pass"] else "parse" if not o["parse"] else "timeout" if o["timed_out"] else "fail"
                statuses[status] += 1
                if o["pass"]:
                    passed[i] += 1
                else:
                    failing.setdefault(tasks[i].id, result.details)
    finally:
        for env in envs:
            env.close()
    return {"passed": [passed[i] for i in range(len(tasks))], "statuses": dict(statuses), "failing": failing,
            "time_s": time.perf_counter() - start}



def run_bench(args) -> int:
    from cwm_envs.sources.code import load_cruxeval

    ks = sampling_ks(args)
    tasks = load_cruxeval(args.data, limit=args.limit)
    if not tasks:
        raise UsageError("no CRUXEval rows to run")
    progress = sys.stderr.isatty()
    traced, tracer_info = None, None
    if "tracer" in (args.policy, args.baseline) and args.mode == "output":
        traced, tracer_info = traced_outputs(tasks, args.workers, progress)
    main = evaluate_policy(tasks, args.mode, args.policy, args.samples, args.workers, args.timeout_s, args.seed,
                           args.p_correct, progress, traced)
    summary = {"mode": args.mode, "policy": args.policy, "rows": len(tasks), "samples_per_row": args.samples,
               **mean_pass_at_k(main["passed"], args.samples, ks), "time_s": round(main["time_s"], 2),
               "samples_per_s": round(len(tasks) * args.samples / main["time_s"], 1), "workers": args.workers}
    if args.baseline != "none":
        base = evaluate_policy(tasks, args.mode, args.baseline, 1, args.workers, args.timeout_s, args.seed,
                               args.p_correct, progress, traced)
        summary.update({"baseline_policy": args.baseline,
                        "baseline_pass@1": mean_pass_at_k(base["passed"], 1, [1])["pass@1"],
                        "baseline_time_s": round(base["time_s"], 2)})
    if tracer_info:
        summary.update({"tracer_return_equals_output": tracer_info["return_equals_output"],
                        "tracer_repr_identical": tracer_info["repr_identical"]})
    rows = [{"row": t.id, "passed": c, "samples": args.samples} for t, c in zip(tasks, main["passed"])]
    status_rows = [{"outcome": k, "samples": v} for k, v in sorted(main["statuses"].items(), key=lambda kv: -kv[1])]
    out = write_report(args.out, f"CRUXEval-{args.mode[0].upper()} through cwm/{args.mode.title()}Prediction-v0 "
                       f"({args.policy})", summary,
                       details={"per_row": rows, "failing": main["failing"], "statuses": main["statuses"],
                                "tracer": tracer_info},
                       tables={"outcomes": status_rows})
    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.items()))
    print(f"report: {out}")
    return 0


def register(sub) -> None:
    from benchmarks.cli import bench_group

    p = bench_group(sub).add_parser("cruxeval", help="pass@1 / pass@k of a scripted policy on CRUXEval-O/-I")
    p.add_argument("--mode", choices=("output", "input"), default="output", help="CRUXEval-O or -I (output)")
    p.add_argument("--policy", choices=POLICIES, default="oracle", help="scripted policy (default oracle)")
    add_sampling_args(p, "row")
    p.add_argument("--baseline", choices=POLICIES + ("none",), default="wrong",
                   help="policy measured in the same run, one sample per row (default wrong)")
    p.add_argument("--p-correct", type=float, default=0.5, help="noisy policy: chance of the right answer")
    p.add_argument("--workers", type=int, default=2, help="parallel sandboxes (default 2)")
    p.add_argument("--timeout-s", type=float, default=5.0, help="time limit per judged assertion")
    p.add_argument("--limit", type=int, help="first N rows only")
    p.add_argument("--data", help="CRUXEval .jsonl (default: the shared data copy)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run_bench)
