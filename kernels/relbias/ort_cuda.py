"""relbias's ort-cuda lowering: ai.attnopt::RelbiasAttentionOrtCuda, MultiHeadAttention with attention_bias.

relbias is dense attention plus a relative-position bias, so its fused form is
``com.microsoft.MultiHeadAttention`` with the whole bias (relative term, key
padding, the dense remainder mask, causality) as one (B | 1, H, N, M)
``attention_bias``. That tensor is what the portable body never builds, 2·H·N·M bytes per batch
row in float16 (6 GiB for H=12 at N=M=16384), so the lowering is used only where
the model fixes N and M and the bias holds at most ``MAX_BIAS_ELEMENTS``;
elsewhere (every export with a symbolic length) the portable body stays and the
rewrite report says why.
"""

from __future__ import annotations

import onnx
import onnxscript
from onnxscript import opset18 as op

from ..onnx_functions import attnopt_opset
from ..ort_cuda import LoweringFacts, msft_opset

_FLOAT = onnx.TensorProto.FLOAT
_NEG_INF = float("-inf")
_MASKED = -65504.0  # as in kernels.ort_cuda_chunks: finite, and the lowest float16
# Per batch row: every index into the bias fits int32 (what CUDA kernels commonly assume); 4 GiB of float16.
MAX_BIAS_ELEMENTS = 2**31 - 1


@onnxscript.script(attnopt_opset, default_opset=op)
def RelbiasAttentionOrtCuda(Q, K, V, Mask, KeyPadding, slopes, table, kind: str, num_buckets: int,
                            max_distance: int, bidirectional: int, table_file: str, init_std: float,
                            bias_scale: float, scale: float, causal: int, softcap: float, num_heads: int):
    """softmax(s·QKᵀ + bias) V through MultiHeadAttention, the bias (relative term, masks, causality) materialised."""
    one = op.Constant(value_ints=[1])
    b = op.Shape(Q, start=0, end=1)
    h = op.Shape(Q, start=1, end=2)
    n = op.Shape(Q, start=2, end=3)
    d = op.Shape(Q, start=3, end=4)
    m = op.Shape(K, start=2, end=3)
    hd = op.Mul(h, d)
    q = op.Reshape(op.Transpose(Q, perm=[0, 2, 1, 3]), op.Concat(b, n, hd, axis=0))
    k = op.Reshape(op.Transpose(K, perm=[0, 2, 1, 3]), op.Concat(b, m, hd, axis=0))
    v = op.Reshape(op.Transpose(V, perm=[0, 2, 1, 3]), op.Concat(b, m, hd, axis=0))
    # The relative term, as the portable body computes it: delta = j - p with p = i + (M - N).
    scale_t = op.Constant(value_float=bias_scale)
    delta = op.Sub(op.Unsqueeze(op.Range(0, op.Squeeze(m), 1), [0]),
                   op.Unsqueeze(op.Add(op.Range(0, op.Squeeze(n), 1), op.Squeeze(op.Sub(m, n))), [1]))
    r = op.Div(op.Sub(op.Shape(table, start=1, end=2), one), 2)
    per_distance = op.Expand(op.Mul(op.Cast(table, to=_FLOAT), scale_t),
                             op.Concat(h, op.Shape(table, start=1, end=2), axis=0))  # (H, 2R + 1)
    slope = op.Reshape(op.Expand(op.Mul(op.Cast(slopes, to=_FLOAT), scale_t), h), op.Concat(h, one, one, axis=0))
    rel = op.Sub(op.Gather(per_distance, op.Add(op.Min(op.Max(delta, op.Neg(r)), r), r), axis=1),
                 op.Mul(slope, op.Cast(op.Abs(delta), to=_FLOAT)))  # (H, N, M)
    kp = op.Unsqueeze(op.Cast(KeyPadding, to=_FLOAT), [1, 2])  # (Bk, 1, 1, M)
    bias = op.Add(op.Add(op.Unsqueeze(rel, [0]), kp), op.Cast(Mask, to=_FLOAT))
    future = op.And(op.Greater(delta, 0), op.Cast(op.Constant(value_int=causal), to=onnx.TensorProto.BOOL))
    bias = op.Where(future, _NEG_INF, bias)
    allowed = op.Not(op.IsInf(bias, detect_negative=1, detect_positive=0))
    bias = op.Where(allowed, op.Max(bias, _MASKED), _MASKED)
    y = msft_opset.MultiHeadAttention(q, k, v, None, None, op.CastLike(bias, Q), num_heads=num_heads, scale=scale)
    y = op.Transpose(op.Reshape(y, op.Concat(b, n, h, d, axis=0)), perm=[0, 2, 1, 3])
    # Rows with no allowed key output 0; a MatMul against ones counts them (opset 17's ReduceMax has no axes input).
    ones = op.Expand(op.Constant(value_float=1.0), op.Concat(m, one, axis=0))
    any_key = op.Greater(op.MatMul(op.Cast(allowed, to=_FLOAT), ones), 0.0)  # (Bb, H, N, 1)
    return op.Where(any_key, y, op.CastLike(0.0, Q))


LOWERING = RelbiasAttentionOrtCuda


def why_not(facts: LoweringFacts) -> str | None:
    """Why MultiHeadAttention with a materialised bias is not used here (None: it is, and it is exact).

    Only where the model fixes N and M can the rewrite know the bias fits: with a symbolic
    length the H·N·M bias is built at whatever length arrives, and on an H200 (onnxruntime
    1.31, BERT-base shape, float16) it failed beyond 2^31 elements (N=16384) and at N=4096
    ran 4.8× slower than the unfused original (BENCHMARKS.md, issue 10).
    """
    n, m = facts.q_len, facts.kv_len
    if not (isinstance(n, int) and isinstance(m, int) and isinstance(facts.num_heads, int)):
        return ("the sequence length is symbolic, so the H·N·M bias MultiHeadAttention would need has no known "
                "bound (the portable body never builds it)")
    if facts.num_heads * n * m > MAX_BIAS_ELEMENTS:
        return (f"the H·N·M = {facts.num_heads}·{n}·{m} bias exceeds {MAX_BIAS_ELEMENTS} elements "
                "(the portable body never builds it)")
    return facts.common_refusal(takes_dense_mask=True)
