"""The one result type every reward function returns."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RewardResult:
    """A reward and the evidence behind it.

    `outcomes` holds machine-readable facts (which answer was extracted, which tests passed) so that a
    user can audit a reward without re-running anything; `details` is one human-readable line.
    """

    value: float
    outcomes: dict[str, Any] = field(default_factory=dict)
    details: str = ""
