"""Every environment id of the suite, registered in this one place when `cwm_envs` is imported.

Gymnasium 1.x no longer loads entry points by itself: `import cwm_envs; gymnasium.make("cwm/Math-v0")`,
or `gymnasium.make("cwm_envs:cwm/Math-v0")`. Bump `-vN` whenever reward or termination logic changes.
Entry points are strings, so an env's module (and its heavy imports) loads only when it is made.
"""
from __future__ import annotations

import gymnasium

ENVS: dict[str, str] = {
    # id: entry point
    "cwm/Code-v0": "cwm_envs.envs.code_env:CodeEnv",
    "cwm/OutputPrediction-v0": "cwm_envs.envs.prediction:OutputPredictionEnv",
    "cwm/InputPrediction-v0": "cwm_envs.envs.prediction:InputPredictionEnv",
    "cwm/Trace-v0": "cwm_envs.envs.trace_env:TraceEnv",
    "cwm/SWE-v0": "cwm_envs.envs.swe_env:SWEEnv",
    "cwm/Math-v0": "cwm_envs.envs.math_env:MathEnv",
    "cwm/MathTool-v0": "cwm_envs.envs.math_env:MathToolEnv",
}


def register_envs() -> None:
    """Register every cwm/ id with Gymnasium (once; importing cwm_envs calls it)."""
    for env_id, entry_point in ENVS.items():
        if env_id not in gymnasium.registry:
            gymnasium.register(id=env_id, entry_point=entry_point, disable_env_checker=False)


def register_rllib_envs() -> list[str]:
    """Register every env with Ray Tune under the same id, wrapped at token level (RLlib cannot carry Text)."""
    from ray.tune.registry import register_env

    from cwm_envs.wrappers import TokenLevelWrapper

    for env_id in ENVS:
        register_env(env_id, lambda cfg, _id=env_id: TokenLevelWrapper(gymnasium.make(_id, **dict(cfg))))
    return list(ENVS)
