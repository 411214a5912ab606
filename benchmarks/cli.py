"""Commands offered by the benchmarks package. Each module in BENCH_MODULES has `register(sub)` and adds
its parsers with `cwm_envs.cli.group(sub, "bench", ...)` (or another group, e.g. `cwm sandbox bench`)."""
from __future__ import annotations

import importlib

from cwm_envs.cli import group

BENCH_HELP = "benchmark runners and performance benches (each writes --out DIR/report.json)"
BENCH_MODULES: list[str] = [
    "benchmarks.sandbox_bench",
    "benchmarks.train_bench",
    "benchmarks.trace_model_bench",
    "benchmarks.humaneval_bench",
    "benchmarks.cruxeval_bench",
    "benchmarks.livecodebench_bench",
    "benchmarks.trace_bench",
    "benchmarks.trace_env_bench",
    "benchmarks.swebench_bench",
    "benchmarks.swe_env_bench",
    "benchmarks.scale_bench",
    "benchmarks.math_bench",
    "benchmarks.math_verify_bench",
    "benchmarks.math_attack_bench",
    "benchmarks.rl.cli",
    "benchmarks.serve_bench",
]


def bench_group(sub):
    """The `cwm bench` subcommands."""
    return group(sub, "bench", BENCH_HELP)


def register(sub) -> None:
    bench_group(sub)
    for name in BENCH_MODULES:
        importlib.import_module(name).register(sub)
