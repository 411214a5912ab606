"""`cwm bench rl scaling`: rollout throughput (env steps/s, tokens/s) with 1 and 2 Ray workers against the same
rollouts in one process, and what RLlib's Learner API costs against a plain PyTorch loop."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from benchmarks.report import write_report
from benchmarks.rl.common import EASY, LR, MATH, warm_start


def cmd_scaling(args) -> int:
    import ray
    import torch

    from agents.policy import LMPolicy
    from agents.rollout import EnvSpec, RolloutPool, RolloutWorker, draw_requests, init_ray

    out = Path(args.out)
    model_dir = Path(args.model) if args.model else warm_start(out / "warm", 0, target=args.sft_target)
    policy = LMPolicy.from_pretrained(model_dir, max_new_tokens=32)
    spec, weights = policy.spec(), policy.get_weights()
    env = EnvSpec(MATH, kwargs=dict(EASY))
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
        "episodes_per_batch": episodes, "env_steps_per_s_1_worker": rows[2]["env_steps_per_s"],
        "env_steps_per_s_2_workers": rows[3]["env_steps_per_s"], "tokens_per_s_1_worker": rows[2]["tokens_per_s"],
        "tokens_per_s_2_workers": rows[3]["tokens_per_s"], "speedup_2_vs_1_worker": round(ray1 / ray2, 2),
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
