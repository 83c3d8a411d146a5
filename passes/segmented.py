"""segmented: every head through block-diagonal attention (segments of S tokens) plus G sinks."""

from .base import AttentionPass, OpCall
from .registry import register


@register
class SegmentedPass(AttentionPass):
    variant = "segmented"

    @classmethod
    def serves_kv_cache(cls) -> bool:
        return True

    def plan_site(self, site):
        if site.past_len is not None:
            # In a KV-cache step a segment starts inside the cache; memory with no memory is exactly
            # segmented there, and its kernel aligns the queries after the cache.
            return OpCall.whole(site, "memory", {"segment_size": self.params.segment_size, "memory": 0,
                                                 "sinks": self.params.sinks})
        return super().plan_site(site)
