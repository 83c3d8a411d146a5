"""window, the spec: allowed(i, j) = |i - j| < W or j < sinks (positions aligned as in a KV-cache step)."""

from __future__ import annotations

from torch import Tensor

from ..reference import band_allowed, check_qkv, check_self_attention, restricted_attention, with_sinks
from . import band


def reference(q: Tensor, k: Tensor, v: Tensor, *, window: int, sinks: int = 0, scale: float | None = None,
              mask: Tensor | None = None, key_padding: Tensor | None = None, causal: bool = False,
              softcap: float = 0.0, sink_logits: Tensor | None = None) -> Tensor:
    check_qkv(q, k, v)
    n, m = q.shape[2], k.shape[2]
    check_self_attention("window", n, m)
    allowed = with_sinks(band_allowed(n, m, *band(window), q.device), sinks)
    return restricted_attention(q, k, v, allowed, scale=scale, mask=mask, key_padding=key_padding, causal=causal,
                                softcap=softcap, sink_logits=sink_logits)
