"""torch.ops.attnopt.lsh_attention: hash q and k, then the sorted-bucket machinery."""

from __future__ import annotations

from ..buckets import bucket_attention
from ..torch_ops import define_op
from .hashing import hash_buckets


def forward(q, k, v, mask, key_padding, rotations, n_buckets: int, n_rounds: int, chunk: int, seed: int, sinks: int,
            scale: float, causal: bool, softcap: float):
    if rotations.shape[0] != n_rounds:
        raise ValueError(f"lsh: {rotations.shape[0]} rotations for n_rounds={n_rounds}")
    return bucket_attention(q, k, v, mask, key_padding, hash_buckets(q, rotations, n_buckets),
                            hash_buckets(k, rotations, n_buckets), n_buckets=n_buckets, chunk=chunk, sinks=sinks,
                            scale=scale, causal=causal, softcap=softcap)


lsh_attention = define_op("lsh", forward)
