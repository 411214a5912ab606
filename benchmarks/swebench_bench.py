"""`cwm bench swebench` (resolve rate of predictions, with a baseline run beside it) and
`cwm bench swebench-speed` (seconds per instance: image build, cached evaluation, and the official
`swebench.harness.run_evaluation` on the same images, in the same session).

Baselines measured in the same run: for predictions, the gold patches on the same instances (which of
them this machine can grade at all, e.g. offline); for `--gold`, a no-op patch (the tests on the unfixed
code: every FAIL_TO_PASS test must fail, so nothing may resolve).
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.report import write_report
from cwm_envs.swe.official import official_image as _official_image
from cwm_envs.swe.validate import NOOP_PATCH


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _evaluate(instances, preds, args, out: Path) -> tuple[dict, float]:
    from cwm_envs.swe.harness import run_evaluation

    t = time.perf_counter()
    res = run_evaluation(instances, preds, repos_dir=args.repos, out_dir=out, workers=args.workers,
                         timeout=args.timeout, run_id=args.run_id, log=_log)
    return res, time.perf_counter() - t


def run_swebench(args) -> int:
    from cwm_envs.errors import UsageError
    from cwm_envs.swe.dataset import gold_predictions, load_instances, load_predictions

    if bool(args.predictions) == bool(args.gold):
        raise UsageError("give either --predictions FILE or --gold")
    instances = load_instances(args.dataset, args.instances)
    gold = gold_predictions(instances)
    preds = gold if args.gold else load_predictions(args.predictions)
    out = Path(args.out)
    main, secs = _evaluate(instances, preds, args, out / "eval")
    s = main["summary"]
    summary = {"instances": s["submitted_instances"], "resolved": s["resolved_instances"],
               "resolve_rate": round(s["resolved_instances"] / max(1, s["submitted_instances"]), 4),
               "unresolved": s["unresolved_instances"], "empty_patch": s["empty_patch_instances"],
               "errors": s["error_instances"], "seconds_per_instance": round(secs / max(1, len(main["results"])), 2)}
    rows = {i: {"instance": i, "status": r.status} for i, r in sorted(main["results"].items())}
    if args.baseline != "none":
        base_preds = ({k: dict(v, model_patch=NOOP_PATCH, model_name_or_path="noop") for k, v in gold.items()}
                      if args.gold else gold)
        base_preds = {k: v for k, v in base_preds.items() if k in preds}
        name = "noop" if args.gold else "gold"
        base, _ = _evaluate(instances, base_preds, args, out / f"baseline_{name}")
        b = base["summary"]
        summary.update({"baseline": f"{name} patches on the same instances", "baseline_resolved": b["resolved_instances"],
                        "baseline_errors": b["error_instances"]})
        for i, r in base["results"].items():
            rows.setdefault(i, {"instance": i})[f"{name}_status"] = r.status
    write_report(out, "SWE-bench evaluation", summary, details={"run_summary": s},
                 tables={"instances": list(rows.values())})
    print(json.dumps(summary, indent=2))
    return 0


def run_speed(args) -> int:
    """Image build and cached evaluation timed apart, then the official harness on the same images."""
    import docker

    from cwm_envs.swe.dataset import load_instances
    from cwm_envs.swe.images import build_instance_image

    instances = load_instances(args.dataset, args.instances)
    client = docker.from_env(timeout=600)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, tags, rebuilt = [], {}, set()
    # 1. build: the instance layer from scratch (with --rebuild-env, both layers without Docker's cache)
    for inst in instances:
        timings: dict = {}
        tag = build_instance_image(inst, args.repos, timings=timings, log=_log)
        env = (client.images.get(tag).labels or {}).get("cwm-envs.swe.env")
        fresh_env = bool(args.rebuild_env and env not in rebuilt)
        if not fresh_env:
            client.images.remove(tag, force=True)          # the instance layer is built again below
        rebuilt.add(env)
        timings = {}
        tag = build_instance_image(inst, args.repos, timings=timings, log=_log, rebuild=fresh_env)
        tags[inst.instance_id] = tag
        rows.append({"instance": inst.instance_id, "env_build_s": timings["env_s"],
                     "instance_build_s": timings["instance_s"], "python": timings["python"]})
    ids = [i.instance_id for i in instances]
    with tempfile.TemporaryDirectory(prefix="cwm-swe-speed-") as tmp:
        tmp = Path(tmp)
        data = tmp / "data.jsonl"
        data.write_text("".join(json.dumps(_official_row(i)) + "\n" for i in instances))
        # 2. ours, cached images, as a user runs it (a fresh process)
        t = time.perf_counter()
        ours = subprocess.run([sys.executable, "-m", "cwm_envs.cli", "swe", "eval", "--dataset", str(data), "--repos",
                               str(args.repos), "--gold", "--out", str(tmp / "ours"), "--instances", *ids],
                              capture_output=True, text=True)
        ours_s = time.perf_counter() - t
        if ours.returncode != 0:
            raise RuntimeError(f"cwm swe eval failed: {ours.stderr[-1000:]}")
        ours_res = {i: json.loads((tmp / "ours" / "logs" / i / "report.json").read_text())[i]["resolved"]
                    for i in ids if (tmp / "ours" / "logs" / i / "report.json").exists()}
        # 3. official harness on the same images, tagged with the names it expects
        official_s, official_res, note = None, {}, ""
        for inst in instances:
            repo, _, name = _official_image(inst).rpartition(":")
            client.images.get(tags[inst.instance_id]).tag(repo, name)
        try:
            t = time.perf_counter()
            proc = subprocess.run([args.official_python, "-m", "swebench.harness.run_evaluation", "-d", str(data),
                                   "-p", "gold", "-i", *ids, "--max_workers", str(args.workers), "-id", "speed",
                                   "--report_dir", str(tmp)], cwd=tmp, capture_output=True, text=True,
                                  timeout=args.timeout * len(ids) + 600)
            official_s = time.perf_counter() - t
            if proc.returncode != 0:
                note = f"official harness exited {proc.returncode}: {proc.stderr[-500:]}"
            for i in ids:
                rep = tmp / "logs" / "run_evaluation" / "speed" / "gold" / i / "report.json"
                if rep.exists():
                    official_res[i] = json.loads(rep.read_text())[i]["resolved"]
        finally:
            for inst in instances:
                try:
                    client.images.remove(_official_image(inst), noprune=True)
                except docker.errors.ImageNotFound:
                    pass
    n = len(ids)
    for r in rows:
        r.update(ours_resolved=ours_res.get(r["instance"]), official_resolved=official_res.get(r["instance"]))
    per_ours = ours_s / n
    per_official = official_s / n if official_s else None
    summary = {"instances": n, "cached_eval_s_per_instance": round(per_ours, 2),
               "official_eval_s_per_instance": round(per_official, 2) if per_official else None,
               "speedup_vs_official": round(per_official / per_ours, 2) if per_official else None,
               "instance_build_s_mean": round(sum(r["instance_build_s"] for r in rows) / n, 2),
               "env_build_s_max": round(max(r["env_build_s"] for r in rows), 2),
               "verdicts_agree": sum(ours_res.get(i) == official_res.get(i) for i in ids),
               "target_cached_eval_s": 8.0, "target_speedup": 2.5, "workers": args.workers}
    if note:
        summary["official_note"] = note
    write_report(out, "SWE-bench harness speed (ours vs the official run_evaluation, same images)", summary,
                 details={"cmd_ours_stdout": ours.stdout[-2000:]}, tables={"instances": rows})
    print(json.dumps(summary, indent=2))
    return 0


def _official_row(inst) -> dict:
    """A dataset row as the official harness reads it (JSON strings for the test lists, the image name)."""
    row = {k: getattr(inst, k) for k in ("instance_id", "repo", "base_commit", "patch", "test_patch", "version",
                                         "environment_setup_commit", "eval_script", "log_parser", "eval_type",
                                         "problem_statement", "hints_text", "created_at")}
    row.update(FAIL_TO_PASS=json.dumps(list(inst.FAIL_TO_PASS)), PASS_TO_PASS=json.dumps(list(inst.PASS_TO_PASS)),
               image=_official_image(inst))
    return row


def register(sub) -> None:
    from benchmarks.cli import bench_group
    from cwm_envs.swe.cli import add_dataset_args

    bench = bench_group(sub)
    p = bench.add_parser("swebench", help="resolve rate of SWE-bench predictions (offline images, official grading)")
    add_dataset_args(p)
    p.add_argument("--baseline", choices=("auto", "none"), default="auto",
                   help="auto: gold patches beside predictions, a no-op patch beside --gold (default)")
    p.add_argument("--out", required=True, help="report directory (eval/ and baseline_*/ hold the logs)")
    p.set_defaults(func=run_swebench)
    p = bench.add_parser("swebench-speed", help="seconds per instance: image build, cached eval, official harness")
    add_dataset_args(p, predictions=False)
    p.add_argument("--workers", type=int, default=1, help="instances at once, ours and official (default 1)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per eval script")
    p.add_argument("--official-python", default=sys.executable,
                   help="a Python with swebench 5.x installed (default: this one)")
    p.add_argument("--rebuild-env", action="store_true", help="also build the environment layers anew (no Docker cache; wheels stay cached)")
    p.add_argument("--out", required=True, help="report directory")
    p.set_defaults(func=run_speed)
