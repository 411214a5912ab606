"""Watching an RL run: where its metrics and a few of its episodes go, beside `metrics.jsonl`.

- `MetricsSink` writes each metrics row to TensorBoard event files in the run directory (tensorboardX: it is
  already in the tree through Ray's tune, writes the same event files as `torch.utils.tensorboard` without
  the `tensorboard` server package, and flushes from a background thread, so the loop never waits on disk),
  and to W&B when `wandb` is importable, offline by default (`WANDB_MODE` overrides it: `online`, `disabled`).
  Tags follow cleanrl: `charts/` for what the episodes earned and cost, `losses/` for the learner, `eval/`
  for held-out pass rates, `perf/` for timings.
- `TrajectorySampler` appends a bounded sample of each update's episodes to `trajectories.jsonl`: the prompt,
  each turn's action (and the tool calls in it), the env's reply, the step reward, and the evidence of the
  final info, decoded from the token ids the learner trains on. `cwm view RUN_DIR` reads both files.

    >>> tag("reward_mean"), tag("policy_loss"), tag("eval_greedy"), tag("sample_s")
    ('charts/reward_mean', 'losses/policy_loss', 'eval/greedy', 'perf/sample_s')
"""
from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

TRAJECTORIES = "trajectories.jsonl"
SEGMENT_CHARS = 4000      # longest prompt, action or reply kept per turn (the middle of a longer one is cut)
EVIDENCE_CHARS = 4000     # longest JSON of one evidence field
# Any `<tool: NAME>...</tool>` block, lenient on purpose: the view shows what the policy wrote, even when the
# env refused it as malformed (each env's own parser decides what counts).
TOOL_CALL_RE = re.compile(r"<tool:\s*([^>\n]*?)>\n?(.*?)\n?</tool>", re.S)

_LOSSES = {"kl_to_start", "entropy", "policy_loss", "clip_frac", "vf_loss", "grad_norm"}
_PERF = {"tokens_per_s", "env_steps_per_s", "sample_s", "update_s", "sync_s", "elapsed_s"}
_NOT_SCALARS = {"step"}


def tag(key: str) -> str:
    """The TensorBoard tag of a metrics.jsonl key."""
    if key.startswith("eval_"):
        return f"eval/{key[5:]}"
    if key in _LOSSES:
        return f"losses/{key}"
    if key in _PERF:
        return f"perf/{key}"
    return f"charts/{key}"


class MetricsSink:
    """TensorBoard event files in `out` (and a W&B offline run under `out/wandb` when wandb is importable).

    `log(row)` takes a metrics.jsonl row: every numeric field but `step` becomes a scalar at `row["step"]`.
    A resumed run appends a new event file; TensorBoard merges them by step.
    """

    def __init__(self, out: str | Path, config: dict | None = None, *, name: str | None = None):
        from tensorboardX import SummaryWriter

        self.out = Path(out)
        self.tb = SummaryWriter(logdir=str(self.out), flush_secs=10)
        self.wandb = _wandb_run(self.out, config or {}, name or self.out.name)

    def log(self, row: dict[str, Any]) -> None:
        step = int(row.get("step", 0))
        scalars = {tag(k): float(v) for k, v in row.items()
                   if k not in _NOT_SCALARS and isinstance(v, (int, float)) and not isinstance(v, bool)}
        for name, value in scalars.items():
            self.tb.add_scalar(name, value, step)
        if self.wandb is not None:
            self.wandb.log(scalars, step=step)

    def close(self) -> None:
        self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None


def _wandb_run(out: Path, config: dict, name: str):
    """A W&B run writing under `out` (offline unless WANDB_MODE says otherwise), or None without wandb."""
    try:
        import wandb
    except ImportError:
        return None
    mode = os.environ.get("WANDB_MODE", "offline")
    if mode == "disabled":
        return None
    try:
        return wandb.init(dir=str(out), mode=mode, project=os.environ.get("WANDB_PROJECT", "cwm-envs"), name=name,
                          config=config)
    except Exception as exc:  # a side channel: its failure must not end a training run
        print(f"W&B off for this run: {type(exc).__name__}: {str(exc)[:200]}", file=sys.stderr)
        return None


# --- episodes ---------------------------------------------------------------------------------------------

def _cut(text: str, limit: int = SEGMENT_CHARS) -> str:
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n[... {len(text) - 2 * half} characters cut ...]\n{text[-half:]}"


def outcome(traj) -> str:
    """"error" (the env or worker failed: never trained on), "cut" (a budget ended it), "pass" or "fail"."""
    if traj.error is not None:
        return "error"
    if traj.info.get("cut"):
        return "cut"
    return "pass" if traj.reward > 0 else "fail"


def episode_record(traj, decode: Callable[[Sequence[int]], str], step: int) -> dict[str, Any]:
    """One episode for the view: the turns decoded from the exact token ids, tool calls, rewards, evidence."""
    ids, mask, ends = traj.ids, traj.policy_mask, traj.turn_ends
    turns, start = [], traj.prompt_len
    for k, end in enumerate(ends):
        first = next((i for i in range(start, end + 1) if mask[i]), end + 1)
        if k:                                            # the env tokens before this action: the last reply
            turns[-1]["reply"] = _cut(decode(ids[start:first]))
        action = decode(ids[first:end + 1])
        calls = [{"name": n.strip(), "arg": _cut(a, 1000)} for n, a in TOOL_CALL_RE.findall(action)]
        turns.append({"action": _cut(action), "reply": "", "tool_calls": calls,
                      "reward": traj.rewards[k] if k < len(traj.rewards) else None, "tokens": end + 1 - first})
        start = end + 1
    if turns and start < len(ids):
        turns[-1]["reply"] = _cut(decode(ids[start:]))
    evidence = {k: v for k, v in traj.info.items() if k not in ("task_id", "turn")}
    return {
        "step": step, "version": traj.version, "env_id": traj.env_id, "task_id": traj.task_id, "group": traj.group,
        "seed": traj.seed, "reward": traj.reward, "outcome": outcome(traj), "error": traj.error,
        "policy_tokens": traj.num_policy_tokens, "prompt": _cut(decode(ids[:traj.prompt_len])), "turns": turns,
        "evidence": {k: _bounded(v) for k, v in evidence.items()},
    }


def _bounded(value: Any) -> Any:
    """`value` itself when its JSON is short, else its JSON cut in the middle (a string)."""
    text = json.dumps(value, default=str)
    return value if len(text) <= EVIDENCE_CHARS else _cut(text, EVIDENCE_CHARS)


def pick(trajs: Sequence, k: int) -> list:
    """Up to `k` episodes spread evenly over the batch (sorted by group, so over tasks), failed ones first: an
    infrastructure fault is rare and is what a reader of the log most needs to see."""
    if k <= 0 or not trajs:
        return []
    errors = [t for t in trajs if t.error is not None][: max(1, k // 2)]
    rest = [t for t in trajs if t.error is None]
    n = min(k - len(errors), len(rest))
    return errors + [rest[(i * len(rest)) // n] for i in range(n)] if n > 0 else errors


class TrajectorySampler:
    """Appends `per_update` episodes of each update to `out/trajectories.jsonl` (0: writes nothing)."""

    def __init__(self, out: str | Path, decode: Callable[[Sequence[int]], str], per_update: int):
        self.path = Path(out) / TRAJECTORIES
        self.decode, self.per_update = decode, per_update

    def write(self, trajs: Sequence, step: int) -> int:
        chosen = pick(trajs, self.per_update)
        if chosen:
            with self.path.open("a") as fh:
                for t in chosen:
                    fh.write(json.dumps(episode_record(t, self.decode, step), default=str) + "\n")
        return len(chosen)
