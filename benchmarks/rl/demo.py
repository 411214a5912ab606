"""The `cwm demo` section of the RL stage."""
from __future__ import annotations

import tempfile
import time
from math import nan
from pathlib import Path

from benchmarks.rl.common import heldout, rl_args, warm_start


def demo_section(args) -> None:
    """GRPO on the embedded default: Ray rollouts in cwm/Math-v0 (add/sub), reward before and after"""
    from agents.train_rl import RLRun

    quick = getattr(args, "quick", False)
    with tempfile.TemporaryDirectory(prefix="cwm-demo-rl-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        model_dir = warm_start(tmp / "warm", 0, target=None, first=10 if quick else 150)
        print(f"warm start: cwm-micro + own tokenizer, SFT on oracle answers ({time.perf_counter() - t0:.0f} s)")
        a = rl_args(tmp / "rl", model_dir, 0, 0.15 if quick else 1.0, 2 if quick else 200, 1 if quick else 2)
        if quick:
            a.tasks, a.group = 4, 4
        rl = RLRun(a)
        try:
            problems = 16 if quick else 100
            before = heldout(rl.pool, problems, samples=2 if quick else 4)
            t1 = time.perf_counter()
            rl.train(lambda row: print(f"  update {row['step']:3d}: train reward {row.get('reward_mean', nan):+.3f}"))
            after = heldout(rl.pool, problems, samples=2 if quick else 4)
        finally:
            rl.close()
        print(f"held-out sampled accuracy {before['sampled']:.2f} -> {after['sampled']:.2f}, greedy "
              f"{before['greedy']:.2f} -> {after['greedy']:.2f} after {rl.step} GRPO updates "
              f"({time.perf_counter() - t1:.0f} s)")
