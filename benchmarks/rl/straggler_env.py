"""The straggler env of `cwm bench rl straggler`, registered when this module is imported: rollout workers
import it by the module part of its env id (`benchmarks.rl.straggler_env:cwm-bench/StragglerMath-v0`), so a
registration done only in the driver would not reach them."""
from __future__ import annotations

import time

import gymnasium

from cwm_envs.envs.math_env import MathEnv

STRAGGLER = "cwm-bench/StragglerMath-v0"
ENV_ID = f"{__name__}:{STRAGGLER}"


class StragglerMath(MathEnv):
    """cwm/Math-v0 whose episodes on every `slow_every`-th reset seed answer `delay_s` late (a slow sandbox, a
    busy Docker host): the straggler of the bench."""

    def __init__(self, slow_every: int = 8, delay_s: float = 2.0, **kwargs):
        super().__init__(**kwargs)
        self.slow_every, self.delay_s, self._slow = slow_every, delay_s, False

    def reset(self, *, seed=None, options=None):
        self._slow = bool(self.slow_every) and seed is not None and seed % self.slow_every == 0
        return super().reset(seed=seed, options=options)

    def respond(self, action):
        if self._slow:
            time.sleep(self.delay_s)
        return super().respond(action)


if STRAGGLER not in gymnasium.registry:
    gymnasium.register(id=STRAGGLER, entry_point=f"{__name__}:StragglerMath")
