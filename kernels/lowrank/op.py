"""torch.ops.attnopt.lowrank_attention: group means from the shared pooling machinery (kernels.pooling),
then attention over about r groups; no M×r pooling matrix. On CUDA: ``cuda_forward``, the Triton form."""

from __future__ import annotations

import torch

from ..pooling import block_prefix, pool_ranges
from ..reference import check_qkv, softcapped
from ..torch_ops import define_op
from .linalg import newton_schulz_pinv
from .masks import key_padding_of, refuse_causal


def group_means(x, y, key_padding, rank: int):
    """Means of the kept rows of x and y (B, H, S, D) in consecutive groups of ceil(S / rank), and log n_g (Bw, G)."""
    size = -(-x.shape[2] // rank)
    groups = torch.arange(-(-x.shape[2] // size), device=x.device)
    return pool_ranges(block_prefix(x, y, key_padding, size), groups, groups + 1, dtype=x.dtype)


def forward(q, k, v, mask, key_padding, rank: int, method: str, pinv_steps: int, scale: float, causal: bool,
            softcap: float):
    check_qkv(q, k, v)
    refuse_causal(causal)
    if method not in ("pool", "nystrom"):
        raise ValueError(f"lowrank: method must be pool or nystrom, got {method!r}")
    B, H, N, D = q.shape
    Hkv, M = k.shape[1], k.shape[2]
    compute = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    q5 = q.to(compute).reshape(B, Hkv, H // Hkv, N, D)  # GQA: the rep heads of a kv head share its groups
    k, v = k.to(compute), v.to(compute)
    kp = key_padding_of(mask, key_padding, M, q.device)
    k_land, v_land, log_n = group_means(k, v, kp, rank)

    def scores(a, b):
        s = (a @ b.transpose(-1, -2)) * scale
        return softcapped(s, softcap)

    if method == "pool":
        out = _softmax(scores(q5, k_land[:, :, None]) + log_n[:, None, None, None, :]) @ v_land[:, :, None]
    else:
        q_land = group_means(q5.flatten(1, 2), q5.flatten(1, 2), None, rank)[0].unflatten(1, (Hkv, H // Hkv))
        empty = torch.where(torch.isneginf(log_n), float("-inf"), 0.0)[:, None, None, None, :]  # no landmark
        right = scores(q_land, k[:, :, None])
        if kp is not None:
            right = right + kp.to(compute)[:, None, None, None, :]
        middle = newton_schulz_pinv(_softmax(scores(q_land, k_land[:, :, None]) + empty), pinv_steps)
        out = _softmax(scores(q5, k_land[:, :, None]) + empty) @ (middle @ (_softmax(right) @ v[:, :, None]))
    return out.reshape(B, H, N, D).to(q.dtype)


def _softmax(scores):
    p = torch.softmax(scores, dim=-1)
    return torch.where(torch.isnan(p), 0.0, p)


def cuda_forward(q, k, v, mask, key_padding, rank: int, method: str, pinv_steps: int, scale: float, causal: bool,
                 softcap: float):
    """The same op through Triton: one pooling pass, then flash attention over the pooled keys
    (``kernels.triton_lowrank``; also runs on CPU tensors under TRITON_INTERPRET=1, as the tests do)."""
    from .. import triton_lowrank  # triton loads only where the Triton form runs

    check_qkv(q, k, v)
    refuse_causal(causal)
    if method not in ("pool", "nystrom"):
        raise ValueError(f"lowrank: method must be pool or nystrom, got {method!r}")
    key_terms = key_padding_of(mask, key_padding, k.shape[2], q.device)
    return triton_lowrank.lowrank_attention(q, k, v, key_terms, rank=rank, method=method, pinv_steps=pinv_steps,
                                            scale=scale, softcap=softcap)


lowrank_attention = define_op("lowrank", forward, cuda=cuda_forward)
