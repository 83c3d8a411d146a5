"""window: every head through sliding-window attention (|i - j| < W) plus G sinks."""

from .base import AttentionPass
from .registry import register


@register
class WindowPass(AttentionPass):
    variant = "window"
