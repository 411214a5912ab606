"""Shared pieces of every benchmark: the report files (`--out DIR` -> report.json + report.md) and pass@k."""
from __future__ import annotations

import math

from cwm_envs.report import write_report  # noqa: F401  (one writer, shared with `cwm swe validate`)


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


