"""`cwm bench humaneval`: pass@1 and pass@k (unbiased) of any policy on HumanEval through cwm/Code-v0.

Every sample goes the way an RL rollout's would (benchmarks/runner.py): the env poses the task, the policy
answers, the sandboxed two-process judge runs the tests. `--policy oracle` answers with the canonical
solution (must score 100%), `wrong` with another task's canonical solution that fails this task's tests,
`empty` with nothing, `noisy:P` mixes them (pass@k); `hf:DIR` and `openai:URL` put a model in the loop.
The baseline (default `wrong`, one sample per task) is measured in the same run.
"""
from __future__ import annotations

from benchmarks.runner import add_runner_args, bench_policy
from cwm_envs.envs.code_env import CodeEnv


def outcome(record: dict) -> str:
    """pass, or what stopped the sample: no code block, a compile error, the first failing test's status."""
    o = record["evidence"]
    if o.get("pass"):
        return "pass"
    if not o.get("parse", True):
        return "parse"
    if not o.get("compile", True):
        return "compile"
    failures = o.get("failures") or []
    return failures[0].get("status", "fail") if failures and isinstance(failures[0], dict) else "fail"


def run_bench(args) -> int:
    from cwm_envs.sources.code import load_humaneval

    tasks = load_humaneval(args.data, limit=args.limit)
    bench_policy(args, f"HumanEval through cwm/Code-v0 ({args.policy})", "cwm/Code-v0",
                 {"tasks": tasks, "timeout_s": args.timeout_s}, tasks, outcome=outcome)
    return 0


def demo_section(args) -> str:
    """Code-v0: one episode that passes, one that fails"""
    env = CodeEnv()  # the embedded generator: no file needed
    rewards = []
    try:
        for label, answer in (("reference solution", None), ("wrong solution", "```python\nprint(42)\n```")):
            obs, info = env.reset(seed=3)
            _, reward, _, _, info = env.step(answer or env.reference_response(env.task))
            rewards.append(reward)
            o = info["outcomes"]
            print(f"[{label}] {info['task_id']}: reward {reward:+.0f}  parse={o['parse']} compile={o['compile']} "
                  f"pass={o['pass']} public_pass={o['public_pass']}  ({info['details']})")
        print("the prompt was:\n" + obs)
    finally:
        env.close()
    return f"reference solution {rewards[0]:+.0f}, wrong solution {rewards[1]:+.0f}"


def register(sub) -> None:
    from benchmarks.cli import bench_group

    p = bench_group(sub).add_parser("humaneval", help="pass@1 / pass@k of a policy on HumanEval (cwm/Code-v0)")
    add_runner_args(p, "task")
    p.add_argument("--timeout-s", type=float, default=6.0, help="time limit per task's test run")
    p.add_argument("--data", help="HumanEval .jsonl(.gz) (default: the shared data copy)")
    p.set_defaults(func=run_bench)
