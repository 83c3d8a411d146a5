"""Structured masks: split each site's mask terms into causal, key padding and a dense remainder.

Seam only for now: ``refine_structured_masks`` returns the sites unchanged.
"""

from __future__ import annotations


def refine_structured_masks(loaded) -> list:
    """The sites of ``loaded`` with their mask terms in structured form (VARIANTS.md, "Structured masks")."""
    return list(loaded.sites)
