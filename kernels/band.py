"""The band machinery, torch: blocked attention for every variant whose keys form a band plus sinks.

A band is (unit U, before P, after A): query i, at position p = i + (M − N),
sees keys base(p) − P <= j < base(p) + U + A with base(p) = ⌊p / U⌋·U, plus the
first G keys (sinks). segmented is (S, 0, 0), window (1, W − 1, W − 1), memory
(S, M_mem, 0), hierarchical's fine level (B, B, B); the spec is
``reference.band_allowed``.

Queries go in blocks of Bq rows aligned to the unit, so each block reads one
contiguous key range of L = (Bq rounded to units) + P + A keys: cost
O(N·(L + G)·D), never N×M. A sink key that the band already allows is masked
in the sink columns, so no key counts twice.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .reference import check_additive_mask, check_qkv, check_self_attention, softcapped

MAX_BLOCK = 256


def query_block(unit: int, before: int, after: int) -> int:
    """Rows per query block: one unit, or for unit 1 about a quarter of the band (less waste, few blocks)."""
    if unit > 1:
        return unit
    return max(16, min(MAX_BLOCK, (before + after + 2) // 4))


def band_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, key_padding: Tensor | None, *,
                   unit: int, before: int, after: int, sinks: int, scale: float, causal: bool,
                   softcap: float = 0.0, block: int | None = None) -> Tensor:
    check_qkv(q, k, v)
    B, H, N, D = q.shape
    Hkv, M = k.shape[1], k.shape[2]
    check_self_attention("band", N, M)
    check_additive_mask(mask)
    if N == 0:
        return q.new_zeros(q.shape)
    rep, off, dev = H // Hkv, M - N, q.device
    # Positions are below M: a unit or reach of M or more selects the same keys as M (keeps blocks small).
    unit, before, after = min(unit, M), min(before, M), min(after, M)
    bq = min(block or query_block(unit, before, after), max(unit, N + unit))
    if unit > 1 and bq % unit:
        bq = unit
    out_dtype = q.dtype
    compute = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    neg_inf = float("-inf")

    # Query blocks in position space: block b holds positions first + b·bq + r.
    first = (off // bq) * bq
    front = off - first
    nblk = -(-(front + N) // bq)
    pos = first + torch.arange(nblk, device=dev)[:, None] * bq + torch.arange(bq, device=dev)[None, :]
    base = torch.div(pos, unit, rounding_mode="floor") * unit  # (nblk, bq)
    lo_row, hi_row = base - before, base + unit + after  # each row's band [lo, hi)
    lo = lo_row[:, 0]  # rows are increasing, so a block's range is [lo of its first row, hi of its last)
    span = bq + before + after  # every block starts on a unit boundary and holds whole units
    idx = lo[:, None] + torch.arange(span, device=dev)[None, :]  # (nblk, L) key positions
    idx_c = idx.clamp(0, M - 1)
    ok = (idx[:, None, :] >= lo_row[:, :, None]) & (idx[:, None, :] < hi_row[:, :, None])
    ok &= ((idx >= 0) & (idx < M))[:, None, :]
    if causal:
        ok &= idx[:, None, :] <= pos[:, :, None]

    qp = F.pad(q.to(compute), (0, 0, front, nblk * bq - front - N)).view(B, Hkv, rep, nblk, bq, D)
    kb = k.to(compute)[:, :, idx_c].unsqueeze(2)  # (B, Hkv, 1, nblk, L, D)
    vb = v.to(compute)[:, :, idx_c].unsqueeze(2)
    scores = softcapped((qp @ kb.transpose(-1, -2)) * scale, softcap).masked_fill(~ok, neg_inf)
    cols = idx_c
    G = min(sinks, M)
    if G:
        j = torch.arange(G, device=dev)
        in_band = (j[None, None, :] >= lo_row[:, :, None]) & (j[None, None, :] < hi_row[:, :, None])
        sink_ok = ~in_band if not causal else ~in_band & (j[None, None, :] <= pos[:, :, None])
        k_sink = k[:, :, None, None, :G].to(compute)  # (B, Hkv, 1, 1, G, D)
        sink_scores = softcapped((qp @ k_sink.transpose(-1, -2)) * scale, softcap).masked_fill(~sink_ok, neg_inf)
        scores = torch.cat([scores, sink_scores], dim=-1)
        cols = torch.cat([idx_c, j.expand(nblk, G)], dim=1)
    if key_padding is not None:
        kp = key_padding.to(compute)[:, cols]  # (Bk, nblk, L + G)
        scores = scores + kp[:, None, None, :, None, :]
    if mask is not None:
        rows = (pos - off).clamp(0, N - 1).clamp(max=mask.shape[2] - 1)
        blocks = mask[:, :, rows[:, :, None], cols.clamp(max=mask.shape[3] - 1)[:, None, :]].to(compute)
        hm = blocks.shape[1]  # 1 or H: split like the scores' (Hkv, rep) to broadcast
        scores = scores + blocks.reshape(blocks.shape[0], min(hm, Hkv), hm // min(hm, Hkv), *blocks.shape[2:])
    p = torch.softmax(scores, dim=-1)
    p = torch.where(torch.isnan(p), 0.0, p)
    out = p[..., :span] @ vb
    if G:
        out = out + p[..., span:] @ v[:, :, None, None, :G].to(compute)
    return out.reshape(B, H, nblk * bq, D)[:, :, front:front + N].to(out_dtype).contiguous()


def cuda_forward(to_band):
    """The CUDA implementation of a band variant's op: the Triton kernel (``kernels.triton_band``).

    ``to_band(*params, causal)`` -> (unit, before, after, sinks) maps the variant's
    parameters onto the band; the op's arguments arrive as in ``spec.torch_schema``.
    """

    def forward(q, k, v, mask, key_padding, *args):
        *params, scale, causal, softcap = args
        unit, before, after, sinks = to_band(*params, causal)
        from .triton_band import band_attention as triton_band  # triton loads only where CUDA runs

        return triton_band(q, k, v, unit=unit, before=before, after=after, sinks=sinks, scale=scale, causal=causal,
                           softcap=softcap, key_padding=key_padding, mask=mask)

    return forward
