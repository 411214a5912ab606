"""Pure verifiers: strings and results in, a reward and its evidence out.

This package imports nothing of the project and runs nothing: environments execute code in a sandbox and
hand the result (stdout, test log, trace, answer text) to a reward function here.
"""
from rewards.base import RewardResult

__all__ = ["RewardResult"]
