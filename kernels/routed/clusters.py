"""Routing, shared by the reference and the torch op: k-means centroids, key clusters, query routes.

Spherical k-means: the keys are normalised and so are the centroids, so "nearest
centroid" and "largest μ_c·k̂_j" (VARIANTS.md's assignment) are the same rule.
The initial centroids are the keys at positions ⌊t·M/c⌋, t = 0..c−1. Keys weigh
exp(key padding) in the centroid means (0 for a padded key), so padding does
not drag the centroids; an empty cluster keeps its centroid.

A centroid (nearly) equal to an earlier one takes no key and no query: that
happens when c > M, when keys repeat (the initial positions hold one token),
and when a mean of identical keys is renormalised, one ulp away from its
members. Their tie would be broken by float noise, differently in torch and in
onnxruntime. Other ties go to the lowest cluster index, as ONNX ArgMax and TopK
break them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

EPS = 1e-12  # the norm floor of F.normalize; the ONNX body uses the same
# Centroids closer than this (squared distance; unit vectors 1e-3 rad apart) are one cluster: far above
# float noise, far below any real distance between clusters.
SAME = 1e-6


def key_weights(key_padding: Tensor | None, m: int, device) -> Tensor:
    """(B | 1, M) weights exp(padding − row max): 1 for a kept key, 0 for a padded one (−inf or finfo.min)."""
    if key_padding is None:
        return torch.ones(1, m, device=device)
    kp = key_padding.float().expand(key_padding.shape[0], m)
    top = kp.amax(dim=-1, keepdim=True)
    return torch.exp(kp - torch.where(torch.isneginf(top), 0.0, top))


def distinct(mu: Tensor) -> Tensor:
    """(B, Hkv, c) bool: False for a centroid within squared distance SAME of an earlier one."""
    c = mu.shape[-2]
    norms = (mu * mu).sum(dim=-1)
    dist = norms[..., :, None] + norms[..., None, :] - 2 * (mu @ mu.transpose(-1, -2))
    earlier = torch.ones(c, c, dtype=torch.bool, device=mu.device).tril(-1)
    return ~((dist < SAME) & earlier).any(dim=-1)


def similarity(x: Tensor, mu: Tensor) -> Tensor:
    """(B, Hkv, S, c) x·μ_c, −inf for a repeated centroid."""
    return torch.where(distinct(mu)[..., None, :], x @ mu.transpose(-1, -2), float("-inf"))


CHUNK = 1024  # keys per partial product in cluster_sums


def cluster_sums(member: Tensor, kn: Tensor) -> Tensor:
    """(B, Hkv, c, D) Σ_j member[j, c]·kn[j], as partial products over chunks of CHUNK keys, then summed.

    One long (c × M)(M × D) product has a short output and a long inner dimension: on the
    H200 cuBLAS ran it at about 2 TFLOP/s (2.2 ms at M = 65536, H = 16, c = 16). Chunks
    make it a batch of short products. Views only: K and the one-hot are not copied.
    """
    m = kn.shape[2]
    whole = m - m % CHUNK
    if not whole:
        return member.transpose(-1, -2) @ kn
    chunked = member[:, :, :whole].unflatten(2, (-1, CHUNK)), kn[:, :, :whole].unflatten(2, (-1, CHUNK))
    sums = (chunked[0].transpose(-1, -2) @ chunked[1]).sum(dim=2)
    if whole < m:
        sums = sums + member[:, :, whole:].transpose(-1, -2) @ kn[:, :, whole:]
    return sums


def centroids(k: Tensor, weights: Tensor, n_clusters: int, iters: int) -> Tensor:
    """(B, Hkv, c, D) unit centroids after ``iters`` Lloyd iterations on the normalised keys."""
    kn = F.normalize(k.float(), dim=-1, eps=EPS)
    m = k.shape[2]
    clusters = torch.arange(n_clusters, device=k.device)
    mu = kn[:, :, torch.div(clusters * m, n_clusters, rounding_mode="floor")]
    w = weights[:, None, :, None]  # (B | 1, 1, M, 1)
    for _ in range(iters):
        assign = torch.argmax(similarity(kn, mu), dim=-1, keepdim=True)  # (B, Hkv, M, 1)
        member = (assign == clusters).float() * w  # (B, Hkv, M, c)
        sums = cluster_sums(member, kn)
        mass = member.sum(dim=2)[..., None]
        mu = torch.where(mass > 0, F.normalize(sums, dim=-1, eps=EPS), mu)
    return mu


def route(q: Tensor, k: Tensor, key_padding: Tensor | None, *, n_clusters: int, top_k: int,
          iters: int) -> tuple[Tensor, Tensor]:
    """(q_buckets (B, H, T, N), k_buckets (B, Hkv, T, M)) with T = min(top_k, c): route t of query i is its
    t-th best cluster by μ_c·q_i; every round gives a key its own cluster a(j) = argmax_c μ_c·k̂_j."""
    B, H, N, D = q.shape
    Hkv, M = k.shape[1], k.shape[2]
    mu = centroids(k, key_weights(key_padding, M, k.device), n_clusters, iters)
    kn = F.normalize(k.float(), dim=-1, eps=EPS)
    assign = torch.argmax(similarity(kn, mu), dim=-1)  # (B, Hkv, M)
    t = min(top_k, n_clusters)
    # q̂ ranks clusters as q does (a positive factor), and q = 0 stays finite.
    affinity = similarity(q.float().reshape(B, Hkv, -1, D), mu)  # (B, Hkv, rep·N, c)
    routes = torch.sort(affinity, dim=-1, descending=True, stable=True).indices[..., :t]
    q_buckets = routes.reshape(B, Hkv, H // Hkv, N, t).permute(0, 1, 2, 4, 3).reshape(B, H, t, N)
    return q_buckets, assign[:, :, None].expand(B, Hkv, t, M)
