"""`cwm swe validate`: check a machine before a real evaluation, on a stratified sample of a dataset.

For each sampled instance: build (or pull) its image, then grade the gold patch (must resolve) and a no-op
patch (the tests on the unfixed code: must not resolve; SWE-bench's literal empty patch is never run, so it
would prove nothing). Every instance that does not end "gold resolved, no-op unresolved" gets a failure
class (failures.py), so a runner sees at a glance what to fix. The report (OUT/report.json, report.md) has a
per-repository table, one row per instance (Python used, versions dropped, layer build times, image sizes)
and the images' disk use; OUT/images.json lists the images the run used (`cwm swe prune --run OUT`).
"""
from __future__ import annotations

import hashlib
import json
import re
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable, Iterable

from cwm_envs.errors import CwmError, UsageError
from cwm_envs.swe.dataset import SWEInstance, gold_predictions
from cwm_envs.swe.failures import classify

NOOP_PATCH = ("diff --git a/cwm_noop.txt b/cwm_noop.txt\nnew file mode 100644\n--- /dev/null\n+++ b/cwm_noop.txt\n"
              "@@ -0,0 +1 @@\n+noop\n")


def stratified_sample(instances: Iterable[SWEInstance], per_repo: int, seed: int = 0) -> list[SWEInstance]:
    """`per_repo` instances of each repository, spread over its versions (one per version in turn, newest
    version first), each version's instances in a seeded order. Deterministic for a seed."""
    def order(inst: SWEInstance) -> str:
        return hashlib.sha256(f"{seed}:{inst.instance_id}".encode()).hexdigest()

    def version_key(v: str):
        return tuple(int(p) if p.isdigit() else 0 for p in v.split("."))

    by_repo: dict[str, dict[str, list[SWEInstance]]] = defaultdict(lambda: defaultdict(list))
    for inst in instances:
        by_repo[inst.repo][inst.version].append(inst)
    picked: list[SWEInstance] = []
    for repo in sorted(by_repo):
        queues = [sorted(v, key=order) for _, v in sorted(by_repo[repo].items(), key=lambda kv: version_key(kv[0]),
                                                           reverse=True)]
        start = int(order(SWEInstance(repo, repo, "", "", (), ()))[:8], 16) % len(queues)
        queues = queues[start:] + queues[:start]       # which versions come first also depends on the seed
        mine: list[SWEInstance] = []
        while len(mine) < per_repo and any(queues):
            for q in queues:
                if q and len(mine) < per_repo:
                    mine.append(q.pop(0))
        picked += mine
    return picked


def _image_size_mb(client, tag: str | None) -> float | None:
    if not tag:
        return None
    try:
        return round(client.images.get(tag).attrs["Size"] / 1e6, 1)
    except Exception:
        return None


def _failure_class_of_log(log_dir: Path) -> str:
    """Why the gold patch did not resolve, read from its report and test output: the grader refused what the
    gold patch or the eval's setup changed, or did not trust the log (`grader refused`, `grader guard`: a
    defect of the grading on this environment); tests that reach for the internet (the containers have no
    network) are `network`; an import of something missing is a missing distribution; otherwise the
    environment makes tests fail that passed upstream."""
    try:
        report = next(iter(json.loads((log_dir / "report.json").read_text()).values()))
    except (OSError, ValueError, StopIteration, AttributeError):
        report = {}
    if report.get("refused"):
        return "grader refused"
    guard = report.get("guard") or ""
    if "seal" in guard or "imitates" in guard or report.get("unconfirmed_tests") or report.get("conflicting_tests"):
        return "grader guard"
    out = log_dir / "test_output.txt"
    text = out.read_text(errors="replace") if out.exists() else ""
    if re.search(r"Network is unreachable|Temporary failure in name resolution|Name or service not known", text):
        return "network"
    if "ModuleNotFoundError" in text or "No module named" in text:
        return "missing distribution"
    kind = classify(text[-20000:])
    return kind if kind not in ("other",) else "gold fails tests"


def validate(instances: list[SWEInstance], *, repos_dir: str | Path | None, out_dir: str | Path,
             timeout: float = 1800.0, image_source=None, log: Callable[[str], None] = lambda _m: None,
             progress: Callable[[str], None] = lambda _m: None) -> dict:
    """Build, then grade gold and no-op patches on each instance; write the report. Returns the report."""
    from cwm_envs.swe.images import _client
    from cwm_envs.swe.official import instance_image
    from cwm_envs.swe.run import evaluate_instance

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    client = _client()
    gold = gold_predictions(instances)
    earlier = _earlier_rows(out_dir)
    rows = []
    for n, inst in enumerate(instances, 1):
        iid = inst.instance_id
        row = {"instance": iid, "repo": inst.repo, "version": inst.version, "built": False, "gold": None,
               "noop": None, "failure": "", "reason": ""}
        t0 = time.perf_counter()
        timings: dict = {}
        try:
            instance_image(inst, repos_dir, image_source or "build", client=client, log=log, timings=timings)
            row["built"] = True
        except UsageError:
            raise
        except CwmError as exc:
            row.update(failure=classify(exc), reason=f"{type(exc).__name__}: {str(exc)[:600]}")
        except Exception as exc:                           # a Docker fault, a bug: still a row, with its class
            row.update(failure=classify(exc), reason=f"{type(exc).__name__}: {str(exc)[:600]}")
        row["build_s"] = round(time.perf_counter() - t0, 1)
        row.update(python=timings.get("python"), env_build_s=timings.get("env_s"),
                   instance_build_s=timings.get("instance_s"), env_image=timings.get("env_tag"),
                   image=timings.get("tag"), dropped=timings.get("dropped", []), notes=timings.get("notes", []))
        cached = []
        if row["built"]:
            for name, patch in (("gold", gold[iid]["model_patch"]), ("noop", NOOP_PATCH)):
                t = time.perf_counter()
                res = evaluate_instance(inst, {"instance_id": iid, "model_patch": patch, "model_name_or_path": name},
                                        repos_dir=repos_dir, log_dir=out_dir / name / iid, timeout=timeout,
                                        retries=1, log=log, image_source=image_source)
                row[name] = res.status
                row[f"{name}_s"] = round(time.perf_counter() - t, 1)
                cached.append(res.cached)
                if res.status == "error" and not row["failure"]:
                    row.update(failure=classify(res.error), reason=(res.error or "")[:600])
            if row["gold"] == "unresolved" and not row["failure"]:
                row.update(failure=_failure_class_of_log(out_dir / "gold" / iid),
                           reason="gold patch did not resolve; see gold/ID/report.json and test_output.txt")
            if row["noop"] == "resolved" and not row["failure"]:
                row.update(failure="no-op resolves", reason="the tests pass on the unfixed code")
        row["seconds"] = round(time.perf_counter() - t0, 1)
        if cached and all(cached) and iid in earlier:      # a resumed run: keep the first run's timings
            row.update({k: earlier[iid].get(k) for k in TIMINGS})
        row["image_mb"] = _image_size_mb(client, row.get("image"))
        row["env_image_mb"] = _image_size_mb(client, row.get("env_image"))
        rows.append(row)
        progress(f"[{n}/{len(instances)}] {iid}: built={row['built']} gold={row['gold']} noop={row['noop']}"
                 + (f" failure={row['failure']}" if row["failure"] else "") + f" ({row['seconds']} s)")
        _write(out_dir, rows, client)        # a partial report survives an interrupted run
    return _write(out_dir, rows, client)


TIMINGS = ("build_s", "env_build_s", "instance_build_s", "gold_s", "noop_s", "seconds")


def _earlier_rows(out_dir: Path) -> dict[str, dict]:
    """The rows of an earlier run into the same OUT (resumed runs report the first run's timings)."""
    try:
        return {r["instance"]: r for r in json.loads((out_dir / "report.json").read_text())["details"]["instances"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def repo_table(rows: list[dict]) -> list[dict]:
    """One line per repository: tried, built, gold resolved, no-op resolved, failures by class, seconds."""
    table = []
    for repo in sorted({r["repo"] for r in rows}):
        mine = [r for r in rows if r["repo"] == repo]
        fails: dict[str, int] = defaultdict(int)
        for r in mine:
            if r["failure"]:
                fails[r["failure"]] += 1
        table.append({"repo": repo, "tried": len(mine), "built": sum(r["built"] for r in mine),
                      "gold_resolved": sum(r["gold"] == "resolved" for r in mine),
                      "noop_resolved": sum(r["noop"] == "resolved" for r in mine),
                      "failures": ", ".join(f"{k} {v}" for k, v in sorted(fails.items())) or "-",
                      "seconds": round(sum(r["seconds"] for r in mine), 1)})
    return table


def _disk_use(client) -> dict:
    """Size of the SWE images on this engine (shared layers counted once by Docker's own accounting)."""
    try:
        df = client.df()
    except Exception:
        return {}
    swe = [im for im in df.get("Images", []) if any(t.startswith("cwm-envs/swe") or t.startswith("swebench/")
                                                      for t in (im.get("RepoTags") or []))]
    return {"swe_images": len(swe), "swe_images_unique_gb": round(sum(im.get("Size", 0) - im.get("SharedSize", 0)
                                                                       for im in swe) / 1e9, 2),
            "all_images_gb": round(df.get("LayersSize", 0) / 1e9, 2)}


def _write(out_dir: Path, rows: list[dict], client) -> dict:
    from cwm_envs.report import write_report

    n = len(rows)
    gold_ok = sum(r["gold"] == "resolved" for r in rows)
    summary = {"instances": n, "built": sum(r["built"] for r in rows), "gold_resolved": gold_ok,
               "gold_resolve_rate": round(gold_ok / max(1, n), 4),
               "noop_resolved": sum(r["noop"] == "resolved" for r in rows),
               "failures": sum(bool(r["failure"]) for r in rows),
               "unclassified_failures": sum(r["failure"] == "other" for r in rows),
               "seconds": round(sum(r["seconds"] for r in rows), 1), **_disk_use(client),
               "baseline": "no-op patch on the same instances (must resolve none)"}
    images = sorted({t for r in rows for t in (r.get("image"), r.get("env_image")) if t})
    (out_dir / "images.json").write_text(json.dumps(images, indent=1) + "\n")
    short = [{k: r.get(k) for k in ("instance", "python", "built", "gold", "noop", "failure", "build_s",
                                    "env_build_s", "instance_build_s", "image_mb", "seconds")} for r in rows]
    write_report(out_dir, "SWE-bench validation (gold must resolve, a no-op patch must not)", summary,
                 details={"instances": rows}, tables={"repositories": repo_table(rows), "instances": short})
    return {"summary": summary, "rows": rows}
