"""lowrank: every head through pooled (Linformer-style) or Nyström attention; causal sites and masks that vary
per query are refused, since the keys are pooled once for every query."""

from .base import AttentionPass, Refusal
from .registry import register


@register
class LowrankPass(AttentionPass):
    variant = "lowrank"

    def plan_site(self, site):
        if site.causal or site.past_len is not None:
            return Refusal(site, "causal attention: lowrank pools keys from the whole sequence, so every query "
                                 "would see future keys (segmented, window or memory serve causal sites)")
        if site.masks:
            return Refusal(site, "the mask is not key padding (it varies per query or per head), and lowrank "
                                 "pools the keys once for every query")
        return super().plan_site(site)
