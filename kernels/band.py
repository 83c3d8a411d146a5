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

Whole segments (segmented, and memory with M_mem = S) with only causality and
sinks on top are exactly fused SDPA over the segments folded into the batch
(``segment_fold``); on the CPU the op takes that path (``fold_on_cpu``), and
the CUDA fast path (``triton_band._segment_fast_path``) follows the same rule.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .buckets import merge_parts
from .reference import check_additive_mask, check_qkv, check_self_attention, softcapped, softmax_with_sink

MAX_BLOCK = 256
_NEG_INF = float("-inf")


def query_block(unit: int, before: int, after: int) -> int:
    """Rows per query block: one unit, or for unit 1 about a quarter of the band (less waste, few blocks)."""
    if unit > 1:
        return unit
    return max(16, min(MAX_BLOCK, (before + after + 2) // 4))


def whole_segments(unit: int, before: int, after: int, n: int, m: int) -> bool | None:
    """Whether a band over N queries and M keys is whole segments of ``unit`` and, if so, whether each also sees
    the segment before it (memory with M_mem = S: True; segmented: False); None for any other band (ragged
    segments, a KV-cache step, other memories or windows). The geometry every segment fast path needs."""
    if not (after == 0 and before in (0, unit) and n == m and 0 < unit < n and n % unit == 0):
        return None
    return before == unit


def segment_fold(q: Tensor, k: Tensor, *, unit: int, before: int, after: int, sinks: int, softcap: float,
                 key_padding: Tensor | None, mask: Tensor | None) -> tuple[int, bool, int] | None:
    """Where the band is whole segments with only causality and sinks on top: (segments, prev, sinks_from).

    Then fused SDPA over the segments folded into the batch is exact: (B, H, N, D)
    viewed as (B, H·N/S, S, D), causal inside a square segment being SDPA's
    is_causal. prev (memory with M_mem = S): each segment also sees the one before,
    all allowed, a second fused call on the views q[.., S:], k[.., :N − S]. The
    G ≤ S sinks are extra keys for the rows at or past ``sinks_from`` (before it a
    row's own band already holds them). The parts merge by their log-sum-exp.
    None where the band is anything else (ragged segments, padding, masks,
    softcap, GQA, a KV-cache step). Both the CPU op (below) and the CUDA fast
    path (``triton_band._segment_fast_path``) follow this rule.
    """
    B, H, N, _ = q.shape
    S = unit
    prev = whole_segments(S, before, after, N, k.shape[2])
    if prev is None or not (sinks <= S and softcap == 0 and key_padding is None and mask is None
                            and k.shape[1] == H):
        return None
    return N // S, prev, S * (2 if prev else 1)


def _folded_segments_cpu(q: Tensor, k: Tensor, v: Tensor, fold: tuple[int, bool, int], *, sinks: int,
                         scale: float, causal: bool, sink_logits: Tensor | None = None) -> Tensor:
    """``segment_fold``'s plan with torch's fused CPU attention; parts merged by log-sum-exp in fp32. Sink logits
    are one more part: log-sum-exp σ_h, output zero."""
    B, H, N, D = q.shape
    nseg, prev, sinks_from = fold
    S = N // nseg
    folded = [t.view(B, H * nseg, S, D) for t in (q, k, v)]
    G = sinks if sinks_from < N else 0
    if not prev and not G and sink_logits is None:
        return F.scaled_dot_product_attention(*folded, is_causal=causal, scale=scale).view(B, H, N, D)
    fused = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    out, lse = fused(*folded, 0.0, causal, scale=scale)[:2]
    # parts as buckets.merge_parts takes them: (log-sum-exp, sum 1, normalised output), a part axis at dim 2
    parts = [(lse.reshape(B, H, 1, N).float(), out.reshape(B, H, 1, N, D).float())]
    if prev:  # segment s > 0 against segment s − 1, every pair allowed
        qs, ks, vs = (t.view(B * H, nseg, S, D) for t in (q, k, v))
        o2, l2 = fused(qs[:, 1:], ks[:, :-1], vs[:, :-1], 0.0, False, scale=scale)[:2]
        parts.append((F.pad(l2.reshape(B, H, 1, N - S).float(), (S, 0), value=_NEG_INF),
                      F.pad(o2.reshape(B, H, 1, N - S, D).float(), (0, 0, S, 0))))
    if G:  # the sinks, for rows whose band does not already hold them
        scores = (q.float() @ k[:, :, :G].float().transpose(-1, -2)) * scale  # (B, H, N, G)
        scores[:, :, :sinks_from] = _NEG_INF
        parts.append((torch.logsumexp(scores, dim=-1)[:, :, None],
                      (torch.softmax(scores, dim=-1).nan_to_num(0.0) @ v[:, :, :G].float())[:, :, None]))
    if sink_logits is not None:
        parts.append((sink_logits.float().reshape(1, H, 1, 1).expand(B, H, 1, N), q.new_zeros(B, H, 1, N, D).float()))
    merged = merge_parts([(top, torch.isfinite(top).to(top.dtype), o) for top, o in parts])
    return merged.to(q.dtype)


FOLD_ON_CPU = True  # False keeps the blocked torch code for whole segments too (benchmarks/cpu_ops.py compares)


def fold_on_cpu(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, key_padding: Tensor | None, *, unit: int,
                before: int, after: int, sinks: int, scale: float, causal: bool, softcap: float,
                sink_logits: Tensor | None = None) -> Tensor | None:
    """The CPU op's output through torch's fused attention where ``segment_fold`` allows it, else None."""
    if not (FOLD_ON_CPU and q.device.type == "cpu" and all(t.is_contiguous() for t in (q, k, v))):
        return None
    sinks = min(sinks, k.shape[2])
    fold = segment_fold(q, k, unit=unit, before=before, after=after, sinks=sinks, softcap=softcap,
                        key_padding=key_padding, mask=mask)
    if fold is None:
        return None
    return _folded_segments_cpu(q, k, v, fold, sinks=sinks, scale=scale, causal=causal, sink_logits=sink_logits)


def band_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, key_padding: Tensor | None, *,
                   unit: int, before: int, after: int, sinks: int, scale: float, causal: bool,
                   softcap: float = 0.0, block: int | None = None, sink_logits: Tensor | None = None) -> Tensor:
    check_qkv(q, k, v)
    B, H, N, D = q.shape
    Hkv, M = k.shape[1], k.shape[2]
    check_self_attention("band", N, M)
    check_additive_mask(mask)
    if N == 0:
        return q.new_zeros(q.shape)
    if block is None:  # whole segments: torch's fused attention, several times faster than the blocks below
        out = fold_on_cpu(q, k, v, mask, key_padding, unit=unit, before=before, after=after, sinks=sinks,
                          scale=scale, causal=causal, softcap=softcap, sink_logits=sink_logits)
        if out is not None:
            return out
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
    p = softmax_with_sink(scores, sink_logits, head_axes=2)  # scores are (B, Hkv, rep, nblk, bq, L + G)
    p = torch.where(torch.isnan(p), 0.0, p)
    out = p[..., :span] @ vb
    if G:
        out = out + p[..., span:] @ v[:, :, None, None, :G].to(compute)
    return out.reshape(B, H, nblk * bq, D)[:, :, front:front + N].to(out_dtype).contiguous()


def cuda_forward(to_band):
    """The CUDA implementation of a band variant's op: the Triton kernel (``kernels.triton_band``).

    ``to_band(*params, causal)`` -> (unit, before, after, sinks) maps the variant's
    parameters onto the band; the op's arguments arrive as in ``spec.torch_schema``
    (every band variant takes sink logits last).
    """

    def forward(q, k, v, mask, key_padding, *args):
        *params, scale, causal, softcap, sink_logits = args
        unit, before, after, sinks = to_band(*params, causal)
        from .triton_band import band_attention as triton_band  # triton loads only where CUDA runs

        return triton_band(q, k, v, unit=unit, before=before, after=after, sinks=sinks, scale=scale, causal=causal,
                           softcap=softcap, key_padding=key_padding, mask=mask, sink_logits=sink_logits)

    return forward
