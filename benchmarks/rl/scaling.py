"""`cwm bench rl scaling`: rollout throughput (env steps/s, tokens/s) with 1 and 2 Ray workers against the same
rollouts in one process, and what RLlib's Learner API costs against a plain PyTorch loop."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from benchmarks.report import write_report
from benchmarks.rl.common import EASY, LR, SETTINGS, noise_band, warm_start


def cmd_scaling(args) -> int:
    import os

    import ray
    import torch

    from agents.policy import LMPolicy
    from agents.rollout import EnvSpec, RolloutPool, RolloutWorker, draw_requests, init_ray

    out = Path(args.out)
    st = SETTINGS[args.env]
    model_dir = Path(args.model) if args.model else warm_start(out / "warm", 0, target=args.sft_target, env=args.env)
    policy = LMPolicy.from_pretrained(model_dir, max_new_tokens=st.max_new_tokens)
    spec, weights = policy.spec(), policy.get_weights()
    env = EnvSpec(args.env, kwargs=dict(st.kwargs))
    reqs = draw_requests(np.random.default_rng(0), [1.0], args.tasks, args.group)
    episodes = args.tasks * args.group

    def measure(run) -> dict:
        run()  # warm-up (env instances, allocator)
        t0 = time.perf_counter()
        stats = [run() for _ in range(args.repeats)]
        wall = (time.perf_counter() - t0) / args.repeats
        steps = stats[0].env_steps
        tokens = stats[0].policy_tokens
        return {"wall_s": round(wall, 3), "env_steps_per_s": round(steps / wall, 1), "tokens_per_s": round(tokens / wall, 1)}

    rows = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        worker = RolloutWorker([env], spec, weights)
        rows.append({"setup": f"one process, {threads} torch thread(s)", "workers": 0,
                     **measure(lambda: worker.run(reqs, sample_seed=0)[1])})
        worker.close()
    started = init_ray(num_cpus=2)
    try:
        for n in (1, 2):
            pool = RolloutPool([env], spec, weights, num_workers=n, seed=0)
            rows.append({"setup": f"Ray, {n} worker(s) x 1 thread", "workers": n,
                         **measure(lambda: pool.sample(args.tasks, args.group, seeds=[r.seed for r in reqs])[1])})
            pool.close()
    finally:
        if started:
            ray.shutdown()
    worker = RolloutWorker([env], spec, weights)
    trajs, _ = worker.run(reqs, sample_seed=0)
    worker.close()
    torch.set_num_threads(1)
    learner_rows = learner_overhead(model_dir, trajs)
    one_proc = rows[0]["wall_s"]
    ray1, ray2 = rows[2]["wall_s"], rows[3]["wall_s"]
    summary = {
        "env": args.env, "episodes_per_batch": episodes, "env_steps_per_s_1_worker": rows[2]["env_steps_per_s"],
        "env_steps_per_s_2_workers": rows[3]["env_steps_per_s"], "tokens_per_s_1_worker": rows[2]["tokens_per_s"],
        "tokens_per_s_2_workers": rows[3]["tokens_per_s"], "speedup_2_vs_1_worker": round(ray1 / ray2, 2),
        "target": ">= 1.8x on an idle machine", "load_average_at_end": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        "ray_overhead_1_worker": f"{(ray1 / one_proc - 1) * 100:+.1f}% vs one process with 1 thread",
        "baseline": "the same requests run by RolloutWorker in this process (1 and 2 torch threads)",
        "learner_rllib_s": learner_rows[0]["update_s"], "learner_plain_s": learner_rows[1]["update_s"],
        "learner_api_overhead": f"{(learner_rows[0]['update_s'] / learner_rows[1]['update_s'] - 1) * 100:+.1f}%",
    }
    write_report(out, "Rollout throughput: Ray workers vs one process; RLlib Learner vs a plain loop", summary,
                 tables={"rollouts": rows, "learner (1 thread)": learner_rows})
    for r in rows:
        print(f"{r['setup']:<36} {r['wall_s']:7.2f} s/batch  {r['env_steps_per_s']:8.1f} env steps/s  "
              f"{r['tokens_per_s']:9.1f} tokens/s")
    for r in learner_rows:
        print(f"{r['setup']:<70} {r['update_s']:7.3f} s/update")
    print(f"report: {out / 'report.md'}")
    return 0


def learner_overhead(model_dir: Path, trajs, repeats: int = 5) -> list[dict]:
    """Seconds per GRPO update on one batch: RLlib LearnerGroup (local learner) vs the same module and loss in a
    plain PyTorch loop (what RLlib's Learner API costs on top)."""
    import torch

    from agents.grpo import GRPOArgs, GRPOLearner, grpo_token_loss, prepare_batch
    from agents.lm_module import LMModule, build_learner_group, set_lm_weights, update_learners
    from agents.policy import LMPolicy

    policy = LMPolicy.from_pretrained(model_dir)
    args = GRPOArgs(lr=LR, warmup_updates=0, minibatches=2, max_new_tokens=32, loss_rows=128)  # a constant lr
    arrays, _ = prepare_batch(trajs, args, multiple=2)
    lg = build_learner_group(GRPOLearner, policy.model.config, args)
    set_lm_weights(lg, policy.get_weights())
    lg.foreach_learner(lambda learner: learner.snapshot_reference())
    update_learners(lg, arrays, minibatches=args.minibatches, epochs=1)  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        update_learners(lg, arrays, minibatches=args.minibatches, epochs=1)
    rllib_s = (time.perf_counter() - t0) / repeats
    lg.shutdown()

    module = LMModule(observation_space=None, action_space=None,
                      model_config={"config": policy.model.config, "temperature": 1.0})
    module.lm.load_state_dict(policy.model.state_dict())
    opt = torch.optim.Adam(module.parameters(), lr=args.lr)
    tensors = {k: torch.as_tensor(v) for k, v in arrays.items()}
    half = len(arrays["input_ids"]) // 2

    def plain():
        for part in (slice(0, half), slice(half, None)):
            b = {k: v[part] for k, v in tensors.items()}
            fwd = module._forward_train(b)
            T = fwd["T"]
            loss, _ = grpo_token_loss(fwd["logp"], b["old_logp"][:, 1:T], b["advantages"][:, None],
                                      b["token_mask"][:, 1:T], args.eps_low, args.eps_high)
            opt.zero_grad()
            (loss.sum() / (args.loss_rows * args.max_new_tokens)).backward()
            torch.nn.utils.clip_grad_norm_(module.parameters(), args.grad_clip)
            opt.step()

    plain()
    t0 = time.perf_counter()
    for _ in range(repeats):
        plain()
    plain_s = (time.perf_counter() - t0) / repeats
    rows = len(arrays["input_ids"])
    return [{"setup": f"learner: RLlib LearnerGroup, {rows} rows", "update_s": round(rllib_s, 3)},
            {"setup": f"learner: plain PyTorch loop, same module and loss, {rows} rows", "update_s": round(plain_s, 3)}]


# --- async against sync with a straggler env ----------------------------------------------------------------

def cmd_straggler(args) -> int:
    """The same GRPO run, sync and async (max staleness 1), with one task in `slow_every` answering `delay_s`
    late: wall time per update and held-out accuracy after the same number of updates."""
    import os

    from agents.grpo import GRPOArgs
    from agents.rl_args import RLArgs
    from agents.train_rl import run
    from benchmarks.rl.straggler_env import ENV_ID

    out = Path(args.out)
    model_dir = Path(args.model) if args.model else warm_start(out / "warm", 0, target=args.sft_target)
    rows = []
    for mode in ("sync", "async"):
        a = RLArgs(out=out / mode, env=ENV_ID, env_kwargs={**EASY, "slow_every": args.slow_every, "delay_s": args.delay},
                   eval_env_kwargs={**EASY, "slow_every": 0}, model=str(model_dir), algo="grpo",
                   update=GRPOArgs(lr=LR, minibatches=2, max_new_tokens=32), workers=args.workers, group=8,
                   tasks=args.tasks, steps=args.updates, seed=0, resume=False, num_cpus=2, torch_threads=1, mode=mode,
                   max_staleness=1, eval_tasks=args.problems, env_threads=args.env_threads)
        s = run(a)
        metrics = [json.loads(x) for x in (out / mode / "metrics.jsonl").read_text().splitlines()]
        train = [m for m in metrics if "reward_mean" in m]
        stale = [m["staleness_max"] for m in train]
        rows.append({"mode": mode, "updates": s["steps"], "s_per_update": round(s["elapsed_s"] / max(1, s["steps"]), 2),
                     "sample_s_median": round(float(np.median([m["sample_s"] for m in train])), 2),
                     "heldout_sampled_end": s["eval_end"]["eval_sampled"], "heldout_greedy_end": s["eval_end"]["eval_greedy"],
                     "heldout_sampled_start": s["eval_start"]["eval_sampled"], "staleness_max": max(stale, default=0),
                     "load_average": " ".join(f"{x:.1f}" for x in os.getloadavg())})
        print(f"{mode:>5}: {rows[-1]['s_per_update']} s/update, held-out sampled {rows[-1]['heldout_sampled_start']:.3f}"
              f" -> {rows[-1]['heldout_sampled_end']:.3f} (load {rows[-1]['load_average']})", flush=True)
    sync, asyn = rows
    band = 2 * noise_band(args.problems)
    summary = {
        "speedup_async_vs_sync": round(sync["s_per_update"] / asyn["s_per_update"], 2), "target": ">= 1.5x",
        "heldout_sampled_sync": sync["heldout_sampled_end"], "heldout_sampled_async": asyn["heldout_sampled_end"],
        "equal_within_noise": abs(sync["heldout_sampled_end"] - asyn["heldout_sampled_end"]) <= band,
        "noise_band": f"+-{band:.3f} (2 s.e. at 0.5 on {args.problems} problems)",
        "straggler": f"1 task in {args.slow_every} answers {args.delay} s late",
        "env_threads": f"{args.env_threads} per worker in both modes",
        "baseline": "the same run in sync mode (each batch waits for its slowest episode)",
    }
    write_report(out, "Async vs sync GRPO with a straggler env", summary, tables={"runs": rows})
    print(f"report: {out / 'report.md'}")
    return 0
