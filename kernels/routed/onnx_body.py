"""routed's ONNX body: ai.attnopt::RoutedAttention, k-means routing (a Loop of Lloyd steps) feeding the
sorted-bucket machinery, the same math as kernels.routed.clusters."""

from __future__ import annotations

import onnx
import onnxscript
from onnxscript import opset18 as op

from ..buckets_onnx import CALLS as BUCKET_CALLS
from ..buckets_onnx import BucketAttention
from ..onnx_functions import attnopt_opset
from ..row_max_onnx import LastAxisMax

_FLOAT = onnx.TensorProto.FLOAT
_EPS = 1e-12  # kernels.routed.clusters.EPS
_NEG_INF = float("-inf")
_SAME = 1e-6  # kernels.routed.clusters.SAME
_ONE_F = onnx.helper.make_tensor("one", _FLOAT, [1], [1.0])


@onnxscript.script(attnopt_opset, default_opset=op)
def RoutedSimilarity(X, Mu):
    """(B, Hkv, S, c) X·μ_c, −inf for a centroid within SAME of an earlier one (clusters.similarity)."""
    last = op.Constant(value_ints=[-1])
    c = op.Shape(Mu, start=2, end=3)
    norms = op.ReduceSum(op.Mul(Mu, Mu), last, keepdims=0)  # (B, Hkv, c)
    dist = op.Sub(op.Add(op.Unsqueeze(norms, last), op.Unsqueeze(norms, op.Constant(value_ints=[-2]))),
                  op.Mul(op.MatMul(Mu, op.Transpose(Mu, perm=[0, 1, 3, 2])), 2.0))
    t = op.Range(0, op.Squeeze(c), 1)
    earlier = op.Less(op.Unsqueeze(t, op.Constant(value_ints=[0])), op.Unsqueeze(t, op.Constant(value_ints=[1])))
    same = op.And(op.Less(dist, _SAME), earlier)
    repeated = op.Greater(op.ReduceSum(op.Cast(same, to=onnx.TensorProto.INT64), last, keepdims=0), 0)
    sim = op.MatMul(X, op.Transpose(Mu, perm=[0, 1, 3, 2]))
    return op.Where(op.Unsqueeze(repeated, op.Constant(value_ints=[2])), _NEG_INF, sim)


@onnxscript.script(attnopt_opset, default_opset=op)
def RoutedAttention(Q, K, V, Mask, KeyPadding, SinkLogits, n_clusters: int, top_k: int, iters: int, seed: int,
                    chunk: int, sinks: int, scale: float, causal: int, softcap: float):
    """a(j) ∈ topk(i) or the same chunk of C positions or j < sinks; one softmax over the union."""
    one = op.Constant(value_ints=[1])
    last = op.Constant(value_ints=[-1])
    b = op.Shape(Q, start=0, end=1)
    h = op.Shape(Q, start=1, end=2)
    n = op.Shape(Q, start=2, end=3)
    d = op.Shape(Q, start=3, end=4)
    hkv = op.Shape(K, start=1, end=2)
    m = op.Shape(K, start=2, end=3)
    rep = op.Div(h, hkv)
    c = op.Reshape(op.Constant(value_int=n_clusters), one)

    k = op.Cast(K, to=_FLOAT)
    kn = op.Div(k, op.Max(op.Sqrt(op.ReduceSum(op.Mul(k, k), last, keepdims=1)), _EPS))
    # Keys weigh exp(padding − row max) in the means: 0 for a padded key.
    kp = op.Cast(KeyPadding, to=_FLOAT)
    kp_top = LastAxisMax(kp)
    weight = op.Exp(op.Sub(kp, op.Where(op.IsInf(kp_top, detect_positive=0), 0.0, kp_top)))
    weight = op.Unsqueeze(op.Expand(weight, op.Concat(op.Shape(kp, start=0, end=1), m, axis=0)),
                          op.Constant(value_ints=[1, 3]))  # (B | 1, 1, M, 1)
    clusters = op.Range(0, op.Squeeze(c), 1)
    mu = op.Gather(kn, op.Div(op.Mul(clusters, m), c), axis=2)  # (B, Hkv, c, D): keys at ⌊t·M/c⌋
    # A ones column: each cluster's mass comes out of the MatMul that sums its keys (a ReduceSum over the
    # keys' axis took 0.8 ms a step on onnxruntime's CUDA provider at M = 16384, H = 12).
    kn_ones = op.Concat(kn, op.ConstantOfShape(op.Concat(op.Shape(kn, start=0, end=3), one, axis=0), value=_ONE_F),
                        axis=3)
    d_end = op.Add(d, one)
    steps = op.Constant(value_int=iters)
    for _ in range(steps):
        assign = op.ArgMax(RoutedSimilarity(kn, mu), axis=-1, keepdims=1)
        member = op.Mul(op.Cast(op.Equal(assign, clusters), to=_FLOAT), weight)  # (B, Hkv, M, c)
        summed = op.MatMul(op.Transpose(member, perm=[0, 1, 3, 2]), kn_ones)  # (B, Hkv, c, D + 1)
        sums = op.Slice(summed, op.Constant(value_ints=[0]), d, op.Constant(value_ints=[3]))
        mass = op.Slice(summed, d, d_end, op.Constant(value_ints=[3]))
        unit = op.Div(sums, op.Max(op.Sqrt(op.ReduceSum(op.Mul(sums, sums), last, keepdims=1)), _EPS))
        mu = op.Where(op.Greater(mass, 0.0), unit, mu)
    assign = op.ArgMax(RoutedSimilarity(kn, mu), axis=-1, keepdims=0)  # (B, Hkv, M)
    routes_n = op.Min(op.Reshape(op.Constant(value_int=top_k), one), c)
    affinity = RoutedSimilarity(op.Reshape(op.Cast(Q, to=_FLOAT), op.Concat(b, hkv, op.Mul(rep, n), d, axis=0)), mu)
    if op.Equal(op.ReduceMax(routes_n, keepdims=0), op.Constant(value_int=1)):  # a constant: folded at load
        routes = op.ArgMax(affinity, axis=-1, keepdims=1)  # the first maximum; TopK sorts every row on CUDA
    else:
        _, routes = op.TopK(affinity, routes_n, axis=-1, largest=1, sorted=1)  # ties: the lower cluster first
    q_buckets = op.Reshape(op.Transpose(op.Reshape(routes, op.Concat(b, hkv, rep, n, routes_n, axis=0)),
                                        perm=[0, 1, 2, 4, 3]), op.Concat(b, h, routes_n, n, axis=0))
    k_buckets = op.Expand(op.Unsqueeze(assign, op.Constant(value_ints=[2])), op.Concat(b, hkv, routes_n, m, axis=0))

    config = op.Concat(c, op.Reshape(op.Constant(value_int=chunk), one), op.Reshape(op.Constant(value_int=sinks), one),
                       routes_n, axis=0)
    scalars = op.Concat(op.Reshape(op.Constant(value_float=scale), one), op.Reshape(op.Constant(value_float=softcap), one),
                        op.Reshape(op.Cast(op.Constant(value_int=causal), to=_FLOAT), one), axis=0)
    return BucketAttention(Q, K, V, Mask, KeyPadding, SinkLogits, q_buckets, k_buckets, config, scalars)


BODY = RoutedAttention
CALLS = (RoutedSimilarity, *BUCKET_CALLS)
