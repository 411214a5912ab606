"""`cwm swe build` (instance images, offline), `cwm swe eval` (grade predictions, SWE-bench style), `validate`
(gold and no-op patches on a sample), `prune` (images) and `mutate` (mutate-fix tasks from a repository)."""
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
    from cwm_envs.swe.failures import classify
    from cwm_envs.swe.official import instance_image

    instances = load_instances(args.dataset, args.instances)
    if args.env_only:
        return _build_envs(instances, args)
    failed = 0
    bar = tqdm(instances, desc="swe build", unit="image", disable=not sys.stderr.isatty())   # with an ETA
    for inst in bar:
        timings: dict = {}
        t = time.perf_counter()
        try:
            tag = instance_image(inst, args.repos, _source(args), log=_log, timings=timings)
        except UsageError:
            raise
        except Exception as exc:              # an infrastructure fault: report it, go on with the others
            failed += 1
            tqdm.write(f"{inst.instance_id}\tFAILED ({classify(exc)})\t{str(exc).splitlines()[0][:300]}")
            continue
        notes = "; ".join(timings.get("notes", []))
        tqdm.write(f"{inst.instance_id}\t{tag}\t{time.perf_counter() - t:.1f}s\tPython {timings.get('python')}"
                   + (f"\t{notes}" if notes else ""))
    return 1 if failed else 0


def _build_envs(instances, args) -> int:
    from cwm_envs.swe.images import build_env_images

    if args.repo:
        instances = [i for i in instances if i.repo in set(args.repo)]
    rows = build_env_images(instances, args.repos, log=_log)
    for r in rows:
        print("\t".join(str(r.get(k, "")) for k in ("repo", "version", "tag", "python", "date", "pins", "dropped",
                                                   "size_mb", "seconds", "failure", "reason")))
    if args.out:
        from cwm_envs.report import write_report

        write_report(args.out, "SWE environment images (one per repo, version, Python)",
                     {"environments": len(rows), "built": sum(bool(r["tag"]) for r in rows),
                      "failures": sum(bool(r.get("failure")) for r in rows),
                      "seconds": round(sum(r["seconds"] for r in rows), 1)},
                     tables={"environments": [{k: r.get(k, "") for k in ("repo", "version", "python", "date", "pins",
                                                                         "dropped", "size_mb", "seconds", "failure")}
                                              for r in rows]}, details={"environments": rows})
    return 1 if any(r.get("failure") for r in rows) else 0


def cmd_eval(args) -> int:
    from cwm_envs.errors import UsageError
    from cwm_envs.swe.dataset import gold_predictions, load_instances, load_predictions
    from cwm_envs.swe.run import run_evaluation

    if bool(args.predictions) == bool(args.gold):
        raise UsageError("give either --predictions FILE or --gold")
    instances = load_instances(args.dataset, args.instances)
    preds = gold_predictions(instances) if args.gold else load_predictions(args.predictions)
    _sigterm_as_interrupt()
    out = run_evaluation(instances, preds, repos_dir=args.repos, out_dir=args.out, workers=args.workers,
                         timeout=args.timeout, run_id=args.run_id, log=_log if args.verbose else (lambda _m: None),
                         image_source=_source(args))
    s = out["summary"]
    print(f"resolved {s['resolved_instances']}/{s['submitted_instances']}  unresolved {s['unresolved_instances']}  "
          f"empty {s['empty_patch_instances']}  errors {s['error_instances']}  -> {args.out}")
    from cwm_envs.swe.failures import classify

    for iid in s["error_ids"]:
        reason = s["failure_reasons"].get(iid, "")
        print(f"  error {iid} ({classify(reason)}): {reason[:200]}")
    if args.json:
        print(json.dumps(s, indent=2))
    return 0


def _source(args):
    from cwm_envs.swe.official import ImageSource

    return ImageSource.parse(getattr(args, "image_source", "build"), getattr(args, "registry", None))


def cmd_validate(args) -> int:
    from cwm_envs.errors import UsageError
    from cwm_envs.swe.dataset import load_instances
    from cwm_envs.swe.validate import stratified_sample, validate

    if args.per_repo is not None and args.per_repo < 1:
        raise UsageError("--per-repo must be at least 1")
    instances = load_instances(args.dataset, args.instances)
    if args.repo:
        wanted = set(args.repo)
        instances = [i for i in instances if i.repo in wanted]
        if not instances:
            raise UsageError(f"no instance of {', '.join(sorted(wanted))} in {args.dataset}")
    if not args.instances:
        instances = stratified_sample(instances, args.per_repo or 3, seed=args.seed)
    _sigterm_as_interrupt()
    res = validate(instances, repos_dir=args.repos, out_dir=args.out, timeout=args.timeout,
                   image_source=_source(args), log=_log if args.verbose else (lambda _m: None), progress=_log)
    from cwm_envs.swe.validate import repo_table

    for row in repo_table(res["rows"]):
        print("\t".join(str(v) for v in row.values()))
    s = res["summary"]
    print(f"gold resolved {s['gold_resolved']}/{s['instances']}  no-op resolved {s['noop_resolved']}  "
          f"failures {s['failures']}  -> {args.out}/report.md")
    return 0


def cmd_prune(args) -> int:
    from cwm_envs.swe.prune import prune

    removed, freed = prune(older_than_days=args.older_than, run_dir=args.run, everything=args.all,
                           dry_run=args.dry_run, log=_log)
    verb = "would remove" if args.dry_run else "removed"
    print(f"{verb} {len(removed)} image(s), {freed / 1e9:.2f} GB")
    return 0


def cmd_mutate(args) -> int:
    """`cwm swe mutate`: the embedded repository, or --repo with its --tests."""
    import tempfile
    from pathlib import Path

    from cwm_envs.errors import UsageError
    from cwm_envs.swe import default_repo
    from cwm_envs.swe.mutate import mutate_repo

    log = (lambda m: print(m, file=sys.stderr, flush=True)) if args.verbose else (lambda _m: None)
    with tempfile.TemporaryDirectory(prefix="cwm-tinylib-") as tmp:
        if args.repo is None:
            if args.tests:
                raise UsageError("--tests goes with --repo (the embedded repository brings its own test command)")
            repo, tests, name = default_repo.write_default_repo(Path(tmp) / default_repo.NAME), default_repo.TEST_CMD, default_repo.NAME
        else:
            if not args.tests:
                raise UsageError("--tests CMD is required with --repo (e.g. --tests 'python -m pytest -rA tests')")
            repo, tests, name = Path(args.repo), args.tests, args.name
        summary = mutate_repo(repo, tests, args.out, max_tasks=args.max_tasks, seed=args.seed,
                              max_candidates=args.max_candidates, pip_packages=tuple(args.pip),
                              install=tuple(args.install) if args.install is not None else None, python=args.python,
                              name=name, files=tuple(args.files or ()), log=log)
    print(f"{summary['tasks']} task(s) from {summary['tried']} tried of {summary['candidates']} candidate mutations "
          f"({summary['skipped']['no_test_failed']} made no test fail, {summary['skipped']['timed_out']} hung) "
          f"in {summary['seconds']} s -> {summary['out']} (git objects in {summary['repo']})")
    print("kinds: " + ", ".join(f"{k} {v}" for k, v in sorted(summary["kinds"].items())))
    return 0


def add_source_args(p) -> None:
    """--image-source and --registry (build, eval, validate)."""
    p.add_argument("--image-source", choices=("build", "official", "auto"), default="build",
                   help="build: offline images built here (default); official: SWE-bench's published instance "
                        "images, pulled; auto: official when pullable, else build")
    p.add_argument("--registry", default=None, metavar="HOST[:PORT]",
                   help="registry to pull official images from (default $CWM_SWE_REGISTRY, else Docker's)")


def add_dataset_args(p, predictions: bool = True) -> None:
    """The arguments `cwm swe eval` and `cwm bench swebench` share."""
    p.add_argument("--dataset", required=True, help="SWE-bench rows: .parquet, .jsonl or .json (or a hub name online)")
    p.add_argument("--repos", default=None, help="directory of git clones, one per owner/name (or owner__name); "
                                                 "without it, repositories are cloned into the cache")
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
    add_source_args(p)
    p.add_argument("--env-only", action="store_true", help="only the environment layer of each (repo, version); "
                                                            "without a clone, requirement files come from the "
                                                            "release sdist")
    p.add_argument("--repo", nargs="+", default=None, metavar="OWNER/NAME", help="only these repositories")
    p.add_argument("--out", default=None, help="with --env-only: report directory (report.json, report.md)")
    p.set_defaults(func=cmd_build)
    p = swe.add_parser("eval", help="apply predictions, run the eval scripts, grade (writes OUT/logs, run summary)")
    add_dataset_args(p)
    add_source_args(p)
    p.add_argument("--out", required=True, help="output directory (rerun with the same one to resume)")
    p.add_argument("--json", action="store_true", help="also print the run summary as JSON")
    p.add_argument("-v", "--verbose", action="store_true", help="print image builds and retries")
    p.set_defaults(func=cmd_eval)
    p = swe.add_parser("validate", help="check this machine: gold and no-op patches on a stratified sample, "
                                        "per-repository table (OUT/report.json, report.md)")
    add_dataset_args(p, predictions=False)
    p.add_argument("--per-repo", type=int, default=None, metavar="N", help="instances per repository (default 3; "
                                                                           "ignored with --instances)")
    p.add_argument("--repo", nargs="+", default=None, metavar="OWNER/NAME", help="only these repositories")
    p.add_argument("--seed", type=int, default=0, help="which instances the sample takes (default 0)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per eval script (default 1800)")
    p.add_argument("--out", required=True, help="report directory (rerun with the same one to resume)")
    p.add_argument("-v", "--verbose", action="store_true", help="print image builds and chosen versions")
    add_source_args(p)
    p.set_defaults(func=cmd_validate)
    p = swe.add_parser("prune", help="remove SWE images (instance, environment, tools) by age or by run")
    p.add_argument("--older-than", type=float, default=None, metavar="DAYS", help="images created before this")
    p.add_argument("--run", default=None, metavar="DIR", help="the images a `cwm swe validate --out DIR` used")
    p.add_argument("--all", action="store_true", help="every SWE image of this project")
    p.add_argument("--dry-run", action="store_true", help="list what would go, remove nothing")
    p.set_defaults(func=cmd_prune)
    p = swe.add_parser("mutate", help="make mutate-fix SWE tasks from a Python repository with tests",
                       description="Mutate functions of a repository, keep the mutations that make tests fail, and "
                                   "write SWE-bench-format task rows (run them with cwm/SWE-v0 or `cwm swe eval`). "
                                   "Without --repo, uses the embedded default repository.")
    p.add_argument("--repo", default=None, help="a local Python repository (its committed files if it is a git repo)")
    p.add_argument("--tests", default=None, help="test command run in the repository root, e.g. "
                                                 "'python -m pytest -rA tests' (pytest needs -rA)")
    p.add_argument("--out", required=True, help="output JSONL; the task commits go to a bare repo beside it (NAME.repo)")
    p.add_argument("--max-tasks", type=int, default=20, help="stop after this many tasks (default 20)")
    p.add_argument("--max-candidates", type=int, default=None, help="try at most this many mutations")
    p.add_argument("--seed", type=int, default=0, help="order in which mutations are tried (default 0)")
    p.add_argument("--pip", nargs="*", default=["pytest"], metavar="REQ",
                   help="requirements installed in the image (default: pytest)")
    p.add_argument("--install", nargs="*", default=None, metavar="CMD",
                   help="install commands run in the repo root (default: pip install -e . when it has a build file)")
    p.add_argument("--python", default=None, help="Python version of the image (3.11 or 3.9; default 3.11)")
    p.add_argument("--name", default=None, help="name used in task ids and problem statements (default: folder name)")
    p.add_argument("--files", nargs="*", default=None, metavar="PATH", help="only mutate these files or folders")
    p.add_argument("-v", "--verbose", action="store_true", help="print image builds")
    p.set_defaults(func=cmd_mutate)
