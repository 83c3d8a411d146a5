"""Block-sparse flash attention over a *band* of keys, in Triton.

One kernel serves every local variant. A band is (unit U, before P, after A)
plus G sink keys; query i sits at absolute position p = i + (M − N):

    base(p) = ⌊p / U⌋·U
    allowed(i, j) = base(p) − P <= j < base(p) + U + A   or   j < G

segmented(S, G) is (S, 0, 0), window(W, G) is (1, W − 1, W − 1), memory(S, Mm, G)
is (S, Mm, 0), dense is (U >= M, 0, 0). Causal, a key-padding vector, a dense
additive (or boolean) mask and a softcap apply on top.

How the kernel stays block sparse:

- Each program owns BLOCK_M queries. Since base() is monotonic, the union of its
  rows' bands is [base(p_first) − P, base(p_last) + U + A), and the keys every
  row allows are [base(p_last) − P, base(p_first) + U + A) (both clipped by
  causality at p_last / p_first). The program visits the first range in
  BLOCK_N-aligned key blocks: blocks inside the second range run with no
  per-element mask math; only the edge blocks evaluate the band formula.
- Sinks are extra key blocks: those below the band's first block and those past
  its last, never a mask over the whole row. A sink inside the band is visited
  once, by the band loop.
- Online softmax in fp32 in the exp2 domain; a row with no allowed key ends
  with l = 0 and writes exactly 0.
- Fast path (``_segment_fast_path``): segmented and memory (M_mem = S) bands
  with whole segments and no masks are fused SDPA over segments folded into
  the batch (views, no copies); the previous segment (memory) and G <= S sinks
  are merged in by their log-sum-exp in one memory-bound pass (``_merge_fwd``).
  Where NVIDIA's cuDNN frontend is installed, windows (unit 1) take cuDNN's
  diagonal band (their sinks merged in by ``_merge_fwd`` where the window is
  wide enough to pay for the pass, ``_window_merge_pays``), memory's segment
  pairs and GQA segments run as cuDNN calls over strided views with nothing to
  merge, and sink logits ride on cuDNN's sink token (``cudnn_band``).
  Everything else runs the band kernel: dense, other memories, narrow windows
  with sinks, key padding, masks or softcap, fp32, and every band where the
  frontend is missing.
- relbias is the dense band plus a bias computed per element from δ = j − p
  (slopes·|δ| and a per-distance table gather), never a B×H×N×M tensor.
- hierarchical is the band (B, B, B) plus its coarse level: pooled keys and
  values, one per group of blocks, folded into the same online softmax after
  the exact keys (``_attend_pooled``; the per-block sums come from
  ``triton_hierarchical``).
- Every launch goes through ``triton_launch.launch`` (``torch.library.wrap_triton``),
  so the ops that ``torch_ops.define_op`` registers are transparent to torch.compile,
  TMA descriptors included.

Imports only torch, triton and the standard library, so the op layer can
register ``band_attention`` as the CUDA implementation of every band variant.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor

from . import cudnn_band
from .band import segment_fold
from .reference import check_sink_logits
from .triton_launch import launch, tma_descriptor, tma_ok

__all__ = ["BandConfig", "GroupTables", "PooledBlocks", "RelativeBias", "band_attention", "default_config",
           "relbias_attention"]

_LOG2E = 1.4426950408889634
_FLT_MAX = 3.4028234663852886e38


# --- kernel -------------------------------------------------------------------


@triton.jit
def _floor_base(p, unit):
    """⌊p / unit⌋·unit for any sign of p (Triton's % follows C, not Python)."""
    r = p % unit
    r = tl.where(r < 0, r + unit, r)
    return p - r


@triton.jit
def _to_log2_additive(x):
    """An additive mask value in log2 units; finite stays finite (finfo.min rows stay uniform), -inf stays -inf."""
    x = x.to(tl.float32)
    return tl.where(x == float("-inf"), x, tl.maximum(x * 1.4426950408889634, -3.4028234663852886e38))


@triton.jit
def _log2_scores(qk, scale2, cap2, cap_in, SOFTCAP: tl.constexpr):
    """q·k as a score in log2 units: scale2·qk, or under a softcap c·tanh(s·qk / c), written
    c − 2c / (e^{2x} + 1) so that it saturates without NaN."""
    if SOFTCAP:
        t = tl.math.exp2(qk * cap_in)
        s = cap2 - (2.0 * cap2) / (t + 1.0)
    else:
        s = qk * scale2
    return s


@triton.jit
def _exp_weights(m_i, s):
    """(p, alpha, m_new) of one online-softmax step over log2 scores s that may hold −inf:
    a row with no key yet keeps m = −inf and gets p = alpha = 0 instead of NaN."""
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    return tl.math.exp2(s - m_safe[:, None]), tl.math.exp2(m_i - m_safe), m_new


@triton.jit
def _accumulate(acc, l_i, p, alpha, v, PREC: tl.constexpr):
    """A block's weights p into the running sums: (acc·alpha + p·v, l·alpha + Σp)."""
    return tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=PREC), l_i * alpha + tl.sum(p, 1)


@triton.jit
def _attend_blocks(
    acc, l_i, m_i, q,
    K, V, desc_k, desc_v, b, hk, stride_kn, stride_vn,
    KP, stride_kpn, MSK, stride_mn, stride_mm,
    rows, pos, band_lo, band_hi, offs_n, offs_d,
    start, stop, N, M, G, scale2, cap2, cap_in, slope2, TAB, R, tab2,
    MASKED: tl.constexpr, CAUSAL: tl.constexpr, HAS_KP: tl.constexpr, HAS_MASK: tl.constexpr,
    MASK_BOOL: tl.constexpr, SOFTCAP: tl.constexpr, USE_TMA: tl.constexpr, D_TRUE: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
    HAS_SLOPE: tl.constexpr, HAS_TABLE: tl.constexpr, WS: tl.constexpr = False,
):
    """Fold key blocks [start, stop) (BLOCK_N-aligned) into the online softmax.

    MASKED blocks evaluate the band/sink/causal/bounds formula per element; the
    others are known to be fully allowed and in bounds. A relative-position bias
    (relbias) is computed here from δ = j − p: −slope·|δ| + table[clamp(δ, −R, R) + R],
    already in log2 units (``slope2``, ``tab2``), never read from a B×H×N×M tensor.
    """
    for start_n in tl.range(start, stop, BLOCK_N, warp_specialize=WS):
        acc, l_i, m_i = _attend_block(
            acc, l_i, m_i, q, K, V, desc_k, desc_v, b, hk, stride_kn, stride_vn, KP, stride_kpn, MSK, stride_mn,
            stride_mm, rows, pos, band_lo, band_hi, offs_n, offs_d, start_n, False, N, M, G, scale2, cap2, cap_in,
            slope2, TAB, R, tab2, MASKED, CAUSAL, HAS_KP, HAS_MASK, MASK_BOOL, SOFTCAP, USE_TMA, D_TRUE, HEAD_DIM,
            BLOCK_N, PREC, UPCAST, HAS_SLOPE, HAS_TABLE, False)
    return acc, l_i, m_i


@triton.jit
def _attend_band(
    acc, l_i, m_i, q, K, V, desc_k, desc_v, b, hk, stride_kn, stride_vn,
    rows, pos, band_lo, band_hi, offs_n, offs_d, start, stop, full_lo, full_hi, N, M, G, scale2,
    CAUSAL: tl.constexpr, USE_TMA: tl.constexpr, D_TRUE: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_N: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr, WS: tl.constexpr = False,
):
    """A plain band's key blocks [start, stop) in one loop; those outside the fully allowed run
    [full_lo, full_hi) evaluate the band formula per element.

    For short bands (``SHORT_BAND_BLOCKS``): there a row's few blocks would otherwise run as three loops,
    each paying the software pipeline's start and drain. The edge choice is a branch inside the loop, and
    the launcher picks one form per launch: two loops in the branches of one program would each hold their
    own shared-memory stages (twice the memory, half the programs per multiprocessor; tried, 2× slower).
    """
    for start_n in tl.range(start, stop, BLOCK_N, warp_specialize=WS):
        edge = (start_n < full_lo) | (start_n >= full_hi)
        acc, l_i, m_i = _attend_block(
            acc, l_i, m_i, q, K, V, desc_k, desc_v, b, hk, stride_kn, stride_vn, K, 0, K, 0, 0, rows, pos,
            band_lo, band_hi, offs_n, offs_d, start_n, edge, N, M, G, scale2, 0.0, 0.0, 0.0, K, 0, 0.0, False,
            CAUSAL, False, False, False, False, USE_TMA, D_TRUE, HEAD_DIM, BLOCK_N, PREC, UPCAST, False, False,
            True)
    return acc, l_i, m_i


@triton.jit
def _attend_block(
    acc, l_i, m_i, q,
    K, V, desc_k, desc_v, b, hk, stride_kn, stride_vn,
    KP, stride_kpn, MSK, stride_mn, stride_mm,
    rows, pos, band_lo, band_hi, offs_n, offs_d,
    start_n, edge, N, M, G, scale2, cap2, cap_in, slope2, TAB, R, tab2,
    MASKED: tl.constexpr, CAUSAL: tl.constexpr, HAS_KP: tl.constexpr, HAS_MASK: tl.constexpr,
    MASK_BOOL: tl.constexpr, SOFTCAP: tl.constexpr, USE_TMA: tl.constexpr, D_TRUE: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
    HAS_SLOPE: tl.constexpr, HAS_TABLE: tl.constexpr, EDGES: tl.constexpr,
):
    """One key block at start_n into the online softmax (``_attend_blocks``). EDGES: a plain band block
    (``_attend_band``), masked by the band formula where ``edge`` is set; its rows may have met none of their
    keys yet, so the step takes the −inf guard (``_exp_weights``)."""
    EVEN_D: tl.constexpr = HEAD_DIM == D_TRUE
    d_ok = offs_d[None, :] < D_TRUE
    start_n = tl.multiple_of(start_n, BLOCK_N)
    cols = start_n + offs_n
    if USE_TMA:
        k = desc_k.load([b, hk, start_n, 0]).reshape(BLOCK_N, HEAD_DIM)
    elif MASKED or EDGES or not EVEN_D:
        k = tl.load(K + cols[:, None] * stride_kn + offs_d[None, :],
                    mask=(cols[:, None] < M) & d_ok, other=0.0)
    else:
        k = tl.load(K + cols[:, None] * stride_kn + offs_d[None, :])
    if UPCAST:
        k = k.to(tl.float32)
    qk = tl.dot(q, tl.trans(k), input_precision=PREC)

    PLAIN: tl.constexpr = not (MASKED or HAS_KP or HAS_MASK or SOFTCAP or HAS_SLOPE or HAS_TABLE)
    if EDGES:
        s = qk * scale2
        if edge:
            c = cols[None, :]
            ok = ((c >= band_lo[:, None]) & (c < band_hi[:, None])) | (c < G)
            if CAUSAL:
                ok = ok & (c <= pos[:, None])
            s = tl.where(ok & (c < M), s, float("-inf"))
        p, alpha, m_new = _exp_weights(m_i, s)  # a row's first blocks may hold none of its keys
    elif PLAIN:
        # exact fully-allowed block: scale folded into one FMA with the max
        m_new = tl.maximum(m_i, tl.max(qk, 1) * scale2)
        p = tl.math.exp2(qk * scale2 - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
    else:
        s = _log2_scores(qk, scale2, cap2, cap_in, SOFTCAP)
        if HAS_KP:
            kpv = tl.load(KP + cols * stride_kpn, mask=cols < M, other=0.0)
            s = s + _to_log2_additive(kpv)[None, :]
        if HAS_MASK:
            mptr = MSK + rows.to(tl.int64)[:, None] * stride_mn + cols[None, :] * stride_mm
            mv = tl.load(mptr, mask=(rows[:, None] < N) & (cols[None, :] < M), other=0)
            if MASK_BOOL:
                s = tl.where(mv != 0, s, float("-inf"))
            else:
                s = s + _to_log2_additive(mv)
        if HAS_SLOPE or HAS_TABLE:
            if HAS_SLOPE:
                # in fp32 (positions < 2^24 are exact): one subtract and one FMA per score, no int convert
                s = s - slope2 * tl.abs(cols.to(tl.float32)[None, :] - pos.to(tl.float32)[:, None])
            if HAS_TABLE:
                delta = cols[None, :] - pos[:, None]
                t_idx = tl.minimum(tl.maximum(delta, -R), R) + R
                s = s + tl.load(TAB + t_idx).to(tl.float32) * tab2
        if MASKED:
            c = cols[None, :]
            ok = ((c >= band_lo[:, None]) & (c < band_hi[:, None])) | (c < G)
            if CAUSAL:
                ok = ok & (c <= pos[:, None])
            ok = ok & (c < M)
            s = tl.where(ok, s, float("-inf"))
        p, alpha, m_new = _exp_weights(m_i, s)
    # ``_accumulate``'s update, written out so that acc · alpha is issued before V's load and overlaps it:
    # through the helper the window rows ran a few per cent slower (BENCHMARKS, issue 9, 2026-11-30 A/B)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    if USE_TMA:
        v = desc_v.load([b, hk, start_n, 0]).reshape(BLOCK_N, HEAD_DIM)
    elif MASKED or EDGES or not EVEN_D:
        v = tl.load(V + cols[:, None] * stride_vn + offs_d[None, :],
                    mask=(cols[:, None] < M) & d_ok, other=0.0)
    else:
        v = tl.load(V + cols[:, None] * stride_vn + offs_d[None, :])
    if UPCAST:
        v = v.to(tl.float32)
    acc = tl.dot(p.to(v.dtype), v, acc, input_precision=PREC)
    return acc, l_i, m_new


@triton.jit
def _fold_coarse(acc, l_i, m_i, q, k, v, offset, keep, scale2, cap2, cap_in, SOFTCAP: tl.constexpr,
                 PREC: tl.constexpr, HAS_KEEP: tl.constexpr = False):
    """One tile of pooled keys k (offset: log2 n + shift per key, −inf for none) into the online softmax;
    with HAS_KEEP only the (row, key) pairs ``keep`` holds."""
    s = _log2_scores(tl.dot(q, tl.trans(k), input_precision=PREC), scale2, cap2, cap_in, SOFTCAP) + offset[None, :]
    if HAS_KEEP:
        s = tl.where(keep, s, float("-inf"))
    p, alpha, m_new = _exp_weights(m_i, s)
    acc, l_i = _accumulate(acc, l_i, p, alpha, v, PREC)
    return acc, l_i, m_new


@triton.jit
def _attend_pooled(
    acc, l_i, m_i, q, KS, VS, MS, stride_ksn, stride_vsn, shift2, qb, n_cols, NB,
    scale2, cap2, cap_in, offs_d,
    SIDES: tl.constexpr, WIDEST: tl.constexpr, SOFTCAP: tl.constexpr, BLOCK_C: tl.constexpr,
    HEAD_DIM: tl.constexpr, PREC: tl.constexpr,
):
    """hierarchical's lower levels: fold query block ``qb``'s groups of levels below the last.

    Columns enumerate ``hierarchical.op.coarse_columns``' first part: two groups per
    side for each level l < L − 1 (2^l blocks at distances [2^(l+1), 2^(l+2))).
    A group's key and value are the mass-weighted means of its blocks' sums (KS,
    VS, MS: per-block Σ w·k, Σ w·v, Σ w, padding and sinks already weighted out),
    scored s·q·k̄ + log Σ w; an empty group is masked. The last level's groups
    come from the tables (``_attend_table``).
    """
    offs_c = tl.arange(0, BLOCK_C)
    for c0 in range(0, n_cols, BLOCK_C):
        c = c0 + offs_c
        lev = c // (2 * SIDES)
        r = c % (2 * SIDES)
        g_fix = 1 << lev
        g_start = qb + tl.where(r // 2 == 1, 2 * g_fix, 1 - 4 * g_fix) + (r % 2) * g_fix
        g_end = tl.minimum(g_start + g_fix, NB)
        g_start = tl.maximum(g_start, 0)
        live = c < n_cols
        k_bar = tl.zeros([BLOCK_C, HEAD_DIM], dtype=tl.float32)
        v_bar = tl.zeros([BLOCK_C, HEAD_DIM], dtype=tl.float32)
        mass = tl.zeros([BLOCK_C], dtype=tl.float32)
        for t in range(0, WIDEST):  # blocks in the widest lower-level group, 2^(L−2)
            blk = g_start + t
            ok = live & (blk < g_end)
            k_bar += tl.load(KS + blk[:, None] * stride_ksn + offs_d[None, :], mask=ok[:, None], other=0.0)
            v_bar += tl.load(VS + blk[:, None] * stride_vsn + offs_d[None, :], mask=ok[:, None], other=0.0)
            mass += tl.load(MS + blk, mask=ok, other=0.0)
        has = mass > 0.0
        inv = 1.0 / tl.where(has, mass, 1.0)
        offset = tl.where(has, tl.math.log2(tl.where(has, mass, 1.0)) + shift2, float("-inf"))
        acc, l_i, m_i = _fold_coarse(acc, l_i, m_i, q, (k_bar * inv[:, None]).to(q.dtype),
                                     (v_bar * inv[:, None]).to(q.dtype), offset, None, scale2, cap2, cap_in,
                                     SOFTCAP, PREC)
    return acc, l_i, m_i


@triton.jit
def _table_tiles(
    acc, l_i, m_i, q, TK, TV, TO, stride_tn, desc_tk, desc_tv, b, hk, phase, lo, hi, stop, row_blocks,
    scale2, cap2, cap_in, offs_d, SOFTCAP: tl.constexpr, BLOCK_C: tl.constexpr, PREC: tl.constexpr,
    HEAD_DIM: tl.constexpr, TABLE_TMA: tl.constexpr, KEEP: tl.constexpr, CAUSAL: tl.constexpr,
):
    """Tiles [lo, hi) of one table run whose slots end at ``stop``; KEEP: apply the one-level exclusion
    (``_attend_table``) per (row, slot), else every slot below ``stop`` is kept."""
    offs_c = tl.arange(0, BLOCK_C)
    for c0 in range(lo, hi, BLOCK_C):
        c = c0 + offs_c
        ok = c < stop
        if TABLE_TMA:
            # slots past the table's end read zeros, and every slot past ``stop`` has offset −inf
            k = desc_tk.load([b, hk, phase, c0, 0]).reshape(BLOCK_C, HEAD_DIM)
            v = desc_tv.load([b, hk, phase, c0, 0]).reshape(BLOCK_C, HEAD_DIM)
        else:
            k = tl.load(TK + c[:, None] * stride_tn + offs_d[None, :], mask=ok[:, None], other=0.0).to(q.dtype)
            v = tl.load(TV + c[:, None] * stride_tn + offs_d[None, :], mask=ok[:, None], other=0.0).to(q.dtype)
        offset = tl.load(TO + c, mask=ok, other=float("-inf"))
        keep = None
        if KEEP:
            blk = (c - 1)[None, :]
            keep = blk <= row_blocks[:, None] - 2
            if not CAUSAL:
                keep = keep | (blk >= row_blocks[:, None] + 2)
        acc, l_i, m_i = _fold_coarse(acc, l_i, m_i, q, k, v, offset, keep, scale2, cap2, cap_in, SOFTCAP, PREC,
                                     KEEP)
    return acc, l_i, m_i


@triton.jit
def _attend_table(
    acc, l_i, m_i, q, TK, TV, TO, stride_tn, desc_tk, desc_tv, b, hk, phase, lo, hi, row_blocks, scale2, cap2,
    cap_in, offs_d, SOFTCAP: tl.constexpr, BLOCK_C: tl.constexpr, PREC: tl.constexpr, HEAD_DIM: tl.constexpr,
    TABLE_TMA: tl.constexpr, PER_ROW: tl.constexpr = False, CAUSAL: tl.constexpr = False,
):
    """hierarchical's last level: fold slots [lo, hi) of one phase's group table (``triton_hierarchical``):
    pre-pooled mean keys TK and values TV, score offsets TO. Read like key blocks, through TMA where the
    launcher made descriptors (TABLE_TMA: no per-element address or bounds arithmetic, which this ALU-bound
    loop pays for).

    PER_ROW (one level, groups of one block: slot t is block t − 1): each row keeps only the blocks at
    distance 2 or more from its own block ``row_blocks`` (causal: 2 or more before it), so one program
    may hold rows of several blocks. Only the tiles that can hold a row's excluded blocks (slots
    [min row block, max row block + 3)) evaluate that per element; the others fold as they are.
    """
    if PER_ROW:
        near_lo = tl.min(row_blocks, 0)
        near_hi = tl.max(row_blocks, 0) + 3
        # tile-aligned to lo, clipped to [lo, hi)
        near_lo = tl.minimum(tl.maximum(lo + ((near_lo - lo) // BLOCK_C) * BLOCK_C, lo), hi)
        near_hi = tl.maximum(tl.minimum(lo + tl.cdiv(near_hi - lo, BLOCK_C) * BLOCK_C, hi), near_lo)
        acc, l_i, m_i = _table_tiles(
            acc, l_i, m_i, q, TK, TV, TO, stride_tn, desc_tk, desc_tv, b, hk, phase, lo, near_lo, hi, row_blocks,
            scale2, cap2, cap_in, offs_d, SOFTCAP, BLOCK_C, PREC, HEAD_DIM, TABLE_TMA, False, CAUSAL)
        acc, l_i, m_i = _table_tiles(
            acc, l_i, m_i, q, TK, TV, TO, stride_tn, desc_tk, desc_tv, b, hk, phase, near_lo, near_hi, hi,
            row_blocks, scale2, cap2, cap_in, offs_d, SOFTCAP, BLOCK_C, PREC, HEAD_DIM, TABLE_TMA, True, CAUSAL)
        acc, l_i, m_i = _table_tiles(
            acc, l_i, m_i, q, TK, TV, TO, stride_tn, desc_tk, desc_tv, b, hk, phase, near_hi, hi, hi, row_blocks,
            scale2, cap2, cap_in, offs_d, SOFTCAP, BLOCK_C, PREC, HEAD_DIM, TABLE_TMA, False, CAUSAL)
    else:
        acc, l_i, m_i = _table_tiles(
            acc, l_i, m_i, q, TK, TV, TO, stride_tn, desc_tk, desc_tv, b, hk, phase, lo, hi, hi, row_blocks,
            scale2, cap2, cap_in, offs_d, SOFTCAP, BLOCK_C, PREC, HEAD_DIM, TABLE_TMA, False, CAUSAL)
    return acc, l_i, m_i


@triton.jit
def _band_fwd(
    Q, K, V, O, KP, MSK, SINKL, desc_q, desc_k, desc_v, desc_o, desc_tk, desc_tv,
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_on,
    stride_kpb, stride_kpn,
    stride_mb, stride_mh, stride_mn, stride_mm,
    H, N, M, GROUP, UNIT, BEFORE, AFTER, G, scale2, cap2, cap_in, ROW_SHIFT,
    SL, TB, stride_slh, stride_tbh, R, slope_scale2, tab2, KNORM, reach_bits,
    KS, VS, MS, SH, stride_ksb, stride_ksh, stride_ksn, stride_msb, stride_shb, NB, POOL_BLOCK, LEVELS,
    TK, TV, TO, stride_tb, stride_th, stride_tp, stride_tn, stride_tob, stride_top,
    HEAD_DIM: tl.constexpr, D_TRUE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_KP: tl.constexpr, HAS_MASK: tl.constexpr, MASK_BOOL: tl.constexpr,
    SOFTCAP: tl.constexpr, USE_TMA: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
    WS: tl.constexpr, HAS_SLOPE: tl.constexpr, HAS_TABLE: tl.constexpr, COARSE: tl.constexpr,
    GMAX: tl.constexpr, POOL_TILE: tl.constexpr, TABLE_TILE: tl.constexpr, DECAY: tl.constexpr = False,
    UNIFIED: tl.constexpr = False, HAS_SINKL: tl.constexpr = False, TABLE_TMA: tl.constexpr = False,
):
    # Inductor passes Python float arguments as fp64 scalars (Triton's launcher as fp32): fix them to fp32, or
    # the loop-carried softmax state would change type inside the loops.
    scale2 = tl.cast(scale2, tl.float32)
    cap2 = tl.cast(cap2, tl.float32)
    cap_in = tl.cast(cap_in, tl.float32)
    slope_scale2 = tl.cast(slope_scale2, tl.float32)
    tab2 = tl.cast(tab2, tl.float32)
    reach_bits = tl.cast(reach_bits, tl.float32)
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    hk = h // GROUP
    # ROW_SHIFT > 0 aligns the programs to positions (hierarchical: a program's rows share one block)
    m0 = pid_m * BLOCK_M - ROW_SHIFT
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    rows = m0 + offs_m
    row_ok = (rows >= 0) & (rows < N)
    d_ok = offs_d[None, :] < D_TRUE

    Kb = K + b.to(tl.int64) * stride_kb + hk.to(tl.int64) * stride_kh
    Vb = V + b.to(tl.int64) * stride_vb + hk.to(tl.int64) * stride_vh
    KPb = KP + b.to(tl.int64) * stride_kpb
    MSKb = MSK + b.to(tl.int64) * stride_mb + h.to(tl.int64) * stride_mh

    if USE_TMA:
        q = desc_q.load([b, h, m0, 0]).reshape(BLOCK_M, HEAD_DIM)
    else:
        Qb = Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
        q = tl.load(Qb + rows[:, None] * stride_qn + offs_d[None, :], mask=row_ok[:, None] & d_ok, other=0.0)
    if UPCAST:
        q = q.to(tl.float32)

    # --- which key blocks this query block can reach ---------------------------
    off = M - N
    p_first = tl.maximum(m0, 0) + off
    p_last = tl.minimum(m0 + BLOCK_M, N) - 1 + off
    base_first = _floor_base(p_first, UNIT)
    base_last = _floor_base(p_last, UNIT)
    lo = tl.maximum(base_first - BEFORE, 0)  # union of the rows' bands
    hi = tl.minimum(base_last + UNIT + AFTER, M)
    full_lo = tl.maximum(base_last - BEFORE, 0)  # keys every row allows
    full_hi = tl.minimum(base_first + UNIT + AFTER, M)
    g_end = tl.minimum(G, M)
    if CAUSAL:
        hi = tl.minimum(hi, p_last + 1)
        full_hi = tl.minimum(full_hi, p_first + 1)
        g_end = tl.minimum(g_end, p_last + 1)
    blk_lo = (lo // BLOCK_N) * BLOCK_N
    blk_hi = tl.where(hi > lo, tl.cdiv(hi, BLOCK_N) * BLOCK_N, blk_lo)
    full_lo = tl.minimum(tl.maximum(tl.cdiv(full_lo, BLOCK_N) * BLOCK_N, blk_lo), blk_hi)
    full_hi = tl.maximum(tl.minimum((tl.maximum(full_hi, 0) // BLOCK_N) * BLOCK_N, blk_hi), full_lo)

    # per-row band edges, for the masked blocks only
    pos = rows + off
    base = _floor_base(pos, UNIT)
    band_lo = base - BEFORE
    band_hi = base + UNIT + AFTER

    # relative-position bias of this head, in log2 units
    slope2 = 0.0
    if HAS_SLOPE:
        slope2 = tl.load(SL + h * stride_slh).to(tl.float32) * slope_scale2
    TBh = TB + h * stride_tbh

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    # fully allowed blocks first (the bulk of the work), then the edges, then sinks. DECAY (a distance penalty
    # alone, ALiBi): the full blocks next to the rows first, the far ones after the edges (below).
    near_lo = full_lo
    near_hi = full_hi
    if DECAY:
        near_lo = tl.minimum(tl.maximum((tl.maximum(p_first - BLOCK_N, 0) // BLOCK_N) * BLOCK_N, full_lo), full_hi)
        near_hi = tl.maximum(tl.minimum(tl.cdiv(p_last + 1 + BLOCK_N, BLOCK_N) * BLOCK_N, full_hi), near_lo)
    # A short plain band (nothing riding on the scores) takes one loop for all its blocks (``_attend_band``);
    # the others fold the fully allowed run, then each edge, in loops of their own.
    ONE_LOOP: tl.constexpr = UNIFIED and not (HAS_KP or HAS_MASK or SOFTCAP or HAS_SLOPE or HAS_TABLE or DECAY)
    if ONE_LOOP:
        acc, l_i, m_i = _attend_band(
            acc, l_i, m_i, q, Kb, Vb, desc_k, desc_v, b, hk, stride_kn, stride_vn, rows, pos, band_lo, band_hi,
            offs_n, offs_d, blk_lo, blk_hi, full_lo, full_hi, N, M, G, scale2, CAUSAL, USE_TMA, D_TRUE, HEAD_DIM,
            BLOCK_N, PREC, UPCAST, WS)
    else:
        acc, l_i, m_i = _attend_blocks(
            acc, l_i, m_i, q, Kb, Vb, desc_k, desc_v, b, hk, stride_kn, stride_vn, KPb, stride_kpn, MSKb,
            stride_mn, stride_mm, rows, pos, band_lo, band_hi, offs_n, offs_d, near_lo, near_hi, N, M, G,
            scale2, cap2, cap_in, slope2, TBh, R, tab2, False, CAUSAL, HAS_KP, HAS_MASK, MASK_BOOL, SOFTCAP,
            USE_TMA, D_TRUE, HEAD_DIM, BLOCK_N, PREC, UPCAST, HAS_SLOPE, HAS_TABLE, WS)
        acc, l_i, m_i = _attend_blocks(
            acc, l_i, m_i, q, Kb, Vb, desc_k, desc_v, b, hk, stride_kn, stride_vn, KPb, stride_kpn, MSKb,
            stride_mn, stride_mm, rows, pos, band_lo, band_hi, offs_n, offs_d, blk_lo, full_lo, N, M, G,
            scale2, cap2, cap_in, slope2, TBh, R, tab2, True, CAUSAL, HAS_KP, HAS_MASK, MASK_BOOL, SOFTCAP,
            USE_TMA, D_TRUE, HEAD_DIM, BLOCK_N, PREC, UPCAST, HAS_SLOPE, HAS_TABLE)
        acc, l_i, m_i = _attend_blocks(
            acc, l_i, m_i, q, Kb, Vb, desc_k, desc_v, b, hk, stride_kn, stride_vn, KPb, stride_kpn, MSKb,
            stride_mn, stride_mm, rows, pos, band_lo, band_hi, offs_n, offs_d, full_hi, blk_hi, N, M, G,
            scale2, cap2, cap_in, slope2, TBh, R, tab2, True, CAUSAL, HAS_KP, HAS_MASK, MASK_BOOL, SOFTCAP,
            USE_TMA, D_TRUE, HEAD_DIM, BLOCK_N, PREC, UPCAST, HAS_SLOPE, HAS_TABLE)
    if DECAY:
        # A key at distance d scores at most ‖q‖·max‖k‖·s − slope·d (log2 units). Past ``reach`` from a row that
        # is below the row's running max − reach_bits: a weight under 2^−reach_bits of the row's largest, so the
        # far blocks whose every key is past every row's reach change no output bit that fp32 holds (the
        # launcher sets reach_bits = 32 + log2 M, so all skipped keys together weigh under 2^−32).
        qf = q.to(tl.float32)
        bound = tl.sqrt(tl.sum(qf * qf, 1)) * tl.load(KNORM + b * (H // GROUP) + hk) * tl.abs(scale2)
        far = (M + N + BLOCK_N) * 1.0  # not .to(): torch.compile's kernel analysis passes M and N as Python ints
        reach = tl.where(slope2 > 0, (bound - m_i + reach_bits) / tl.where(slope2 > 0, slope2, 1.0), far)
        reach = tl.minimum(reach, far)  # a row with no key yet (m_i = −inf) reaches everything
        first_key = tl.min(tl.where(row_ok, pos.to(tl.float32) - reach, far), 0)
        last_key = tl.max(tl.where(row_ok, pos.to(tl.float32) + reach, -far), 0)
        cut_lo = tl.minimum(tl.maximum((tl.maximum(first_key, 0.0).to(tl.int32) // BLOCK_N) * BLOCK_N, full_lo),
                            near_lo)
        cut_hi = tl.maximum(tl.minimum(tl.cdiv(tl.maximum(last_key, 0.0).to(tl.int32) + 1, BLOCK_N) * BLOCK_N,
                                       full_hi), near_hi)
        acc, l_i, m_i = _attend_blocks(
            acc, l_i, m_i, q, Kb, Vb, desc_k, desc_v, b, hk, stride_kn, stride_vn, KPb, stride_kpn, MSKb,
            stride_mn, stride_mm, rows, pos, band_lo, band_hi, offs_n, offs_d, cut_lo, near_lo, N, M, G,
            scale2, cap2, cap_in, slope2, TBh, R, tab2, False, CAUSAL, HAS_KP, HAS_MASK, MASK_BOOL, SOFTCAP,
            USE_TMA, D_TRUE, HEAD_DIM, BLOCK_N, PREC, UPCAST, HAS_SLOPE, HAS_TABLE, WS)
        acc, l_i, m_i = _attend_blocks(
            acc, l_i, m_i, q, Kb, Vb, desc_k, desc_v, b, hk, stride_kn, stride_vn, KPb, stride_kpn, MSKb,
            stride_mn, stride_mm, rows, pos, band_lo, band_hi, offs_n, offs_d, near_hi, cut_hi, N, M, G,
            scale2, cap2, cap_in, slope2, TBh, R, tab2, False, CAUSAL, HAS_KP, HAS_MASK, MASK_BOOL, SOFTCAP,
            USE_TMA, D_TRUE, HEAD_DIM, BLOCK_N, PREC, UPCAST, HAS_SLOPE, HAS_TABLE, WS)
    # sinks below the band (blocks end at or before blk_lo) and past it (start at blk_hi)
    acc, l_i, m_i = _attend_blocks(
        acc, l_i, m_i, q, Kb, Vb, desc_k, desc_v, b, hk, stride_kn, stride_vn, KPb, stride_kpn, MSKb,
        stride_mn, stride_mm, rows, pos, band_lo, band_hi, offs_n, offs_d, 0, tl.minimum(g_end, blk_lo), N, M,
        G, scale2, cap2, cap_in, slope2, TBh, R, tab2, True, CAUSAL, HAS_KP, HAS_MASK, MASK_BOOL, SOFTCAP,
        USE_TMA, D_TRUE, HEAD_DIM, BLOCK_N, PREC, UPCAST, HAS_SLOPE, HAS_TABLE)
    acc, l_i, m_i = _attend_blocks(
        acc, l_i, m_i, q, Kb, Vb, desc_k, desc_v, b, hk, stride_kn, stride_vn, KPb, stride_kpn, MSKb,
        stride_mn, stride_mm, rows, pos, band_lo, band_hi, offs_n, offs_d, blk_hi, g_end, N, M, G,
        scale2, cap2, cap_in, slope2, TBh, R, tab2, True, CAUSAL, HAS_KP, HAS_MASK, MASK_BOOL, SOFTCAP,
        USE_TMA, D_TRUE, HEAD_DIM, BLOCK_N, PREC, UPCAST, HAS_SLOPE, HAS_TABLE)
    if COARSE:
        TKb = TK + b.to(tl.int64) * stride_tb + hk.to(tl.int64) * stride_th
        TVb = TV + b.to(tl.int64) * stride_tb + hk.to(tl.int64) * stride_th
        TOb = TO + b * stride_tob
        if GMAX == 1:
            # one level: every block at distance 2 or more, one pooled key each, in one run of slots with the
            # exclusion applied per row (the program's rows may span blocks)
            row_blocks = tl.maximum(pos, 0) // POOL_BLOCK
            slot_hi = NB + 1
            if CAUSAL:  # blocks up to two before the last row's: slots up to its block's index
                slot_hi = tl.maximum(p_last // POOL_BLOCK, 1)
            acc, l_i, m_i = _attend_table(
                acc, l_i, m_i, q, TKb, TVb, TOb, stride_tn, desc_tk, desc_tv, b, hk, 0, 1, slot_hi, row_blocks,
                scale2, cap2, cap_in, offs_d, SOFTCAP, TABLE_TILE, PREC, HEAD_DIM, TABLE_TMA, True, CAUSAL)
        else:
            # every row of the program is in one pooling block (the launcher aligns the programs)
            qb = p_first // POOL_BLOCK
            SIDES: tl.constexpr = 1 if CAUSAL else 2
            KSb = KS + b.to(tl.int64) * stride_ksb + hk.to(tl.int64) * stride_ksh
            VSb = VS + b.to(tl.int64) * stride_ksb + hk.to(tl.int64) * stride_ksh
            shift2 = tl.load(SH + b * stride_shb)
            acc, l_i, m_i = _attend_pooled(
                acc, l_i, m_i, q, KSb, VSb, MS + b * stride_msb, stride_ksn, stride_ksn, shift2, qb,
                2 * SIDES * (LEVELS - 1), NB, scale2, cap2, cap_in, offs_d, SIDES, GMAX // 2, SOFTCAP,
                POOL_TILE, HEAD_DIM, PREC)
            # the last level: groups of GMAX blocks outwards from distance 2·GMAX, each side one run of table
            # slots (slot t of phase φ starts at block φ + (t−1)·GMAX; the divisions below are exact)
            n_left = tl.maximum(qb - GMAX, 0) // GMAX
            phase_l = (qb + 1) % GMAX
            top_l = (qb - 3 * GMAX + 1 - phase_l) // GMAX + 1  # the nearest left group's slot
            acc, l_i, m_i = _attend_table(
                acc, l_i, m_i, q, TKb + phase_l * stride_tp, TVb + phase_l * stride_tp,
                TOb + phase_l * stride_top, stride_tn, desc_tk, desc_tv, b, hk, phase_l, top_l - n_left + 1,
                top_l + 1, qb, scale2, cap2, cap_in, offs_d, SOFTCAP, TABLE_TILE, PREC, HEAD_DIM, TABLE_TMA)
            if not CAUSAL:
                n_right = tl.maximum(NB - qb - GMAX - 1, 0) // GMAX
                phase_r = qb % GMAX
                first_r = (qb - phase_r) // GMAX + 3  # the nearest right group (start qb + 2·GMAX)'s slot
                acc, l_i, m_i = _attend_table(
                    acc, l_i, m_i, q, TKb + phase_r * stride_tp, TVb + phase_r * stride_tp,
                    TOb + phase_r * stride_top, stride_tn, desc_tk, desc_tv, b, hk, phase_r, first_r,
                    first_r + n_right, qb, scale2, cap2, cap_in, offs_d, SOFTCAP, TABLE_TILE, PREC, HEAD_DIM,
                    TABLE_TMA)

    if HAS_SINKL:
        # the head's learned sink (GPT-OSS): one more term of the denominator, its value zero. A row with no key
        # (m_i = −inf) gets an infinite sum, so its output is 0 as without a sink.
        sink2 = tl.load(SINKL + h).to(tl.float32) * 1.4426950408889634
        l_i = l_i + tl.math.exp2(sink2 - m_i)
    has_any = l_i > 0.0
    out = acc / tl.where(has_any, l_i, 1.0)[:, None]
    out = tl.where(has_any[:, None], out, 0.0)
    if USE_TMA:
        desc_o.store([b, h, m0, 0], out.to(O.dtype.element_ty).reshape(1, 1, BLOCK_M, HEAD_DIM))
    else:
        Ob = O + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh
        tl.store(Ob + rows[:, None] * stride_on + offs_d[None, :], out.to(O.dtype.element_ty),
                 mask=row_ok[:, None] & d_ok)


# --- launcher -------------------------------------------------------------------


@dataclass(frozen=True)
class BandConfig:
    """Tile shape and pipelining of one launch; ``default_config`` picks it per head dim."""

    block_m: int = 128
    block_n: int = 64
    num_warps: int = 8
    num_stages: int = 3
    use_tma: bool = False
    warp_specialize: bool = False


# Plain bands of at most this many key blocks per row fold their edge blocks in the same loop as the rest
# (``_attend_band``). H200 (bf16, H=16, D=128, N=65536), one loop against three, same call: hierarchical's
# fine window (3 blocks) 0.431 / 0.436 against 0.506 / 0.491 ms, causal 0.394 against 0.465, hierarchical
# L = 1 2.25 against 2.29; but window W=1024 (33 blocks) 2.61 against 2.52 and the memory band 2.46 against
# 2.41, where the in-loop branch costs more than the separate loops' start-up.
SHORT_BAND_BLOCKS = 4

# Bands of at most this many keys per row (unit + before + after) take 64×64 tiles: see default_config.
NARROW_BAND = 4096


def default_config(head_dim: int, dtype: torch.dtype, device: torch.device, has_mask: bool = False,
                   pooled: bool = False, span: int | None = None, sliding: bool = False) -> BandConfig:
    """A fixed table (no autotuning: compile time matters more than the last few percent).

    Measured on the H200 (bf16, D=128, N=65536): 128×128 tiles, 8 warps, 3 stages
    and TMA loads were the fastest of the configurations tried for window and
    memory bands (420 / 414 TFLOP/s); a dense mask adds a pipelined score-sized
    tile per stage, so it gets narrower key blocks and 2 stages to fit in shared
    memory.
    """
    if device.type != "cuda":  # interpreter: small tiles keep the Python loops short
        return BandConfig(block_m=16, block_n=16, num_warps=4, num_stages=1)
    if dtype == torch.float32:
        return BandConfig(block_m=64, block_n=32, num_warps=4, num_stages=2)
    if pooled and head_dim <= 128:
        # hierarchical's coarse level, measured on the H200 (B=64, N=65536): 64×64 tiles on 4 warps, 2 stages,
        # ran 2.0× faster than on 8 warps with L = 2, and 1.12× faster than 128-row tiles with L = 1; 3 stages,
        # which narrow bands prefer, were slower here (L = 1 2.543 against 2.290 ms, L = 2 1.570 against 1.365)
        return BandConfig(block_m=64, block_n=64, num_warps=4, num_stages=2, use_tma=True)
    if head_dim <= 64:
        return BandConfig(block_m=128, block_n=64, num_warps=4, num_stages=2 if has_mask else 3, use_tma=True)
    if head_dim <= 128:
        if has_mask:
            return BandConfig(block_m=128, block_n=64, num_warps=8, num_stages=2, use_tma=True)
        if span is not None and (span <= SHORT_BAND_BLOCKS * 64 or (sliding and span <= NARROW_BAND)):
            # A short band's programs fold 2 to 4 key blocks: too few to fill a software pipeline, whose stages
            # only cost shared memory. Unpipelined, a program's tiles take 48 KB instead of 112: room for 4
            # programs a multiprocessor instead of 2 to hide each other's load latency (the likely reason; the
            # occupancy itself was not read off the GPU). H200 sweep (N=65536, 64×64 on 4 warps; stages 1 / 2 /
            # 3, two runs): hierarchical's fine window 0.396-0.401 / 0.425-0.429 / 0.424-0.425 ms, causal
            # 0.335-0.336 / 0.383-0.385 / 0.392-0.394.
            # Sliding bands (windows: the keys move with every row, so that every tile starts and ends in a
            # partly masked block) gain too at any narrow width; block-aligned ones (segments, memory) lose and
            # keep 3 stages below. Medians of 3-4 alternated runs, stages 1 / 3 (`benchmarks/kernels.py
            # --sweep 65536 --sweep-tiles 64x64w4s1 64x64w4s3 --sweep-repeats 3`, BENCHMARKS.md): windows of
            # W = 256 / 512 / 1024 / 2048 0.799 / 1.376 / 2.398 / 4.573 against 0.900 / 1.434 / 2.534 / 4.776 ms,
            # causal W = 512 / 1024 0.838 / 1.413 against 0.914 / 1.487; segments of 512 / 1024 0.869 / 1.551
            # against 0.750 / 1.335, memory S=M=1024 2.694 against 2.389.
            return BandConfig(block_m=64, block_n=64, num_warps=4, num_stages=1, use_tma=True)
        if span is not None and span <= NARROW_BAND:
            # a narrow band's edge blocks are a large share of its work, and 64-row tiles halve the masked area.
            # H200 sweep (N=65536, 64×64 on 4 warps, 3 stages against 128×128 on 8): window W=1024 2.478 / 2.604 ms,
            # causal 1.400 / 1.650, segmented + 4 sinks 1.272 / 1.577, hierarchical's fine window 0.481 / 0.827;
            # memory S=M=1024 2.423 / 2.381 is the one row within 2% the other way
            return BandConfig(block_m=64, block_n=64, num_warps=4, num_stages=3, use_tma=True)
        return BandConfig(block_m=128, block_n=128, num_warps=8, num_stages=3, use_tma=True)
    if head_dim <= 256 and (pooled or not has_mask):
        # DeepSeek MLA's 192 (its values padded to it; the kernel pads to 256). H200 sweep, N=65536
        # (`benchmarks/kernels.py --head-dim 192 --sweep 65536`): 128×64 tiles on 8 warps, 2 stages, ran window
        # W=1024 in 4.46 ms against 5.44 for the 64×32 below, memory causal 3.50 against 4.36, segmented + 4
        # sinks 2.58 against 3.13; 64×64 on 4 warps was slower (5.79, 4.97, 3.43), 3 stages do not fit.
        # hierarchical's coarse level (B=64): L = 1 4.06 ms against 5.58 for its own D <= 128 entry above,
        # L = 2 causal + 4 sinks (tiles capped at the block's 64 rows) 3.76 against 4.43; 128×128 tiles or
        # 3 stages do not fit in shared memory.
        return BandConfig(block_m=128, block_n=64, num_warps=8, num_stages=2, use_tma=True)
    return BandConfig(block_m=64, block_n=32, num_warps=4, num_stages=2)


def band_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    unit: int,
    before: int,
    after: int,
    sinks: int,
    scale: float,
    causal: bool,
    softcap: float = 0.0,
    key_padding: Tensor | None = None,
    mask: Tensor | None = None,
    sink_logits: Tensor | None = None,
) -> Tensor:
    """softmax over the band's keys (plus sinks), with causal / key padding / mask / softcap on top.

    q (B, H, N, D); k, v (B, Hkv, M, D); key_padding (B, M) additive float (stride-0
    batch allowed); mask (B|1, H|1, N, M) additive float or bool (True = keep);
    sink_logits (H,): a column of that score and value zero in every row's softmax.
    Returns (B, H, N, D) in q's dtype.
    """
    return _band_attention(q, k, v, unit=unit, before=before, after=after, sinks=sinks, scale=scale,
                           causal=causal, softcap=softcap, key_padding=key_padding, mask=mask,
                           sink_logits=sink_logits)


def relbias_attention(q: Tensor, k: Tensor, v: Tensor, *, slopes: Tensor, table: Tensor, bias_scale: float,
                      scale: float, causal: bool, softcap: float = 0.0, key_padding: Tensor | None = None,
                      mask: Tensor | None = None, sink_logits: Tensor | None = None) -> Tensor:
    """Dense attention plus relbias's relative-position bias, computed in the kernel from δ = j − p.

    The band is every key (unit past any length); see ``kernels.relbias`` for the bias.
    """
    return _band_attention(q, k, v, unit=_EVERY_KEY, before=0, after=0, sinks=0, scale=scale, causal=causal,
                           softcap=softcap, key_padding=key_padding, mask=mask,
                           bias=RelativeBias(slopes, table, bias_scale), sink_logits=sink_logits)


_EVERY_KEY = 1 << 30  # a unit longer than any sequence: the band is every key


def _check(q: Tensor, k: Tensor, v: Tensor, unit: int, before: int, after: int, sinks: int, softcap: float,
           key_padding: Tensor | None, mask: Tensor | None, sink_logits: Tensor | None = None) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"band_attention expects 4-D q, k, v; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape; got {tuple(k.shape)} and {tuple(v.shape)}")
    if q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise ValueError(f"q and k must agree on batch and head_dim; got {tuple(q.shape)} and {tuple(k.shape)}")
    if k.shape[1] == 0 or q.shape[1] % k.shape[1]:
        raise ValueError(f"query heads ({q.shape[1]}) must be a multiple of key/value heads ({k.shape[1]})")
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"q, k, v must share one of float16/bfloat16/float32; got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.shape[3] > 256:
        raise ValueError(f"head_dim must be <= 256; got {q.shape[3]}")
    if unit < 1 or before < 0 or after < 0 or sinks < 0:
        raise ValueError(f"band needs unit >= 1, before >= 0, after >= 0, sinks >= 0; got "
                         f"{unit}, {before}, {after}, {sinks}")
    if softcap < 0:
        raise ValueError(f"softcap must be >= 0; got {softcap}")
    B, _, N, _ = q.shape
    M = k.shape[2]
    if key_padding is not None:
        if key_padding.dim() != 2 or key_padding.shape[1] != M or key_padding.shape[0] not in (1, B):
            raise ValueError(f"key_padding must be (B, M) = ({B}, {M}); got {tuple(key_padding.shape)}")
        if not key_padding.is_floating_point():
            raise TypeError(f"key_padding must be an additive float vector; got {key_padding.dtype}")
    if mask is not None:
        if mask.dim() != 4 or mask.shape[2:] != (N, M) or mask.shape[0] not in (1, B) or mask.shape[1] not in (1, q.shape[1]):
            raise ValueError(f"mask must be (B|1, H|1, N, M) with N={N}, M={M}; got {tuple(mask.shape)}")
        if not (mask.is_floating_point() or mask.dtype == torch.bool):
            raise TypeError(f"mask must be additive float or bool; got {mask.dtype}")
    check_sink_logits(sink_logits, q.shape[1])


@triton.jit
def _merge_fwd(
    O, LSE, O2, LSE2, Q, K, V, SINKL,
    stride_lb, stride_ls, stride_li,
    stride_o2b, stride_o2s, stride_o2i, stride_l2b, stride_l2s, stride_l2i,
    stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
    H, N, SEG, NSEG, G, GROUP, UNIT, BEFORE, AFTER, SHIFT, scale2,
    HEAD_DIM: tl.constexpr, BLOCK_R: tl.constexpr, G_PAD: tl.constexpr,
    HAS_PREV: tl.constexpr, HAS_SINKS: tl.constexpr, HAS_SINKL: tl.constexpr = False, CAUSAL: tl.constexpr = False,
):
    """Fold a second partial attention (the previous segment), the sink keys and the sink logits into O, in place.

    Every partial is (output, log-sum-exp): o = Σ_a e^{lse_a − L} o_a with L the
    log-sum-exp over all parts. O is contiguous (B, H, N, D); the LSE tensors and
    O2 are read through their own strides (segment-folded layouts: row i of head h
    is entry h·NSEG + i // SEG, row i % SEG), q, k, v through theirs (k, v with
    H / GROUP heads). A sink counts for a row only where the band (UNIT, BEFORE,
    AFTER, at position i + SHIFT, as in ``_band_fwd``) and causality leave it out
    of the parts already merged.
    """
    scale2 = tl.cast(scale2, tl.float32)  # fp64 when Inductor launches it (see _band_fwd)
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    rows = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = rows < N
    seg = rows // SEG
    loc = rows % SEG
    o_ptrs = O + bh.to(tl.int64) * N * HEAD_DIM + rows[:, None] * HEAD_DIM + offs_d[None, :]
    acc = tl.load(o_ptrs, mask=row_ok[:, None], other=0.0).to(tl.float32)
    l1 = tl.load(LSE + b.to(tl.int64) * stride_lb + (h * NSEG + seg) * stride_ls + loc * stride_li,
                 mask=row_ok, other=0.0) * 1.4426950408889634
    m = l1
    w_sum = tl.full([BLOCK_R], 1.0, tl.float32)  # weights relative to m
    if HAS_PREV:
        ok2 = row_ok & (seg >= 1)
        l2 = tl.load(LSE2 + bh.to(tl.int64) * stride_l2b + (seg - 1) * stride_l2s + loc * stride_l2i,
                     mask=ok2, other=float("-inf")) * 1.4426950408889634
        o2 = tl.load(O2 + bh.to(tl.int64) * stride_o2b + (seg - 1)[:, None] * stride_o2s
                     + loc[:, None] * stride_o2i + offs_d[None, :], mask=ok2[:, None], other=0.0).to(tl.float32)
        m_new = tl.maximum(m, l2)
        a1 = tl.math.exp2(m - m_new)
        a2 = tl.math.exp2(l2 - m_new)
        acc = acc * a1[:, None] + o2 * a2[:, None]
        w_sum = w_sum * a1 + a2
        m = m_new
    if HAS_SINKS:
        # a sink inside a row's band (or past it under causality) was counted by the parts above
        pos = rows + SHIFT
        base = (pos // UNIT) * UNIT
        offs_g = tl.arange(0, G_PAD)
        g = offs_g[None, :]
        oks = (g < G) & row_ok[:, None] & ((g < (base - BEFORE)[:, None]) | (g >= (base + UNIT + AFTER)[:, None]))
        if CAUSAL:
            oks = oks & (g <= pos[:, None])
        q = tl.load(Q + b.to(tl.int64) * stride_qb + h * stride_qh + rows[:, None] * stride_qn + offs_d[None, :],
                    mask=row_ok[:, None], other=0.0)
        hk = h // GROUP
        ks = tl.load(K + b.to(tl.int64) * stride_kb + hk * stride_kh + offs_g[:, None] * stride_kn + offs_d[None, :],
                     mask=offs_g[:, None] < G, other=0.0)
        vs = tl.load(V + b.to(tl.int64) * stride_vb + hk * stride_vh + offs_g[:, None] * stride_vn + offs_d[None, :],
                     mask=offs_g[:, None] < G, other=0.0)
        sc = tl.dot(q, tl.trans(ks)) * scale2
        sc = tl.where(oks, sc, float("-inf"))
        m_new = tl.maximum(m, tl.max(sc, 1))
        a1 = tl.math.exp2(m - m_new)
        p = tl.math.exp2(sc - m_new[:, None])
        acc = acc * a1[:, None] + tl.dot(p.to(vs.dtype), vs)
        w_sum = w_sum * a1 + tl.sum(p, 1)
        m = m_new
    if HAS_SINKL:  # the head's learned sink: weight only, its value zero
        w_sum = w_sum + tl.math.exp2(tl.load(SINKL + h).to(tl.float32) * 1.4426950408889634 - m)
    out = acc / w_sum[:, None]
    tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=row_ok[:, None])


def _merge(out: Tensor, lse: Tensor, q: Tensor, k: Tensor, v: Tensor, *, band: tuple[int, int, int],
           sinks: int, causal: bool, scale: float, segment: int, prev: tuple | None = None,
           sink_logits: Tensor | None = None) -> Tensor:
    """``_merge_fwd`` over ``out`` (contiguous (B, H, N, D), in place): out's log-sum-exp ``lse`` is (B, H·nseg,
    segment) in natural-log units (nseg = N / segment); ``prev``, (o2, lse2) of the previous segment
    ((B·H, nseg − 1, segment, ·)), is merged in; so are the ``sinks`` first keys wherever the band
    (unit, before, after) leaves them out, and the sink logits. Returns ``out``."""
    B, H, N, D = q.shape
    M = k.shape[2]
    unit, before, after = band
    cap = M + N + 1  # past every key, and an int32
    o2, lse2 = prev if prev is not None else (out, lse)
    o2_strides = (o2.stride(0), o2.stride(1), o2.stride(2)) if prev is not None else (0, 0, 0)
    l2_strides = (lse2.stride(0), lse2.stride(1), lse2.stride(2)) if prev is not None else (0, 0, 0)
    block_r = 64
    launch(_merge_fwd)[(triton.cdiv(N, block_r), B * H)](
        out, lse, o2, lse2, q, k, v, _sink_pointer(sink_logits, q),
        lse.stride(0), lse.stride(1), lse.stride(2), *o2_strides, *l2_strides,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        H, N, segment, N // segment, sinks, H // k.shape[1], min(unit, cap), min(before, cap), min(after, cap),
        M - N, float(scale) * _LOG2E,
        HEAD_DIM=D, BLOCK_R=block_r, G_PAD=max(16, triton.next_power_of_2(max(sinks, 1))),
        HAS_PREV=prev is not None, HAS_SINKS=sinks > 0, HAS_SINKL=sink_logits is not None, CAUSAL=causal,
        num_warps=4,
    )
    return out


# The segment fast path's parts that need a log-sum-exp (sinks, memory) run on cuDNN's fused attention:
# measured on the H200 it is as fast as flash on whole segments, while aten's flash op with its LSE output
# was slower than this module's own kernel (so without cuDNN those bands take the kernel).
# "auto": cuDNN where it runs; "off": only plain segmented takes SDPA.
SDPA_LSE = os.environ.get("ATTNOPT_BAND_SDPA", "auto")
_cudnn_runs: bool | None = None


def _cudnn_lse(q, k, v, causal: bool, scale: float):
    """(out, lse) from cuDNN attention, lse in natural-log units (batch, heads, L); None where unavailable."""
    global _cudnn_runs
    if SDPA_LSE == "off" or _cudnn_runs is False:
        return None
    try:
        r = torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, v, None, True, 0.0, causal, False, scale=scale)
    except RuntimeError:
        _cudnn_runs = False
        return None
    _cudnn_runs = True
    out, lse = r[0], r[1]
    return out, (lse.squeeze(-1) if lse.dim() == 4 else lse)


def _fold_pays(segment: int, prev: bool, sinks: bool) -> bool:
    """Whether cuDNN over folded segments beats the band kernel. Each extra part costs a second call or a merge
    pass over q and the output, which short segments do not earn back. H200, bf16, H=16, D=128, N=65536,
    fast path / kernel time, non-causal (``benchmarks/kernels.py --fold-sweep 65536``): the previous segment
    (memory) 2.08 at S=64, 1.34 at 128, 0.94 at 256 (causal 1.06), 0.92 at 512; sinks 1.19 at S=64, 0.88 at
    128; plain segments 0.92 at S=64, 0.59 at 128.
    """
    if prev:
        return segment >= 512
    return segment >= 128 or not sinks


def _segment_fast_path(q, k, v, *, unit, before, after, sinks, scale, causal, softcap, key_padding, mask,
                       sdpa=None, force: bool = False, sink_logits=None):
    """Segmented and memory (M_mem = S) bands as fused SDPA over segments folded into the batch.

    Exact where ``band.segment_fold`` says so (its docstring has the plan); here
    the fused kernel is cuDNN's and ``_merge_fwd`` folds in the sinks per row and
    merges the parts by their log-sum-exp. Returns None where it does not apply.
    ``sdpa`` stands in for the fused kernel (a (q, k, v, causal, scale) -> (out,
    lse) function; the interpreted tests pass a torch one). ``force`` takes the path
    where it is exact but ``_fold_pays`` declines it (benchmarks/kernels.py --fold-sweep).
    """
    B, H, N, D = q.shape
    S = unit
    if not ((q.is_cuda or sdpa is not None) and q.dtype in (torch.float16, torch.bfloat16)
            and q.is_contiguous() and k.is_contiguous() and v.is_contiguous() and D % 8 == 0 and D <= 256):
        return None
    fold = segment_fold(q, k, unit=unit, before=before, after=after, sinks=sinks, softcap=softcap,
                        key_padding=key_padding, mask=mask)
    if fold is None:
        return None
    nseg, prev, sinks_from = fold
    if sdpa is None and not force and not _fold_pays(S, prev, sinks > 0 and sinks_from < N):
        return None
    folded = [t.view(B, H * nseg, S, D) for t in (q, k, v)]
    if not prev and (sinks == 0 or sinks_from >= N) and sink_logits is None:
        if sdpa is not None:
            out = sdpa(*folded, causal, scale)[0]
        else:
            part = _cudnn_lse(*folded, causal, scale)
            out = part[0] if part is not None else F.scaled_dot_product_attention(*folded, is_causal=causal,
                                                                                   scale=scale)
        return out.reshape(B, H, N, D)
    if not _merge_head_dim(D):  # MLA's 192 takes the band kernel
        return None
    sdpa = sdpa or _cudnn_lse
    part = sdpa(*folded, causal, scale)
    if part is None:
        return None
    out, lse = part
    out = out.reshape(B, H, N, D)
    if not out.is_contiguous():
        out = out.contiguous()
    second = None
    if prev:
        qs, ks, vs = (t.view(B * H, nseg, S, D) for t in (q, k, v))
        second = sdpa(qs[:, 1:], ks[:, :-1], vs[:, :-1], False, scale)
        if second is None:
            return None
    return _merge(out, lse, q, k, v, band=(unit, before, after), sinks=sinks if sinks_from < N else 0,
                  causal=causal, scale=scale, segment=S, prev=second, sink_logits=sink_logits)


def _cudnn_band(q, k, v, unit, before, after, sinks, scale, causal, sink_logits=None) -> Tensor | None:
    """Bands that cuDNN's own attention serves where NVIDIA's frontend is installed (``cudnn_band``): a window
    (its diagonal band; sink keys merged in after by their log-sum-exp, ``window_sinks``), memory's segment pairs
    (no second call to merge), and segments with fewer kv heads than query heads (the folded-SDPA path needs one
    per query head) or with sink logits (cuDNN adds them, no merge pass). None for anything else, plain MHA
    segments included (``_segment_fast_path`` serves those in one torch call)."""
    n, m = q.shape[2], k.shape[2]
    bounds = cudnn_band.diagonal_bounds(unit, before, after, causal, n, m)
    if bounds is not None:
        if sinks:
            if not (_window_merge_pays(before, after, causal) and _merge_takes(q, k, v, sinks)
                    and cudnn_band.eligible(q, k, v, bounds, scale, stats=True)):
                return None
            return window_sinks(q, k, v, before=before, after=after, sinks=sinks, scale=scale, causal=causal,
                                sink_logits=sink_logits,
                                window_lse=lambda: cudnn_band.window_lse_attention(q, k, v, *bounds, float(scale)))
        if not cudnn_band.eligible(q, k, v, bounds, scale, sink=sink_logits is not None):
            return None
        return cudnn_band.window_attention(q, k, v, *bounds, float(scale), sink_logits)
    prev = cudnn_band.segment_pairs(unit, before, after, sinks, n, m)
    if prev is None or not (prev or k.shape[1] != q.shape[1] or sink_logits is not None) \
            or not _fold_pays(unit, prev, False):
        return None
    if not cudnn_band.segments_eligible(q, k, v, unit, prev, causal, scale, sink=sink_logits is not None):
        return None
    return cudnn_band.segments_attention(q, k, v, unit, prev, causal, float(scale), sink_logits)


def _window_merge_pays(before: int, after: int, causal: bool) -> bool:
    """Whether cuDNN's window plus the merge pass for its sinks beats the band kernel, which visits the sinks as
    one more key block: the pass reads q and the output once more, which a narrow window does not earn back.
    H200, bf16, H=16, D=128, 4 sinks, kernel / this path's time, plain (causal)
    (``benchmarks/kernels.py --window-sink-sweep 65536 16384``, BENCHMARKS.md, issue 9): at N=65536 1.00 (1.00)
    for W=128, 1.05 (1.15) for 256, 1.21 (1.15) for 512, 1.22 (1.15) for 1024; at N=16384 0.97 (0.97), 1.09
    (1.12), 1.17 (1.11), 1.22 (1.14)."""
    return before + 1 + (0 if causal else after) >= WINDOW_MERGE_FROM


# The fewest keys a row (before + 1, plus after where not causal) whose window's sinks ride on cuDNN and the merge:
# a causal W=256 has 256, a plain W=128 has 255.
WINDOW_MERGE_FROM = 256


def _merge_head_dim(d: int) -> bool:
    """Whether ``_merge_fwd`` takes head dim ``d``: a power of two (its rows are tl.arange(0, D))."""
    return d == triton.next_power_of_2(d)


def _merge_takes(q: Tensor, k: Tensor, v: Tensor, sinks: int) -> bool:
    """What ``_merge_fwd`` reads for a window's sinks: its head dims, a few sinks (one tile), dense last dims."""
    return _merge_head_dim(q.shape[-1]) and sinks <= 64 and all(t.stride(-1) == 1 for t in (q, k, v))


def window_sinks(q, k, v, *, before, after, sinks, scale, causal, sink_logits, window_lse) -> Tensor:
    """A window (band unit 1) plus G sink keys: ``window_lse()`` gives the window's (out, natural-log
    log-sum-exp) without the sinks, and ``_merge_fwd`` adds each sink to the rows whose window leaves it out,
    then the sink logits. The interpreted tests pass a torch ``window_lse``."""
    out, lse = window_lse()
    return _merge(out, lse, q, k, v, band=(1, before, after), sinks=min(sinks, k.shape[2]), causal=causal,
                  scale=scale, segment=q.shape[2], sink_logits=sink_logits)


def _sink_pointer(sink_logits: Tensor | None, q: Tensor) -> Tensor:
    """The kernels' SINKL argument: the (H,) sink logits as contiguous fp32 on q's device, or q as a placeholder
    where there are none (HAS_SINKL off: never read)."""
    return q if sink_logits is None else sink_logits.to(device=q.device, dtype=torch.float32).contiguous()


@dataclass(frozen=True)
class RelativeBias:
    """relbias's bias, computed by the kernel per element: bias_scale·(−slopes[h]·|δ| + table[h, clamp(δ) + R]).

    slopes (H,) or (1,), table (H | 1, 2R + 1), float, on q's device.
    """

    slopes: Tensor
    table: Tensor
    bias_scale: float = 1.0


@dataclass(frozen=True)
class GroupTables:
    """The last level's groups, pooled ahead per phase (``triton_hierarchical.group_tables``).

    keys, values (B, Hkv, G, T, D) mean keys and values in the input dtype; offset
    (Bw, G, T) fp32, log2 n + shift (−inf for an empty group); group: G = 2^(L−1).
    """

    keys: Tensor
    values: Tensor
    offset: Tensor
    group: int


@dataclass(frozen=True)
class PooledBlocks:
    """hierarchical's coarse level for the kernel: per-block sums of w·k, w·v and w (``triton_hierarchical``).

    keys, values (B, Hkv, NB, D) fp32; mass (B, NB) fp32; shift (B | 1,) fp32, the
    log-weight offset in log2 units; block: keys per block; levels: L; tables: the
    last level's groups pooled ahead.
    """

    keys: Tensor
    values: Tensor
    mass: Tensor
    shift: Tensor
    block: int
    levels: int
    tables: GroupTables


def _band_attention(q, k, v, *, unit, before, after, sinks, scale, causal, softcap=0.0, key_padding=None,
                    mask=None, config: BandConfig | None = None, fast_path: bool = True,
                    bias: RelativeBias | None = None, pooled: PooledBlocks | None = None,
                    sink_logits: Tensor | None = None) -> Tensor:
    _check(q, k, v, unit, before, after, sinks, softcap, key_padding, mask, sink_logits)
    if fast_path and bias is None and pooled is None:
        out = None
        if key_padding is None and mask is None and not softcap:
            out = _cudnn_band(q, k, v, unit, before, after, sinks, scale, causal, sink_logits)
        if out is None:
            out = _segment_fast_path(q, k, v, unit=unit, before=before, after=after, sinks=sinks, scale=scale,
                                     causal=causal, softcap=softcap, key_padding=key_padding, mask=mask,
                                     sink_logits=sink_logits)
        if out is not None:
            return out
    B, H, N, D = q.shape
    Hkv, M = k.shape[1], k.shape[2]
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    if B == 0 or H == 0 or N == 0 or D == 0:
        return out
    if M == 0:
        return out.zero_()
    # Any unit/before/after beyond M + N + 1 selects the same keys; capping keeps int32 math exact.
    cap = M + N + 1
    unit, before, after = min(unit, cap), min(before, cap), min(after, cap)
    sinks = min(sinks, M)
    # a table gather or the pooled tiles take shared memory like a mask tile: the narrower configuration
    wide_tiles = mask is not None or pooled is not None or (bias is not None and bias.table.shape[-1] > 1)
    cfg = config or default_config(D, q.dtype, q.device, has_mask=wide_tiles, pooled=pooled is not None,
                                   span=unit + before + after, sliding=unit == 1)
    block_m = cfg.block_m
    row_shift = 0
    if pooled is not None and pooled.levels > 1:
        # a program's rows must share one pooling block: tiles no taller than a block, aligned to positions
        # (one level excludes per row and takes any tile)
        while pooled.block % block_m:
            block_m //= 2
        if block_m < 16:
            raise ValueError(f"the coarse level needs a block that is a multiple of 16; got {pooled.block}")
        row_shift = (M - N) % block_m
    head_dim = max(16, triton.next_power_of_2(D))
    # stride-1 head dim for the loads; other strides are free
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))

    if key_padding is not None:
        kp = key_padding if key_padding.stride(-1) == 1 or key_padding.shape[1] == 1 else key_padding.contiguous()
        kp_strides = (kp.stride(0) if kp.shape[0] == B else 0, kp.stride(1))
    else:
        kp, kp_strides = q, (0, 0)
    if mask is not None:
        msk = mask.view(torch.uint8) if mask.dtype == torch.bool else mask
        m_strides = (msk.stride(0) if msk.shape[0] == B else 0, msk.stride(1) if msk.shape[1] == H else 0,
                     msk.stride(2), msk.stride(3))
    else:
        msk, m_strides = q, (0, 0, 0, 0)
    if bias is not None:
        slopes = bias.slopes.to(device=q.device, dtype=torch.float32).contiguous()
        table = bias.table.to(device=q.device, dtype=torch.float32).contiguous()
        radius = (table.shape[1] - 1) // 2
        # A one-entry table adds the same constant to every key of a row: softmax ignores it (ALiBi's case).
        bias_args = (slopes, table, slopes.stride(0) if slopes.shape[0] == H else 0,
                     table.stride(0) if table.shape[0] == H else 0, radius, float(bias.bias_scale) * _LOG2E,
                     float(bias.bias_scale) * _LOG2E)
        has_slope, has_table = True, radius > 0
    else:
        bias_args, has_slope, has_table = (q, q, 0, 0, 0, 0.0, 0.0), False, False
    # A distance penalty with nothing else on top (ALiBi): the kernel skips key blocks too far to weigh, from each
    # kv head's largest key norm (O(M) fp32, no upcast copy of k). A few key blocks have nothing to skip.
    decay = (has_slope and not has_table and key_padding is None and mask is None and not softcap
             and pooled is None and M > 4 * cfg.block_n)
    if decay:
        knorm = torch.linalg.vector_norm(k, dim=-1, dtype=torch.float32).amax(dim=-1).contiguous()  # (B, Hkv)
        decay_args = (knorm, 32.0 + math.log2(max(M, 2)))
    else:
        decay_args = (q, 0.0)
    if pooled is not None:
        ks, vs, ms, sh = pooled.keys, pooled.values, pooled.mass, pooled.shift
        tab = pooled.tables
        coarse_args = (ks, vs, ms, sh, ks.stride(0), ks.stride(1), ks.stride(2),
                       ms.stride(0) if ms.shape[0] == B else 0, sh.stride(0) if sh.shape[0] == B else 0,
                       ks.shape[2], pooled.block, pooled.levels,
                       tab.keys, tab.values, tab.offset, *tab.keys.stride()[:4],
                       tab.offset.stride(0) if tab.offset.shape[0] == B else 0, tab.offset.stride(1))
        gmax = tab.group
    else:
        coarse_args, gmax = (q, q, q, q, 0, 0, 0, 0, 0, 0, 1, 1, q, q, q, 0, 0, 0, 0, 0, 0), 1

    sinkl = _sink_pointer(sink_logits, q)
    use_tma = bool(cfg.use_tma and head_dim == D and row_shift == 0 and all(tma_ok(t) for t in (q, k, v, out)))
    if use_tma:
        descs = tuple(tma_descriptor(t, [1, 1, rows, D])
                      for t, rows in ((q, block_m), (k, cfg.block_n), (v, cfg.block_n), (out, block_m)))
    else:
        descs = (None, None, None, None)
    # the coarse level's group tables (B, Hkv, G, T, D) through TMA too, a tile of slots at a time
    table_tma = bool(use_tma and pooled is not None and all(tma_ok(t) for t in (pooled.tables.keys,
                                                                                pooled.tables.values)))
    table_descs = (None, None)
    if table_tma:
        table_descs = tuple(tma_descriptor(t, [1, 1, 1, cfg.block_n, t.shape[-1]])
                            for t in (pooled.tables.keys, pooled.tables.values))

    scale2 = float(scale) * _LOG2E
    cap2 = float(softcap) * _LOG2E if softcap else 0.0
    cap_in = 2.0 * float(scale) / float(softcap) * _LOG2E if softcap else 0.0  # exp2 argument for e^{2x}
    # Triton's interpreter multiplies bf16 tiles as raw integers (3.9); it gets fp32 tiles instead.
    upcast = q.dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET") == "1"
    precision = "ieee" if q.dtype == torch.float32 or upcast else "tf32"

    grid = (triton.cdiv(N + row_shift, block_m), B * H)
    launch(_band_fwd)[grid](
        q, k, v, out, kp, msk, sinkl, *descs, *table_descs,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        *kp_strides, *m_strides,
        H, N, M, H // Hkv, unit, before, after, sinks, scale2, cap2, cap_in, row_shift,
        *bias_args, *decay_args, *coarse_args,
        HEAD_DIM=head_dim, D_TRUE=D, BLOCK_M=block_m, BLOCK_N=cfg.block_n,
        CAUSAL=bool(causal), HAS_KP=key_padding is not None, HAS_MASK=mask is not None,
        MASK_BOOL=mask is not None and mask.dtype == torch.bool, SOFTCAP=bool(softcap), USE_TMA=use_tma,
        PREC=precision, UPCAST=upcast, WS=bool(cfg.warp_specialize), HAS_SLOPE=has_slope, HAS_TABLE=has_table,
        COARSE=pooled is not None, GMAX=gmax, POOL_TILE=min(cfg.block_n, 32), TABLE_TILE=cfg.block_n, DECAY=decay,
        UNIFIED=unit + before + after <= SHORT_BAND_BLOCKS * cfg.block_n, HAS_SINKL=sink_logits is not None,
        TABLE_TMA=table_tma,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )
    return out
