"""routed: every head through clustered attention (k-means on the site's keys at run time, top_k routes)."""

from .base import AttentionPass
from .registry import register


@register
class RoutedPass(AttentionPass):
    variant = "routed"
