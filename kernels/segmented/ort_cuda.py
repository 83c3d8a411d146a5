"""segmented's ort-cuda lowering: ai.attnopt::SegmentedAttentionOrtCuda, MultiHeadAttention per segment.

Segments of S tokens are folded into the batch and one
``com.microsoft.MultiHeadAttention`` attends within each (the machinery is
``kernels.ort_cuda_chunks``: a chunk of S queries against its own S keys), so
onnxruntime's fused CUDA kernels do the work: 0.17 ms against 2.0 ms for dense
MHA at N=16384, H=16, D=64, fp16 on an H200. Sinks attend across segments, so
a site with sinks keeps the portable body (``why_not``).
"""

from __future__ import annotations

import onnxscript
from onnxscript import opset18 as op

from ..onnx_functions import attnopt_opset
from ..ort_cuda import LoweringFacts
from ..ort_cuda_chunks import ChunkedMultiHeadAttention


@onnxscript.script(attnopt_opset, default_opset=op)
def SegmentedAttentionOrtCuda(Q, K, V, Mask, KeyPadding, SinkLogits, segment_size: int, sinks: int, scale: float,
                              causal: int, softcap: float, num_heads: int):
    """allowed(i, j) = i // S == j // S (sinks = 0, no dense mask, no softcap, no sink logits); Mask and
    SinkLogits are not read."""
    one = op.Constant(value_ints=[1])
    n = op.Shape(Q, start=2, end=3)
    seg = op.Min(op.Reshape(op.Constant(value_int=segment_size), one), n)  # seg(i) is the same for S >= N
    # Within its own segment every key is allowed (lo = -N); causal keeps j <= i (hi = 0).
    hi = op.Mul(n, op.Sub(one, op.Reshape(op.Constant(value_int=causal), one)))
    chunk = op.Concat(seg, op.Constant(value_ints=[0]), seg, op.Neg(n), hi, axis=0)
    return ChunkedMultiHeadAttention(Q, K, V, KeyPadding, chunk, num_heads=num_heads, scale=scale)


LOWERING = SegmentedAttentionOrtCuda
CALLS = (ChunkedMultiHeadAttention,)


def why_not(facts: LoweringFacts) -> str | None:
    """Why MultiHeadAttention over folded segments would not equal the portable body here (None: it does)."""
    if facts.attrs.get("sinks"):
        return "sinks attend across segments, which MultiHeadAttention over folded segments cannot"
    return facts.common_refusal()
