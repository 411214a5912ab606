"""`cwm demo`: the whole pipeline on the embedded defaults, as far as it exists, in a few minutes on a CPU.

Each capability adds one section function to SECTIONS; a section prints what a new user should see.
"""
from __future__ import annotations

import time

from benchmarks.humaneval_bench import demo_section as code_section
from benchmarks.math_bench import demo_section as math_section
from benchmarks.sandbox_bench import demo_section as sandbox_section
from benchmarks.swe_env_bench import demo_section as swe_section
from benchmarks.trace_bench import demo_section as trace_section
from benchmarks.train_bench import demo_section as model_section


def _section(title: str) -> None:
    print(f"\n=== {title} " + "=" * max(0, 70 - len(title)))


SECTIONS: list = [
    sandbox_section,
    code_section,
    math_section,
    trace_section,
    model_section,
    swe_section,
]


def run_demo(args) -> int:
    start = time.perf_counter()
    for fn in SECTIONS:
        _section((fn.__doc__ or fn.__name__).strip().splitlines()[0])
        fn(args)
    print(f"\ndemo finished in {time.perf_counter() - start:.1f} s")
    return 0


def register(sub) -> None:
    parser = sub.add_parser("demo", help="run the whole pipeline on the embedded defaults")
    parser.add_argument("--quick", action="store_true", help="smallest budgets (used by the tests)")
    parser.set_defaults(func=run_demo)
