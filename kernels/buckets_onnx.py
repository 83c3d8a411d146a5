"""The sorted-bucket machinery, ONNX: ai.attnopt::BucketAttention, called by the lsh and routed bodies.

Same math and parts as ``kernels.buckets`` (read that first), and the same
split of the pairs: a round owns every pair its buckets match (and no earlier
round's), the local part the chunk and sink pairs no round matched. The hash
rounds are blocked differently (below): the torch op pads every query block to
the longest bucket's key range, and this body does not. The variant's body
computes the buckets and passes them in as tensors, with [n_buckets, chunk,
sinks, rounds] as an int64 tensor and [scale, softcap, causal] as a float tensor
(an ONNX function cannot compute attributes for its callee); both are constants
onnxruntime folds, so the Ifs on them cost nothing at run time.

Sorting is a counting sort (``BucketSort``: a running count of a one-hot of
the buckets gives every position its slot and every bucket its range). Each
bucket's sorted queries and keys go in blocks, and every (query block, key
block) pair of a bucket meets in one batched MatMul; a row's pairs are merged as
flash attention merges key blocks. No tensor has an N×M axis pair.

The passes over the score-sized tensors are kept to the MatMuls, one max, one
Sub and one Exp (onnxruntime's CUDA provider runs every elementwise op as its
own kernel, so each pass costs a read and a write of the scores): the key
padding rides in the score MatMul as an extra column, the row sums in the
output MatMul as a column of ones, and the pairwise bucket test runs on the
local part only. What is left on the rounds' scores is causality and, with
several rounds, the earlier rounds' pairs.

GPT-OSS's learned sink logits (``SinkLogits``, after ``KeyPadding``) are one
more term of each row's denominator where the parts merge (``SinkDenominator``),
an ``If`` on their size that onnxruntime folds at load, as ``sink_onnx``'s.

Row maxima are ``row_max_onnx.LastAxisMax`` and sums over an axis use
ReduceSum, whose axes input is the same in opsets 17..23.
"""

from __future__ import annotations

import onnx
import onnxscript
from onnxscript import opset18 as op

from .onnx_functions import attnopt_opset
from .prefix_sum_onnx import PrefixSum
from .row_max_onnx import LastAxisMax
from .softcap_onnx import Softcap

_FLOAT = onnx.TensorProto.FLOAT
_INT64 = onnx.TensorProto.INT64
_NEG_INF = float("-inf")
_ZERO_I64 = onnx.helper.make_tensor("zero", _INT64, [1], [0])
_MINUS_ONE_I64 = onnx.helper.make_tensor("minus_one", _INT64, [1], [-1])
_ZERO_F = onnx.helper.make_tensor("zero", _FLOAT, [1], [0.0])
_NEG_INF_F = onnx.helper.make_tensor("neg_inf", _FLOAT, [1], [_NEG_INF])
_ONE_F = onnx.helper.make_tensor("one", _FLOAT, [1], [1.0])


@onnxscript.script(attnopt_opset, default_opset=op)
def BucketDenseMask(Scores, Mask, Batch, Head, Row, Col):
    """Scores + the dense remainder mask read at (batch, query head, query row, key) indices.

    The index tensors broadcast against Scores; a size-1 mask dim is read at index 0. A
    one-element mask (the "no mask" zeros) is left out here: it adds one constant to every
    score, which the callers fold into their per-key bias (``MaskScalar``) instead of a pass
    over the scores. Size is a shape, so onnxruntime decides this on the host, or folds it at load.
    """
    one = op.Constant(value_ints=[1])
    if op.Equal(op.Size(Mask), op.Constant(value_int=1)):
        masked = op.Identity(Scores)
    else:
        bm = op.Shape(Mask, start=0, end=1)
        hm = op.Shape(Mask, start=1, end=2)
        nm = op.Shape(Mask, start=2, end=3)
        mm = op.Shape(Mask, start=3, end=4)
        at = op.Add(op.Mul(op.Min(Batch, op.Sub(bm, one)), hm), op.Min(Head, op.Sub(hm, one)))
        at = op.Add(op.Mul(at, nm), op.Min(Row, op.Sub(nm, one)))
        at = op.Add(op.Mul(at, mm), op.Min(Col, op.Sub(mm, one)))
        masked = op.Add(Scores, op.Cast(op.Gather(op.Reshape(Mask, op.Constant(value_ints=[-1])), at, axis=0),
                                        to=_FLOAT))
    return masked


@onnxscript.script(attnopt_opset, default_opset=op)
def MaskScalar(Mask):
    """(1,) float: a one-element Mask's value, else 0 (BucketDenseMask adds the others)."""
    one = op.Constant(value_ints=[1])
    first = op.Cast(op.Slice(op.Reshape(Mask, op.Constant(value_ints=[-1])), op.Constant(value_ints=[0]), one), to=_FLOAT)
    return op.Where(op.Equal(op.Size(Mask), op.Constant(value_int=1)), first, op.Constant(value_floats=[0.0]))


QUERY_BLOCK_SHARE = 2  # the rounds' blocks, as shares of a bucket's mean size (BucketAttention says why)
KEY_BLOCK_SHARE = 1
COUNTING_SORT_MAX_BUCKETS = 64  # above it a counting sort's (S, b) one-hot would outgrow the (S, D) inputs


@onnxscript.script(attnopt_opset, default_opset=op)
def BucketSort(Buckets, NBuckets):
    """(B, H, R, S) int64 buckets -> (perm, count, start, end, within): the stable sort by (bucket, position).

    perm[slot] is the position at sorted slot ``slot``; bucket c holds slots [start, end);
    within[i] is position i's index among its bucket's positions.
    Up to COUNTING_SORT_MAX_BUCKETS buckets it is a counting sort: a running count of a
    one-hot of the buckets gives each position its rank inside its bucket, and each bucket
    its size. More buckets sort with TopK over bucket·S + position. On the CUDA provider
    (onnxruntime 1.31, S = 16384) a TopK over all S positions took 2.4 ms a call, and a
    ScatterElements histogram makes S atomic adds on b counters.

    The running count is ``PrefixSum``'s (onnxruntime's CUDA CumSum is O(S²) along an axis of S).
    """
    three = op.Constant(value_ints=[3])
    s = op.Shape(Buckets, start=3, end=4)
    positions = op.Expand(op.Range(0, op.Squeeze(s), 1), op.Shape(Buckets))
    last = op.Sub(s, 1)
    buckets = op.Range(0, op.Squeeze(NBuckets), 1)
    count_shape = op.Concat(op.Shape(Buckets, start=0, end=3), NBuckets, axis=0)
    if op.LessOrEqual(op.ReduceMax(NBuckets, keepdims=0), op.Constant(value_int=COUNTING_SORT_MAX_BUCKETS)):
        hot = op.Cast(op.Equal(op.Unsqueeze(Buckets, [4]), buckets), to=onnx.TensorProto.INT32)  # (B, H, R, S, b)
        seen = PrefixSum(hot)  # seen[.., i, c]: positions <= i in bucket c
        count = op.Cast(op.Squeeze(op.Slice(seen, last, s, three), three), to=_INT64)  # (B, H, R, b)
        rank = op.Squeeze(op.Cast(op.GatherElements(seen, op.Unsqueeze(Buckets, [4]), axis=4), to=_INT64), [4])
        slot = op.Add(op.Sub(rank, 1), op.GatherElements(op.Sub(op.CumSum(count, three), count), Buckets, axis=3))
        perm = op.ScatterElements(op.ConstantOfShape(op.Shape(Buckets), value=_ZERO_I64), slot, positions, axis=3)
    else:
        _, perm = op.TopK(op.Add(op.Mul(Buckets, s), positions), s, axis=-1, largest=0)
        slot = op.ScatterElements(op.ConstantOfShape(op.Shape(Buckets), value=_ZERO_I64), perm, positions, axis=3)
        ones = op.Expand(op.Constant(value_int=1), op.Shape(Buckets))
        count = op.ScatterElements(op.ConstantOfShape(count_shape, value=_ZERO_I64), Buckets, ones, axis=3,
                                   reduction="add")
    end = op.CumSum(count, three)
    start = op.Sub(end, count)
    within = op.Sub(slot, op.GatherElements(start, Buckets, axis=3))
    return perm, count, start, end, within


@onnxscript.script(attnopt_opset, default_opset=op)
def RoundMask(Scores, QBuckets, KBuckets, QRows, KRows, QPos, KPos, Causal, Several):
    """Scores (..., R, npair, bq, bk), −inf where round r does not own the pair or causality forbids it.

    Round r owns a (query, key) pair its buckets match unless an earlier round matches it too (one
    softmax over the union counts it once). QRows / KRows (B, Hkv, R, npair, bq | bk) index the
    (batch·kv head)-flattened rows of QBuckets (B, Hkv, R, rows) and KBuckets (B, Hkv, R, M + 1).
    One round and no causality leave the scores as they are, with no pass over them: Several (more
    than one round, from the variant's attributes) and Causal are constants, so onnxruntime folds
    both tests at load. (The round count read off QBuckets' shape was not folded, and the If that
    stayed copied the scores.)
    """
    if Several:
        # The round count is read again in the branch, to stay on the host (onnx_functions says why).
        r = op.Shape(QBuckets, start=2, end=3)
        by_row = op.Concat(op.Constant(value_ints=[-1]), r, axis=0)
        q_all = op.Gather(op.Reshape(op.Transpose(QBuckets, perm=[0, 1, 3, 2]), by_row), QRows, axis=0)  # (..., bq, R)
        k_all = op.Gather(op.Reshape(op.Transpose(KBuckets, perm=[0, 1, 3, 2]), by_row), KRows, axis=0)  # (..., bk, R)
        rounds = op.Range(0, op.Squeeze(r), 1)
        earlier = op.Reshape(op.Less(op.Unsqueeze(rounds, [0]), op.Unsqueeze(rounds, [1])),
                             op.Concat(op.Constant(value_ints=[1, 1]), r, op.Constant(value_ints=[1, 1, 1]), r, axis=0))
        matched = op.And(op.Equal(op.Unsqueeze(q_all, [5]), op.Unsqueeze(k_all, [4])), earlier)
        owned = op.Not(op.Greater(op.ReduceSum(op.Cast(matched, to=_INT64), op.Constant(value_ints=[-1]), keepdims=0),
                                  op.Constant(value_int=0)))
        kept = op.Where(owned, Scores, _NEG_INF)
    else:
        kept = op.Identity(Scores)
    if Causal:
        kept = op.Where(op.LessOrEqual(KPos, QPos), kept, _NEG_INF)
    else:
        kept = op.Identity(kept)
    return kept


@onnxscript.script(attnopt_opset, default_opset=op)
def UnmatchedKeys(QBuckets, KBuckets, Rows, Cols, Several):
    """(B, Hkv, rep, nc, C, C + G) bool: no round's buckets match the local part's (query, key) pair.

    QBuckets (B, Hkv, R, rows), KBuckets (B, Hkv, R, M + 1); Rows (rep, nc, C, 1) index the
    rows, Cols (1, nc, 1, C + G) the keys. The local part's tensors are C + G keys wide, so this
    pairwise test costs a small part of what it would on the rounds' pairs.
    """
    two = op.Constant(value_ints=[2])
    same = op.Equal(op.Gather(QBuckets, Rows, axis=3), op.Gather(KBuckets, Cols, axis=3))  # (B, Hkv, R, rep, ..)
    if Several:  # a constant (RoundMask)
        hit = op.Greater(op.ReduceSum(op.Cast(same, to=_INT64), two, keepdims=0), op.Constant(value_int=0))
    else:  # one round: drop its axis (a Reshape: the other branch's R may be known, and Squeeze would not infer)
        hit = op.Reshape(same, op.Concat(op.Shape(same, start=0, end=2), op.Shape(same, start=3), axis=0))
    return op.Not(hit)


@onnxscript.script(attnopt_opset, default_opset=op)
def SumOverRounds(X, Several):
    """X (B, Hkv, R, ...) summed over its rounds, keeping the axis; one round is X itself (a constant If)."""
    if Several:
        summed = op.ReduceSum(X, op.Constant(value_ints=[2]), keepdims=1)
    else:
        summed = op.Identity(X)
    return summed


@onnxscript.script(attnopt_opset, default_opset=op)
def SinkDenominator(Sums, Top, SinkLogits):
    """Sums + e^{σ_h − Top}: the learned sink as one more term of each row's softmax denominator, its value zero.

    Sums (B, Hkv, 1, rows, 1) and Top (B, Hkv, 1, rows) are the merged rows h·N + i of kv head g, query head
    g·rep + h, so the rows split as (rep, N) meet SinkLogits (H,) read as (Hkv, rep). An empty SinkLogits (no
    sinks) leaves Sums as it is: an If on its size, folded at load when the logits are a constant (sink_onnx).
    """
    if op.Greater(op.Size(SinkLogits), op.Constant(value_int=0)):
        hkv = op.Shape(Sums, start=1, end=2)
        sink = op.Reshape(op.CastLike(SinkLogits, Sums), op.Concat(op.Constant(value_ints=[1]), hkv,
                                                                   op.Constant(value_ints=[-1, 1]), axis=0))
        by_head = op.Concat(op.Shape(Sums, start=0, end=2), op.Div(op.Shape(SinkLogits), hkv),
                            op.Constant(value_ints=[-1]), axis=0)  # (B, Hkv, rep, N)
        total = op.Add(Sums, op.Reshape(op.Exp(op.Sub(sink, op.Reshape(Top, by_head))), op.Shape(Sums)))
    else:
        total = op.Identity(Sums)
    return total


@onnxscript.script(attnopt_opset, default_opset=op)
def BucketAttention(Q, K, V, Mask, KeyPadding, SinkLogits, QBuckets, KBuckets, Config, Scalars):
    """QBuckets (B, H, R, N), KBuckets (B, Hkv, R, M): int64 in [0, n_buckets); SinkLogits (H,) or empty.

    Config = [n_buckets, chunk, sinks, R] (int64); Scalars = [scale, softcap, causal] (float).
    """
    zero = op.Constant(value_ints=[0])
    one = op.Constant(value_ints=[1])
    two = op.Constant(value_ints=[2])
    three = op.Constant(value_ints=[3])
    four = op.Constant(value_ints=[4])
    five = op.Constant(value_ints=[5])
    n_buckets = op.Slice(Config, zero, one)
    chunk = op.Slice(Config, one, two)
    sinks = op.Slice(Config, two, three)
    several = op.Greater(op.ReduceMax(op.Slice(Config, three, four), keepdims=0), op.Constant(value_int=1))
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
    # The extra key M (below) is in bucket −1, which no query matches.
    m1 = op.Add(m, one)
    kb = op.Concat(KBuckets, op.ConstantOfShape(op.Concat(b, hkv, r, one, axis=0), value=_MINUS_ONE_I64), axis=3)
    # Rows of D + 4 columns: q [q·scale, 1, 0, 0], k [k, bias, 0, 0], v [v, 1, 0, 0], and the extra key M
    # (k and v 0, bias −inf) that the rounds' key blocks pad with. The bias (key padding, a one-element mask's
    # value) then rides in the score MatMuls and the row sums in the output MatMuls, so no pass over the scores
    # adds the padding or sums a row; 4 columns keep the rows 16-byte aligned. A softcap must come before the
    # bias, so there the bias column is 0 and the bias is added after the cap.
    capped = op.Greater(op.ReduceMax(cap, keepdims=0), op.Constant(value_float=0.0))
    kp_keys = op.Add(op.Expand(op.Cast(KeyPadding, to=_FLOAT), op.Concat(b, m, axis=0)), MaskScalar(Mask))
    bias = op.Concat(op.Expand(op.Unsqueeze(kp_keys, one), op.Concat(b, hkv, m, axis=0)),
                     op.ConstantOfShape(op.Concat(b, hkv, one, axis=0), value=_NEG_INF_F), axis=2)  # (B, Hkv, M + 1)
    lead_q = op.Concat(b, hkv, rows, axis=0)
    lead_k = op.Concat(b, hkv, m1, axis=0)
    q_ext = op.Concat(q, op.ConstantOfShape(op.Concat(lead_q, one, axis=0), value=_ONE_F),
                      op.ConstantOfShape(op.Concat(lead_q, three, axis=0), value=_ZERO_F), axis=3)
    spare_key = op.ConstantOfShape(op.Concat(b, hkv, one, d, axis=0), value=_ZERO_F)
    zeros_k = op.ConstantOfShape(op.Concat(lead_k, three, axis=0), value=_ZERO_F)
    k_ext = op.Concat(op.Concat(k, spare_key, axis=2), op.Unsqueeze(op.Where(capped, 0.0, bias), three), zeros_k,
                      axis=3)
    v_ext = op.Concat(op.Concat(v, spare_key, axis=2), op.ConstantOfShape(op.Concat(lead_k, one, axis=0), value=_ONE_F),
                      zeros_k, axis=3)
    d4 = op.Add(d, four)

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
    qp = op.Reshape(op.Pad(op.Reshape(q_ext, op.Concat(b, hkv, rep, n, d4, axis=0)), pads),
                    op.Concat(b, hkv, rep, nc, chunk, d4, axis=0))
    k_local = op.Unsqueeze(op.Gather(k_ext, cols, axis=2), two)  # (B, Hkv, 1, nc, C + G, D + 4)
    v_local = op.Unsqueeze(op.Gather(v_ext, cols, axis=2), two)
    s_local = op.MatMul(qp, op.Transpose(k_local, perm=[0, 1, 2, 3, 5, 4]))  # (B, Hkv, rep, nc, C, C + G)
    if capped:
        s_local = op.Add(Softcap(s_local, cap), op.Unsqueeze(op.Gather(bias, cols, axis=2), op.Constant(value_ints=[2, 4])))
    else:
        s_local = op.Identity(s_local)
    in_chunk = op.Less(pos, m)
    sink_ok = op.Less(op.Unsqueeze(j, zero), op.Slice(pos, zero, one, one))  # a sink inside the chunk is a chunk key
    ok_local = op.Unsqueeze(op.Concat(in_chunk, sink_ok, axis=1), one)  # (nc, 1, C + G)
    key_pos = op.Concat(pos, j_cols, axis=1)
    ok_local = op.And(ok_local, op.Or(op.LessOrEqual(op.Unsqueeze(key_pos, one), op.Unsqueeze(pos, two)),
                                      op.Not(causal)))
    rep_rows = op.Mul(op.Reshape(op.Range(0, op.Squeeze(rep), 1), op.Constant(value_ints=[1, 1, -1, 1, 1, 1])), n)
    local_row = op.Min(op.Max(op.Sub(pos, off), zero), op.Sub(n, one))
    row_local = op.Add(rep_rows, op.Unsqueeze(local_row, op.Constant(value_ints=[0, 1, 2, 5])))
    s_local = BucketDenseMask(s_local, Mask, batch6, op.Add(op.Mul(kv_head6, rep), op.Div(row_local, n)),
                              op.Mod(row_local, n), op.Unsqueeze(cols, op.Constant(value_ints=[0, 1, 2, 4])))
    # The rounds own every pair their buckets match (kernels.buckets' rule); the local part keeps the chunk
    # and sink keys no round matched.
    unmatched = UnmatchedKeys(qb, kb, op.Reshape(row_local, op.Concat(rep, nc, chunk, one, axis=0)),
                              op.Unsqueeze(cols, op.Constant(value_ints=[0, 2])), several)
    s_local = op.Where(op.And(ok_local, unmatched), s_local, _NEG_INF)
    top_local = LastAxisMax(s_local)
    p_local = op.Exp(op.Sub(s_local, op.Where(op.IsInf(top_local, detect_positive=0), 0.0, top_local)))
    out_local = op.MatMul(p_local, v_local)  # (B, Hkv, rep, nc, C, D + 4): column D holds the row sums
    local_shape = op.Concat(b, hkv, rep, op.Mul(nc, chunk), axis=0)
    keep_end = op.Add(front, n)
    part_shape = op.Concat(b, hkv, one, rows, axis=0)
    top_local = op.Reshape(op.Slice(op.Reshape(top_local, local_shape), front, keep_end, three), part_shape)
    out_local = op.Reshape(op.Slice(op.Reshape(out_local, op.Concat(local_shape, d4, axis=0)), front, keep_end, three),
                           op.Concat(part_shape, d4, axis=0))  # (B, Hkv, 1, rows, D + 4)

    # --- the hash rounds: (query block, key block) pairs of one bucket's (bucket, row)-sorted queries and keys.
    q_perm, q_count, q_start, q_end, q_within = BucketSort(qb, n_buckets)  # bucket c: sorted slots [start, end)
    k_perm, k_count, k_start, k_end, _ = BucketSort(KBuckets, n_buckets)
    # Blocks from a bucket's mean size M / b: query blocks of 1/QUERY_BLOCK_SHARE of it within [16, 128], key
    # blocks of 1/KEY_BLOCK_SHARE of it within [bq, 4·bq]. Each pair gathers its bq queries and bk keys and
    # values, and each row gathers back one output per key block of its query block, so small blocks move
    # more data per score; a bucket pads its queries and keys to whole blocks, so blocks much longer than a
    # bucket compute scores for nothing. On onnxruntime's CUDA provider (the 12-layer fp16 example,
    # N = 16384, b = 32 and 16, so bq = 128; the merge then still scattered) key blocks of the whole mean
    # (512 keys for lsh) ran 100.0 / 119.3 ms (lsh / routed), half of it 102.6 / 126.5, a quarter
    # 118.0 / 128.4; query blocks of 64 with 512 keys 104.7 / 120.4.
    mean = op.Div(m, n_buckets)
    bq = op.Min(op.Max(op.Div(mean, op.Constant(value_ints=[QUERY_BLOCK_SHARE])), op.Constant(value_ints=[16])),
                op.Constant(value_ints=[128]))
    bk = op.Min(op.Max(op.Div(mean, op.Constant(value_ints=[KEY_BLOCK_SHARE])), bq), op.Mul(bq, four))
    k_blocks = op.Div(op.Sub(op.Add(k_count, bk), one), bk)
    pairs = op.Mul(op.Div(op.Sub(op.Add(q_count, bq), one), bq), k_blocks)  # bucket c: its query blocks × key blocks
    p_end = op.CumSum(pairs, three)
    p_start = op.Sub(p_end, pairs)
    total = op.Slice(p_end, op.Sub(n_buckets, one), n_buckets, three)  # (B, Hkv, R, 1)
    # The pair count and the most key blocks of one query block depend on the data: read off the device once,
    # together. The Shape of a tensor that size is a host value, so every size below derives from it on the
    # host (onnx_functions), with no further wait.
    # At least one pair, so that the gathers below always have a row to read.
    sizes = op.Shape(op.ConstantOfShape(op.Concat(op.Max(op.Reshape(op.ReduceMax(total, keepdims=0), one), one),
                                                  op.Reshape(op.ReduceMax(k_blocks, keepdims=0), one), axis=0),
                                        value=_ZERO_I64))
    npair_1 = op.Slice(sizes, zero, one)
    most = op.Slice(sizes, one, two)
    npair = op.Squeeze(npair_1)
    g = op.Range(0, npair, 1)
    # Pair g's bucket: the last bucket whose first pair is <= g (an empty bucket starts where the next one does).
    starts_at = op.ScatterElements(op.ConstantOfShape(op.Concat(b, hkv, r, op.Add(npair_1, one), axis=0),
                                                      value=_ZERO_I64),
                                   op.Min(p_start, npair), op.Expand(op.Constant(value_int=1), op.Shape(p_start)),
                                   axis=3, reduction="add")
    bucket = op.Sub(op.Slice(op.CumSum(starts_at, three), zero, npair_1, three), one)
    t = op.Sub(g, op.GatherElements(p_start, bucket, axis=3))  # the pair's index inside its bucket
    per_row = op.Max(op.GatherElements(k_blocks, bucket, axis=3), one)
    first_slot = op.Add(op.GatherElements(q_start, bucket, axis=3), op.Mul(op.Div(t, per_row), bq))
    first_key = op.Add(op.GatherElements(k_start, bucket, axis=3), op.Mul(op.Mod(t, per_row), bk))
    slot = op.Add(op.Unsqueeze(first_slot, four), op.Range(0, op.Squeeze(bq), 1))  # (B, Hkv, R, npair, bq)
    flat_rows = op.Concat(b, hkv, r, op.Constant(value_ints=[-1]), axis=0)
    row_idx = op.Reshape(op.GatherElements(q_perm, op.Reshape(op.Min(slot, op.Sub(rows, one)), flat_rows), axis=3),
                         op.Concat(b, hkv, r, npair_1, bq, axis=0))
    at = op.Add(op.Unsqueeze(first_key, four), op.Range(0, op.Squeeze(bk), 1))  # (B, Hkv, R, npair, bk) sorted keys
    key_ok = op.Less(at, op.Unsqueeze(op.GatherElements(k_end, bucket, axis=3), four))
    # A key block's padding reads the extra key M, whose bias is −inf.
    col = op.Where(key_ok, op.Reshape(op.GatherElements(k_perm, op.Reshape(op.Min(at, op.Sub(m, one)), flat_rows),
                                                        axis=3), op.Concat(b, hkv, r, npair_1, bk, axis=0)), m)

    # (batch, kv head) folded into the row index: one Gather per operand.
    bh = op.Reshape(op.Range(0, op.Squeeze(op.Mul(b, hkv)), 1), op.Concat(b, hkv, op.Constant(value_ints=[1, 1, 1]),
                                                                         axis=0))
    q_rows = op.Add(row_idx, op.Mul(bh, rows))
    k_rows = op.Add(col, op.Mul(bh, m1))
    flat_d = op.Concat(op.Constant(value_ints=[-1]), d4, axis=0)
    qs = op.Gather(op.Reshape(q_ext, flat_d), q_rows, axis=0)  # (B, Hkv, R, npair, bq, D + 4)
    ks = op.Gather(op.Reshape(k_ext, flat_d), k_rows, axis=0)  # (B, Hkv, R, npair, bk, D + 4)
    vs = op.Gather(op.Reshape(v_ext, flat_d), k_rows, axis=0)
    s = op.MatMul(qs, op.Transpose(ks, perm=[0, 1, 2, 3, 5, 4]))  # (B, Hkv, R, npair, bq, bk)
    if capped:
        s = op.Add(Softcap(s, cap), op.Unsqueeze(op.Gather(op.Reshape(bias, op.Constant(value_ints=[-1])), k_rows,
                                                           axis=0), four))
    else:
        s = op.Identity(s)

    qpos6 = op.Unsqueeze(op.Add(op.Mod(row_idx, n), off), five)
    col6 = op.Unsqueeze(col, four)
    s = BucketDenseMask(s, Mask, batch6, op.Unsqueeze(op.Add(op.Mul(op.Squeeze(kv_head6, five), rep),
                                                            op.Div(row_idx, n)), five),
                        op.Unsqueeze(op.Mod(row_idx, n), five), col6)
    s = RoundMask(s, qb, kb, q_rows, k_rows, qpos6, col6, causal, several)
    top = LastAxisMax(s)
    p = op.Exp(op.Sub(s, op.Where(op.IsInf(top, detect_positive=0), 0.0, top)))
    out = op.MatMul(p, vs)  # (B, Hkv, R, npair, bq, D + 4): column D holds the row sums

    # Back to rows h·N + i, merging the key blocks of a row as flash attention does. A row's pairs are the
    # key blocks of its query block, consecutive pairs from its bucket's first pair: each row gathers the
    # pairs' maxima and outputs (padded to the most key blocks any query block has, with an empty pair of
    # max −inf), rescales them to its own max and sums them in one small MatMul. Gathers, not scatters:
    # onnxruntime's reducing scatters were the slowest ops here on CUDA (ScatterND 3.7 ms a layer at
    # N = 16384) or on the CPU (ScatterElements, whose indices are as large as the outputs).
    blocks_c = op.GatherElements(k_blocks, qb, axis=3)  # (B, Hkv, R, rows): the row's key blocks
    first_pair = op.Add(op.GatherElements(p_start, qb, axis=3),
                        op.Mul(op.Div(q_within, bq), op.Max(blocks_c, one)))
    jj = op.Range(0, op.Squeeze(most), 1)
    bhr = op.Reshape(op.Range(0, op.Squeeze(op.Mul(op.Mul(b, hkv), r)), 1), op.Concat(b, hkv, r, one, one, axis=0))
    at_pair = op.Add(op.Mul(op.Add(op.Mul(bhr, npair_1), op.Unsqueeze(first_pair, four)), bq),
                     op.Add(op.Mul(jj, bq), op.Unsqueeze(op.Mod(q_within, bq), four)))  # (B, Hkv, R, rows, most)
    # A row with fewer key blocks reads pair row 0 for the rest, weighted 0 (every pair's output is finite).
    real = op.Less(jj, op.Unsqueeze(blocks_c, four))
    at_pair = op.Where(real, at_pair, op.Constant(value_int=0))
    pair_tops = op.Where(real, op.Gather(op.Reshape(top, op.Constant(value_ints=[-1])), at_pair, axis=0), _NEG_INF)
    row_top = LastAxisMax(pair_tops)  # (B, Hkv, R, rows, 1)
    weight = op.Exp(op.Sub(pair_tops, op.Where(op.IsInf(row_top, detect_positive=0), 0.0, row_top)))
    pair_out = op.Gather(op.Reshape(out, flat_d), at_pair, axis=0)  # (B, Hkv, R, rows, most, D + 4)
    out_r = op.Squeeze(op.MatMul(op.Unsqueeze(weight, four), pair_out), four)  # (B, Hkv, R, rows, D + 4)
    top_r = op.Squeeze(row_top, four)

    # --- one softmax over the union: merge the parts' (max, output with its row sums in column D).
    tops = op.Concat(top_local, top_r, axis=2)  # (B, Hkv, 1 + R, rows)
    best = op.GatherElements(tops, op.ArgMax(tops, axis=2, keepdims=1), axis=2)
    best = op.Where(op.IsInf(best, detect_positive=0), 0.0, best)  # a row with no key: every part weighs 0
    weight = op.Unsqueeze(op.Exp(op.Sub(tops, best)), four)
    total = op.Add(op.Mul(op.Slice(weight, zero, one, two), out_local),
                   SumOverRounds(op.Mul(op.Slice(weight, one, op.Add(r, one), two), out_r), several))
    # A row with no key and a finite sink then has a positive sum and a zero output: y = 0.
    total_sum = SinkDenominator(op.Slice(total, d, op.Add(d, one), four), best, SinkLogits)
    y = op.Where(op.Greater(total_sum, 0.0), op.Div(op.Slice(total, zero, d, four), op.Max(total_sum, 1e-38)), 0.0)
    return op.CastLike(op.Reshape(y, op.Concat(b, h, n, d, axis=0)), Q)


# What a body calling BucketAttention lists in its CALLS.
CALLS = (BucketAttention, BucketDenseMask, BucketSort, MaskScalar, RoundMask, SinkDenominator, SumOverRounds,
         UnmatchedKeys)
