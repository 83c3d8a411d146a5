"""torch.ops.attnopt.segmented_attention: block-diagonal attention plus sinks.

Cost O(N·(S+G)·D); nothing of size N×N is ever built. The spec is
``attnopt.kernels.segmented.reference``.

Layout: N is padded up to nseg·S (the padded keys are masked, so a ragged last
segment is exact) and the queries are viewed as (B, Hkv, rep, nseg, S, D) and
the keys/values as (B, Hkv, 1, nseg, S, D), so GQA is a matmul broadcast. Each
segment's scores are [its own S keys | the G sink keys]; a sink key that
already lies in the segment is masked in the sink columns so that it is not
counted twice. On the CPU, whole segments with only causality and sinks on top
skip all that: torch's fused attention runs on the segments folded into the
batch (``band.fold_on_cpu``), several times faster.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..reference import check_qkv, softcapped, softmax_with_sink
from ..band import cuda_forward, fold_on_cpu
from ..torch_ops import define_op


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


def forward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Optional[Tensor],
    key_padding: Optional[Tensor],
    segment_size: int,
    sinks: int,
    scale: float,
    causal: bool,
    softcap: float,
    sink_logits: Optional[Tensor] = None,
) -> Tensor:
    check_qkv(q, k, v)
    B, H, N, D = q.shape
    Hkv = k.shape[1]
    if N != k.shape[2]:
        raise ValueError(f"segmented_attention needs query length == key length; got {N} and {k.shape[2]}")
    if mask is not None and (mask.dim() != 4 or mask.dtype == torch.bool):
        raise ValueError(
            "segmented_attention takes a 4-D additive float mask; "
            f"got dtype {mask.dtype} with shape {tuple(mask.shape)}"
        )

    if N == 0:
        return q.new_zeros(q.shape)
    folded = fold_on_cpu(q, k, v, mask, key_padding, unit=segment_size, before=0, after=0, sinks=sinks, scale=scale,
                         causal=causal, softcap=softcap, sink_logits=sink_logits)
    if folded is not None:  # whole segments, nothing on top: torch's fused attention (band.segment_fold)
        return folded
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
    scores = softcapped((qs @ ks.transpose(-1, -2)) * scale, softcap)  # (B, Hkv, rep, nseg, S, S)
    scores = scores.masked_fill(~local_ok, neg_inf).view(B, H, nseg, S, S)
    if G:
        k_sink = k[:, :, None, None, :G]  # (B, Hkv, 1, 1, G, D)
        sink_scores = softcapped((qs @ k_sink.transpose(-1, -2)) * scale, softcap)
        sink_scores = sink_scores.masked_fill(~sink_ok, neg_inf).view(B, H, nseg, S, G)
        scores = torch.cat([scores, sink_scores], dim=-1)
    if mask is not None:
        # Cast after the gather, so a half-precision N×N mask is never copied whole.
        scores = scores + _user_mask_blocks(mask, pos, j).to(compute)  # (Bm, Hm, nseg, S, S+G) broadcasts
    if key_padding is not None:  # read at each segment's columns, (Bk, 1, nseg, 1, S+G)
        cols = torch.cat([pos, j.expand(nseg, G)], dim=1).clamp(max=key_padding.shape[-1] - 1)
        scores = scores + key_padding.to(compute)[:, cols][:, None, :, None, :]

    p = softmax_with_sink(scores, sink_logits)  # scores are (B, H, nseg, S, S + G)
    p = torch.where(torch.isnan(p), 0.0, p).view(B, Hkv, rep, nseg, S, S + G)
    out = p[..., :S] @ vs
    if G:
        out = out + p[..., S:] @ v[:, :, None, None, :G]
    return out.reshape(B, H, Np, D)[:, :, :N].to(out_dtype).contiguous()


# On CUDA the Triton band kernel runs it (a segment is the band (S, 0, 0)).
segmented_attention = define_op("segmented", forward, cuda=cuda_forward(
    lambda segment_size, sinks, causal: (segment_size, 0, 0, sinks)))
