"""Mask-aware pooling of keys and values, torch: shared machinery (hierarchical's coarse level; lowrank's pool).

A pooled entry stands for a set J of keys. Its key is k̄ = Σ w_j k_j / Σ w_j,
its value v̄ likewise, and its score is s·q·k̄ + log Σ w_j. The weights come
from the key padding, w_j = exp(kp_j): an unpadded key (0) weighs 1 and a
padded one (−inf, or HF's finfo.min) weighs 0, so Σ w_j is n, the number of
unmasked keys in J, and the means run over those keys only. The log n term
makes a set of identical keys carry exactly the softmax mass of its members;
a set with no unmasked key has log 0 = −inf and is masked. (A padding that is
neither 0 nor "minus infinity" weighs its keys as dense softmax would, which is
the same rule read literally.)

Sets are contiguous ranges of key blocks. Sums over any range come from prefix
sums over blocks, kept in float64 so that the difference of two long prefixes
loses nothing float32 would notice: O(M·D) to build, O(D) per pooled entry,
never anything N×M. ``kernels.pooling_onnx`` is the same machinery in ONNX.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["BlockPrefix", "block_prefix", "pool_ranges", "pooling_log_weights"]


@dataclass(frozen=True)
class BlockPrefix:
    """Prefix sums over key blocks: entry t sums the keys of blocks [0, t)."""

    keys: Tensor  # (B, Hkv, nb + 1, D) float64: Σ w_j k_j
    values: Tensor  # (B, Hkv, nb + 1, D) float64: Σ w_j v_j
    mass: Tensor  # (Bw, nb + 1) float64: Σ w_j, with w_j = exp(kp_j − shift)
    shift: Tensor  # (Bw, 1) float64: subtracted before exp so no weight overflows; log mass adds it back

    @property
    def blocks(self) -> int:
        return self.mass.shape[1] - 1


def pooling_log_weights(key_padding: Tensor | None, m: int, skip_first: int = 0,
                        device=None) -> tuple[Tensor, Tensor]:
    """(log w (Bw, M) float64, shift (Bw, 1)): log w_j = kp_j − shift, and −inf for the first ``skip_first`` keys.

    ``skip_first`` keeps keys that are attended exactly elsewhere (attention sinks)
    out of every pooled set, so that no key counts twice.
    """
    if key_padding is None:
        log_w = torch.zeros(1, m, dtype=torch.float64, device=device)
    else:
        log_w = key_padding.to(torch.float64).expand(key_padding.shape[0], m).clone()
    # The largest finite padding per row, so exp never overflows; a row without one keeps shift 0.
    shift = log_w.amax(dim=1, keepdim=True)
    shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
    log_w = log_w - shift
    if skip_first > 0:
        log_w[:, :skip_first] = float("-inf")
    return log_w, shift


def block_prefix(k: Tensor, v: Tensor, key_padding: Tensor | None, block: int, skip_first: int = 0) -> BlockPrefix:
    """Prefix sums over blocks of ``block`` keys (the last may be ragged) of w·k, w·v and w."""
    m = k.shape[2]
    nb = -(-m // block)
    log_w, shift = pooling_log_weights(key_padding, m, skip_first, k.device)
    w = torch.exp(log_w)  # (Bw, M)
    pad = nb * block - m

    def prefix(x: Tensor) -> Tensor:  # (..., M, D) weighted -> (..., nb + 1, D)
        sums = F.pad(x, (0, 0, 0, pad)).unflatten(-2, (nb, block)).sum(-2)
        return F.pad(torch.cumsum(sums, dim=-2), (0, 0, 1, 0))

    wk = w[:, None, :, None]  # (Bw, 1, M, 1) against (B, Hkv, M, D)
    mass = F.pad(torch.cumsum(F.pad(w, (0, pad)).unflatten(-1, (nb, block)).sum(-1), dim=-1), (1, 0))
    return BlockPrefix(prefix(k.to(torch.float64) * wk), prefix(v.to(torch.float64) * wk), mass, shift)


def pool_ranges(prefix: BlockPrefix, start: Tensor, end: Tensor, dtype=torch.float32
                ) -> tuple[Tensor, Tensor, Tensor]:
    """Pooled (keys, values, log mass) of the block ranges [start, end), clamped to the blocks that exist.

    ``start`` and ``end`` are int tensors of one shape S. Returns keys and values
    (B, Hkv, *S, D) and log mass (Bw, *S), in ``dtype``; an empty or fully masked
    range has log mass −inf (and zero key and value).
    """
    nb = prefix.blocks
    s = start.clamp(0, nb)
    e = torch.maximum(end.clamp(0, nb), s)
    mass = prefix.mass[:, e] - prefix.mass[:, s]  # (Bw, *S); prefixes never decrease, so >= 0
    safe = torch.where(mass > 0, mass, torch.ones_like(mass))
    denom = safe.reshape(safe.shape[0], 1, *safe.shape[1:], 1)

    def mean(p: Tensor) -> Tensor:
        return ((p[:, :, e] - p[:, :, s]) / denom).to(dtype)

    log_mass = torch.where(mass > 0, torch.log(safe) + prefix.shift.reshape(-1, *([1] * s.dim())),
                           torch.full_like(mass, float("-inf")))
    return mean(prefix.keys), mean(prefix.values), log_mass.to(dtype)
