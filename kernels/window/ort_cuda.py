"""window's ort-cuda lowering: ai.attnopt::WindowAttentionOrtCuda, MultiHeadAttention per query chunk.

Query chunks of W rows are folded into the batch; chunk g attends the key slab
[gW - (W-1), gW + 2W - 1) (causal: up to gW + W - 1) through one
``com.microsoft.MultiHeadAttention`` with the band |j - i| < W as its bias (the
machinery is ``kernels.ort_cuda_chunks``). Each query scores 3W - 1 keys
(2W - 1 causal) where the band has 2W - 1 (W): the price of fused kernels.
Sinks, a KV-cache step (M > N) and what MultiHeadAttention lacks keep the
portable body (``why_not``).
"""

from __future__ import annotations

import onnxscript
from onnxscript import opset18 as op

from ..onnx_functions import attnopt_opset
from ..ort_cuda import LoweringFacts
from ..ort_cuda_chunks import ChunkedMultiHeadAttention


@onnxscript.script(attnopt_opset, default_opset=op)
def WindowAttentionOrtCuda(Q, K, V, Mask, KeyPadding, SinkLogits, window: int, sinks: int, scale: float, causal: int,
                           softcap: float, num_heads: int):
    """|i - j| < W (i - W < j <= i causal), sinks = 0, N == M, no dense mask, no softcap, no sink logits; Mask and
    SinkLogits are not read."""
    one = op.Constant(value_ints=[1])
    n = op.Shape(Q, start=2, end=3)
    w = op.Reshape(op.Constant(value_int=window), one)
    c = op.Min(w, n)  # a window of N or more is dense: one chunk of every query
    reach = op.Min(op.Sub(w, one), n)  # keys further than N away do not exist
    after = op.Mul(reach, op.Sub(one, op.Reshape(op.Constant(value_int=causal), one)))
    chunk = op.Concat(c, reach, op.Add(op.Add(reach, c), after), op.Neg(reach), after, axis=0)
    return ChunkedMultiHeadAttention(Q, K, V, KeyPadding, chunk, num_heads=num_heads, scale=scale)


LOWERING = WindowAttentionOrtCuda
CALLS = (ChunkedMultiHeadAttention,)


def why_not(facts: LoweringFacts) -> str | None:
    """Why chunked MultiHeadAttention would not equal the portable window body here (None: it does)."""
    if facts.attrs.get("sinks"):
        return "sinks lie outside the query chunks' key slabs"
    if not facts.self_attention:
        return "a KV-cache step (keys longer than queries) has no chunked form here"
    return facts.common_refusal()
