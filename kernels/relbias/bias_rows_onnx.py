"""The relbias bias of consecutive query rows in ONNX, shared by the portable body and the ort-cuda lowering.

Rows of consecutive positions make a Toeplitz block: bias(i, j) depends on
j − p_i only. So the block is built from one vector u of its M + rows − 1
distinct distances a head (``RelativeBiasDistances``; one more, for the
layout), laid out by ``ToeplitzRows`` with Tile/Slice/Reshape (copies; a Gather
over a (rows, M) index costs onnxruntime several times more: it was a third of
the portable body's time). Causality rides on u too (a future distance is −inf),
so it costs nothing per score. The split lets a caller cast u (M + rows
values a head) to its dtype before the layout writes rows·M of them.
"""

from __future__ import annotations

import onnx
import onnxscript
from onnxscript import opset18 as op

from ..onnx_functions import attnopt_opset

_FLOAT = onnx.TensorProto.FLOAT


@onnxscript.script(attnopt_opset, default_opset=op)
def RelativeBiasDistances(per_distance, slope, first, rows, m, is_causal):
    """(H, M + rows) float: u[t], the bias at δ = t − (rows − 1) − first: per_distance[h, clamp(δ, −R, R) + R]
    − slope[h]·|δ|, and −inf at δ > 0 where is_causal (the last value is one distance past the block's need:
    ``ToeplitzRows`` wants the length). per_distance (H, 2R + 1) and slope (H, 1) float; first, rows, m (1,) int64."""
    one = op.Constant(value_ints=[1])
    r = op.Div(op.Sub(op.Shape(per_distance, start=1, end=2), one), 2)
    dist = op.Sub(op.Range(0, op.Squeeze(op.Add(m, rows)), 1), op.Add(op.Sub(rows, one), first))
    u = op.Sub(op.Gather(per_distance, op.Add(op.Min(op.Max(dist, op.Neg(r)), r), r), axis=1),
               op.Mul(slope, op.Cast(op.Abs(dist), to=_FLOAT)))
    return op.Where(op.And(op.Greater(dist, 0), is_causal), op.Constant(value_float=float("-inf")), u)


@onnxscript.script(attnopt_opset, default_opset=op)
def ToeplitzRows(u, rows):
    """(H, rows, L − 1) from u (H, L), any dtype: row i is u[rows − 1 − i : L − i]. With L = M + rows its first M
    columns are the block's bias; the other rows − 1 continue each diagonal, and a caller slices them off or
    gives them keys it masks (one copy fewer)."""
    one = op.Constant(value_ints=[1])
    h = op.Shape(u, start=0, end=1)
    width = op.Sub(op.Shape(u, start=1, end=2), one)  # L − 1
    # Read u tiled, from offset rows − 1, in rows of L − 1: row i starts at rows − 1 + i·(L − 1), which is
    # rows − 1 − i modulo L, so each row is the one before shifted back by one and none wraps. One Slice with a
    # positive step: the reversed Slice this replaced was onnxruntime CUDA's slowest op in the lowering.
    start = op.Sub(rows, one)
    flat = op.Slice(op.Tile(u, op.Concat(one, op.Add(rows, one), axis=0)), start, op.Add(start, op.Mul(rows, width)),
                    one)  # (H, rows·(L − 1))
    return op.Reshape(flat, op.Concat(h, rows, width, axis=0))


CALLS = (RelativeBiasDistances, ToeplitzRows)
