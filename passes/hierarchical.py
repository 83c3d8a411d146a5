"""hierarchical: every head through exact nearby blocks plus pooled far blocks (H-Transformer-1D style), plus G sinks.

Refuses cross-attention (via the spec), and sites with a dense remainder mask:
pooled entries stand for many keys at once, so a mask that differs per query
and key has no exact pooled form (the op would apply it to the exact entries
only). Causal and key-padding masks are structured and pooled exactly.
"""

from .base import AttentionPass, Refusal
from .registry import register


@register
class HierarchicalPass(AttentionPass):
    variant = "hierarchical"

    def plan_site(self, site):
        if site.masks:
            return Refusal(site, f"a dense mask ({site.mask_kind}) that is neither causal nor key padding: "
                                 "hierarchical pools far keys and cannot apply a per-query mask to them")
        return super().plan_site(site)
