"""The shared ort-cuda machinery, ONNX: ai.attnopt::ChunkedMultiHeadAttention, called by the lowerings.

Queries are cut into chunks of C rows; chunk g (positions gC .. gC+C-1) attends
one slab of keys, positions gC - before .. gC - before + width - 1, and within
it the keys j with lo <= j - i <= hi that lie in [0, N). Chunks are folded into
the batch, (B·nchunk, C, H·D) against (B·nchunk, width, H·D), and one
``com.microsoft.MultiHeadAttention`` does the work, so onnxruntime's fused CUDA
kernels run it. Segmented attention is a chunk of S against its own S keys;
a window W is a chunk of W against a 3W slab with the band |j - i| < W.

Key padding, keys outside [0, N) and the band travel as one (B·nchunk, 1, C,
width) ``attention_bias``: exact where MultiHeadAttention's ``unidirectional``
is not (it masks with a finite ``mask_filter_value``). A row with no allowed key
outputs 0, as in the portable bodies. Chunk = [C, before, width, lo, hi] (int64)
comes in as a tensor because a function cannot compute attributes for a callee.
"""

from __future__ import annotations

import onnx
import onnxscript
from onnxscript import opset18 as op

from .onnx_functions import attnopt_opset
from .ort_cuda import msft_opset

_FLOAT = onnx.TensorProto.FLOAT
_NEG_INF = float("-inf")
# A masked key's bias: finite (an all-masked row stays NaN-free inside the fused kernel) and the
# lowest float16, so it survives the cast to the model's dtype; exp() of it underflows to 0.
_MASKED = -65504.0


@onnxscript.script(attnopt_opset, default_opset=op)
def ChunkedMultiHeadAttention(Q, K, V, KeyPadding, Chunk, num_heads: int, scale: float):
    """Q (B, H, N, D), K and V (B, H, N, D), KeyPadding additive (B | 1, M); Chunk = [C, before, width, lo, hi]."""
    zero = op.Constant(value_ints=[0])
    one = op.Constant(value_ints=[1])
    two = op.Constant(value_ints=[2])
    c = op.Slice(Chunk, zero, one)
    before = op.Slice(Chunk, one, two)
    width = op.Slice(Chunk, two, op.Constant(value_ints=[3]))
    lo = op.Slice(Chunk, op.Constant(value_ints=[3]), op.Constant(value_ints=[4]))
    hi = op.Slice(Chunk, op.Constant(value_ints=[4]), op.Constant(value_ints=[5]))
    b = op.Shape(Q, start=0, end=1)
    h = op.Shape(Q, start=1, end=2)
    n = op.Shape(Q, start=2, end=3)
    d = op.Shape(Q, start=3, end=4)
    nchunk = op.Div(op.Sub(op.Add(n, c), one), c)
    n_pad = op.Mul(nchunk, c)
    folded = op.Mul(b, nchunk)
    hd = op.Mul(h, d)

    # Queries (B, H, N, D) -> (B·nchunk, C, H·D): the chunks become the batch.
    pads = op.Concat(op.Constant(value_ints=[0, 0, 0, 0, 0, 0]), op.Sub(n_pad, n), zero, axis=0)
    q = op.Reshape(op.Pad(Q, pads), op.Concat(b, h, nchunk, c, d, axis=0))
    q = op.Reshape(op.Transpose(q, perm=[0, 2, 3, 1, 4]), op.Concat(folded, c, hd, axis=0))
    # Each chunk's key slab, read with one Gather: (B, H, nchunk, width, D) -> (B·nchunk, width, H·D).
    g = op.Range(0, op.Squeeze(nchunk), 1)
    kpos = op.Add(op.Unsqueeze(op.Sub(op.Mul(g, op.Squeeze(c)), op.Squeeze(before)), one),
                  op.Unsqueeze(op.Range(0, op.Squeeze(width), 1), zero))  # (nchunk, width)
    kidx = op.Max(op.Min(kpos, op.Sub(n, one)), zero)
    slab = op.Concat(folded, width, hd, axis=0)
    k = op.Reshape(op.Transpose(op.Gather(K, kidx, axis=2), perm=[0, 2, 3, 1, 4]), slab)
    v = op.Reshape(op.Transpose(op.Gather(V, kidx, axis=2), perm=[0, 2, 3, 1, 4]), slab)

    # Per chunk, the additive bias of each slab key: key padding, -inf outside [0, N).
    kp_idx = op.Min(kidx, op.Sub(op.Shape(KeyPadding, start=1, end=2), one))
    kp = op.Cast(op.Gather(KeyPadding, kp_idx, axis=1), to=_FLOAT)  # (Bk, nchunk, width)
    inside = op.And(op.GreaterOrEqual(kpos, zero), op.Less(kpos, n))
    key_bias = op.Unsqueeze(op.Where(inside, kp, _NEG_INF), two)  # (Bk, nchunk, 1, width)
    # The band, per chunk: query gC + r and key kpos[g, col] allowed iff lo <= key - query <= hi.
    qpos = op.Add(op.Unsqueeze(op.Mul(g, op.Squeeze(c)), one), op.Unsqueeze(op.Range(0, op.Squeeze(c), 1), zero))
    offset = op.Sub(op.Unsqueeze(kpos, one), op.Unsqueeze(qpos, two))  # (nchunk, C, width)
    band = op.And(op.GreaterOrEqual(offset, lo), op.LessOrEqual(offset, hi))
    allowed = op.And(op.Not(op.IsInf(key_bias, detect_negative=1, detect_positive=0)), band)  # (Bk, nchunk, C, width)
    bias = op.Where(allowed, op.Max(key_bias, _MASKED), _MASKED)
    bias = op.Reshape(op.Expand(bias, op.Concat(b, nchunk, c, width, axis=0)),
                      op.Concat(folded, one, c, width, axis=0))
    y = msft_opset.MultiHeadAttention(q, k, v, None, None, op.CastLike(bias, Q), num_heads=num_heads, scale=scale)

    # Rows with no allowed key output 0 (the fused kernel would average the masked keys). A MatMul
    # against ones counts them: ReduceMax's axes changed form at opset 18, and bodies serve 17+.
    ones = op.Expand(op.Constant(value_float=1.0), op.Concat(width, one, axis=0))
    any_key = op.Greater(op.MatMul(op.Cast(allowed, to=_FLOAT), ones), 0.0)  # (Bk, nchunk, C, 1)
    y = op.Where(any_key, op.Reshape(y, op.Concat(b, nchunk, c, hd, axis=0)), op.CastLike(0.0, Q))
    y = op.Transpose(op.Reshape(y, op.Concat(b, n_pad, h, d, axis=0)), perm=[0, 2, 1, 3])
    return op.Slice(y, zero, n, two)
