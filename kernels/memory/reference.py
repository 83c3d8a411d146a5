"""memory, the spec: seg(i)·S − M_mem <= j < (seg(i) + 1)·S, or j < sinks. Exact limit: memory >= N."""

from __future__ import annotations

from torch import Tensor

from ..reference import band_allowed, check_qkv, check_self_attention, restricted_attention, with_sinks
from . import band


def reference(q: Tensor, k: Tensor, v: Tensor, *, segment_size: int, memory: int, sinks: int = 0,
              scale: float | None = None, mask: Tensor | None = None, key_padding: Tensor | None = None,
              causal: bool = False, softcap: float = 0.0,
              sink_logits: Tensor | None = None) -> Tensor:
    check_qkv(q, k, v)
    n, m = q.shape[2], k.shape[2]
    check_self_attention("memory", n, m)
    allowed = with_sinks(band_allowed(n, m, *band(segment_size, memory), q.device), sinks)
    return restricted_attention(q, k, v, allowed, scale=scale, mask=mask, key_padding=key_padding, causal=causal,
                                softcap=softcap, sink_logits=sink_logits)
