"""AttentionSite: the contract between matching and rewriting.

A site names values in the backend-neutral View (see attnopt.graph) by
``ValueRef``s, never by frontend objects, so passes can reason about a site
without importing torch.fx or onnx_ir.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import NamedTuple, Union

Dim = Union[int, str, None]  # static size, symbolic name, or unknown


class ValueRef(NamedTuple):
    """One output of one View node: (node id, output index)."""

    node: str
    port: int = 0


# How the site's mask is to be read.
MASK_ADDITIVE = "additive"  # float, added to the scores
MASK_BOOLEAN = "boolean"  # True = may attend (SDPA / ONNX Attention convention)
MASK_BOOLEAN_BLOCKED = "boolean-blocked"  # True = blocked (masked_fill convention)

# Layout of query/key/value as the rewrite will receive them.
LAYOUT_BHSD = "bhsd"  # (batch, heads, seq, head_dim)
LAYOUT_BSD = "bsd"  # (batch, seq, heads*head_dim) with num_heads known
LAYOUT_BHDS = "bhds"  # key only: already transposed, (batch, heads, head_dim, seq)
LAYOUT_FLAT = "(bh)sd"  # (batch*heads, seq, head_dim), as nn.MultiheadAttention's bmm


@dataclass(frozen=True)
class AttentionSite:
    name: str
    form: str  # which pattern matched: decomposed, sdpa, onnx-attention, ms-attention, ms-mha
    query: ValueRef
    key: ValueRef
    value: ValueRef
    output: ValueRef
    query_layout: str = LAYOUT_BHSD
    key_layout: str = LAYOUT_BHSD
    value_layout: str = LAYOUT_BHSD
    output_layout: str = LAYOUT_BHSD
    num_heads: Dim = None
    kv_num_heads: Dim = None
    head_dim: Dim = None
    q_len: Dim = None
    kv_len: Dim = None
    # The effective scale applied to q·kᵀ; None means the op's default 1/sqrt(head_dim).
    scale: float | None = None
    mask: ValueRef | None = None
    mask_kind: str | None = None
    causal: bool = False
    # Further mask terms added to the scores besides ``mask`` (T5: position bias + padding mask).
    extra_masks: tuple[tuple[ValueRef, str], ...] = ()
    # View nodes that compute the attention and die once the output is rewired.
    nodes: tuple[str, ...] = field(default=(), repr=False)
    # The View node whose outputs the site replaces (anchor of the rewrite).
    anchor: str = ""
    layer: int | None = None
    # Why the frontend cannot rewrite this site (it is still attention), or None.
    unsupported: str | None = None

    @property
    def effective_scale(self) -> float | None:
        if self.scale is not None:
            return self.scale
        if isinstance(self.head_dim, int):
            return 1.0 / math.sqrt(self.head_dim)
        return None

    @property
    def is_self_attention(self) -> bool | None:
        """True/False when the lengths are known to be equal/different, None if unknown."""
        if self.q_len is None or self.kv_len is None:
            return None
        return self.q_len == self.kv_len

    def summary(self) -> dict:
        """The JSON-friendly description printed by `attnopt detect --json`."""
        keep = ("name", "form", "num_heads", "kv_num_heads", "head_dim", "q_len", "kv_len",
                "scale", "mask_kind", "causal", "layer")
        d = {k: v for k, v in asdict(self).items() if k in keep}
        d["scale"] = self.effective_scale
        if self.extra_masks:
            d["mask_kind"] = "+".join([self.mask_kind] + [k for _, k in self.extra_masks])
        if self.unsupported:
            d["unsupported"] = self.unsupported
        return d

    @property
    def mask_terms(self) -> tuple[tuple[ValueRef, str], ...]:
        """Every mask term, each (value, kind); their sum (booleans as 0/-inf) is the site's mask."""
        return (((self.mask, self.mask_kind),) if self.mask is not None else ()) + self.extra_masks
