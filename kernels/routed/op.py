"""torch.ops.attnopt.routed_attention: k-means routing, then the sorted-bucket machinery (clusters as buckets).

CPU: the torch form (``kernels.buckets``). CUDA: the same k-means (``clusters.centroids``) with each Lloyd
step one Triton pass (``kernels.triton_kmeans``); the key clusters and query routes are one fp32 projection
pass each, and attention is the Triton sorted-bucket kernels (``kernels.triton_buckets``).
"""

from __future__ import annotations

import torch

from ..buckets import bucket_attention
from ..torch_ops import define_op
from .clusters import centroids, distinct, key_weights, route


def forward(q, k, v, mask, key_padding, n_clusters: int, top_k: int, iters: int, seed: int, chunk: int, sinks: int,
            scale: float, causal: bool, softcap: float, sink_logits=None):
    q_buckets, k_buckets = route(q, k, key_padding, n_clusters=n_clusters, top_k=top_k, iters=iters)
    return bucket_attention(q, k, v, mask, key_padding, q_buckets, k_buckets, n_buckets=n_clusters, chunk=chunk,
                            sinks=sinks, scale=scale, causal=causal, softcap=softcap, sink_logits=sink_logits)


def cuda_buckets(q, k, key_padding, n_clusters: int, top_k: int, iters: int):
    """(q_buckets (B, H, T, N), k_buckets (B, Hkv, T, M)) as ``clusters.route`` gives them, in Triton.

    The reference's Lloyd iterations, each step one Triton pass over k and one small update launch
    (``triton_kmeans.centroids``; the torch step where c or D is too wide for its registers); its bf16
    products round differently from torch's fp32 ones, so a key on a near-tie may join the other cluster
    (the GPU test bounds how many). Then one projection pass each for the keys'
    clusters and the queries' routes.
    """
    from .. import triton_buckets, triton_kmeans  # triton loads only where the Triton form runs

    B, Hkv, M, _ = k.shape
    weights = key_weights(key_padding, M, k.device)
    # (B, Hkv, c, D) unit centroids, fp32; a repeated centroid takes nothing (−inf)
    if triton_kmeans.fits(k, n_clusters):
        mu, repeated = triton_kmeans.centroids(k, weights, n_clusters, iters)
    else:
        mu = centroids(k, weights, n_clusters, iters)  # the torch step
        repeated = torch.where(distinct(mu), 0.0, float("-inf"))
    w = mu.transpose(-1, -2)[:, :, None]  # (B, Hkv, 1, D, c)
    t = min(top_k, n_clusters)
    k_buckets = triton_buckets.project_top(k, w, top=1, signed=False, normalize=True, col_bias=repeated)
    q_buckets = triton_buckets.project_top(q, w, top=t, signed=False, col_bias=repeated)
    return q_buckets, k_buckets.expand(B, Hkv, t, M)


def cuda_forward(q, k, v, mask, key_padding, n_clusters: int, top_k: int, iters: int, seed: int, chunk: int,
                 sinks: int, scale: float, causal: bool, softcap: float, sink_logits=None):
    """The same op through Triton (also runs on CPU tensors under TRITON_INTERPRET=1, as the tests do)."""
    from .. import triton_buckets

    q_buckets, k_buckets = cuda_buckets(q, k, key_padding, n_clusters, top_k, iters)
    return triton_buckets.bucket_attention(q, k, v, mask, key_padding, q_buckets, k_buckets, n_buckets=n_clusters,
                                           chunk=chunk, sinks=sinks, scale=scale, causal=causal, softcap=softcap,
                                           sink_logits=sink_logits)


routed_attention = define_op("routed", forward, cuda=cuda_forward)
