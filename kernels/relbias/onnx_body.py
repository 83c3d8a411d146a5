"""relbias's ONNX body: ai.attnopt::RelbiasAttention, a Scan over blocks of queries (as ``kernels.relbias.op``).

Without a loop, onnxruntime would hold every query's scores at once (B×H×N×M);
the Scan body sees one block of Bq queries and reads K, V, the slopes, the table
and the masks from the enclosing scope, so each step holds (B, H, Bq, M). Bq is
sized from the shapes so a step holds about ``STEP_ELEMENTS`` scores per batch
row (2^25: on the CPU, 341- and 682-row blocks ran as fast as 64-row
ones or faster at N = 4096 and 8192, and on CUDA each step is a dozen launches).
The bias of a block is built from its positions inside the step.

A block's rows are consecutive positions, so its bias is a Toeplitz block, built by
``bias_rows_onnx`` (shared with the ort-cuda lowering) from one value per distance.
"""

from __future__ import annotations

import onnx
import onnxscript
from onnxscript import graph
from onnxscript import opset18 as op

from ..onnx_functions import attnopt_opset
from ..sink_onnx import SoftmaxWithSink
from ..softcap_onnx import Softcap
from .bias_rows_onnx import CALLS as BIAS_CALLS
from .bias_rows_onnx import RelativeBiasDistances, ToeplitzRows

_FLOAT = onnx.TensorProto.FLOAT
STEP_ELEMENTS = 2**25  # scores a step holds per batch row: 128 MiB of float32


@onnxscript.script(attnopt_opset, default_opset=op)
def DistancePenalty(neg_slope, keys_at, positions, is_causal):
    """ALiBi's bias of a block of rows, −slope·|δ| with δ = j − p: (Hkv, rep, Bq, M) from neg_slope
    (Hkv, rep, 1, 1), the key positions (M,) and the rows' (Bq,), as float; and, apart, causality as (Bq, M) of
    0 or −inf (a zero slope must not meet an infinite distance)."""
    zero = op.Constant(value_float=0.0)
    delta = op.Sub(op.Unsqueeze(keys_at, [0]), op.Unsqueeze(positions, [1]))  # (Bq, M)
    causality = op.Where(op.And(op.Greater(delta, zero), is_causal), op.Constant(value_float=float("-inf")), zero)
    return op.Mul(neg_slope, op.Abs(delta)), causality


@onnxscript.script(attnopt_opset, default_opset=op)
def RelbiasAttention(Q, K, V, Mask, KeyPadding, SinkLogits, slopes, table, kind: str, num_buckets: int,
                     max_distance: int, bidirectional: int, table_file: str, init_std: float, bias_scale: float,
                     scale: float, causal: int, softcap: float):
    """softmax(s·QKᵀ + bias_scale·(−slopes·|δ| + table[clamp(δ)]) + masks) V; rows with no allowed key output 0."""
    zero = op.Constant(value_ints=[0])
    one = op.Constant(value_ints=[1])
    b = op.Shape(Q, start=0, end=1)
    h = op.Shape(Q, start=1, end=2)
    n = op.Shape(Q, start=2, end=3)
    d = op.Shape(Q, start=3, end=4)
    hkv = op.Shape(K, start=1, end=2)
    m = op.Shape(K, start=2, end=3)
    rep = op.Div(h, hkv)
    off = op.Sub(m, n)  # query i sits at position i + off
    # Queries a step: as many as STEP_ELEMENTS allows over H·M scores, at least one, at most N (shape arithmetic).
    bq = op.Max(op.Min(op.Div(op.Constant(value_ints=[STEP_ELEMENTS]), op.Mul(h, m)), n), one)
    nblk = op.Div(op.Sub(op.Add(n, bq), one), bq)
    cap = op.Constant(value_float=softcap)
    is_causal = op.Cast(op.Constant(value_int=causal), to=onnx.TensorProto.BOOL)

    # Read by every step: keys, values, the per-head bias parameters split as (Hkv, rep), the padding.
    k_t = op.Unsqueeze(op.Transpose(op.Cast(K, to=_FLOAT), perm=[0, 1, 3, 2]), [2])  # (B, Hkv, 1, D, M)
    v = op.Unsqueeze(op.Cast(V, to=_FLOAT), [2])
    bias_scale_t = op.Constant(value_float=bias_scale)
    # One row per head, or one row every head shares (Expand broadcasts it).
    slope = op.Unsqueeze(op.Expand(op.Mul(op.Cast(slopes, to=_FLOAT), bias_scale_t), h), [1])  # (H, 1)
    per_distance = op.Expand(op.Mul(op.Cast(table, to=_FLOAT), bias_scale_t),
                             op.Concat(h, op.Shape(table, start=1, end=2), axis=0))  # (H, 2R + 1)
    kp = op.Unsqueeze(op.Cast(KeyPadding, to=_FLOAT), [1, 2, 3])  # (Bk, 1, 1, 1, Mk)
    bm = op.Shape(Mask, start=0, end=1)
    hm = op.Shape(Mask, start=1, end=2)
    hm_kv = op.Min(hm, hkv)  # the mask's heads are 1 or H: split them like the scores' (Hkv, rep)
    mask_rows = op.Sub(op.Shape(Mask, start=2, end=3), one)
    mask_shape = op.Concat(bm, hm_kv, op.Div(hm, hm_kv), op.Constant(value_ints=[-1]),
                           op.Shape(Mask, start=3, end=4), axis=0)

    # Scan inputs: query blocks (nblk, B, Hkv, rep, Bq, D) and their positions (nblk, Bq).
    q = op.Mul(op.Cast(Q, to=_FLOAT), op.Constant(value_float=scale))
    pads = op.Concat(op.Constant(value_ints=[0, 0, 0, 0, 0, 0]), op.Sub(op.Mul(nblk, bq), n), zero, axis=0)
    q_blocks = op.Transpose(op.Reshape(op.Pad(q, pads), op.Concat(b, hkv, rep, nblk, bq, d, axis=0)),
                            perm=[3, 0, 1, 2, 4, 5])
    rows = op.Reshape(op.Range(0, op.Squeeze(op.Mul(nblk, bq)), 1), op.Concat(nblk, bq, axis=0))

    # A distance penalty alone (ALiBi: one table column, all zero) is the slope times |δ|: computed from the block's
    # (Bq, M) distances with one Mul over the scores' size, instead of laying out a Toeplitz block (a Tile and two
    # Slices over it, which took most of the body's time on the CPU). Causality is added with the masks then.
    no = op.Constant(value_float=0.0)
    distance_only = op.And(op.Equal(op.Shape(table, start=1, end=2), one),
                           op.Equal(op.ReduceMax(op.Abs(op.Cast(table, to=_FLOAT)), keepdims=0), no))
    neg_slope = op.Reshape(op.Neg(slope), op.Concat(hkv, rep, one, one, axis=0))  # (Hkv, rep, 1, 1)
    keys_at = op.Cast(op.Range(0, op.Squeeze(m), 1), to=_FLOAT)  # (M,) key positions (exact below 2^24)
    nothing = op.Reshape(no, op.Constant(value_ints=[1, 1]))

    @graph()
    def step(count, q_block, row):
        first = op.Add(op.Slice(row, zero, one), off)  # the block's first query position
        if distance_only:
            bias, causality = DistancePenalty(neg_slope, keys_at, op.CastLike(op.Add(row, off), no), is_causal)
        else:  # (H, Bq, M) laid out from one value per distance u, causality riding on u
            bias = op.Slice(ToeplitzRows(RelativeBiasDistances(per_distance, slope, first, bq, m, is_causal), bq),
                            zero, m, op.Constant(value_ints=[2]))
            causality = nothing  # (1, 1)
        # The If's outputs get their ranks back (Scan needs its outputs' shapes): bias as (Hkv, rep, Bq, M).
        bias = op.Reshape(bias, op.Concat(hkv, rep, bq, m, axis=0))
        causality = op.Reshape(causality, op.Constant(value_ints=[0, 0]))
        raw = op.MatMul(q_block, k_t)  # (B, Hkv, rep, Bq, M)
        raw = Softcap(raw, cap)
        dense = op.Gather(Mask, op.Min(op.Min(row, op.Sub(n, one)), mask_rows), axis=2)  # (Bm, Hm, Bq, Mm)
        # The masks summed at their own size first (key padding alone is (Bk, 1, 1, 1, M); causality, where the
        # bias does not carry it, (Bq, M)): one Add fewer over the scores.
        masks = op.Add(op.Add(kp, op.Reshape(op.CastLike(dense, cap), mask_shape)), causality)
        scores = op.Add(op.Add(raw, bias), masks)
        probs = SoftmaxWithSink(scores, SinkLogits)
        out = op.MatMul(probs, v)
        # A row with no allowed key softmaxes to NaN: zero it on the (rows, D) output, not on the
        # (rows, keys) probabilities (a Where over every score).
        out = op.Where(op.IsNaN(out), 0.0, out)
        return op.Add(count, 1), out

    steps, outs = op.Scan(op.Constant(value_int=0), q_blocks, rows, body=step, num_scan_inputs=2)
    out = op.Reshape(op.Transpose(outs, perm=[1, 2, 3, 0, 4, 5]), op.Concat(b, h, op.Mul(nblk, bq), d, axis=0))
    return op.CastLike(op.Slice(out, zero, n, op.Constant(value_ints=[2])), Q)


BODY = RelbiasAttention
CALLS = (*BIAS_CALLS, DistancePenalty, SoftmaxWithSink)
