"""The report files every evaluation command writes (`--out DIR` -> report.json + report.md).

Lives here, on the env floor, so that `cwm swe validate` and the benchmarks in benchmarks/ write one format.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


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
