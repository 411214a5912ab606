"""A token-level view of a text env, so that stock RL libraries (RLlib's PPO) can act in it.

RLlib cannot carry `spaces.Text`. `TokenLevelWrapper` turns one text turn into many token steps:

- Observation: `Box(0, vocab_size - 1, (max_tokens,), float32)`, the episode's token ids so far (prompt,
  tokens chosen, env replies), right-padded with `pad_id`; when longer, the last `max_tokens` ids. Float32
  because RLlib's stock encoders feed observations straight into a Linear layer (ids stay exact below 2**24);
  `dtype=np.int64` gives integer ids for a model of your own with an embedding.
- Action: `Discrete(vocab_size)`, the next token.
- A turn ends when the agent picks `end_id` or has emitted `max_new_tokens` tokens; its decoded text then
  goes to the wrapped env's `step`, and the env's reward is the reward of that token step (0 before).

The tokenizer is any object with `encode(text) -> ids`, `decode(ids) -> text`, `vocab_size`, `end_id` and
`pad_id`; the default `ByteTokenizer` needs nothing (a transformers tokenizer is adapted by `HFTokenizer`).
"""
from __future__ import annotations

import gymnasium
import numpy as np
from gymnasium import spaces


class ByteTokenizer:
    """UTF-8 bytes as ids 0-255, then end-of-turn (256) and padding (257)."""

    vocab_size = 258
    end_id = 256
    pad_id = 257

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


class HFTokenizer:
    """A transformers tokenizer in the wrapper's terms (end of turn: `<|eot_id|>`)."""

    def __init__(self, tokenizer, end_token: str = "<|eot_id|>"):
        self.tok = tokenizer
        self.vocab_size = len(tokenizer)
        self.end_id = tokenizer.convert_tokens_to_ids(end_token)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.end_id

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False)

    def decode(self, ids) -> str:
        return self.tok.decode([i for i in ids if i != self.end_id], skip_special_tokens=False)


class TokenLevelWrapper(gymnasium.Wrapper):
    """One token per step over a text env (see the module docstring).

    Args:
        env: a text env (`reset` -> str observation, `step(str)`).
        tokenizer: see the module docstring (default `ByteTokenizer`).
        max_tokens: observation length.
        max_new_tokens: tokens per turn before the turn is sent as is.
        dtype: observation dtype (float32 for stock RLlib models, int64 for an embedding).
    """

    def __init__(self, env: gymnasium.Env, tokenizer=None, max_tokens: int = 512, max_new_tokens: int = 64,
                 dtype=np.float32):
        super().__init__(env)
        self.tok = tokenizer or ByteTokenizer()
        self.max_tokens, self.max_new_tokens = max_tokens, max_new_tokens
        self.observation_space = spaces.Box(0, self.tok.vocab_size - 1, shape=(max_tokens,), dtype=dtype)
        self.action_space = spaces.Discrete(self.tok.vocab_size)
        self._ids: list[int] = []
        self._turn: list[int] = []

    def _obs(self) -> np.ndarray:
        ids = self._ids[-self.max_tokens:]
        out = np.full(self.max_tokens, self.tok.pad_id, dtype=self.observation_space.dtype)
        out[: len(ids)] = ids
        return out

    def reset(self, *, seed=None, options=None):
        text, info = self.env.reset(seed=seed, options=options)
        self._ids, self._turn = self.tok.encode(text), []
        return self._obs(), info

    def step(self, action):
        token = int(action)
        self._ids.append(token)
        self._turn.append(token)
        if token != self.tok.end_id and len(self._turn) < self.max_new_tokens:
            return self._obs(), 0.0, False, False, {"turn_tokens": len(self._turn)}
        text, self._turn = self.tok.decode(self._turn), []
        obs, reward, terminated, truncated, info = self.env.step(text)
        if not (terminated or truncated):
            self._ids += self.tok.encode(obs)
        return self._obs(), float(reward), terminated, truncated, info
