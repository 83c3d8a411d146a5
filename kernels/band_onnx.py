"""The band machinery, ONNX: ai.attnopt::BandAttention, called by the bodies of band-shaped variants.

Same math and blocking as ``kernels.band`` (read that first). The band
(unit, before, after, sinks, block) comes in as an int64 tensor and
(scale, softcap, causal) as a float tensor, because an ONNX function can pass
its own attributes on to a callee but cannot compute new ones: a variant's
body turns its parameters into a band with ordinary ops. Each query block
reads its key range and the sinks with one Gather, so the cost is O(N·(L + G)·D), never N×M.
"""

from __future__ import annotations

import onnx
import onnxscript
from onnxscript import opset18 as op

from .onnx_functions import attnopt_opset
from .sink_onnx import SoftmaxWithSink
from .softcap_onnx import Softcap

_FLOAT = onnx.TensorProto.FLOAT
_INT64 = onnx.TensorProto.INT64
_NEG_INF = float("-inf")
_KT_PERM = [0, 1, 2, 3, 5, 4]  # kᵀ of the (B, Hkv, 1, nblk, L, D) key blocks


@onnxscript.script(attnopt_opset, default_opset=op)
def BandAttention(Q, K, V, Mask, KeyPadding, SinkLogits, Band, Scalars):
    """Band = [unit, before, after, sinks, block] (int64); Scalars = [scale, softcap, causal] (float).

    SinkLogits is the op contract's: (H,), or empty (0,) for none (``sink_onnx``).
    """
    zero = op.Constant(value_ints=[0])
    one = op.Constant(value_ints=[1])
    two = op.Constant(value_ints=[2])
    unit = op.Slice(Band, zero, one)
    before = op.Slice(Band, one, two)
    after = op.Slice(Band, two, op.Constant(value_ints=[3]))
    sinks = op.Slice(Band, op.Constant(value_ints=[3]), op.Constant(value_ints=[4]))
    block = op.Slice(Band, op.Constant(value_ints=[4]), op.Constant(value_ints=[5]))
    scale = op.Slice(Scalars, zero, one)
    cap = op.Slice(Scalars, one, two)
    causal = op.Cast(op.Slice(Scalars, two, op.Constant(value_ints=[3])), to=onnx.TensorProto.BOOL)

    b = op.Shape(Q, start=0, end=1)
    h = op.Shape(Q, start=1, end=2)
    n = op.Shape(Q, start=2, end=3)
    d = op.Shape(Q, start=3, end=4)
    hkv = op.Shape(K, start=1, end=2)
    m = op.Shape(K, start=2, end=3)
    rep = op.Div(h, hkv)
    off = op.Sub(m, n)  # query i sits at position i + off
    # Positions are below M: a unit or reach of M or more selects the same keys as M (keeps blocks small).
    unit = op.Min(unit, m)
    before = op.Min(before, m)
    after = op.Min(after, m)

    # Query blocks of bq rows in position space: block g holds positions first + g·bq + r.
    bq = op.Min(block, op.Max(unit, op.Add(n, unit)))
    bq = op.Where(op.And(op.Greater(unit, one), op.Greater(op.Mod(bq, unit), zero)), unit, bq)  # whole units
    first = op.Mul(op.Div(off, bq), bq)
    front = op.Sub(off, first)
    nblk = op.Div(op.Sub(op.Add(op.Add(front, n), bq), one), bq)
    r = op.Range(0, op.Squeeze(bq), 1)
    g = op.Range(0, op.Squeeze(nblk), 1)
    pos = op.Add(op.Add(op.Unsqueeze(op.Mul(g, op.Squeeze(bq)), one), op.Unsqueeze(r, zero)), first)  # (nblk, bq)
    base = op.Mul(op.Div(pos, unit), unit)
    lo_row = op.Sub(base, before)
    hi_row = op.Add(op.Add(base, unit), after)
    lo = op.Slice(lo_row, zero, one, one)  # (nblk, 1): rows increase, so a block reads [lo of row 0, hi of its last row)
    # Every block reads bq + before + after keys: it starts on a unit boundary and holds whole units (bq is a
    # multiple of the unit, as kernels.band makes it). A formula on the band's scalars, not a max over the
    # blocks, which live on the device (onnx_functions: sizes stay on the host).
    span = op.Squeeze(op.Add(bq, op.Add(before, after)))
    idx = op.Add(lo, op.Unsqueeze(op.Range(0, span, 1), zero))  # (nblk, L) key positions
    m_last = op.Sub(m, one)
    idx_c = op.Min(op.Max(idx, zero), m_last)

    idx3 = op.Unsqueeze(idx, one)  # (nblk, 1, L)
    ok = op.And(op.GreaterOrEqual(idx3, op.Unsqueeze(lo_row, two)), op.Less(idx3, op.Unsqueeze(hi_row, two)))
    ok = op.And(ok, op.Unsqueeze(op.And(op.GreaterOrEqual(idx, zero), op.Less(idx, m)), one))
    ok = op.And(ok, op.Or(op.LessOrEqual(idx3, op.Unsqueeze(pos, two)), op.Not(causal)))
    # Sinks: the first G keys, in extra columns, masked where the band already allows them.
    n_sinks = op.Min(sinks, m)
    j = op.Range(0, op.Squeeze(n_sinks), 1)
    in_band = op.And(op.GreaterOrEqual(j, op.Unsqueeze(lo_row, two)), op.Less(j, op.Unsqueeze(hi_row, two)))
    sink_ok = op.And(op.Not(in_band), op.Or(op.LessOrEqual(j, op.Unsqueeze(pos, two)), op.Not(causal)))
    allowed = op.Concat(ok, sink_ok, axis=-1)  # (nblk, bq, L + G)
    cols = op.Concat(idx_c, op.Expand(op.Unsqueeze(j, zero), op.Concat(nblk, n_sinks, axis=0)), axis=1)

    q = op.Mul(op.Cast(Q, to=_FLOAT), scale)
    pads = op.Concat(op.Constant(value_ints=[0, 0]), front, zero, op.Constant(value_ints=[0, 0]),
                     op.Sub(op.Mul(nblk, bq), op.Add(front, n)), zero, axis=0)
    qp = op.Reshape(op.Pad(q, pads), op.Concat(b, hkv, rep, nblk, bq, d, axis=0))
    # One Gather reads each block's band keys and the sinks (cols): no copies to concatenate.
    k_all = op.Unsqueeze(op.Gather(op.Cast(K, to=_FLOAT), cols, axis=2), two)  # (B, Hkv, 1, nblk, L + G, D)
    v_all = op.Unsqueeze(op.Gather(op.Cast(V, to=_FLOAT), cols, axis=2), two)
    raw = op.MatMul(qp, op.Transpose(k_all, perm=_KT_PERM))  # (B, Hkv, rep, nblk, bq, L + G)
    raw = Softcap(raw, cap)

    # Key padding (Bk, Mk) and the dense remainder (Bm, Hm, Nm, Mm) read only at the visited keys;
    # size-1 dims broadcast (the Min clamps send every index to 0 there).
    kp_cols = op.Min(cols, op.Sub(op.Shape(KeyPadding, start=1, end=2), one))
    kp = op.Cast(op.Gather(KeyPadding, kp_cols, axis=1), to=_FLOAT)  # (Bk, nblk, L + G)
    kp = op.Unsqueeze(op.Unsqueeze(kp, op.Constant(value_ints=[1, 2])), op.Constant(value_ints=[4]))
    m_rows = op.Shape(Mask, start=2, end=3)
    m_cols = op.Shape(Mask, start=3, end=4)
    rows = op.Min(op.Min(op.Max(op.Sub(pos, off), zero), op.Sub(n, one)), op.Sub(m_rows, one))
    flat = op.Add(op.Unsqueeze(op.Mul(rows, m_cols), two), op.Unsqueeze(op.Min(cols, op.Sub(m_cols, one)), one))
    bm = op.Shape(Mask, start=0, end=1)
    hm = op.Shape(Mask, start=1, end=2)
    blocks = op.Gather(op.Reshape(Mask, op.Concat(bm, hm, op.Constant(value_ints=[-1]), axis=0)), flat, axis=2)
    hm_kv = op.Min(hm, hkv)  # the mask's heads are 1 or H: split them like the scores' (Hkv, rep)
    blocks = op.Reshape(op.Cast(blocks, to=_FLOAT),
                        op.Concat(bm, hm_kv, op.Div(hm, hm_kv), op.Shape(blocks, start=2, end=5), axis=0))
    # Band, key padding and mask as one additive term, built at the masks' size (no batch or head
    # axis unless they have one), so the (B, H, N, L + G) scores see a single Add, not three passes.
    bias = op.Where(allowed, op.Add(kp, blocks), _NEG_INF)
    probs = SoftmaxWithSink(op.Add(raw, bias), SinkLogits)
    out = op.MatMul(probs, v_all)
    # A row with no allowed key softmaxes to NaN: zero it on the (rows, D) output, not on the
    # (rows, keys) probabilities (a Where over every score).
    out = op.Where(op.IsNaN(out), 0.0, out)
    out = op.Reshape(out, op.Concat(b, h, op.Mul(nblk, bq), d, axis=0))
    return op.CastLike(op.Slice(out, front, op.Add(front, n), two), Q)


# What a body calling BandAttention lists in its CALLS.
CALLS = (BandAttention, SoftmaxWithSink)
