"""`cwm swe build` (instance images, offline) and `cwm swe eval` (grade predictions, SWE-bench style)."""
from __future__ import annotations

import json
import signal
import sys
import threading
import time

from cwm_envs.cli import group

SWE_HELP = "SWE-bench repositories in Docker: build images offline, evaluate predictions"


def _log(msg: str) -> None:
    from tqdm import tqdm

    tqdm.write(msg, file=sys.stderr)          # above a progress bar, when one is shown


def _sigterm_as_interrupt() -> None:
    """SIGTERM ends a run like Ctrl-C does, so its containers are removed before the process exits."""
    if threading.current_thread() is threading.main_thread():
        def handler(signum, frame):
            raise KeyboardInterrupt
        signal.signal(signal.SIGTERM, handler)


def cmd_build(args) -> int:
    from tqdm import tqdm

    from cwm_envs.errors import UsageError
    from cwm_envs.swe.dataset import load_instances
    from cwm_envs.swe.images import build_instance_image

    instances = load_instances(args.dataset, args.instances)
    failed = 0
    bar = tqdm(instances, desc="swe build", unit="image", disable=not sys.stderr.isatty())   # with an ETA
    for inst in bar:
        timings: dict = {}
        t = time.perf_counter()
        try:
            tag = build_instance_image(inst, args.repos, log=_log, timings=timings)
        except UsageError:
            raise
        except Exception as exc:              # an infrastructure fault: report it, go on with the others
            failed += 1
            tqdm.write(f"{inst.instance_id}\tFAILED\t{str(exc).splitlines()[0][:300]}")
            continue
        notes = "; ".join(timings.get("notes", []))
        tqdm.write(f"{inst.instance_id}\t{tag}\t{time.perf_counter() - t:.1f}s\tPython {timings.get('python')}"
                   + (f"\t{notes}" if notes else ""))
    return 1 if failed else 0


def cmd_eval(args) -> int:
    from cwm_envs.errors import UsageError
    from cwm_envs.swe.dataset import gold_predictions, load_instances, load_predictions
    from cwm_envs.swe.harness import run_evaluation

    if bool(args.predictions) == bool(args.gold):
        raise UsageError("give either --predictions FILE or --gold")
    instances = load_instances(args.dataset, args.instances)
    preds = gold_predictions(instances) if args.gold else load_predictions(args.predictions)
    _sigterm_as_interrupt()
    out = run_evaluation(instances, preds, repos_dir=args.repos, out_dir=args.out, workers=args.workers,
                         timeout=args.timeout, run_id=args.run_id, log=_log if args.verbose else (lambda _m: None))
    s = out["summary"]
    print(f"resolved {s['resolved_instances']}/{s['submitted_instances']}  unresolved {s['unresolved_instances']}  "
          f"empty {s['empty_patch_instances']}  errors {s['error_instances']}  -> {args.out}")
    for iid in s["error_ids"]:
        print(f"  error {iid}: {s['failure_reasons'].get(iid, '')[:200]}")
    if args.json:
        print(json.dumps(s, indent=2))
    return 0


def add_dataset_args(p, predictions: bool = True) -> None:
    """The arguments `cwm swe eval` and `cwm bench swebench` share."""
    p.add_argument("--dataset", required=True, help="SWE-bench rows: .parquet, .jsonl or .json (or a hub name online)")
    p.add_argument("--repos", default=None, help="directory of git clones, one per owner/name (or owner__name)")
    p.add_argument("--instances", nargs="+", default=None, metavar="ID", help="only these instance ids")
    if predictions:
        p.add_argument("--predictions", default=None, help="predictions .jsonl/.json (instance_id, model_patch, "
                                                          "model_name_or_path)")
        p.add_argument("--gold", action="store_true", help="use the dataset's own patches (validation mode)")
        p.add_argument("--workers", type=int, default=1, help="instances evaluated at once (default 1)")
        p.add_argument("--timeout", type=float, default=1800.0, help="seconds per eval script (default 1800)")
        p.add_argument("--run-id", default="cwm", help="names the run summary file OUT/MODEL.RUN_ID.json")


def register(sub) -> None:
    swe = group(sub, "swe", SWE_HELP)
    p = swe.add_parser("build", help="build the instance images (environment + repo layers), offline")
    add_dataset_args(p, predictions=False)
    p.set_defaults(func=cmd_build)
    p = swe.add_parser("eval", help="apply predictions, run the eval scripts, grade (writes OUT/logs, run summary)")
    add_dataset_args(p)
    p.add_argument("--out", required=True, help="output directory (rerun with the same one to resume)")
    p.add_argument("--json", action="store_true", help="also print the run summary as JSON")
    p.add_argument("-v", "--verbose", action="store_true", help="print image builds and retries")
    p.set_defaults(func=cmd_eval)
    __import__("cwm_envs.swe.mutate").swe.mutate.register(swe)   # `cwm swe mutate` (mutate.py)
