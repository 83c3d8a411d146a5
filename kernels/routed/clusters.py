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


def similarity(x: Tensor, mu: Tensor, keep: Tensor | None = None) -> Tensor:
    """(B, Hkv, S, c) x·μ_c, −inf for a repeated centroid (``keep``: ``distinct(mu)``, if already known)."""
    keep = distinct(mu) if keep is None else keep
    return torch.where(keep[..., None, :], x @ mu.transpose(-1, -2), float("-inf"))


# Rows upcast to fp32 at a time: k-means and routing never hold an fp32 copy of all of K or Q (issue 9, item 4:
# no op upcasts a whole tensor). On the H200 (H = 16, D = 128) a chunk is 128 MiB of fp32.
UPCAST = 16384


def row_chunks(x: Tensor) -> list[Tensor]:
    """Views of x (B, Hkv, S, ...) of at most UPCAST rows along dim 2; an empty x gives one empty view."""
    return [x[:, :, a:a + UPCAST] for a in range(0, max(x.shape[2], 1), UPCAST)]


def unit(rows: Tensor) -> Tensor:
    """One chunk of rows in fp32, normalised (F.normalize's rule)."""
    return F.normalize(rows.float(), dim=-1, eps=EPS)


def nearest(x: Tensor, mu: Tensor, keep: Tensor) -> Tensor:
    """(B, Hkv, S) the cluster of each row of x (B, Hkv, S, D): argmax_c μ_c·x̂, ties to the lowest c."""
    return torch.cat([torch.argmax(similarity(unit(rows), mu, keep), dim=-1) for rows in row_chunks(x)], dim=2)


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


def lloyd_sums(k: Tensor, weights: Tensor, mu: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
    """One Lloyd step's statistics: (sums (B, Hkv, c, D), mass (B, Hkv, c)), Σ w_j·k̂_j and Σ w_j over the keys
    nearest each centroid. torch, UPCAST keys at a time; ``triton_kmeans.lloyd_sums`` is the CUDA form."""
    b, hkv, _, d = k.shape
    c = mu.shape[-2]
    clusters = torch.arange(c, device=k.device)
    sums = mu.new_zeros(b, hkv, c, d)
    mass = mu.new_zeros(b, hkv, c)
    for rows, w in zip(row_chunks(k), row_chunks(weights[:, None])):
        kn = unit(rows)
        assign = torch.argmax(similarity(kn, mu, keep), dim=-1, keepdim=True)  # (B, Hkv, S, 1)
        member = (assign == clusters).float() * w[..., None]  # (B, Hkv, S, c)
        sums = sums + cluster_sums(member, kn)
        mass = mass + member.sum(dim=2)
    return sums, mass


def centroids(k: Tensor, weights: Tensor, n_clusters: int, iters: int, step=lloyd_sums) -> Tensor:
    """(B, Hkv, c, D) unit centroids after ``iters`` Lloyd iterations on the normalised keys.

    ``step`` computes one iteration's (sums, mass) (``lloyd_sums``'s signature): the torch form, or the
    Triton one on CUDA.
    """
    m = k.shape[2]
    clusters = torch.arange(n_clusters, device=k.device)
    first = torch.div(clusters * m, n_clusters, rounding_mode="floor")
    mu = F.normalize(k[:, :, first].float(), dim=-1, eps=EPS)
    for _ in range(iters):
        sums, mass = step(k, weights, mu, distinct(mu))
        mu = torch.where(mass[..., None] > 0, F.normalize(sums, dim=-1, eps=EPS), mu)
    return mu


def route(q: Tensor, k: Tensor, key_padding: Tensor | None, *, n_clusters: int, top_k: int,
          iters: int) -> tuple[Tensor, Tensor]:
    """(q_buckets (B, H, T, N), k_buckets (B, Hkv, T, M)) with T = min(top_k, c): route t of query i is its
    t-th best cluster by μ_c·q_i; every round gives a key its own cluster a(j) = argmax_c μ_c·k̂_j."""
    B, H, N, D = q.shape
    Hkv, M = k.shape[1], k.shape[2]
    mu = centroids(k, key_weights(key_padding, M, k.device), n_clusters, iters)
    keep = distinct(mu)
    assign = nearest(k, mu, keep)  # (B, Hkv, M)
    t = min(top_k, n_clusters)
    # q̂ ranks clusters as q does (a positive factor): the rows need no normalising, and q = 0 stays finite.
    qg = q.reshape(B, Hkv, -1, D)  # (B, Hkv, rep·N, D)
    routes = torch.cat([torch.sort(similarity(rows.float(), mu, keep), dim=-1, descending=True, stable=True)
                        .indices[..., :t] for rows in row_chunks(qg)], dim=2)
    q_buckets = routes.reshape(B, Hkv, H // Hkv, N, t).permute(0, 1, 2, 4, 3).reshape(B, H, t, N)
    return q_buckets, assign[:, :, None].expand(B, Hkv, t, M)
