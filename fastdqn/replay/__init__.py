"""Replay: a per-env frame ring with proportional prioritized sampling and n-step returns.

    PrioritizedReplay   the buffer (uniform replay with alpha=0)
    ReplaySample        what sample() returns
    SumMinTree          the batched Numba sum / min segment tree it samples with
"""

from .buffer import PrioritizedReplay, ReplaySample
from .segment_tree import SumMinTree

__all__ = ["PrioritizedReplay", "ReplaySample", "SumMinTree"]
