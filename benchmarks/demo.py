"""`cwm demo`: the whole pipeline on the embedded defaults, as far as it exists, in a few minutes on a CPU.

Each capability adds one section function to SECTIONS; a section prints what a new user should see.
"""
from __future__ import annotations

import importlib
import time


def _section(title: str) -> None:
    print(f"\n=== {title} " + "=" * max(0, 70 - len(title)))


# "module:function", imported only when the demo runs, so that `cwm --help` stays light.
SECTIONS: list[str] = [
    "benchmarks.sandbox_bench:demo_section",
    "benchmarks.humaneval_bench:demo_section",
    "benchmarks.math_bench:demo_section",
    "benchmarks.trace_bench:demo_section",
    "benchmarks.train_bench:demo_section",
    "benchmarks.swe_env_bench:demo_section",
    "benchmarks.rl.demo:demo_section",
]


def run_demo(args) -> int:
    start = time.perf_counter()
    for spec in SECTIONS:
        module, name = spec.split(":")
        fn = getattr(importlib.import_module(module), name)
        _section((fn.__doc__ or fn.__name__).strip().splitlines()[0])
        fn(args)
    print(f"\ndemo finished in {time.perf_counter() - start:.1f} s")
    return 0


def register(sub) -> None:
    parser = sub.add_parser("demo", help="run the whole pipeline on the embedded defaults")
    parser.add_argument("--quick", action="store_true", help="smallest budgets (used by the tests)")
    parser.set_defaults(func=run_demo)
