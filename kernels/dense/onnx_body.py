"""dense's ONNX body: ai.attnopt::DenseAttention, softmax(s·QKᵀ + masks) V with GQA as a MatMul broadcast."""

from __future__ import annotations

import onnx
import onnxscript
from onnxscript import opset18 as op

from ..onnx_functions import attnopt_opset
from ..sink_onnx import SoftmaxWithSink
from ..softcap_onnx import Softcap

_FLOAT = onnx.TensorProto.FLOAT
_NEG_INF = float("-inf")
_KT_PERM = [0, 1, 2, 4, 3]


@onnxscript.script(attnopt_opset, default_opset=op)
def DenseAttention(Q, K, V, Mask, KeyPadding, SinkLogits, scale: float, causal: int, softcap: float):
    """Every key, with the site's mask, key padding and causality; rows with no allowed key output 0."""
    one = op.Constant(value_ints=[1])
    b = op.Shape(Q, start=0, end=1)
    h = op.Shape(Q, start=1, end=2)
    n = op.Shape(Q, start=2, end=3)
    d = op.Shape(Q, start=3, end=4)
    hkv = op.Shape(K, start=1, end=2)
    m = op.Shape(K, start=2, end=3)
    rep = op.Div(h, hkv)
    q = op.Reshape(op.Mul(op.Cast(Q, to=_FLOAT), op.Constant(value_float=scale)), op.Concat(b, hkv, rep, n, d, axis=0))
    k = op.Reshape(op.Cast(K, to=_FLOAT), op.Concat(b, hkv, one, m, d, axis=0))
    v = op.Reshape(op.Cast(V, to=_FLOAT), op.Concat(b, hkv, one, m, d, axis=0))
    scores = op.MatMul(q, op.Transpose(k, perm=_KT_PERM))  # (B, Hkv, rep, N, M)
    cap = op.Constant(value_float=softcap)
    scores = Softcap(scores, cap)
    # Causal: query i sits at i + M − N.
    i = op.Add(op.Range(0, op.Squeeze(n), 1), op.Squeeze(op.Sub(m, n)))
    j = op.Range(0, op.Squeeze(m), 1)
    future = op.And(op.Greater(op.Unsqueeze(j, 0), op.Unsqueeze(i, 1)),
                    op.Cast(op.Constant(value_int=causal), to=onnx.TensorProto.BOOL))
    scores = op.Where(future, _NEG_INF, scores)
    kp = op.Reshape(op.Cast(KeyPadding, to=_FLOAT),
                    op.Concat(op.Shape(KeyPadding, start=0, end=1), one, one, one, op.Shape(KeyPadding, start=1, end=2),
                              axis=0))
    # The mask's heads Hm are 1 or H: split them like the scores' (Hkv, rep) to broadcast.
    hm = op.Shape(Mask, start=1, end=2)
    hm_kv = op.Min(hm, hkv)
    mask = op.Reshape(op.Cast(Mask, to=_FLOAT), op.Concat(op.Shape(Mask, start=0, end=1), hm_kv, op.Div(hm, hm_kv),
                                                           op.Shape(Mask, start=2, end=4), axis=0))
    probs = SoftmaxWithSink(op.Add(op.Add(scores, kp), mask), SinkLogits)
    out = op.MatMul(probs, v)
    # A row with no allowed key softmaxes to NaN: zero it on the (rows, D) output, not on the
    # (rows, keys) probabilities (a Where over every score).
    out = op.Where(op.IsNaN(out), 0.0, out)
    return op.CastLike(op.Reshape(out, op.Concat(b, h, n, d, axis=0)), Q)


BODY = DenseAttention
CALLS = (SoftmaxWithSink,)
