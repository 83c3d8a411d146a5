"""routed's k-means step in Triton: one pass over K per Lloyd iteration, in the input dtype.

The torch step (``routed.clusters.lloyd_sums``) runs a dozen kernels per chunk of keys:
upcast, normalise, the similarity product, argmax, the one-hot, its weights and the
(c × S)(S × D) sums, each a trip through memory. Here one program takes a run of keys
of one (batch, kv head), takes each tile's norms in registers, assigns every key
to its nearest centroid (the references' rule: ties to the lowest cluster, repeated
centroids never win) and adds the weighted unit keys into per-program partial sums.
torch then sums the partials: no atomics, so the result does not depend on the schedule.

bf16 keys enter both products as they are, against the fp32 side split into two bf16 terms
(16 significant bits, ``triton_buckets._split_bf16``), as ``project_top`` does for the final
assignment. On the H200 (N = 65536, 16 kv heads, D = 128) a step took 0.125 ms for c = 16 and
0.238 ms for c = 64, against 0.55 and 1.47 ms with fp32 tiles and three tf32 products (tf32x3,
the form other dtypes take) in the same sweep (BENCHMARKS.md).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .triton_launch import launch
from .triton_buckets import _dot, _interpreting, _split_bf16

# Keys per program: at M = 65536 and 16 kv heads, 1024 programs, and the partial sums stay a few MiB.
KEYS_PER_PROGRAM = 1024
# Register budget: the (c, D) sums and the centroid tile live in registers, so wider problems take the torch step.
# Head dims past 128 (DeepSeek MLA's 192, padded to 256) run on twice the warps, so each thread holds as much.
MAX_CLUSTERS = 64
MAX_HEAD_DIM = 256


def _warps(head_dim: int) -> int:
    return 4 if head_dim <= 128 else 8


@triton.jit
def _lloyd_fwd(
    K, W, MU, COLBIAS, SUMS, MASS,
    stride_kb, stride_kh, stride_kn, stride_wb,
    HKV, M, C, PARTS,
    HEAD_DIM: tl.constexpr, D_TRUE: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
    KEYS: tl.constexpr, PREC: tl.constexpr, SPLIT: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """SUMS (B·Hkv, PARTS, BLOCK_C, HEAD_DIM) and MASS (B·Hkv, PARTS, BLOCK_C): this program's keys
    [pid·KEYS, (pid + 1)·KEYS), each w_j·k̂_j added to its nearest centroid's row.

    SPLIT (bf16 keys): both products take the keys as they are, in bf16, and the fp32 factor on the other
    side as two bf16 terms (hi + lo, 16 significant bits): x̂·μ = (k·μ)/‖k‖ ranks clusters as k·μ does,
    and Σ w·k̂ = Σ (w/‖k‖)·k. Otherwise fp32 tiles and PREC products. UPCAST (the interpreter,
    whose bf16 products are wrong) runs the split's bf16 terms as fp32 tiles of the same values.
    """
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // HKV
    h = bh % HKV
    offs_d = tl.arange(0, HEAD_DIM)
    cols = tl.arange(0, BLOCK_C)
    col_ok = cols < C
    d_ok = offs_d < D_TRUE
    # centroids as a (D, c) tile; padded columns score −inf and never win
    mu = tl.load(MU + bh.to(tl.int64) * C * D_TRUE + cols[None, :] * D_TRUE + offs_d[:, None],
                 mask=d_ok[:, None] & col_ok[None, :], other=0.0)
    if SPLIT:
        mu_hi, mu_lo = _split_bf16(mu, UPCAST)
    bias = tl.load(COLBIAS + bh.to(tl.int64) * C + cols, mask=col_ok, other=float("-inf"))
    Kb = K + b.to(tl.int64) * stride_kb + h.to(tl.int64) * stride_kh
    sums = tl.zeros([BLOCK_C, HEAD_DIM], dtype=tl.float32)
    mass = tl.zeros([BLOCK_C], dtype=tl.float32)
    for start in range(pid * KEYS, tl.minimum(pid * KEYS + KEYS, M), BLOCK_S):
        rows = start + tl.arange(0, BLOCK_S)
        row_ok = rows < M
        k = tl.load(Kb + rows.to(tl.int64)[:, None] * stride_kn + offs_d[None, :],
                    mask=row_ok[:, None] & d_ok[None, :], other=0.0)
        x = k.to(tl.float32)
        inv_norm = 1.0 / tl.maximum(tl.sqrt(tl.sum(x * x, 1)), 1e-12)  # F.normalize's divisor
        w = tl.load(W + b.to(tl.int64) * stride_wb + rows, mask=row_ok, other=0.0)
        if UPCAST:
            k = x
        if SPLIT:
            sim = _dot(k, mu_hi, UPCAST) + _dot(k, mu_lo, UPCAST)
        else:
            x = x * inv_norm[:, None]
            sim = tl.dot(x, mu, input_precision=PREC)
        sim = sim + bias[None, :]
        best = tl.max(sim, 1)
        at = tl.min(tl.where(sim == best[:, None], cols[None, :], BLOCK_C), 1)  # ties: the lowest cluster
        member = tl.where(cols[None, :] == at[:, None], w[:, None], 0.0)  # (BLOCK_S, BLOCK_C)
        mass += tl.sum(member, 0)
        if SPLIT:
            hi, lo = _split_bf16(member * inv_norm[:, None], UPCAST)
            sums += _dot(tl.trans(hi), k, UPCAST) + _dot(tl.trans(lo), k, UPCAST)
        else:
            sums += tl.dot(tl.trans(member), x, input_precision=PREC)
    part = bh.to(tl.int64) * PARTS + pid
    tl.store(SUMS + part * BLOCK_C * HEAD_DIM + cols[:, None] * HEAD_DIM + offs_d[None, :], sums)
    tl.store(MASS + part * BLOCK_C + cols, mass)


def fits(k: Tensor, n_clusters: int) -> bool:
    """Whether the Triton step serves this call (else ``routed.clusters.lloyd_sums``, the torch step)."""
    return n_clusters <= MAX_CLUSTERS and k.shape[-1] <= MAX_HEAD_DIM and k.shape[2] > 0


def lloyd_sums(k: Tensor, weights: Tensor, mu: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
    """``routed.clusters.lloyd_sums`` in one Triton pass over k: (sums (B, Hkv, c, D), mass (B, Hkv, c)) fp32.

    k (B, Hkv, M, D) in its own dtype; weights (B | 1, M) fp32; mu (B, Hkv, c, D) fp32 unit
    centroids; keep (B, Hkv, c) bool, False for a repeated centroid.
    """
    B, Hkv, _, D = k.shape
    c = mu.shape[-2]
    sums, mass = _partial_sums(k, weights, mu, torch.where(keep, 0.0, float("-inf")).float())
    return sums.sum(dim=1)[:, :c, :D].reshape(B, Hkv, c, D), mass.sum(dim=1)[:, :c].reshape(B, Hkv, c)


def _partial_sums(k: Tensor, weights: Tensor, mu: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
    """One Lloyd step's per-program partial sums (B·Hkv, parts, BLOCK_C, HEAD_DIM) and masses (B·Hkv, parts,
    BLOCK_C); ``bias`` (B, Hkv, c) is 0 for a centroid that may take keys, −inf for a repeated one."""
    B, Hkv, M, D = k.shape
    c = mu.shape[-2]
    if k.stride(-1) != 1:
        k = k.contiguous()
    weights = weights.float().contiguous()
    head_dim = max(16, triton.next_power_of_2(D))
    block_c = max(16, triton.next_power_of_2(c))
    # 64-key tiles on 4 warps, 1024 keys a program: in an H200 sweep, 32- or 128-key tiles, 8 warps and 2048
    # keys a program were slower or within 4%
    interpret = _interpreting()
    block_s = 16 if interpret else 64
    keys = 64 if interpret else KEYS_PER_PROGRAM
    parts = triton.cdiv(M, keys)
    sums = torch.empty(B * Hkv, parts, block_c, head_dim, dtype=torch.float32, device=k.device)
    mass = torch.empty(B * Hkv, parts, block_c, dtype=torch.float32, device=k.device)
    launch(_lloyd_fwd)[(parts, B * Hkv)](
        k, weights, mu.float().contiguous(), bias.contiguous(), sums, mass,
        k.stride(0), k.stride(1), k.stride(2), weights.stride(0) if weights.shape[0] > 1 else 0,
        Hkv, M, c, parts,
        HEAD_DIM=head_dim, D_TRUE=D, BLOCK_S=block_s, BLOCK_C=block_c, KEYS=keys,
        PREC="ieee" if interpret else "tf32x3", SPLIT=k.dtype == torch.bfloat16, UPCAST=interpret,
        num_warps=_warps(head_dim),
    )
    return sums, mass


@triton.jit
def _update_fwd(
    K, SUMS, MASS, MU, MU_OUT, BIAS_OUT, stride_kb, stride_kh, stride_kn, HKV, M, C, PARTS, eps, same,
    INIT: tl.constexpr, HEAD_DIM: tl.constexpr, D_TRUE: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """One (batch, kv head)'s centroids after a Lloyd step, and which of them repeat an earlier one.

    INIT: the first centroids, the unit keys at positions ⌊t·M/c⌋. Otherwise the step's partial sums and
    masses (``_partial_sums``) summed, each centroid with mass the unit mean of its keys and the others kept.
    MU_OUT (B·Hkv, C, D_TRUE) fp32; BIAS_OUT (B·Hkv, C) 0, or −inf for a centroid within squared distance
    ``same`` of an earlier one (``clusters.distinct``), the column bias of the next step and of the routing.
    """
    eps, same = tl.cast(eps, tl.float32), tl.cast(same, tl.float32)  # torch.compile passes floats as fp64
    bh = tl.program_id(0)
    b = bh // HKV
    h = bh % HKV
    cols = tl.arange(0, BLOCK_C)
    offs_d = tl.arange(0, HEAD_DIM)
    col_ok = cols < C
    tile_ok = col_ok[:, None] & (offs_d[None, :] < D_TRUE)
    if INIT:
        first = (cols.to(tl.int64) * M) // C
        x = tl.load(K + b.to(tl.int64) * stride_kb + h.to(tl.int64) * stride_kh + first[:, None] * stride_kn
                    + offs_d[None, :], mask=tile_ok, other=0.0).to(tl.float32)
        has = col_ok
    else:
        x = tl.zeros([BLOCK_C, HEAD_DIM], dtype=tl.float32)
        mass = tl.zeros([BLOCK_C], dtype=tl.float32)
        for p in range(PARTS):
            part = bh.to(tl.int64) * PARTS + p
            x += tl.load(SUMS + part * BLOCK_C * HEAD_DIM + cols[:, None] * HEAD_DIM + offs_d[None, :])
            mass += tl.load(MASS + part * BLOCK_C + cols)
        has = mass > 0.0
    unit = x / tl.maximum(tl.sqrt(tl.sum(x * x, 1)), eps)[:, None]  # F.normalize
    out = bh.to(tl.int64) * C * D_TRUE + cols[:, None] * D_TRUE + offs_d[None, :]
    if INIT:
        mu = unit
    else:
        mu = tl.where(has[:, None], unit, tl.load(MU + out, mask=tile_ok, other=0.0))
    tl.store(MU_OUT + out, mu, mask=tile_ok)
    # clusters.distinct: ‖μ_i‖² + ‖μ_j‖² − 2 μ_i·μ_j < same for some earlier j
    norms = tl.sum(mu * mu, 1)
    dots = tl.dot(mu, tl.trans(mu), input_precision="ieee")
    dist = norms[:, None] + tl.trans(norms[:, None]) - 2.0 * dots
    earlier = (cols[None, :] < cols[:, None]) & col_ok[None, :]
    repeated = tl.max(((dist < same) & earlier).to(tl.int32), 1) > 0
    tl.store(BIAS_OUT + bh.to(tl.int64) * C + cols, tl.where(repeated, float("-inf"), 0.0), mask=col_ok)


def centroids(k: Tensor, weights: Tensor, n_clusters: int, iters: int) -> tuple[Tensor, Tensor]:
    """``routed.clusters.centroids`` and ``distinct`` of the result, in Triton: (mu (B, Hkv, c, D) fp32 unit,
    bias (B, Hkv, c) fp32, 0 or −inf for a repeated centroid). Two launches a Lloyd step (the pass over k and
    the update), where the torch step ran about twenty small kernels a step (issue 9: at N = 16384 the host's
    launches set the op's time)."""
    from .routed.clusters import EPS, SAME

    B, Hkv, M, D = k.shape
    c = n_clusters
    if k.stride(-1) != 1:
        k = k.contiguous()
    mu = torch.empty(B, Hkv, c, D, dtype=torch.float32, device=k.device)
    bias = torch.empty(B, Hkv, c, dtype=torch.float32, device=k.device)
    head_dim = max(16, triton.next_power_of_2(D))
    meta = dict(HEAD_DIM=head_dim, D_TRUE=D, BLOCK_C=max(16, triton.next_power_of_2(c)), num_warps=_warps(head_dim))
    update = launch(_update_fwd)
    update[(B * Hkv,)](k, mu, bias, mu, mu, bias, k.stride(0), k.stride(1), k.stride(2), Hkv, M, c, 0, EPS, SAME,
                       INIT=True, **meta)
    for _ in range(iters):
        sums, mass = _partial_sums(k, weights, mu, bias)
        new_mu, new_bias = torch.empty_like(mu), torch.empty_like(bias)
        update[(B * Hkv,)](k, sums, mass, mu, new_mu, new_bias, k.stride(0), k.stride(1), k.stride(2), Hkv, M, c,
                           sums.shape[1], EPS, SAME, INIT=False, **meta)
        mu, bias = new_mu, new_bias
    return mu, bias
