"""lsh, the spec: allowed(i, j) = (∃ r: h_r(q_i) = h_r(k_j)) ∨ ⌊i/C⌋ = ⌊j/C⌋ ∨ j < sinks; one softmax over it."""

from __future__ import annotations

from torch import Tensor

from ..buckets import buckets_allowed
from ..reference import check_qkv, check_self_attention, restricted_attention, with_sinks
from .hashing import hash_buckets


def reference(q: Tensor, k: Tensor, v: Tensor, *, rotations: Tensor, n_buckets: int, n_rounds: int = 1,
              chunk: int = 64, seed: int = 0, sinks: int = 0, scale: float | None = None, mask: Tensor | None = None,
              key_padding: Tensor | None = None, causal: bool = False, softcap: float = 0.0,
              sink_logits: Tensor | None = None) -> Tensor:
    check_qkv(q, k, v)
    check_self_attention("lsh", q.shape[2], k.shape[2])
    if rotations.shape[0] != n_rounds:
        raise ValueError(f"lsh: {rotations.shape[0]} rotations for n_rounds={n_rounds}")
    allowed = buckets_allowed(hash_buckets(q, rotations, n_buckets), hash_buckets(k, rotations, n_buckets), chunk)
    return restricted_attention(q, k, v, with_sinks(allowed, sinks), scale=scale, mask=mask,
                                key_padding=key_padding, causal=causal, softcap=softcap, sink_logits=sink_logits)
