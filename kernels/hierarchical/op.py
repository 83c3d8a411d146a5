"""torch.ops.attnopt.hierarchical_attention: blocked fine window + sinks + pooled coarse groups, one softmax.

Query blocks are the key blocks the queries sit in (B rows each). Every query
block reads one contiguous fine range of 3B keys (2B causal), the G sinks, and
C pooled entries from ``kernels.pooling`` (C ≈ N/B for L = 1): cost
O(N·(3B + G + C)·D). Query blocks are processed a chunk at a time so that no
scores tensor exceeds ``CHUNK_ELEMENTS``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..pooling import block_prefix, pool_ranges
from ..reference import check_additive_mask, check_qkv, check_self_attention, softcapped, softmax_with_sink
from ..torch_ops import define_op

CHUNK_ELEMENTS = 1 << 17  # scores per chunk of query blocks, all batches and heads together


def coarse_columns(qb: Tensor, key_blocks: int, levels: int, causal: bool) -> tuple[Tensor, Tensor]:
    """The pooled groups of each query block ``qb`` (absolute block ids) as block ranges [start, end), (nqb, C).

    The groups of ``reference.coarse_groups``, enumerated: levels below the last
    have two groups of 2^l blocks on each side at distances [2^(l+1), 2^(l+2));
    the last level's groups of g = 2^(L−1) blocks run outwards from distance 2g,
    left ones first, as many columns as the busiest query block needs. Unused
    columns are empty ranges (masked); ranges may stick out of [0, key_blocks)
    and are clamped by the pooling.
    """
    sides = (0,) if causal else (0, 1)
    starts, ends = [], []
    for lev in range(levels - 1):
        g = 2 ** lev
        for side in sides:
            for t in (0, 1):  # right: qb + 2g .. qb + 4g − 1; left: qb − 4g + 1 .. qb − 2g
                s = qb + (2 * g if side else 1 - 4 * g) + t * g
                starts.append(s)
                ends.append(s + g)
    g = 2 ** (levels - 1)
    near = 2 * g  # the last level starts at distance 2^L
    n_left = torch.div(qb - near + g, g, rounding_mode="floor").clamp(min=0)
    n_right = torch.zeros_like(qb) if causal else \
        torch.div(key_blocks - qb - near + g - 1, g, rounding_mode="floor").clamp(min=0)
    c = torch.arange(max(int((n_left + n_right).max()), 1), device=qb.device)[None, :]
    left = qb[:, None] - near - (c + 1) * g + 1
    right = qb[:, None] + near + (c - n_left[:, None]) * g
    top = torch.where(c < n_left[:, None], left, right)
    used = c < (n_left + n_right)[:, None]
    zero = torch.zeros_like(top)
    start = torch.cat([torch.stack(starts, 1), torch.where(used, top, zero)], 1) if starts else \
        torch.where(used, top, zero)
    end = torch.cat([torch.stack(ends, 1), torch.where(used, top + g, zero)], 1) if ends else \
        torch.where(used, top + g, zero)
    return start, end


def forward(q, k, v, mask, key_padding, block: int, levels: int, sinks: int, scale: float, causal: bool,
            softcap: float, sink_logits=None):
    check_qkv(q, k, v)
    b, h, n, d = q.shape
    hkv, m = k.shape[1], k.shape[2]
    check_self_attention("hierarchical", n, m)
    check_additive_mask(mask)
    if n == 0:
        return q.new_zeros(q.shape)
    rep, off, dev = h // hkv, m - n, q.device
    bs = min(block, m)  # a block that holds every key means the same at any larger size
    key_blocks = -(-m // bs)
    out_dtype = q.dtype
    compute = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    neg_inf = float("-inf")

    # Query blocks, in position space: block qb holds positions qb·B + r.
    first = off // bs
    qb = torch.arange(first, (m - 1) // bs + 1, device=dev)
    nqb = qb.shape[0]
    front = off - first * bs
    pos = qb[:, None] * bs + torch.arange(bs, device=dev)[None, :]  # (nqb, B)
    # Exact columns: the fine range [(qb − 1)·B, +span) of each query block, then the G sinks.
    span = (2 if causal else 3) * bs
    lo = (qb - 1) * bs
    fine = lo[:, None] + torch.arange(span, device=dev)[None, :]  # (nqb, span)
    G = min(sinks, m)
    j = torch.arange(G, device=dev)
    exact_cols = torch.cat([fine.clamp(0, m - 1), j.expand(nqb, G)], dim=1)  # (nqb, span + G)
    # Pooled columns; sinks stay out of every pool (they are exact).
    start, end = coarse_columns(qb, key_blocks, levels, causal)
    prefix = block_prefix(k, v, key_padding, bs, skip_first=G)

    qp = F.pad(q.to(compute), (0, 0, front, nqb * bs - front - n)).view(b, hkv, rep, nqb, bs, d)
    kc, vc = k.to(compute), v.to(compute)
    kp = None if key_padding is None else key_padding.to(compute).reshape(key_padding.shape[0], -1).expand(-1, m)
    rows = (pos - off).clamp(0, n - 1)
    out = qp.new_empty(b, hkv, rep, nqb, bs, d)
    columns = span + G + start.shape[1]
    step = max(1, CHUNK_ELEMENTS // (b * h * bs * columns))
    for c0 in range(0, nqb, step):
        sl = slice(c0, min(c0 + step, nqb))
        cols = exact_cols[sl]
        ok = _exact_allowed(fine[sl], lo[sl], pos[sl], span, j, m, causal)
        k_bar, v_bar, log_n = pool_ranges(prefix, start[sl], end[sl], compute)  # (b, hkv, c, C, d), (Bw, c, C)
        keys = torch.cat([kc[:, :, cols], k_bar], dim=3).unsqueeze(2)  # (b, hkv, 1, c, span + G + C, d)
        values = torch.cat([vc[:, :, cols], v_bar], dim=3).unsqueeze(2)
        raw = softcapped((qp[:, :, :, sl] @ keys.transpose(-1, -2)) * scale, softcap)
        exact = raw[..., :cols.shape[1]].masked_fill(~ok, neg_inf)
        if kp is not None:
            exact = exact + kp[:, cols][:, None, None, :, None, :]
        if mask is not None:
            exact = exact + _mask_blocks(mask, rows[sl], cols, hkv, compute)
        pooled = raw[..., cols.shape[1]:] + log_n[:, None, None, :, None, :]
        p = softmax_with_sink(torch.cat([exact, pooled], dim=-1), sink_logits, head_axes=2)  # (b, hkv, rep, ..)
        out[:, :, :, sl] = torch.where(torch.isnan(p), 0.0, p) @ values
    return out.reshape(b, h, nqb * bs, d)[:, :, front:front + n].to(out_dtype).contiguous()


def _exact_allowed(fine: Tensor, lo: Tensor, pos: Tensor, span: int, sinks: Tensor, m: int, causal: bool) -> Tensor:
    """(c, B, span + G) bool: fine keys that exist (and, causal, are not after the query), then the sinks
    that the fine range does not already hold (so no key counts twice)."""
    c, bs = pos.shape
    fine_ok = ((fine >= 0) & (fine < m))[:, None, :].expand(c, bs, span)
    in_fine = (sinks[None, :] >= lo[:, None]) & (sinks[None, :] < lo[:, None] + span)
    sink_ok = ~in_fine[:, None, :].expand(c, bs, sinks.shape[0])
    if causal:
        fine_ok = fine_ok & (fine[:, None, :] <= pos[:, :, None])
        sink_ok = sink_ok & (sinks[None, None, :] <= pos[:, :, None])
    return torch.cat([fine_ok, sink_ok], dim=2)


def _mask_blocks(mask: Tensor, rows: Tensor, cols: Tensor, hkv: int, compute) -> Tensor:
    """The dense remainder at (rows (c, B), cols (c, L)), shaped to add to (b, hkv, rep, c, B, L) scores."""
    r = rows.clamp(max=mask.shape[2] - 1)[:, :, None]
    blocks = mask[:, :, r, cols.clamp(max=mask.shape[3] - 1)[:, None, :]].to(compute)  # (Bm, Hm, c, B, L)
    hm = blocks.shape[1]  # 1 or H: split like the scores' (Hkv, rep) to broadcast
    return blocks.reshape(blocks.shape[0], min(hm, hkv), hm // min(hm, hkv), *blocks.shape[2:])


def cuda_forward(q, k, v, mask, key_padding, block: int, levels: int, sinks: int, scale: float, causal: bool,
                 softcap: float, sink_logits=None):
    """On CUDA: the Triton band kernel, fine level and pooled coarse level in one softmax; None (the torch
    code above runs) where the kernel's tiles cannot hold a block's queries (a block not a multiple of 16)."""
    from .. import triton_hierarchical  # triton loads only where CUDA runs

    if not triton_hierarchical.supported(k, block):
        return None
    check_self_attention("hierarchical", q.shape[2], k.shape[2])
    check_additive_mask(mask)
    return triton_hierarchical.hierarchical_attention(q, k, v, block=block, levels=levels, sinks=sinks, scale=scale,
                                                      causal=causal, softcap=softcap, key_padding=key_padding,
                                                      mask=mask, sink_logits=sink_logits)


hierarchical_attention = define_op("hierarchical", forward, cuda=cuda_forward)
