"""torch.ops.attnopt.relbias_attention: dense attention, a block of queries at a time, the bias built per block.

Each block of ``QUERY_BLOCK`` queries builds its (H, Bq, M) bias from the slopes
and the table and its (B, H, Bq, M) scores, so memory stays O(Bq·M) per batch
and head whatever N is; the compute is dense attention's O(N·M·D).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..reference import check_additive_mask, check_qkv, softcapped, softmax_with_sink
from ..torch_ops import define_op

QUERY_BLOCK = 64


def check_bias_tensors(slopes: Tensor, table: Tensor, heads: int) -> None:
    """One row per query head, or one row that every head shares (as a mask with one head broadcasts)."""
    if slopes.dim() != 1 or slopes.shape[0] not in (1, heads):
        raise ValueError(f"relbias slopes must be ({heads},) or (1,); got {tuple(slopes.shape)}")
    if table.dim() != 2 or table.shape[0] not in (1, heads) or table.shape[1] % 2 != 1:
        raise ValueError(f"relbias table must be ({heads} or 1, 2R + 1); got {tuple(table.shape)}")


def forward(q, k, v, mask, key_padding, slopes, table, kind: str, num_buckets: int, max_distance: int,
            bidirectional: bool, table_file: str, init_std: float, bias_scale: float, scale: float, causal: bool,
            softcap: float, sink_logits=None):
    check_qkv(q, k, v)
    b, h, n, d = q.shape
    hkv, m = k.shape[1], k.shape[2]
    check_bias_tensors(slopes, table, h)
    check_additive_mask(mask)
    if n == 0:
        return q.new_zeros(q.shape)
    rep, off, dev = h // hkv, m - n, q.device
    out_dtype = q.dtype
    compute = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    r = (table.shape[1] - 1) // 2
    # Heads split as the scores' (Hkv, rep), so GQA needs no repeated keys.
    # Tiny per-head tensors: brought to q's device, so constants stored on another one still work.
    slope = (slopes.to(dev, compute) * bias_scale).expand(h).reshape(hkv, rep, 1, 1)
    tab = (table.to(dev, compute) * bias_scale).expand(h, -1).reshape(hkv, rep, -1)
    qg = (q.to(compute) * scale).view(b, hkv, rep, n, d)
    kt = k.to(compute).unsqueeze(2).transpose(-1, -2)  # (b, hkv, 1, d, m)
    vc = v.to(compute).unsqueeze(2)
    kp = None if key_padding is None else key_padding.to(compute).reshape(key_padding.shape[0], 1, 1, 1, -1)
    out = qg.new_empty(b, hkv, rep, n, d)
    # Causality always leaves key 0, and a finite bias masks nothing: only masks can empty a row.
    may_empty = mask is not None or key_padding is not None or not bool(torch.isfinite(table).all())
    for r0 in range(0, n, QUERY_BLOCK):
        r1 = min(r0 + QUERY_BLOCK, n)
        scores = softcapped(qg[:, :, :, r0:r1] @ kt, softcap)
        scores = scores + _block_bias(slope, tab, r, r0 + off, r1 - r0, m)
        if causal:  # key j > query position p = r0 + off + row
            future = torch.arange(m, device=dev)[None, :] > torch.arange(r0 + off, r1 + off, device=dev)[:, None]
            scores = scores.masked_fill(future, float("-inf"))
        if kp is not None:
            scores = scores + kp
        if mask is not None:
            rows = mask[:, :, r0:r1] if mask.shape[2] > 1 else mask
            hm = rows.shape[1]  # 1 or H: split like the scores' (Hkv, rep) to broadcast
            scores = scores + rows.to(compute).reshape(rows.shape[0], min(hm, hkv), hm // min(hm, hkv),
                                                       *rows.shape[2:])
        p = softmax_with_sink(scores, sink_logits, head_axes=2)  # scores are (b, hkv, rep, rows, M)
        if may_empty:  # a row whose every key is masked is NaN after softmax; it outputs 0
            p = torch.where(torch.isnan(p), 0.0, p)
        out[:, :, :, r0:r1] = p @ vc
    return out.view(b, h, n, d).to(out_dtype)


def _block_bias(slope: Tensor, tab: Tensor, r: int, first: int, rows: int, m: int) -> Tensor:
    """(Hkv, rep, rows, M): the bias of the queries at positions first .. first + rows − 1.

    The bias depends on δ = j − p only, so the block's rows are shifted windows of
    one vector over the block's δ range: built once per head (O(M + rows)) and
    expanded by ``unfold``, which is far cheaper than gathering every (row, key).
    """
    delta = torch.arange(-(first + rows - 1), m - first, device=tab.device)  # the block's δ, ascending
    line = tab[..., delta.clamp(-r, r) + r] - slope[..., 0] * delta.abs()  # (Hkv, rep, M + rows − 1)
    # Window s starts at δ = −(first + rows − 1) + s, which is row rows − 1 − s: flip the windows into rows.
    return line.unfold(-1, m, 1).flip(-2)


def cuda_forward(q, k, v, mask, key_padding, slopes, table, kind: str, num_buckets: int, max_distance: int,
                 bidirectional: bool, table_file: str, init_std: float, bias_scale: float, scale: float,
                 causal: bool, softcap: float, sink_logits=None):
    """On CUDA: the Triton band kernel over every key, the bias computed per element from the distance."""
    check_bias_tensors(slopes, table, q.shape[1])
    check_additive_mask(mask)
    from ..triton_band import relbias_attention as triton_relbias  # triton loads only where CUDA runs

    return triton_relbias(q, k, v, slopes=slopes, table=table, bias_scale=bias_scale, scale=scale, causal=causal,
                          softcap=softcap, key_padding=key_padding, mask=mask, sink_logits=sink_logits)


relbias_attention = define_op("relbias", forward, cuda=cuda_forward)
