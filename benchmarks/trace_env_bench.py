"""`cwm bench trace-env --policy SPEC`: pass@1 / pass@k of a policy predicting execution traces in
cwm/Trace-v0 (`--mode next`: the next frame; `rest`: the rest of the trace), scored by the env's exact
match. The teacher-forced scoring of a checkpoint on a trace file is `cwm bench traces`; this one samples,
as an RL rollout does, through the shared runner (samples.jsonl, resume, infra faults apart).

Tasks: the embedded generator's seeded programs (default, `--limit` of them), `cruxeval`, or a
CRUXEval-format JSONL. The baseline (default `wrong`: another task's reference trace) runs in the same run.
"""
from __future__ import annotations

from benchmarks.runner import add_runner_args, bench_policy


def load_tasks(source: str, limit: int | None, seed: int = 0) -> list:
    import numpy as np

    from cwm_envs.envs.trace_env import TraceEnv
    from cwm_envs.sources.code import load_program_tasks

    if source == "generated":
        env = TraceEnv()
        try:
            return [env.generate_task(np.random.default_rng(seed + i)) for i in range(limit or 50)]
        finally:
            env.close()
    tasks = load_program_tasks(source)
    return tasks[:limit] if limit else tasks


def run_bench(args) -> int:
    tasks = load_tasks(args.tasks, args.limit, args.seed)
    bench_policy(args, f"Execution traces through cwm/Trace-v0 ({args.mode}, {args.policy})", "cwm/Trace-v0",
                 {"tasks": tasks, "mode": args.mode, "reward_scheme": "binary"}, tasks,
                 summary_extra={"mode": args.mode, "tasks_source": args.tasks})
    return 0


def register(sub) -> None:
    from benchmarks.cli import bench_group

    p = bench_group(sub).add_parser("trace-env", help="pass@1 / pass@k of a policy predicting traces (cwm/Trace-v0)")
    add_runner_args(p, "task")
    p.add_argument("--mode", choices=("next", "rest"), default="next", help="next frame (default) or the rest")
    p.add_argument("--tasks", default="generated", help="generated (default), cruxeval, or a CRUXEval-format JSONL")
    p.set_defaults(func=run_bench)
