"""torch.ops.attnopt.lsh_attention: hash q and k, then the sorted-bucket machinery.

CPU: the torch form (``kernels.buckets``). CUDA: the Triton form (``kernels.triton_buckets``): the hash is one
fp32 projection pass over q and over k, then the sorted-bucket flash kernels.
"""

from __future__ import annotations

import torch

from ..buckets import bucket_attention
from ..torch_ops import define_op
from .hashing import check_rotations, hash_buckets


def forward(q, k, v, mask, key_padding, rotations, n_buckets: int, n_rounds: int, chunk: int, seed: int, sinks: int,
            scale: float, causal: bool, softcap: float, sink_logits=None):
    if rotations.shape[0] != n_rounds:
        raise ValueError(f"lsh: {rotations.shape[0]} rotations for n_rounds={n_rounds}")
    return bucket_attention(q, k, v, mask, key_padding, hash_buckets(q, rotations, n_buckets),
                            hash_buckets(k, rotations, n_buckets), n_buckets=n_buckets, chunk=chunk, sinks=sinks,
                            scale=scale, causal=causal, softcap=softcap, sink_logits=sink_logits)


def cuda_forward(q, k, v, mask, key_padding, rotations, n_buckets: int, n_rounds: int, chunk: int, seed: int,
                 sinks: int, scale: float, causal: bool, softcap: float, sink_logits=None):
    """The same op through Triton (also runs on CPU tensors under TRITON_INTERPRET=1, as the tests do)."""
    from .. import triton_buckets  # triton loads only where the Triton form runs

    if rotations.shape[0] != n_rounds:
        raise ValueError(f"lsh: {rotations.shape[0]} rotations for n_rounds={n_rounds}")
    check_rotations(rotations, q.shape[-1])
    w = rotations.to(device=q.device, dtype=torch.float32)[None, None]  # (1, 1, R, D, b/2): every head
    q_buckets = triton_buckets.project_top(q, w, mod=n_buckets, signed=True)
    k_buckets = triton_buckets.project_top(k, w, mod=n_buckets, signed=True)
    return triton_buckets.bucket_attention(q, k, v, mask, key_padding, q_buckets, k_buckets, n_buckets=n_buckets,
                                           chunk=chunk, sinks=sinks, scale=scale, causal=causal, softcap=softcap,
                                           sink_logits=sink_logits)


lsh_attention = define_op("lsh", forward, cuda=cuda_forward)
