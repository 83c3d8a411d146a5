"""torch.ops.attnopt.segmented_attention: block-diagonal attention plus sinks.

Cost O(N·(S+G)·D); nothing of size N×N is ever built. The spec is
``attnopt.kernels.reference.segmented_attention``.

Layout: N is padded up to nseg·S (the padded keys are masked, so a ragged last
segment is exact) and the queries are viewed as (B, Hkv, rep, nseg, S, D) and
the keys/values as (B, Hkv, 1, nseg, S, D), so GQA is a matmul broadcast. Each
segment's scores are [its own S keys | the G sink keys]; a sink key that
already lies in the segment is masked in the sink columns so that it is not
counted twice.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .reference import check_qkv, check_segmented

__all__ = ["segmented_attention"]

_NAME = "attnopt::segmented_attention"
_SCHEMA = (
    "(Tensor q, Tensor k, Tensor v, Tensor? mask, int segment_size, int sinks, float scale, bool causal)"
    " -> Tensor"
)


def _user_mask_blocks(mask: Tensor, pos: Tensor, sink_pos: Tensor) -> Tensor:
    """The (…, nseg, S, S+G) diagonal blocks and sink columns of a 4-D mask.

    Advanced indexing with broadcast row/column indices reads only O(N·(S+G))
    entries and works on stride-0 (expanded) masks without copying them. Rows
    and columns of size 1 broadcast; clamping maps the padded positions onto
    real ones (their values are discarded or masked anyway).
    """
    rows = pos.clamp(max=mask.shape[2] - 1)[:, :, None]  # (nseg, S, 1)
    cols = torch.cat([pos, sink_pos.expand(pos.shape[0], -1)], dim=1).clamp(max=mask.shape[3] - 1)
    return mask[:, :, rows, cols[:, None, :]]


def _segmented_attention_impl(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Optional[Tensor],
    segment_size: int,
    sinks: int,
    scale: float,
    causal: bool,
) -> Tensor:
    check_qkv(q, k, v)
    B, H, N, D = q.shape
    Hkv = k.shape[1]
    check_segmented(N, k.shape[2], segment_size, sinks)
    if mask is not None and (mask.dim() != 4 or mask.dtype == torch.bool):
        raise ValueError(
            "segmented_attention takes a 4-D additive float mask; "
            f"got dtype {mask.dtype} with shape {tuple(mask.shape)}"
        )
    if N == 0:
        return q.new_zeros(q.shape)
    # seg(i) is the same for S >= N, and G >= N already allows every key.
    S, G = min(segment_size, N), min(sinks, N)
    nseg = -(-N // S)
    Np, rep = nseg * S, H // Hkv
    out_dtype = q.dtype
    compute = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    q, k, v = q.to(compute), k.to(compute), v.to(compute)

    pad = (0, 0, 0, Np - N)
    qs = torch.nn.functional.pad(q, pad).view(B, Hkv, rep, nseg, S, D)
    ks = torch.nn.functional.pad(k, pad).view(B, Hkv, 1, nseg, S, D)
    vs = torch.nn.functional.pad(v, pad).view(B, Hkv, 1, nseg, S, D)

    dev = q.device
    r = torch.arange(S, device=dev)
    g = torch.arange(nseg, device=dev)
    pos = g[:, None] * S + r[None, :]  # (nseg, S): position of row/column r of segment g
    j = torch.arange(G, device=dev)

    # Restrictions as bool "allowed" tensors, shaped to broadcast over (nseg, S, cols).
    local_ok = (pos < N)[:, None, :]  # padded keys
    sink_ok = (j[None, :] // S != g[:, None])[:, None, :]  # sink already in this segment
    if causal:  # N == M, so j <= i
        local_ok = local_ok & (r[None, :] <= r[:, None])
        sink_ok = sink_ok & (j[None, None, :] <= pos[:, :, None])

    neg_inf = float("-inf")
    scores = (qs @ ks.transpose(-1, -2)) * scale  # (B, Hkv, rep, nseg, S, S)
    scores = scores.masked_fill(~local_ok, neg_inf).view(B, H, nseg, S, S)
    if G:
        k_sink = k[:, :, None, None, :G]  # (B, Hkv, 1, 1, G, D)
        sink_scores = (qs @ k_sink.transpose(-1, -2)) * scale
        sink_scores = sink_scores.masked_fill(~sink_ok, neg_inf).view(B, H, nseg, S, G)
        scores = torch.cat([scores, sink_scores], dim=-1)
    if mask is not None:
        # Cast after the gather, so a half-precision N×N mask is never copied whole.
        scores = scores + _user_mask_blocks(mask, pos, j).to(compute)  # (Bm, Hm, nseg, S, S+G) broadcasts

    p = torch.softmax(scores, dim=-1)
    p = torch.where(torch.isnan(p), 0.0, p).view(B, Hkv, rep, nseg, S, S + G)
    out = p[..., :S] @ vs
    if G:
        out = out + p[..., S:] @ v[:, :, None, None, :G]
    return out.reshape(B, H, Np, D)[:, :, :N].to(out_dtype).contiguous()


def _segmented_attention_fake(q, k, v, mask, segment_size, sinks, scale, causal):
    return q.new_empty(q.shape)


def _define() -> None:
    # A module may be executed twice (importlib.reload, or imported under two
    # names); torch.library refuses to define the same op twice.
    if hasattr(torch.ops.attnopt, "segmented_attention"):
        return
    # The CUDA kernel is the same torch code for now; a Triton kernel
    # (torch.library.triton_op) replaces it in a later issue.
    op = torch.library.custom_op(
        _NAME,
        _segmented_attention_impl,
        mutates_args=(),
        device_types=("cpu", "cuda"),
        # Plain ints, not SymInt: the segment layout is fixed when a graph is traced.
        schema=_SCHEMA,
    )
    op.register_fake(_segmented_attention_fake)


_define()

segmented_attention = torch.ops.attnopt.segmented_attention
