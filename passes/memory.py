"""memory: every head through segments that also see the M_mem keys before them, plus G sinks."""

from .base import AttentionPass
from .registry import register


@register
class MemoryPass(AttentionPass):
    variant = "memory"
