"""`cwm bench rl learn|trl|scaling`: evidence for the RL stage (Ray rollouts + GRPO on the RLlib Learner API).
One module per bench (learn.py, trl_compare.py, scaling.py), what they share in common.py, the commands in
cli.py, the `cwm demo` section in demo.py; every run trains through `agents.train_rl.RLRun.train`.

- learn: per seed, a ~1M-parameter CWM (`cwm-micro`) with its own tokenizer is warmed up by a short SFT on
  oracle answers to single-digit addition/subtraction (`cwm/Math-v0`, generated, add_sub, difficulty 0), then
  trained with GRPO (`--algo ppo`: PPO with a value head and GAE) through the Ray path until a wall-clock
  budget. Held-out accuracy (reset seeds never drawn in training) is measured before and after: sampled (8
  samples per problem), greedy, and pass@8. If pass@8 does not rise while sampled accuracy does, the gain is
  sharpening: RL made the model pick, more often, an answer it could already produce.
- trl: per seed, the same warm model, env, reward and batch (32 prompts x 8 samples, 2 minibatches, lr 1e-4 after
  a 10-update warm-up, clip 0.2/0.25, no KL, fp32) trained by TRL's GRPOTrainer on the CPU, and by ours (Ray
  rollouts included), for the same number of updates: wall time per update and held-out accuracy side by side,
  and the mean over seeds of ours - TRL with its noise band (see the notes above `trl_run`).
- scaling: rollout throughput (env steps/s, tokens/s) with 1 and 2 Ray workers, and Ray's overhead against
  the same rollouts run in one process.
"""
