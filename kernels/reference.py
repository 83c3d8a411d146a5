"""Executable spec: one plain-torch function per attention variant.

Readable first. These functions may build explicit (N, M) masks; every fast
implementation (CPU op, Triton kernel, ONNX body) is tested against them.

Conventions shared by every implementation (see VARIANTS.md, "Common notation"):

- q is (B, H, N, D); k and v are (B, Hkv, M, D) with H % Hkv == 0. kv head
  ``h // (H // Hkv)`` serves query head ``h`` (GQA).
- ``scale`` None means 1/sqrt(D).
- ``mask`` is additive (float) or boolean (True = may attend), broadcastable to
  (B, H, N, M). ``causal`` allows j <= i + (M - N). Both apply on top of the
  variant's own restriction.
- A row with no allowed key outputs exactly 0 (as torch's SDPA decomposition,
  which emits Where(IsNaN(p), 0, p)). Finite very negative masks (HF's
  finfo.min) are ordinary softmax inputs.
- fp16/bf16 inputs are computed in float32 and cast back.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "check_qkv",
    "check_segmented",
    "dense_attention",
    "segment_allowed",
    "segmented_attention",
    "with_sinks",
]


# --- argument checks shared with the fast implementations -------------------


def check_qkv(q: Tensor, k: Tensor, v: Tensor) -> None:
    """Raise ValueError unless q, k, v follow the (B, H, N, D) / (B, Hkv, M, D) convention."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            f"attention expects 4-D q, k, v (B, H, N, D); got {tuple(q.shape)}, "
            f"{tuple(k.shape)}, {tuple(v.shape)}"
        )
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape; got {tuple(k.shape)} and {tuple(v.shape)}")
    if q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise ValueError(
            f"q and k must agree on batch and head_dim; got {tuple(q.shape)} and {tuple(k.shape)}"
        )
    if k.shape[1] == 0 or q.shape[1] % k.shape[1] != 0:
        raise ValueError(
            f"query heads ({q.shape[1]}) must be a multiple of key/value heads ({k.shape[1]})"
        )


def check_segmented(n: int, m: int, segment_size: int, sinks: int) -> None:
    """Raise ValueError for parameters segmented attention cannot honour."""
    if n != m:
        raise ValueError(
            "segmented attention needs self-attention (query length == key length); "
            f"got query length {n} and key length {m}"
        )
    if segment_size < 1:
        raise ValueError(f"segment_size must be >= 1; got {segment_size}")
    if sinks < 0:
        raise ValueError(f"sinks must be >= 0; got {sinks}")


# --- shared machinery ---------------------------------------------------------


def with_sinks(allowed: Tensor, sinks: int) -> Tensor:
    """allowed(i, j) |= j < sinks: the StreamingLLM attention sinks, common to every restricting variant."""
    if sinks <= 0:
        return allowed
    is_sink = torch.arange(allowed.shape[-1], device=allowed.device) < sinks
    return allowed | is_sink


def _restricted_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    allowed: Tensor | None,
    *,
    scale: float | None,
    mask: Tensor | None,
    causal: bool,
) -> Tensor:
    """softmax(s·QKᵀ + A) V over the keys a variant allows.

    ``allowed`` is the variant's bool restriction, (N, M) or anything
    broadcastable to (B, H, N, M) for content-dependent variants (None = every
    key). The site's mask and causality apply on top of it.
    """
    check_qkv(q, k, v)
    n, m, d = q.shape[2], k.shape[2], q.shape[3]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    out_dtype = q.dtype
    compute = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    q, k, v = q.to(compute), k.to(compute), v.to(compute)

    rep = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(rep, dim=1)
    v = v.repeat_interleave(rep, dim=1)

    scores = (q @ k.transpose(-1, -2)) * scale  # (B, H, N, M)
    neg_inf = float("-inf")
    if allowed is not None:
        scores = scores.masked_fill(~allowed, neg_inf)
    if causal:
        i = torch.arange(n, device=q.device)[:, None]
        j = torch.arange(m, device=q.device)[None, :]
        scores = scores.masked_fill(j > i + (m - n), neg_inf)
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, neg_inf)
        else:
            scores = scores + mask.to(compute)

    p = torch.softmax(scores, dim=-1)
    p = torch.where(torch.isnan(p), 0.0, p)  # rows with no allowed key -> 0
    return (p @ v).to(out_dtype)


# --- variants -------------------------------------------------------------------


def dense_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    scale: float | None = None,
    mask: Tensor | None = None,
    causal: bool = False,
) -> Tensor:
    """Plain scaled-dot-product attention: every variant's exact limit."""
    return _restricted_attention(q, k, v, None, scale=scale, mask=mask, causal=causal)


def segment_allowed(n: int, segment_size: int, device: torch.device | str | None = None) -> Tensor:
    """(n, n) bool: seg(i) == seg(j) with seg(i) = i // segment_size."""
    seg = torch.arange(n, device=device) // segment_size
    return seg[:, None] == seg[None, :]


def segmented_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    segment_size: int,
    sinks: int = 0,
    scale: float | None = None,
    mask: Tensor | None = None,
    causal: bool = False,
) -> Tensor:
    """allowed(i, j) = seg(i) == seg(j) or j < sinks. Exact limit: segment_size >= N."""
    check_qkv(q, k, v)
    check_segmented(q.shape[2], k.shape[2], segment_size, sinks)
    allowed = with_sinks(segment_allowed(q.shape[2], segment_size, q.device), sinks)
    return _restricted_attention(q, k, v, allowed, scale=scale, mask=mask, causal=causal)
