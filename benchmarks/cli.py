"""`cwm bench ...`: each benchmark module offers `register(bench_subparsers)`; list new ones in BENCH_MODULES."""
from __future__ import annotations

import importlib

from cwm_envs.cli import group

BENCH_MODULES: list[str] = [
]


def register(sub) -> None:
    bench = group(sub, "bench", "benchmark runners and performance benches (each writes --out DIR/report.json)")
    for name in BENCH_MODULES:
        importlib.import_module(name).register(bench)
