"""relbias's ONNX body: ai.attnopt::RelbiasAttention, a Scan over blocks of queries (as ``kernels.relbias.op``).

Without a loop, onnxruntime would hold every query's scores at once (B×H×N×M);
the Scan body sees one block of ``QUERY_BLOCK`` queries and reads K, V, the
slopes, the table and the masks from the enclosing scope, so each step holds
(B, H, Bq, M). The bias of a block is built from its positions inside the step.

A block's bias depends on j − i only (its rows are consecutive positions), so a step
evaluates it once per distinct distance, M + Bq − 1 values a head, and lays them out
as the (Bq, M) Toeplitz block by Tile/Reshape/Slice: copies, where a Gather over a
(Bq, M) index costs onnxruntime several times more (it was a third of the op's time).
"""

from __future__ import annotations

import onnx
import onnxscript
from onnxscript import graph
from onnxscript import opset18 as op

from ..onnx_functions import attnopt_opset
from ..softcap_onnx import Softcap
from .op import QUERY_BLOCK

_FLOAT = onnx.TensorProto.FLOAT
_NEG_INF = float("-inf")


@onnxscript.script(attnopt_opset, default_opset=op)
def RelbiasAttention(Q, K, V, Mask, KeyPadding, slopes, table, kind: str, num_buckets: int, max_distance: int,
                     bidirectional: int, table_file: str, init_std: float, bias_scale: float, scale: float,
                     causal: int, softcap: float):
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
    bq = op.Min(op.Constant(value_ints=[QUERY_BLOCK]), n)
    nblk = op.Div(op.Sub(op.Add(n, bq), one), bq)
    cap = op.Constant(value_float=softcap)
    is_causal = op.Cast(op.Constant(value_int=causal), to=onnx.TensorProto.BOOL)
    neg_inf = op.Identity(_NEG_INF)  # the Scan body may read outer values, not Python globals

    # Read by every step: keys, values, the per-head bias parameters split as (Hkv, rep), the padding.
    k_t = op.Unsqueeze(op.Transpose(op.Cast(K, to=_FLOAT), perm=[0, 1, 3, 2]), [2])  # (B, Hkv, 1, D, M)
    v = op.Unsqueeze(op.Cast(V, to=_FLOAT), [2])
    bias_scale_t = op.Constant(value_float=bias_scale)
    # One row per head, or one row every head shares (Expand broadcasts it).
    slope = op.Unsqueeze(op.Expand(op.Mul(op.Cast(slopes, to=_FLOAT), bias_scale_t), h), [1])  # (H, 1)
    per_distance = op.Expand(op.Mul(op.Cast(table, to=_FLOAT), bias_scale_t),
                             op.Concat(h, op.Shape(table, start=1, end=2), axis=0))  # (H, 2R + 1)
    r = op.Div(op.Sub(op.Shape(table, start=1, end=2), one), 2)
    keys = op.Unsqueeze(op.Range(0, op.Squeeze(m), 1), [0])  # (1, M)
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

    @graph()
    def step(count, q_block, row):
        delta = op.Sub(keys, op.Unsqueeze(op.Add(row, off), [1]))  # (Bq, M): j − p
        # u[t] = bias at j − p = t − (Bq − 1) − p_first, t < M + Bq − 1; Hankel rows u[r + j] (Tile of Bq + 1
        # copies read with row length L + 1), reversed, are the block's rows: bias(i, j) = u[Bq − 1 − i + j].
        width = op.Sub(op.Add(m, bq), one)
        dist = op.Sub(op.Range(0, op.Squeeze(width), 1),
                      op.Add(op.Sub(bq, one), op.Add(op.Slice(row, zero, one), off)))
        u = op.Sub(op.Gather(per_distance, op.Add(op.Min(op.Max(dist, op.Neg(r)), r), r), axis=1),
                   op.Mul(slope, op.CastLike(op.Abs(dist), cap)))  # (H, L)
        hankel = op.Reshape(op.Slice(op.Tile(u, op.Concat(one, op.Add(bq, one), axis=0)), zero,
                                     op.Mul(bq, op.Add(width, one)), one),
                            op.Concat(h, bq, op.Add(width, one), axis=0))
        before_first = op.Constant(value_ints=[-(2**63 - 1)])  # a Slice end below index 0, for step −1
        rows_first = op.Slice(hankel, op.Constant(value_ints=[-1, 0]), op.Concat(before_first, m, axis=0),
                              op.Constant(value_ints=[1, 2]), op.Constant(value_ints=[-1, 1]))  # (H, Bq, M)
        bias = op.Reshape(rows_first, op.Concat(hkv, rep, bq, m, axis=0))
        raw = op.MatMul(q_block, k_t)  # (B, Hkv, rep, Bq, M)
        raw = Softcap(raw, cap)
        dense = op.Gather(Mask, op.Min(op.Min(row, op.Sub(n, one)), mask_rows), axis=2)  # (Bm, Hm, Bq, Mm)
        # Causality as a (Bq, M) additive term: one small Where instead of one over every head's scores.
        future = op.Where(op.And(op.Greater(delta, 0), is_causal), neg_inf, op.CastLike(0.0, cap))
        scores = op.Add(op.Add(op.Add(raw, op.Add(bias, future)), kp),
                        op.Reshape(op.CastLike(dense, cap), mask_shape))
        probs = op.Softmax(scores, axis=-1)
        out = op.MatMul(probs, v)
        # A row with no allowed key softmaxes to NaN: zero it on the (rows, D) output, not on the
        # (rows, keys) probabilities (a Where over every score).
        out = op.Where(op.IsNaN(out), 0.0, out)
        return op.Add(count, 1), out

    steps, outs = op.Scan(op.Constant(value_int=0), q_blocks, rows, body=step, num_scan_inputs=2)
    out = op.Reshape(op.Transpose(outs, perm=[1, 2, 3, 0, 4, 5]), op.Concat(b, h, op.Mul(nblk, bq), d, axis=0))
    return op.CastLike(op.Slice(out, zero, n, op.Constant(value_ints=[2])), Q)


BODY = RelbiasAttention
