"""routed, the spec: allowed(i, j) = a(j) ∈ topk(i) ∨ ⌊i/C⌋ = ⌊j/C⌋ ∨ j < sinks; one softmax over it."""

from __future__ import annotations

from torch import Tensor

from ..buckets import buckets_allowed
from ..reference import check_qkv, check_self_attention, restricted_attention, with_sinks
from .clusters import route


def allowed_keys(q: Tensor, k: Tensor, key_padding: Tensor | None = None, *, n_clusters: int, top_k: int = 1,
                 iters: int = 2, seed: int = 0, chunk: int = 64, sinks: int = 0) -> Tensor:
    """(B, H, N, M) bool: the keys each query's routes, chunk and sinks give it (causality and masks not applied).
    The routing depends on the keys and queries themselves: this is also how the tuner measures routed's cost."""
    q_buckets, k_buckets = route(q, k, key_padding, n_clusters=n_clusters, top_k=top_k, iters=iters)
    return with_sinks(buckets_allowed(q_buckets, k_buckets, chunk), sinks)


def reference(q: Tensor, k: Tensor, v: Tensor, *, n_clusters: int, top_k: int = 1, iters: int = 2, seed: int = 0,
              chunk: int = 64, sinks: int = 0, scale: float | None = None, mask: Tensor | None = None,
              key_padding: Tensor | None = None, causal: bool = False, softcap: float = 0.0,
              sink_logits: Tensor | None = None) -> Tensor:
    check_qkv(q, k, v)
    check_self_attention("routed", q.shape[2], k.shape[2])
    allowed = allowed_keys(q, k, key_padding, n_clusters=n_clusters, top_k=top_k, iters=iters, chunk=chunk,
                           sinks=sinks)
    return restricted_attention(q, k, v, allowed, scale=scale, mask=mask, key_padding=key_padding, causal=causal,
                                softcap=softcap, sink_logits=sink_logits)
