"""`cwm bench cruxeval --mode output|input`: pass@1 and pass@k (unbiased) of any policy on CRUXEval through
cwm/OutputPrediction-v0 / cwm/InputPrediction-v0.

Every sample is an episode of the env (benchmarks/runner.py): the completed assertion runs in the sandbox.
Scripted policies check the benchmark, the env and the tracer:
  oracle   the dataset's own assertion (must score 100%)
  tracer   output mode: the repr of the value the tracer saw the function return (CRUXEval's 800 rows
           checked against our tracer through the env); input mode: same as oracle
  wrong    another row's assertion that fails on this row
  empty    nothing (format failure);  noisy:P  oracle with probability P, else wrong (pass@k)
and `hf:DIR` / `openai:URL` put a model in the loop. The baseline (default `wrong`, one sample per row) is
measured in the same run.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

from benchmarks.runner import add_runner_args, bench_policy
from cwm_envs.tasks import Task


def _answer(task: Task, mode: str, value: str) -> str:
    m = task.metadata
    if mode == "output":
        return f"```python\nassert f({m['input']}) == {value}\n```"
    return f"```python\nassert f({value}) == {m['output']}\n```"


class TracerPolicy:
    """Output mode: asserts the traced return value of each row (input mode: the oracle's assertion)."""

    needs_oracle = True
    version = 0

    def __init__(self, mode: str, traced: dict[str, str]):
        self.mode, self.traced = mode, traced

    def encode(self, text: str) -> list[int]:
        return list(text.encode())

    def act(self, turns, *, oracle, **_):
        from agents.policy import Completion

        out = []
        for hint in oracle:
            if self.mode == "input":
                text = hint.action
            else:
                value = self.traced.get(hint.task.id)
                text = _answer(hint.task, "output", value) if value is not None else "the tracer saw no return value"
            out.append(Completion(ids=self.encode(text), logprobs=[0.0] * len(text.encode()), text=text, finish="stop"))
        return out


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


def outcome(record: dict) -> str:
    o = record["evidence"]
    return "pass" if o.get("pass") else "parse" if not o.get("parse", True) else "timeout" if o.get("timed_out") else "fail"


def run_bench(args) -> int:
    import sys

    from cwm_envs.sources.code import load_cruxeval

    tasks = load_cruxeval(args.data, limit=args.limit)
    traced, tracer_info, extra = None, None, {}
    if "tracer" in (args.policy, args.baseline) and args.mode == "output":
        traced, tracer_info = traced_outputs(tasks, args.workers, sys.stderr.isatty())
        extra = {"tracer_return_equals_output": tracer_info["return_equals_output"],
                 "tracer_repr_identical": tracer_info["repr_identical"]}
    tracer = TracerPolicy(args.mode, traced or {})
    env_id = "cwm/OutputPrediction-v0" if args.mode == "output" else "cwm/InputPrediction-v0"
    bench_policy(args, f"CRUXEval-{args.mode[0].upper()} through {env_id} ({args.policy})", env_id,
                 {"tasks": tasks, "timeout_s": args.timeout_s}, tasks, outcome=outcome, unit="row",
                 policy=tracer if args.policy == "tracer" else None,
                 baseline=tracer if args.baseline == "tracer" else None,
                 summary_extra={"mode": args.mode, **extra}, details_extra={"tracer": tracer_info})
    return 0


def register(sub) -> None:
    from benchmarks.cli import bench_group

    p = bench_group(sub).add_parser("cruxeval", help="pass@1 / pass@k of a policy on CRUXEval-O/-I")
    p.add_argument("--mode", choices=("output", "input"), default="output", help="CRUXEval-O or -I (output)")
    add_runner_args(p, "row")
    p.add_argument("--timeout-s", type=float, default=5.0, help="time limit per judged assertion")
    p.add_argument("--data", help="CRUXEval .jsonl (default: the shared data copy)")
    p.set_defaults(func=run_bench)
