"""memory's ONNX body: ai.attnopt::MemoryAttention, the band machinery with band (S, M_mem, 0)."""

from __future__ import annotations

import onnx
import onnxscript
from onnxscript import opset18 as op

from ..band_onnx import CALLS as BAND_CALLS
from ..band_onnx import BandAttention
from ..onnx_functions import attnopt_opset


@onnxscript.script(attnopt_opset, default_opset=op)
def MemoryAttention(Q, K, V, Mask, KeyPadding, SinkLogits, segment_size: int, memory: int, sinks: int, scale: float,
                    causal: int, softcap: float):
    """seg(i)·S − M_mem <= j < (seg(i)+1)·S or j < sinks; cost O(N·(S+M_mem+G)·D). Empty rows output 0."""
    s = op.Reshape(op.Constant(value_int=segment_size), [1])
    band = op.Concat(s, op.Reshape(op.Constant(value_int=memory), [1]), op.Constant(value_ints=[0]),
                     op.Reshape(op.Constant(value_int=sinks), [1]), s, axis=0)  # query blocks = segments
    scalars = op.Concat(op.Reshape(op.Constant(value_float=scale), [1]), op.Reshape(op.Constant(value_float=softcap), [1]),
                        op.Reshape(op.Cast(op.Constant(value_int=causal), to=onnx.TensorProto.FLOAT), [1]), axis=0)
    return BandAttention(Q, K, V, Mask, KeyPadding, SinkLogits, band, scalars)


BODY = MemoryAttention
CALLS = BAND_CALLS
