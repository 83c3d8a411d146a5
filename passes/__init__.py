"""Passes: one module per long-sequence variant, plus the registry."""

from .base import AttentionPass, OpCall, Refusal
from .registry import make_pass, pass_class, pass_names

__all__ = ["AttentionPass", "OpCall", "Refusal", "make_pass", "pass_class", "pass_names"]
