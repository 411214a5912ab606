"""Every registered id passes Gymnasium's checker and works through make_vec (mirrors gymnasium's test_envs)."""
import gymnasium
import pytest
from gymnasium.utils.env_checker import check_env

import cwm_envs

# SWE envs need Docker; they get their own tests with the docker_engine fixture.
TEXT_ENV_IDS = [env_id for env_id in cwm_envs.ENVS if "SWE" not in env_id]


def test_ids_live_in_the_cwm_namespace():
    assert cwm_envs.ENVS, "no environment registered"
    for env_id in cwm_envs.ENVS:
        assert env_id.startswith("cwm/") and env_id in gymnasium.registry


@pytest.mark.parametrize("env_id", TEXT_ENV_IDS)
def test_check_env(env_id):
    env = gymnasium.make(env_id)
    try:
        check_env(env.unwrapped, skip_render_check=True)
    finally:
        env.close()
        env.close()  # close() is safe to call twice


@pytest.mark.parametrize("env_id", TEXT_ENV_IDS)
def test_make_vec_steps(env_id):
    envs = gymnasium.make_vec(env_id, num_envs=2, vectorization_mode="sync")
    try:
        obs, info = envs.reset(seed=0)
        assert len(obs) == 2 and all(isinstance(o, str) and o for o in obs)
        obs, reward, terminated, truncated, info = envs.step(["I do not know."] * 2)
        assert len(reward) == 2
    finally:
        envs.close()


def test_module_prefix_form_makes_the_env():
    env_id = TEXT_ENV_IDS[0]
    env = gymnasium.make(f"cwm_envs:{env_id}")
    env.close()
