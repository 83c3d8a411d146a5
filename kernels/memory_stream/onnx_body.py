"""memory_stream's ONNX body: ai.attnopt::MemoryStreamAttention, dense attention over [sinks; memory; segment]."""

from __future__ import annotations

import onnx
import onnxscript
from onnxscript import opset18 as op

from ..dense.onnx_body import DenseAttention
from ..onnx_functions import attnopt_opset

_LAST = 9223372036854775807  # Slice "to the end"


@onnxscript.script(attnopt_opset, default_opset=op)
def MemoryStreamAttention(Q, K, V, Mask, KeyPadding, slopes, table, memory_k, memory_v, sink_k, sink_v, seen,
                          memory: int, sinks: int, scale: float, causal: int, softcap: float):
    """One segment per call; cost O(S·(S+M_mem+G)·D). Mask must be the (1,1,1,1) zero (causality and key padding
    stream; a relative bias comes as slopes and table, computed over the stream's absolute positions)."""
    zero = op.Constant(value_ints=[0])
    one = op.Constant(value_ints=[1])
    two = op.Constant(value_ints=[2])
    t_mem = op.Shape(memory_k, start=2, end=3)
    s = op.Shape(K, start=2, end=3)
    # A sink key is used only while the memory does not hold it: j < seen − len(memory).
    n_sinks = op.Min(op.Max(op.Sub(seen, t_mem), zero), op.Shape(sink_k, start=2, end=3))
    keys = op.Concat(op.Slice(sink_k, zero, n_sinks, two), memory_k, K, axis=2)
    values = op.Concat(op.Slice(sink_v, zero, n_sinks, two), memory_v, V, axis=2)
    # Key padding covers this segment; the carried keys were visible when stored.
    b = op.Shape(KeyPadding, start=0, end=1)
    prefix = op.Expand(op.CastLike(op.Constant(value_float=0.0), KeyPadding), op.Concat(b, op.Add(n_sinks, t_mem), axis=0))
    kp = op.Concat(prefix, op.Expand(KeyPadding, op.Concat(b, s, axis=0)), axis=1)
    # The relative bias over stream positions: queries at seen.., sinks at 0.., memory right before the segment.
    first = op.Squeeze(seen)
    queries = op.Range(first, op.Add(first, op.Squeeze(s)), op.Constant(value_int=1))
    key_pos = op.Concat(op.Range(op.Constant(value_int=0), op.Squeeze(n_sinks), op.Constant(value_int=1)),
                        op.Range(op.Sub(first, op.Squeeze(t_mem)), op.Add(first, op.Squeeze(s)),
                                 op.Constant(value_int=1)), axis=0)
    delta = op.Sub(op.Unsqueeze(key_pos, zero), op.Unsqueeze(queries, one))  # (S, K)
    r = op.Div(op.Sub(op.Shape(table, start=1, end=2), one), two)
    at = op.Add(op.Min(op.Max(delta, op.Neg(r)), r), r)
    per_distance = op.Gather(op.Cast(table, to=onnx.TensorProto.FLOAT), at, axis=1)  # (Ht, S, K)
    slope = op.Unsqueeze(op.Cast(slopes, to=onnx.TensorProto.FLOAT), [1, 2])  # (Hs, 1, 1)
    bias = op.Sub(per_distance, op.Mul(slope, op.Cast(op.Abs(delta), to=onnx.TensorProto.FLOAT)))
    mask = op.Add(op.Cast(Mask, to=onnx.TensorProto.FLOAT), op.Unsqueeze(bias, zero))  # (1, H | 1, S, K)
    no_sink_logits = op.ConstantOfShape(op.Constant(value_ints=[0]))  # an empty float vector: no learned sinks
    Y = DenseAttention(Q, keys, values, mask, kp, no_sink_logits, scale=scale, causal=causal, softcap=softcap)
    stream_k = op.Concat(memory_k, K, axis=2)
    stream_v = op.Concat(memory_v, V, axis=2)
    keep = op.Max(op.Sub(op.Shape(stream_k, start=2, end=3), op.Reshape(op.Constant(value_int=memory), [1])), zero)
    memory_k_next = op.Slice(stream_k, keep, op.Constant(value_ints=[_LAST]), two)
    memory_v_next = op.Slice(stream_v, keep, op.Constant(value_ints=[_LAST]), two)
    g = op.Reshape(op.Constant(value_int=sinks), [1])
    sink_k_next = op.Slice(op.Concat(sink_k, K, axis=2), zero, g, two)
    sink_v_next = op.Slice(op.Concat(sink_v, V, axis=2), zero, g, two)
    seen_next = op.Add(seen, s)
    return Y, memory_k_next, memory_v_next, sink_k_next, sink_v_next, seen_next


BODY = MemoryStreamAttention
CALLS = (DenseAttention,)
