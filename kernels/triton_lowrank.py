"""lowrank on CUDA: one Triton pooling pass, then flash attention over the pooled keys.

Pooling does not fuse into the attention with profit: every query block needs
every pooled key, so a fused kernel would re-pool the whole sequence per block.
One pass (``pool_groups``) reads each key and value once and writes about r
group means in fp32 accumulation; attention over those r keys is the band kernel
in its dense form with log n_g as an additive key term (``kernels.triton_band``),
or plain SDPA when every group holds the same number of keys (then log n_g is
one constant, which a softmax ignores).

- pool: O = softmax(s·QK̄ᵀ + log n_g) V̄.
- nystrom: the landmarks Q̃ and K̃ are pooled the same way; the r landmark
  queries attend to all keys through the band kernel, the r×r pseudo-inverse is
  torch in fp32, and the queries attend to K̃ with the r×D product as values.

Memory beyond q, k, v and the output: O(r·D) per head, plus nothing of size N×r.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor

from .lowrank.linalg import newton_schulz_pinv
from .reference import softcapped
from .triton_band import band_attention
from .triton_launch import launch

__all__ = ["lowrank_attention", "pool_groups"]


@triton.jit
def _pool_fwd(
    X, Y, KP, SHIFT, XO, YO, LOGN,
    stride_xb, stride_xh, stride_xs, stride_yb, stride_yh, stride_ys, stride_kpb, stride_kpn, stride_sb,
    H, S, SIZE, G,
    HEAD_DIM: tl.constexpr, D_TRUE: tl.constexpr, BLOCK: tl.constexpr, HAS_KP: tl.constexpr, HAS_Y: tl.constexpr,
):
    """Group g of (batch, head): Σ w_j x_j / Σ w_j over keys [g·SIZE, (g+1)·SIZE) with w_j = exp(kp_j − shift),
    the same for y; log Σ w_j + shift (−inf for a group with no kept key). Outputs (B, H, G, ·) contiguous."""
    g = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_d = tl.arange(0, HEAD_DIM)
    d_ok = offs_d[None, :] < D_TRUE
    start = g * SIZE
    stop = tl.minimum(start + SIZE, S)
    Xb = X + b.to(tl.int64) * stride_xb + h.to(tl.int64) * stride_xh
    Yb = Y + b.to(tl.int64) * stride_yb + h.to(tl.int64) * stride_yh
    acc_x = tl.zeros([HEAD_DIM], dtype=tl.float32)
    acc_y = tl.zeros([HEAD_DIM], dtype=tl.float32)
    mass = tl.zeros([BLOCK], dtype=tl.float32)
    shift = 0.0
    if HAS_KP:
        shift = tl.load(SHIFT + b * stride_sb)
    for s0 in range(start, stop, BLOCK):
        idx = s0 + tl.arange(0, BLOCK)
        ok = idx < stop
        if HAS_KP:
            kp = tl.load(KP + b.to(tl.int64) * stride_kpb + idx.to(tl.int64) * stride_kpn, mask=ok,
                         other=float("-inf"))
            w = tl.exp(kp.to(tl.float32) - shift)
        else:
            w = ok.to(tl.float32)
        x = tl.load(Xb + idx.to(tl.int64)[:, None] * stride_xs + offs_d[None, :], mask=ok[:, None] & d_ok,
                    other=0.0).to(tl.float32)
        acc_x += tl.sum(w[:, None] * x, 0)
        if HAS_Y:
            y = tl.load(Yb + idx.to(tl.int64)[:, None] * stride_ys + offs_d[None, :], mask=ok[:, None] & d_ok,
                        other=0.0).to(tl.float32)
            acc_y += tl.sum(w[:, None] * y, 0)
        mass += w
    n = tl.sum(mass, 0)
    inv = 1.0 / tl.where(n > 0, n, 1.0)
    out_row = (bh.to(tl.int64) * G + g) * D_TRUE
    tl.store(XO + out_row + offs_d, (acc_x * inv).to(XO.dtype.element_ty), mask=offs_d < D_TRUE)
    if HAS_Y:
        tl.store(YO + out_row + offs_d, (acc_y * inv).to(YO.dtype.element_ty), mask=offs_d < D_TRUE)
    tl.store(LOGN + bh.to(tl.int64) * G + g, tl.where(n > 0, tl.log(tl.where(n > 0, n, 1.0)) + shift,
                                                      float("-inf")))


def pool_groups(x: Tensor, y: Tensor | None, key_padding: Tensor | None, rank: int,
                dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor | None, Tensor]:
    """Means of the kept rows of x (and y), (B, H, S, D), in consecutive groups of ceil(S / rank).

    Returns (x̄ (B, H, G, D), ȳ or None, log n_g (B | 1, G) float32) with the pooled means in ``dtype``
    (x's by default): the same groups and weights as ``kernels.pooling`` and lowrank's reference.
    """
    B, H, S, D = x.shape
    size = -(-S // rank)
    G = -(-S // size)
    dtype = dtype or x.dtype
    xo = torch.empty(B, H, G, D, dtype=dtype, device=x.device)
    yo = torch.empty(B, H, G, D, dtype=dtype, device=x.device) if y is not None else xo
    log_n = torch.empty(B, H, G, dtype=torch.float32, device=x.device)
    if xo.numel() == 0:
        return xo, (yo if y is not None else None), log_n[:, 0] if H else log_n.new_empty(B, G)
    x = x if x.stride(-1) == 1 else x.contiguous()
    y_in = x if y is None else (y if y.stride(-1) == 1 else y.contiguous())
    if key_padding is not None:
        kp = key_padding.float().expand(key_padding.shape[0], S)
        top = kp.amax(dim=-1)
        shift = torch.where(torch.isfinite(top), top, torch.zeros_like(top))  # no weight overflows
        kp_strides = (kp.stride(0) if kp.shape[0] == B and B > 1 else 0, kp.stride(1))
        sh_stride = 1 if kp.shape[0] == B and B > 1 else 0
    else:
        kp, shift, kp_strides, sh_stride = x, x, (0, 0), 0
    block = 16 if os.environ.get("TRITON_INTERPRET") == "1" else 64
    launch(_pool_fwd)[(G, B * H)](
        x, y_in, kp, shift, xo, yo, log_n,
        x.stride(0), x.stride(1), x.stride(2), y_in.stride(0), y_in.stride(1), y_in.stride(2),
        *kp_strides, sh_stride, H, S, size, G,
        HEAD_DIM=max(16, triton.next_power_of_2(D)), D_TRUE=D, BLOCK=block, HAS_KP=key_padding is not None,
        HAS_Y=y is not None, num_warps=4,
    )
    # The weights are per batch row, the same for every head: head 0's log n_g stands for all.
    return xo, (yo if y is not None else None), log_n[:, 0]


def _attend(q: Tensor, k: Tensor, v: Tensor, key_terms: Tensor | None, *, scale: float, softcap: float) -> Tensor:
    """softmax(s·qkᵀ + key_terms) v, non-causal, every key: the band kernel in its dense form."""
    # A band wider than both lengths on each side allows every key, also for N > M (negative query positions).
    wide = q.shape[2] + k.shape[2] + 1
    return band_attention(q, k, v, unit=wide, before=wide, after=wide, sinks=0, scale=scale, causal=False,
                          softcap=softcap, key_padding=key_terms)


def lowrank_attention(q: Tensor, k: Tensor, v: Tensor, key_terms: Tensor | None, *, rank: int, method: str,
                      pinv_steps: int, scale: float, softcap: float) -> Tensor:
    """lowrank's op on the Triton path; ``key_terms`` is the additive (B | 1, M) key padding (mask folded in)."""
    B, H, N, D = q.shape
    Hkv, M = k.shape[1], k.shape[2]
    if q.numel() == 0 or M == 0:
        return q.new_zeros(q.shape)
    if method == "pool":
        k_bar, v_bar, log_n = pool_groups(k, v, key_terms, rank)
        if key_terms is None and M % -(-M // rank) == 0 and not softcap:
            # every group holds the same count: log n_g is one constant and drops out of the softmax
            return F.scaled_dot_product_attention(q, k_bar, v_bar, scale=scale, enable_gqa=H != Hkv)
        return _attend(q, k_bar, v_bar, log_n, scale=scale, softcap=softcap)

    # nystrom: O = softmax(s·QK̃ᵀ) · pinv(softmax(s·Q̃K̃ᵀ)) · softmax(s·Q̃Kᵀ + kp) V
    k_land, _, log_n = pool_groups(k, None, key_terms, rank)
    q_land = pool_groups(q, None, None, rank)[0]  # (B, H, Gq, D), queries carry no padding
    empty = torch.where(torch.isneginf(log_n), float("-inf"), 0.0)  # a group with no kept key is no landmark
    right = _attend(q_land, k, v, key_terms, scale=scale, softcap=softcap).float()  # (B, H, Gq, D)
    rep = H // Hkv
    k_land_h = k_land.repeat_interleave(rep, dim=1)  # (B, H, G, D): r rows per head
    small = softcapped((q_land.float() @ k_land_h.float().transpose(-1, -2)) * scale, softcap)
    probs = torch.softmax(small + empty[:, None, None, :], dim=-1)
    middle = newton_schulz_pinv(torch.where(torch.isnan(probs), 0.0, probs), pinv_steps)  # (B, H, G, Gq)
    values = (middle @ right).to(q.dtype)  # (B, H, G, D)
    return _attend(q, k_land_h, values, empty, scale=scale, softcap=softcap)
