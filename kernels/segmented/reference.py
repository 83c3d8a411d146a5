"""segmented, the spec: allowed(i, j) = seg(i) == seg(j) or j < sinks. Exact limit: segment_size >= N."""

from __future__ import annotations

from torch import Tensor

from ..reference import band_allowed, check_qkv, check_self_attention, restricted_attention, with_sinks


def reference(q: Tensor, k: Tensor, v: Tensor, *, segment_size: int, sinks: int = 0, scale: float | None = None,
              mask: Tensor | None = None, key_padding: Tensor | None = None, causal: bool = False,
              softcap: float = 0.0, sink_logits: Tensor | None = None) -> Tensor:
    check_qkv(q, k, v)
    n, m = q.shape[2], k.shape[2]
    check_self_attention("segmented", n, m)
    allowed = with_sinks(band_allowed(n, m, segment_size, 0, 0, q.device), sinks)
    return restricted_attention(q, k, v, allowed, scale=scale, mask=mask, key_padding=key_padding, causal=causal,
                                softcap=softcap, sink_logits=sink_logits)
