"""Relative positions, the spec of each relbias kind: ALiBi slopes, T5's buckets, and their per-distance table.

These run once per rewrite (at plan time), never per token: every kind is
turned into the (slopes, table) pair the op reads (see ``kernels.relbias``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor


def alibi_slopes(heads: int) -> list[float]:
    """m_h = 2^(−8h/H), h = 1..H, for H a power of two (Press et al., ALiBi).

    Otherwise the paper's interleaving: the slopes for the largest power of two
    P below H, then every other slope for 2P (the odd h), H − P of them.
    """
    def power_of_two(n: int) -> list[float]:
        return [2.0 ** (-8.0 * h / n) for h in range(1, n + 1)]

    if heads < 1:
        raise ValueError(f"ALiBi needs at least one head, got {heads}")
    p = 1 << (heads.bit_length() - 1)
    if p == heads:
        return power_of_two(heads)
    return power_of_two(p) + power_of_two(2 * p)[0::2][:heads - p]


def t5_bucket(relative_position: Tensor, bidirectional: bool = True, num_buckets: int = 32,
              max_distance: int = 128) -> Tensor:
    """T5's bucket of δ = j − i: HF transformers' ``T5Attention._relative_position_bucket``, op for op.

    Written with the same float32 operations as HF so that the buckets agree at
    the boundaries where a log lands on an integer (tests check it against HF).
    """
    relative_buckets = 0
    if bidirectional:
        num_buckets //= 2
        relative_buckets += (relative_position > 0).to(torch.long) * num_buckets
        relative_position = torch.abs(relative_position)
    else:
        relative_position = -torch.min(relative_position, torch.zeros_like(relative_position))
    max_exact = num_buckets // 2
    is_small = relative_position < max_exact
    relative_position_if_large = max_exact + (
        torch.log(relative_position.float() / max_exact)
        / math.log(max_distance / max_exact)
        * (num_buckets - max_exact)
    ).to(torch.long)
    relative_position_if_large = torch.min(
        relative_position_if_large, torch.full_like(relative_position_if_large, num_buckets - 1)
    )
    relative_buckets += torch.where(is_small, relative_position, relative_position_if_large)
    return relative_buckets


def table_bucket(delta: Tensor, bidirectional: bool, num_buckets: int) -> Tensor:
    """The ``table`` kind's bucket: δ clamped to ±R (num_buckets = 2R + 1), or −δ clamped to [0, num_buckets)."""
    if bidirectional:
        r = (num_buckets - 1) // 2
        return delta.clamp(-r, r) + r
    return (-delta).clamp(0, num_buckets - 1)


def relative_table(kind: str, buckets: np.ndarray, num_buckets: int, max_distance: int,
                   bidirectional: bool) -> np.ndarray:
    """(H, 2R + 1) float32: bias for δ = −R..R, where every |δ| >= R has the bias of ±R.

    t5's buckets stop changing at |δ| = max_distance (the log term reaches the
    last bucket there), so R = max_distance; the table kind's at its last bucket.
    """
    if kind == "t5":
        r = max_distance
        bucket = t5_bucket(torch.arange(-r, r + 1), bidirectional, num_buckets, max_distance)
    elif kind == "table":
        r = (num_buckets - 1) // 2 if bidirectional else num_buckets - 1
        bucket = table_bucket(torch.arange(-r, r + 1), bidirectional, num_buckets)
    else:
        raise ValueError(f"relbias kind {kind!r} has no bucket table")
    return np.ascontiguousarray(buckets[:, bucket.numpy()], dtype=np.float32)
