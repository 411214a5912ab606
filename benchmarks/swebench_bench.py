"""`cwm bench swebench` (an agent's resolve rate, or that of given predictions, with a baseline beside it) and
`cwm bench swebench-speed` (seconds per instance: image build, cached evaluation, and the official
`swebench.harness.run_evaluation` on the same images, in the same session).

`--agent SPEC` runs `cwm/SWE-v0` episodes (through gymnasium, its public API) on each instance in its
container, `--workers` at once, with CWM's tools and the budgets given as flags; writes SWE-bench
`predictions.jsonl` (`instance_id`, `model_name_or_path`, `model_patch`: the submitted patch, empty when
none) and `trajectories.jsonl` as episodes finish (a rerun with the same `--out` resumes), then grades the
predictions with the harness in the same run: one report with resolved, unresolved, empty patch and errors
apart. `--agent oracle` edits its way to the gold patch with the env's own tools (agents/swe_agents.py);
`hf:DIR` / `openai:URL` put a model in the loop; `nothing` looks around and submits nothing.

Baselines measured in the same run: for predictions, the gold patches on the same instances (which of
them this machine can grade at all, e.g. offline); for `--gold`, a no-op patch (the tests on the unfixed
code: every FAIL_TO_PASS test must fail, so nothing may resolve).
"""
from __future__ import annotations

import json
import os
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
    from cwm_envs.swe.run import run_evaluation

    t = time.perf_counter()
    res = run_evaluation(instances, preds, repos_dir=args.repos, out_dir=out, workers=args.workers,
                         timeout=args.timeout, run_id=args.run_id, log=_log)
    return res, time.perf_counter() - t


def _instances(args):
    from cwm_envs.swe.dataset import load_instances

    if args.dataset:
        return load_instances(args.dataset, args.instances), args.dataset
    from cwm_envs.swe.mutate import default_task_file

    path = default_task_file(log=_log)
    return load_instances(path, args.instances), str(path)


def _agent_episodes(args, instances, dataset: str, out: Path) -> dict[str, dict]:
    """Run the agent on every instance without a prediction yet; returns all predictions (resumed ones too)."""
    import gymnasium

    import cwm_envs  # noqa: F401  (registers cwm/SWE-v0)
    from agents.policies import parse_spec
    from cwm_envs.errors import InfraError, UsageError

    kind = args.agent if args.agent == "nothing" else parse_spec(args.agent)[0]
    pred_path, traj_path = out / "predictions.jsonl", out / "trajectories.jsonl"
    out.mkdir(parents=True, exist_ok=True)
    preds = {}
    if pred_path.exists():
        for line in pred_path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:        # cut by a crash: that instance runs again
                continue
            preds[row["instance_id"]] = row
    todo = [i for i in instances if i.instance_id not in preds]
    env_kwargs = dict(tasks=dataset, repos=args.repos, max_turns=args.max_turns, context_tokens=args.context_tokens,
                      command_timeout_s=args.command_timeout, max_episode_s=args.episode_timeout, log=_log)
    name = args.model or args.agent

    def record(iid: str, patch: str | None, traj: dict) -> None:
        row = {"instance_id": iid, "model_name_or_path": name, "model_patch": patch or ""}
        preds[iid] = row
        with traj_path.open("a") as f:
            f.write(json.dumps({"instance_id": iid, **traj}, default=str) + "\n")
        with pred_path.open("a") as f:
            f.write(json.dumps(row) + "\n")

    if kind in ("oracle", "nothing"):           # scripted agents that read the env's feedback turn by turn
        from concurrent.futures import ThreadPoolExecutor

        from agents.swe_agents import DoNothingSWEAgent, OracleSWEAgent, run_episode

        def one(inst):
            env = gymnasium.make("cwm/SWE-v0", **env_kwargs)
            try:
                ep = run_episode(env, OracleSWEAgent() if kind == "oracle" else DoNothingSWEAgent(),
                                 options={"task": inst.instance_id})
            except InfraError as exc:
                _log(f"{inst.instance_id}: infrastructure fault, left for a rerun: {exc}")
                return
            finally:
                env.close()
            record(inst.instance_id, ep.info.get("submission"),
                   {"reward": ep.reward, "steps": ep.steps, "tools": ep.tools, "reason": ep.info.get("reason")})

        with ThreadPoolExecutor(max(1, args.workers)) as pool:
            list(pool.map(one, todo))
        return preds
    if kind not in ("hf", "openai"):
        raise UsageError(f"--agent {args.agent}: a SWE agent is oracle, nothing, hf:DIR or openai:URL")
    from agents.policies import policy_from_args
    from agents.rollout import EnvSpec, Request, RolloutWorker

    policy = policy_from_args(args, args.agent)
    worker = RolloutWorker([EnvSpec("cwm/SWE-v0", kwargs=env_kwargs)], lambda: policy, max_turns=args.max_turns,
                           env_threads=max(1, args.workers))
    try:
        for start in range(0, len(todo), max(1, args.workers)):
            chunk = todo[start:start + max(1, args.workers)]
            reqs = [Request(env=0, seed=args.seed + k, group=k, n=1, task=inst.instance_id) for k, inst in enumerate(chunk)]
            trajs, _ = worker.run(reqs, sample_seed=args.seed * 1_000_003 + start, greedy=args.temperature == 0)
            for inst, t in zip(chunk, trajs):
                if t.error is not None and t.infra:
                    _log(f"{inst.instance_id}: infrastructure fault, left for a rerun: {t.error}")
                    continue
                record(inst.instance_id, t.info.get("submission"),
                       {"reward": t.reward, "turns": len(t.turn_ends), "reason": t.info.get("reason"),
                        "error": t.error, "policy_tokens": t.num_policy_tokens, "text": t.text})
    finally:
        worker.close()
        close = getattr(policy, "close", None)
        if close:
            close()
    return preds


def run_swebench(args) -> int:
    from cwm_envs.errors import UsageError
    from cwm_envs.swe.dataset import gold_predictions, load_predictions

    if sum(map(bool, (args.predictions, args.gold, args.agent))) != 1:
        raise UsageError("give one of --agent SPEC, --predictions FILE or --gold")
    out = Path(args.out)
    instances, dataset = _instances(args)
    gold = gold_predictions(instances)
    if args.agent:
        preds = _agent_episodes(args, instances, dataset, out)
        args.dataset = dataset
    else:
        preds = gold if args.gold else load_predictions(args.predictions)
    main, secs = _evaluate(instances, preds, args, out / "eval")
    s = main["summary"]
    summary = {"agent": args.agent, "instances": s["submitted_instances"], "resolved": s["resolved_instances"],
               "resolve_rate": round(s["resolved_instances"] / max(1, s["submitted_instances"]), 4),
               "unresolved": s["unresolved_instances"], "empty_patch": s["empty_patch_instances"],
               "errors": s["error_instances"], "seconds_per_instance": round(secs / max(1, len(main["results"])), 2)}
    rows = {i: {"instance": i, "status": r.status} for i, r in sorted(main["results"].items())}
    if args.baseline != "none":
        base_preds = ({k: dict(v, model_patch=NOOP_PATCH, model_name_or_path="noop") for k, v in gold.items()}
                      if args.gold else gold)  # beside an agent or predictions: the gold patches
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
    load_before = os.getloadavg()
    # 1. build: the instance layer from scratch (with --rebuild-env, both layers without Docker's cache;
    #    with --no-build, the images as they are: only the evaluations are timed)
    for inst in instances:
        timings: dict = {}
        tag = build_instance_image(inst, args.repos, timings=timings, log=_log)
        if not args.no_build:
            env = (client.images.get(tag).labels or {}).get("cwm-envs.swe.env")
            fresh_env = bool(args.rebuild_env and env not in rebuilt)
            if not fresh_env:
                client.images.remove(tag, force=True)          # the instance layer is built again below
            rebuilt.add(env)
            timings = {}
            tag = build_instance_image(inst, args.repos, timings=timings, log=_log, rebuild=fresh_env)
        tags[inst.instance_id] = tag
        rows.append({"instance": inst.instance_id, "env_build_s": None if args.no_build else timings["env_s"],
                     "instance_build_s": None if args.no_build else timings["instance_s"],
                     "python": timings["python"]})
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
        ours_phases = {i: _our_phases(tmp / "ours" / "logs" / i) for i in ids}
        # 3. official harness on the same images, tagged with the names it expects
        official_s, official_res, official_phases, note = None, {}, {}, ""
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
            official_phases = {i: official_phases_of(tmp / "logs" / "run_evaluation" / "speed" / "gold" / i /
                                                     "run_instance.log") for i in ids}
        finally:
            for inst in instances:
                try:
                    client.images.remove(_official_image(inst), noprune=True)
                except docker.errors.ImageNotFound:
                    pass
    n = len(ids)
    for r in rows:
        i = r["instance"]
        r.update(ours_resolved=ours_res.get(i), official_resolved=official_res.get(i),
                 **{f"ours_{k}": v for k, v in ours_phases.get(i, {}).items()},
                 **{f"official_{k}": v for k, v in official_phases.get(i, {}).items()})
    per_ours = ours_s / n
    per_official = official_s / n if official_s else None
    script_ours = _mean([r.get("ours_eval_script_s") for r in rows])
    script_official = _mean([r.get("official_eval_script_s") for r in rows])
    built = [r for r in rows if r["instance_build_s"] is not None]
    summary = {"instances": n, "cached_eval_s_per_instance": round(per_ours, 2),
               "official_eval_s_per_instance": round(per_official, 2) if per_official else None,
               "speedup_vs_official": round(per_official / per_ours, 2) if per_official else None,
               # the eval script (git, the repository's install, the tests) is the same work on both sides:
               # what each harness adds around it is the part a harness can make faster
               "eval_script_s_mean_ours": script_ours, "eval_script_s_mean_official": script_official,
               "overhead_s_per_instance_ours": round(per_ours - script_ours, 2) if script_ours is not None else None,
               "overhead_s_per_instance_official": (round(per_official - script_official, 2)
                                                    if per_official and script_official is not None else None),
               "phases_ours_mean": {k: _mean([ours_phases[i].get(k) for i in ids]) for k in OUR_PHASES},
               "phases_official_mean": {k: _mean([official_phases.get(i, {}).get(k) for i in ids])
                                        for k in OFFICIAL_PHASES},
               "instance_build_s_mean": _mean([r["instance_build_s"] for r in built]),
               "env_build_s_max": max((r["env_build_s"] for r in built), default=None),
               "verdicts_agree": sum(ours_res.get(i) == official_res.get(i) for i in ids),
               "load_average_before": [round(x, 1) for x in load_before],
               "load_average_after": [round(x, 1) for x in os.getloadavg()],
               "target_cached_eval_s": 8.0, "target_speedup": 2.5, "workers": args.workers}
    if note:
        summary["official_note"] = note
    write_report(out, "SWE-bench harness speed (ours vs the official run_evaluation, same images)", summary,
                 details={"cmd_ours_stdout": ours.stdout[-2000:]}, tables={"instances": rows})
    print(json.dumps(summary, indent=2))
    return 0


OUR_PHASES = ("image_check_s", "container_start_s", "patch_s", "eval_script_s", "teardown_s")
OFFICIAL_PHASES = ("container_start_s", "patch_s", "eval_script_s", "after_s", "teardown_s")


def _mean(values) -> float | None:
    got = [v for v in values if v is not None]
    return round(sum(got) / len(got), 2) if got else None


def _our_phases(log_dir: Path) -> dict:
    """Our per-phase seconds of one instance: the harness's `timings:` line and the eval script's own run."""
    phases: dict = {}
    try:
        lines = [ln for ln in (log_dir / "run_instance.log").read_text().splitlines() if ln.startswith("timings: ")]
        t = json.loads(lines[-1][len("timings: "):])
        script = next(iter(json.loads((log_dir / "report.json").read_text()).values())).get("eval_seconds")
    except (OSError, IndexError, ValueError, StopIteration):
        return phases
    phases.update(image_check_s=t.get("image_s"), container_start_s=t.get("container_s"), eval_script_s=script,
                  patch_s=round(t["grade_s"] - script, 2) if script is not None and "grade_s" in t else None,
                  teardown_s=t.get("teardown_s"))
    return phases


def official_phases_of(log: Path) -> dict:
    """Per-phase seconds of one instance, read from the official harness's run_instance.log timestamps: its
    container's start, the patch (copy, apply, git diff), the eval script (its own "Test runtime"), what comes
    after it (git diff, grading) and the container's stop and removal."""
    import datetime as dt
    import re

    try:
        text = log.read_text(errors="replace")
    except OSError:
        return {}
    stamps = []
    for line in text.splitlines():
        m = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) - \w+ - (.*)", line)
        if m:
            stamps.append((dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f"), m.group(2)))

    def at(pattern: str, last: bool = False):
        hits = [t for t, msg in stamps if re.search(pattern, msg)]
        return (hits[-1] if last else hits[0]) if hits else None

    create, started = at(r"^Creating container"), at(r"^Container for .* started")
    copied, stop = at(r"^Eval script for .* written"), at(r"^Attempting to stop container")
    runtime = re.search(r"Test runtime: ([\d_.]+) seconds", text)
    if not (started and copied and stop and runtime and stamps):
        return {}
    script = float(runtime.group(1).replace("_", ""))
    phases = {"container_start_s": (started - create).total_seconds() if create else None,
              "patch_s": (copied - started).total_seconds(), "eval_script_s": script,
              "after_s": (stop - copied).total_seconds() - script, "teardown_s": (stamps[-1][0] - stop).total_seconds()}
    return {k: (round(v, 2) if v is not None else None) for k, v in phases.items()}


def _official_row(inst) -> dict:
    """A dataset row as the official harness reads it (JSON strings for the test lists, the image name)."""
    row = {k: getattr(inst, k) for k in ("instance_id", "repo", "base_commit", "patch", "test_patch", "version",
                                         "environment_setup_commit", "eval_script", "log_parser", "eval_type",
                                         "problem_statement", "hints_text", "created_at")}
    row.update(FAIL_TO_PASS=json.dumps(list(inst.FAIL_TO_PASS)), PASS_TO_PASS=json.dumps(list(inst.PASS_TO_PASS)),
               image=_official_image(inst))
    return row


def register(sub) -> None:
    from agents.policies import add_policy_args
    from benchmarks.cli import bench_group
    from cwm_envs.swe.cli import add_dataset_args

    bench = bench_group(sub)
    p = bench.add_parser("swebench", help="an agent's (or predictions') SWE-bench resolve rate: episodes in "
                                          "containers, then official-style grading")
    p.add_argument("--dataset", default=None,
                   help="SWE-bench rows: .parquet, .jsonl or .json (default: the embedded mutate-fix tasks)")
    p.add_argument("--repos", default=None, help="directory of git clones, one per owner/name (or owner__name)")
    p.add_argument("--instances", nargs="+", default=None, metavar="ID", help="only these instance ids")
    p.add_argument("--predictions", default=None, help="grade these predictions (.jsonl/.json) instead of an agent")
    p.add_argument("--gold", action="store_true", help="grade the dataset's own patches (validation mode)")
    add_policy_args(p, flag="--agent", default=None, samples_unit="instance")
    p.set_defaults(max_tokens=4096, temperature=1.0)
    p.add_argument("--max-turns", type=int, default=128, help="turns per episode (CWM: 128)")
    p.add_argument("--context-tokens", type=int, default=131072, help="tokens per episode (CWM: 131072)")
    p.add_argument("--command-timeout", type=float, default=120.0, help="seconds per tool command (CWM: 120)")
    p.add_argument("--episode-timeout", type=float, default=3600.0, help="seconds per episode (default 3600)")
    p.add_argument("--workers", type=int, default=1, help="episodes, then evaluations, at once (default 1)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per eval script (default 1800)")
    p.add_argument("--run-id", default="cwm", help="names the run summary file OUT/MODEL.RUN_ID.json")
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
    p.add_argument("--no-build", action="store_true",
                   help="time the evaluations only: use the images as they are (built once when missing)")
    p.add_argument("--out", required=True, help="report directory")
    p.set_defaults(func=run_speed)
