"""hierarchical, the spec: exact fine window and sinks, one pooled entry per coarse group, one softmax.

Readable first: it builds the (N, M) exact mask, the (N, M) group of every
pooled key, and a (N, C, M) membership of the C groups in play. The levels are
described in ``kernels.hierarchical`` (the package docstring).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..reference import (band_allowed, check_qkv, check_self_attention, positions, softcapped, softmax_with_sink,
                         with_sinks)


def coarse_groups(n: int, m: int, block: int, levels: int, causal: bool, device=None) -> Tensor:
    """(N, M) int64: the pooled group key j belongs to for query i, or −1 where j is not pooled for i.

    With d the block distance from the query's block to the key's: |d| <= 1 is
    the fine level; otherwise the level is min(⌊log2 |d|⌋ − 1, L − 1), its groups
    are 2^level blocks wide and counted outwards from distance 2^(level+1), on
    each side of the query. Causal queries pool only the blocks before them.
    """
    p, j = positions(n, m, device)
    d = torch.div(j, block, rounding_mode="floor") - torch.div(p, block, rounding_mode="floor")
    a = d.abs()
    level = torch.zeros_like(a)
    for t in range(1, levels):  # one more level for each threshold 2^(t+1) that |d| reaches
        level += (a >= 2 ** (t + 1)).long()
    width = 2 ** level
    index = torch.div(a - 2 * width, width, rounding_mode="floor")
    group = (level * (m + 1) + index) * 2 + (d > 0).long()  # unique per (level, index, side)
    pooled = (a >= 2) & ~((d > 0) & causal)
    return torch.where(pooled, group, torch.full_like(group, -1))


def reference(q: Tensor, k: Tensor, v: Tensor, *, block: int, levels: int = 1, sinks: int = 0,
              scale: float | None = None, mask: Tensor | None = None, key_padding: Tensor | None = None,
              causal: bool = False, softcap: float = 0.0, sink_logits: Tensor | None = None) -> Tensor:
    check_qkv(q, k, v)
    n, m, d = q.shape[2], k.shape[2], q.shape[3]
    check_self_attention("hierarchical", n, m)
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    out_dtype = q.dtype
    compute = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    rep = q.shape[1] // k.shape[1]
    q = q.to(compute)
    k = k.to(compute).repeat_interleave(rep, dim=1)
    v = v.to(compute).repeat_interleave(rep, dim=1)
    neg_inf = float("-inf")

    def capped(s: Tensor) -> Tensor:
        return softcapped(s, softcap)

    # Exact entries: the fine window and the sinks, with the site's causality, padding and mask.
    exact = with_sinks(band_allowed(n, m, block, block, 0 if causal else block, q.device), sinks)
    if causal:
        p, j = positions(n, m, q.device)
        exact &= j <= p
    kp = _additive(key_padding, m, compute, q.device)  # (Bk, M)
    scores = capped((q @ k.transpose(-1, -2)) * scale).masked_fill(~exact, neg_inf) + kp[:, None, None, :]
    if mask is not None:
        scores = scores + (mask.to(compute) if mask.dtype != torch.bool else
                           torch.zeros((), dtype=compute).masked_fill(~mask, neg_inf))

    # Pooled entries: one column per group, its key and value the padding-weighted mean of its members.
    groups = coarse_groups(n, m, block, levels, causal, q.device)
    groups[:, :sinks] = -1  # sinks are exact, never pooled
    ids = groups.unique()
    ids = ids[ids >= 0]
    member = groups[:, None, :] == ids[None, :, None]  # (N, C, M)
    logits = kp[:, None, None, :].masked_fill(~member, neg_inf)  # (Bk, N, C, M)
    log_n = torch.logsumexp(logits, dim=-1)  # (Bk, N, C): log of the unmasked count; −inf for none
    weights = torch.nan_to_num(torch.softmax(logits, dim=-1), nan=0.0)
    k_bar = torch.einsum("bncm,bhmd->bhncd", weights, k)
    v_bar = torch.einsum("bncm,bhmd->bhncd", weights, v)
    pooled = capped(torch.einsum("bhnd,bhncd->bhnc", q, k_bar) * scale) + log_n[:, None]

    probs = softmax_with_sink(torch.cat([scores, pooled], dim=-1), sink_logits)
    probs = torch.where(torch.isnan(probs), 0.0, probs)  # rows with no allowed entry -> 0
    out = probs[..., :m] @ v + torch.einsum("bhnc,bhncd->bhnd", probs[..., m:], v_bar)
    return out.to(out_dtype)


def _additive(key_padding: Tensor | None, m: int, dtype, device) -> Tensor:
    """Key padding as an additive (Bk, M) float (boolean: True = may attend); zeros when there is none."""
    if key_padding is None:
        return torch.zeros(1, m, dtype=dtype, device=device)
    if key_padding.dtype == torch.bool:
        return torch.zeros(key_padding.shape, dtype=dtype, device=device).masked_fill(~key_padding, float("-inf"))
    return key_padding.to(dtype).reshape(key_padding.shape[0], key_padding.shape[-1]).expand(-1, m)
