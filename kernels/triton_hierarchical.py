"""hierarchical attention on CUDA: the band kernel's fine level and its coarse level in one online softmax.

The fine level is the band (B, B, B) (causal (B, B, 0)) plus the G sinks; the
coarse level is one pooled key and value per group of blocks, scored
s·q·k̄ + log n (``kernels.pooling`` has the rule, ``kernels.hierarchical`` the
groups). Groups are ranges of whole blocks whose ends depend on the query's
block, so the pooling pass here only sums each block once:

    keys[b, h, t] = Σ_{j in block t} w_j·k_j,  values likewise,  mass[t] = Σ w_j

in fp32 (``_block_sums``: one read of K and V, (B, Hkv, M/B, D) written), and
the band kernel (``triton_band._attend_pooled``) adds up a group's blocks and
divides by its mass as it visits the group. Nothing bigger than O(N·D) is ever
built, and K and V are never upcast as whole tensors. The weights w_j = e^{kp_j}
(``pooling.pooling_log_weights``) drop padded keys and the sinks.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor

from .pooling import pooling_log_weights
from .triton_band import PooledBlocks, _band_attention, launch

__all__ = ["hierarchical_attention", "pool_blocks", "supported"]

_LOG2E = 1.4426950408889634


@triton.jit
def _block_sums(
    K, V, W, KS, VS,
    stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn, stride_wb,
    HKV, M, NB, BS,
    HEAD_DIM: tl.constexpr, D_TRUE: tl.constexpr, BLOCK_J: tl.constexpr,
):
    """Σ w_j·k_j and Σ w_j·v_j over key block ``program_id(0)`` of one (batch, kv head), in fp32."""
    blk = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // HKV
    hk = bh % HKV
    offs_j = tl.arange(0, BLOCK_J)
    offs_d = tl.arange(0, HEAD_DIM)
    d_ok = offs_d[None, :] < D_TRUE
    Kb = K + b.to(tl.int64) * stride_kb + hk.to(tl.int64) * stride_kh
    Vb = V + b.to(tl.int64) * stride_vb + hk.to(tl.int64) * stride_vh
    acc_k = tl.zeros([HEAD_DIM], dtype=tl.float32)
    acc_v = tl.zeros([HEAD_DIM], dtype=tl.float32)
    for j0 in range(0, BS, BLOCK_J):
        j = blk * BS + j0 + offs_j
        ok = (j0 + offs_j < BS) & (j < M)
        w = tl.load(W + b * stride_wb + j, mask=ok, other=0.0)
        k = tl.load(Kb + j[:, None] * stride_kn + offs_d[None, :], mask=ok[:, None] & d_ok, other=0.0)
        v = tl.load(Vb + j[:, None] * stride_vn + offs_d[None, :], mask=ok[:, None] & d_ok, other=0.0)
        acc_k += tl.sum(k.to(tl.float32) * w[:, None], 0)
        acc_v += tl.sum(v.to(tl.float32) * w[:, None], 0)
    out = (bh.to(tl.int64) * NB + blk) * HEAD_DIM + offs_d
    tl.store(KS + out, acc_k)
    tl.store(VS + out, acc_v)


def effective_levels(levels: int, key_blocks: int) -> int:
    """Fewer levels where the top ones hold no block: a level whose nearest distance 2^(L−1) reaches past every
    block is empty, and so is the one it would leave as the last. Keeps the kernel's per-group loop short."""
    while levels > 1 and 2 ** (levels - 1) >= key_blocks:
        levels -= 1
    return levels


def pool_blocks(k: Tensor, v: Tensor, key_padding: Tensor | None, block: int, levels: int, sinks: int) -> PooledBlocks:
    """The per-block sums the kernel's coarse level reads (see the module docstring)."""
    B, Hkv, M, D = k.shape
    nb = -(-M // block)
    head_dim = max(16, triton.next_power_of_2(D))
    log_w, shift = pooling_log_weights(key_padding, M, skip_first=sinks, device=k.device)
    w = torch.exp(log_w).to(torch.float32).contiguous()  # (Bw, M)
    mass = F.pad(w, (0, nb * block - M)).view(w.shape[0], nb, block).sum(-1)  # (Bw, NB)
    # head-dim padded with zeros, so the kernel reads whole tiles
    keys = torch.zeros(B, Hkv, nb, head_dim, device=k.device, dtype=torch.float32)
    values = torch.zeros_like(keys)
    if B * Hkv and nb:
        launch(_block_sums)[(nb, B * Hkv)](
            k, v, w, keys, values,
            k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
            w.stride(0) if w.shape[0] == B else 0,
            Hkv, M, nb, block,
            HEAD_DIM=head_dim, D_TRUE=D, BLOCK_J=min(64, max(16, triton.next_power_of_2(block))), num_warps=4,
        )
    return PooledBlocks(keys, values, mass, (shift.reshape(-1) * _LOG2E).to(torch.float32),
                        block, effective_levels(levels, nb))


def supported(k: Tensor, block: int) -> bool:
    """The kernel's tiles hold one block's queries at a time, so the block must be a multiple of 16."""
    return min(block, k.shape[2]) % 16 == 0 and k.stride(-1) == 1


def hierarchical_attention(q: Tensor, k: Tensor, v: Tensor, *, block: int, levels: int, sinks: int, scale: float,
                           causal: bool, softcap: float = 0.0, key_padding: Tensor | None = None,
                           mask: Tensor | None = None, config=None) -> Tensor:
    """``torch.ops.attnopt.hierarchical_attention`` in Triton (the caller checks ``supported`` first).

    The mask applies to the exact keys only, as in the reference.
    """
    M = k.shape[2]
    if not supported(k, block):
        raise ValueError(f"the hierarchical kernel needs a block that is a multiple of 16; got {min(block, M)}")
    bs = min(block, M)  # a block holding every key means the same at any larger size
    pooled = pool_blocks(k, v, key_padding, bs, levels, min(sinks, M))
    return _band_attention(q, k, v, unit=bs, before=bs, after=0 if causal else bs, sinks=sinks, scale=scale,
                           causal=causal, softcap=softcap, key_padding=key_padding, mask=mask, config=config,
                           fast_path=False, pooled=pooled)
