"""segmented: every head through block-diagonal attention (segments of S tokens) plus G sinks."""

from .base import AttentionPass
from .registry import register


@register
class SegmentedPass(AttentionPass):
    variant = "segmented"
