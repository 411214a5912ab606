"""Text spaces that hold any Unicode string.

Gymnasium's `spaces.Text` checks every character against a charset (alphanumerics by default), which
would reject prompts with LaTeX, code or non-ASCII. `AnyText` keeps Text's length bounds and sampling, and
accepts any `str` within them.
"""
from __future__ import annotations

import string

from gymnasium import spaces

PRINTABLE = string.printable  # what sample() draws from


class AnyText(spaces.Text):
    """A `spaces.Text` whose `contains` accepts every character; `max_length` still bounds the length."""

    def __init__(self, max_length: int, min_length: int = 0, seed=None):
        super().__init__(max_length=max_length, min_length=min_length, charset=PRINTABLE, seed=seed)

    def contains(self, x) -> bool:
        return isinstance(x, str) and self.min_length <= len(x) <= self.max_length

    def __repr__(self) -> str:
        return f"AnyText({self.min_length}, {self.max_length})"
