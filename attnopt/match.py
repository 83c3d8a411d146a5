"""The one attention matcher, written against the View.

It anchors on every ``softmax`` and on every fused attention op (``sdpa``,
``mha``), then walks up and down through what exporters interleave: scale
mul/div (also sqrt(scale) split over q and k), mask add/where/masked_fill,
score modifiers (a bias added before the scale, tanh softcapping), casts, NaN
guards, dropout, head transposes, the reshape/expand pairs that aten's matmul
decomposition inserts, batch-folded (B·H) layouts, GQA unsqueeze/expand/reshape
and GQA query packing.

There are no per-model op-sequence lists: each step below is one identity
that holds for any exporter (see the comment on each rule).

An anchor the matcher cannot read is skipped with the reason, never raised:
``detect(view)`` returns the sites and the skipped anchors, so one odd layer
never hides the others.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import numpy as np

from .graph import SHAPE_ONLY_OPS, View, broadcast_dims, draws_random, plain_op_name, reads_shape_only, same_value
from .site import (LAYOUT_BHDS, LAYOUT_BHSD, LAYOUT_FLAT, MASK_ADDITIVE, MASK_BOOLEAN, MASK_BOOLEAN_BLOCKED,
                   MASK_NONZERO_KEEP, AttentionSite, MaskTerm, Projection, ScorePart, ValueRef, extra_axis_count,
                   permutes_bhsd, with_extra_axes)

# Ops that do not change the values the matcher cares about (dtype casts aside).
TRANSPARENT = frozenset({"cast", "identity"})
# A fill at or below this is "minus infinity" for masking purposes (HF uses finfo.min,
# older code -1e4 or -1e9).
MASK_FILL_MAX = -1e4
# Anchors the matcher starts from.
ANCHOR_OPS = frozenset({"softmax", "sdpa", "mha"})


class Mismatch(Exception):
    """Why an anchor is not an attention site the matcher can describe (one line, for users)."""


@dataclass(frozen=True)
class SkippedAnchor:
    """A softmax or fused attention op that did not become a site, and why."""

    anchor: str  # View node id
    name: str  # module path of the anchor, as site names are made
    op: str  # the anchor's View op: softmax, sdpa or mha
    reason: str
    # True when the matcher itself failed on it (a bug to report), not a reasoned refusal.
    internal_error: bool = False

    def summary(self) -> dict:
        return {"name": self.name, "op": self.op, "reason": self.reason, "internal_error": self.internal_error}


@dataclass(frozen=True)
class Detection:
    """What detection found: the sites, and every anchor that was not turned into one."""

    sites: list[AttentionSite]
    skipped: list[SkippedAnchor]


def detect(view: View) -> Detection:
    """Every attention site of the view, in graph order, with unique names; and the skipped anchors."""
    sites: list[AttentionSite] = []
    skipped: list[SkippedAnchor] = []
    for nid in sorted(view.nodes(), key=lambda n: view.info(n).order):
        op = view.op(nid)
        if op not in ANCHOR_OPS:
            continue
        try:
            found = _match_decomposed(view, nid) if op == "softmax" else [_match_fused(view, nid)]
            sites += [_finish(view, site) for site in found]
        except Mismatch as e:
            skipped.append(SkippedAnchor(nid, _anchor_name(view, nid), op, str(e)))
        except Exception as e:  # noqa: BLE001  one unreadable anchor must not hide the other sites
            skipped.append(SkippedAnchor(nid, _anchor_name(view, nid), op,
                                         f"matcher error: {type(e).__name__}: {e}", internal_error=True))
    return Detection(_name_sites(view, sites), skipped)


def detect_sites(view: View) -> list[AttentionSite]:
    """Every attention site of the view, in graph order, with unique names."""
    return detect(view).sites


# --------------------------------------------------------------------------- helpers

def _skip_up(view: View, v: ValueRef, ops=TRANSPARENT) -> ValueRef:
    while view.op(v.node) in ops and view.input(v.node, 0) is not None:
        v = view.input(v.node, 0)
    return v


def _scalar_operand(view: View, nid: str) -> tuple[ValueRef, float] | None:
    """For a binary op with one dynamic operand and one scalar constant: (dynamic, const)."""
    a, b = (view.inputs(nid) + [None, None])[:2]
    if a is None or b is None:
        return None
    # The other operand may fold to a constant too (a decoder's first layer over learned queries alone): it is
    # still the tensor being scaled, unless it is a single number itself.
    cb, ca = view.scalar(b), view.scalar(a)
    if cb is not None and (view.const(a) is None or ca is None):
        return a, cb
    if ca is not None and (view.const(b) is None or cb is None) and view.op(nid) == "mul":
        return b, ca
    return None


def _strip_scale(view: View, v: ValueRef) -> tuple[ValueRef, float, list[str]]:
    """q·c, q/c (and casts) -> (q, product of factors, nodes passed)."""
    factor, passed = 1.0, []
    while True:
        v2 = _skip_noops(view, v)
        passed += _nodes_between(view, v, v2)
        v = v2
        op = view.op(v.node)
        if op not in ("mul", "div"):
            return v, factor, passed
        found = _scalar_operand(view, v.node)
        if found is None:
            return v, factor, passed
        x, c = found
        if op == "div":
            if c == 0:
                return v, factor, passed
            c = 1.0 / c
        factor *= c
        passed.append(v.node)
        v = x


def _skip_noops(view: View, v: ValueRef) -> ValueRef:
    """Up through TRANSPARENT ops and reshapes or expands to the shape their input has: torch's decompositions
    write one of each before every bmm, also where the operand is 3-D already (ViTDet's folded heads)."""
    v = _skip_up(view, v)
    while _keeps_shape(view, v.node):
        v = _skip_up(view, view.input(v.node, 0))
    return v


def _keeps_shape(view: View, nid: str) -> bool:
    """A reshape or expand to the shape its input has, fully known: no op at all."""
    src = view.input(nid, 0) if view.op(nid) in ("reshape", "expand") else None
    shape = view.shape(ValueRef(nid))
    return src is not None and shape is not None and None not in shape and view.shape(src) == shape


def _nodes_between(view: View, start: ValueRef, end: ValueRef) -> list[str]:
    out, v = [], start
    while v != end:
        out.append(v.node)
        v = view.input(v.node, 0)
    return out


def _is_swap_last2(view: View, nid: str, rank: int | None) -> bool:
    attrs = view.attrs(nid)
    perm = attrs.get("perm")
    if perm is not None:
        perm = list(perm)
        n = len(perm)
        return n >= 2 and perm[:-2] == list(range(n - 2)) and perm[-2:] == [n - 1, n - 2]
    dims = attrs.get("dims")  # torch transpose(d0, d1)
    if dims is not None and rank is not None:
        d0, d1 = sorted(d % rank for d in dims)
        return (d0, d1) == (rank - 2, rank - 1)
    return False


def _compatible(a, b) -> bool:
    """Two dims that may be the same size: equal, or not both known integers."""
    return a == b or not (isinstance(a, int) and isinstance(b, int))


def _unflatten_up(view: View, v: ValueRef) -> tuple[ValueRef, list[str]]:
    """(B*H, N, D) made by reshape (after expand, casts) from a 4-D (B, H, N, D) x -> x.

    This undoes aten's decomposition of a 4-D matmul into bmm, and layouts that fold
    the heads into the batch (BLOOM, DeBERTa, nn.MultiheadAttention's bmm).
    """
    if view.rank(v) != 3:
        return v, []
    passed, cur = [], v
    s3 = view.shape(v)
    while view.op(cur.node) in ("reshape", "expand", "identity", "cast") and view.input(cur.node, 0) is not None:
        kv, gqa = _strip_gqa(view, cur)
        if kv != cur:  # flattened straight from the GQA repeat: the kv tensor itself
            return kv, passed + gqa
        passed.append(cur.node)
        cur = view.input(cur.node, 0)
        s = view.shape(cur)
        # the last two axes are the 3-D tensor's, one of them known: D (k, v: (B, H, M, D)) or, for kᵀ with
        # a symbolic length, the one before it ((B, H, D, M))
        if s is not None and len(s) == 4 and _compatible(s[-2], s3[-2]) and _compatible(s[-1], s3[-1]) \
                and (isinstance(s[-1], int) or isinstance(s[-2], int)):
            # an expand to the shape it already has (torch's decompositions write one before each bmm) is no op
            while view.op(cur.node) == "identity" or (view.op(cur.node) == "expand"
                                                      and view.shape(view.input(cur.node, 0)) == s):
                passed.append(cur.node)
                cur = view.input(cur.node, 0)
            if view.op(cur.node) == "expand" and _broadcasts_one_head(view.shape(view.input(cur.node, 0)), s):
                # one kv head broadcast over the query heads: how torch's decomposition writes a matmul whose
                # operand has a head axis of 1 (Falcon's multi-query k and v); that one head is the kv tensor
                return view.input(cur.node, 0), passed + [cur.node]
            return cur, passed
        if s is not None and len(s) != 3 and len(s) != 4:
            break
    return v, []


def _broadcasts_one_head(src, dst) -> bool:
    """An expand from ``src`` (B, 1, X, Y) to ``dst`` (B, H, X, Y): every other axis proven kept."""
    return (src is not None and dst is not None and len(src) == len(dst) == 4 and src[1] == 1
            and dst[1] != 1 and all(_same_dim(a, b) for k, (a, b) in enumerate(zip(src, dst)) if k != 1))


def _strip_transpose(view: View, v: ValueRef) -> tuple[ValueRef, str, list[str]]:
    """kᵀ (laid out b,h,d,s) -> (k, k's layout, nodes passed).

    A 4-D Transpose with any perm is undone symbolically: TorchScript builds kᵀ
    straight from the (b,s,h,d) projection with perm (0,2,3,1), so k's layout
    is then "bshd" and the rewrite adds one transpose. Also handles
    Reshape→Transpose→Reshape over flattened (B*H) heads.
    """
    v = _skip_up(view, v)
    nid = v.node
    if view.op(nid) == "transpose":
        src = view.input(nid, 0)
        rank = view.rank(src) or view.rank(v)
        perm = view.attrs(nid).get("perm")
        if perm is None and "dims" in view.attrs(nid) and rank is not None:
            d0, d1 = (d % rank for d in view.attrs(nid)["dims"])
            perm = list(range(rank))
            perm[d0], perm[d1] = perm[d1], perm[d0]
        if perm is not None and len(perm) == 4:
            layout = [""] * 4
            for i, p in enumerate(perm):
                layout[p] = LAYOUT_BHDS[i]
            return src, "".join(layout), [nid]
        if perm is not None and len(perm) == 3 and list(perm) == [0, 2, 1]:
            return src, LAYOUT_FLAT, [nid]
        if perm is not None and len(perm) > 4 and _is_swap_last2(view, nid, len(perm)):
            return src, with_extra_axes(LAYOUT_BHSD, len(perm)), [nid]  # kᵀ over extra axes (EXTRA_AXIS)
    if view.op(nid) == "reshape":
        inner = _skip_up(view, view.input(nid, 0))
        if view.op(inner.node) == "transpose" and _is_swap_last2(view, inner.node, view.rank(view.input(inner.node, 0))):
            flat = view.input(inner.node, 0)
            kv, gqa = _strip_gqa(view, flat)
            s_kv, s_out = view.shape(kv), view.shape(v)
            if kv != flat and s_kv is not None and s_out is not None and len(s_out) == 4 \
                    and s_kv[0] == s_out[0] and s_kv[2:] == (s_out[3], s_out[2]):
                return kv, LAYOUT_BHSD, [nid, inner.node] + gqa
            if view.op(flat.node) == "reshape":
                src = view.input(flat.node, 0)
                s_src, s_out = view.shape(src), view.shape(v)
                if s_src is not None and s_out is not None and len(s_src) == len(s_out) == 4 \
                        and s_src[:2] == s_out[:2] and s_src[2] == s_out[3] and s_src[3] == s_out[2]:
                    return src, LAYOUT_BHSD, [nid, inner.node, flat.node]
    rank = view.rank(v)
    return v, (with_extra_axes(LAYOUT_BHDS, rank) if rank is not None and rank >= 4 else "(bh)ds"), []


def _dim_of(shape, layout: str, letter: str):
    """The size of axis ``letter`` (b, h, s, d) of a tensor laid out as ``layout``; None if unknown."""
    axes = layout.replace("(bh)", "b")
    if shape is None or len(shape) != len(axes) or letter not in axes:
        return None
    return shape[axes.index(letter)]


def _repeat_source(view: View, x: ValueRef) -> tuple[ValueRef | None, list[str]]:
    """expand(unsqueeze(k, 2)) to (B, Hkv, rep, M, D) -> k, the (B, Hkv, M, D) kv tensor."""
    x = _skip_up(view, x)
    if view.op(x.node) != "expand" or view.rank(x) != 5:
        return None, []
    passed = [x.node]
    y = _skip_up(view, view.input(x.node, 0))
    while view.op(y.node) in ("unsqueeze", "reshape", "slice") and view.rank(y) == 5:
        passed.append(y.node)
        y = _skip_up(view, view.input(y.node, 0))
    return (y, passed) if view.rank(y) == 4 else (None, [])


def _heads(view: View, v: ValueRef, layout: str) -> int | str | None:
    """The head axis of a 4-D (b, h, s, d) or (b, h, d, s) tensor; None for other layouts or an unknown shape."""
    return _dim(view.shape(v), 1) if layout in (LAYOUT_BHSD, LAYOUT_BHDS) and view.rank(v) == 4 else None


def _strip_gqa(view: View, v: ValueRef) -> tuple[ValueRef, list[str]]:
    """GQA repetition, reshape(expand(unsqueeze(k, 2))) to (B, H, M, D) or (B*H, M, D) -> k."""
    if view.op(v.node) != "reshape" or view.rank(v) not in (3, 4, None):
        return v, []
    src, passed = _repeat_source(view, view.input(v.node, 0))
    return (src, [v.node] + passed) if src is not None else (v, [])


def _unpack_gqa_query(view: View, q: ValueRef) -> tuple[ValueRef, list[str]]:
    """A query packed for GQA, reshape((B, H, N, D) -> (B, Hkv, H/Hkv·N, D)) -> the (B, H, N, D) query.

    Hugging Face packs a decode step's query heads into the query axis so that each
    kv head serves its group without repeating k/v (transformers' pack_gqa).
    """
    if view.op(q.node) != "reshape":
        return q, []
    src = view.input(q.node, 0)
    if _gqa_packing(view.shape(src), view.shape(q)) is None:
        return q, []
    return src, [q.node]


def _same_dim(a, b) -> bool:
    """Two dims proven equal: the same size, or the same symbol."""
    return a is not None and a == b


def _gqa_packing(s, p) -> int | None:
    """r = H/Hkv when a reshape from ``s`` = (B, H, N, D) to ``p`` = (B, Hkv, P, D) is GQA query packing.

    Row-major, a reshape that keeps B and D and has H·N = Hkv·P sends query head h, position n to packed
    row (h // r, (h % r)·N + n): the packing, whatever N and P are. The reshape itself enforces
    B·H·N·D = B·Hkv·P·D, so B and D proven kept (the same size or the same symbol) and H, Hkv known prove
    it with symbolic lengths too. Shapes that contradict it (P the same symbol as N) prove nothing.
    """
    if s is None or p is None or len(s) != 4 or len(p) != 4:
        return None
    h, g = s[1], p[1]
    if not (isinstance(h, int) and isinstance(g, int) and 0 < g < h and h % g == 0):
        return None
    if isinstance(s[2], int) and isinstance(p[2], int):
        kept = h * s[2] == g * p[2] and _compatible(s[0], p[0]) and s[3] == p[3]
    else:
        kept = _same_dim(s[0], p[0]) and _same_dim(s[3], p[3]) and s[2] != p[2]
    return h // g if kept else None


def _packed_query_of_unknown_length(view: View, q: ValueRef) -> str | None:
    """Why a query that looks GQA-packed (fewer heads, same head dim) can't be served, or None.

    With symbolic lengths the packing can't be proven from the shapes, and a rewrite that took the
    packed axis for the sequence would place the packed rows at the wrong positions: a silently
    wrong model. Such a site stays dense, with this reason, until the packing is proven.
    """
    if view.op(q.node) != "reshape":
        return None
    s, p = view.shape(view.input(q.node, 0)), view.shape(q)
    if s is None or p is None or len(s) != 4 or len(p) != 4:
        return None
    if isinstance(s[1], int) and isinstance(p[1], int) and p[1] < s[1] and s[1] % p[1] == 0 and s[3] == p[3] \
            and not (isinstance(s[2], int) and isinstance(p[2], int)):
        return (f"the query looks GQA-packed ({s[1]} heads reshaped into {p[1]}) with a length the shapes "
                f"don't fix: the packing can't be proven, so the site stays dense")
    return None


def _is_neg_fill(view: View, v: ValueRef | None) -> bool:
    c = view.const(v) if v is not None else None
    if c is None or np.size(c) == 0:
        return False
    try:
        return bool(np.all(np.asarray(c, dtype=np.float64) <= MASK_FILL_MAX))
    except (TypeError, ValueError):
        return False


def _is_zero(view: View, v: ValueRef | None) -> bool:
    """A constant 0, or a tensor of zeros made in the shape of another (zeros_like, full_like(x, 0))."""
    if v is not None and view.op(v.node).startswith("other:"):
        name = plain_op_name(view.op(v.node))
        if name == "zeros_like" or (name == "full_like" and view.scalar(view.input(v.node, 1)) == 0.0):
            return True
    return view.scalar(v) == 0.0


def _dynamic(view: View, v: ValueRef | None) -> bool:
    return v is not None and view.is_dynamic(v)


def _anchor_name(view: View, nid: str) -> str:
    return (view.info(nid).name or "").strip("./") or nid


# --------------------------------------------------------------------------- the scores

def _fill(view: View, v: ValueRef, gain: float, clamp: float | None = None) -> float:
    """The blocked value a where/masked_fill writes, as the softmax sees it: a finite fill (HF's finfo.min)
    keeps fully masked rows uniform rather than empty, so the rewrite must use the same value. ``clamp``: a
    max() above the fill (``_clamp_floor``) raises it to its floor."""
    c = view.scalar(v)
    value = float("-inf") if c is None else float(c) * gain
    value = value if np.isfinite(value) else float("-inf")
    return value if clamp is None else max(value, clamp)


def _clamp_floor(view: View, nid: str, gain: float) -> float | None:
    """max(x, c) on the scores with a scalar constant c: the floor gain·c as the softmax sees it, where it lies
    at or below MASK_FILL_MAX (only blocked entries reach it); None for any other max."""
    ins = view.inputs(nid)
    if len(ins) != 2 or None in ins or gain <= 0:
        return None
    consts = [view.scalar(x) for x in ins]
    if sum(c is not None for c in consts) != 1 or any(view.const(x) is not None and c is None
                                                      for x, c in zip(ins, consts)):
        return None
    floor = next(c for c in consts if c is not None) * gain
    return floor if floor <= MASK_FILL_MAX else None


@dataclass
class _Term:
    value: ValueRef
    kind: str
    factor: float = 1.0
    flat: bool = False  # added to (B·H, N, M) scores: the rewrite unfolds it with the query
    fill: float = float("-inf")  # what a boolean term puts at blocked entries (scaled like the scores)
    view: tuple[str, str] | None = None  # MaskTerm.view


@dataclass
class _Scores:
    """softmax input = cap(σ·q·kᵀ) + Σ factor·term, as collected walking up from the softmax.

    cap(x) = c·tanh(x/c) when ``softcap`` is c, else x. ``scale`` is σ from the chain
    alone (q and k may carry more of it).
    """
    matmul: str
    scale: float = 1.0
    softcap: float | None = None
    terms: list = field(default_factory=list)  # outermost first
    nodes: list = field(default_factory=list)
    heads: object = None  # H, where the chain reshapes (B·H, N, M) scores to (B, H, N, M)
    factor: ValueRef | None = None  # a per-(batch, head) factor on q·kᵀ (AttentionSite.query_factor)
    factor_flat: bool = False  # ... on (B·H, N, M) scores: the rewrite unfolds it with the query, as a term
    # Columns concatenated after the keys' scores (GPT-OSS's learned per-head sink logits): the softmax spans
    # them, the value product reads the keys' columns only. ``sink``: that concat's second input.
    extra_columns: bool = False
    sink: ValueRef | None = None
    clamp: float | None = None  # a max() at a constant floor (AttentionSite.score_floor)
    # A term that is itself a q·kᵀ product (LiLT adds its layout stream's scores to its text stream's), kept
    # apart from ``terms``: the site reads it as a ScorePart of its q and k (_score_part).
    second_product: "_Term | None" = None


# Ops the walk from the softmax up to q·kᵀ passes without changing the algebra.
_SCORE_PASS = TRANSPARENT | {"reshape", "expand"}


def _scores_product(view: View, q: ValueRef | None, kt: ValueRef | None) -> bool:
    """Whether q @ kt can be attention scores: the keys come from the input. The queries may be learned
    (Perceiver's latents, DETR's object queries in its first decoder layer); constant keys make a lookup
    into a learned table (x @ W), as a classifier or a soft-MoE router computes."""
    return q is not None and _dynamic(view, kt)


def _reaches_matmul(view: View, v: ValueRef, depth: int = 12) -> bool:
    """Whether v leads up to a dynamic q·kᵀ product through ops the score walk accepts."""
    for _ in range(depth):
        op = view.op(v.node)
        if op == "matmul":
            a, b = view.inputs(v.node)[:2]
            return _scores_product(view, a, b)
        if op in _SCORE_PASS | {"mul", "div", "add", "sub", "where", "masked_fill", "tanh"}:
            # where(cond, a, b) goes on through a or b, whichever is not a constant, whether cond is or not
            ports = view.inputs(v.node)[1:3] if op == "where" else view.inputs(v.node)
            ins = [x for x in ports if x is not None and view.const(x) is None]
            if not ins:
                return False
            if op in ("add", "sub"):
                return any(_reaches_matmul(view, x, depth - 1) for x in ins)
            v = ins[0]
            continue
        return False
    return False


def _strip_term_scale(view: View, m: ValueRef) -> tuple[ValueRef, float]:
    """A View-only c·m (baddbmm's beta) -> (m, c): a term must name a value the frontend has."""
    if view.info(m.node).ref is None and view.op(m.node) in ("mul", "div"):
        found = _scalar_operand(view, m.node)
        if found is not None and found[1] != 0:
            x, c = found
            return x, (c if view.op(m.node) == "mul" else 1.0 / c)
    return m, 1.0


def _viewed(view: View, nid: str, inner: ValueRef, outer: ValueRef, back: str | None, terms: list,
            start: int) -> tuple[str | None, int]:
    """Walking up through the reshape ``nid`` from ``outer`` to ``inner``: (the id of the reshape back out of a
    view of the scores while the walk is inside one (MaskTerm.view), else None; the index in ``terms`` where
    the view's terms start). A reshape from scores of rank ≤ 4 to a higher rank leads into such a view, one
    back leads out; on entering, the terms found inside learn their pair of reshapes."""
    r_in, r_out = view.rank(inner), view.rank(outer)
    if r_in is None or r_out is None:
        if back is not None:
            raise Mismatch("a reshape of unknown rank inside a view of the scores")
        return None, start
    if back is None:
        return (nid, len(terms)) if r_in > 4 >= r_out else (None, start)
    if r_in <= 4 < r_out:
        for t in terms[start:]:  # read back, a term has the shape of the scores the view came from
            t.view, t.flat = (nid, back), view.rank(ValueRef(back, 0)) == 3
        return None, start
    raise Mismatch("a second reshape inside a view of the scores")


def _head_factor(view: View, nid: str, scores: ValueRef) -> tuple[ValueRef, ValueRef] | None:
    """s·f with f one number per batch and head (extent 1 on the query and key axes, SwinV2's learned logit
    scale) -> (s, f); None for any other product. Such a factor is q's: (q·f)·kᵀ = f·(q·kᵀ)."""
    a, b = (view.inputs(nid) + [None, None])[:2]
    if a is None or b is None:
        return None
    rank = view.rank(scores)
    for s, f in ((a, b), (b, a)):
        shape = view.shape(f)
        if shape is None or rank is None or len(shape) > rank or view.view_only(f.node) or view.scalar(f) is not None:
            continue  # (one number is a scale, _scalar_operand's: it may be a literal no graph node holds)
        if all(d == 1 for d in (1, 1, *shape)[-2:]) and _reaches_matmul(view, s) and not _reaches_matmul(view, f):
            return s, f
    return None


# Ops that move or copy a tensor's values without computing new ones: a 0/1 tensor stays 0/1 through them.
_VALUE_PRESERVING = TRANSPARENT | {"reshape", "expand", "slice", "unsqueeze", "squeeze", "transpose"}


def _zero_one(view: View, b: ValueRef) -> np.ndarray | bool | None:
    """b's values where they are constant and all 0 or 1; True where b is a slice (reshape, ...) of such a constant
    or a boolean cast to numbers; None where neither is shown."""
    c = view.const(b)
    if c is not None:
        try:
            arr = np.asarray(c, dtype=np.float64)
        except (TypeError, ValueError):
            return None
        return arr if np.isin(arr, (0.0, 1.0)).all() else None
    for _ in range(16):
        op = view.op(b.node)
        ins = view.inputs(b.node)
        if not ins or ins[0] is None:
            return None
        if op == "cast" and view.dtype(ins[0]) == "bool":
            return True
        if op not in _VALUE_PRESERVING:
            return None
        b = ins[0]
        c = view.const(b)
        if c is not None:
            return True if _zero_one(view, b) is not None else None
    return None


def _blended_mask(view: View, product: ValueRef, term: ValueRef) -> tuple[ValueRef, ValueRef, float] | None:
    """s·b + t, with b all 0s and 1s, t 0 where b is 1 and a mask fill (<= MASK_FILL_MAX) where b is 0: the
    scores where b keeps them and the fill elsewhere, masked_fill written as a blend (GPT-1's
    ``w * b + -1e4 * (1 - b)``) -> (s, b, the fill); None for any other sum.

    Both sides constant (an exporter folded t) are compared value by value; otherwise t must be c·(1 − b) for
    the same b, with a scalar c."""
    if view.op(product.node) != "mul":
        return None
    pair = view.inputs(product.node)[:2]
    for s, b in (pair, pair[::-1]):
        if s is None or b is None or not _reaches_matmul(view, s) or _reaches_matmul(view, b):
            continue
        keep = _zero_one(view, b)
        t = view.const(term)
        if isinstance(keep, np.ndarray) and t is not None:
            try:
                keep_b, t_b = np.broadcast_arrays(keep, np.asarray(t, dtype=np.float64))
            except ValueError:
                continue
            blocked = keep_b == 0
            if np.all(t_b[~blocked] == 0) and blocked.any() and np.all(t_b[blocked] <= MASK_FILL_MAX):
                return s, b, float(np.max(t_b[blocked]))
        elif keep is not None and view.op(term.node) == "mul":
            found = _scalar_operand(view, term.node)
            if found is None or found[1] > MASK_FILL_MAX:
                continue
            x, c = found
            if view.op(x.node) == "sub" and view.scalar(view.input(x.node, 0)) == 1.0 \
                    and view.input(x.node, 1) == b:
                return s, b, float(c)
    return None


def _walk_up(view: View, v: ValueRef) -> _Scores:
    """Collect softmax(x)'s x as cap(σ·q·kᵀ) + terms; raises Mismatch for anything else.

    Walking up, ``gain`` is what the current value is multiplied by in x: a term
    added here enters x times ``gain`` ((s + b)·c + m = c·s + c·b + m, Falcon's ALiBi).
    At a tanh the gain so far is the cap c, and it carries on: x = c·tanh(w) with
    w = s'/c means the scores inside the cap are s' = c·w.
    """
    gain, cap, clamp = 1.0, None, None
    terms, nodes, heads, factor, factor_flat = [], [], None, None, False
    extra, sink = False, None  # columns concatenated after the scores (_Scores.extra_columns, sink)
    second = None  # _Scores.second_product
    back, start = None, 0  # inside a view of the scores: the reshape out of it, where its terms start
    for _ in range(48):
        nid = v.node
        op = view.op(nid)
        ins = view.inputs(nid)
        flat = view.rank(v) == 3
        if back is not None and op not in _SCORE_PASS | {"add", "sub", "where", "masked_fill", "mul", "div", "max"}:
            raise Mismatch(f"'{op}' on the scores viewed in another shape")
        if factor is not None and op in ("add", "sub", "where", "masked_fill", "max"):
            raise Mismatch("a mask or bias inside a per-head scale of the scores")
        if op == "matmul":
            a, b = ins[:2]
            if not _scores_product(view, a, b):
                raise Mismatch("the softmax input is a product with constant keys (a lookup, not q·kᵀ)")
            if back is not None:
                raise Mismatch("q·kᵀ inside a view of the scores")
            return _Scores(nid, gain, cap, terms, nodes, heads, factor, factor_flat, extra, sink, clamp, second)
        nodes.append(nid)
        if op in _SCORE_PASS:
            if op == "reshape" and view.rank(ins[0]) == 3 and view.rank(v) == 4:
                heads = (view.shape(v) or (None, None))[1]
            if op == "reshape":
                back, start = _viewed(view, nid, ins[0], v, back, terms, start)
            v = ins[0]
        elif op in ("mul", "div"):
            found = _scalar_operand(view, nid)
            if found is None and op == "mul" and factor is None and back is None:
                found = _head_factor(view, nid, v)
                if found is not None:
                    (v, factor), factor_flat = found, flat
                    continue
            if found is None:
                raise Mismatch(f"the scores are multiplied by a tensor ({op}), not by a scalar scale")
            x, c = found
            if c == 0:
                raise Mismatch("the scores are scaled by zero")
            gain *= c if op == "mul" else 1.0 / c
            v = x
        elif op == "concat":
            # [scores, sink logits] along the keys: GPT-OSS adds a learned logit a head to every row's softmax
            # and drops its column afterwards (_walk_down passes that slice).
            rank = view.rank(v)
            if extra or back is not None or cap is not None or terms or rank is None \
                    or view.attrs(nid).get("axis") % rank != rank - 1:
                raise Mismatch("a concat between the scores and the softmax that is not sink logits after them")
            if not _reaches_matmul(view, ins[0]) or any(_reaches_matmul(view, x) for x in ins[1:]):
                raise Mismatch("a concat of scores between the scores and the softmax")
            # the sink enters the softmax as it is: only a gain of 1 so far leaves it unscaled
            extra, v = True, ins[0]
            sink = ins[1] if len(ins) == 2 and gain == 1.0 else None
        elif op == "sub" and (row_max := _row_max_of(view, ins[1], ins[0])) is not None:
            # x − max(x) over the last axis: a softmax does not see it (the overflow guard GPT-OSS writes out)
            nodes += row_max
            v = ins[0]
        elif op in ("add", "sub"):
            a, b = ins[:2]
            on_a, on_b = _reaches_matmul(view, a), _reaches_matmul(view, b)
            product = on_a and on_b and op == "add"
            if product and (second is not None or back is not None):
                raise Mismatch("the scores add more than two q·kᵀ products, or add one inside a view of them")
            if on_a == on_b and not product:
                why = "both operands come from q·kᵀ products" if on_a else "neither operand is the scores"
                raise Mismatch(f"an add between the scores and the softmax where {why}")
            scores, term = (a, b) if on_a else (b, a)
            if op == "sub" and not on_a:
                raise Mismatch("the scores are subtracted from a term (negated scores)")
            if cap is not None:
                raise Mismatch("a term is added inside the tanh softcap")
            if product:  # the first operand is taken as the scores, the other as a product of its own
                second, v = _Term(term, MASK_ADDITIVE, gain, flat), scores
                continue
            blend = _blended_mask(view, scores, term) if op == "add" and gain > 0 else None
            if blend is not None:  # s·b + fill·(1 − b): a masked_fill written as a blend (GPT-1)
                s_in, keep, fill = blend
                terms.append(_Term(keep, MASK_NONZERO_KEEP, flat=flat, fill=max(fill * gain, clamp or -np.inf)))
                nodes.append(scores.node)
                v = s_in
                continue
            m, f = _strip_term_scale(view, term)
            sign = -1.0 if op == "sub" else 1.0
            terms.append(_Term(m, MASK_ADDITIVE, sign * gain * f, flat))
            v = scores
        elif op in ("where", "masked_fill"):
            if cap is not None:
                raise Mismatch("a mask is applied inside the tanh softcap")
            if gain <= 0:
                raise Mismatch("a mask fill under a negative scale")
            if op == "where":
                cond, x, y = ins[:3]
                if _is_neg_fill(view, y):  # where(keep, scores, -inf)
                    terms.append(_Term(cond, MASK_BOOLEAN, flat=flat, fill=_fill(view, y, gain, clamp)))
                    v = x
                elif _is_neg_fill(view, x):  # where(blocked, -inf, scores)
                    terms.append(_Term(cond, MASK_BOOLEAN_BLOCKED, flat=flat, fill=_fill(view, x, gain, clamp)))
                    v = y
                else:
                    raise Mismatch("a where between the scores and the softmax that is not a -inf mask")
            else:
                x, cond, fill = ins[:3]
                if not _is_neg_fill(view, fill):
                    raise Mismatch("a masked_fill of the scores with a value that is not -inf")
                terms.append(_Term(cond, MASK_BOOLEAN_BLOCKED, flat=flat, fill=_fill(view, fill, gain, clamp)))
                v = x
        elif op == "max":
            # max(x, c) at a constant no real score reaches: XGLM's guard that keeps a sum of two finfo.min
            # masks finite. It changes only blocked entries, so the walk passes it; a -inf fill below it
            # becomes c, as the softmax sees it (a fully blocked row stays uniform, not empty).
            if cap is not None:
                raise Mismatch("the scores are clamped inside the tanh softcap")
            floor = _clamp_floor(view, nid, gain)
            if floor is None:
                raise Mismatch("the scores are clamped by a tensor or at a value real scores reach")
            clamp = floor if clamp is None else max(clamp, floor)
            v = next(x for x in ins[:2] if view.const(x) is None)
        elif op == "tanh":
            # x = c·tanh(w): softcapping with cap c (Gemma-2); the scores below are s' = c·w.
            if cap is not None:
                raise Mismatch("two tanh between the scores and the softmax")
            if factor is not None:
                raise Mismatch("a per-head scale outside the tanh softcap")
            if gain <= 0:
                raise Mismatch("tanh softcapping with a negative cap")
            cap = gain
            v = ins[0]
        else:
            raise Mismatch(f"'{op}' between the scores and the softmax")
    raise Mismatch("too many ops between the scores and the softmax")


def _row_max_of(view: View, m: ValueRef | None, x: ValueRef | None) -> list[str] | None:
    """The nodes of ``m`` = max(x) over x's last axis, kept as an axis of 1 (a torch max.dim's values, or a
    ReduceMax), or None. Read from the shapes: the same rank, every axis but the last as x's."""
    if m is None or x is None:
        return None
    nodes, nid = [], m.node
    if plain_op_name(view.op(nid)) in ("getitem", "getattr"):  # max.dim's values: [0] (export), .values (fx)
        nodes.append(nid)
        nid = view.input(nid, 0).node if view.input(nid, 0) is not None else None
    if nid is None or not _reduces(view, nid) or plain_op_name(view.op(nid)) not in ("ReduceMax", "amax", "max") \
            or view.input(nid, 0) != x:
        return None
    ms, xs = view.shape(m), view.shape(x)
    if ms is None or xs is None or len(ms) != len(xs) or ms[-1] != 1 \
            or not all(_same_dim(a, b) for a, b in zip(ms[:-1], xs[:-1])):
        return None
    return nodes + [nid]


class _Down(NamedTuple):
    """One way from the softmax down to a value product: the product's node, the nodes passed, whether a reshape
    folded the probabilities to rank 3, whether they also leave the site, the where(c, 0, p) conditions passed
    (DeBERTa's XSoftmax zeroes its masked entries)."""

    matmul: str
    nodes: list
    flattened: bool
    escapes: bool
    zeroed: list
    sliced: bool = False  # a slice of the probabilities passed on the way (dropping _Scores.extra_columns)


def _walk_down(view: View, p: ValueRef, depth: int = 16) -> list[_Down] | None:
    """softmax output -> every value product it reaches, or None where it reaches none or goes elsewhere.

    Usually one. Several when the graph computes the probabilities once for several values: DiffLlama attends
    twice with the same q and k, and the exporter's common-subexpression pass merges the two softmaxes. Each
    product is then a site of its own."""
    nodes, zeroed = [], []
    for step in range(depth):
        # A reader of the shape alone (a dropout's rand_like(p)) dies with the site once its consumers do.
        users = [(u, port) for u, port in view.users(p) if not reads_shape_only(view, u)]
        ops = sorted(view.op(u) for u, _ in users)
        if ops in (["where"], ["masked_fill"]):
            cond, x, y = (view.inputs(users[0][0]) + [None] * 3)[:3]
            if ops == ["masked_fill"]:  # masked_fill(p, cond, 0) = where(cond, 0, p)
                y, cond, x = cond, x, y
            if cond is None or y != p or not _is_zero(view, x):
                return None
            nodes.append(users[0][0])
            p = ValueRef(users[0][0], 0)
            if _drawn_at_random(view, cond):
                # Dropout exported in training mode, written out (SEW-D's XDropout): the rewrite leaves it out,
                # as it leaves out an ONNX Dropout, and its 1/(1 − p) scale with it (validate names the random ops)
                after = view.users(p)
                if len(after) == 1 and view.op(after[0][0]) == "mul" and _scalar_operand(view, after[0][0]):
                    nodes.append(after[0][0])
                    p = ValueRef(after[0][0], 0)
                continue
            zeroed.append(cond)
            continue
        if ops == ["isnan", "where"]:
            # where(isnan(p), 0, p): torch's SDPA decomposition guards fully masked rows.
            where = next(u for u, _ in users if view.op(u) == "where")
            isnan = next(u for u, _ in users if view.op(u) == "isnan")
            cond, x, y = view.inputs(where)[:3]
            if cond is None or cond.node != isnan or y != p or not _is_zero(view, x):
                return None
            nodes += [isnan, where]
            p = ValueRef(where, 0)
            continue
        branches = [_step_down(view, u, port, depth - step - 1) for u, port in users]
        onward = [b for b in branches if b and (len(users) == 1 or not any(d.escapes for d in b))]
        if not onward:
            return None
        # Anything else that reads the probabilities (need_weights=True) makes every product's site
        # unrewritable: its dense probabilities must stay.
        escapes = len(onward) < len(users)
        return [_Down(d.matmul, nodes + d.nodes, d.flattened, escapes or d.escapes, zeroed + d.zeroed, d.sliced)
                for b in onward for d in b]
    return None


def _step_down(view: View, user: str, port: int, depth: int) -> list[_Down] | None:
    """The value products reached through one reader of the probabilities (a step of ``_walk_down``): the value
    matmul itself, or an op the probabilities pass unchanged (a reshape may fold them to rank 3)."""
    op = view.op(user)
    if op == "matmul":
        return [_Down(user, [], False, False, [])] if port == 0 else None
    if plain_op_name(op) == "getitem" and view.rank(ValueRef(user, 0)) == view.rank(view.input(user, port)) is not None:
        op = "slice"  # p[..., :-1] as symbolic_trace records it (an index would drop an axis)
    if depth <= 0 or op not in TRANSPARENT | {"dropout", "expand", "reshape", "slice"}:
        return None
    found = _walk_down(view, ValueRef(user, 0), depth)
    if found is None:
        return None
    flat = op == "reshape" and view.rank(ValueRef(user, 0)) == 3
    return [_Down(d.matmul, [user] + d.nodes, flat or d.flattened, d.escapes, d.zeroed, d.sliced or op == "slice")
            for d in found]


def _drawn_at_random(view: View, v: ValueRef, depth: int = 8) -> bool:
    """Whether ``v`` comes from random numbers within ``depth`` ops (a dropout's keep mask)."""
    seen, frontier = set(), [v.node]
    for _ in range(depth):
        ahead = []
        for nid in frontier:
            if nid in seen:
                continue
            seen.add(nid)
            if draws_random(view, nid):
                return True
            ahead += [x.node for x in view.inputs(nid) if x is not None]
        frontier = ahead
    return False


def _zero_blocked_rows(view: View, cond: ValueRef, terms: list, scores: ValueRef) -> None:
    """where(cond, 0, p) after the softmax (DeBERTa's XSoftmax): exact when cond is the blocked set of a mask
    term. Entries it blocks are 0 already; it zeroes the rows it blocks whole, where a finite fill had left
    them uniform: the term's fill becomes −inf, whose empty rows the ops answer with 0. A condition that is a
    constant False changes nothing, and neither does torch's safe softmax (``_rows_without_a_score``)."""
    c = view.const(cond)
    if (c is not None and not np.any(c)) or _rows_without_a_score(view, cond, scores):
        return
    for t in terms:
        blocked = t.value if t.kind == MASK_BOOLEAN_BLOCKED else None
        if t.kind == MASK_BOOLEAN and view.op(cond.node) == "not" and view.input(cond.node, 0) == t.value:
            blocked = cond
        if same_value(view, blocked, cond):
            t.fill = float("-inf")
            return
    raise Mismatch("the probabilities are zeroed where the scores are not masked")


def _rows_without_a_score(view: View, cond: ValueRef, scores: ValueRef) -> bool:
    """Whether cond is not(any(not(scores == −inf), axis=−1)): the rows of the softmax's own input with every
    score −inf, which torch's safe softmax (SDPA's decomposition since torch 2.5, ``run_decompositions``)
    zeroes. Those are the rows with no allowed key, which the ops answer with 0 already."""
    chain = [cond]
    for op in ("not", "any", "not", "eq"):  # cond, then each op's first input in turn
        nid = chain[-1].node
        if plain_op_name(view.op(nid)) != op or not view.inputs(nid):
            return False
        chain.append(view.input(nid, 0))
    anyone, eq = chain[1].node, chain[3].node
    rank = view.rank(scores)
    last = {-1} if rank is None else {-1, rank - 1}
    return (chain[4] == scores and view.scalar(view.input(eq, 1)) == float("-inf")
            and len(view.inputs(anyone)) > 1 and view.scalar(view.input(anyone, 1)) in last)


# --------------------------------------------------------------------------- decomposed

def _match_decomposed(view: View, sm: str) -> list[AttentionSite]:
    x = view.input(sm, 0)
    if x is None:
        raise Mismatch("softmax without an input")
    rank = view.rank(x)
    axis = view.attrs(sm).get("axis", -1)
    if rank is not None:
        if rank < 3:
            raise Mismatch(f"softmax over a rank-{rank} tensor (attention scores have rank 3 or 4)")
        if axis % rank != rank - 1:
            raise Mismatch("softmax not over the last axis")
    elif axis != -1:
        raise Mismatch("softmax not over the last axis")

    down = _walk_down(view, ValueRef(sm, 0))
    if not down:
        raise Mismatch("the probabilities do not go on to a matmul with the values")
    return [_match_product(view, sm, x, d) for d in down]


def _match_product(view: View, sm: str, x: ValueRef, down: _Down) -> AttentionSite:
    """The site of one value product of softmax ``sm`` (over scores ``x``)."""
    mm2, down_nodes, flattened, escapes, zeroed, sliced = down
    value = view.input(mm2, 1)
    if not _dynamic(view, value):
        raise Mismatch("the probabilities multiply a constant (a soft lookup, not attention)")
    up = _walk_up(view, x)
    if sliced != up.extra_columns:
        raise Mismatch("the probabilities are sliced before the value product" if sliced else
                       "the softmax spans columns besides the scores that the value product reads")
    for cond in zeroed:
        _zero_blocked_rows(view, cond, up.terms, x)
    q, kt = view.inputs(up.matmul)[:2]

    removed = [sm, mm2, up.matmul] + up.nodes + down_nodes
    q, q_scale, qs = _strip_scale(view, q)
    kt, k_scale, ks = _strip_scale(view, kt)
    removed += qs + ks
    # q4: the query with its heads on their own axis, as far as the graph has it (folded
    # (B·H, N, D) and GQA-packed queries unfolded); geometry is read from it.
    q4, qn = _unflatten_up(view, q)
    q4, q4_scale, qs4 = _strip_scale(view, q4) if q4 != q else (q4, 1.0, [])
    q4, packed = _unpack_gqa_query(view, q4)
    unprovable = None if packed else _packed_query_of_unknown_length(view, q4)
    # A term added to (B·H, N, M) scores is read with the query's folded layout, so the
    # query then stays folded; key and value unfold whenever they can (their own layout).
    if not any(t.flat for t in up.terms) and not up.factor_flat:
        q, q_scale = q4, q_scale * q4_scale
        removed += qn + qs4 + packed
    else:
        packed = []
    if packed and up.factor is not None:
        raise Mismatch("a per-head scale of GQA-packed scores")
    key, key_layout, k_scale2, kn = _read_key(view, kt)
    k_scale *= k_scale2
    removed += kn
    key, gk = _strip_gqa(view, key) if key_layout == LAYOUT_BHSD else (key, [])
    value, vn = _unflatten_up(view, value)
    value, gv = _strip_gqa(view, value)
    # k and v must reach the op with one head count: where one side's GQA repeat was read and the other's not
    # (a repeat_interleave), the read side is taken as repeated too
    k_heads, v_heads = _heads(view, key, key_layout), _heads(view, value, LAYOUT_BHSD)
    if None not in (k_heads, v_heads) and k_heads != v_heads:
        if gv and not gk:
            value, gv = ValueRef(gv[0], 0), []
        elif gk and not gv:
            key, gk = ValueRef(gk[0], 0), []
        if _heads(view, key, key_layout) != _heads(view, value, LAYOUT_BHSD):
            raise Mismatch(f"keys with {k_heads} heads and values with {v_heads}")
    removed += gk + gv + vn

    layout = LAYOUT_FLAT if view.rank(q) == 3 or (view.rank(q) is None and view.rank(value) == 3) else LAYOUT_BHSD
    value_layout = LAYOUT_FLAT if view.rank(value) == 3 else LAYOUT_BHSD
    output, output_layout, on, shape_readers = _site_output(view, ValueRef(mm2, 0), flattened,
                                                            q4 if packed else None,
                                                            ValueRef(packed[0], 0) if packed else None)
    removed += on
    if packed:
        _check_packed_terms(view, up.terms, q4, ValueRef(packed[0], 0))

    geometry = _geometry(view, q4, key, key_layout, value, up, output)
    if layout == LAYOUT_FLAT and not isinstance(geometry["num_heads"], int):
        geometry["num_heads"] = _heads_from_split(view, q, geometry["head_dim"]) or geometry["num_heads"]
    if key_layout in (LAYOUT_FLAT, "(bh)ds") or value_layout == LAYOUT_FLAT:
        # A key/value still folded with the query's heads (GQA repeated before the fold).
        geometry["kv_num_heads"] = geometry["num_heads"]

    # An einsum in permuted layouts (Funnel's 'bind,bjnd->bnij') is a matmul between View-only
    # transposes: the site names the values the source graph holds, in their own layouts.
    q, layout, passed = _before_view_only(view, q, layout)
    if passed:
        q, q_scale2, qs2 = _strip_scale(view, q)
        q_scale *= q_scale2
        removed += passed + qs2
    value, value_layout, passed = _before_view_only(view, value, value_layout)
    output, output_layout, on = _after_view_only(view, output, output_layout)
    removed += passed + on
    if any(view.view_only(v.node) for v in (q, key, value, output)):
        raise Mismatch("q, k, v or the output exist only inside an einsum the graph does not split")
    layout, value_layout, output_layout = (with_extra_axes(lay, view.rank(t)) for lay, t in (
        (layout, q), (value_layout, value), (output_layout, output)))
    unprovable = unprovable or _extra_axes(view, ((q, layout), (key, key_layout), (value, value_layout),
                                                  (output, output_layout)), geometry["num_heads"],
                                           geometry["kv_num_heads"], up.terms, up.factor)
    parts, q_head_dim = (), geometry["head_dim"]
    if up.second_product is not None:
        try:
            parts = (_score_part(view, up.second_product, geometry, up.factor),)
        except Mismatch as e:
            unprovable = unprovable or f"its scores add a second q·kᵀ product that is not served: {e}"
        if parts and None not in (geometry["head_dim"], parts[0].head_dim):
            geometry["head_dim"] += parts[0].head_dim  # the op's q and k: the parts' columns concatenated
        elif parts:
            geometry["head_dim"] = None
    sink_logits = _per_head_sink(view, up.sink, geometry["num_heads"]) if up.extra_columns else None
    if up.extra_columns and sink_logits is None:
        unprovable = unprovable or ("its softmax also spans columns after the keys that are not one learned "
                                    "logit a head (GPT-OSS's sinks are); no op takes them")
    geometry["value_head_dim"] = _other_head_dim(_dim_of(view.shape(value), value_layout, "d"), geometry["head_dim"])

    scale = _clean(up.scale * q_scale * k_scale, geometry["head_dim"] if not parts else q_head_dim)
    terms, causal_term = _classify_masks(view, reversed(up.terms))  # graph order: innermost add first
    return AttentionSite(
        name="", form="decomposed", query=q, key=key, value=value, output=output,
        query_layout=layout, key_layout=key_layout, value_layout=value_layout, output_layout=output_layout,
        scale=scale, softcap=up.softcap, query_factor=up.factor, score_parts=parts,
        masks=tuple(_mask_term(t) for t in terms), causal=causal_term is not None, score_floor=up.clamp,
        causal_term=None if causal_term is None else (causal_term[0], _mask_term(causal_term[1])),
        nodes=tuple(dict.fromkeys(removed)), anchor=sm, shape_readers=shape_readers, sink_logits=sink_logits,
        unsupported=("the attention probabilities are also used outside the site" if escapes else unprovable),
        **geometry,
    )


def _read_key(view: View, kt: ValueRef) -> tuple[ValueRef, str, float, list[str]]:
    """The second operand of q·kᵀ -> (k, k's layout, the scale on it, nodes passed). Folded heads are unfolded
    where the graph has them on their own axis; a GQA repeat is left to the caller."""
    kt, scale, passed = _strip_scale(view, kt)
    kt, kn = _unflatten_up(view, kt)
    key, key_layout, tn = _strip_transpose(view, kt)
    key, scale2, ks2 = _strip_scale(view, key)  # (k·c)ᵀ: the scale may sit before the transpose
    if ks2 and not tn:  # or after it, kᵀ·c: torch's SDPA decomposition scales q and kᵀ by √scale each
        key, key_layout, tn = _strip_transpose(view, key)
    passed += kn + tn + ks2
    if key_layout in (LAYOUT_FLAT, "(bh)ds"):
        k4, kn2 = _unflatten_up(view, key)
        if k4 != key:
            key, key_layout = k4, (LAYOUT_BHSD if key_layout == LAYOUT_FLAT else LAYOUT_BHDS)
            passed += kn2
    if view.rank(key) == 3 and key_layout == LAYOUT_BHDS:
        key_layout = "(bh)ds"
    return key, key_layout, scale * scale2, passed


def _score_part(view: View, term: _Term, geometry: dict, factor) -> ScorePart:
    """The second q·kᵀ product a site's scores add (_Scores.second_product) as a ScorePart.

    Σ σᵢ·qᵢ·kᵢᵀ = σ·[q₁, (σ₂/σ)·q₂]·[k₁, k₂]ᵀ, so the op serves the sum through q and k concatenated along the
    head dim, where both products have the same heads and lengths. Raises Mismatch where it cannot be read so.
    """
    if factor is not None or term.view is not None:
        raise Mismatch("it sits under a per-head scale or inside a view of the scores")
    up = _walk_up(view, term.value)
    if up.terms or up.softcap is not None or up.factor is not None or up.extra_columns or up.clamp is not None:
        raise Mismatch("that product carries masks, a cap or a per-head scale of its own")
    q, kt = view.inputs(up.matmul)[:2]
    q, q_scale, _ = _strip_scale(view, q)
    q, _ = _unflatten_up(view, q)
    q, q_scale2, _ = _strip_scale(view, q)
    key, key_layout, k_scale, _ = _read_key(view, kt)
    if view.rank(q) not in (3, 4) or (view.rank(q) == 3) != (view.rank(key) == 3) \
            or not (permutes_bhsd(key_layout) or key_layout in (LAYOUT_FLAT, "(bh)ds")):
        raise Mismatch("its q and k are not laid out (B, H, N, D) or (B·H, N, D)")
    layout = LAYOUT_FLAT if view.rank(q) == 3 else LAYOUT_BHSD
    for heads, got in ((geometry["num_heads"], _heads(view, q, layout)),
                       (geometry["kv_num_heads"], _heads(view, key, key_layout))):
        if got is not None and not _same_dim(got, heads):
            raise Mismatch(f"its heads ({got}) are not the site's ({heads})")
    # the add proves the lengths equal, or one of them 1 and broadcast: a concat needs them equal
    for part, site in ((_dim_of(view.shape(q), layout, "s"), geometry["q_len"]),
                       (_dim_of(view.shape(key), key_layout, "s"), geometry["kv_len"])):
        if (part == 1 and site != 1) or (isinstance(part, int) and isinstance(site, int) and part != site):
            raise Mismatch(f"its length {part} is broadcast over the site's {site}")
    head_dim = _first_int(_dim(view.shape(q), -1), _dim_of(view.shape(key), key_layout, "d"))
    scale = _clean(term.factor * up.scale * q_scale * q_scale2 * k_scale, head_dim)
    return ScorePart(q, key, layout, key_layout, head_dim, scale)


def _mask_term(t) -> MaskTerm:
    return MaskTerm(t.value, t.kind, t.factor, t.fill, t.view)


def _per_head_sink(view: View, sink: ValueRef | None, heads) -> ValueRef | None:
    """The value behind a sink column that holds one logit a head, or None.

    GPT-OSS writes ``sinks.reshape(1, -1, 1, 1).expand(B, -1, N, -1)``. Past the expands (and casts), a
    (1, H, 1, 1) value holds one logit a head, the same for every batch and query; so does a (B, H, N, 1)
    constant (an exporter folded the expand at fixed sizes) whose values repeat along the batch and the
    queries. The rewrite then reads it at batch 0 and query 0 as an (H,) vector. Anything else (a column that
    varies per query, a (B·H, N, 1) layout) is not proven.
    """
    if sink is None:
        return None
    sink = _skip_up(view, sink, ("expand", "cast"))
    shape = view.shape(sink)
    if shape is None or len(shape) != 4 or shape[3] != 1:
        return None
    if isinstance(shape[1], int) and isinstance(heads, int) and shape[1] != heads:
        return None
    if shape[0] != 1 or shape[2] != 1:
        c = view.const(sink)
        if c is None or c.ndim != 4 or not np.array_equal(c, np.broadcast_to(c[:1, :, :1], c.shape)):
            return None
    return sink


def _site_output(view: View, out: ValueRef, flattened: bool, packed: ValueRef | None,
                 packed_query: ValueRef | None = None) -> tuple[ValueRef, str, list[str], tuple]:
    """The value matmul's result, or the reshape right after it that unfolds a (B·H, N, D) or GQA-packed
    product back to (B, H, N, D) -> (output, its layout, nodes passed, shape readers to re-point).
    ``packed``: the unpacked query, and ``packed_query`` the packed one, when the query was GQA-packed."""
    shape = view.shape(out)
    if flattened or view.rank(out) == 3 or packed is not None:
        users = view.users(out)
        # Shape readers of a GQA-packed product (transformers takes the batch from it) are re-pointed at
        # the packed query, of the same shape when the query and value head dims agree. Any other second
        # reader still counts: the rewrite removes the product, and a reader left on it would keep the
        # whole dense attention computing (BLOOM's TorchScript export did, before this was checked).
        readers = ()
        q_shape = view.shape(packed_query)
        if len(users) > 1 and q_shape is not None and shape is not None and len(q_shape) == len(shape) == 4 \
                and _same_dim(q_shape[3], shape[3]):
            readers = tuple((nid, out, packed_query) for nid, _ in users if view.op(nid) in SHAPE_ONLY_OPS)
            users = [u for u in users if view.op(u[0]) not in SHAPE_ONLY_OPS]
        u = users[0] if len(users) == 1 else None
        if u is not None and view.op(u[0]) == "reshape":
            back = ValueRef(u[0], 0)
            s4 = view.shape(back)
            if s4 is not None and len(s4) == 4 and (shape is None or _compatible(s4[-1], shape[-1])) \
                    and (packed is None or _unpacks(view.shape(packed), s4)):
                return back, LAYOUT_BHSD, [u[0]], readers
        if packed is not None:
            raise Mismatch("GQA-packed queries whose output is not unpacked back to (B, H, N, D)")
    return out, (LAYOUT_FLAT if view.rank(out) == 3 else LAYOUT_BHSD), [], ()


def _before_view_only(view: View, v: ValueRef, layout: str) -> tuple[ValueRef, str, list[str]]:
    """v in ``layout`` made by a View-only 4-D transpose -> (its input, that input's layout, [transpose])."""
    perm = view.attrs(v.node).get("perm") if view.op(v.node) == "transpose" else None
    if not view.view_only(v.node) or layout != LAYOUT_BHSD or perm is None or len(perm) != 4:
        return v, layout, []
    before = [""] * 4
    for axis, p in enumerate(perm):
        before[p] = layout[axis]
    return view.input(v.node, 0), "".join(before), [v.node]


def _after_view_only(view: View, out: ValueRef, layout: str) -> tuple[ValueRef, str, list[str]]:
    """A View-only value product -> (the transpose after it, which is the einsum's own node; its layout)."""
    user = view.only_user(out)
    if not view.view_only(out.node) or layout != LAYOUT_BHSD or user is None or view.op(user[0]) != "transpose":
        return out, layout, []
    perm = view.attrs(user[0]).get("perm")
    if perm is None or len(perm) != 4:
        return out, layout, []
    return ValueRef(user[0], 0), "".join(layout[p] for p in perm), [user[0]]


def _unpacks(q, o) -> bool:
    """Whether a reshape of the packed product (B, Hkv, P, D) to ``o`` undoes the packing of the query
    ``q`` = (B, H, N, D): B and D kept, and H or N kept (the element count fixes the other)."""
    if q is None or len(q) != 4:
        return False
    if all(isinstance(d, int) for d in tuple(q) + tuple(o)):
        return tuple(q) == tuple(o)
    return _same_dim(q[0], o[0]) and _same_dim(q[3], o[3]) and (_same_dim(q[1], o[1]) or _same_dim(q[2], o[2]))


def _check_packed_terms(view: View, terms, query: ValueRef, packed: ValueRef) -> None:
    """Packed queries mix heads and positions on one axis: only terms shared by both are exact.

    A term is added to the packed scores (B, Hkv, P, M) and the rewrite reads it against (B, H, N, M).
    The readings agree when the term has extent 1 on the heads and query axes; or when its query axis is
    the query's own length N (P = r·N being another dim): adding it to P packed rows needs N = P, which
    P = r·N excludes, or N = 1, and then the term is one row in both readings. Dims are read from the
    dataflow where the View's shapes have lost them (see _derived_shape).
    """
    n, p = _dim(view.shape(query), 2), _dim(view.shape(packed), 2)
    for t in terms:
        s = _derived_shape(view, t.value)
        if s is None:
            raise Mismatch("a mask of unknown shape on GQA-packed queries")
        s = (1,) * (4 - len(s)) + tuple(s) if len(s) < 4 else tuple(s)
        one_row = s[-2] == 1 or (_same_dim(s[-2], n) and not _same_dim(n, p))
        if s[-3] != 1 or not one_row:
            raise Mismatch("a per-head or per-query mask on GQA-packed queries")


# Ops whose output is the numpy broadcast of their operands' shapes, besides _BROADCASTING (comparisons and
# logic that mask constructions use; the View keeps them as "other:<op>").
_BROADCASTING_OTHER = frozenset({"other:And", "other:Or", "other:Xor", "other:Equal", "other:Less",
                                 "other:LessOrEqual", "other:Greater", "other:GreaterOrEqual"})


def _derived_shape(view: View, v: ValueRef, depth: int = 32, memo: dict | None = None):
    """v's shape as its construction makes it, dim by dim; the View's shape where that says nothing.

    Follows broadcasting ops, casts, unsqueeze, expand (to a target folded by _folded_dims) and
    range(0, L, 1) (L long): what mask constructions are built from, and where shape inference leaves
    fresh symbols (unk__) that hide how a mask's axes relate to the query's.
    """
    memo = {} if memo is None else memo
    if v not in memo:
        memo[v] = _derive_shape(view, v, depth, memo)
    return memo[v]


def _derive_shape(view: View, v: ValueRef, depth: int, memo: dict):
    have = view.shape(v)
    if depth <= 0:
        return have
    op, ins = view.op(v.node), view.inputs(v.node)
    derived = None
    if op in TRANSPARENT or op in _BROADCASTING or op in _BROADCASTING_OTHER:
        operands = [x for x in ins if x is not None]
        derived = broadcast_dims([_derived_shape(view, x, depth - 1, memo) for x in operands]) \
            if operands else None
    elif op == "unsqueeze" and ins and ins[0] is not None:
        src, axes = _derived_shape(view, ins[0], depth - 1, memo), view.attrs(v.node).get("axes")
        if axes is None and len(ins) > 1 and ins[1] is not None:
            axes = view.const(ins[1])
        if src is not None and axes is not None:
            out = list(src)
            rank = len(src) + np.size(axes)
            for a in sorted(int(x) % rank for x in np.ravel(axes)):
                out.insert(a, 1)
            derived = tuple(out)
    elif op == "expand" and len(ins) > 1 and ins[0] is not None and ins[1] is not None:
        target, src = _folded_dims(view, ins[1]), _derived_shape(view, ins[0], depth - 1, memo)
        if target is not None and src is not None and len(target) >= len(src):
            # torch's expand(-1) keeps the dim (a negative size is no ONNX Expand target)
            src = (1,) * (len(target) - len(src)) + tuple(src)
            target = [s if isinstance(d, int) and d < 0 else d for s, d in zip(src, target)]
            derived = broadcast_dims([src, tuple(target)])
    elif op == "other:Range" and len(ins) == 3:
        start, limit, delta = (view.const(x) if x is not None else None for x in ins)
        if start is not None and delta is not None and limit is not None and np.size(limit) == 1 \
                and view.scalar(ins[0]) == 0 and view.scalar(ins[2]) == 1:
            length = np.ravel(limit)[0]
            if isinstance(length, str) or isinstance(length, (int, np.integer)):
                derived = (length if isinstance(length, str) else int(length),)
    if derived is None:
        return have
    if have is None or len(have) != len(derived):
        return derived
    # A size the View knows stands; a 1 or a symbol gives way to what the construction shows.
    return tuple(h if d is None or (isinstance(h, int) and h != 1) else d for h, d in zip(have, derived))


def _folded_dims(view: View, v: ValueRef, depth: int = 8) -> list | None:
    """A 1-D shape vector as dims (ints, symbols, None): the View's folded constant, or torch's
    expand target where(size == -1, 1, size) folded here (sizes are never negative)."""
    c = view.const(v)
    if c is not None:
        return [x if isinstance(x, str) or x is None else int(x) for x in np.ravel(c)] if np.ndim(c) == 1 else None
    if depth <= 0:
        return None
    op, ins = view.op(v.node), view.inputs(v.node)
    if op in TRANSPARENT or (op == "reshape" and view.rank(v) == 1):
        return _folded_dims(view, ins[0], depth - 1) if ins and ins[0] is not None else None
    if op == "where" and len(ins) == 3 and None not in ins and view.op(ins[0].node) == "other:Equal":
        eq = view.inputs(ins[0].node)
        a, b, x, y = (_folded_dims(view, u, depth - 1) if u is not None else None
                      for u in (eq[0], eq[1], ins[1], ins[2]))
        if None in (a, b, x, y) or not len(a) == len(b) == len(x) == len(y):
            return None
        out = []
        for ai, bi, xi, yi in zip(a, b, x, y):
            if isinstance(ai, int) and isinstance(bi, int):
                out.append(xi if ai == bi else yi)
            elif isinstance(ai, str) and isinstance(bi, int) and bi < 0 or \
                    isinstance(bi, str) and isinstance(ai, int) and ai < 0:
                out.append(yi)  # a size is never negative
            else:
                out.append(None)
        return out
    return None


# --------------------------------------------------------------------------- geometry

def _geometry(view: View, q4: ValueRef, key: ValueRef, key_layout: str, value: ValueRef, up: _Scores,
              output: ValueRef) -> dict:
    """Heads, kv heads, head dim and lengths from the unfolded tensors and the reshape constants.

    Folded dims (B·H, or H/Hkv·N of a packed query) never count: q4 is the query
    with its heads on their own axis where the graph has it that way.
    """
    qs, ks = view.shape(q4), view.shape(key)
    q_layout = with_extra_axes(LAYOUT_BHSD, len(qs)) if qs is not None and len(qs) >= 4 else LAYOUT_FLAT
    head_dim = _first_int(_dim(qs, -1), _dim_of(ks, key_layout, "d"), _dim(view.shape(value), -1))
    heads = _first_int(_dim_of(qs, q_layout, "h"), up.heads, _dim(view.shape(output), 1)
                       if (view.rank(output) or 0) >= 4 else None)
    kv_heads = _first_int(_dim_of(ks, key_layout, "h"),
                          _dim(view.shape(value), 1) if (view.rank(value) or 0) >= 4 else None)
    return dict(
        num_heads=_first_known(heads, _dim_of(qs, q_layout, "h")),
        kv_num_heads=_first_known(kv_heads, _dim_of(ks, key_layout, "h"), heads),
        head_dim=_first_known(head_dim, _dim(qs, -1)),
        q_len=_dim_of(qs, q_layout, "s"),
        kv_len=_dim_of(ks, key_layout, "s"),
    )


def _extra_axes(view: View, layouts: tuple[tuple[ValueRef, str], ...], heads, kv_heads, terms,
                factor) -> str | None:
    """Why a site batched over extra axes (site.EXTRA_AXIS: Hiera's mask units, (B, H, units, N, D)) cannot
    be folded into (B, H·units, N, D), or None. ``layouts``: (q, k, v, output), each with its layout. The fold
    is exact when all four carry the same extra axes right after the heads and every query head reads its own
    key head (the ops' GQA pairs folded heads by index, which would cross units); a term added to the scores
    then folds the same way."""
    counts = {extra_axis_count(layout) for _, layout in layouts}
    ranks = [view.rank(v) for v, _ in layouts]
    if counts == {0} and not any((r or 0) > 4 for r in ranks):
        return None
    if len(counts) != 1 or None in ranks:
        return (f"its q, k, v and output have {'/'.join(map(str, ranks))} axes; extra "
                "batching axes fold into the heads only where all four carry them after the heads")
    q, others = layouts[0][0], [v for v, _ in layouts[1:]]
    n = counts.pop()
    mid = lambda v: tuple(view.shape(v) or (None,) * (4 + n))[2:2 + n]  # noqa: E731
    if not all(all(_same_dim(a, b) for a, b in zip(mid(q), mid(v))) for v in others):
        return f"its extra batching axes {mid(q)} are not provably the same in q, k, v and the output"
    if not _same_dim(heads, kv_heads):
        return f"grouped-query attention ({heads} query heads, {kv_heads} key heads) over extra batching axes"
    if factor is not None or any(t.view is not None or t.flat for t in terms):
        return "a per-head scale or a term on a view of the scores, over extra batching axes"
    return None


def _other_head_dim(dv, head_dim) -> int | None:
    """The values' head dim where it is known to differ from q's and k's (AttentionSite.value_head_dim)."""
    if isinstance(dv, int) and isinstance(head_dim, int) and dv != head_dim:
        return dv
    return None


def _first_known(*dims):
    return next((d for d in dims if d is not None), None)


def _first_int(*dims):
    return next((d for d in dims if isinstance(d, int)), None)


def _heads_from_split(view: View, v: ValueRef, head_dim) -> int | None:
    """For flat (B*H, N, D) tensors: find the reshape that split E into (.., H, D), E = H*D, or a fused
    projection's E = 3·H·D into (.., 3, H, D) (ViTDet): the heads are the axis before D where the reshape
    shows it, else E / D."""
    if not isinstance(head_dim, int):
        return None
    cur, steps = v, 0
    while steps < 8:  # a decomposed program's bmm adds a reshape, and Hiera's query pooling a max
        nid = cur.node
        if view.op(nid) in ("input", "constant") or not view.inputs(nid):
            return None
        # copies, axes of one and no-op expands are not steps: torch's decompositions write unbind as slice +
        # squeeze, and add a clone and an expand to the shape it has before each bmm
        steps += view.op(nid) not in ("identity", "cast", "squeeze", "unsqueeze") and not _keeps_shape(view, nid)
        if view.op(nid) == "reshape":
            src = view.input(nid, 0)
            e = _dim(view.shape(src), -1)
            if isinstance(e, int) and e != head_dim and e % head_dim == 0:
                out = view.shape(ValueRef(nid, 0))
                if out is not None and len(out) >= 2 and out[-1] == head_dim and isinstance(out[-2], int) \
                        and out[-2] > 0 and e % (out[-2] * head_dim) == 0:
                    return out[-2]
                return e // head_dim
        cur = view.input(nid, 0)
    return None


# --------------------------------------------------------------------------- masks

def _clean(scale: float, head_dim) -> float:
    """Snap away float32 noise: q·√s and k·√s in fp32 multiply to 1/√d only within ~1e-7."""
    for exact in ([1 / math.sqrt(head_dim)] if isinstance(head_dim, int) else []) + [1.0]:
        if abs(scale - exact) <= 1e-6 * exact:
            return exact
    return float(scale)


def _dim(shape, i):
    if shape is None or len(shape) < abs(i) + (0 if i < 0 else 1):
        return None
    return shape[i]


def _classify_masks(view: View, terms):
    """-> (terms left, (how many of them come before it, the term) or None). A constant term that is exactly
    causal becomes the causal flag."""
    causal = None
    kept = []
    for t in terms:
        if causal is None and _is_causal_const(view, t.value, t.kind, t.factor):
            causal = len(kept), t
        else:
            kept.append(t)
    return tuple(kept), causal


def _is_causal_const(view: View, mask: ValueRef, kind: str, factor: float = 1.0) -> bool:
    c = view.const(mask)
    if c is None or np.ndim(c) < 2:
        return False
    c = np.asarray(c)
    n, m = c.shape[-2:]
    if n == 1:  # one row broadcast over every query: an open row is no proof of causality (SEW-D's mask)
        return False
    if kind == MASK_ADDITIVE:
        values = np.asarray(c, dtype=np.float64) * factor
        allowed = values > MASK_FILL_MAX
        if not np.all(values[allowed] == 0):
            return False
    else:
        allowed = c.astype(bool)
        if kind == MASK_BOOLEAN_BLOCKED:
            allowed = ~allowed
    tril = np.tril(np.ones((n, m), dtype=bool), k=m - n)
    flat = allowed.reshape(-1, n, m)
    return bool(np.all(flat == tril))


# --------------------------------------------------------------------------- fused ops

def _match_fused(view: View, nid: str) -> AttentionSite:
    """sdpa/mha nodes: the frontend normalised their attributes (see graph.FUSED_ATTRS).

    Besides ports, a frontend may give per-tensor ``layouts``, ``projections`` (how the op derives
    q, k and v from its inputs, as port-numbered Projection fields: onnxruntime's fused ops) and a
    ``key_padding_port`` (a key mask with its ``key_padding_kind`` and ``key_padding_fill``).
    """
    a = view.attrs(nid)
    ins = view.inputs(nid)

    def port(p):
        return ins[p] if p is not None and p < len(ins) else None

    q, k, v, mask = (port(a.get(name)) for name in ("q_port", "k_port", "v_port", "mask_port"))
    if q is None:
        raise Mismatch("a fused attention op without a query input")
    # One tensor read as q, k and v (onnxruntime's Attention, packed q/k/v): self-attention, whatever
    # the shapes say (contrib ops' outputs have none after ONNX shape inference).
    one_input = k is not None and v is not None and q == k == v
    k = k if k is not None else q
    v = v if v is not None else k
    layout = a.get("layout", LAYOUT_BHSD)
    layouts = a.get("layouts") or (layout,) * 3
    projections = tuple(_projection(spec, port) for spec in (a.get("projections") or (None,) * 3))
    if layout == LAYOUT_BHSD:
        # Exporters repeat kv heads before a fused op that could have taken them as they were.
        k, _ = _strip_gqa(view, k)
        v, _ = _strip_gqa(view, v)
    qs, ks = view.shape(q), view.shape(k)
    if layout == LAYOUT_BHSD:
        heads = a.get("num_heads") or _dim(qs, 1)
        kv_heads = _dim(ks, 1) or a.get("kv_num_heads")
        head_dim = a.get("head_dim") or _dim(qs, -1)
        q_len, kv_len = _dim(qs, 2), _dim(ks, 2)
    else:
        heads = a.get("num_heads")
        kv_heads = a.get("kv_num_heads") or heads
        head_dim = a.get("head_dim")
        # q's width is its tensor's unless a projection reshapes it (a weight, a packed pick).
        q_proj = projections[0]
        same_width = q_proj is None or (q_proj.weight is None and q_proj.pick is None)
        if head_dim is None and isinstance(_dim(qs, -1), int) and heads and same_width:
            head_dim = _dim(qs, -1) // heads
        q_len = _seq_dim(qs, layouts[0], projections[0])
        kv_len = _seq_dim(ks, layouts[1], projections[1])
    mask_kind = a.get("mask_kind")
    if mask is not None and mask_kind is None:
        mask_kind = MASK_BOOLEAN if view.dtype(mask) == "bool" else MASK_ADDITIVE
    key_padding = port(a.get("key_padding_port"))
    if key_padding is not None:
        key_padding = MaskTerm(key_padding, a.get("key_padding_kind", MASK_NONZERO_KEEP),
                               fill=a.get("key_padding_fill", float("-inf")))
    # the op's own output, or the node a frontend names as holding it (FlexAttention's getitem(call, 0))
    output = a.get("output_node", nid)
    return AttentionSite(
        name="", form=a.get("form", view.op(nid)), query=q, key=k, value=v,
        output=ValueRef(output, 0), query_layout=layouts[0], key_layout=layouts[1], value_layout=layouts[2],
        output_layout=a.get("output_layout", layout),
        num_heads=heads, kv_num_heads=kv_heads or heads, head_dim=head_dim, q_len=q_len, kv_len=kv_len,
        value_head_dim=_other_head_dim(_dim(view.shape(v), -1), head_dim) if layout == LAYOUT_BHSD else None,
        scale=_clean(a["scale"], head_dim) if a.get("scale") else None,
        masks=(MaskTerm(mask, mask_kind),) if mask is not None else (), causal=bool(a.get("causal", False)),
        softcap=a.get("softcap"),
        key_padding=key_padding, query_projection=projections[0], key_projection=projections[1],
        value_projection=projections[2], nodes=tuple(dict.fromkeys((nid, output))), anchor=nid,
        unsupported=a.get("unsupported"),
        proven_self_attention=one_input,
    )


def _projection(spec: dict | None, port) -> Projection | None:
    """A frontend's port-numbered projection spec as a Projection of View values."""
    if spec is None:
        return None
    source = port(spec["source"])
    if source is None:
        raise Mismatch("a fused attention op without the input its q, k or v is projected from")
    return Projection(source=source, weight=port(spec.get("weight")), bias=port(spec.get("bias")),
                      start=spec.get("start", 0), stop=spec.get("stop"), pick=spec.get("pick"))


def _seq_dim(shape, layout: str, projection: Projection | None):
    """The sequence length of a fused op's q (or k) in ``layout``, read from the tensor it is taken
    from (a packed one has the picked axis besides)."""
    if shape is not None and projection is not None and projection.pick is not None:
        axis = projection.pick[0] % len(shape)
        shape = shape[:axis] + shape[axis + 1:]
    axes = layout.replace("(bh)", "b")
    if shape is None or len(shape) < len(axes) or "s" not in axes:
        return _dim(shape, 1)
    return shape[axes.index("s")]


# --------------------------------------------------------------------------- same sequence, KV cache

def _finish(view: View, site: AttentionSite) -> AttentionSite:
    """Facts read from the dataflow around q, k and v: self-attention proven, or a KV-cache step."""
    q_src = _projection_sources(view, site.query, site.q_len)
    if not q_src:
        return site
    k_seq_axis = _seq_axis(site.key_layout, view.rank(site.key))
    cache = _cache_concat(view, site.key, k_seq_axis)
    if cache is not None:
        past, new = cache
        if _projection_sources(view, new, site.q_len) == q_src:
            return replace(site, past_len=_past_len(view, site, past, k_seq_axis))
        return site
    if not (_projection_sources(view, site.key, site.kv_len) == q_src
            == _projection_sources(view, site.value, site.kv_len)):
        return site
    q_len, kv_len = site.q_len, site.kv_len
    if _contradict(q_len, kv_len):
        return site  # the shapes contradict the dataflow: trust neither, claim nothing
    length = _prefer_named(q_len, kv_len)
    return replace(site, proven_self_attention=True, q_len=length, kv_len=length)


def _contradict(a, b) -> bool:
    """Whether two recorded lengths are known to differ: two sizes, or two symbols the exporter named itself
    (an unk__ name, or no name, says nothing; dynamo names a pooled length s80 where the keys' is 2*seq)."""
    if isinstance(a, int) and isinstance(b, int):
        return a != b
    named = [d for d in (a, b) if isinstance(d, str) and not d.startswith("unk__")]
    return len(named) == 2 and named[0] != named[1]


def _prefer_named(a, b):
    """One sequence with two recorded lengths: a named dim over an exporter's unk__ or a baked size."""
    for d in (a, b):
        if isinstance(d, str) and not d.startswith("unk__"):
            return d
    for d in (a, b):
        if isinstance(d, str):
            return d
    return a if a is not None else b


def _seq_axis(layout: str, rank) -> int | None:
    axes = layout.replace("(bh)", "b")
    if rank is None or len(axes) != rank or "s" not in axes:
        return None
    return axes.index("s")


def _cache_concat(view: View, key: ValueRef, axis) -> tuple[list[ValueRef], ValueRef] | None:
    """key = concat(past..., new) along its sequence axis -> (past parts, new); else None."""
    if axis is None:
        return None
    k = _skip_up(view, key)
    if view.op(k.node) != "concat":
        return None
    parts = [x for x in view.inputs(k.node) if x is not None]
    rank = view.rank(k)
    got = _concat_axis(view, k)
    if len(parts) < 2 or rank is None or got is None or got % rank != axis:
        return None
    return parts[:-1], parts[-1]


def _concat_axis(view: View, v: ValueRef) -> int | None:
    axis = view.attrs(v.node).get("axis")
    if axis is not None:
        return int(axis)
    out, first = view.shape(v), view.shape(view.input(v.node, 0))
    if out is None or first is None or len(out) != len(first):
        return None
    differs = [i for i, (a, b) in enumerate(zip(out, first)) if a != b]
    return differs[0] if len(differs) == 1 else None


def _past_len(view: View, site: AttentionSite, past: list[ValueRef], axis: int):
    """M − N: known from the lengths, else the cached parts' own sequence length."""
    if isinstance(site.q_len, int) and isinstance(site.kv_len, int):
        return site.kv_len - site.q_len
    dims = [_dim(view.shape(p), axis) for p in past]
    dims = [d for d in dims if d != 0]
    if len(dims) == 1 and dims[0] is not None:
        return dims[0]
    if dims and all(isinstance(d, int) for d in dims):
        return sum(dims)
    return None


# Ops that move each token's features without mixing tokens: the walk follows their data input.
_LAYOUT_OPS = TRANSPARENT | {"reshape", "transpose", "squeeze", "unsqueeze", "expand", "dropout"}
_MAX_SOURCE_WALK = 256


def _projection_sources(view: View, v: ValueRef, tokens) -> frozenset | None:
    """The tensors v is a token-wise projection of; None when that cannot be shown.

    Walking up, every path ends at a weight projection (matmul/linear with a constant
    weight: its input is a source) or at a graph input (a source itself). Side inputs
    broadcast onto the data (rotary cos/sin, a norm's statistics) are not followed. A path
    that mixes tokens (a product of two dynamic tensors, a concat or cut across the
    ``tokens`` axis, ``tokens`` being the sequence length of v) proves nothing: None.
    """
    sources, stack, seen = set(), [v], set()
    while stack:
        u = stack.pop()
        if u in seen:
            continue
        seen.add(u)
        if len(seen) > _MAX_SOURCE_WALK:
            return None
        op = view.op(u.node)
        if op == "input":
            sources.add(u)
            continue
        if op == "constant" or not view.is_dynamic(u):
            continue
        ins = view.inputs(u.node)
        dyn = [x for x in ins if x is not None and view.is_dynamic(x)]
        if op in ("matmul", "linear"):
            weight = ins[1] if len(ins) > 1 else None
            if op == "linear" or (weight is not None and not view.is_dynamic(weight)
                                  and (view.rank(weight) or 0) >= 2):
                if len(dyn) != 1 or dyn[0] != ins[0]:
                    return None
                sources.add(_skip_up(view, ins[0]))
                continue
            return None  # a product of two dynamic tensors mixes tokens
        if op in _LAYOUT_OPS:
            if ins and ins[0] is not None and view.is_dynamic(ins[0]):
                if _merges_rows(view, ins[0], u):
                    return None
                stack.append(ins[0])
            continue
        followed = _token_wise_operands(view, u, dyn, tokens)
        if followed is None:
            return None
        stack.extend(followed)
    return frozenset(sources)


def _merges_rows(view: View, before: ValueRef, after: ValueRef) -> bool:
    """A reshape that keeps the rank and widens the last axis folds rows into features (queries pooled by a
    reshape, two tokens into one row of 2·D), so the rows it yields need not be the tokens it read. Splitting
    heads or rotary pairs changes the rank instead."""
    if view.op(after.node) != "reshape":
        return False
    s_in, s_out = view.shape(before), view.shape(after)
    if s_in is None or s_out is None or len(s_in) != len(s_out) or not s_in:
        return False
    return isinstance(s_in[-1], int) and isinstance(s_out[-1], int) and s_out[-1] > s_in[-1]


def _same_extent(a, b) -> bool:
    """Dims that may be the same axis: equal, or unknown/symbolic but neither a broadcast 1."""
    return a == b or (a != 1 and b != 1 and not (isinstance(a, int) and isinstance(b, int)))


# Elementwise ops (numpy broadcasting): each output dim is the broadcast of the operands' dims there.
_BROADCASTING = frozenset({"add", "sub", "mul", "div", "pow", "where", "masked_fill", "neg", "sqrt", "reciprocal",
                           "tanh", "not", "isnan"})


# Reductions, by their bare names (graph.plain_op_name).
_REDUCTIONS = frozenset({"ReduceMax", "ReduceMin", "ReduceMean", "ReduceSum", "ReduceProd", "ReduceL1", "ReduceL2",
                         "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare", "ArgMax", "ArgMin", "amax", "amin",
                         "mean", "sum", "max", "min", "prod", "logsumexp", "norm", "std", "var", "argmax", "argmin"})


def _reduces(view: View, nid: str) -> bool:
    op = view.op(nid)
    return op.startswith("other:") and plain_op_name(op) in _REDUCTIONS


def _operand_extent(view: View, out: ValueRef, d_in, d_out):
    """An operand's dim as ``out``'s op makes it: where an elementwise op's output has extent 1, so has
    every operand, whatever symbol the exporter left on it (dynamo keeps, in some values, the symbol of a
    length it specialised to 1: broadcast(s, 1) = s, so s = 1)."""
    if d_out == 1 and not isinstance(d_in, int) and view.op(out.node) in _BROADCASTING:
        return 1
    return d_in


def _token_wise_operands(view: View, out: ValueRef, dyn: list[ValueRef], tokens) -> list[ValueRef] | None:
    """The operands of ``out``'s op that carry its tokens, or None if the op may mix or cut tokens.

    By shapes, axis by axis against the output: an operand of the same extents carries the
    same tokens (elementwise ops); one that is longer on the feature axis, or on an axis of
    a fixed size other than the token count (the 3 of a packed q/k/v), is cut there and
    still carries them; one of extent 1 where the output is longer is a side input
    broadcast onto the data. A constant-index pick drops one axis of a packed q/k/v.
    """
    if view.op(out.node) == "concat":
        axis = _concat_axis(view, out)
        rank = view.rank(out)
        if axis is None or rank is None or axis % rank != rank - 1:
            return None
        return dyn
    s_out = view.shape(out)
    if s_out is None or any(view.shape(x) is None for x in dyn):
        return dyn
    last = len(s_out) - 1
    carry = []
    for x in dyn:
        s_in = view.shape(x)
        if len(s_in) == len(s_out) + 1:
            if _reduces(view, out.node):
                return None  # a reduction dropping an axis (pooled queries: max over token pairs) mixes what it drops
            if all(not view.is_dynamic(i) for i in view.inputs(out.node)[1:] if i is not None):
                carry.append(x)  # x[..., i, :] with a constant i
                continue
        if len(s_in) != len(s_out):
            continue
        s_in = tuple(_operand_extent(view, out, a, b) for a, b in zip(s_in, s_out))
        differ = [i for i, (a, b) in enumerate(zip(s_in, s_out)) if not _same_extent(a, b)]
        if any(s_in[i] == 1 for i in differ):
            continue  # broadcast onto the data: a side input
        if all(i == last or (isinstance(s_in[i], int) and s_in[i] != tokens) for i in differ):
            carry.append(x)
        else:
            return None  # cut across the tokens
    if dyn and not carry:
        return None
    return carry


# --------------------------------------------------------------------------- naming

_LAYER_RE = re.compile(r"(?:^|[._/])(\d+)(?:[._/]|$)")


def _name_sites(view: View, sites: list[AttentionSite]) -> list[AttentionSite]:
    out, seen = [], {}
    for i, site in enumerate(sites):
        base = view.info(site.anchor).name or f"attention.{i}"
        base = base.strip("./") or f"attention.{i}"
        n = seen.get(base, 0)
        seen[base] = n + 1
        name = base if n == 0 else f"{base}#{n}"
        m = _LAYER_RE.search(base)
        layer = int(m.group(1)) if m else None
        out.append(replace(site, name=name, layer=layer))
    return out
