"""lsh's ONNX body: ai.attnopt::LshAttention, the hash (MatMul, ArgMax) feeding the sorted-bucket machinery."""

from __future__ import annotations

import onnx
import onnxscript
from onnxscript import opset18 as op

from ..buckets_onnx import CALLS as BUCKET_CALLS
from ..buckets_onnx import BucketAttention
from ..onnx_functions import attnopt_opset

_FLOAT = onnx.TensorProto.FLOAT


@onnxscript.script(attnopt_opset, default_opset=op)
def LshHash(X, Rotations, NBuckets):
    """(B, H, S, D) -> (B, H, R, S) buckets, as kernels.lsh.hashing: argmax over [xR ; −xR] without concatenating."""
    proj = op.MatMul(op.Unsqueeze(op.Cast(X, to=_FLOAT), op.Constant(value_ints=[2])),
                     op.Cast(Rotations, to=_FLOAT))  # (B, H, R, S, b/2)
    top_at = op.ArgMax(proj, axis=-1, keepdims=1)  # the first maximum, as torch's max (and TopK) return
    low_at = op.ArgMin(proj, axis=-1, keepdims=1)
    top = op.GatherElements(proj, top_at, axis=-1)
    low = op.GatherElements(proj, low_at, axis=-1)
    half = op.Shape(proj, start=4, end=5)
    bucket = op.Where(op.GreaterOrEqual(top, op.Neg(low)), top_at, op.Add(low_at, half))
    return op.Mod(op.Squeeze(bucket, op.Constant(value_ints=[4])), NBuckets)


@onnxscript.script(attnopt_opset, default_opset=op)
def LshAttention(Q, K, V, Mask, KeyPadding, SinkLogits, rotations, n_buckets: int, n_rounds: int, chunk: int,
                 seed: int, sinks: int, scale: float, causal: int, softcap: float):
    """(∃ r: h_r(q_i) = h_r(k_j)) or the same chunk of C positions or j < sinks; one softmax over the union."""
    one = op.Constant(value_ints=[1])
    nb = op.Reshape(op.Constant(value_int=n_buckets), one)
    config = op.Concat(nb, op.Reshape(op.Constant(value_int=chunk), one), op.Reshape(op.Constant(value_int=sinks), one),
                       op.Reshape(op.Constant(value_int=n_rounds), one), axis=0)
    scalars = op.Concat(op.Reshape(op.Constant(value_float=scale), one), op.Reshape(op.Constant(value_float=softcap), one),
                        op.Reshape(op.Cast(op.Constant(value_int=causal), to=_FLOAT), one), axis=0)
    return BucketAttention(Q, K, V, Mask, KeyPadding, SinkLogits, LshHash(Q, rotations, nb), LshHash(K, rotations, nb),
                           config, scalars)


BODY = LshAttention
CALLS = (LshHash, *BUCKET_CALLS)
