"""The token-level wrapper: a text env as Box-of-ids observations and Discrete actions, trained by stock RLlib PPO."""
import gymnasium
import numpy as np
import pytest

import cwm_envs  # noqa: F401  (registers the cwm/* ids)
from cwm_envs.wrappers import ByteTokenizer, TokenLevelWrapper

MATH = "cwm/Math-v0"
EASY = {"source": "generated", "kinds": ["add_sub"], "difficulty": 0}


def test_one_turn_is_many_token_steps_and_the_env_reward_lands_on_the_last():
    env = TokenLevelWrapper(gymnasium.make(MATH, **EASY), max_tokens=1024, max_new_tokens=64)
    obs, info = env.reset(seed=3)
    assert env.observation_space.contains(obs) and env.action_space == gymnasium.spaces.Discrete(258)
    prompt = env.unwrapped.task.prompt if hasattr(env.unwrapped, "task") else None
    answer = str(env.unwrapped.task.answer)
    text = ByteTokenizer().decode(obs[obs != ByteTokenizer.pad_id].astype(int))
    assert text.startswith("<|begin_of_text|>") and (prompt is None or prompt in text)
    reply = f"Easy.\n</think>\n\\boxed{{{answer}}}".encode()
    rewards = []
    for i, byte in enumerate(reply):
        obs, r, terminated, truncated, info = env.step(byte)
        rewards.append(r)
        assert not (terminated or truncated)
        assert obs[len(text.encode()) + i] == byte  # the chosen token is now part of the observation
    obs, r, terminated, truncated, info = env.step(ByteTokenizer.end_id)
    assert terminated and r == 1.0 and set(rewards) == {0.0}
    env.close()


def test_a_turn_is_cut_at_max_new_tokens():
    env = TokenLevelWrapper(gymnasium.make(MATH, **EASY), max_tokens=1024, max_new_tokens=4)
    env.reset(seed=0)
    steps = [env.step(ord("x")) for _ in range(4)]
    assert [s[2] for s in steps] == [False, False, False, True] and steps[-1][1] < 0
    env.close()


@pytest.mark.slow
def test_stock_rllib_ppo_trains_a_step_on_the_math_env(ray_session):
    from ray.rllib.algorithms.ppo import PPOConfig

    from cwm_envs.registration import register_rllib_envs

    assert MATH in register_rllib_envs()
    config = (
        PPOConfig()
        .environment(MATH, env_config=EASY)
        .env_runners(num_env_runners=0, rollout_fragment_length=64)
        .training(train_batch_size_per_learner=64, minibatch_size=32, num_epochs=1)
        .rl_module(model_config={"fcnet_hiddens": [32]})
        .debugging(seed=0)
    )
    algo = config.build_algo()
    try:
        result = algo.train()
        learner = result["learners"]["default_policy"]
        assert learner["num_module_steps_trained"] >= 64
        assert np.isfinite(learner["policy_loss"]) and np.isfinite(learner["vf_loss"])
        assert result["env_runners"]["num_env_steps_sampled"] >= 64
    finally:
        algo.stop()
