"""Sorted-bucket flash attention in Triton: the CUDA form of lsh and routed.

A query i (position p = i + M − N) sees key j when they share a bucket in some
round r, or ⌊p/C⌋ = ⌊j/C⌋ (its local chunk), or j < G (sinks); causal, key
padding, a dense additive remainder and a softcap apply on top, and one softmax
covers the union (VARIANTS.md; the spec is ``kernels.buckets.buckets_allowed``).

Three steps, each O(N·D) in memory:

- **bucket ids** (``project_top``): one Triton pass over q or k computing x·W in
  fp32 per row and keeping the best column(s) with the references' tie rule
  (lowest index first): lsh's signed argmax over [xR ; −xR], routed's top_k
  clusters (keys: argmax over the normalised key).
- **sort**: per (batch, kv head, round), a stable counting sort
  (``triton_sort.sort_buckets``) of the query rows h·N + i of the kv head's query
  heads and of the keys by bucket; bucket b's keys are the sorted slots
  [start_b, end_b).
- **attention**, two kernels sharing one online softmax, in fp32:
  ``_bucket_fwd`` (one launch per round) takes BLOCK_M consecutive sorted query
  rows and visits only the sorted key slots of the buckets they hold,
  [start of the first, end of the last); a block whose rows all hold one
  bucket, in round 0 and with nothing riding on top, runs its whole key blocks
  with no mask math. ``_local_fwd`` then takes the queries in natural order,
  visits their chunks' keys and the sinks, adds GPT-OSS's learned sink (one
  more denominator term, as ``triton_band``'s epilogue does) and writes the output.
  With one round and nothing on top, every pair of a bucket is allowed, and large calls
  (``VARLEN_FROM_PAIRS``) run the buckets as cuDNN's variable-length attention
  instead (``cudnn_varlen``: bucket c of a kv head is one entry), where NVIDIA's cuDNN
  frontend is installed; ``_local_fwd`` then reads that state in sorted order.

Ownership, so that no pair counts twice: round r owns the pairs whose buckets
match in r and in no earlier round; the local kernel owns chunk and sink keys
that no round matched. Between launches the running softmax is carried per row
as (normalised output fp32, log2-sum-exp), which is exact (the previous keys'
weights sum to 1 relative to their log-sum-exp).

Every kernel is launched through ``triton_launch.launch`` (``torch.library.wrap_triton``
under a tracer), so torch.compile sees the kernels through the op layer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import cudnn_varlen
from .reference import check_self_attention, check_sink_logits
from .triton_band import _accumulate, _exp_weights, _log2_scores, _sink_pointer, _to_log2_additive
from .triton_launch import launch, tma_descriptor, tma_ok
from .triton_sort import sort_buckets

__all__ = ["BucketConfig", "bucket_attention", "default_config", "project_top"]

_LOG2E = 1.4426950408889634


# --- bucket ids: the best column(s) of x·W per row ------------------------------------------------


@triton.jit
def _split_bf16(x, UPCAST: tl.constexpr):
    """An fp32 tile as two bf16 terms, hi + lo (16 significant bits): a product with bf16 data as two bf16
    products accumulated in fp32. UPCAST (the interpreter, whose bf16 products are wrong): the same values
    as fp32 tiles."""
    hi = x.to(tl.bfloat16)
    lo = (x - hi.to(tl.float32)).to(tl.bfloat16)
    if UPCAST:
        return hi.to(tl.float32), lo.to(tl.float32)
    return hi, lo


@triton.jit
def _dot(a, b, UPCAST: tl.constexpr):
    """a·b accumulated in fp32; UPCAST: a and b are fp32 tiles holding bf16 values, multiplied exactly."""
    if UPCAST:
        return tl.dot(a, b, input_precision="ieee")
    return tl.dot(a, b)


@triton.jit
def _project_fwd(
    X, W, COLBIAS, OUT,
    stride_xb, stride_xh, stride_xs,
    stride_wb, stride_wh, stride_wr, stride_wd, stride_wc,
    stride_cb, stride_ch,
    H, GROUP, S, R, NCOL, MOD, T,
    HEAD_DIM: tl.constexpr, D_TRUE: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
    SIGNED: tl.constexpr, NORMALIZE: tl.constexpr, HAS_COLBIAS: tl.constexpr, PREC: tl.constexpr,
    SPLIT: tl.constexpr, UPCAST: tl.constexpr,
):
    """OUT (B, H, R·T, S) int32. SIGNED: per round r, argmax over [x·W_r ; −x·W_r] mod MOD (lsh's hash).
    Otherwise: the T best columns of x·W_0 + COLBIAS, best first, ties to the lowest column (routed).

    SPLIT (bf16 x): x·W as x times W's two bf16 terms (``_split_bf16``), x as it is; NORMALIZE then scales
    the products by 1/‖x‖. Otherwise x in fp32 and PREC products."""
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    hw = h // GROUP
    rows = pid * BLOCK_S + tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, HEAD_DIM)
    cols = tl.arange(0, BLOCK_C)
    col_ok = cols < NCOL
    row_ok = rows < S
    x = tl.load(X + b.to(tl.int64) * stride_xb + h.to(tl.int64) * stride_xh + rows[:, None].to(tl.int64) * stride_xs
                + offs_d[None, :], mask=row_ok[:, None] & (offs_d[None, :] < D_TRUE), other=0.0)
    xf = x.to(tl.float32)
    if NORMALIZE:
        inv_norm = 1.0 / tl.maximum(tl.sqrt(tl.sum(xf * xf, 1)), 1e-12)  # F.normalize's x / max(‖x‖, 1e-12)
        if not SPLIT:
            xf = xf * inv_norm[:, None]
    if UPCAST or not SPLIT:
        x = xf
    Wb = W + b.to(tl.int64) * stride_wb + hw.to(tl.int64) * stride_wh
    w_mask = (offs_d[:, None] < D_TRUE) & col_ok[None, :]
    out_base = OUT + bh.to(tl.int64) * (R * T) * S
    big = BLOCK_C
    for r in range(R):
        w = tl.load(Wb + r * stride_wr + offs_d[:, None] * stride_wd + cols[None, :] * stride_wc, mask=w_mask,
                    other=0.0).to(tl.float32)
        if SPLIT:
            w_hi, w_lo = _split_bf16(w, UPCAST)
            proj = _dot(x, w_hi, UPCAST) + _dot(x, w_lo, UPCAST)  # (BLOCK_S, BLOCK_C)
            if NORMALIZE:
                proj = proj * inv_norm[:, None]
        else:
            proj = tl.dot(x, w, input_precision=PREC)
        if SIGNED:
            top = tl.max(tl.where(col_ok[None, :], proj, float("-inf")), 1)
            top_at = tl.min(tl.where(col_ok[None, :] & (proj == top[:, None]), cols[None, :], big), 1)
            low = tl.min(tl.where(col_ok[None, :], proj, float("inf")), 1)
            low_at = tl.min(tl.where(col_ok[None, :] & (proj == low[:, None]), cols[None, :], big), 1)
            bucket = tl.where(top >= -low, top_at, NCOL + low_at) % MOD
            tl.store(out_base + r * S + rows, bucket, mask=row_ok)
        else:
            if HAS_COLBIAS:
                cb = tl.load(COLBIAS + b.to(tl.int64) * stride_cb + hw.to(tl.int64) * stride_ch + cols,
                             mask=col_ok, other=0.0)
                proj = proj + cb[None, :]
            taken = tl.zeros([BLOCK_S, BLOCK_C], dtype=tl.int1) | (~col_ok[None, :])
            for t in range(T):
                val = tl.where(taken, float("-inf"), proj)
                best = tl.max(val, 1)
                # the lowest untaken column holding the best value (-inf ties included), as a stable sort gives
                at = tl.min(tl.where((~taken) & (val == best[:, None]), cols[None, :], big), 1)
                tl.store(out_base + (r * T + t) * S + rows, at, mask=row_ok)
                taken = taken | (cols[None, :] == at[:, None])


def project_top(x: Tensor, w: Tensor, *, mod: int = 0, top: int = 1, signed: bool, normalize: bool = False,
                col_bias: Tensor | None = None) -> Tensor:
    """Bucket ids of the rows of x (B, Hx, S, D): (B, Hx, R·top, S) int32.

    ``w`` is (B | 1, Hw | 1, R, D, n_col) float32 (stride 0 where broadcast); query
    head h reads w's head h // (Hx / Hw). ``signed``: lsh's argmax over ±x·W_r, mod
    ``mod``. Otherwise the ``top`` best columns of x·W_0 (+ ``col_bias``, (B, Hw, n_col)).
    """
    B, Hx, S, D = x.shape
    R, n_col = w.shape[2], w.shape[4]
    Hw = w.shape[1]
    out = torch.empty(B, Hx, R * (1 if signed else top), S, dtype=torch.int32, device=x.device)
    if out.numel() == 0:
        return out
    if x.stride(-1) != 1:
        x = x.contiguous()
    block_s = 16 if _interpreting() else 64
    block_c = max(16, triton.next_power_of_2(n_col))
    cb = col_bias if col_bias is not None else w
    cb_strides = (col_bias.stride(0) if col_bias.shape[0] > 1 else 0, col_bias.stride(1)) if col_bias is not None \
        else (0, 0)
    ws = w.stride()
    grid = (triton.cdiv(S, block_s), B * Hx)
    launch(_project_fwd)[grid](
        x, w, cb, out,
        x.stride(0), x.stride(1), x.stride(2),
        ws[0] if w.shape[0] > 1 else 0, ws[1] if Hw > 1 else 0, ws[2], ws[3], ws[4],
        *cb_strides,
        Hx, Hx // Hw, S, R, n_col, max(mod, 1), 1 if signed else top,
        HEAD_DIM=max(16, triton.next_power_of_2(D)), D_TRUE=D, BLOCK_S=block_s, BLOCK_C=block_c,
        SIGNED=signed, NORMALIZE=normalize, HAS_COLBIAS=col_bias is not None,
        # fp32 accuracy on the tensor cores (3 tf32 products); the FMA "ieee" dot took 3.8 ms for q at N=65536.
        # bf16 x: two bf16 products instead (SPLIT), x·W to 16 significant bits of W.
        PREC="ieee" if _interpreting() else "tf32x3", SPLIT=x.dtype == torch.bfloat16, UPCAST=_interpreting(),
        num_warps=4,
    )
    return out


# --- attention ------------------------------------------------------------------------------------


@triton.jit
def _f32(x):
    """A float argument as fp32: torch.compile passes Python floats as fp64, which would make the whole softmax
    fp64 (and the accumulator's type mismatch tl.dot's)."""
    return tl.cast(x, tl.float32)


@triton.jit
def _fold(
    acc, l_i, m_i, q, k, v, ok, k_ok, cols, mrow, KPb, stride_kpn, MSKb, stride_mm, scale2, cap2, cap_in,
    MASKED: tl.constexpr, HAS_KP: tl.constexpr, HAS_MASK: tl.constexpr, MASK_BOOL: tl.constexpr,
    SOFTCAP: tl.constexpr, PREC: tl.constexpr,
):
    """One key block into the online softmax (log2 domain). ``ok`` (BLOCK_M, BLOCK_N) is the block's allowed
    pairs when MASKED, ``k_ok`` its keys in range; ``cols`` the keys' positions (key padding, mask); ``mrow``
    each row's mask offset. Unmasked blocks carry nothing on top (the callers guarantee it)."""
    qk = tl.dot(q, tl.trans(k), input_precision=PREC)
    if not (MASKED or HAS_KP or HAS_MASK or SOFTCAP):
        m_new = tl.maximum(m_i, tl.max(qk, 1) * scale2)
        p = tl.math.exp2(qk * scale2 - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
    else:
        s = _log2_scores(qk, scale2, cap2, cap_in, SOFTCAP)
        if HAS_KP:
            s = s + _to_log2_additive(tl.load(KPb + cols * stride_kpn, mask=k_ok, other=0.0))[None, :]
        if HAS_MASK:
            mv = tl.load(MSKb + mrow[:, None] + cols[None, :].to(tl.int64) * stride_mm, mask=ok, other=0)
            if MASK_BOOL:
                s = tl.where(mv != 0, s, float("-inf"))
            else:
                s = s + _to_log2_additive(mv)
        if MASKED:
            s = tl.where(ok, s, float("-inf"))
        p, alpha, m_new = _exp_weights(m_i, s)
    acc, l_i = _accumulate(acc, l_i, p, alpha, v, PREC)
    return acc, l_i, m_new


@triton.jit
def _load_state(O_ST, L_ST, st_row, offs_d, row_ok, HEAD_DIM: tl.constexpr):
    """(acc, l, m) of the keys folded so far: the normalised output with weight 1 at its log2-sum-exp."""
    lse = tl.load(L_ST + st_row, mask=row_ok, other=float("-inf"))
    acc = tl.load(O_ST + st_row[:, None] * HEAD_DIM + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    l_i = tl.where(lse == float("-inf"), 0.0, 1.0)
    return acc, l_i, lse


@triton.jit
def _bucket_fwd(
    Q, K, V, KP, MSK, O_ST, L_ST, QPERM, QBS, KPERM, KBS, KSTART, KEND, QB, KB, DESC_K, DESC_V,
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_kpb, stride_kpn, stride_mb, stride_mh, stride_mn, stride_mm,
    HKV, N, M, GROUP, ROWS, R, ROUND, NB, OFF, scale2, cap2, cap_in, KCUT, KFULL, TILES,
    HEAD_DIM: tl.constexpr, D_TRUE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_KP: tl.constexpr, HAS_MASK: tl.constexpr, MASK_BOOL: tl.constexpr,
    SOFTCAP: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr, PRESORTED: tl.constexpr,
    USE_TMA: tl.constexpr = False,
):
    """Round ROUND: BLOCK_M consecutive sorted query rows of one (batch, kv head) against the sorted key slots
    of their buckets. Reads the running state (rounds > 0) and writes it back for the same rows."""
    scale2, cap2, cap_in = _f32(scale2), _f32(cap2), _f32(cap_in)
    pid = tl.program_id(0)
    bhk = tl.program_id(1)
    b = bhk // HKV
    hk = bhk % HKV
    s0 = pid * BLOCK_M
    slots = s0 + tl.arange(0, BLOCK_M)
    slot_ok = slots < ROWS
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    d_ok = offs_d[None, :] < D_TRUE

    seq = bhk.to(tl.int64) * R + ROUND  # this (batch, kv head, round)'s sorted arrays
    q_base = seq * ROWS
    k_base = seq * M
    rows = tl.load(QPERM + q_base + slots, mask=slot_ok, other=0)
    q_bucket = tl.load(QBS + q_base + slots, mask=slot_ok, other=-1)
    b_first = tl.load(QBS + q_base + s0)
    b_last = tl.load(QBS + q_base + tl.minimum(s0 + BLOCK_M, ROWS) - 1)
    lo = tl.load(KSTART + seq * NB + b_first)
    hi = tl.load(KEND + seq * NB + b_last)

    hq = rows // N
    i = rows % N
    h = hk * GROUP + hq
    pos = i + OFF
    q_row = h.to(tl.int64) * stride_qh + i.to(tl.int64) * stride_qn  # rows of several query heads
    q = tl.load(Q + b.to(tl.int64) * stride_qb + q_row[:, None] + offs_d[None, :], mask=slot_ok[:, None] & d_ok,
                other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    st_row = (b.to(tl.int64) * HKV * GROUP + h) * N + i  # the state is (B, H, N, ·)
    if ROUND > 0:
        acc, l_i, m_i = _load_state(O_ST, L_ST, st_row, offs_d, slot_ok, HEAD_DIM)
    else:
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    Kb = K + b.to(tl.int64) * stride_kb + hk.to(tl.int64) * stride_kh
    Vb = V + b.to(tl.int64) * stride_vb + hk.to(tl.int64) * stride_vh
    if PRESORTED:  # K, V are this round's keys in sorted order, (B, Hkv, R, M, D) contiguous
        Kb = K + k_base * HEAD_DIM
        Vb = V + k_base * HEAD_DIM
    KPb = KP + b.to(tl.int64) * stride_kpb
    MSKb = MSK + b.to(tl.int64) * stride_mb
    mrow = h.to(tl.int64) * stride_mh + i.to(tl.int64) * stride_mn

    if CAUSAL:  # the last bucket's keys after every query of the block are cut off (``causal_cuts``)
        hi = tl.minimum(hi, tl.maximum(tl.load(KCUT + seq * TILES + pid), lo))

    # Whole key blocks of a single-bucket block need no mask at all when nothing rides on top; causal, the
    # keys up to the block's earliest query position (``causal_cuts``), which every row may see.
    SIMPLE: tl.constexpr = not (HAS_KP or HAS_MASK or SOFTCAP)
    plain_end = lo
    if SIMPLE:
        if (b_first == b_last) & (ROUND == 0):
            full = hi
            if CAUSAL:
                full = tl.minimum(tl.maximum(tl.load(KFULL + seq * TILES + pid), lo), hi)
            plain_end = lo + ((full - lo) // BLOCK_N) * BLOCK_N
        for start in range(lo, plain_end, BLOCK_N):
            kslot = start + offs_n
            if PRESORTED:
                krow = kslot
            else:
                krow = tl.load(KPERM + k_base + kslot)
            if USE_TMA:  # pre-sorted keys as one 2-D tensor: this round's slot s is its row k_base + s
                k = DESC_K.load([(k_base + start).to(tl.int32), 0])
                v = DESC_V.load([(k_base + start).to(tl.int32), 0])
            else:
                k = tl.load(Kb + krow.to(tl.int64)[:, None] * stride_kn + offs_d[None, :], mask=d_ok, other=0.0)
                v = tl.load(Vb + krow.to(tl.int64)[:, None] * stride_vn + offs_d[None, :], mask=d_ok, other=0.0)
            if UPCAST:
                k = k.to(tl.float32)
                v = v.to(tl.float32)
            acc, l_i, m_i = _fold(acc, l_i, m_i, q, k, v, None, None, krow, mrow, KPb, stride_kpn, MSKb,
                                  stride_mm, scale2, cap2, cap_in, False, False, False, False, False, PREC)
    for start in range(plain_end, hi, BLOCK_N):
        kslot = start + offs_n
        k_ok = kslot < hi
        kid = tl.load(KPERM + k_base + kslot, mask=k_ok, other=0)
        k_bucket = tl.load(KBS + k_base + kslot, mask=k_ok, other=-2)
        krow = kslot if PRESORTED else kid
        k = tl.load(Kb + krow.to(tl.int64)[:, None] * stride_kn + offs_d[None, :], mask=k_ok[:, None] & d_ok,
                    other=0.0)
        v = tl.load(Vb + krow.to(tl.int64)[:, None] * stride_vn + offs_d[None, :], mask=k_ok[:, None] & d_ok,
                    other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        ok = (q_bucket[:, None] == k_bucket[None, :]) & slot_ok[:, None] & k_ok[None, :]
        for r2 in range(ROUND):  # an earlier round owns the pairs it matched
            qb2 = tl.load(QB + (bhk.to(tl.int64) * R + r2) * ROWS + rows, mask=slot_ok, other=-1)
            kb2 = tl.load(KB + (bhk.to(tl.int64) * R + r2) * M + kid, mask=k_ok, other=-2)
            ok = ok & (qb2[:, None] != kb2[None, :])
        if CAUSAL:
            ok = ok & (kid[None, :] <= pos[:, None])
        acc, l_i, m_i = _fold(acc, l_i, m_i, q, k, v, ok, k_ok, kid, mrow, KPb, stride_kpn, MSKb, stride_mm,
                              scale2, cap2, cap_in, True, HAS_KP, HAS_MASK, MASK_BOOL, SOFTCAP, PREC)

    has_any = l_i > 0.0
    out = acc / tl.where(has_any, l_i, 1.0)[:, None]
    lse = tl.where(has_any, m_i + tl.math.log2(tl.where(has_any, l_i, 1.0)), float("-inf"))
    tl.store(O_ST + st_row[:, None] * HEAD_DIM + offs_d[None, :], out, mask=slot_ok[:, None])
    tl.store(L_ST + st_row, lse, mask=slot_ok)


@triton.jit
def _local_fwd(
    Q, K, V, O, KP, MSK, O_ST, L_ST, QB, KB, SINKL, QINV, KSTART, KEND,
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_on,
    stride_kpb, stride_kpn, stride_mb, stride_mh, stride_mn, stride_mm,
    H, N, M, GROUP, ROWS, R, CHUNK, G, OFF, NB, scale2, cap2, cap_in,
    HEAD_DIM: tl.constexpr, D_TRUE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_KP: tl.constexpr, HAS_MASK: tl.constexpr, MASK_BOOL: tl.constexpr,
    SOFTCAP: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr, HAS_SINKL: tl.constexpr = False,
    STATE_SORTED: tl.constexpr = False,
):
    """Queries in natural order against their chunk's keys and the sinks that no round matched; finishes the
    softmax the rounds started and writes the output. ``STATE_SORTED``: the one round's state is cuDNN's
    (``cudnn_varlen``), rows in sorted order (QINV: each row's slot) in the input dtype, with a natural-log
    log-sum-exp, and undefined where the row's bucket holds no key (KSTART, KEND: the buckets' key slots)."""
    scale2, cap2, cap_in = _f32(scale2), _f32(cap2), _f32(cap_in)
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    hk = h // GROUP
    bhk = b * (H // GROUP) + hk
    i = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = i < N
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    d_ok = offs_d[None, :] < D_TRUE
    pos = i + OFF
    rows = (h % GROUP) * N + i  # the row within its kv head's sorted arrays
    q = tl.load(Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh + i.to(tl.int64)[:, None] * stride_qn
                + offs_d[None, :], mask=row_ok[:, None] & d_ok, other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    if STATE_SORTED:
        st_row = bhk.to(tl.int64) * ROWS + tl.load(QINV + bhk.to(tl.int64) * ROWS + rows, mask=row_ok, other=0)
        bucket = tl.load(QB + bhk.to(tl.int64) * ROWS + rows, mask=row_ok, other=0)
        filled = row_ok & (tl.load(KEND + bhk.to(tl.int64) * NB + bucket, mask=row_ok, other=0)
                           > tl.load(KSTART + bhk.to(tl.int64) * NB + bucket, mask=row_ok, other=0))
        acc, l_i, m_i = _load_state(O_ST, L_ST, st_row, offs_d, filled, HEAD_DIM)
        acc = acc.to(tl.float32)
        m_i = m_i * 1.4426950408889634  # natural log to log2
    elif R > 0:
        acc, l_i, m_i = _load_state(O_ST, L_ST, bh.to(tl.int64) * N + i, offs_d, row_ok, HEAD_DIM)
    else:
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    p_first = pid * BLOCK_M + OFF
    p_last = tl.minimum(pid * BLOCK_M + BLOCK_M, N) - 1 + OFF
    lo = (p_first // CHUNK) * CHUNK
    hi = tl.minimum((p_last // CHUNK + 1) * CHUNK, M)
    g_end = tl.minimum(G, M)
    if CAUSAL:
        hi = tl.minimum(hi, p_last + 1)
        g_end = tl.minimum(g_end, p_last + 1)
    Kb = K + b.to(tl.int64) * stride_kb + hk.to(tl.int64) * stride_kh
    Vb = V + b.to(tl.int64) * stride_vb + hk.to(tl.int64) * stride_vh
    KPb = KP + b.to(tl.int64) * stride_kpb
    MSKb = MSK + b.to(tl.int64) * stride_mb
    mrow = h.to(tl.int64) * stride_mh + i.to(tl.int64) * stride_mn
    chunk_of = pos // CHUNK

    # the chunks' keys, then the sinks outside them: [0, min(g_end, lo)) and [hi, g_end)
    n_chunk = tl.cdiv(tl.maximum(hi - lo, 0), BLOCK_N)
    n_below = tl.cdiv(tl.maximum(tl.minimum(g_end, lo), 0), BLOCK_N)
    n_above = tl.cdiv(tl.maximum(g_end - hi, 0), BLOCK_N)
    for t in range(n_chunk + n_below + n_above):
        if t < n_chunk:
            start = lo + t * BLOCK_N
            stop = hi
        elif t < n_chunk + n_below:
            start = (t - n_chunk) * BLOCK_N
            stop = tl.minimum(g_end, lo)
        else:
            start = hi + (t - n_chunk - n_below) * BLOCK_N
            stop = g_end
        cols = start + offs_n
        k_ok = cols < stop
        k = tl.load(Kb + cols.to(tl.int64)[:, None] * stride_kn + offs_d[None, :], mask=k_ok[:, None] & d_ok,
                    other=0.0)
        v = tl.load(Vb + cols.to(tl.int64)[:, None] * stride_vn + offs_d[None, :], mask=k_ok[:, None] & d_ok,
                    other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        ok = ((chunk_of[:, None] == (cols // CHUNK)[None, :]) | (cols[None, :] < G)) & k_ok[None, :] & row_ok[:, None]
        for r in range(R):  # pairs a round matched are that round's
            qb = tl.load(QB + (bhk.to(tl.int64) * R + r) * ROWS + rows, mask=row_ok, other=-1)
            kb = tl.load(KB + (bhk.to(tl.int64) * R + r) * M + cols, mask=k_ok, other=-2)
            ok = ok & (qb[:, None] != kb[None, :])
        if CAUSAL:
            ok = ok & (cols[None, :] <= pos[:, None])
        acc, l_i, m_i = _fold(acc, l_i, m_i, q, k, v, ok, k_ok, cols, mrow, KPb, stride_kpn, MSKb, stride_mm,
                              scale2, cap2, cap_in, True, HAS_KP, HAS_MASK, MASK_BOOL, SOFTCAP, PREC)

    if HAS_SINKL:  # the head's learned sink: one more denominator term, its value zero; a row with no key
        # (m_i = −inf) gets an infinite sum and outputs 0
        l_i = l_i + tl.math.exp2(tl.load(SINKL + h).to(tl.float32) * 1.4426950408889634 - m_i)
    has_any = l_i > 0.0
    out = tl.where(has_any[:, None], acc / tl.where(has_any, l_i, 1.0)[:, None], 0.0)
    tl.store(O + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh + i.to(tl.int64)[:, None] * stride_on
             + offs_d[None, :], out.to(O.dtype.element_ty), mask=row_ok[:, None] & d_ok)


@triton.jit
def _sort_keys_fwd(
    K, V, KS, VS, PERM, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn, HKV, R, M, GROUP, PER_HEAD,
    INV, HEAD_DIM: tl.constexpr, D_TRUE: tl.constexpr, BLOCK: tl.constexpr, HAS_V: tl.constexpr = True,
    HAS_INV: tl.constexpr = False,
):
    """Copy one (batch, kv head, round)'s M rows into sorted order: KS (and VS) are (B, Hkv, R, M, HEAD_DIM)
    contiguous, head dims past D_TRUE zero. Row r of a kv head is head hk·GROUP + r // PER_HEAD, position
    r % PER_HEAD: keys (GROUP 1, PER_HEAD M) or the GROUP query heads that share a kv head. HAS_INV: INV
    (B, Hkv, R, M) gets each row's slot, the inverse permutation."""
    seq = tl.program_id(1)  # (b, hk, r)
    b = seq // (HKV * R)
    hk = (seq // R) % HKV
    slots = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = slots < M
    offs_d = tl.arange(0, HEAD_DIM)
    src_ok = ok[:, None] & (offs_d[None, :] < D_TRUE)
    rows = tl.load(PERM + seq.to(tl.int64) * M + slots, mask=ok, other=0)
    if HAS_INV:
        tl.store(INV + seq.to(tl.int64) * M + rows, slots, mask=ok)
    heads = (hk * GROUP + rows // PER_HEAD).to(tl.int64)
    rows = (rows % PER_HEAD).to(tl.int64)
    dst = (seq.to(tl.int64) * M + slots)[:, None] * HEAD_DIM + offs_d[None, :]
    k = tl.load(K + b.to(tl.int64) * stride_kb + heads[:, None] * stride_kh + rows[:, None] * stride_kn
                + offs_d[None, :], mask=src_ok, other=0.0)
    tl.store(KS + dst, k, mask=ok[:, None])
    if HAS_V:
        v = tl.load(V + b.to(tl.int64) * stride_vb + heads[:, None] * stride_vh + rows[:, None] * stride_vn
                    + offs_d[None, :], mask=src_ok, other=0.0)
        tl.store(VS + dst, v, mask=ok[:, None])


def sort_keys(k: Tensor, v: Tensor, k_perm: Tensor, head_dim: int) -> tuple[Tensor, Tensor]:
    """k and v rows in each round's sorted order, (B, Hkv, R, M, head_dim) contiguous.

    One Triton copy, at the speed of a plain copy: on the H200 (bf16, H=16, M=65536, D=128, lsh's own
    permutation; ``benchmarks/kernels_sorted.py --sweep``) it took 0.265 ms for k and v, a plain clone of both
    0.260, torch.gather with the index expanded over D 0.870, index_select on rows 1.310, advanced indexing 1.851.
    """
    return _sorted_rows(k, v, k_perm, head_dim, 1)[:2]


def sort_queries(q: Tensor, q_perm: Tensor, head_dim: int) -> tuple[Tensor, Tensor]:
    """(q's rows h·N + i of each kv head, its query heads together, in round 0's sorted order, (B, Hkv, rows,
    head_dim) contiguous; each row's slot there, (B, Hkv, 1, rows) int32): cuDNN's packed queries for the
    bucket part, and where the local kernel finds a row's state."""
    B, Hkv, _, rows = q_perm.shape
    perm = q_perm[:, :, :1].contiguous()
    qs, _, inv = _sorted_rows(q, None, perm, head_dim, q.shape[1] // Hkv, inverse=True)
    return qs.view(B, Hkv, rows, head_dim), inv


def _sorted_rows(x: Tensor, y: Tensor | None, perm: Tensor, head_dim: int, group: int, inverse: bool = False):
    """(x's rows in ``perm``'s order, y's (x's where y is None), the inverse permutation where ``inverse``, else
    None): ``_sort_keys_fwd``."""
    B, Hkv, R, M = perm.shape
    xs = torch.empty(B, Hkv, R, M, head_dim, dtype=x.dtype, device=x.device)
    ys = torch.empty_like(xs) if y is not None else xs
    inv = torch.empty_like(perm) if inverse else None
    if xs.numel():
        block = 16 if _interpreting() else 64
        y_in = x if y is None else y
        launch(_sort_keys_fwd)[(triton.cdiv(M, block), B * Hkv * R)](
            x, y_in, xs, ys, perm, x.stride(0), x.stride(1), x.stride(2), y_in.stride(0), y_in.stride(1),
            y_in.stride(2), Hkv, R, M, group, M // group, perm if inv is None else inv,  # INV: unread without HAS_INV
            HEAD_DIM=head_dim, D_TRUE=x.shape[-1], BLOCK=block,
            HAS_V=y is not None, HAS_INV=inverse, num_warps=4,
        )
    return xs, ys, inv


# --- launcher -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BucketConfig:
    """Tiles of the two attention kernels; ``presorted`` copies each round's keys into sorted order first
    (contiguous key loads, O(M·D·R) more memory) instead of gathering them in the kernel."""

    block_m: int = 64
    block_n: int = 64
    num_warps: int = 4
    num_stages: int = 3
    local_block_m: int = 64
    local_block_n: int = 64
    local_warps: int = 4
    local_stages: int = 2
    presorted: bool = False
    use_tma: bool = False  # with presorted: whole key blocks through TMA descriptors
    # one round, nothing on top (causality, key padding, mask, softcap): the buckets through cuDNN's
    # variable-length attention where it serves them (``cudnn_varlen``), the local kernel finishing as before
    cudnn: bool = True


# The buckets take cuDNN (``BucketConfig.cudnn``) from this many expected bucket pairs a call, B·Hkv·rows·M / nb.
# H200 (bf16, H=16, D=128, 32 buckets; one process alternating the two paths, BENCHMARKS.md issue 9): at
# N = 65536 (2.1e9 pairs) lsh took 3.33–3.43 ms through cuDNN against 4.08–4.16 through the bucket kernel, routed
# 5.32–5.40 against 6.36–6.39; at 16384 (1.3e8) the call is the host's, and cuDNN's path, about 0.3 ms more host
# time (the query copy, the entry table, the frontend's execute), read 0.93–1.02 against 0.77–0.92.
VARLEN_FROM_PAIRS = 1 << 30


def default_config(head_dim: int, dtype: torch.dtype, device: torch.device) -> BucketConfig:
    """A fixed table, from H200 sweeps (bf16, D=128, lsh b=32, N=65536, the bucket kernel's device time):

    - 64×64 tiles, 4 warps, 3 stages: 4.06 ms gathering keys by index; 128×64 5.35 ms (total); 8 warps and 2
      stages 9.37 ms;
    - keys pre-sorted (``sort_keys``, one copy of k and v per round) and loaded through TMA: 2.86 ms, or 3.29 ms
      by pointer. The copy costs more memory, 2·R·M·D elements, still O(N·D) for a fixed number of rounds.

    Head dims past 128 (DeepSeek MLA's 192, padded to 256), whole op, N = 65536: 128×64 tiles on 8 warps, 2
    stages, pre-sorted keys through TMA ran lsh in 9.10 ms and routed in 13.61, against 10.94 and 18.89 for the
    64×32 tiles gathering keys by index; 64×32 pre-sorted 9.04 / 14.77, 64×64 12.4 / 19.4 (BENCHMARKS, issue 9).
    """
    if device.type != "cuda":  # interpreter: small tiles keep the Python loops short
        return BucketConfig(block_m=16, block_n=16, num_warps=4, num_stages=1, local_block_m=16, local_block_n=16)
    if dtype == torch.float32:
        return BucketConfig(block_m=64, block_n=32, num_warps=4, num_stages=2, local_block_m=32, local_block_n=32)
    if head_dim > 128:
        return BucketConfig(block_m=128, block_n=64, num_warps=8, num_stages=2, local_block_m=64, local_block_n=64,
                            local_warps=8, presorted=True, use_tma=True)
    # The local kernel folds a query block's chunk, one or two key blocks: a software pipeline has little to
    # overlap there, and unpipelined tiles leave shared memory for more programs a multiprocessor. H200
    # (`benchmarks/kernels_sorted.py --local-stages --n 65536`; 2 / 1 stages, twice each in one process, outputs
    # bit-equal): its device time 0.455-0.456 / 0.404-0.409 ms in lsh, 0.500-0.504 / 0.445-0.446 in lsh causal,
    # 0.452-0.460 / 0.410-0.413 in routed, 0.509-0.595 / 0.454-0.455 in routed causal
    return BucketConfig(presorted=True, use_tma=True, local_stages=1)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _check(q: Tensor, k: Tensor, v: Tensor, q_buckets: Tensor, k_buckets: Tensor, mask, key_padding,
           sink_logits) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4 or k.shape != v.shape:
        raise ValueError(f"bucket attention expects q (B, H, N, D) and k, v (B, Hkv, M, D); got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    B, H, N, D = q.shape
    Hkv, M = k.shape[1], k.shape[2]
    if k.shape[0] != B or k.shape[3] != D or Hkv == 0 or H % Hkv:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} disagree on batch, head_dim or GQA groups")
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"q, k, v must share one of float16/bfloat16/float32; got {q.dtype}, {k.dtype}, {v.dtype}")
    if D > 256:
        raise ValueError(f"head_dim must be <= 256; got {D}")
    check_self_attention("bucket", N, M)
    R = q_buckets.shape[2]
    if tuple(q_buckets.shape) != (B, H, R, N) or tuple(k_buckets.shape) != (B, Hkv, R, M):
        raise ValueError(f"buckets must be (B, H, R, N) and (B, Hkv, R, M); got {tuple(q_buckets.shape)} and "
                         f"{tuple(k_buckets.shape)}")
    if key_padding is not None and (key_padding.dim() != 2 or key_padding.shape[0] not in (1, B)
                                    or key_padding.shape[1] not in (1, M)):
        raise ValueError(f"key_padding must be (B | 1, M); got {tuple(key_padding.shape)}")
    if mask is not None and mask.dim() != 4:
        raise ValueError(f"the mask must be 4-D, broadcastable to (B, H, N, M); got {tuple(mask.shape)}")
    check_sink_logits(sink_logits, H)


def bucket_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, key_padding: Tensor | None,
                     q_buckets: Tensor, k_buckets: Tensor, *, n_buckets: int, chunk: int, sinks: int, scale: float,
                     causal: bool, softcap: float = 0.0, config: BucketConfig | None = None,
                     sink_logits: Tensor | None = None) -> Tensor:
    """Attention over (shared bucket in some round) ∪ local chunk ∪ sinks, with the op contract of ``kernels.spec``.

    ``q_buckets`` (B, H, R, N) and ``k_buckets`` (B, Hkv, R, M) hold bucket ids in [0, n_buckets).
    Same arguments and result as ``kernels.buckets.bucket_attention``, the torch form.
    """
    _check(q, k, v, q_buckets, k_buckets, mask, key_padding, sink_logits)
    B, H, N, D = q.shape
    Hkv, M = k.shape[1], k.shape[2]
    R = q_buckets.shape[2]
    out = torch.empty(B, H, N, D, dtype=q.dtype, device=q.device)
    if out.numel() == 0:
        return out
    cfg = config or default_config(D, q.dtype, q.device)
    rep, rows = H // Hkv, (H // Hkv) * N
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    head_dim = max(16, triton.next_power_of_2(D))
    nb = max(int(n_buckets), 1)

    # Rows h·N + i: the query heads of one kv head are sorted together (they read the same keys).
    qb = q_buckets.to(torch.int32).reshape(B, Hkv, rep, R, N).transpose(2, 3).reshape(B, Hkv, R, rows).contiguous()
    kb = k_buckets.to(torch.int32).contiguous()
    q_sorted, q_perm, q_start, q_end = sort_buckets(qb, nb)
    k_sorted, k_perm, k_start, k_end = sort_buckets(kb, nb)

    kp, kp_strides = _key_padding_arg(key_padding, q, B, M)
    msk, m_strides = _mask_arg(mask, q, B, H, N, M)
    flags = dict(CAUSAL=bool(causal), HAS_KP=key_padding is not None, HAS_MASK=mask is not None,
                 MASK_BOOL=mask is not None and mask.dtype == torch.bool, SOFTCAP=bool(softcap))
    # Triton's interpreter multiplies bf16 tiles as raw integers (3.9); it gets fp32 tiles instead.
    upcast = q.dtype == torch.bfloat16 and _interpreting()
    prec = "ieee" if q.dtype == torch.float32 or upcast else "tf32"
    scale2 = float(scale) * _LOG2E
    cap2 = float(softcap) * _LOG2E if softcap else 0.0
    cap_in = 2.0 * float(scale) / float(softcap) * _LOG2E if softcap else 0.0
    off = M - N

    def launch_local(o_state, l_state, q_inv, varlen):
        launch(_local_fwd)[(triton.cdiv(N, cfg.local_block_m), B * H)](
            q, k, v, out, kp, msk, o_state, l_state, qb, kb, _sink_pointer(sink_logits, q), q_inv, k_start, k_end,
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2),
            *kp_strides, *m_strides,
            H, N, M, rep, rows, R, chunk, min(sinks, M), off, nb, scale2, cap2, cap_in,
            HEAD_DIM=head_dim, D_TRUE=D, BLOCK_M=cfg.local_block_m, BLOCK_N=cfg.local_block_n, PREC=prec,
            UPCAST=upcast, HAS_SINKL=sink_logits is not None, STATE_SORTED=varlen, num_warps=cfg.local_warps,
            num_stages=1 if _interpreting() else cfg.local_stages, **flags,
        )

    varlen = (R == 1 and cfg.cudnn and not (causal or softcap) and key_padding is None and mask is None
              and B * H * N * M >= VARLEN_FROM_PAIRS * nb
              and cudnn_varlen.eligible(q, B * Hkv * rows, B * Hkv * M, head_dim, D, B * Hkv * nb, rows, M, scale))
    if varlen:  # the one round's buckets as cuDNN's variable-length attention, every pair of a bucket allowed
        k_in, v_in = sort_keys(k, v, k_perm, head_dim)
        q_in, q_inv = sort_queries(q, q_perm, head_dim)
        o_state, l_state = cudnn_varlen.lse_attention(
            *(t.view(-1, head_dim) for t in (q_in, k_in, v_in)),
            bucket_entries(q_start, q_end, k_start, k_end, rows, M, head_dim), rows, M, D, scale)
        launch_local(o_state, l_state, q_inv, varlen=True)
        return out
    o_state = torch.empty(B, H, N, head_dim, dtype=torch.float32, device=q.device) if R else q
    l_state = torch.empty(B, H, N, dtype=torch.float32, device=q.device) if R else q
    if R and cfg.presorted:
        k_in, v_in = sort_keys(k, v, k_perm, head_dim)
        k_strides = (0, 0, head_dim)
    else:
        k_in, v_in = k, v
        k_strides = (k.stride(0), k.stride(1), k.stride(2))
    v_strides = k_strides if (R and cfg.presorted) else (v.stride(0), v.stride(1), v.stride(2))
    # TMA coordinates are int32: the pre-sorted rows, B·Hkv·R·M of them, must fit
    # (the pre-sorted copies are head_dim wide, their padding zero: any D loads whole rows)
    use_tma = bool(R and cfg.presorted and cfg.use_tma and not _interpreting()
                   and B * Hkv * R * M < 2**31 and tma_ok(k_in) and tma_ok(v_in))
    if use_tma:
        descs = tuple(tma_descriptor(t.view(-1, head_dim), [cfg.block_n, head_dim])
                      for t in (k_in, v_in))
    else:
        descs = (None, None)
    tiles = triton.cdiv(rows, cfg.block_m)
    k_full, k_cut = causal_cuts(q_sorted, q_perm, k_perm, k_start, k_end, cfg.block_m, N, M) if causal and R \
        else (k_start, k_start)
    bucket_kernel = launch(_bucket_fwd)
    for r in range(R):
        bucket_kernel[(tiles, B * Hkv)](
            q, k_in, v_in, kp, msk, o_state, l_state, q_perm, q_sorted, k_perm, k_sorted, k_start, k_end, qb, kb,
            *descs,
            q.stride(0), q.stride(1), q.stride(2), *k_strides, *v_strides, *kp_strides, *m_strides,
            Hkv, N, M, rep, rows, R, r, nb, off, scale2, cap2, cap_in, k_cut, k_full, tiles,
            HEAD_DIM=head_dim, D_TRUE=D, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, PREC=prec, UPCAST=upcast,
            PRESORTED=bool(cfg.presorted), USE_TMA=use_tma, num_warps=cfg.num_warps, num_stages=cfg.num_stages, **flags,
        )
    launch_local(o_state, l_state, q, varlen=False)
    return out


@triton.jit
def _entries_fwd(QS, QE, KS, KE, TABLE, E, NB, ROWS, M, WIDTH, NB_P2: tl.constexpr):
    """One (batch, kv head) g's buckets into ``cudnn_varlen``'s entry table (``bucket_entries``)."""
    g = tl.program_id(0)
    c = tl.arange(0, NB_P2)
    ok = c < NB
    at = g * NB + c
    qs = tl.load(QS + at, mask=ok, other=0)
    ks = tl.load(KS + at, mask=ok, other=0)
    q_row = g * ROWS + qs
    tl.store(TABLE + at, q_row, mask=ok)
    tl.store(TABLE + (E + 1) + at, q_row * WIDTH, mask=ok)
    tl.store(TABLE + 2 * (E + 1) + at, tl.load(QE + at, mask=ok, other=0) - qs, mask=ok)
    tl.store(TABLE + 3 * (E + 1) + at, (g * M + ks) * WIDTH, mask=ok)
    tl.store(TABLE + 4 * (E + 1) + at, tl.load(KE + at, mask=ok, other=0) - ks, mask=ok)
    if g == 0:  # the closing column E: past every query and key row, no entry
        zero = tl.zeros([1], tl.int32)
        end = zero + E
        tl.store(TABLE + end, zero + (E // NB) * ROWS)
        tl.store(TABLE + (E + 1) + end, zero + (E // NB) * ROWS * WIDTH)
        tl.store(TABLE + 2 * (E + 1) + end, zero)
        tl.store(TABLE + 3 * (E + 1) + end, zero + (E // NB) * M * WIDTH)
        tl.store(TABLE + 4 * (E + 1) + end, zero)


def bucket_entries(q_start: Tensor, q_end: Tensor, k_start: Tensor, k_end: Tensor, rows: int, m: int,
                   width: int) -> Tensor:
    """``cudnn_varlen``'s entry table for round 0, from the (B, Hkv, R, nb) slots ``sort_buckets`` gives, in one
    launch. Bucket c of (batch, kv head) g is entry g·nb + c: its queries the sorted rows g·rows + [q_start,
    q_end) of ``sort_queries``, its keys the rows g·m + [k_start, k_end) of ``sort_keys``, rows ``width`` wide."""
    B, Hkv, _, nb = q_start.shape
    e = B * Hkv * nb
    table = torch.empty(len(cudnn_varlen.ENTRY_FIELDS), e + 1, dtype=torch.int32, device=q_start.device)
    first = tuple(t[:, :, :1].contiguous() for t in (q_start, q_end, k_start, k_end))  # round 0
    launch(_entries_fwd)[(B * Hkv,)](*first, table, e, nb, rows, m, width,
                                    NB_P2=max(16, triton.next_power_of_2(nb)), num_warps=1)
    return table


@triton.jit
def _slots_up_to(KPERM, lo, hi, target, STEPS):
    """Per lane: lo + how many of the key positions KPERM[lo:hi] (ascending) are <= target (a binary search)."""
    for _ in range(STEPS):
        live = lo < hi
        mid = (lo + hi) // 2
        right = live & (tl.load(KPERM + mid, mask=live, other=0) <= target)
        hi = tl.where(live & ~right, mid, hi)
        lo = tl.where(right, mid + 1, lo)
    return lo


@triton.jit
def _causal_cuts_fwd(QPERM, QBS, KPERM, KSTART, KEND, FULL, ENDS, N, M, ROWS, NB, TILES, OFF,
                     STEPS, BLOCK_M: tl.constexpr, BLOCK_T: tl.constexpr):
    """FULL, ENDS (SEQ, TILES): for BLOCK_T blocks of BLOCK_M sorted query rows (``causal_cuts``)."""
    seq = tl.program_id(1).to(tl.int64)
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    t_ok = t < TILES
    slots = t[:, None] * BLOCK_M + tl.arange(0, BLOCK_M)[None, :]
    in_rows = t_ok[:, None] & (slots < ROWS)
    pos = tl.load(QPERM + seq * ROWS + slots, mask=in_rows, other=0) % N + OFF  # rows h·N + i: position i + M − N
    first_pos = tl.min(tl.where(in_rows, pos, M), 1)
    last_pos = tl.max(tl.where(in_rows, pos, -1), 1)
    s0 = tl.minimum(t * BLOCK_M, ROWS - 1)
    b_first = tl.load(QBS + seq * ROWS + s0, mask=t_ok, other=0)
    b_last = tl.load(QBS + seq * ROWS + tl.minimum(s0 + BLOCK_M, ROWS) - 1, mask=t_ok, other=0)
    kp = KPERM + seq * M
    full = _slots_up_to(kp, tl.load(KSTART + seq * NB + b_first, mask=t_ok, other=0),
                        tl.load(KEND + seq * NB + b_first, mask=t_ok, other=0), first_pos, STEPS)
    ends = _slots_up_to(kp, tl.load(KSTART + seq * NB + b_last, mask=t_ok, other=0),
                        tl.load(KEND + seq * NB + b_last, mask=t_ok, other=0), last_pos, STEPS)
    tl.store(FULL + seq * TILES + t, full, mask=t_ok)
    tl.store(ENDS + seq * TILES + t, ends, mask=t_ok)


def causal_cuts(q_sorted: Tensor, q_perm: Tensor, k_perm: Tensor, k_start: Tensor, k_end: Tensor, block_m: int,
                n: int, m: int) -> tuple[Tensor, Tensor]:
    """(full, ends), each (B, Hkv, R, tiles) int32, for each block of ``block_m`` sorted query rows: ``ends``, the
    key slot where its last bucket's keys pass the block's last query position; ``full``, where its first
    bucket's keys pass the block's first (earliest) query position.

    The sort is stable, so a bucket's keys sit in position order: a binary search in the bucket's run of
    slots finds each cut (one launch). Every key of the last bucket from ``ends`` on is after every query of
    the block, so the kernel stops there; without it a causal block visits as many keys as a non-causal one.
    Every key of the first bucket before ``full`` is at or before every query of the block, so a
    single-bucket block runs those keys with no mask.
    """
    lead, rows = q_sorted.shape[:-1], q_sorted.shape[-1]
    nb = k_start.shape[-1]
    tiles = triton.cdiv(rows, block_m)
    n_seq = q_sorted.numel() // rows
    full = torch.empty(*lead, tiles, dtype=torch.int32, device=q_sorted.device)
    ends = torch.empty_like(full)
    block_t = max(1, 1024 // block_m)
    launch(_causal_cuts_fwd)[(triton.cdiv(tiles, block_t), n_seq)](
        q_perm, q_sorted, k_perm, k_start, k_end, full, ends, n, m, rows, nb, tiles, m - n, int(m).bit_length(),
        BLOCK_M=block_m, BLOCK_T=block_t, num_warps=4,
    )
    return full, ends


def _key_padding_arg(key_padding: Tensor | None, like: Tensor, B: int, M: int):
    """(tensor, (batch stride, key stride)): additive float (B | 1, M | 1), bool as 0 / −inf; stride 0 broadcasts."""
    if key_padding is None:
        return like, (0, 0)
    kp = key_padding
    if kp.dtype == torch.bool:
        kp = torch.zeros(kp.shape, device=kp.device).masked_fill(~kp, float("-inf"))
    return kp, (kp.stride(0) if kp.shape[0] == B and B > 1 else 0, kp.stride(1) if kp.shape[1] == M and M > 1 else 0)


def _mask_arg(mask: Tensor | None, like: Tensor, B: int, H: int, N: int, M: int):
    """(tensor, strides (b, h, n, m)) of a 4-D mask broadcast to (B, H, N, M) without copying; bool as uint8."""
    if mask is None:
        return like, (0, 0, 0, 0)
    msk = mask.view(torch.uint8) if mask.dtype == torch.bool else mask
    return msk, tuple(st if size == full and full > 1 else 0
                      for st, size, full in zip(msk.stride(), msk.shape, (B, H, N, M)))
