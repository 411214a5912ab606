"""`cwm bench swe-env`: how fast `cwm/SWE-v0` starts an episode, and oracle episodes per second.

Figures, all on the embedded default task set with its images already built (the build is timed apart):
- `reset_median_s`: `reset()` of the same task after an episode, the warm pool refilled (the RL case: a
  group of rollouts on one task). Target <= 1 s.
- `reset_back_to_back_median_s`: resets with nothing in between (the pool has no time to refill).
- `reset_switch_median_s`: a reset to another task, i.e. another image (a new sandbox).
- Baseline measured in the same run: a container started per episode (no pool: `DockerSandbox(pool_size=0)`
  plus the same preparation), the way a runner without a pool starts one.
- Anchors from other systems (not measured here): OpenHands 15-60 s per session start, rLLM 2-3 s with
  snapshots.
- `grade_median_s`: grading one submission (a fresh container of the image, the patch checks, the eval's
  two parts, the seal), from the oracle episodes' `outcomes["grade_s"]`.
- `oracle_episodes_per_s`: scripted oracle episodes (edit, diff, submit, grading in a fresh container),
  one env and two envs in threads; the oracle's reward must be +1 on every episode, do-nothing's -1.
"""
from __future__ import annotations

import json
import statistics
import sys
import threading
import time

from benchmarks.report import write_report

ANCHORS = {"openhands_session_start_s": "15-60", "rllm_reset_s": "2-3"}


def _q(xs: list[float]) -> dict:
    xs = sorted(xs)
    return {"median": round(statistics.median(xs), 4), "p90": round(xs[min(len(xs) - 1, int(0.9 * len(xs)))], 4),
            "n": len(xs)}


def _wait_pool_full(env) -> None:
    sb = env._sandbox
    with sb._cv:
        while len(sb._pool) < sb.pool_size:
            sb._cv.wait(0.05)


def measure(resets: int = 20, episodes: int = 16, progress: bool = False) -> dict:
    import gymnasium
    from tqdm import tqdm

    import cwm_envs  # noqa: F401  (registers the cwm/* ids)
    from agents.swe_agents import DoNothingSWEAgent, OracleSWEAgent, run_episode, tool
    from cwm_envs.sandbox.docker_backend import REPO_SANDBOX, DockerSandbox
    from cwm_envs.swe.tools import ToolBox

    bar = tqdm(total=3 * resets + 2 * episodes + 4, desc="swe-env bench", disable=not progress)
    t = time.perf_counter()
    env = gymnasium.make("cwm/SWE-v0").unwrapped
    ntasks = len(env.tasks)
    for k in range(ntasks):                          # build (or find) every task's image: not timed below
        env.image_for(env.tasks[k])
    setup_s = time.perf_counter() - t
    try:
        warm, back, switch = [], [], []
        env.reset(options={"task": 0})
        for _ in range(resets):
            env.step(tool("bash", "ls"))             # an episode's worth of use, then the pool is refilled
            _wait_pool_full(env)
            t = time.perf_counter()
            env.reset(options={"task": 0})
            warm.append(time.perf_counter() - t)
            bar.update(1)
        for _ in range(resets):
            t = time.perf_counter()
            env.reset(options={"task": 0})
            back.append(time.perf_counter() - t)
            bar.update(1)
        for k in range(resets):
            t = time.perf_counter()
            env.reset(options={"task": (k + 1) % ntasks})
            switch.append(time.perf_counter() - t)
            bar.update(1)
        image = env.image_for(env.tasks[0])
        cold = []
        for _ in range(max(3, resets // 2)):         # baseline: a fresh container per episode, no pool
            t = time.perf_counter()
            with DockerSandbox(image, pool_size=0, workdir="/testbed", limits=env.limits, **REPO_SANDBOX) as sb:
                ToolBox(sb).prepare(light=True)
                cold.append(time.perf_counter() - t)
            bar.update(1)

        oracle, rewards, grades = OracleSWEAgent(), [], []
        t = time.perf_counter()
        for k in range(episodes):
            ep = run_episode(env, oracle, options={"task": k % ntasks})
            rewards.append(ep.reward)
            grades.append(ep.info["outcomes"]["grade_s"])
            bar.update(1)
        one_env_s = time.perf_counter() - t
    finally:
        env.close()

    par_rewards, lock = [], threading.Lock()

    def worker(offset: int) -> None:
        e = gymnasium.make("cwm/SWE-v0").unwrapped
        try:
            for k in range(offset, episodes, 2):
                r = run_episode(e, OracleSWEAgent(), options={"task": k % ntasks}).reward
                with lock:
                    par_rewards.append(r)
                    bar.update(1)
        finally:
            e.close()

    t = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    two_env_s = time.perf_counter() - t
    nothing = gymnasium.make("cwm/SWE-v0", max_turns=3).unwrapped
    try:
        nothing_rewards = [run_episode(nothing, DoNothingSWEAgent(), options={"task": k}).reward for k in range(2)]
    finally:
        nothing.close()
    bar.update(2)
    bar.close()
    w, b, s, c, g = _q(warm), _q(back), _q(switch), _q(cold), _q(grades)
    return {
        "reset_median_s": w["median"], "reset_p90_s": w["p90"], "reset_target_s": 1.0,
        "reset_meets_target": w["median"] <= 1.0,
        "reset_back_to_back_median_s": b["median"], "reset_switch_median_s": s["median"],
        "baseline": "a fresh container per episode (no warm pool), same image and preparation",
        "baseline_cold_start_median_s": c["median"],
        "speedup_vs_cold_start": round(c["median"] / max(w["median"], 1e-6), 1),
        "grade_median_s": g["median"], "grade_p90_s": g["p90"],
        "oracle_episodes_per_s_1_env": round(episodes / one_env_s, 3),
        "oracle_episodes_per_s_2_envs": round(len(par_rewards) / two_env_s, 3),
        "oracle_mean_reward": round(statistics.mean(rewards + par_rewards), 3),
        "do_nothing_mean_reward": round(statistics.mean(nothing_rewards), 3),
        "tasks": ntasks, "image_setup_s": round(setup_s, 1), **{f"anchor_{k}": v for k, v in ANCHORS.items()},
    }, {"reset_warm": w, "reset_back_to_back": b, "reset_switch": s, "cold_start": c, "grade": g}


def run(args) -> int:
    summary, details = measure(resets=args.resets, episodes=args.episodes, progress=sys.stderr.isatty())
    write_report(args.out, "cwm/SWE-v0: reset latency and oracle throughput", summary, details=details)
    print(json.dumps(summary, indent=2))
    return 0


def register(sub) -> None:
    from benchmarks.cli import bench_group

    p = bench_group(sub).add_parser("swe-env", help="cwm/SWE-v0 reset latency (target <= 1 s) and oracle "
                                                    "episodes/s, with a cold-start baseline", description=__doc__)
    p.add_argument("--out", required=True, help="output directory (report.json, report.md)")
    p.add_argument("--resets", type=int, default=20, help="resets timed per kind (default 20)")
    p.add_argument("--episodes", type=int, default=16, help="oracle episodes per setting (default 16)")
    p.set_defaults(func=run)


def demo_section(args) -> str:
    """SWE env: an oracle episode in a repository container (cwm/SWE-v0)"""
    import gymnasium

    import cwm_envs  # noqa: F401  (registers the cwm/* ids)
    from agents.swe_agents import DoNothingSWEAgent, OracleSWEAgent, run_episode

    t = time.perf_counter()
    env = gymnasium.make("cwm/SWE-v0", log=lambda m: print(f"  {m}")).unwrapped
    try:
        task = env.tasks[0]
        env.image_for(task)
        print(f"{len(env.tasks)} mutate-fix tasks of the embedded repository ready in {time.perf_counter() - t:.1f} s; "
              f"task {task.instance_id}: FAIL_TO_PASS {len(task.FAIL_TO_PASS)}, PASS_TO_PASS {len(task.PASS_TO_PASS)}")
        obs, info = env.reset(options={"task": 0})
        print(f"reset {info['reset_s'] * 1000:.0f} ms; first observation {len(obs)} chars (system: tools and budgets, "
              f"user: the issue), ends with the assistant header")
        agent = OracleSWEAgent()
        agent.reset(env.task)
        turn = 0
        while True:
            action = agent.act(obs, info)
            obs, reward, terminated, truncated, info = env.step(action)
            turn += 1
            head = action.split("\n", 2)
            print(f"turn {turn}: {head[0]} {head[1][:50]!r} -> "
                  + (f"{len(obs)} chars of tool result" if obs else "episode over"))
            if terminated or truncated:
                break
        status = info["outcomes"]["tests_status"]
        print(f"reward {reward:+.0f} ({info['reason']}): FAIL_TO_PASS passed {len(status['FAIL_TO_PASS']['success'])}/"
              f"{len(task.FAIL_TO_PASS)}, PASS_TO_PASS passed {len(status['PASS_TO_PASS']['success'])}/"
              f"{len(task.PASS_TO_PASS)}")
    finally:
        env.close()
    idle = gymnasium.make("cwm/SWE-v0", max_turns=2).unwrapped
    try:
        ep = run_episode(idle, DoNothingSWEAgent(), options={"task": 0})
        print(f"do-nothing agent: reward {ep.reward:+.0f} ({ep.info['reason']})")
    finally:
        idle.close()
    return (f"oracle patch {reward:+.0f} (FAIL_TO_PASS {len(status['FAIL_TO_PASS']['success'])}/"
            f"{len(task.FAIL_TO_PASS)} pass), do-nothing agent {ep.reward:+.0f}")
