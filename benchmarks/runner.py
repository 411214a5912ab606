"""The one sampling runner behind `cwm bench math|humaneval|cruxeval|livecodebench|traces`: any policy, any
registered text env, N samples per task, scored by the env's own reward path.

Episodes run as RL rollouts do (`agents.rollout.RolloutWorker`, in this process): the env poses the task,
the policy answers (batched across tasks and samples), the env judges; multi-turn envs go on until done.
Each sample is a line of `OUT/samples.jsonl` (task id, sample index, completion, extracted answer, reward,
evidence), written as its chunk finishes, so a run stopped half way resumes with the same `--out`: samples
already scored are kept, samples whose machinery failed are run again. `OUT/run.json` records the policy and
sampling; a resume under different settings is refused (that would mix two runs).

An infrastructure fault (a server unreachable after retries, a sandbox or Docker failure) is counted under
`infra`, never scored: pass@k of a task uses its scored samples only.
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
                if r.get("status") == "scored":
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
                if r["status"] == "scored":
                    run.scored[i] += 1
                    run.passed[i] += int(r["passed"])
                elif r["status"] == "infra":
                    run.infra += 1
                else:
                    run.errors += 1
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

    return {"policy": spec or args.policy, "model": getattr(args, "model", None), **asdict(sampling_from(args))}


def open_policy(args, spec: str | None = None):
    """The policy of `--policy` (or `spec`), built from the shared flags; closed by `close_policy`."""
    from agents.policies import policy_from_args

    return policy_from_args(args, spec)


def close_policy(policy) -> None:
    close = getattr(policy, "close", None)
    if close is not None:
        close()
