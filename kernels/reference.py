"""Executable spec, the shared part: restricted attention and the machinery every variant uses.

Readable first. These functions may build explicit (N, M) masks; every fast
implementation (CPU op, Triton kernel, ONNX body) is tested against them. Each
variant's own reference (``kernels/<variant>/reference.py``) says which keys a
query may see and calls ``restricted_attention``.

Conventions shared by every implementation (see VARIANTS.md, "Common notation",
and the op contract in ``kernels.spec``):

- q is (B, H, N, D); k and v are (B, Hkv, M, D) with H % Hkv == 0. kv head
  ``h // (H // Hkv)`` serves query head ``h`` (GQA).
- Query i sits at absolute position i + (M − N): a KV-cache step's queries
  follow the cached keys. ``causal`` allows j <= i + (M − N).
- ``scale`` None means 1/sqrt(D). ``softcap`` c > 0 turns scores s into
  c·tanh(s / c) before any mask is added (Gemma-2).
- ``mask`` is additive (float) or boolean (True = may attend), broadcastable to
  (B, H, N, M); ``key_padding`` is additive (float) or boolean, (B | 1, M).
  Both apply on top of the variant's own restriction.
- A row with no allowed key outputs exactly 0 (as torch's SDPA decomposition,
  which emits Where(IsNaN(p), 0, p)). Finite very negative masks (HF's
  finfo.min) are ordinary softmax inputs.
- ``sink_logits`` (H,), where a variant takes them: each row's softmax also
  spans one more column of score σ_h and value zero (GPT-OSS's learned sinks),
  so a row's weights sum to less than one.
- fp16/bf16 inputs are computed in float32 and cast back.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "band_allowed",
    "check_qkv",
    "check_self_attention",
    "dense_attention",
    "positions",
    "restricted_attention",
    "softcapped",
    "softmax_with_sink",
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


def check_self_attention(variant: str, n: int, m: int) -> None:
    """Raise ValueError unless the keys are the queries' own sequence, or a KV cache ending with it (m >= n)."""
    if m < n:
        raise ValueError(f"{variant} attention needs self-attention or a KV-cache step (key length >= query "
                         f"length); got query length {n} and key length {m}")


def check_additive_mask(mask: Tensor | None) -> None:
    """Raise ValueError unless ``mask`` is None or 4-D additive float: the fast forms take no boolean mask
    (the passes convert one to additive before the op sees it)."""
    if mask is not None and (mask.dim() != 4 or mask.dtype == torch.bool):
        raise ValueError(f"the mask must be 4-D additive float; got {mask.dtype} {tuple(mask.shape)}")


def check_sink_logits(sink_logits: Tensor | None, heads: int) -> None:
    """Raise ValueError unless ``sink_logits`` is None or one float logit per query head, (H,)."""
    if sink_logits is not None and (tuple(sink_logits.shape) != (heads,) or not sink_logits.is_floating_point()):
        raise ValueError(f"sink_logits must be (H,) = ({heads},) float; got {sink_logits.dtype} "
                         f"{tuple(sink_logits.shape)}")


# --- shared machinery ---------------------------------------------------------


def with_sinks(allowed: Tensor, sinks: int) -> Tensor:
    """allowed(i, j) |= j < sinks: the StreamingLLM attention sinks, common to every restricting variant."""
    if sinks <= 0:
        return allowed
    is_sink = torch.arange(allowed.shape[-1], device=allowed.device) < sinks
    return allowed | is_sink


def softcapped(scores: Tensor, softcap: float) -> Tensor:
    """c·tanh(s / c) for softcap c > 0 (Gemma-2), before any mask; the scores as they are for 0."""
    return softcap * torch.tanh(scores / softcap) if softcap else scores


def softmax_with_sink(scores: Tensor, sink_logits: Tensor | None, head_axes: int = 1) -> Tensor:
    """softmax over the last axis, which also spans a sink column of score σ_h and value zero when
    ``sink_logits`` (H,) is given (GPT-OSS); the weights of the scores' own columns come back.

    The H heads are the ``head_axes`` axes after the batch ((B, H, ...), or (B, Hkv, rep, ...) where GQA is
    a broadcast). A row with no allowed key and no sink is NaN, as torch.softmax leaves it; with a sink it is 0.
    """
    if sink_logits is None:
        return torch.softmax(scores, dim=-1)
    heads = scores.shape[1:1 + head_axes]
    sink = sink_logits.to(scores.dtype).reshape(1, *heads, *(1,) * (scores.dim() - 1 - head_axes))
    top = torch.maximum(scores.amax(dim=-1, keepdim=True), sink)
    e = torch.exp(scores - top)
    return e / (e.sum(dim=-1, keepdim=True) + torch.exp(sink - top))


def positions(n: int, m: int, device=None) -> tuple[Tensor, Tensor]:
    """(query positions (n, 1), key positions (1, m)); query i sits at i + m − n."""
    return (torch.arange(n, device=device) + (m - n))[:, None], torch.arange(m, device=device)[None, :]


def band_allowed(n: int, m: int, unit: int, before: int, after: int, device=None) -> Tensor:
    """(n, m) bool: base(p) − before <= j < base(p) + unit + after, with base(p) = ⌊p / unit⌋·unit.

    The shape of every local variant: segmented is (S, 0, 0), window (1, W − 1, W − 1),
    memory (S, M_mem, 0), hierarchical's fine level (B, B, B).
    """
    p, j = positions(n, m, device)
    base = torch.div(p, unit, rounding_mode="floor") * unit
    return (j >= base - before) & (j < base + unit + after)


def restricted_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    allowed: Tensor | None,
    *,
    scale: float | None,
    mask: Tensor | None = None,
    key_padding: Tensor | None = None,
    causal: bool = False,
    softcap: float = 0.0,
    sink_logits: Tensor | None = None,
) -> Tensor:
    """softmax(s·QKᵀ + A) V over the keys a variant allows (and a sink column per head, ``sink_logits``).

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
    scores = softcapped(scores, softcap)
    neg_inf = float("-inf")
    if allowed is not None:
        scores = scores.masked_fill(~allowed, neg_inf)
    if causal:
        p, j = positions(n, m, q.device)
        scores = scores.masked_fill(j > p, neg_inf)
    if key_padding is not None:
        scores = _add_mask(scores, key_padding.reshape(key_padding.shape[0], 1, 1, key_padding.shape[-1]), compute)
    if mask is not None:
        scores = _add_mask(scores, mask, compute)

    probs = softmax_with_sink(scores, sink_logits)
    probs = torch.where(torch.isnan(probs), 0.0, probs)  # rows with no allowed key -> 0
    return (probs @ v).to(out_dtype)


def _add_mask(scores: Tensor, mask: Tensor, compute) -> Tensor:
    if mask.dtype == torch.bool:
        return scores.masked_fill(~mask, float("-inf"))
    return scores + mask.to(compute)


# --- variants -------------------------------------------------------------------


def dense_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    scale: float | None = None,
    mask: Tensor | None = None,
    key_padding: Tensor | None = None,
    causal: bool = False,
    softcap: float = 0.0,
    sink_logits: Tensor | None = None,
) -> Tensor:
    """Plain scaled-dot-product attention: every variant's exact limit."""
    return restricted_attention(q, k, v, None, scale=scale, mask=mask, key_padding=key_padding, causal=causal,
                                softcap=softcap, sink_logits=sink_logits)
