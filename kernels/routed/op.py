"""torch.ops.attnopt.routed_attention: k-means routing, then the sorted-bucket machinery (clusters as buckets)."""

from __future__ import annotations

from ..buckets import bucket_attention
from ..torch_ops import define_op
from .clusters import route


def forward(q, k, v, mask, key_padding, n_clusters: int, top_k: int, iters: int, seed: int, chunk: int, sinks: int,
            scale: float, causal: bool, softcap: float):
    q_buckets, k_buckets = route(q, k, key_padding, n_clusters=n_clusters, top_k=top_k, iters=iters)
    return bucket_attention(q, k, v, mask, key_padding, q_buckets, k_buckets, n_buckets=n_clusters, chunk=chunk,
                            sinks=sinks, scale=scale, causal=causal, softcap=softcap)


routed_attention = define_op("routed", forward)
