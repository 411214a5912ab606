"""`cwm bench tracer`: how fast the tracer is, and how much it slows the traced code down.

Two levels, each with its untraced baseline measured in the same run:
- in process: inside the sandbox, each function is called `--repeats` times untraced, then once under
  the tracer; `events_per_s` = frames recorded / traced seconds, `slowdown` = traced / untraced seconds
  (summed over all functions; the median of per-function ratios is reported too);
- end to end: wall time of a whole `Tracer.trace_call` (sandbox round trip, interpreter re-exec for the
  fixed hash seed, rebuilding frames, rendering the text) against running the same call through the same
  sandbox untraced; and the corpus path, `Tracer.trace_many` in batches of `--batch` (one interpreter
  start per batch), as traces/s and events/s on one sandbox.
"""
from __future__ import annotations

import random
import statistics
import sys
import time

from benchmarks.report import write_report
from cwm_envs.errors import UsageError


def _jobs(source: str, limit: int) -> list[tuple[str, str, str, str]]:
    """(id, code, entry, input) to time."""
    if source == "cruxeval":
        from cwm_envs.sources.code import load_cruxeval

        return [(t.id, t.metadata["code"], "f", t.metadata["input"]) for t in load_cruxeval(limit=limit)]
    if source == "generated":
        from cwm_envs.sources.programs import generate_program

        progs = [generate_program(random.Random(f"bench:{i}"), n_inputs=1) for i in range(limit)]
        return [(f"gen-{i}", p.code, p.entry, p.inputs[0]) for i, p in enumerate(progs)]
    raise UsageError(f"--source must be cruxeval or generated, got {source!r}")


def run_bench(args) -> int:
    from tqdm import tqdm

    from cwm_envs.tracing.tracer import TraceJob, Tracer

    if args.limit < 1 or args.repeats < 1 or args.batch < 1:
        raise UsageError("--limit, --repeats and --batch must be at least 1")
    jobs = _jobs(args.source, args.limit)
    rows, statuses = [], {}
    with Tracer(timeout=args.timeout_s) as tracer:
        sandbox = tracer.sandbox
        sandbox.run("pass")  # start the server before timing
        for job_id, code, entry, inp in tqdm(jobs, desc="tracer", disable=not sys.stderr.isatty(), leave=False):
            start = time.perf_counter()
            result = tracer.trace_call(code, entry, inp, time_untraced=args.repeats)
            traced_wall = time.perf_counter() - start
            _ = result.text  # rendering is part of the cost
            statuses[result.status] = statuses.get(result.status, 0) + 1
            start = time.perf_counter()
            plain = sandbox.run(f"{code}\n\n{entry}({inp})\n", timeout=args.timeout_s)
            plain_wall = time.perf_counter() - start
            if result.status != "ok" or not plain.ok or not result.untraced_s:
                continue
            rows.append({"id": job_id, "events": len(result.frames), "traced_s": result.traced_s,
                         "untraced_s": result.untraced_s, "traced_wall_s": traced_wall,
                         "untraced_wall_s": plain_wall, "seed_fixed": result.seed_fixed})
        # The corpus path: batches share one interpreter start, each job in its own forked process.
        start = time.perf_counter()
        batched = []
        for i in range(0, len(jobs), args.batch):
            batched += tracer.trace_many([TraceJob(code, entry, inp) for _, code, entry, inp in jobs[i:i + args.batch]])
        batched_wall = time.perf_counter() - start
    if not rows:
        raise UsageError("no function traced successfully")
    events = sum(r["events"] for r in rows)
    traced = sum(r["traced_s"] for r in rows)
    untraced = sum(r["untraced_s"] for r in rows)
    wall_t = sum(r["traced_wall_s"] for r in rows)
    wall_u = sum(r["untraced_wall_s"] for r in rows)
    summary = {
        "source": args.source, "functions": len(rows), "events": events,
        "events_per_s": round(events / traced),
        "slowdown": round(traced / untraced, 1),
        "slowdown_median": round(statistics.median(r["traced_s"] / r["untraced_s"] for r in rows), 1),
        "traced_s": round(traced, 4), "baseline_untraced_s": round(untraced, 5),
        "end_to_end_traces_per_s": round(len(rows) / wall_t, 1),
        "end_to_end_events_per_s": round(events / wall_t),
        "end_to_end_ms_per_trace": round(1000 * wall_t / len(rows), 2),
        "baseline_sandbox_ms_per_run": round(1000 * wall_u / len(rows), 2),
        "end_to_end_slowdown": round(wall_t / wall_u, 2),
        "batched_traces_per_s": round(len(batched) / batched_wall, 1),
        "batched_events_per_s": round(sum(len(r.frames) for r in batched) / batched_wall),
        "batch": args.batch,
        "hash_seed_fixed": all(r["seed_fixed"] for r in rows),
        "statuses": statuses,
    }
    out = write_report(args.out, f"Tracer throughput ({args.source})", summary, details={"per_function": rows})
    print(" ".join(f"{k}={v}" for k, v in summary.items()))
    print(f"report: {out}")
    return 0


def demo_section(args) -> str:
    """Tracer: a small function in CWM's trace format, then an OutputPrediction episode"""
    from cwm_envs.envs.prediction import OutputPredictionEnv
    from cwm_envs.tracing import format as fmt
    from cwm_envs.tracing.tracer import Tracer

    code = ("def count_vowels(word):\n    n = 0\n    for c in word:\n        if c in 'aeiou':\n            n += 1\n"
            "    return n\n\ndef f(words):\n    best = None\n    for w in words:\n"
            "        if best is None or count_vowels(w) > count_vowels(best):\n            best = w\n    return best\n")
    with Tracer() as tracer:
        result = tracer.trace_call(code, "f", "['sky', 'tea']")
    text = result.text
    print(text.replace(fmt.FRAME_SEP, fmt.FRAME_SEP + "\n"))
    parsed = fmt.parse(text)
    same = len(parsed.frames) == len(result.frames) and all(a.same_step(b) for a, b in zip(parsed.frames, result.frames))
    print(f"{len(result.frames)} frames, returned {result.returned}; parses back to the same frames: {same}")
    rewards = {}
    env = OutputPredictionEnv()  # the embedded generator
    try:
        obs, info = env.reset(seed=7)
        print(f"\nOutputPrediction-v0 task {info['task_id']}:\n{obs}")
        for label, answer in (("oracle", env.reference_response(env.task)), ("wrong", "```python\n12345\n```")):
            if label == "wrong":
                env.reset(seed=7)
            _, reward, _, _, step_info = env.step(answer)
            rewards[label] = reward
            print(f"[{label}] answer {step_info['outcomes']['prediction']!r}: reward {reward:+.0f} "
                  f"({step_info['details']})")
    finally:
        env.close()
    return (f"{len(result.frames)}-frame trace {'round-trips' if same else 'PARSES DIFFERENTLY'}; "
            f"prediction: oracle {rewards['oracle']:+.0f}, wrong {rewards['wrong']:+.0f}")


def register(sub) -> None:
    from benchmarks.cli import bench_group

    p = bench_group(sub).add_parser("tracer", help="traced events/s and slowdown against untraced runs")
    p.add_argument("--out", required=True, help="report directory")
    p.add_argument("--source", choices=("cruxeval", "generated"), default="cruxeval", help="functions to time")
    p.add_argument("--limit", type=int, default=200, help="functions (default 200)")
    p.add_argument("--repeats", type=int, default=20, help="untraced calls per function for the baseline")
    p.add_argument("--batch", type=int, default=16, help="traces per sandbox run on the corpus path (16)")
    p.add_argument("--timeout-s", type=float, default=10.0, help="time limit per traced run")
    p.set_defaults(func=run_bench)
