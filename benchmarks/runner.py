"""The one sampling runner behind `cwm bench math|humaneval|cruxeval|livecodebench|traces`: any policy, any
registered text env, N samples per task, scored by the env's own reward path.

Episodes run as RL rollouts do (`agents.rollout.RolloutWorker`, in this process): the env poses the task,
the policy answers (batched across tasks and samples), the env judges; multi-turn envs go on until done.
Each sample is a line of `OUT/samples.jsonl` (task id, sample index, completion, extracted answer, reward,
evidence), written as its chunk finishes, so a run stopped half way resumes with the same `--out`: samples
already scored are kept, samples whose machinery failed are run again. `OUT/run.json` records the policy and
sampling; a resume under different settings is refused (that would mix two runs).

An infrastructure fault (a server unreachable after retries, a sandbox or Docker failure) is counted under
`infra`, never scored: pass@k of a task uses its scored samples only. Any other error while the env handled
the policy's action is the action's doing as far as the score goes: it counts as a failed sample (status
`error`, listed apart), so an answer that crashes a judge can never drop out of the denominator.
"""
from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from benchmarks.report import pass_at_k
from cwm_envs.errors import UsageError


@dataclass
class SampleRun:
    """What a run gave: per task, the scored samples and how many passed; the faults apart."""

    task_ids: list[str]
    scored: list[int]
    passed: list[int]
    infra: int = 0
    errors: int = 0
    records: list[dict] = field(default_factory=list)
    wall_s: float = 0.0
    policy_tokens: int = 0

    def pass_at(self, k: int) -> float | None:
        """Mean unbiased pass@k over the tasks with at least k scored samples (None when none has)."""
        vals = [pass_at_k(n, c, k) for n, c in zip(self.scored, self.passed) if n >= k]
        return sum(vals) / len(vals) if vals else None

    def summary(self, ks: Sequence[int], samples: int) -> dict:
        out: dict[str, Any] = {"tasks": len(self.task_ids), "samples_per_task": samples,
                               "scored_samples": sum(self.scored), "passed_samples": sum(self.passed),
                               "infra_faults": self.infra, "errors": self.errors}
        for k in ks:
            if k <= samples:
                out[f"pass@{k}"] = self.pass_at(k)
        out["accuracy"] = sum(self.passed) / sum(self.scored) if sum(self.scored) else None
        return out


def _evidence(outcomes: dict) -> dict:
    """The small, JSON-able part of the reward's evidence."""
    out = {}
    for k, v in (outcomes or {}).items():
        try:
            text = json.dumps(v)
        except (TypeError, ValueError):
            continue
        if len(text) <= 2000:
            out[k] = v
    return out


def run_samples(env_id: str, env_kwargs: dict, tasks: Sequence[Any], policy, *, samples: int = 1, seed: int = 0,
                greedy: bool = False, out: str | Path | None = None, name: str = "samples", config: dict | None = None,
                env_threads: int = 2, batch: int = 16, max_turns: int = 16, progress: bool = True,
                label: str = "") -> SampleRun:
    """`samples` episodes of each task in `tasks` (reset option `task=index`), scored by `env_id`'s reward.

    `out/name.jsonl` keeps every sample (and lets a rerun resume); `config` (the policy and sampling) is
    checked against `out/name.run.json` on resume. `batch` is how many episodes share a policy call.
    """
    import time

    from agents.rollout import EnvSpec, Request, RolloutWorker

    ids = [str(getattr(t, "id", getattr(t, "instance_id", i))) for i, t in enumerate(tasks)]
    done: dict[tuple[str, int], dict] = {}
    path = Path(out) / f"{name}.jsonl" if out is not None else None
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = path.with_suffix(".run.json")
        config = json.loads(json.dumps(config or {}, default=str))
        if path.exists() and meta.exists():
            before = json.loads(meta.read_text())
            if before != config:
                changed = sorted(k for k in set(before) | set(config) if before.get(k) != config.get(k))
                raise UsageError(f"{path.parent} holds a run with other settings ({', '.join(changed)}); "
                                 "use another --out, or the same settings to resume")
            for line in path.read_text().splitlines():
                try:
                    r = json.loads(line)
                except json.JSONDecodeError:   # a line cut by a crash: that sample runs again
                    continue
                if r.get("status") in ("scored", "error"):
                    done[(r["task_id"], r["sample"])] = r
        meta.write_text(json.dumps(config, indent=2) + "\n")
        # rewrite the kept records only (failed ones run again)
        path.write_text("".join(json.dumps(r) + "\n" for r in done.values()))

    todo = []  # (task index, [sample indices still to run])
    for i, tid in enumerate(ids):
        need = [s for s in range(samples) if (tid, s) not in done]
        if need:
            todo.append((i, need))
    run = SampleRun(task_ids=ids, scored=[0] * len(ids), passed=[0] * len(ids))
    index = {tid: i for i, tid in enumerate(ids)}
    for r in done.values():
        run.scored[index[r["task_id"]]] += 1
        run.passed[index[r["task_id"]]] += int(r["passed"])
        run.errors += r["status"] == "error"
        run.records.append(r)

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(ids) * samples, initial=len(done), desc=label or name, disable=not sys.stderr.isatty())
    worker = RolloutWorker([EnvSpec(env_id, kwargs=env_kwargs)], lambda: policy, max_turns=max_turns,
                           env_threads=env_threads)
    t0 = time.perf_counter()
    try:
        per_call = max(1, batch // max(1, samples))
        for start in range(0, len(todo), per_call):
            chunk = todo[start:start + per_call]
            reqs = [Request(env=0, seed=seed + i, group=i, n=len(need), task=i) for i, need in chunk]
            # the sampler's seed is fixed by the run's seed and the chunk's first task: a rerun repeats
            trajs, stats = worker.run(reqs, sample_seed=seed * 1_000_003 + chunk[0][0], greedy=greedy)
            run.policy_tokens += stats.policy_tokens
            lines = []
            sample_of = {i: iter(need) for i, need in chunk}
            for t in trajs:
                i = t.group
                r = _record(ids[i], next(sample_of[i]), t)
                if r["status"] == "infra":
                    run.infra += 1
                else:                    # scored, or an error of the env on this action: a failed sample
                    run.scored[i] += 1
                    run.passed[i] += int(r["passed"])
                    run.errors += r["status"] == "error"
                run.records.append(r)
                lines.append(json.dumps(r, default=str) + "\n")
            if path is not None:
                with path.open("a") as f:
                    f.writelines(lines)
            if bar is not None:
                bar.update(len(trajs))
                bar.set_postfix(score=f"{sum(run.passed) / max(1, sum(run.scored)):.3f}", infra=run.infra)
    finally:
        if bar is not None:
            bar.close()
        worker.close()
    run.wall_s = time.perf_counter() - t0
    run.records.sort(key=lambda r: (index[r["task_id"]], r["sample"]))
    return run


def _record(task_id: str, sample: int, t) -> dict:
    o = t.info.get("outcomes") or {}
    reward = t.reward
    status = "scored" if t.error is None else "infra" if t.infra else "error"
    return {"task_id": task_id, "sample": sample, "status": status, "reward": reward if status == "scored" else None,
            "passed": status == "scored" and reward > 0, "completion": t.text,
            "extracted": o.get("extracted", o.get("answer")), "evidence": _evidence(o), "error": t.error,
            "policy_tokens": t.num_policy_tokens, "turns": len(t.turn_ends)}


def policy_config(args, spec: str | None = None) -> dict:
    """What identifies a run for resume: the policy spec, the model name and the sampling flags."""
    from agents.policies import sampling_from

    return {"policy": spec or args.policy, "model": getattr(args, "model", None), **asdict(sampling_from(args)),
            "prompts": getattr(args, "prompts", None)}


def open_policy(args, spec: str | None = None):
    """The policy of `--policy` (or `spec`), built from the shared flags; closed by `close_policy`."""
    from agents.policies import policy_from_args

    return policy_from_args(args, spec)


def close_policy(policy) -> None:
    close = getattr(policy, "close", None)
    if close is not None:
        close()


def add_runner_args(parser, unit: str = "task", baseline: str = "wrong") -> None:
    """The flags every sampling bench shares: the policy and sampling, --out, --k, --baseline, sizes."""
    from agents.policies import add_policy_args

    parser.add_argument("--out", required=True, help="report directory (samples.jsonl beside it; rerun to resume)")
    add_policy_args(parser, samples_unit=unit)
    parser.add_argument("--k", default="1,5,10", help="comma-separated k values for pass@k (those <= samples)")
    parser.add_argument("--baseline", default=baseline,
                        help=f"policy spec measured in the same run, one sample per {unit}, or none (default {baseline})")
    parser.add_argument("--workers", type=int, default=2, help="episodes judged at once, one sandbox each (default 2)")
    parser.add_argument("--batch", type=int, default=16, help="episodes per policy call (default 16)")
    parser.add_argument("--limit", type=int, help=f"first N {unit}s only")
    add_prompts_arg(parser)


def add_prompts_arg(parser) -> None:
    parser.add_argument("--prompts", help="directory of NAME.txt prompt templates replacing ours, e.g. those a "
                                          "checkpoint was trained on (names and fields: cwm_envs/prompts.py)")


def bench_policy(args, title: str, env_id: str, env_kwargs: dict, tasks: Sequence[Any], *, outcome=None,
                 policy=None, baseline=None, summary_extra: dict | None = None, details_extra: dict | None = None,
                 unit: str = "task") -> dict:
    """Run `--policy` (or `policy`, a built one) and the baseline on `tasks` through `env_id`, write
    report.json/.md and samples.jsonl under `--out`, print the headline; returns the summary.

    `outcome(record) -> str` names each sample's outcome for the outcomes table (default pass/fail)."""
    from agents.policies import parse_spec
    from benchmarks.report import sampling_ks, write_report

    ks = sampling_ks(args)
    if not tasks:
        raise UsageError(f"no {unit}s to run")
    for spec in (args.policy if policy is None else None, args.baseline if baseline is None else None):
        if spec not in (None, "none"):
            parse_spec(spec)
    outcome = outcome or (lambda r: "pass" if r["passed"] else "fail")
    if getattr(args, "prompts", None):
        env_kwargs = {**env_kwargs, "prompts": args.prompts}

    def one(spec, built, samples, name):
        pol = built if built is not None else open_policy(args, spec)
        try:
            cfg = policy_config(args, spec) | {"samples": samples}
            return run_samples(env_id, env_kwargs, tasks, pol, samples=samples, seed=args.seed,
                               greedy=args.temperature == 0, out=args.out, name=name, config=cfg,
                               env_threads=args.workers, batch=args.batch, label=f"{unit} {spec}")
        finally:
            if built is None:
                close_policy(pol)

    main = one(args.policy, policy, args.samples, "samples")
    summary = {"policy": args.policy, **main.summary(ks, args.samples), "wall_s": round(main.wall_s, 2),
               "samples_per_s": round(sum(main.scored) / max(main.wall_s, 1e-9), 1), "workers": args.workers,
               **(summary_extra or {})}
    if args.baseline != "none":
        base = one(args.baseline, baseline, 1, "baseline_samples")
        summary.update({"baseline_policy": args.baseline, "baseline_pass@1": base.pass_at(1),
                        "baseline_infra_faults": base.infra})
    counts: dict[str, int] = {}
    failing: dict[str, str] = {}
    for r in main.records:
        name = outcome(r) if r["status"] == "scored" else r["status"]  # infra, or error (a failed sample)
        counts[name] = counts.get(name, 0) + 1
        if r["status"] != "scored" or not r["passed"]:
            failing.setdefault(r["task_id"], r.get("error") or json.dumps(r["evidence"])[:300])
    rows = [{unit: tid, "passed": c, "scored": n} for tid, n, c in zip(main.task_ids, main.scored, main.passed)]
    path = write_report(args.out, title, summary,
                        details={"per_task": rows, "failing": failing, "outcomes": counts, **(details_extra or {})},
                        tables={"outcomes": [{"outcome": k, "samples": v}
                                             for k, v in sorted(counts.items(), key=lambda kv: -kv[1])]})
    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.items()))
    if main.infra:
        print(f"{main.infra} samples hit infrastructure faults (not scored); rerun with the same --out to retry them",
              file=sys.stderr)
    print(f"report: {path}")
    return summary
