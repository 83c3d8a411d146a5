"""window's ONNX body: ai.attnopt::WindowAttention, the band machinery with band (1, W - 1, W - 1)."""

from __future__ import annotations

import onnx
import onnxscript
from onnxscript import opset18 as op

from ..band_onnx import CALLS as BAND_CALLS
from ..band_onnx import BandAttention
from ..onnx_functions import attnopt_opset


@onnxscript.script(attnopt_opset, default_opset=op)
def WindowAttention(Q, K, V, Mask, KeyPadding, SinkLogits, window: int, sinks: int, scale: float, causal: int,
                    softcap: float):
    """|i - j| < W or j < sinks; cost O(N·(2W+G)·D), O(N·(W+G)·D) causal. Rows with no allowed key output 0."""
    w = op.Constant(value_int=window)
    is_causal = op.Constant(value_int=causal)
    before = op.Sub(w, 1)
    # A causal query never sees the keys after it: drop the band's right half (as kernels.window.op does).
    after = op.Mul(before, op.Sub(1, is_causal))
    # Query blocks of about a quarter of the band, 16..256 rows (kernels.band.query_block).
    block = op.Max(op.Min(op.Div(op.Add(op.Add(before, after), 2), 4), 256), 16)
    band = op.Concat(op.Constant(value_ints=[1]), op.Reshape(before, [1]), op.Reshape(after, [1]),
                     op.Reshape(op.Constant(value_int=sinks), [1]), op.Reshape(block, [1]), axis=0)
    scalars = op.Concat(op.Reshape(op.Constant(value_float=scale), [1]), op.Reshape(op.Constant(value_float=softcap), [1]),
                        op.Reshape(op.Cast(is_causal, to=onnx.TensorProto.FLOAT), [1]), axis=0)
    return BandAttention(Q, K, V, Mask, KeyPadding, SinkLogits, band, scalars)


BODY = WindowAttention
CALLS = BAND_CALLS
