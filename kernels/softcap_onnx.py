"""Score softcapping in the ONNX bodies: ``Softcap(scores, cap)`` = cap·tanh(scores / cap) where cap > 0.

One function every body calls, so the rule lives once. It is an ``If`` on the
cap, not a ``Where``: onnxruntime inlines the bodies at load, where the cap
(an attribute or an initializer) becomes a constant, and its constant folding
replaces an ``If`` with a constant condition by the branch it takes. At cap = 0
(every model but Gemma-2-style ones) nothing of the softcap is left to run; a
``Where`` stays, and computes the Div, Tanh and Mul of every score it then
throws away. Bodies need not list it in ``CALLS``: ``onnx_functions`` always
knows it.
"""

from __future__ import annotations

import onnxscript
from onnxscript import opset18 as op

from .onnx_functions import attnopt_opset


@onnxscript.script(attnopt_opset, default_opset=op)
def Softcap(Scores, Cap):
    """cap·tanh(Scores / cap) where the one-element Cap is > 0, else Scores unchanged."""
    if op.Greater(op.ReduceMax(Cap, keepdims=0), op.Constant(value_float=0.0)):
        capped = op.Mul(op.Tanh(op.Div(Scores, Cap)), Cap)
    else:
        capped = op.Identity(Scores)
    return capped
