"""The `cwm bench rl learn|trl|scaling` commands (light: each command's module imports torch and Ray only when
it runs)."""
from __future__ import annotations

from agents.rl_args import ALGOS
from benchmarks.rl.common import LR, MATH, SETTINGS
from benchmarks.rl.learn import cmd_learn
from benchmarks.rl.scaling import cmd_scaling, cmd_straggler
from benchmarks.rl.trl_compare import cmd_trl


def add_warm_model_args(p, target: float | None = 0.3, shared: str = "the warm start") -> None:
    """The flags of a bench's starting model: a given directory, or the warm start built to a target."""
    p.add_argument("--model", help=f"warm model directory (default: build {shared}: SFT until --sft-target)")
    p.add_argument("--sft-target", type=float, default=target,
                   help="SFT until this sampled accuracy" + (" (default: 0.3 add/sub, 0.2 tool)" if target is None else ""))


def register(sub) -> None:
    from benchmarks.cli import bench_group

    rl = bench_group(sub).add_parser("rl", help="RL stage evidence: learning, TRL comparison, rollout scaling")
    g = rl.add_subparsers(dest="rl_command", metavar="COMMAND")
    rl.set_defaults(func=lambda _a, _p=rl: _p.print_help() or 2)

    p = g.add_parser("learn", help="GRPO (or PPO) lifts an SFT-warmed cwm-micro on add/sub or tool use, per seed")
    p.add_argument("--env", choices=list(SETTINGS), default=MATH,
                   help="cwm/Math-v0: add/sub in one turn; cwm/MathTool-v0: tasks that need the Python tool")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--algo", choices=list(ALGOS), default="grpo", help="the learner (PPO: value head + GAE)")
    p.add_argument("--minutes", type=float, help="RL wall-clock budget per seed (default: 8 add/sub, 3 tool use)")
    p.add_argument("--lr", type=float, default=LR)
    p.add_argument("--max-steps", type=int, default=10**6, help="also stop after this many updates")
    add_warm_model_args(p, target=None, shared="one per seed; given, every seed starts from it")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--problems", type=int, default=200, help="held-out problems")
    p.add_argument("--torch-threads", type=int, default=1, help="threads of this process (SFT, learner)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_learn)

    p = g.add_parser("trl", help="ours vs TRL GRPOTrainer: seconds per update and accuracy after N updates")
    p.add_argument("--updates", type=int, default=30)
    p.add_argument("--lr", type=float, default=LR)
    add_warm_model_args(p, shared="one per seed, as `learn` does")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                   help="each seed: its own warm model (unless --model), then both trainers")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--problems", type=int, default=200)
    p.add_argument("--torch-threads", type=int, default=1, help="threads of this process (both trainers)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_trl)

    p = g.add_parser("scaling", help="rollout env steps/s and tokens/s with 1 and 2 workers; Ray overhead")
    p.add_argument("--env", choices=list(SETTINGS), default=MATH,
                   help="cwm/Math-v0: one turn, all sampling; cwm/MathTool-v0: tool turns that wait on a sandbox")
    add_warm_model_args(p)
    p.add_argument("--tasks", type=int, default=32)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_scaling)

    p = g.add_parser("straggler", help="async vs sync GRPO with one slow task in N: seconds per update, held-out accuracy")
    add_warm_model_args(p)
    p.add_argument("--updates", type=int, default=20)
    p.add_argument("--tasks", type=int, default=32)
    p.add_argument("--slow-every", type=int, default=8, help="one task in this many is slow")
    p.add_argument("--delay", type=float, default=2.0, help="seconds the slow tasks' env takes to answer")
    p.add_argument("--env-threads", type=int, default=16,
                   help="env steps a worker runs at once, in both modes (so that the figure compares the modes)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--problems", type=int, default=200, help="held-out problems")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_straggler)
