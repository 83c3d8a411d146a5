"""lowrank, the spec, with explicit pooling matrices P: row g averages group g's unmasked keys.

Groups are consecutive runs of ceil(M / r) keys. A key weighs w_j = exp(kp_j − max kp): 1 if kept, 0 if
padded (−inf or HF's finfo.min); n_g = Σ w_j over the group (log n_g = −inf: a group with no kept key).

pool:    O = softmax(s·Q(PK)ᵀ + log n_g) · PV
nystrom: O = softmax(s·QK̃ᵀ) · pinv(softmax(s·Q̃K̃ᵀ)) · softmax(s·Q̃Kᵀ + kp) V, Q̃ = P_q Q, K̃ = PK
(query groups have no padding; a key group with no kept key is no landmark: −inf in the first two).

Exact limits: pool at r >= M (one key per group: s·q·k_j + log w_j). nystrom at r >= max(N, M): then
Q̃ = Q, K̃ = K on the kept keys, and all three factors are the same matrix A = softmax(s·QKᵀ + kp), so
O = A·pinv(A)·A·V = A·V, to the accuracy of the Newton–Schulz pseudo-inverse.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..reference import check_qkv, softcapped
from .linalg import newton_schulz_pinv
from .masks import key_padding_of, refuse_causal


def pooling_matrix(key_padding: Tensor | None, length: int, rank: int, device=None) -> tuple[Tensor, Tensor]:
    """(P (Bw, G, S), log n_g (Bw, G)) for additive key padding (Bw, S), or none."""
    kp = torch.zeros(1, length, device=device) if key_padding is None else key_padding.float().expand(-1, length)
    top = kp.amax(dim=-1, keepdim=True)
    w = torch.exp(kp - torch.where(torch.isfinite(top), top, 0.0))  # (Bw, S)
    size = -(-length // rank)
    group = torch.arange(length, device=device) // size
    member = (group[None, :] == torch.arange(int(group[-1]) + 1, device=device)[:, None]).float()  # (G, S)
    weights = member * w[:, None, :]
    n = weights.sum(dim=-1)
    log_n = torch.where(n > 0, torch.log(n) + torch.where(torch.isfinite(top), top, 0.0), float("-inf"))
    return weights / torch.where(n > 0, n, 1.0)[..., None], log_n


def reference(q: Tensor, k: Tensor, v: Tensor, *, rank: int, method: str = "pool", pinv_steps: int = 6,
              scale: float | None = None, mask: Tensor | None = None, key_padding: Tensor | None = None,
              causal: bool = False, softcap: float = 0.0) -> Tensor:
    check_qkv(q, k, v)
    refuse_causal(causal)
    if method not in ("pool", "nystrom"):
        raise ValueError(f"lowrank: method must be pool or nystrom, got {method!r}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    out_dtype = q.dtype
    rep = q.shape[1] // k.shape[1]
    q, k, v = q.float(), k.float().repeat_interleave(rep, dim=1), v.float().repeat_interleave(rep, dim=1)
    kp = key_padding_of(mask, key_padding, k.shape[2], q.device)
    p, log_n = pooling_matrix(kp, k.shape[2], rank, q.device)
    p, log_n = p[:, None], log_n[:, None, None, :]  # (Bw, 1, G, M), (Bw, 1, 1, G)

    def scores(a: Tensor, b: Tensor) -> Tensor:
        s = (a @ b.transpose(-1, -2)) * scale
        return softcapped(s, softcap)

    if method == "pool":
        out = _softmax(scores(q, p @ k) + log_n) @ (p @ v)
    else:
        q_land = pooling_matrix(None, q.shape[2], rank, q.device)[0][:, None] @ q
        k_land = p @ k
        empty = torch.where(torch.isneginf(log_n), float("-inf"), 0.0)  # a group with no kept key is no landmark
        right = scores(q_land, k)
        if kp is not None:
            right = right + kp.float()[:, None, None, :]
        middle = newton_schulz_pinv(_softmax(scores(q_land, k_land) + empty), pinv_steps)
        out = _softmax(scores(q, k_land) + empty) @ (middle @ (_softmax(right) @ v))
    return out.to(out_dtype)


def _softmax(scores: Tensor) -> Tensor:
    p = torch.softmax(scores, dim=-1)
    return torch.where(torch.isnan(p), 0.0, p)  # a row with no allowed key -> 0
