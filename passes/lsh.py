"""lsh: every head through angular-LSH bucketed attention; the pass draws the rotations the model stores."""

import dataclasses

from .base import AttentionPass, OpCall, Refusal
from .registry import register


@register
class LshPass(AttentionPass):
    variant = "lsh"

    def plan_site(self, site):
        if not isinstance(site.head_dim, int):
            return Refusal(site, "the head dim is not known statically, and lsh's rotations are "
                                 "(n_rounds, head_dim, n_buckets/2) constants stored in the model")
        params = dataclasses.asdict(self.params)
        shape = (1, 1, 1, site.head_dim)
        return OpCall.whole(site, self.variant, params, self.spec().tensors_for(params, shape, shape))
