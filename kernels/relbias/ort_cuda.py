"""relbias's ort-cuda lowering: ai.attnopt::RelbiasAttentionOrtCuda, MultiHeadAttention with attention_bias, by chunks.

relbias is dense attention plus a relative-position bias, so its fused form is
``com.microsoft.MultiHeadAttention`` with the whole bias (relative term, key
padding, the dense remainder mask, causality) as ``attention_bias``. Built for
every query at once that bias is H·N·M values (6 GiB of float16 for H=12 at
N=M=16384, past onnxruntime's 2^31-element limit on CUDA). So a ``Scan`` walks
the queries in chunks of C rows, C chosen from the shapes so that a chunk's
(H, C, M) bias holds about ``step_elements`` values (``ATTRS``), and each step
is one MultiHeadAttention call with its chunk's bias. Peak extra memory is then
fixed whatever the length, and symbolic lengths are served.

The bias is the portable body's own Toeplitz construction (``bias_rows_onnx``),
built in the model's dtype and C − 1 columns wider than M: the keys get C − 1
zero rows past the end, which the key padding masks. That costs
MultiHeadAttention (C − 1)/M more work and saves a copy of every bias value
(on the H200 at N = 16384: 431 ms for the 12-layer float16 BERT against 482
with the copy; at N = 4096, 54 against 41, where C is most of N).
"""

from __future__ import annotations

import onnx
import onnxscript
from onnxscript import graph
from onnxscript import opset18 as op

from ..onnx_functions import attnopt_opset
from ..row_max_onnx import LastAxisMax
from ..ort_cuda import LoweringFacts, msft_opset
from .bias_rows_onnx import CALLS as BIAS_CALLS
from .bias_rows_onnx import RelativeBiasDistances, ToeplitzRows

_FLOAT = onnx.TensorProto.FLOAT
# A chunk's bias, in values (per batch row of the masks): 2^27 is 256 MiB of float16, and at N = M = 16384,
# H = 12 a layer takes 26 steps of 641 queries.
STEP_ELEMENTS = 2**27
KEY_ALIGN = 64


@onnxscript.script(attnopt_opset, default_opset=op)
def RelbiasAttentionOrtCuda(Q, K, V, Mask, KeyPadding, SinkLogits, slopes, table, kind: str, num_buckets: int,
                            max_distance: int, bidirectional: int, table_file: str, init_std: float,
                            bias_scale: float, scale: float, causal: int, softcap: float, num_heads: int,
                            step_elements: int):
    """softmax(s·QKᵀ + bias) V through MultiHeadAttention, a chunk of queries at a time with its bias materialised.
    SinkLogits are not read: a call with sink logits keeps the portable body (``LoweringFacts``)."""
    zero = op.Constant(value_ints=[0])
    one = op.Constant(value_ints=[1])
    b = op.Shape(Q, start=0, end=1)
    h = op.Shape(Q, start=1, end=2)
    n = op.Shape(Q, start=2, end=3)
    d = op.Shape(Q, start=3, end=4)
    m = op.Shape(K, start=2, end=3)
    hd = op.Mul(h, d)
    off = op.Sub(m, n)  # query i sits at position i + off
    # Rows a chunk: as many as step_elements allows, at least one, at most N. Host arithmetic on shapes.
    c = op.Max(op.Min(op.Div(op.Unsqueeze(op.Constant(value_int=step_elements), zero), op.Mul(h, m)), n), one)
    # The keys grow by C − 1 (below), a multiple of 64 where C > 64: on the H200, MultiHeadAttention over
    # 16384 + 681 keys took 1.6 times as long as over 16384 + 640. (Capping the growth at M/16 keys made N = 4096
    # slower: 16 steps a layer instead of 2.)
    align = op.Constant(value_ints=[KEY_ALIGN])
    c = op.Where(op.Greater(c, align), op.Add(op.Mul(op.Div(op.Sub(c, one), align), align), one), c)
    nchunk = op.Div(op.Sub(op.Add(n, c), one), c)
    is_causal = op.Cast(op.Constant(value_int=causal), to=onnx.TensorProto.BOOL)

    # ToeplitzRows lays a chunk's bias out C − 1 columns wider than M (slicing them off would cost a copy): the
    # keys and values get C − 1 zero rows past the end, which the key padding masks.
    extra = op.Sub(c, one)
    m_wide = op.Add(m, extra)
    kv_pads = op.Concat(op.Constant(value_ints=[0, 0, 0, 0, 0, 0]), extra, zero, axis=0)
    k = op.Reshape(op.Transpose(op.Pad(K, kv_pads), perm=[0, 2, 1, 3]), op.Concat(b, m_wide, hd, axis=0))
    v = op.Reshape(op.Transpose(op.Pad(V, kv_pads), perm=[0, 2, 1, 3]), op.Concat(b, m_wide, hd, axis=0))
    scale_t = op.Constant(value_float=bias_scale)
    per_distance = op.Expand(op.Mul(op.Cast(table, to=_FLOAT), scale_t),
                             op.Concat(h, op.Shape(table, start=1, end=2), axis=0))  # (H, 2R + 1)
    slope = op.Unsqueeze(op.Expand(op.Mul(op.Cast(slopes, to=_FLOAT), scale_t), h), [1])  # (H, 1)
    neg_inf = op.CastLike(op.Constant(value_float=float("-inf")), Q)  # the Scan body reads outer values, not globals
    bk = op.Shape(KeyPadding, start=0, end=1)
    kp = op.Unsqueeze(op.Concat(op.Expand(op.CastLike(KeyPadding, Q), op.Concat(bk, m, axis=0)),
                                op.Expand(neg_inf, op.Concat(bk, extra, axis=0)), axis=1), [1, 2])  # (Bk, 1, 1, M')
    # A per-key dense mask (its last axis M, not 1) is widened with zeros each step; the key padding masks those.
    mask_cols = op.Shape(Mask, start=3, end=4)
    mask_pads = op.Concat(op.Constant(value_ints=[0, 0, 0, 0, 0, 0, 0]),
                          op.Mul(extra, op.Cast(op.Greater(mask_cols, one), to=onnx.TensorProto.INT64)), axis=0)
    mask_rows = op.Sub(op.Shape(Mask, start=2, end=3), one)

    # Scan inputs: query chunks (nchunk, B, C, H·D) and their rows (nchunk, C).
    pads = op.Concat(op.Constant(value_ints=[0, 0, 0, 0, 0, 0]), op.Sub(op.Mul(nchunk, c), n), zero, axis=0)
    q = op.Reshape(op.Pad(Q, pads), op.Concat(b, h, nchunk, c, d, axis=0))
    q_chunks = op.Reshape(op.Transpose(q, perm=[2, 0, 3, 1, 4]), op.Concat(nchunk, b, c, hd, axis=0))
    rows = op.Reshape(op.Range(0, op.Squeeze(op.Mul(nchunk, c)), 1), op.Concat(nchunk, c, axis=0))

    @graph()
    def step(count, q_chunk, row):
        first = op.Add(op.Slice(row, zero, one), off)
        # The bias in the model's dtype from the start: u is M + C values a head, the layout writes C·M'.
        u = op.CastLike(RelativeBiasDistances(per_distance, slope, first, c, m, is_causal), Q)
        dense = op.Gather(Mask, op.Min(op.Min(row, op.Sub(n, one)), mask_rows), axis=2)  # (Bm, Hm, C, Mm)
        # The masks summed at their own size first (key padding alone is (Bk, 1, 1, M')), so the bias sees one Add.
        masks = op.Add(kp, op.Pad(op.CastLike(dense, Q), mask_pads))
        bias = op.Add(op.Unsqueeze(ToeplitzRows(u, c), [0]), masks)  # (Bb, H, C, M')
        # A row with no allowed key (all −inf) comes out NaN from MultiHeadAttention; it outputs 0, as in the
        # portable body.
        any_key = op.Greater(LastAxisMax(bias), neg_inf)  # (Bb, H, C, 1)
        y = msft_opset.MultiHeadAttention(q_chunk, k, v, None, None, bias, num_heads=num_heads, scale=scale)
        y = op.Transpose(op.Reshape(y, op.Concat(b, c, h, d, axis=0)), perm=[0, 2, 1, 3])  # (B, H, C, D)
        return op.Add(count, 1), op.Where(any_key, y, op.CastLike(0.0, Q))

    steps, outs = op.Scan(op.Constant(value_int=0), q_chunks, rows, body=step, num_scan_inputs=2)
    out = op.Reshape(op.Transpose(outs, perm=[1, 2, 0, 3, 4]), op.Concat(b, h, op.Mul(nchunk, c), d, axis=0))
    return op.Slice(out, zero, n, op.Constant(value_ints=[2]))


LOWERING = RelbiasAttentionOrtCuda
ATTRS = {"step_elements": STEP_ELEMENTS}
CALLS = BIAS_CALLS


def why_not(facts: LoweringFacts) -> str | None:
    """Why MultiHeadAttention with a bias is not used here (None: it is, and it is exact)."""
    return facts.common_refusal(takes_dense_mask=True)
