"""The sorted-bucket machinery, ONNX: ai.attnopt::BucketAttention, called by the lsh and routed bodies.

Same math and parts as ``kernels.buckets`` (read that first); the hash rounds
are blocked differently (below): the torch op pads every query block to the
longest bucket's key range, and this body does not. The parts also split the
pairs the other way: here the local part owns the chunk and the sinks and the
rounds mask them out, where the torch op and the Triton kernels give a round
every pair its buckets match. The union, and so the result, is the same. (Moved
to the torch rule, onnxruntime CPU timed the same within its noise at N = 4096;
not tried on CUDA.) The variant's body computes the
buckets and passes them in as tensors, with [n_buckets, chunk, sinks] as an
int64 tensor and [scale, softcap, causal] as a float tensor (an ONNX function
cannot compute attributes for its callee).

Sorting is a counting sort (``BucketSort``: a running count of a one-hot of
the buckets gives every position its slot and every bucket its range). Each
bucket's sorted queries and keys go in blocks, and every (query block, key
block) pair of a bucket meets in one batched MatMul; a row's pairs are merged as
flash attention merges key blocks. No tensor has an N×M axis pair.

Row maxima are ``row_max_onnx.LastAxisMax`` and sums over an axis use
ReduceSum, whose axes input is the same in opsets 17..23.
"""

from __future__ import annotations

import onnx
import onnxscript
from onnxscript import opset18 as op

from .onnx_functions import attnopt_opset
from .row_max_onnx import LastAxisMax
from .softcap_onnx import Softcap

_FLOAT = onnx.TensorProto.FLOAT
_INT64 = onnx.TensorProto.INT64
_NEG_INF = float("-inf")
_ZERO_I64 = onnx.helper.make_tensor("zero", _INT64, [1], [0])
_MINUS_ONE_I64 = onnx.helper.make_tensor("minus_one", _INT64, [1], [-1])
_ZERO_F = onnx.helper.make_tensor("zero", _FLOAT, [1], [0.0])
_NEG_INF_F = onnx.helper.make_tensor("neg_inf", _FLOAT, [1], [_NEG_INF])


@onnxscript.script(attnopt_opset, default_opset=op)
def BucketScoreMasks(Scores, Mask, KeyPadding, Batch, Head, Row, Col):
    """Scores + key padding + dense remainder read at (batch, query head, query row, key) indices.

    The index tensors broadcast against Scores; a size-1 mask dim is read at index 0, so
    the (1, 1, 1, 1) "no mask" and (1, 1) "no key padding" zeros broadcast too.
    """
    one = op.Constant(value_ints=[1])
    bk = op.Shape(KeyPadding, start=0, end=1)
    mk = op.Shape(KeyPadding, start=1, end=2)
    kp_at = op.Add(op.Mul(op.Min(Batch, op.Sub(bk, one)), mk), op.Min(Col, op.Sub(mk, one)))
    kp = op.Cast(op.Gather(op.Reshape(KeyPadding, op.Constant(value_ints=[-1])), kp_at, axis=0), to=_FLOAT)
    # A one-element mask (the "no mask" zeros) is added as it is: the index below would be as large as the
    # scores, for nothing. Size is a shape, so onnxruntime decides this on the host, or folds it at load.
    if op.Equal(op.Size(Mask), op.Constant(value_int=1)):
        dense = op.Cast(op.Reshape(Mask, one), to=_FLOAT)
    else:
        bm = op.Shape(Mask, start=0, end=1)
        hm = op.Shape(Mask, start=1, end=2)
        nm = op.Shape(Mask, start=2, end=3)
        mm = op.Shape(Mask, start=3, end=4)
        at = op.Add(op.Mul(op.Min(Batch, op.Sub(bm, one)), hm), op.Min(Head, op.Sub(hm, one)))
        at = op.Add(op.Mul(at, nm), op.Min(Row, op.Sub(nm, one)))
        at = op.Add(op.Mul(at, mm), op.Min(Col, op.Sub(mm, one)))
        dense = op.Cast(op.Gather(op.Reshape(Mask, op.Constant(value_ints=[-1])), at, axis=0), to=_FLOAT)
    return op.Add(Scores, op.Add(kp, dense))


COUNTING_SORT_MAX_BUCKETS = 64  # above it a counting sort's (S, b) one-hot would outgrow the (S, D) inputs
SCAN_BLOCK = 32  # the counting sort's running count: within blocks of 32 positions, then across blocks


@onnxscript.script(attnopt_opset, default_opset=op)
def BucketSort(Buckets, NBuckets):
    """(B, H, R, S) int64 buckets -> (perm, count, start, end): the stable sort by (bucket, position).

    perm[slot] is the position at sorted slot ``slot``; bucket c holds slots [start, end).
    Up to COUNTING_SORT_MAX_BUCKETS buckets it is a counting sort: a running count of a
    one-hot of the buckets gives each position its rank inside its bucket, and each bucket
    its size. More buckets sort with TopK over bucket·S + position. On the CUDA provider
    (onnxruntime 1.31, S = 16384) a TopK over all S positions took 2.4 ms a call, and a
    ScatterElements histogram makes S atomic adds on b counters.

    The running count is a CumSum within blocks of SCAN_BLOCK positions, then one across
    the blocks: onnxruntime's CUDA CumSum sums every element's prefix afresh, O(L²) along
    an axis of length L (10 ms a call here over all S positions at once).
    """
    three = op.Constant(value_ints=[3])
    s = op.Shape(Buckets, start=3, end=4)
    positions = op.Expand(op.Range(0, op.Squeeze(s), 1), op.Shape(Buckets))
    # The counting sort's sizes, computed out here (onnx_functions: sizes an If branch reads stay on the host).
    t = op.Constant(value_ints=[SCAN_BLOCK])
    blocks = op.Div(op.Sub(op.Add(s, t), 1), t)
    lead = op.Shape(Buckets, start=0, end=3)
    tail_shape = op.Concat(lead, op.Sub(op.Mul(blocks, t), s), axis=0)
    block_shape = op.Concat(lead, blocks, t, NBuckets, axis=0)
    flat_shape = op.Concat(lead, op.Mul(blocks, t), NBuckets, axis=0)
    last = op.Sub(s, 1)
    buckets = op.Range(0, op.Squeeze(NBuckets), 1)
    count_shape = op.Concat(lead, NBuckets, axis=0)
    if op.LessOrEqual(op.ReduceMax(NBuckets, keepdims=0), op.Constant(value_int=COUNTING_SORT_MAX_BUCKETS)):
        # Whole blocks: the tail positions get bucket −1, which no bucket matches (a Concat: onnxruntime's
        # CUDA Pad has no integer kernel, and fell back to the host).
        whole = op.Concat(Buckets, op.ConstantOfShape(tail_shape, value=_MINUS_ONE_I64), axis=3)
        hot = op.Cast(op.Equal(op.Unsqueeze(whole, [4]), buckets), to=onnx.TensorProto.INT32)  # (B, H, R, S', b)
        inner = op.CumSum(op.Reshape(hot, block_shape), op.Constant(value_ints=[4]))  # within each block
        before = op.CumSum(op.Slice(inner, op.Sub(t, 1), t, op.Constant(value_ints=[4])), three,
                           exclusive=1)  # the blocks before
        seen = op.Reshape(op.Add(inner, before), flat_shape)  # seen[.., i, c]: positions <= i in bucket c
        count = op.Cast(op.Squeeze(op.Slice(seen, last, s, three), three), to=_INT64)  # (B, H, R, b)
        rank = op.Squeeze(op.Cast(op.GatherElements(seen, op.Unsqueeze(Buckets, [4]), axis=4), to=_INT64), [4])
        slot = op.Add(op.Sub(rank, 1), op.GatherElements(op.Sub(op.CumSum(count, three), count), Buckets, axis=3))
        perm = op.ScatterElements(op.ConstantOfShape(op.Shape(Buckets), value=_ZERO_I64), slot, positions, axis=3)
    else:
        _, perm = op.TopK(op.Add(op.Mul(Buckets, s), positions), s, axis=-1, largest=0)
        ones = op.Expand(op.Constant(value_int=1), op.Shape(Buckets))
        count = op.ScatterElements(op.ConstantOfShape(count_shape, value=_ZERO_I64), Buckets, ones, axis=3,
                                   reduction="add")
    end = op.CumSum(count, three)
    start = op.Sub(end, count)
    return perm, count, start, end


@onnxscript.script(attnopt_opset, default_opset=op)
def FirstMatchingRound(Allowed, QBuckets, KBuckets, QRows, KRows):
    """Allowed, and round r owns a (query, key) pair only if no earlier round matches it: (..., R, npair, bq, bk).

    QRows / KRows (B, Hkv, R, npair, bq | bk) index the (batch·kv head)-flattened rows of QBuckets
    (B, Hkv, R, rows) and KBuckets (B, Hkv, R, M). One round owns everything, and needs no
    score-sized work: onnxruntime folds the If, R being a constant of the hash's rotations.
    """
    if op.Greater(op.ReduceMax(op.Shape(QBuckets, start=2, end=3), keepdims=0), op.Constant(value_int=1)):
        # The round count is read again in the branch, to stay on the host (onnx_functions says why).
        r = op.Shape(QBuckets, start=2, end=3)
        by_row = op.Concat(op.Constant(value_ints=[-1]), r, axis=0)
        q_all = op.Gather(op.Reshape(op.Transpose(QBuckets, perm=[0, 1, 3, 2]), by_row), QRows, axis=0)  # (..., bq, R)
        k_all = op.Gather(op.Reshape(op.Transpose(KBuckets, perm=[0, 1, 3, 2]), by_row), KRows, axis=0)  # (..., bk, R)
        rounds = op.Range(0, op.Squeeze(r), 1)
        earlier = op.Reshape(op.Less(op.Unsqueeze(rounds, [0]), op.Unsqueeze(rounds, [1])),
                             op.Concat(op.Constant(value_ints=[1, 1]), r, op.Constant(value_ints=[1, 1, 1]), r, axis=0))
        matched = op.And(op.Equal(op.Unsqueeze(q_all, [5]), op.Unsqueeze(k_all, [4])), earlier)
        owned = op.And(Allowed, op.Not(op.Greater(op.ReduceSum(op.Cast(matched, to=_INT64),
                                                               op.Constant(value_ints=[-1]), keepdims=0),
                                                  op.Constant(value_int=0))))
    else:
        owned = op.Identity(Allowed)
    return owned


@onnxscript.script(attnopt_opset, default_opset=op)
def BucketAttention(Q, K, V, Mask, KeyPadding, QBuckets, KBuckets, Config, Scalars):
    """QBuckets (B, H, R, N), KBuckets (B, Hkv, R, M): int64 in [0, n_buckets).

    Config = [n_buckets, chunk, sinks] (int64); Scalars = [scale, softcap, causal] (float).
    """
    zero = op.Constant(value_ints=[0])
    one = op.Constant(value_ints=[1])
    two = op.Constant(value_ints=[2])
    three = op.Constant(value_ints=[3])
    four = op.Constant(value_ints=[4])
    five = op.Constant(value_ints=[5])
    last_axis = op.Constant(value_ints=[-1])
    n_buckets = op.Slice(Config, zero, one)
    chunk = op.Slice(Config, one, two)
    sinks = op.Slice(Config, two, three)
    scale = op.Slice(Scalars, zero, one)
    cap = op.Slice(Scalars, one, two)
    causal = op.Cast(op.Slice(Scalars, two, three), to=onnx.TensorProto.BOOL)

    b = op.Shape(Q, start=0, end=1)
    h = op.Shape(Q, start=1, end=2)
    n = op.Shape(Q, start=2, end=3)
    d = op.Shape(Q, start=3, end=4)
    hkv = op.Shape(K, start=1, end=2)
    m = op.Shape(K, start=2, end=3)
    r = op.Shape(QBuckets, start=2, end=3)
    rep = op.Div(h, hkv)
    rows = op.Mul(rep, n)  # the rep query heads of a kv head, as rows h·N + i
    off = op.Sub(m, n)  # query i sits at position i + off
    n_sinks = op.Min(sinks, m)
    q = op.Reshape(op.Mul(op.Cast(Q, to=_FLOAT), scale), op.Concat(b, hkv, rows, d, axis=0))
    k = op.Cast(K, to=_FLOAT)
    v = op.Cast(V, to=_FLOAT)
    qb = op.Reshape(op.Transpose(op.Reshape(QBuckets, op.Concat(b, hkv, rep, r, n, axis=0)), perm=[0, 1, 3, 2, 4]),
                    op.Concat(b, hkv, r, rows, axis=0))
    kb = KBuckets
    batch6 = op.Reshape(op.Range(0, op.Squeeze(b), 1), op.Constant(value_ints=[-1, 1, 1, 1, 1, 1]))
    kv_head6 = op.Reshape(op.Range(0, op.Squeeze(hkv), 1), op.Constant(value_ints=[1, -1, 1, 1, 1, 1]))

    # --- the local part: blocks of C positions aligned to the chunks, against their C keys and the sinks.
    first = op.Mul(op.Div(off, chunk), chunk)
    front = op.Sub(off, first)
    nc = op.Div(op.Sub(op.Add(op.Add(front, n), chunk), one), chunk)
    pos = op.Reshape(op.Add(op.Range(0, op.Squeeze(op.Mul(nc, chunk)), 1), first), op.Concat(nc, chunk, axis=0))
    kpos = op.Min(pos, op.Sub(m, one))
    j = op.Range(0, op.Squeeze(n_sinks), 1)
    j_cols = op.Expand(op.Unsqueeze(j, zero), op.Concat(nc, n_sinks, axis=0))
    cols = op.Concat(kpos, j_cols, axis=1)  # (nc, C + G) key indices
    pads = op.Concat(op.Constant(value_ints=[0, 0, 0]), front, zero, op.Constant(value_ints=[0, 0, 0]),
                     op.Sub(op.Sub(op.Mul(nc, chunk), front), n), zero, axis=0)
    qp = op.Reshape(op.Pad(op.Reshape(q, op.Concat(b, hkv, rep, n, d, axis=0)), pads),
                    op.Concat(b, hkv, rep, nc, chunk, d, axis=0))
    k_local = op.Unsqueeze(op.Gather(k, cols, axis=2), two)  # (B, Hkv, 1, nc, C + G, D)
    v_local = op.Unsqueeze(op.Gather(v, cols, axis=2), two)
    s_local = op.MatMul(qp, op.Transpose(k_local, perm=[0, 1, 2, 3, 5, 4]))  # (B, Hkv, rep, nc, C, C + G)
    s_local = Softcap(s_local, cap)
    in_chunk = op.Less(pos, m)
    sink_ok = op.Less(op.Unsqueeze(j, zero), op.Slice(pos, zero, one, one))  # a sink inside the chunk is a chunk key
    ok_local = op.Unsqueeze(op.Concat(in_chunk, sink_ok, axis=1), one)  # (nc, 1, C + G)
    key_pos = op.Concat(pos, j_cols, axis=1)
    ok_local = op.And(ok_local, op.Or(op.LessOrEqual(op.Unsqueeze(key_pos, one), op.Unsqueeze(pos, two)),
                                      op.Not(causal)))
    rep_rows = op.Mul(op.Reshape(op.Range(0, op.Squeeze(rep), 1), op.Constant(value_ints=[1, 1, -1, 1, 1, 1])), n)
    local_row = op.Min(op.Max(op.Sub(pos, off), zero), op.Sub(n, one))
    row_local = op.Add(rep_rows, op.Unsqueeze(local_row, op.Constant(value_ints=[0, 1, 2, 5])))
    s_local = BucketScoreMasks(s_local, Mask, KeyPadding, batch6, op.Add(op.Mul(kv_head6, rep), op.Div(row_local, n)),
                               op.Mod(row_local, n), op.Unsqueeze(cols, op.Constant(value_ints=[0, 1, 2, 4])))
    s_local = op.Where(ok_local, s_local, _NEG_INF)
    top_local = LastAxisMax(s_local)
    p_local = op.Exp(op.Sub(s_local, op.Where(op.IsInf(top_local, detect_positive=0), 0.0, top_local)))
    sum_local = op.ReduceSum(p_local, last_axis, keepdims=0)
    out_local = op.MatMul(p_local, v_local)  # (B, Hkv, rep, nc, C, D)
    local_shape = op.Concat(b, hkv, rep, op.Mul(nc, chunk), axis=0)
    keep_end = op.Add(front, n)
    part_shape = op.Concat(b, hkv, one, rows, axis=0)
    top_local = op.Reshape(op.Slice(op.Reshape(top_local, local_shape), front, keep_end, three), part_shape)
    sum_local = op.Reshape(op.Slice(op.Reshape(sum_local, local_shape), front, keep_end, three), part_shape)
    out_local = op.Reshape(op.Slice(op.Reshape(out_local, op.Concat(local_shape, d, axis=0)), front, keep_end, three),
                           op.Concat(part_shape, d, axis=0))

    # --- the hash rounds: (query block, key block) pairs of one bucket's (bucket, row)-sorted queries and keys.
    q_perm, q_count, q_start, q_end = BucketSort(qb, n_buckets)  # bucket c's rows are sorted slots [start, end)
    k_perm, k_count, k_start, k_end = BucketSort(kb, n_buckets)
    bq = op.Min(op.Max(d, op.Constant(value_ints=[16])), op.Constant(value_ints=[128]))  # kernels.buckets.block_rows
    # Key blocks of about a bucket's mean size M / b, within [bq, 4·bq]. A pair's output (bq·D) is scattered
    # back to its rows, a cost its scores (bq·bk) do not carry, so longer key blocks scatter less; each bucket
    # pads its keys to whole blocks, so no longer than a typical bucket (onnxruntime CPU, the 4-layer example,
    # N = 4096, b = 32: lsh 358 ms at bk = bq = 64, 229 ms at bk = 256).
    bk = op.Min(op.Max(op.Div(m, n_buckets), bq), op.Mul(bq, op.Constant(value_ints=[4])))
    k_blocks = op.Div(op.Sub(op.Add(k_count, bk), one), bk)
    pairs = op.Mul(op.Div(op.Sub(op.Add(q_count, bq), one), bq), k_blocks)  # bucket c: its query blocks × key blocks
    p_end = op.CumSum(pairs, three)
    p_start = op.Sub(p_end, pairs)
    total = op.Slice(p_end, op.Sub(n_buckets, one), n_buckets, three)  # (B, Hkv, R, 1)
    # The pair count depends on the data: read off the device once. The Shape of a tensor that long is a
    # host value, so every size below derives from it on the host (onnx_functions), with no further wait.
    npair_1 = op.Shape(op.ConstantOfShape(op.Reshape(op.ReduceMax(total, keepdims=0), one), value=_ZERO_I64))
    npair = op.Squeeze(npair_1)
    g = op.Range(0, npair, 1)
    # Pair g's bucket: the last bucket whose first pair is <= g (an empty bucket starts where the next one does).
    starts_at = op.ScatterElements(op.ConstantOfShape(op.Concat(b, hkv, r, op.Add(npair_1, one), axis=0),
                                                      value=_ZERO_I64),
                                   op.Min(p_start, npair), op.Expand(op.Constant(value_int=1), op.Shape(p_start)),
                                   axis=3, reduction="add")
    bucket = op.Sub(op.Slice(op.CumSum(starts_at, three), zero, npair_1, three), one)
    real = op.Less(g, total)  # (B, Hkv, R, npair)
    t = op.Sub(g, op.GatherElements(p_start, bucket, axis=3))  # the pair's index inside its bucket
    per_row = op.Max(op.GatherElements(k_blocks, bucket, axis=3), one)
    first_slot = op.Add(op.GatherElements(q_start, bucket, axis=3), op.Mul(op.Div(t, per_row), bq))
    first_key = op.Add(op.GatherElements(k_start, bucket, axis=3), op.Mul(op.Mod(t, per_row), bk))
    slot = op.Add(op.Unsqueeze(first_slot, four), op.Range(0, op.Squeeze(bq), 1))  # (B, Hkv, R, npair, bq)
    row_ok = op.And(op.Unsqueeze(real, four), op.Less(slot, op.Unsqueeze(op.GatherElements(q_end, bucket, axis=3), four)))
    flat_rows = op.Concat(b, hkv, r, op.Constant(value_ints=[-1]), axis=0)
    row_idx = op.Reshape(op.GatherElements(q_perm, op.Reshape(op.Min(slot, op.Sub(rows, one)), flat_rows), axis=3),
                         op.Concat(b, hkv, r, npair_1, bq, axis=0))
    at = op.Add(op.Unsqueeze(first_key, four), op.Range(0, op.Squeeze(bk), 1))  # (B, Hkv, R, npair, bk) sorted keys
    key_ok = op.Less(at, op.Unsqueeze(op.GatherElements(k_end, bucket, axis=3), four))
    col = op.Reshape(op.GatherElements(k_perm, op.Reshape(op.Min(at, op.Sub(m, one)), flat_rows), axis=3),
                     op.Concat(b, hkv, r, npair_1, bk, axis=0))

    # (batch, kv head) folded into the row index: one Gather per operand.
    bh = op.Reshape(op.Range(0, op.Squeeze(op.Mul(b, hkv)), 1), op.Concat(b, hkv, op.Constant(value_ints=[1, 1, 1]),
                                                                         axis=0))
    q_rows = op.Add(row_idx, op.Mul(bh, rows))
    k_rows = op.Add(col, op.Mul(bh, m))
    flat_d = op.Concat(op.Constant(value_ints=[-1]), d, axis=0)
    qs = op.Gather(op.Reshape(q, flat_d), q_rows, axis=0)  # (B, Hkv, R, npair, bq, D)
    ks = op.Gather(op.Reshape(k, flat_d), k_rows, axis=0)  # (B, Hkv, R, npair, bk, D)
    vs = op.Gather(op.Reshape(v, flat_d), k_rows, axis=0)
    s = op.MatMul(qs, op.Transpose(ks, perm=[0, 1, 2, 3, 5, 4]))  # (B, Hkv, R, npair, bq, bk)
    s = Softcap(s, cap)

    qpos6 = op.Unsqueeze(op.Add(op.Mod(row_idx, n), off), five)
    col6 = op.Unsqueeze(col, four)
    # Each test on its own axis first, then as few passes over the (.., bq, bk) pairs as the rule needs.
    # The local part owns the chunk and the sinks.
    key_side = op.And(key_ok, op.GreaterOrEqual(col, n_sinks))
    ok = op.And(op.Unsqueeze(row_ok, five), op.Unsqueeze(key_side, four))
    ok = op.And(ok, op.Not(op.Equal(op.Div(qpos6, chunk), op.Div(col6, chunk))))
    if causal:  # a constant: onnxruntime keeps one branch
        ok_causal = op.And(ok, op.LessOrEqual(col6, qpos6))
    else:
        ok_causal = op.Identity(ok)
    ok = FirstMatchingRound(ok_causal, qb, kb, q_rows, k_rows)
    s = BucketScoreMasks(s, Mask, KeyPadding, batch6, op.Unsqueeze(op.Add(op.Mul(op.Squeeze(kv_head6, five), rep),
                                                                         op.Div(row_idx, n)), five),
                         op.Unsqueeze(op.Mod(row_idx, n), five), col6)
    s = op.Where(ok, s, _NEG_INF)
    top = LastAxisMax(s)
    p = op.Exp(op.Sub(s, op.Where(op.IsInf(top, detect_positive=0), 0.0, top)))
    sums = op.ReduceSum(p, last_axis, keepdims=0)
    out = op.MatMul(p, vs)  # (B, Hkv, R, npair, bq, D)

    # Back to rows h·N + i, merging the key blocks of a row as flash attention does: the row's max over its
    # pairs (a scatter-max), each pair's sum and output rescaled to it, then added. Padding slots land on a
    # spare row that is dropped; a row no pair reaches keeps max −inf and sum 0, and weighs 0 below.
    dest = op.Reshape(op.Where(row_ok, row_idx, rows), flat_rows)
    spare = op.Concat(b, hkv, r, op.Add(rows, one), axis=0)
    top_flat = op.Reshape(top, flat_rows)
    row_top = op.ScatterElements(op.ConstantOfShape(spare, value=_NEG_INF_F), dest, top_flat, axis=3,
                                 reduction="max")
    at_top = op.GatherElements(row_top, dest, axis=3)
    weight = op.Exp(op.Sub(top_flat, op.Where(op.IsInf(at_top, detect_positive=0), 0.0, at_top)))
    top_r = op.Slice(row_top, zero, rows, three)
    sum_r = op.Slice(op.ScatterElements(op.ConstantOfShape(spare, value=_ZERO_F), dest,
                                        op.Mul(op.Reshape(sums, flat_rows), weight), axis=3, reduction="add"),
                     zero, rows, three)
    flat_out = op.Concat(b, hkv, r, op.Constant(value_ints=[-1]), d, axis=0)
    dest_d = op.Expand(op.Unsqueeze(dest, four), op.Concat(b, hkv, r, op.Shape(dest, start=3, end=4), d, axis=0))
    out_r = op.Slice(op.ScatterElements(op.ConstantOfShape(op.Concat(spare, d, axis=0), value=_ZERO_F), dest_d,
                                        op.Mul(op.Reshape(out, flat_out), op.Unsqueeze(weight, four)), axis=3,
                                        reduction="add"), zero, rows, three)

    # --- one softmax over the union: merge the parts' (max, sum, output).
    tops = op.Concat(top_local, top_r, axis=2)  # (B, Hkv, 1 + R, rows)
    best = op.GatherElements(tops, op.ArgMax(tops, axis=2, keepdims=1), axis=2)
    weight = op.Exp(op.Sub(tops, op.Where(op.IsInf(best, detect_positive=0), 0.0, best)))
    total_sum = op.ReduceSum(op.Mul(weight, op.Concat(sum_local, sum_r, axis=2)), two, keepdims=0)
    total_out = op.ReduceSum(op.Mul(op.Unsqueeze(weight, four), op.Concat(out_local, out_r, axis=2)), two, keepdims=0)
    total_sum = op.Unsqueeze(total_sum, three)
    y = op.Where(op.Greater(total_sum, 0.0), op.Div(total_out, op.Max(total_sum, 1e-38)), 0.0)
    return op.CastLike(op.Reshape(y, op.Concat(b, h, n, d, axis=0)), Q)


# What a body calling BucketAttention lists in its CALLS.
CALLS = (BucketAttention, BucketScoreMasks, BucketSort, FirstMatchingRound)
