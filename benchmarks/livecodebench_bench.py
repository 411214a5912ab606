"""`cwm bench livecodebench --data FILE --policy SPEC`: pass@1 / pass@k on LiveCodeBench code-generation rows
through cwm/Code-v0 (public and private tests, stdin/stdout and functional, starter code), with
`--after/--before` windows on the contest date (LiveCodeBench's guard against contamination: score only the
problems released after a model's cutoff).

No copy of LiveCodeBench is reachable here, so the embedded default (no `--data`) and the tests use rows our
seeded code generator writes in LiveCodeBench's `code_generation_lite` format (`generated_rows`), with
private tests compressed the way LiveCodeBench ships them and a contest date per row; those rows also carry
a `reference_solution` (not a LiveCodeBench field) so that `--policy oracle` can play them. Real rows have
none: there, run a model (`hf:DIR`, `openai:URL`).
"""
from __future__ import annotations

import base64
import datetime
import json
import pickle
import zlib
from pathlib import Path

from benchmarks.runner import add_runner_args, bench_policy
from cwm_envs.errors import UsageError


def generated_rows(n: int = 40, seed: int = 0, start: str = "2024-01-01") -> list[dict]:
    """`n` stdin/stdout problems of the code generator as LiveCodeBench rows, one contest day apart."""
    from cwm_envs.sources.code_gen import generate_task

    rows, k = [], seed
    day = datetime.date.fromisoformat(start)
    while len(rows) < n:
        task = generate_task(k)
        k += 1
        if isinstance(task.tests, str):    # call-based problems of our generator are HumanEval-shaped: skip
            continue
        public = [{"input": t["input"], "output": t["output"], "testtype": "stdin"} for t in task.tests if t["public"]]
        private = [{"input": t["input"], "output": t["output"], "testtype": "stdin"} for t in task.tests
                   if not t["public"]]
        packed = base64.b64encode(zlib.compress(pickle.dumps(json.dumps(private)))).decode()
        date = day + datetime.timedelta(days=len(rows))
        rows.append({"question_title": task.id, "question_content": task.prompt, "platform": "generated",
                     "question_id": f"gen{k - 1}", "contest_id": f"gen-{date:%Y%m%d}",
                     "contest_date": f"{date.isoformat()}T00:00:00", "starter_code": "", "difficulty": "easy",
                     "public_test_cases": json.dumps(public), "private_test_cases": packed,
                     "metadata": json.dumps({}), "reference_solution": task.answer})
    return rows


def in_window(task, after: str | None, before: str | None) -> bool:
    """Whether the task's contest date is on or after `after` and before `before` (ISO dates)."""
    date = str(task.metadata.get("contest_date") or "")[:10]
    return (not after or date >= after) and (not before or date < before)


def run_bench(args) -> int:
    from cwm_envs.sources.code import load_livecodebench

    for flag in (args.after, args.before):
        if flag:
            try:
                datetime.date.fromisoformat(flag)
            except ValueError:
                raise UsageError(f"--after/--before take ISO dates (YYYY-MM-DD), got {flag!r}") from None
    data = args.data
    if data is None:
        data = Path(args.out) / "generated_livecodebench.jsonl"
        Path(args.out).mkdir(parents=True, exist_ok=True)
        data.write_text("".join(json.dumps(r) + "\n" for r in generated_rows(args.limit or 40, args.seed)))
    tasks = [t for t in load_livecodebench(data) if in_window(t, args.after, args.before)]
    if args.limit:
        tasks = tasks[: args.limit]
    from benchmarks.humaneval_bench import outcome

    bench_policy(args, f"LiveCodeBench code generation through cwm/Code-v0 ({args.policy})", "cwm/Code-v0",
                 {"tasks": tasks, "timeout_s": args.timeout_s}, tasks, outcome=outcome, unit="problem",
                 summary_extra={"data": str(data), "after": args.after, "before": args.before})
    return 0


def register(sub) -> None:
    from benchmarks.cli import bench_group

    p = bench_group(sub).add_parser("livecodebench", help="pass@1 / pass@k of a policy on LiveCodeBench rows")
    add_runner_args(p, "problem")
    p.add_argument("--data", help="LiveCodeBench code_generation_lite JSONL (default: rows our generator writes)")
    p.add_argument("--after", help="only problems whose contest date is on or after this ISO date")
    p.add_argument("--before", help="only problems whose contest date is before this ISO date")
    p.add_argument("--timeout-s", type=float, default=6.0, help="time limit per test run")
    p.set_defaults(func=run_bench)
