"""The maximum over the last axis in the ONNX bodies: ``LastAxisMax(x)``, kept as a size-1 axis.

ArgMax then GatherElements. ReduceMax would say it directly, but its axes moved
from an attribute to an input in opset 18, and the bodies run on opsets 17..23;
TopK(k=1), the other way to stay inside them, sorts every row on onnxruntime's
CUDA provider. Bodies need not list it in ``CALLS``: ``onnx_functions`` always
knows it.
"""

from __future__ import annotations

import onnxscript
from onnxscript import opset18 as op

from .onnx_functions import attnopt_opset


@onnxscript.script(attnopt_opset, default_opset=op)
def LastAxisMax(X):
    """max over the last axis, kept as a size-1 axis; −inf for an all −inf row."""
    return op.GatherElements(X, op.ArgMax(X, axis=-1, keepdims=1), axis=-1)
