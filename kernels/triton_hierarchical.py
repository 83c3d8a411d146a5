"""hierarchical attention on CUDA: the band kernel's fine level and its coarse level in one online softmax.

The fine level is the band (B, B, B) (causal (B, B, 0)) plus the G sinks; the
coarse level is one pooled key and value per group of blocks, scored
s·q·k̄ + log n (``kernels.pooling`` has the rule, ``kernels.hierarchical`` the
groups). Groups are ranges of whole blocks whose ends depend on the query's
block, so the pooling pass here only sums each block once:

    keys[b, h, t] = Σ_{j in block t} w_j·k_j,  values likewise,  mass[t] = Σ w_j

in fp32 (``_block_sums``: one read of K and V, (B, Hkv, M/B, D) written).

The last level's groups, the bulk of the coarse keys, are G = 2^(L−1) blocks
whose starts step by G outwards from the query's block, so every group on one
side starts at the same block index mod G. ``group_tables`` pools them ahead,
once per phase φ < G: slot t of phase φ is blocks [φ + (t−1)·G, φ + t·G) (cut
to the sequence), its mean key and value in the input dtype and its score
offset log2 n + shift. A query block's left groups and its right groups are
then each one contiguous run of slots, which the kernel
(``triton_band._attend_table``) reads like key blocks. With one level (groups
of one block, one phase) it reads every slot in one run and drops each row's
own and adjacent blocks per row, so its tiles need not align to blocks; with
more, a tile's rows share one block. The few groups of the
lower levels (2^l blocks at distances [2^(l+1), 2^(l+2))) are summed from the
block sums as the kernel visits them (``triton_band._attend_pooled``). Nothing
bigger than O(N·D) is ever built, and K and V are never upcast as whole
tensors. The weights w_j = e^{kp_j} (``pooling.pooling_log_weights``) drop
padded keys and the sinks.
"""

from __future__ import annotations


import torch
import triton
import triton.language as tl
from torch import Tensor

from .pooling import pooling_log_weights
from .triton_band import GroupTables, PooledBlocks, _band_attention
from .triton_launch import launch

__all__ = ["group_tables", "hierarchical_attention", "pool_blocks", "supported"]

_LOG2E = 1.4426950408889634


@triton.jit
def _block_sums(
    K, V, W, KS, VS, MS,
    stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn, stride_wb,
    HKV, M, NB, BS, SKIP,
    HEAD_DIM: tl.constexpr, D_TRUE: tl.constexpr, BLOCK_J: tl.constexpr, HAS_W: tl.constexpr,
):
    """Σ w_j·k_j and Σ w_j·v_j over key block ``program_id(0)`` of one (batch, kv head), in fp32; the first kv
    head's program also writes the block's Σ w_j. Without W (no key padding) w_j is 1, and 0 for the first
    SKIP keys (the sinks)."""
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
    acc_w = tl.zeros([BLOCK_J], dtype=tl.float32)
    for j0 in range(0, BS, BLOCK_J):
        j = blk * BS + j0 + offs_j
        ok = (j0 + offs_j < BS) & (j < M)
        if HAS_W:
            w = tl.load(W + b * stride_wb + j, mask=ok, other=0.0)
        else:
            w = tl.where(ok & (j >= SKIP), 1.0, 0.0)
        k = tl.load(Kb + j[:, None] * stride_kn + offs_d[None, :], mask=ok[:, None] & d_ok, other=0.0)
        v = tl.load(Vb + j[:, None] * stride_vn + offs_d[None, :], mask=ok[:, None] & d_ok, other=0.0)
        acc_k += tl.sum(k.to(tl.float32) * w[:, None], 0)
        acc_v += tl.sum(v.to(tl.float32) * w[:, None], 0)
        acc_w += w
    out = (bh.to(tl.int64) * NB + blk) * HEAD_DIM + offs_d
    tl.store(KS + out, acc_k)
    tl.store(VS + out, acc_v)
    if hk == 0:
        tl.store(MS + b * NB + blk, tl.sum(acc_w, 0))


@triton.jit
def _group_means(
    KS, VS, MS, SH, TK, TV, TO, stride_shb, HKV, NB, SLOTS,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr,
):
    """Slot ``program_id(0)`` of phase ``program_id(1)`` for one (batch, kv head): blocks
    [φ + (t−1)·GROUP, φ + t·GROUP) of the block sums pooled into a mean key and value (input dtype) and, for
    the first kv head, the score offset log2 Σw + shift (−inf where every key is padded)."""
    slot = tl.program_id(0)
    phase = tl.program_id(1)
    bh = tl.program_id(2)
    b = bh // HKV
    offs_d = tl.arange(0, HEAD_DIM)
    acc_k = tl.zeros([HEAD_DIM], dtype=tl.float32)
    acc_v = tl.zeros([HEAD_DIM], dtype=tl.float32)
    mass = 0.0
    for t in range(0, GROUP):
        blk = phase + (slot - 1) * GROUP + t
        # a block past either end counts zero (a factor, not a load mask: scalar masks vary across Triton versions)
        inside = tl.where((blk >= 0) & (blk < NB), 1.0, 0.0)
        blk = tl.minimum(tl.maximum(blk, 0), NB - 1)
        row = (bh.to(tl.int64) * NB + blk) * HEAD_DIM + offs_d
        acc_k += tl.load(KS + row) * inside
        acc_v += tl.load(VS + row) * inside
        mass += tl.load(MS + b * NB + blk) * inside
    has = mass > 0.0
    inv = 1.0 / tl.where(has, mass, 1.0)
    out = ((bh.to(tl.int64) * GROUP + phase) * SLOTS + slot) * HEAD_DIM + offs_d
    tl.store(TK + out, (acc_k * inv).to(TK.dtype.element_ty))
    tl.store(TV + out, (acc_v * inv).to(TV.dtype.element_ty))
    if bh % HKV == 0:
        shift2 = tl.load(SH + b * stride_shb)
        offset = tl.where(has, tl.math.log2(tl.where(has, mass, 1.0)) + shift2, float("-inf"))
        tl.store(TO + (b * GROUP + phase) * SLOTS + slot, offset)


def effective_levels(levels: int, key_blocks: int) -> int:
    """Fewer levels where the top ones hold no block: a level whose nearest distance 2^(L−1) reaches past every
    block is empty, and so is the one it would leave as the last. Keeps the kernel's per-group loop short."""
    while levels > 1 and 2 ** (levels - 1) >= key_blocks:
        levels -= 1
    return levels


def pool_blocks(k: Tensor, v: Tensor, key_padding: Tensor | None, block: int, levels: int, sinks: int) -> PooledBlocks:
    """The per-block sums and the last level's tables the kernel's coarse level reads (module docstring)."""
    B, Hkv, M, D = k.shape
    nb = -(-M // block)
    head_dim = max(16, triton.next_power_of_2(D))
    if key_padding is None:  # every weight is 1 but the sinks': the kernel knows them (no launches for a constant)
        w, shift2 = None, torch.zeros(1, device=k.device, dtype=torch.float32)
    else:
        log_w, shift = pooling_log_weights(key_padding, M, skip_first=sinks, device=k.device)
        w = torch.exp(log_w).to(torch.float32).contiguous()  # (Bw, M)
        shift2 = (shift.reshape(-1) * _LOG2E).to(torch.float32)
    # head-dim padded with zeros (the kernel stores whole tiles), so the band kernel reads whole tiles
    keys = torch.empty(B, Hkv, nb, head_dim, device=k.device, dtype=torch.float32)
    values = torch.empty_like(keys)
    mass = torch.empty(B, nb, device=k.device, dtype=torch.float32)
    if B * Hkv and nb:
        launch(_block_sums)[(nb, B * Hkv)](
            k, v, keys if w is None else w, keys, values, mass,
            k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
            w.stride(0) if w is not None and w.shape[0] == B else 0,
            Hkv, M, nb, block, sinks,
            HEAD_DIM=head_dim, D_TRUE=D, BLOCK_J=min(64, max(16, triton.next_power_of_2(block))),
            HAS_W=w is not None, num_warps=4,
        )
    levels = effective_levels(levels, nb)
    tables = group_tables(keys, values, mass, shift2, 2 ** (levels - 1), k.dtype)
    return PooledBlocks(keys, values, mass, shift2, block, levels, tables)


def group_tables(keys: Tensor, values: Tensor, mass: Tensor, shift2: Tensor, group: int,
                 dtype: torch.dtype) -> GroupTables:
    """The last level's groups pooled ahead for every phase (see the module docstring).

    keys, values (B, Hkv, NB, D) and mass (B, NB) are the per-block sums, shift2 (B | 1,);
    slot t of phase φ covers blocks [φ + (t−1)·group, φ + t·group), and NB // group + 2
    slots cover every group a query block can name.
    """
    B, Hkv, nb, head_dim = keys.shape
    slots = nb // group + 2
    tk = torch.empty(B, Hkv, group, slots, head_dim, device=keys.device, dtype=dtype)
    tv = torch.empty_like(tk)
    offset = torch.empty(B, group, slots, device=keys.device, dtype=torch.float32)
    if B * Hkv and nb:
        launch(_group_means)[(slots, group, B * Hkv)](
            keys, values, mass, shift2, tk, tv, offset, shift2.stride(0) if shift2.shape[0] == B else 0,
            Hkv, nb, slots, GROUP=group, HEAD_DIM=head_dim, num_warps=1,
        )
    return GroupTables(tk, tv, offset, group)


def supported(k: Tensor, block: int) -> bool:
    """The kernel's tiles hold one block's queries at a time, so the block must be a multiple of 16."""
    return min(block, k.shape[2]) % 16 == 0 and k.stride(-1) == 1


def hierarchical_attention(q: Tensor, k: Tensor, v: Tensor, *, block: int, levels: int, sinks: int, scale: float,
                           causal: bool, softcap: float = 0.0, key_padding: Tensor | None = None,
                           mask: Tensor | None = None, config=None, sink_logits: Tensor | None = None) -> Tensor:
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
                           fast_path=False, pooled=pooled, sink_logits=sink_logits)
