"""A new text env in about 60 lines: reverse a word. Written against `cwm_envs.envs.base.TextEnv`.

Register it and use it like any of the suite's envs:

>>> import gymnasium
>>> from reverse_env import register
>>> register()
>>> env = gymnasium.make("example/Reverse-v0")
>>> obs, info = env.reset(seed=0)
>>> env.step(env.unwrapped.reference_response(env.unwrapped.task))[1]
1.0

It passes `gymnasium.utils.env_checker.check_env` and `cwm audit --env example/Reverse-v0 --strategies
reverse_env` (tests/test_audit.py runs both).
"""
from __future__ import annotations

import gymnasium

from cwm_envs.chat import format_chat
from cwm_envs.envs.base import TextEnv
from cwm_envs.tasks import Task
from rewards.base import RewardResult

LETTERS = "abcdefghijklmnopqrstuvwxyz"


class ReverseEnv(TextEnv):
    """Reverse a random word; +1 when the text after `</think>` is exactly the word reversed, else -1.

    ## Observation Space
    `AnyText(65536)`: the request in CWM's chat format, ending with the assistant header and `<think>`.

    ## Action Space
    `AnyText(65536)`: reasoning, `</think>`, then the reversed word alone.

    ## Rewards
    `reward_scheme="cwm"`: +1 / -1; `"binary"`: 1 / 0.

    ## Episode End
    Every step ends the episode.

    ## Version History
    - v0: initial version.
    """

    def generate_task(self, rng) -> Task:
        word = "".join(rng.choice(list(LETTERS), size=int(rng.integers(6, 12))))
        return Task(id=f"reverse/{word}", prompt=word, answer=word[::-1])

    def pose(self, task: Task) -> str:
        request = f"Reverse the word '{task.prompt}'. After your reasoning, give only the reversed word."
        return format_chat([{"role": "user", "content": request}], think=True)

    def judge(self, task: Task, response: str) -> RewardResult:
        parts = response.split("</think>")
        answer = parts[1].strip() if len(parts) == 2 else None
        ok = answer == task.answer
        value = 1.0 if ok else self.failure_reward()
        return RewardResult(value, {"answer": answer, "pass": ok}, "right" if ok else f"wrong: {answer!r}")

    def reference_response(self, task: Task) -> str:
        return f"Read it backwards.\n</think>\n{task.answer}"


def register() -> None:
    if "example/Reverse-v0" not in gymnasium.registry:
        gymnasium.register("example/Reverse-v0", entry_point=ReverseEnv)


register()
