"""What lowrank can and cannot serve, shared by its reference and torch op."""

from __future__ import annotations

import torch
from torch import Tensor


def refuse_causal(causal: bool) -> None:
    """lowrank has no causal form (the pass refuses causal sites with the same reason)."""
    if causal:
        raise ValueError("lowrank attention cannot be causal: a pooled group mixes future keys into every query")


def key_padding_of(mask: Tensor | None, key_padding: Tensor | None, m: int, device) -> Tensor | None:
    """The additive (B | 1, M) key terms: the key padding plus a dense remainder that is the same for every
    query and head. A mask that varies per query or per head raises ValueError: lowrank pools the keys once for
    every query, so it cannot apply one (the pass refuses those sites)."""
    if mask is None:
        return key_padding
    if mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[2] != 1 or mask.dtype == torch.bool:
        raise ValueError(f"lowrank can pool only key padding; got a {mask.dtype} mask of shape {tuple(mask.shape)} "
                         f"that varies per query or per head")
    out = mask.float()[:, 0, 0, :]
    if key_padding is not None:
        out = out + key_padding.float().reshape(key_padding.shape[0], -1)
    return out.expand(out.shape[0], m)
