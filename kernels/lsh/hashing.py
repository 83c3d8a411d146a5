"""The hash h_r(x) = argmax([xR_r ; −xR_r]), shared by the reference and the torch op so both see one bucketing."""

from __future__ import annotations

import torch
from torch import Tensor


def hash_buckets(x: Tensor, rotations: Tensor, n_buckets: int) -> Tensor:
    """(B, H, S, D) -> (B, H, R, S) int64 buckets in [0, n_buckets), one per round of ``rotations`` (R, D, b/2).

    VARIANTS.md hashes x̂ = x/‖x‖; argmax is unchanged by a positive factor, so x is used
    as it is (a zero vector then lands in bucket 0 instead of producing NaN). ``% n_buckets``
    sends everything to bucket 0 when b = 1.
    """
    check_rotations(rotations, x.shape[-1])
    proj = torch.matmul(x.float().unsqueeze(2), rotations.float().to(x.device))  # (B, H, R, S, b/2)
    # argmax over [proj ; −proj] without building it (that would be S·b values): the first half
    # wins ties, as argmax returns the first maximum.
    top, top_at = proj.max(dim=-1)
    low, low_at = proj.min(dim=-1)
    return torch.where(top >= -low, top_at, proj.shape[-1] + low_at) % n_buckets


def check_rotations(rotations: Tensor, head_dim: int) -> None:
    """Raise ValueError unless ``rotations`` is (n_rounds, head_dim, n_buckets/2)."""
    if rotations.dim() != 3 or rotations.shape[1] != head_dim:
        raise ValueError(f"lsh rotations must be (n_rounds, head_dim={head_dim}, n_buckets/2); "
                         f"got {tuple(rotations.shape)}")
