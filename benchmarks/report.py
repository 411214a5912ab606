"""Shared pieces of every benchmark: the report files (`--out DIR` -> report.json + report.md) and pass@k."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021): 1 - C(n-c, k) / C(n, k), for n samples of which c passed.

    >>> pass_at_k(10, 0, 1), pass_at_k(10, 10, 5), round(pass_at_k(4, 1, 2), 4)
    (0.0, 1.0, 0.5)
    """
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def mean_pass_at_k(passed: list[int], samples: int, ks: list[int]) -> dict[str, float]:
    """Mean unbiased pass@k over tasks (`passed[i]` of `samples` passed), for each k not above `samples`."""
    return {f"pass@{k}": sum(pass_at_k(samples, c, k) for c in passed) / len(passed) for k in ks if k <= samples}


def add_sampling_args(parser, unit: str) -> None:
    """The flags every pass@k runner shares: --out, --samples, --k (read back with `sampling_ks`)."""
    parser.add_argument("--out", required=True, help="report directory")
    parser.add_argument("--samples", type=int, default=1, help=f"samples per {unit} (default 1)")
    parser.add_argument("--k", default="1,5,10", help="comma-separated k values for pass@k (those <= samples)")


def sampling_ks(args) -> list[int]:
    """The sorted k values of `--k`; a UsageError when --samples or a k is below 1 or --k is not integers."""
    from cwm_envs.errors import UsageError

    try:
        ks = sorted({int(k) for k in str(args.k).split(",") if k.strip()})
    except ValueError:
        raise UsageError(f"--k must be comma-separated integers, got {args.k!r}") from None
    if args.samples < 1 or not ks or min(ks) < 1:
        raise UsageError("--samples and every --k must be at least 1")
    return ks


def _md_value(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def write_report(out: str | Path, title: str, summary: dict[str, Any], details: Any = None,
                 tables: dict[str, list[dict]] | None = None) -> Path:
    """Write `out/report.json` ({"summary": ..., "details": ...}) and a Markdown twin `out/report.md`.

    `summary` holds the headline figures and the baseline measured in the same run; `tables` are extra
    Markdown tables (name -> rows of equal keys), e.g. a per-subject breakdown.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"summary": summary, "details": details if details is not None else {}}
    if tables:
        payload["tables"] = tables
    (out / "report.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    lines = [f"# {title}", "", "| figure | value |", "|---|---|"]
    lines += [f"| {k} | {_md_value(v)} |" for k, v in summary.items()]
    for name, rows in (tables or {}).items():
        if not rows:
            continue
        keys = list(rows[0])
        lines += ["", f"## {name}", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        lines += ["| " + " | ".join(_md_value(r.get(k, "")) for k in keys) + " |" for r in rows]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return out / "report.json"
