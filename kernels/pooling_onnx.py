"""Mask-aware pooling, ONNX: ``BlockPrefix`` and ``PoolRanges``, called by the bodies that pool keys.

Same math as ``kernels.pooling`` (read that first): weights w_j = exp(kp_j)
(shifted by the row's largest finite padding so exp cannot overflow), prefix
sums over key blocks in double, and pooled means and log masses of block
ranges as differences of two prefixes. A body that calls these lists them in
its ``CALLS``.
"""

from __future__ import annotations

import onnx
import onnxscript
from onnxscript import opset18 as op

from .onnx_functions import attnopt_opset
from .row_max_onnx import LastAxisMax

_FLOAT = onnx.TensorProto.FLOAT
_DOUBLE = onnx.TensorProto.DOUBLE
_NEG_INF = float("-inf")


@onnxscript.script(attnopt_opset, default_opset=op)
def BlockPrefix(K, V, KeyPadding, Geometry):
    """Geometry = [block, skip_first] (int64): blocks of ``block`` keys; the first ``skip_first`` keys weigh 0.

    Returns prefix sums over blocks (entry t sums blocks [0, t)): of w·k and w·v,
    (B, Hkv, nb + 1, D) double; of w, (Bw, nb + 1) double; and the shift, (Bw, 1) double.
    """
    zero = op.Constant(value_ints=[0])
    one = op.Constant(value_ints=[1])
    block = op.Slice(Geometry, zero, one)
    skip = op.Slice(Geometry, one, op.Constant(value_ints=[2]))
    b = op.Shape(K, start=0, end=1)
    hkv = op.Shape(K, start=1, end=2)
    m = op.Shape(K, start=2, end=3)
    d = op.Shape(K, start=3, end=4)
    bw = op.Shape(KeyPadding, start=0, end=1)
    nb = op.Div(op.Sub(op.Add(m, block), one), block)
    pad = op.Sub(op.Mul(nb, block), m)

    kp = op.Expand(op.Cast(KeyPadding, to=_FLOAT), op.Concat(bw, m, axis=0))  # (Bw, M); (1, 1) "none" broadcasts
    top = LastAxisMax(kp)  # the row's max, (Bw, 1)
    shift = op.Where(op.IsInf(top), 0.0, top)  # a row with no finite padding keeps shift 0
    log_w = op.Where(op.Less(op.Range(0, op.Squeeze(m), 1), skip), _NEG_INF, op.Sub(kp, shift))
    w = op.Exp(op.Cast(log_w, to=_DOUBLE))
    mass = op.ReduceSum(op.Reshape(op.Pad(w, op.Concat(zero, zero, zero, pad, axis=0)),
                                   op.Concat(bw, nb, block, axis=0)), op.Constant(value_ints=[2]), keepdims=0)
    mass = op.Pad(op.CumSum(mass, op.Constant(value_int=1)), op.Constant(value_ints=[0, 1, 0, 0]))

    wk = op.Unsqueeze(w, op.Constant(value_ints=[1, 3]))  # (Bw, 1, M, 1)
    blocks = op.Concat(b, hkv, nb, block, d, axis=0)
    tail = op.Concat(op.Constant(value_ints=[0, 0, 0, 0, 0, 0]), pad, zero, axis=0)
    four = op.Constant(value_ints=[3])
    ksum = op.ReduceSum(op.Reshape(op.Pad(op.Mul(op.Cast(K, to=_DOUBLE), wk), tail), blocks), four, keepdims=0)
    vsum = op.ReduceSum(op.Reshape(op.Pad(op.Mul(op.Cast(V, to=_DOUBLE), wk), tail), blocks), four, keepdims=0)
    lead = op.Constant(value_ints=[0, 0, 1, 0, 0, 0, 0, 0])
    axis = op.Constant(value_int=2)
    prefix_k = op.Pad(op.CumSum(ksum, axis), lead)
    prefix_v = op.Pad(op.CumSum(vsum, axis), lead)
    return prefix_k, prefix_v, mass, op.Cast(shift, to=_DOUBLE)


@onnxscript.script(attnopt_opset, default_opset=op)
def PoolRanges(PrefixK, PrefixV, PrefixMass, Shift, Start, End):
    """Pooled keys, values (B, Hkv, R, C, D) and log masses (Bw, R, C), float, of block ranges [Start, End) (R, C).

    Ranges are clamped to the blocks that exist; an empty or fully masked one has
    log mass −inf and zero key and value.
    """
    zero = op.Constant(value_ints=[0])
    nb = op.Sub(op.Shape(PrefixMass, start=1, end=2), op.Constant(value_ints=[1]))
    s = op.Min(op.Max(Start, zero), nb)
    e = op.Max(op.Min(op.Max(End, zero), nb), s)
    mass = op.Sub(op.Gather(PrefixMass, e, axis=1), op.Gather(PrefixMass, s, axis=1))  # (Bw, R, C), >= 0
    has = op.Greater(mass, op.Cast(0.0, to=_DOUBLE))
    safe = op.Where(has, mass, op.Cast(1.0, to=_DOUBLE))
    shift = op.Unsqueeze(Shift, op.Constant(value_ints=[2]))  # (Bw, 1, 1)
    log_mass = op.Where(has, op.Cast(op.Add(op.Log(safe), shift), to=_FLOAT), _NEG_INF)
    denom = op.Unsqueeze(safe, op.Constant(value_ints=[1, 4]))  # (Bw, 1, R, C, 1)
    keys = op.Div(op.Sub(op.Gather(PrefixK, e, axis=2), op.Gather(PrefixK, s, axis=2)), denom)
    values = op.Div(op.Sub(op.Gather(PrefixV, e, axis=2), op.Gather(PrefixV, s, axis=2)), denom)
    return op.Cast(keys, to=_FLOAT), op.Cast(values, to=_FLOAT), log_mass


@onnxscript.script(attnopt_opset, default_opset=op)
def PoolWindows(PrefixK, PrefixV, PrefixMass, Shift, Start, Width, Widths):
    """``PoolRanges`` of the ranges [Start, Start + Widths[Width]) (R, C), each distinct range pooled once.

    Widths (W,) int64 holds the widths used, the largest last; Width (R, C) indexes it. A range's
    pooled mean depends only on its clipped ends, and a start below −max or above nb gives an empty
    range either way, so PoolRanges runs on the (W, nb + max + 1) table of every width at every start
    from −max to nb (in double, as ever) and the (R, C) columns read it with one float Gather, where
    PoolRanges at (R, C) gathers and subtracts double prefixes four times over (R, C, D).
    """
    one = op.Constant(value_ints=[1])
    nb = op.Sub(op.Shape(PrefixMass, start=1, end=2), one)
    lo = op.Neg(op.Slice(Widths, op.Constant(value_ints=[-1]), op.Constant(value_ints=[9223372036854775807])))
    starts = op.Range(op.Squeeze(lo), op.Squeeze(op.Add(nb, one)), 1)  # (S,)
    n_starts = op.Shape(starts)
    table_start = op.Expand(op.Unsqueeze(starts, op.Constant(value_ints=[0])),
                            op.Concat(op.Shape(Widths), n_starts, axis=0))  # (W, S)
    table_end = op.Add(table_start, op.Unsqueeze(Widths, op.Constant(value_ints=[1])))
    keys, values, log_mass = PoolRanges(PrefixK, PrefixV, PrefixMass, Shift, table_start, table_end)
    at = op.Add(op.Mul(Width, n_starts), op.Sub(op.Min(op.Max(Start, lo), nb), lo))  # (R, C) into W·S
    flat = op.Concat(op.Shape(keys, start=0, end=2), op.Constant(value_ints=[-1]), op.Shape(keys, start=4, end=5),
                     axis=0)
    pooled_k = op.Gather(op.Reshape(keys, flat), at, axis=2)  # (B, Hkv, R, C, D)
    pooled_v = op.Gather(op.Reshape(values, flat), at, axis=2)
    pooled_log = op.Gather(op.Reshape(log_mass, op.Concat(op.Shape(log_mass, start=0, end=1),
                                                          op.Constant(value_ints=[-1]), axis=0)), at, axis=1)
    return pooled_k, pooled_v, pooled_log
