"""lowrank's ONNX body: ai.attnopt::LowrankAttention, the shared pooling bodies (kernels.pooling_onnx) for the
key groups, then pool or nystrom in an If. Same math as kernels.lowrank.op."""

from __future__ import annotations

import onnx
import onnxscript
from onnxscript import opset18 as op

from ..onnx_functions import attnopt_opset
from ..softcap_onnx import Softcap
from ..pooling_onnx import BlockPrefix, PoolRanges
from ..row_max_onnx import LastAxisMax

_FLOAT = onnx.TensorProto.FLOAT
_NEG_INF = float("-inf")
_TINY = 1e-38


@onnxscript.script(attnopt_opset, default_opset=op)
def LowrankAttention(Q, K, V, Mask, KeyPadding, rank: int, method: str, pinv_steps: int, scale: float, causal: int,
                     softcap: float):
    """pool: softmax(s·QK̄ᵀ + log n_g) V̄; nystrom: Nyström with a Newton–Schulz pinv. Empty rows output 0."""
    zero = op.Constant(value_ints=[0])
    one = op.Constant(value_ints=[1])
    last = op.Constant(value_ints=[-1])
    b = op.Shape(Q, start=0, end=1)
    h = op.Shape(Q, start=1, end=2)
    n = op.Shape(Q, start=2, end=3)
    d = op.Shape(Q, start=3, end=4)
    hkv = op.Shape(K, start=1, end=2)
    m = op.Shape(K, start=2, end=3)
    rep = op.Div(h, hkv)
    r = op.Reshape(op.Constant(value_int=rank), one)
    # No causal form exists (the pass refuses causal sites): a causal node fails here, reshaping one value
    # to two, instead of silently attending to the future.
    not_causal = op.Reshape(op.Constant(value_floats=[1.0]),
                            op.Add(one, op.Reshape(op.Constant(value_int=causal), one)))
    s = op.Mul(op.Reshape(op.Constant(value_float=scale), one), not_causal)
    cap = op.Constant(value_float=softcap)
    # Only a mask that is the same for every query and head can be pooled: Reshape fails on any other.
    kp = op.Add(op.Reshape(op.Cast(Mask, to=_FLOAT), op.Concat(op.Shape(Mask, start=0, end=1),
                                                               op.Shape(Mask, start=3, end=4), axis=0)),
                op.Cast(KeyPadding, to=_FLOAT))  # (Bw, M | 1)
    qf = op.Cast(Q, to=_FLOAT)
    k = op.Cast(K, to=_FLOAT)
    v = op.Cast(V, to=_FLOAT)

    # Key groups of ceil(M / r): means of the kept keys and log n_g, (B, Hkv, 1, G, D) and (Bw, 1, G).
    size = op.Div(op.Sub(op.Add(m, r), one), r)
    groups = op.Unsqueeze(op.Range(0, op.Squeeze(op.Div(op.Sub(op.Add(m, size), one), size)), 1), zero)
    pk, pv, mass, shift = BlockPrefix(k, v, kp, op.Concat(size, zero, axis=0))
    k_land, v_land, log_n = PoolRanges(pk, pv, mass, shift, groups, op.Add(groups, one))
    # Query groups of ceil(N / r) (nystrom's landmarks; cheap, O(N·D), so pool computes them too: a function
    # called inside an If branch would not be attached to the model).
    q_size = op.Div(op.Sub(op.Add(n, r), one), r)
    q_groups = op.Unsqueeze(op.Range(0, op.Squeeze(op.Div(op.Sub(op.Add(n, q_size), one), q_size)), 1), zero)
    no_padding = op.Reshape(op.Constant(value_floats=[0.0]), op.Constant(value_ints=[1, 1]))
    pq, _, q_mass, q_shift = BlockPrefix(qf, qf, no_padding, op.Concat(q_size, zero, axis=0))
    q_land, _, _ = PoolRanges(pq, pq, q_mass, q_shift, q_groups, op.Add(q_groups, one))  # (B, H, 1, Gq, D)

    q5 = op.Reshape(op.Mul(qf, s), op.Concat(b, hkv, rep, n, d, axis=0))  # GQA: rep heads share the groups
    kt = op.Transpose(k_land, perm=[0, 1, 2, 4, 3])  # (B, Hkv, 1, D, G)
    # method is a string attribute; Equal on strings needs opset 19 and bodies run on 17..23, so compare
    # by counting the distinct values of ["pool", method].
    names = op.Concat(op.Constant(value_strings=["pool"]), op.Reshape(op.Constant(value_string=method), one), axis=0)
    if op.Squeeze(op.Equal(op.Shape(op.Unique(names)), one)):
        raw = op.MatMul(q5, kt)
        raw = Softcap(raw, cap)
        p = op.Softmax(op.Add(raw, op.Unsqueeze(log_n, op.Constant(value_ints=[1, 2]))), axis=-1)
        y = op.MatMul(p, v_land)
        y = op.Where(op.IsNaN(y), 0.0, y)  # rows with no kept key: zeroed on (rows, D), not on p
    else:
        empty = op.Unsqueeze(op.Where(op.IsInf(log_n, detect_positive=0), _NEG_INF, 0.0),
                             op.Constant(value_ints=[1, 2]))  # (Bw, 1, 1, 1, G): a group with no kept key
        ql = op.Mul(op.Reshape(q_land, op.Concat(b, hkv, rep, op.Shape(q_land, start=3, end=5), axis=0)), s)
        raw_left = op.MatMul(q5, kt)
        raw_left = Softcap(raw_left, cap)
        left = op.Softmax(op.Add(raw_left, empty), axis=-1)
        raw_mid = op.MatMul(ql, kt)
        raw_mid = Softcap(raw_mid, cap)
        mid = op.Softmax(op.Add(raw_mid, empty), axis=-1)
        mid = op.Where(op.IsNaN(mid), 0.0, mid)  # (B, Hkv, rep, Gq, G)
        raw_right = op.MatMul(ql, op.Transpose(op.Unsqueeze(k, op.Constant(value_ints=[2])), perm=[0, 1, 2, 4, 3]))
        raw_right = Softcap(raw_right, cap)
        right = op.Softmax(op.Add(raw_right, op.Unsqueeze(kp, op.Constant(value_ints=[1, 2, 3]))), axis=-1)
        right = op.MatMul(op.Where(op.IsNaN(right), 0.0, right), op.Unsqueeze(v, op.Constant(value_ints=[2])))
        # Newton–Schulz pinv (kernels.lowrank.linalg): Z₀ = midᵀ/(‖mid‖₁‖mid‖∞), Z ← ¼Z(13I − AZ(15I − AZ(7I − AZ))).
        norm1 = LastAxisMax(op.ReduceSum(mid, op.Constant(value_ints=[-2]), keepdims=0))
        norm_inf = LastAxisMax(op.ReduceSum(mid, last, keepdims=0))
        z = op.Div(op.Transpose(mid, perm=[0, 1, 2, 4, 3]), op.Max(op.Unsqueeze(op.Mul(norm1, norm_inf), last), _TINY))
        lq = op.Range(0, op.Squeeze(op.Shape(mid, start=3, end=4)), 1)
        eye = op.Cast(op.Equal(op.Unsqueeze(lq, one), op.Unsqueeze(lq, zero)), to=_FLOAT)
        steps = op.Constant(value_int=pinv_steps)
        for _ in range(steps):
            az = op.MatMul(mid, z)
            inner = op.MatMul(az, op.Sub(op.Mul(eye, 7.0), az))
            z = op.Mul(op.MatMul(z, op.Sub(op.Mul(eye, 13.0), op.MatMul(az, op.Sub(op.Mul(eye, 15.0), inner)))), 0.25)
        y = op.MatMul(op.Where(op.IsNaN(left), 0.0, left), op.MatMul(z, right))
    return op.CastLike(op.Reshape(y, op.Concat(b, h, n, d, axis=0)), Q)


BODY = LowrankAttention
CALLS = (BlockPrefix, PoolRanges)
