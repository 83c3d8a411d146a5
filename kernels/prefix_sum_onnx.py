"""Running sums along an axis in the ONNX bodies and rewrites: ``PrefixSum(x)``, over axis −2.

onnxruntime's CUDA CumSum gives each output element its own thread, which adds up
that element's whole prefix afresh: O(L²) work along an axis of length L (10 ms a
call over 16384 positions of a (B, H, R, S, b) one-hot on the H200; BENCHMARKS.md,
issue 10). So the sum runs in two levels: CumSum within blocks of SCAN_BLOCK
positions, then an exclusive CumSum of the blocks' totals across the blocks, added
back. Both levels stay short: L·SCAN_BLOCK / 2 and (L / SCAN_BLOCK)² / 2 additions
a column, balanced near L = SCAN_BLOCK³ (32 covers 4k to 64k). The CPU provider
sums in one pass either way.

The axis is −2 of any rank ≥ 2 (``(..., L, C)``): the callers' running counts and
sums all have a trailing axis of columns (buckets, or a head's value dims); a
plain vector is unsqueezed to (L, 1). Integer and float inputs both work. Bodies
need not list it in ``CALLS``, and a rewrite may call it as an ``ai.attnopt`` node:
``onnx_functions`` always knows it.
"""

from __future__ import annotations

import onnxscript
from onnxscript import opset18 as op

from .onnx_functions import attnopt_opset

SCAN_BLOCK = 32


@onnxscript.script(attnopt_opset, default_opset=op)
def PrefixSum(X):
    """The inclusive running sum of X (..., L, C) along axis −2, in two levels (module docstring)."""
    t = op.Constant(value_ints=[SCAN_BLOCK])
    lead = op.Shape(X, start=0, end=-2)
    length = op.Shape(X, start=-2, end=-1)
    cols = op.Shape(X, start=-1)
    blocks = op.Div(op.Sub(op.Add(length, t), op.Constant(value_ints=[1])), t)
    # Whole blocks: zeros after the last position (a Concat, not a Pad: onnxruntime's CUDA Pad has no integer
    # kernel and falls back to the host).
    tail = op.Expand(op.CastLike(op.Constant(value_int=0), X),
                     op.Concat(lead, op.Sub(op.Mul(blocks, t), length), cols, axis=0))
    whole = op.Reshape(op.Concat(X, tail, axis=-2), op.Concat(lead, blocks, t, cols, axis=0))
    inner = op.CumSum(whole, op.Constant(value_int=-2))  # within each block
    totals = op.Slice(inner, op.Sub(t, op.Constant(value_ints=[1])), t, op.Constant(value_ints=[-2]))
    before = op.CumSum(totals, op.Constant(value_int=-3), exclusive=1)  # the blocks before
    summed = op.Reshape(op.Add(inner, before), op.Concat(lead, op.Mul(blocks, t), cols, axis=0))
    return op.Slice(summed, op.Constant(value_ints=[0]), length, op.Constant(value_ints=[-2]))
