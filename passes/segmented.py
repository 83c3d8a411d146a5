"""segmented: each query attends only to its own segment of S keys, plus G sink keys.

Exact limit: segment_size >= N. Cost O(N·(S+G)·D). Needs self-attention (N = M).
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import AttentionPass, OpCall, Refusal, require
from .registry import register


@dataclass(frozen=True)
class SegmentedParams:
    segment_size: int = 512
    sinks: int = 0

    def validate(self) -> None:
        require(self.segment_size >= 1, f"segmented: segment_size must be >= 1, got {self.segment_size}")
        require(self.sinks >= 0, f"segmented: sinks must be >= 0, got {self.sinks}")


@register
class SegmentedPass(AttentionPass):
    name = "segmented"
    summary = "block-diagonal attention over consecutive segments of S tokens, plus G sink tokens"
    Params = SegmentedParams

    def plan_site(self, site):
        if site.is_self_attention is False:
            return Refusal(site, f"cross-attention (N={site.q_len}, M={site.kv_len}): "
                                 "segmented needs self-attention")
        if site.is_self_attention is None:
            return Refusal(site, "query and key lengths are unknown: cannot prove self-attention")
        return OpCall.whole(site, "segmented_attention",
                            {"segment_size": self.params.segment_size, "sinks": self.params.sinks})
