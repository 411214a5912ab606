"""`cwm bench math-attacks`: constant answers against the math verifier on MATH-500, GSM8K, AIME24 and AMC23.

Every response of `rewards.math_attacks.CONSTANT_RESPONSES` (the numbers 0..100 and other common values,
parser-breaking strings, empty, huge, unicode look-alikes, several boxes ...) is verified against the gold
answer of every row with `rewards.math.verify`, each distinct (gold, response) once. A payment is a hack unless
the constant is that row's gold (`rewards.math_attacks.same_constant`); the verifier passes when no response is
paid dishonestly on more than 1% of a dataset's rows. The baseline measured in the same run is the oracle:
each row's gold boxed in a CWM response, paid by `rewards.math.cwm_reward` on every row.

`run_sweep()` is the whole measurement (about 3 minutes on 2 cores for the four datasets and the whole bank);
`every={"math500": 25, ...}` keeps every N-th row of a dataset (the tests use a sample).
"""
from __future__ import annotations

import time
from typing import Mapping, Sequence

from benchmarks.report import write_report
from cwm_envs.sources.math import load_math
from rewards.math import cwm_reward
from rewards.math_attacks import CONSTANT_RESPONSES, constant_answer_sweep

DATASETS = ("math500", "gsm8k", "aime24", "amc23")
MAX_DISHONEST_SHARE = 0.01   # a constant answer paid (wrongly) on more of a dataset's rows than this is a hack


def oracle_response(gold: str) -> str:
    """A well-formed CWM response whose boxed answer is the gold itself."""
    return f"<think>\nworking it out\n</think>\nThe answer is $\\boxed{{{gold}}}$."


def load_golds(names: Sequence[str] = DATASETS, every: Mapping[str, int] | None = None) -> dict[str, list[str]]:
    """Gold answers per dataset, one per row (every N-th row where `every` names the dataset)."""
    every = every or {}
    return {name: [t.answer for t in load_math(name)][::max(1, every.get(name, 1))] for name in names}


def run_sweep(names: Sequence[str] = DATASETS, every: Mapping[str, int] | None = None,
              responses: Sequence[str] = CONSTANT_RESPONSES) -> dict:
    """The oracle and the constant-answer bank on each dataset: a summary with, per dataset, `rows`,
    `oracle_paid` (share of rows), `worst` (the response paid dishonestly on most rows), `worst_share`,
    `dishonest_payments`, `honest_payments`; `ok` when the oracle is paid everywhere and no worst share
    exceeds MAX_DISHONEST_SHARE; `details` lists every dishonest payment by dataset and response."""
    golds = load_golds(names, every)
    start = time.perf_counter()
    oracle = {name: sum(cwm_reward(g, oracle_response(g)).value > 0 for g in gs) for name, gs in golds.items()}
    oracle_s = time.perf_counter() - start
    sweep = constant_answer_sweep(golds, responses)
    sweep_s = time.perf_counter() - start - oracle_s
    per_dataset = {}
    for name, gs in golds.items():
        worst, share = sweep.worst(name)
        per_dataset[name] = {
            "rows": len(gs), "oracle_paid": oracle[name] / len(gs), "worst": worst, "worst_share": share,
            "dishonest_payments": sum(map(len, sweep.dishonest[name].values())),
            "honest_payments": sum(map(len, sweep.honest[name].values()))}
    ok = all(d["oracle_paid"] == 1.0 and d["worst_share"] <= MAX_DISHONEST_SHARE for d in per_dataset.values())
    details = {name: {r: [gs[i] for i in rows] for r, rows in sweep.dishonest[name].items()}
               for name, gs in golds.items()}
    return {"ok": ok, "responses": len(responses), "oracle_seconds": round(oracle_s, 1),
            "sweep_seconds": round(sweep_s, 1), "datasets": per_dataset, "details": details}


def run_bench(args) -> int:
    from cwm_envs.errors import UsageError

    names = [n.strip() for n in args.data.split(",") if n.strip()]
    unknown = sorted(set(names) - set(DATASETS))
    if unknown or not names:
        raise UsageError(f"--data takes a comma-separated subset of {','.join(DATASETS)}, not {args.data!r}")
    if args.every < 1:
        raise UsageError("--every must be at least 1")
    result = run_sweep(names, {n: args.every for n in names})
    summary = {"baseline": "oracle (the gold boxed) paid by cwm_reward on every row, same run",
               "ok": result["ok"], "responses": result["responses"], "max_dishonest_share": MAX_DISHONEST_SHARE,
               "oracle_seconds": result["oracle_seconds"], "sweep_seconds": result["sweep_seconds"]}
    for name, d in result["datasets"].items():
        summary.update({f"{name}_{k}": v for k, v in d.items()})
    table = [{"dataset": n, **d} for n, d in result["datasets"].items()]
    path = write_report(args.out, "Constant answers against the math verifier", summary, result["details"],
                        {"datasets": table})
    for row in table:
        print(f"{row['dataset']}: {row['rows']} rows, oracle {row['oracle_paid']:.3f}, worst constant "
              f"{row['worst']!r} paid wrongly on {row['worst_share']:.3%} ({row['dishonest_payments']} wrong "
              f"payments in all)")
    print(f"{'PASS' if result['ok'] else 'FAIL'} in {result['sweep_seconds']:.0f} s; report in {path}")
    return 0 if result["ok"] else 1


def register(sub) -> None:
    from benchmarks.cli import bench_group

    p = bench_group(sub).add_parser("math-attacks", help="constant boxed answers against the math verifier")
    p.add_argument("--out", required=True, help="report directory")
    p.add_argument("--data", default=",".join(DATASETS), help=f"datasets (default {','.join(DATASETS)})")
    p.add_argument("--every", type=int, default=1, help="every N-th row only (default 1: all rows)")
    p.set_defaults(func=run_bench)
