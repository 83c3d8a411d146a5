"""Learned sink logits in the ONNX bodies: ``SoftmaxWithSink(Scores, SinkLogits)``, the one softmax they call.

GPT-OSS gives each query head h one more softmax column of score σ_h and value
zero, so out_i = Σ_j e^{s_ij} v_j / (Σ_j e^{s_ij} + e^{σ_h}) (``kernels.spec``).
The column is appended to the scores, softmaxed with them and dropped: what
comes back are the probabilities of the scores' own columns, which the caller
multiplies by its values as before. A row with no allowed key gets weight 1 on
the sink and so outputs 0 with no NaN; with σ_h = −inf as well it is NaN, which
the callers' existing Where(IsNaN(out), 0, out) zeroes.

"No sink" is an empty (0,) SinkLogits, and the choice is an ``If`` on its size,
for the reason ``softcap_onnx`` gives: the rewrite passes a constant, onnxruntime
folds an ``If`` with a constant condition at load, and a model without sinks runs
the plain Softmax and nothing else. The condition reads a size, never a value
(``onnx_functions``: the CUDA provider).
"""

from __future__ import annotations

import onnxscript
from onnxscript import opset18 as op

from .onnx_functions import attnopt_opset


@onnxscript.script(attnopt_opset, default_opset=op)
def SoftmaxWithSink(Scores, SinkLogits):
    """Softmax over the last axis of Scores (B, Hkv, rep, ..., L), with SinkLogits (H = Hkv·rep,) as a sink column.

    Query head hk·rep + r is Scores' (hk, r), so the (Hkv, rep) axes read as H in row-major order.
    """
    if op.Greater(op.Size(SinkLogits), op.Constant(value_int=0)):
        # (B, H, rows, L): a view of the scores with the heads in one axis, where the (H,) logits broadcast.
        keys = op.Shape(Scores, start=-1)
        flat = op.Reshape(Scores, op.Concat(op.Shape(Scores, start=0, end=1), op.Shape(SinkLogits),
                                            op.Constant(value_ints=[-1]), keys, axis=0))
        sink = op.Reshape(op.CastLike(SinkLogits, Scores), op.Constant(value_ints=[1, -1, 1, 1]))
        column = op.Expand(sink, op.Concat(op.Shape(flat, start=0, end=3), op.Constant(value_ints=[1]), axis=0))
        probs = op.Softmax(op.Concat(flat, column, axis=-1), axis=-1)
        probs = op.Reshape(op.Slice(probs, op.Constant(value_ints=[0]), keys, op.Constant(value_ints=[-1])),
                           op.Shape(Scores))
    else:
        probs = op.Softmax(Scores, axis=-1)
    return probs
