"""Policies (LM, oracle, random), Ray rollout workers and GRPO/PPO learners."""
