"""`cwm audit --env ID --out DIR`: does any generic exploit strategy get paid by this env's reward?

Plays the strategies of `cwm_envs.audit.strategies` (and those of `--strategies MODULE`) against a
registered env, ours or a third party's, and writes DIR/report.json and DIR/report.md: per strategy, the
fraction of tasks paid, beside the oracle's. The exit status is 1 when any strategy is paid on more than 1%
of the tasks, when the oracle is paid on fewer than all, or when the env raised on an action. `--env all`
audits every registered `cwm/*` id with its embedded default.
"""
from __future__ import annotations

import importlib
import json
import sys

from cwm_envs.errors import UsageError


def _env_ids(choice: str) -> list[str]:
    from cwm_envs.registration import ENVS

    return sorted(ENVS) if choice == "all" else [choice]


def run(args) -> int:
    from tqdm import tqdm

    from benchmarks.report import write_report
    from cwm_envs.audit import run_audit

    for module in args.strategies or []:
        try:
            importlib.import_module(module)           # registers its strategies
        except ImportError as exc:
            raise UsageError(f"--strategies {module}: {exc}") from None
    try:
        kwargs = json.loads(args.kwargs) if args.kwargs else {}
    except json.JSONDecodeError as exc:
        raise UsageError(f"--kwargs is not JSON: {exc.msg}") from None
    families = set(args.families.split(",")) if args.families else None
    summaries, flagged, details = [], {}, {}
    for env_id in _env_ids(args.env):
        bar = tqdm(desc=f"audit {env_id}", unit="strategy", disable=not sys.stderr.isatty(), leave=False)
        report = run_audit(env_id, tasks=args.tasks, seed=args.seed, env_kwargs=kwargs, families=families,
                           progress=lambda _msg, b=bar: b.update(1))
        bar.close()
        s = report["summary"]
        summaries.append(s)
        details[env_id] = report
        flagged[f"{env_id}: strategies paid or crashing"] = [
            {k: r[k] for k in ("family", "strategy", "tasks", "paid", "paid_fraction", "crashed", "infra", "evidence")}
            for r in report["details"] if r["paid"] or r["crashed"]]
        verdict = "PASS" if s["passed"] else "FAIL: " + "; ".join(s["failures"][:3])
        print(f"{env_id}: {s['strategies']} strategies x {s['tasks']} tasks, oracle paid {s['oracle_paid']:.0%}, "
              f"worst {s['worst_strategy']} {s['worst_paid_fraction']:.0%} ({s['seconds']} s): {verdict}")
    passed = all(s["passed"] for s in summaries)
    summary = {"envs": len(summaries), "passed": passed, "tasks_per_env": args.tasks,
               "oracle_paid_min": min(s["oracle_paid"] for s in summaries),
               "worst_paid_fraction": max(s["worst_paid_fraction"] for s in summaries),
               "crashes": sum(s["crashes"] for s in summaries), "infra_faults": sum(s["infra_faults"] for s in summaries),
               "failures": [f"{s['env']}: {f}" for s in summaries for f in s["failures"]]}
    per_env = [{k: s[k] for k in ("env", "passed", "tasks", "strategies", "oracle_paid", "worst_strategy",
                                  "worst_paid_fraction", "crashes", "infra_faults", "seconds")} for s in summaries]
    path = write_report(args.out, "cwm audit: exploit strategies against the reward", summary, details,
                        {"per env": per_env, **flagged})
    print(f"report: {path}")
    return 0 if passed else 1


def register(sub) -> None:
    parser = sub.add_parser("audit", help="play generic exploit strategies against an env's reward",
                            description=__doc__.split("\n\n")[1])
    parser.add_argument("--env", required=True, help="a registered env id, or 'all' for every cwm/* id")
    parser.add_argument("--tasks", type=int, default=20, help="tasks per strategy (reset seeds SEED..SEED+N-1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kwargs", help="JSON keyword arguments for gymnasium.make (default: the embedded default)")
    parser.add_argument("--families", help="comma-separated strategy families to play (default: all)")
    parser.add_argument("--strategies", nargs="*", metavar="MODULE", help="modules that register more strategies")
    parser.add_argument("--out", required=True, help="report directory")
    parser.set_defaults(func=run)
