"""hierarchical's ONNX body: ai.attnopt::HierarchicalAttention, the same blocking as ``kernels.hierarchical.op``.

All query blocks at once (no Loop): each reads its fine range and the sinks with
one Gather and its C pooled entries from ``pooling_onnx``, so every tensor is
O(N·(3B + G + C)·D) at most, never N×M. The coarse columns are those of
``op.coarse_columns``, computed with tensor ops because a function cannot turn
its attributes into new attributes.
"""

from __future__ import annotations

import onnx
import onnxscript
from onnxscript import opset18 as op

from ..onnx_functions import attnopt_opset
from ..softcap_onnx import Softcap
from ..pooling_onnx import BlockPrefix, PoolRanges, PoolWindows
from ..sink_onnx import SoftmaxWithSink

_FLOAT = onnx.TensorProto.FLOAT
_NEG_INF = float("-inf")
_KT_PERM = [0, 1, 2, 3, 5, 4]  # kᵀ of the (B, Hkv, 1, nqb, L, D) key blocks


@onnxscript.script(attnopt_opset, default_opset=op)
def HierarchicalAttention(Q, K, V, Mask, KeyPadding, SinkLogits, block: int, levels: int, sinks: int, scale: float,
                          causal: int, softcap: float):
    """Fine window (3B keys, 2B causal) + G sinks + pooled groups, one softmax; rows with no entry output 0."""
    zero = op.Constant(value_ints=[0])
    one = op.Constant(value_ints=[1])
    two = op.Constant(value_ints=[2])
    is_causal = op.Constant(value_int=causal)
    n_levels = op.Constant(value_int=levels)
    causal_b = op.Cast(is_causal, to=onnx.TensorProto.BOOL)
    b = op.Shape(Q, start=0, end=1)
    h = op.Shape(Q, start=1, end=2)
    n = op.Shape(Q, start=2, end=3)
    d = op.Shape(Q, start=3, end=4)
    hkv = op.Shape(K, start=1, end=2)
    m = op.Shape(K, start=2, end=3)
    rep = op.Div(h, hkv)
    off = op.Sub(m, n)  # query i sits at position i + off
    bs = op.Min(op.Reshape(op.Constant(value_int=block), one), m)  # a block holding every key: same at any size
    key_blocks = op.Div(op.Sub(op.Add(m, bs), one), bs)

    # Query blocks qb (absolute block ids), positions (nqb, B).
    first = op.Div(off, bs)
    nqb = op.Sub(op.Add(op.Div(op.Sub(m, one), bs), one), first)
    front = op.Sub(off, op.Mul(first, bs))
    qb = op.Range(op.Squeeze(first), op.Squeeze(op.Add(first, nqb)), 1)
    pos = op.Add(op.Unsqueeze(op.Mul(qb, bs), one), op.Unsqueeze(op.Range(0, op.Squeeze(bs), 1), zero))
    pos3 = op.Unsqueeze(pos, two)  # (nqb, B, 1)

    # Exact columns: the fine range [(qb − 1)·B, +span) and the G sinks.
    span = op.Mul(bs, op.Sub(3, is_causal))
    lo = op.Unsqueeze(op.Mul(op.Sub(qb, 1), bs), one)  # (nqb, 1)
    fine = op.Add(lo, op.Unsqueeze(op.Range(0, op.Squeeze(span), 1), zero))  # (nqb, span)
    fine_ok = op.Unsqueeze(op.And(op.GreaterOrEqual(fine, zero), op.Less(fine, m)), one)
    fine_ok = op.And(fine_ok, op.Or(op.LessOrEqual(op.Unsqueeze(fine, one), pos3), op.Not(causal_b)))
    n_sinks = op.Min(op.Reshape(op.Constant(value_int=sinks), one), m)
    j = op.Range(0, op.Squeeze(n_sinks), 1)
    in_fine = op.And(op.GreaterOrEqual(j, lo), op.Less(j, op.Add(lo, span)))  # (nqb, G)
    sink_ok = op.And(op.Unsqueeze(op.Not(in_fine), one), op.Or(op.LessOrEqual(j, pos3), op.Not(causal_b)))
    exact_ok = op.Concat(op.Expand(fine_ok, op.Concat(nqb, bs, span, axis=0)), sink_ok, axis=2)  # (nqb, B, L)
    cols = op.Concat(op.Min(op.Max(fine, zero), op.Sub(m, one)),
                     op.Expand(op.Unsqueeze(j, zero), op.Concat(nqb, n_sinks, axis=0)), axis=1)  # (nqb, L)

    # Pooled columns (op.coarse_columns). Levels below the last: two groups of g = 2^l on each side.
    lev_g = op.Reshape(op.Pow(2, op.Range(0, op.Sub(n_levels, 1), 1)), op.Constant(value_ints=[1, -1, 1, 1]))
    side = op.Reshape(op.Slice(op.Constant(value_ints=[0, 1]), zero, op.Sub(two, is_causal)),
                      op.Constant(value_ints=[1, 1, -1, 1]))  # 0 = left, 1 = right (causal: left only)
    t = op.Constant(value_ints=[0, 1])
    qb4 = op.Reshape(qb, op.Constant(value_ints=[-1, 1, 1, 1]))
    near_start = op.Add(op.Mul(side, op.Mul(2, lev_g)), op.Mul(op.Sub(1, side), op.Sub(1, op.Mul(4, lev_g))))
    mid_start = op.Add(op.Add(qb4, near_start), op.Mul(t, lev_g))  # (nqb, L − 1, sides, 2)
    flat = op.Concat(nqb, op.Constant(value_ints=[-1]), axis=0)
    # Widths (PoolWindows): [0, 1, 2, .., g]; level l's groups are 2^l blocks wide, index l + 1.
    widths = op.Concat(zero, op.Pow(2, op.Range(0, n_levels, 1)), axis=0)
    mid_w = op.Reshape(op.Expand(op.Reshape(op.Range(1, n_levels, 1), op.Constant(value_ints=[1, -1, 1, 1])),
                                 op.Shape(mid_start)), flat)
    mid_start = op.Reshape(mid_start, flat)
    # The last level: groups of g blocks from distance 2g outwards, left ones first.
    g = op.Pow(2, op.Sub(n_levels, 1))
    near = op.Mul(2, g)
    n_left = op.Max(op.Div(op.Add(op.Sub(qb, near), g), g), 0)  # a negative count truncates to <= 0: clamped
    n_right = op.Mul(op.Max(op.Div(op.Sub(op.Add(op.Sub(op.Sub(key_blocks, qb), near), g), 1), g), 0),
                     op.Sub(1, is_causal))
    # The widest row's column count, from scalars (onnx_functions: sizes stay on the host): n_left grows and
    # n_right shrinks with qb, so neither passes its value at the last / first block, and where both count,
    # their sum is at most ⌊(left + right numerators)/g⌋. At most one column over the true maximum; an
    # unused column has width 0 and weighs nothing.
    left_most = op.Max(op.Div(op.Add(op.Sub(op.Sub(op.Add(first, nqb), one), near), g), g), 0)
    right_most = op.Mul(op.Max(op.Div(op.Sub(op.Add(op.Sub(op.Sub(key_blocks, first), near), g), 1), g), 0),
                        op.Sub(1, is_causal))
    both = op.Mul(op.Max(op.Div(op.Sub(op.Add(op.Sub(key_blocks, op.Mul(2, near)), op.Mul(2, g)), 1), g), 0),
                  op.Sub(1, is_causal))
    widest = op.Min(op.Add(left_most, right_most), op.Max(op.Max(both, left_most), right_most))
    c = op.Unsqueeze(op.Range(0, op.Squeeze(op.Max(widest, 1)), 1), zero)
    nl = op.Unsqueeze(n_left, one)
    qb2 = op.Unsqueeze(qb, one)
    left = op.Add(op.Sub(op.Sub(qb2, near), op.Mul(op.Add(c, 1), g)), 1)
    right = op.Add(op.Add(qb2, near), op.Mul(op.Sub(c, nl), g))
    top = op.Where(op.Less(c, nl), left, right)
    used = op.Less(c, op.Add(nl, op.Unsqueeze(n_right, one)))
    start = op.Concat(mid_start, op.Where(used, top, 0), axis=1)  # (nqb, C)
    width = op.Concat(mid_w, op.Where(used, n_levels, 0), axis=1)  # unused: width 0, an empty range
    prefix_k, prefix_v, prefix_mass, shift = BlockPrefix(K, V, KeyPadding, op.Concat(bs, n_sinks, axis=0))
    k_bar, v_bar, log_n = PoolWindows(prefix_k, prefix_v, prefix_mass, shift, start, width, widths)

    # Scores against [exact | pooled] keys, in one softmax.
    q = op.Mul(op.Cast(Q, to=_FLOAT), op.Constant(value_float=scale))
    pads = op.Concat(op.Constant(value_ints=[0, 0]), front, zero, op.Constant(value_ints=[0, 0]),
                     op.Sub(op.Mul(nqb, bs), op.Add(front, n)), zero, axis=0)
    qp = op.Reshape(op.Pad(q, pads), op.Concat(b, hkv, rep, nqb, bs, d, axis=0))
    keys = op.Unsqueeze(op.Concat(op.Gather(op.Cast(K, to=_FLOAT), cols, axis=2), k_bar, axis=3), two)
    values = op.Unsqueeze(op.Concat(op.Gather(op.Cast(V, to=_FLOAT), cols, axis=2), v_bar, axis=3), two)
    raw = op.MatMul(qp, op.Transpose(keys, perm=_KT_PERM))  # (B, Hkv, rep, nqb, B, L + C)
    cap = op.Constant(value_float=softcap)
    raw = Softcap(raw, cap)
    last = op.Constant(value_ints=[-1])

    # Key padding (Bk, Mk) and the dense remainder (Bm, Hm, Nm, Mm) at the exact columns only;
    # size-1 dims broadcast (the Min clamps send every index to 0 there).
    kp_cols = op.Min(cols, op.Sub(op.Shape(KeyPadding, start=1, end=2), one))
    kp = op.Cast(op.Gather(KeyPadding, kp_cols, axis=1), to=_FLOAT)  # (Bk, nqb, L)
    kp = op.Unsqueeze(kp, op.Constant(value_ints=[1, 2, 4]))
    m_rows = op.Shape(Mask, start=2, end=3)
    m_cols = op.Shape(Mask, start=3, end=4)
    rows = op.Min(op.Min(op.Max(op.Sub(pos, off), zero), op.Sub(n, one)), op.Sub(m_rows, one))
    at = op.Add(op.Unsqueeze(op.Mul(rows, m_cols), two), op.Unsqueeze(op.Min(cols, op.Sub(m_cols, one)), one))
    bm = op.Shape(Mask, start=0, end=1)
    hm = op.Shape(Mask, start=1, end=2)
    blocks = op.Gather(op.Reshape(Mask, op.Concat(bm, hm, last, axis=0)), at, axis=2)  # (Bm, Hm, nqb, B, L)
    hm_kv = op.Min(hm, hkv)  # the mask's heads are 1 or H: split them like the scores' (Hkv, rep)
    blocks = op.Reshape(op.Cast(blocks, to=_FLOAT),
                        op.Concat(bm, hm_kv, op.Div(hm, hm_kv), op.Shape(blocks, start=2, end=5), axis=0))
    # Every additive term, [exact | pooled], as one tensor at the masks' size (no batch or head axis
    # unless a mask has one), so the (B, H, N, L + C) scores see a single Add: no slices, no concat.
    exact = op.Where(exact_ok, op.Add(kp, blocks), _NEG_INF)  # (Bx, Hm, ·, nqb, B, L)
    pooled = op.Unsqueeze(log_n, op.Constant(value_ints=[1, 2, 4]))  # (Bw, 1, 1, nqb, 1, C)
    lead = op.Max(op.Shape(exact, start=0, end=5), op.Shape(pooled, start=0, end=5))  # their broadcast
    bias = op.Concat(op.Expand(exact, op.Concat(lead, op.Shape(exact, start=5, end=6), axis=0)),
                     op.Expand(pooled, op.Concat(lead, op.Shape(pooled, start=5, end=6), axis=0)), axis=-1)
    probs = SoftmaxWithSink(op.Add(raw, bias), SinkLogits)
    out = op.MatMul(probs, values)
    # A row with no allowed key softmaxes to NaN: zero it on the (rows, D) output, not on the
    # (rows, keys) probabilities (a Where over every score).
    out = op.Where(op.IsNaN(out), 0.0, out)
    out = op.Reshape(out, op.Concat(b, h, op.Mul(nqb, bs), d, axis=0))
    return op.CastLike(op.Slice(out, front, op.Add(front, n), two), Q)


BODY = HierarchicalAttention
CALLS = (BlockPrefix, PoolRanges, PoolWindows, SoftmaxWithSink)
