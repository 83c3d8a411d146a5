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

# What the original gives a query row the structured masks block entirely (AttentionSite.blocked_rows).
BLOCKED_ROWS_ZERO = "zero"
BLOCKED_ROWS_UNIFORM = "uniform"
BLOCKED_ROWS_GROUPS = "groups"  # the mean over the first group of key classes that holds a key (blocked_groups)

# The classes of keys a blocked query row p sees (AttentionSite.blocked_groups), at p = i + M − N. "past": the keys
# the site's causality and window would let it see (j <= p, and j > p − W with a window), all of them padded since
# the row is blocked; without causality every key. "older" / "older_kept": padded / unpadded keys j <= p − W;
# "future" / "future_kept": padded / unpadded keys j > p.
KEY_CLASSES = ("past", "older", "older_kept", "future", "future_kept")


def permutes_bhsd(layout: str) -> bool:
    """Whether ``layout`` is (batch, heads, seq, head_dim) in some order of its four axes ("bshd", "sbhd")."""
    return sorted(layout) == sorted(LAYOUT_BHSD)


# An axis that batches the attention besides batch and heads, between heads and seq: Hiera attends within
# mask units laid out (B, H, units, N, D), layout "bhxsd". Each (head, unit) pair is an independent
# attention with the same structure, so the rewrites fold the extra axes into the heads by a reshape
# (no copy) and unfold the output the same way.
EXTRA_AXIS = "x"


def with_extra_axes(layout: str, rank: int | None) -> str:
    """A plain (batch, heads, ...) layout widened to ``rank`` axes by extra axes right after the heads."""
    if rank is None or rank <= len(layout) or not layout.startswith("bh"):
        return layout
    return "bh" + EXTRA_AXIS * (rank - len(layout)) + layout[2:]


def extra_axis_count(layout: str) -> int:
    """How many extra batching axes ``layout`` has (see EXTRA_AXIS)."""
    return layout.count(EXTRA_AXIS)


def folded(layout: str) -> str:
    """``layout`` with its extra axes folded into the heads."""
    return layout.replace(EXTRA_AXIS, "")


@dataclass(frozen=True)
class Projection:
    """How a fused op derives q, k or v from its inputs, when the value the attention reads is not
    in the graph (onnxruntime's Attention packs the q/k/v projection; MultiHeadAttention packs q/k/v
    or adds a projection bias):

        pick(source) @ weight[:, start:stop] + bias[start:stop]

    ``pick`` = (axis, index) takes one slot of a packed axis and drops the axis (q of a (B, N, H, 3, D)
    query); ``weight`` and ``bias`` are optional, and ``start:stop`` cuts the packed feature axis of
    both. The site's layouts describe the result. Frontends expand it before the usual layout
    conversion, so passes and the mask analysis never see the packing.
    """

    source: ValueRef
    weight: ValueRef | None = None
    bias: ValueRef | None = None
    start: int = 0
    stop: int | None = None
    pick: tuple[int, int] | None = None


# Numeric key-padding vector (B, M): nonzero = may attend (HF's attention_mask convention).
MASK_NONZERO_KEEP = "nonzero-keep"
# Key counts (B,): keys j >= value[b] are padding (onnxruntime Attention's 1-D mask_index).
MASK_KEY_END = "key-end"


@dataclass(frozen=True)
class MaskTerm:
    """One term added to the scores: ``factor`` times the value read as ``kind``.

    ``factor`` is 1 except where the exporter added the term before the scale,
    (s + b)·c = c·s + c·b (Falcon's ALiBi), so the term the ops see is c·b.
    """

    value: ValueRef
    kind: str
    factor: float = 1.0
    # What a boolean term adds at blocked entries: -inf, or the finite fill the model used (HF's
    # finfo.min), which makes a fully masked row uniform instead of empty.
    fill: float = float("-inf")
    # (into, back): View ids of two reshapes where the term is added to the scores viewed in another shape,
    # ``into`` that view and ``back`` out of it (Swin adds its shift mask to the scores viewed (images, windows,
    # H, N, M); ViTDet its relative positions to (B·H, qh, qw, kh, kw)). The rewrites broadcast the term to
    # the view's shape and reshape it back, as the model does with the scores; None: added to the scores.
    view: tuple[str, str] | None = None
    # W where mask analysis proved the term exactly causality, key padding (``window_padding``, or none) and a
    # causal sliding window of W keys (j > i + M − N − W, Mistral's and Gemma's local layers). An op that sees
    # no key W or more positions back is run causal with that key padding instead (``lowering.window_terms``);
    # any other reads the term as it is. 0: not such a term.
    window: int = 0
    window_padding: "MaskTerm | None" = None
    # No fill at or below MASK_FILL_MAX reaches the term (mask_analysis._never_blocks): a bias computed from the
    # activations (Inkling's relative logits) shifts scores and blocks no key, so a row the other masks block
    # whole is what the site records (lowering.blocked_rows).
    finite: bool = False


@dataclass(frozen=True)
class ScorePart:
    """A second q·kᵀ product the site's scores add, ``scale``·q·kᵀ (LiLT adds its layout stream's scores to its
    text stream's, and the other way round). A sum of products is one product over q and k concatenated along
    the head dim, each part's q scaled by its own factor over the site's scale, so the op serves it unchanged:
    ``AttentionSite.head_dim`` counts the parts' columns too. ``query`` and ``key`` are read in their own layouts
    with the site's head counts; ``head_dim`` is the part's own.
    """

    query: ValueRef
    key: ValueRef
    query_layout: str
    key_layout: str
    head_dim: Dim
    scale: float


@dataclass(frozen=True)
class RelativeBias:
    """A dense mask term recognised as a relative-position bias (VARIANTS.md, relbias "fuse mode").

    On the rows and keys the site lets through, ``term`` equals, up to a constant per
    query row (which softmax ignores),

        −slopes[h]·|δ| + table[h, clamp(δ, −R, R) + R],   δ = j − (i + M − N),  table (H, 2R + 1)

    plus ``key_padding`` where the term also carries the padding mask (T5 adds it into
    its position bias). The term stays in ``AttentionSite.masks``: only an op call that
    fuses the bias drops it (then it adds ``key_padding``), so every other rewrite sees
    the mask exactly as before. Values are tuples so that sites stay hashable.
    """

    term: MaskTerm
    slopes: tuple[float, ...]  # (H,)
    table: tuple[tuple[float, ...], ...]  # (H, 2R + 1)
    key_padding: MaskTerm | None = None
    # Exact only when each row's kept keys are contiguous (left or right padding): BLOOM counts ALiBi
    # positions over the kept keys, so a hole in the attention mask shifts the later keys' positions.
    contiguous_padding_only: bool = False

    @property
    def radius(self) -> int:
        return (len(self.table[0]) - 1) // 2

    def arrays(self):
        """(slopes (H,), table (H, 2R + 1)) as float32 arrays: relbias's constant tensors."""
        import numpy as np
        return np.asarray(self.slopes, np.float32), np.asarray(self.table, np.float32)

    def summary(self) -> dict:
        return {"radius": self.radius, "slopes": any(self.slopes), "key_padding": self.key_padding is not None,
                "contiguous_padding_only": self.contiguous_padding_only}


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
    # The head dim the op's q and k have: q's own plus each score part's (score_parts).
    head_dim: Dim = None
    # The values' head dim where it differs from that (DeepSeek's MLA: 128 against 192; LeViT's values are
    # wider); None where it is the same or unknown. The rewrites zero-pad the narrower side to one head dim.
    value_head_dim: Dim = None
    q_len: Dim = None
    kv_len: Dim = None
    # The effective scale applied to q·kᵀ; None means the op's default 1/sqrt(head_dim).
    scale: float | None = None
    # A per-(batch, head) factor on q·kᵀ besides the scale (SwinV2's learned logit scale): a value shaped like
    # the scores with extent 1 on their query and key axes. The rewrites multiply q by it.
    query_factor: ValueRef | None = None
    # Every term added to the scores that nothing structured describes (T5: position bias
    # + padding mask); the op receives their sum as one dense remainder mask.
    masks: tuple[MaskTerm, ...] = ()
    causal: bool = False
    # Key padding in structured form: a (B, M) (or (B, 1, 1, M)) term, handed to the op as a
    # vector instead of an N×M mask (VARIANTS.md, "Structured masks").
    key_padding: MaskTerm | None = None
    # What the original computes for a query row whose every key the structured masks block (left padding's
    # padded rows): BLOCKED_ROWS_ZERO, as the ops do (a -inf fill; torch's guarded softmax);
    # BLOCKED_ROWS_UNIFORM, the mean of every value (HF's eager masks: a finfo.min fill swallows the scores, so
    # the row's weights are all equal); or BLOCKED_ROWS_GROUPS, the mean over part of the keys where two masks
    # leave them different values (blocked_groups). The rewrites reproduce the last two after the op
    # (lowering.blocked_rows).
    blocked_rows: str = BLOCKED_ROWS_ZERO
    # With BLOCKED_ROWS_GROUPS: groups of KEY_CLASSES, the one the masks leave the greatest value first. Such a
    # row's output is the mean of the values over the first group that holds a key. GPT-Neo: ("past",), its causal
    # prefix, since its two finfo.min masks add to -inf past it; GPT-1: ("future_kept",), then the rest, since its
    # causal blend's -1e4 beats the padding's finfo.min.
    blocked_groups: tuple[tuple[str, ...], ...] = ()
    # The constant term the matcher read as causality, whose fill and place among the terms decide blocked rows:
    # (how many of ``masks`` come before it in graph order, the term). None where causality is the form's own.
    causal_term: tuple[int, MaskTerm] | None = None
    # A max() at a constant floor between the terms and the softmax (XGLM's guard at finfo.min): the sums of fills
    # below it are raised to it.
    score_floor: float | None = None
    # tanh softcapping of the scores, c·tanh(s/c) before the mask (Gemma-2); None = none.
    softcap: float | None = None
    # Learned sink logits (GPT-OSS): a (B | 1, H, N | 1, 1) value holding one logit a head (the matcher proves
    # it the same for every batch and query), which every row's softmax also spans as a column of value zero;
    # the rewrite reads it at batch 0, query 0. None = none.
    sink_logits: ValueRef | None = None
    # KV-cache step: keys are past_len cached tokens followed by the q_len new ones.
    past_len: Dim = None
    # q, k and v as a fused op derives them from its inputs (see Projection); None where ``query``
    # (``key``, ``value``) is the value itself. With a projection, ``query`` is its source.
    query_projection: Projection | None = None
    key_projection: Projection | None = None
    value_projection: Projection | None = None
    # View nodes that compute the attention and die once the output is rewired.
    nodes: tuple[str, ...] = field(default=(), repr=False)
    # The View node whose outputs the site replaces (anchor of the rewrite).
    anchor: str = ""
    layer: int | None = None
    # Why the frontend cannot rewrite this site (it is still attention), or None.
    unsupported: str | None = None
    # q, k and v are projections of one tensor, shown by the matcher from the dataflow: the site is
    # self-attention even where an exporter baked one length and left the other symbolic.
    proven_self_attention: bool = False
    # One of ``masks`` recognised as a relative-position bias, which relbias's fuse mode computes on the fly.
    relative_bias: RelativeBias | None = None
    # (reader node, value it reads, value of the same shape): nodes outside the site that read only the
    # shape of a value the rewrite removes (transformers takes the batch from the attention product's
    # Shape). The rewrite points each at the third value, which outlives it; left alone, the reader would
    # keep the whole dense attention computing beside the new op.
    shape_readers: tuple[tuple[str, ValueRef, ValueRef], ...] = ()
    # More q·kᵀ products the scores add (see ScorePart); the rewrites concatenate them onto q and k.
    score_parts: tuple[ScorePart, ...] = ()

    def score_part_factors(self) -> tuple[float, ...]:
        """What each score part's q is multiplied by before it joins the op's q: its scale over the site's,
        so that the op's one scale gives each product its own."""
        return tuple(p.scale / self.effective_scale for p in self.score_parts)

    @property
    def extra_axes(self) -> int:
        """Axes between heads and seq that batch the attention (see EXTRA_AXIS); 0 for plain sites."""
        return extra_axis_count(self.query_layout)

    @property
    def effective_scale(self) -> float | None:
        if self.scale is not None:
            return self.scale
        if isinstance(self.head_dim, int):
            return 1.0 / math.sqrt(self.head_dim)
        return None

    @property
    def is_self_attention(self) -> bool | None:
        """True when proven from the dataflow or the lengths are equal, False when they differ, else None.

        A KV-cache step (``past_len`` set) has keys longer than its queries: it is not
        self-attention in this sense, whatever its cache holds.
        """
        if self.proven_self_attention:
            return True
        if self.q_len is None or self.kv_len is None:
            return None
        return self.q_len == self.kv_len

    @property
    def mask(self) -> ValueRef | None:
        """The first dense mask term's value (None when the site has no dense mask)."""
        return self.masks[0].value if self.masks else None

    @property
    def mask_kind(self) -> str | None:
        """The dense mask terms' kinds, '+'-joined (None when there are none)."""
        return "+".join(t.kind for t in self.masks) if self.masks else None

    def summary(self) -> dict:
        """The JSON-friendly description printed by `attnopt detect --json`."""
        keep = ("name", "form", "num_heads", "kv_num_heads", "head_dim", "q_len", "kv_len",
                "causal", "layer", "softcap", "past_len")
        d = {k: v for k, v in asdict(self).items() if k in keep}
        d["self_attention"] = self.is_self_attention
        d["scale"] = self.effective_scale
        d["per_head_scale"] = self.query_factor is not None
        d["mask_kind"] = self.mask_kind
        d["key_padding"] = self.key_padding.kind if self.key_padding is not None else None
        if self.value_head_dim is not None:
            d["value_head_dim"] = self.value_head_dim
        if self.extra_axes:
            d["extra_axes"] = self.extra_axes
        if self.sink_logits is not None:
            d["sink_logits"] = True
        if self.score_parts:  # the head dim of each q·kᵀ product the scores add, the site's own first
            dims = [p.head_dim for p in self.score_parts]
            own = self.head_dim - sum(dims) if isinstance(self.head_dim, int) and None not in dims else None
            d["score_parts"] = [own, *dims]
        if any(t.window for t in self.masks):
            d["window"] = max(t.window for t in self.masks)
        if self.relative_bias is not None:
            d["relative_bias"] = self.relative_bias.summary()
        if self.blocked_rows != BLOCKED_ROWS_ZERO:  # what a row the masks block whole gets, as the original
            d["blocked_rows"] = self.blocked_rows
            if self.blocked_groups:
                d["blocked_groups"] = [list(g) for g in self.blocked_groups]
        if self.unsupported:
            d["unsupported"] = self.unsupported
        return d
