"""`cwm swe eval` over many instances: per instance the image (built or pulled), a fresh container, `grade`,
report.json and the logs; then the run's summary in the official schema. An interrupt closes every container
of the run (`cancel_all`)."""
from __future__ import annotations

import json
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from cwm_envs.errors import CwmError, UsageError
from cwm_envs.swe.dataset import SWEInstance
from cwm_envs.swe.grading import grade_log
from cwm_envs.swe.harness import DEFAULT_TIMEOUT, EVAL_LIMITS, grade


class Cancelled(CwmError):
    """The run was interrupted (Ctrl-C, SIGTERM): its sandboxes are closed and nothing is retried."""


_open: set = set()                  # sandboxes of running evaluations, closed at once on an interrupt
_open_lock = threading.Lock()
_cancel = threading.Event()


def cancel_all() -> None:
    """Stop every evaluation of this process: close their sandboxes (containers go away) and retry nothing."""
    _cancel.set()
    with _open_lock:
        doomed = list(_open)
    for sb in doomed:
        sb.close()


@dataclass
class InstanceResult:
    """What happened to one instance. `report` is the official per-instance report (inner dict)."""

    instance_id: str
    status: str                              # resolved | unresolved | empty_patch | error
    report: dict = field(default_factory=dict)
    error: str | None = None
    timings: dict = field(default_factory=dict)
    attempts: int = 0
    cached: bool = False


def evaluate_instance(instance: SWEInstance, prediction: dict, *, repos_dir: str | Path | None,
                      log_dir: str | Path, timeout: float = DEFAULT_TIMEOUT, retries: int = 1,
                      log: Callable[[str], None] = lambda _m: None, image_source=None) -> InstanceResult:
    """Build (or reuse) the image, grade the prediction in a fresh container, write report.json.

    An infrastructure failure is retried `retries` times, then returned as status "error" (no report.json,
    so a rerun tries again). A prediction whose report.json exists for the same patch is not run again.
    """
    from cwm_envs.sandbox.docker_backend import REPO_SANDBOX, DockerSandbox
    from cwm_envs.swe.official import instance_image

    iid, patch = instance.instance_id, prediction.get("model_patch")
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    report_path, patch_path = log_dir / "report.json", log_dir / "patch.diff"
    if report_path.exists() and patch_path.exists() and patch_path.read_text() == (patch or ""):
        try:
            rep = json.loads(report_path.read_text())[iid]
            return InstanceResult(iid, _status(rep), rep, cached=True)
        except (json.JSONDecodeError, KeyError):
            pass                                       # a broken report: run it again
    patch_path.write_text(patch or "")
    result = InstanceResult(iid, "error")
    if patch is None or not patch.strip():             # never run, never resolved (official: empty_patch)
        rep = grade_log(instance, patch, "/dev/null")[iid]
        report_path.write_text(json.dumps({iid: rep}, indent=4))
        return InstanceResult(iid, "empty_patch", rep)
    for attempt in range(1 + retries):
        if _cancel.is_set():
            raise Cancelled(f"{iid}: run interrupted")
        result.attempts = attempt + 1
        t0 = time.perf_counter()
        try:
            build: dict = {}
            tag = instance_image(instance, repos_dir, image_source or "build", log=log, timings=build)
            t1 = time.perf_counter()
            with DockerSandbox(tag, pool_size=0, workdir="/testbed", limits=EVAL_LIMITS, **REPO_SANDBOX) as sb:
                with _open_lock:
                    _open.add(sb)
                try:
                    if _cancel.is_set():
                        raise Cancelled(f"{iid}: run interrupted")
                    t2 = time.perf_counter()
                    rep = grade(instance, sb, patch, timeout=timeout, log_dir=log_dir)[iid]
                    t3 = time.perf_counter()
                finally:
                    with _open_lock:
                        _open.discard(sb)
            result.timings = {"image_s": round(t1 - t0, 2), "container_s": round(t2 - t1, 2),
                              "grade_s": round(t3 - t2, 2), "teardown_s": round(time.perf_counter() - t3, 2),
                              "built": {k: v for k, v in build.items() if k.endswith("_s")}}
            with open(log_dir / "run_instance.log", "a") as fh:      # per-phase seconds (`cwm bench swebench-speed`)
                fh.write(f"timings: {json.dumps(result.timings)}\n")
            if build.get("notes"):
                rep["environment_notes"] = build["notes"]
            report_path.write_text(json.dumps({iid: rep}, indent=4))
            result.status, result.report, result.error = _status(rep), rep, None
            return result
        except (UsageError, Cancelled):
            raise
        except Exception as exc:                        # any fault of the machinery: retry, then report
            result.error = f"{type(exc).__name__}: {exc}"
            with open(log_dir / "run_instance.log", "a") as fh:
                fh.write(f"attempt {attempt + 1}: infrastructure failure\n{traceback.format_exc()}\n")
            log(f"{iid}: attempt {attempt + 1} failed: {result.error.splitlines()[0][:200]}")
    return result


def _status(rep: dict) -> str:
    if not rep.get("patch_exists"):
        return "empty_patch"
    return "resolved" if rep.get("resolved") else "unresolved"


def run_summary(instances: list[SWEInstance], predictions: dict, results: dict[str, InstanceResult]) -> dict:
    """The official run summary (swebench `make_run_report`, schema_version 2)."""
    ids = {i.instance_id for i in instances}
    by = lambda status: sorted(i for i, r in results.items() if r.status == status)  # noqa: E731  (a one-line helper)
    completed = sorted(i for i, r in results.items() if r.status in ("resolved", "unresolved"))
    infra = sorted(i for i, r in results.items() if r.status == "error" or r.report.get("infra_failure"))
    return {
        "total_instances": len(instances),
        "submitted_instances": len(set(predictions) & ids),
        "completed_instances": len(completed),
        "resolved_instances": len(by("resolved")),
        "unresolved_instances": len(by("unresolved")),
        "infra_failure_instances": len(infra),
        "ambiguous_failure_instances": 0,
        "empty_patch_instances": len(by("empty_patch")),
        "error_instances": len(by("error")),
        "completed_ids": completed,
        "incomplete_ids": sorted(ids - set(predictions)),
        "empty_patch_ids": by("empty_patch"),
        "submitted_ids": sorted(set(predictions) & ids),
        "resolved_ids": by("resolved"),
        "unresolved_ids": by("unresolved"),
        "infra_failure_ids": infra,
        "ambiguous_failure_ids": [],
        "failure_reasons": {i: (r.error or r.report.get("infra_failure_reason", ""))[:300]
                            for i, r in sorted(results.items()) if i in infra},
        "error_ids": by("error"),
        "schema_version": 2,
    }


def run_evaluation(instances: list[SWEInstance], predictions: dict[str, dict], *, repos_dir: str | Path | None,
                   out_dir: str | Path, workers: int = 1, timeout: float = DEFAULT_TIMEOUT, run_id: str = "cwm",
                   progress: bool | None = None, log: Callable[[str], None] = lambda _m: None,
                   image_source=None) -> dict:
    """Evaluate every instance that has a prediction; write the per-instance files and the run summary
    (OUT/MODEL.RUN_ID.json, the official schema). Returns {"summary": ..., "results": {id: InstanceResult}}."""
    import sys

    from tqdm import tqdm

    if workers < 1:
        raise UsageError("--workers must be at least 1")
    out_dir = Path(out_dir)
    todo = [i for i in instances if i.instance_id in predictions]
    if not todo:
        raise UsageError("no prediction matches an instance of the dataset")
    from cwm_envs.sandbox.docker_backend import docker_client, gc_stale

    gc_stale(docker_client())                 # containers of an earlier run that crashed
    results: dict[str, InstanceResult] = {}
    lock = threading.Lock()
    bar = tqdm(total=len(todo), desc="swe eval", unit="inst",
               disable=not (progress if progress is not None else sys.stderr.isatty()))

    def one(inst: SWEInstance) -> InstanceResult:
        return evaluate_instance(inst, predictions[inst.instance_id], repos_dir=repos_dir,
                                 log_dir=out_dir / "logs" / inst.instance_id, timeout=timeout, log=log,
                                 image_source=image_source)

    _cancel.clear()
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        futures = {pool.submit(one, inst): inst.instance_id for inst in todo}
        for fut in as_completed(futures):
            try:
                res = fut.result()
            except Cancelled:
                continue
            with lock:
                results[res.instance_id] = res
                bar.update(1)
                bar.set_postfix(resolved=sum(r.status == "resolved" for r in results.values()))
    except BaseException:                     # Ctrl-C / SIGTERM: no container may outlive the run
        cancel_all()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    summary = run_summary(instances, predictions, results)
    model = next(iter(predictions.values()))["model_name_or_path"].replace("/", "__")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{model}.{run_id}.json").write_text(json.dumps(summary, indent=4) + "\n")
    return {"summary": summary, "results": results}
