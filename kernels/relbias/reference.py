"""relbias, the spec: dense attention with the bias b_h(j − i) built as an explicit (H, N, M) tensor."""

from __future__ import annotations

import torch
from torch import Tensor

from ..reference import check_qkv, positions, restricted_attention


def relative_bias(slopes: Tensor, table: Tensor, n: int, m: int, bias_scale: float = 1.0) -> Tensor:
    """(H, N, M): bias_scale · (−slopes[h]·|δ| + table[h, clamp(δ, −R, R) + R]) with δ = j − (i + M − N)."""
    p, j = positions(n, m, slopes.device)
    return bias_scale * bias_at(slopes, table, j - p)


def bias_at(slopes: Tensor, table: Tensor, delta: Tensor) -> Tensor:
    """(H | 1, *delta.shape): −slopes[h]·|δ| + table[h, clamp(δ, −R, R) + R] at the distances δ = key − query.

    A one-row slopes or table is shared by every head (broadcasts).
    """
    r = (table.shape[1] - 1) // 2
    shape = (-1,) + (1,) * delta.dim()
    return -slopes.float().reshape(shape) * delta.abs() + table.float()[:, delta.clamp(-r, r) + r]


def reference(q: Tensor, k: Tensor, v: Tensor, *, slopes: Tensor, table: Tensor, kind: str = "alibi",
              num_buckets: int = 32, max_distance: int = 128, bidirectional: bool = True, table_file: str = "",
              init_std: float = 0.0, bias_scale: float = 1.0, scale: float | None = None,
              mask: Tensor | None = None, key_padding: Tensor | None = None, causal: bool = False,
              softcap: float = 0.0, sink_logits: Tensor | None = None) -> Tensor:
    """kind .. init_std only say how slopes and table were made (``kernels.relbias.make_tensors``)."""
    check_qkv(q, k, v)
    n, m = q.shape[2], k.shape[2]
    bias = relative_bias(slopes, table, n, m, bias_scale)[None]  # (1, H, N, M)
    if mask is not None:
        bias = bias + (mask.float() if mask.dtype != torch.bool else
                       torch.zeros(()).masked_fill(~mask, float("-inf")))
    return restricted_attention(q, k, v, None, scale=scale, mask=bias, key_padding=key_padding, causal=causal,
                                softcap=softcap, sink_logits=sink_logits)
