"""segmented's ONNX body: ai.attnopt::SegmentedAttention, cost O(N·(S+G)·D).

The op contract is ``kernels.spec``'s; the body computes in float32 and picks
its path at run time with ``If`` (keep the nesting at two levels: onnxruntime
1.31 crashed in constant folding on a third).

The shapes its branches need are computed before the ``If`` and its conditions
read shapes, never values: ``onnx_functions`` says why (the CUDA provider).
"""

from __future__ import annotations

import onnx
import onnxscript
from onnxscript import opset18 as op

from ..onnx_functions import attnopt_opset
from ..sink_onnx import SoftmaxWithSink
from ..softcap_onnx import Softcap

# Python globals are embedded by onnxscript as constants / attribute values.
_FLOAT = onnx.TensorProto.FLOAT
_BOOL = onnx.TensorProto.BOOL
_NEG_INF = float("-inf")
_KT_PERM = [0, 1, 2, 3, 5, 4]  # kᵀ of the (B, Hkv, 1, nseg, S, D) segment view


@onnxscript.script(attnopt_opset, default_opset=op)
def SegmentedAttention(Q, K, V, Mask, KeyPadding, SinkLogits, segment_size: int, sinks: int, scale: float,
                       causal: int, softcap: float):
    """allowed(i, j) = i // S == j // S or j < sinks; cost O(N·(S+G)·D).

    N may be symbolic: the padding of a ragged last segment is computed from
    Shape at run time (padded keys are masked). Requires N == M (a KV-cache
    step runs as memory with no memory). Rows with no allowed key output 0.
    """
    zero = op.Constant(value_ints=[0])
    one = op.Constant(value_ints=[1])
    last_axis = op.Constant(value_ints=[-1])
    # Key padding, (Bk, 1, Mk), is read at the visited key columns only (never added to a dense mask).
    flat_kp = op.Reshape(KeyPadding, op.Concat(op.Shape(KeyPadding, start=0, end=1), one, last_axis, axis=0))
    kp_last = op.Sub(op.Shape(KeyPadding, start=1, end=2), one)
    # Softcapping (c·tanh(s / c)) has to see the raw scores, so it only runs on the general path.
    cap = op.Constant(value_float=softcap)
    capped = op.Greater(cap, op.Constant(value_float=0.0))
    q = op.Cast(Q, to=_FLOAT)
    k = op.Cast(K, to=_FLOAT)
    v = op.Cast(V, to=_FLOAT)

    # Sizes as 1-element int64 tensors (they feed Concat'ed shapes).
    b = op.Shape(Q, start=0, end=1)
    h = op.Shape(Q, start=1, end=2)
    n = op.Shape(Q, start=2, end=3)
    d = op.Shape(Q, start=3, end=4)
    hkv = op.Shape(K, start=1, end=2)
    rep = op.Div(h, hkv)
    # seg(i) is the same for S >= N, and G >= N already allows every key.
    seg = op.Min(op.Reshape(op.Constant(value_int=segment_size), one), n)
    g_n = op.Min(op.Reshape(op.Constant(value_int=sinks), one), n)
    nseg = op.Div(op.Sub(op.Add(n, seg), one), seg)
    n_pad = op.Mul(nseg, seg)

    # Scale q once, (B, H, N, D), rather than the (.., N, S+G) scores.
    q = op.Mul(q, op.CastLike(op.Constant(value_float=scale), q))
    two = op.Constant(value_ints=[2])
    not_causal = op.Not(op.Cast(op.Constant(value_int=causal), to=_BOOL))

    # Run-time facts pick cheaper paths (If): on a CPU every pass over the
    # (.., N, S+G) scores costs about as much as a MatMul, so the common cases
    # (no mask, whole segments, not causal) run with no bias at all.
    ragged = op.Squeeze(op.Less(n, n_pad))
    # "No mask" is the (1,1,1,1) zero and "no key padding" the (1,1) zero. A one-element mask or padding
    # adds one number to every score, which softmax ignores, unless it is −inf: then no key is allowed
    # and the plain path's rows are zeroed below (a (1,)-sized test, no value read on the host).
    no_mask = op.And(op.Equal(op.Size(Mask), op.Constant(value_int=1)),
                     op.Equal(op.Size(KeyPadding), op.Constant(value_int=1)))
    one_value = op.Add(op.Cast(op.Slice(op.Reshape(Mask, last_axis), zero, one), to=_FLOAT),
                       op.Cast(op.Slice(op.Reshape(KeyPadding, last_axis), zero, one), to=_FLOAT))
    unmasked = op.And(op.And(op.And(no_mask, op.Not(ragged)), op.Squeeze(not_causal)), op.Not(capped))
    # Sinks add nothing when there are none or when every sink is in the only segment.
    sinks_inside = op.Squeeze(op.Or(op.Equal(g_n, zero), op.Equal(nseg, one)))
    # The plain path leaves out a one-element mask, which a softmax ignores but a sink logit's column would not.
    no_sink_logits = op.Equal(op.Size(SinkLogits), op.Constant(value_int=0))
    plain_local = op.And(op.And(unmasked, sinks_inside), no_sink_logits)

    # View q as (B, Hkv, rep, nseg, S, D) and k, v as (B, Hkv, 1, nseg, S, D), so GQA
    # is a MatMul broadcast. Only the masked path pads a ragged tail: the plain path
    # has whole segments and takes these views without a copy.
    q_shape = op.Concat(b, hkv, rep, nseg, seg, d, axis=0)
    kv_shape = op.Concat(b, hkv, one, nseg, seg, d, axis=0)
    # The masked path's shapes (see the module docstring: computed here, not in the branch).
    pads = op.Concat(op.Constant(value_ints=[0, 0, 0, 0, 0, 0]), op.Sub(n_pad, n), zero, axis=0)
    sink_shape = op.Concat(b, hkv, one, nseg, g_n, d, axis=0)
    seg_scalar = op.Squeeze(seg)
    nseg_scalar = op.Squeeze(nseg)
    sinks_scalar = op.Squeeze(g_n)
    nseg_sinks = op.Concat(nseg, g_n, axis=0)
    m_rows = op.Shape(Mask, start=2, end=3)
    m_cols = op.Shape(Mask, start=3, end=4)
    m_col_last = op.Sub(m_cols, one)
    hm = op.Shape(Mask, start=1, end=2)
    bm = op.Shape(Mask, start=0, end=1)
    flat_mask_shape = op.Concat(bm, hm, last_axis, axis=0)
    keys = op.Add(seg, g_n)
    column_shape = op.Concat(b, hkv, one, nseg, keys, one, axis=0)
    ones_shape = op.Concat(b, hkv, rep, nseg, seg, one, axis=0)
    local_ok_shape = op.Concat(nseg, seg, seg, axis=0)
    sink_ok_shape = op.Concat(nseg, seg, g_n, axis=0)
    m_row_last = op.Sub(m_rows, one)
    hm_kv = op.Min(hm, hkv)  # the mask's heads Hm are 1 or H; split them like the scores' (Hkv, rep)
    bias_shape = op.Concat(bm, hm_kv, op.Div(hm, hm_kv), nseg, seg, keys, axis=0)
    # A mask that varies by key only (key padding, (B|1, 1, 1, M)) with no causality
    # is a per-key bias: carried as an extra q·k column ([q, 1]·[k, bias]) it costs
    # no pass over the scores.
    per_key = op.And(op.Squeeze(op.And(op.And(op.Equal(m_rows, one), op.Equal(hm, one)), not_causal)),
                     op.Not(capped))

    if plain_local:
        qs = op.Reshape(q, q_shape)
        out = op.MatMul(op.Softmax(op.MatMul(qs, op.Transpose(op.Reshape(k, kv_shape), perm=_KT_PERM)), axis=-1),
                        op.Reshape(v, kv_shape))
        out = op.Where(op.IsInf(one_value, detect_positive=0), 0.0, out)  # a −inf "no mask": no key allowed
    else:
        qs = op.Reshape(op.Pad(q, pads), q_shape)
        ks = op.Reshape(op.Pad(k, pads), kv_shape)
        vs = op.Reshape(op.Pad(v, pads), kv_shape)
        # Each segment's keys are its own S keys followed by the G sinks: concatenating
        # the (small) keys, not the (large) scores, keeps one MatMul / Softmax / MatMul.
        k_sink = op.Expand(op.Unsqueeze(op.Slice(k, zero, g_n, two), op.Constant(value_ints=[2, 3])), sink_shape)
        v_sink = op.Expand(op.Unsqueeze(op.Slice(v, zero, g_n, two), op.Constant(value_ints=[2, 3])), sink_shape)
        k_all = op.Concat(ks, k_sink, axis=4)  # (B, Hkv, 1, nseg, S+G, D)
        v_all = op.Concat(vs, v_sink, axis=4)
        # Positions: r within a segment, g the segment, pos = g*S + r, j a sink key.
        r = op.Range(0, seg_scalar, 1)
        g = op.Range(0, nseg_scalar, 1)
        j = op.Range(0, sinks_scalar, 1)
        pos = op.Add(op.Unsqueeze(op.Mul(g, seg_scalar), one), op.Unsqueeze(r, zero))  # (nseg, S)
        # A sink key inside this segment is already a local column: (nseg, G).
        sink_new = op.Not(op.Equal(op.Unsqueeze(op.Div(j, seg_scalar), zero), op.Unsqueeze(g, one)))
        flat_mask = op.Reshape(Mask, flat_mask_shape)
        # The key padding at each segment's columns (its own keys, then the sinks): (Bk, 1, nseg, S+G).
        kp_cols = op.Concat(op.Min(pos, kp_last), op.Expand(op.Unsqueeze(op.Min(j, kp_last), zero), nseg_sinks),
                            axis=-1)
        kp_bias = op.Cast(op.Gather(flat_kp, kp_cols, axis=2), to=_FLOAT)
        if per_key:
            key_ok = op.Concat(op.Less(pos, n), op.Expand(sink_new, nseg_sinks), axis=-1)
            key_idx = op.Concat(op.Min(pos, m_col_last),  # (nseg, S+G)
                                op.Expand(op.Unsqueeze(op.Min(j, m_col_last), zero), nseg_sinks), axis=-1)
            key_bias = op.Where(key_ok, op.Add(op.Cast(op.Gather(flat_mask, key_idx, axis=2), to=_FLOAT), kp_bias),
                                _NEG_INF)  # (max(Bm, Bk), 1, nseg, S+G)
            column = op.Expand(op.Unsqueeze(key_bias, op.Constant(value_ints=[2, 5])), column_shape)
            ones = op.Expand(op.Constant(value_float=1.0), ones_shape)
            q_ext = op.Concat(qs, ones, axis=5)
            k_ext = op.Concat(k_all, column, axis=5)
            scores = op.MatMul(q_ext, op.Transpose(k_ext, perm=_KT_PERM))
        else:
            # Allowed keys, (nseg, S_query, S+G): local columns then sink columns.
            local_ok = op.And(
                op.Unsqueeze(op.Less(pos, n), one),  # padded keys
                op.Or(op.LessOrEqual(op.Unsqueeze(r, zero), op.Unsqueeze(r, one)), not_causal),
            )
            sink_ok = op.And(op.Unsqueeze(sink_new, one),
                             op.Or(op.LessOrEqual(j, op.Unsqueeze(pos, two)), not_causal))
            allowed = op.Concat(op.Expand(local_ok, local_ok_shape), op.Expand(sink_ok, sink_ok_shape), axis=-1)
            # The user mask's diagonal blocks and sink columns, read with one Gather
            # from the flattened (Nm*Mm) axis: O(N·(S+G)) entries, never N×N (the
            # Reshape aliases the input). Size-1 rows/columns broadcast; clamping maps
            # padded positions onto real ones. Cast after the Gather, so a half-precision
            # mask is never copied whole. Folding `allowed` in gives one bias of at most
            # the mask's own batch x heads x N x (S+G).
            row_base = op.Unsqueeze(op.Mul(op.Min(pos, m_row_last), m_cols), two)
            local_idx = op.Add(row_base, op.Unsqueeze(op.Min(pos, m_col_last), one))
            sink_idx = op.Add(row_base, op.Min(j, m_col_last))
            mask_blocks = op.Cast(op.Gather(flat_mask, op.Concat(local_idx, sink_idx, axis=-1), axis=2),
                                  to=_FLOAT)
            bias = op.Reshape(op.Where(allowed, mask_blocks, _NEG_INF), bias_shape)  # (Bm, Hm, nseg, S, S+G)
            raw = op.MatMul(qs, op.Transpose(k_all, perm=_KT_PERM))
            raw = Softcap(raw, cap)
            scores = op.Add(op.Add(raw, bias), op.Unsqueeze(kp_bias, op.Constant(value_ints=[2, 4])))
        masked = op.MatMul(SoftmaxWithSink(scores, SinkLogits), v_all)
        out = op.Where(op.IsNaN(masked), 0.0, masked)  # rows with no allowed key -> 0 (N×D, not scores)
    out = op.Slice(op.Reshape(out, op.Concat(b, h, n_pad, d, axis=0)), zero, n, two)
    Y = op.CastLike(out, Q)
    return Y


BODY = SegmentedAttention
CALLS = (SoftmaxWithSink,)
