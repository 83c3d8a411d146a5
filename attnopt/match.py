"""The one attention matcher, written against the View.

It anchors on every ``softmax`` and on every fused attention op (``sdpa``,
``mha``), then walks up and down through what exporters interleave: scale
mul/div (also sqrt(scale) split over q and k), mask add/where/masked_fill,
casts, NaN guards, dropout, head transposes, the reshape/expand pairs that
aten's matmul decomposition inserts, and GQA unsqueeze/expand/reshape.

There are no per-model op-sequence lists: each step below is one identity
that holds for any exporter (see the comment on each rule).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

from .graph import View
from .site import (LAYOUT_BHDS, LAYOUT_BHSD, LAYOUT_FLAT, MASK_ADDITIVE, MASK_BOOLEAN,
                   MASK_BOOLEAN_BLOCKED, AttentionSite, MaskTerm, ValueRef)

# Ops that do not change the values the matcher cares about (dtype casts aside).
TRANSPARENT = frozenset({"cast", "identity"})
# A fill at or below this is "minus infinity" for masking purposes (HF uses finfo.min,
# older code -1e4 or -1e9).
MASK_FILL_MAX = -1e4


def detect_sites(view: View) -> list[AttentionSite]:
    """Every attention site of the view, in graph order, with unique names."""
    sites: list[AttentionSite] = []
    for nid in sorted(view.nodes(), key=lambda n: view.info(n).order):
        op = view.op(nid)
        site = None
        if op == "softmax":
            site = _match_decomposed(view, nid)
        elif op in ("sdpa", "mha"):
            site = _match_fused(view, nid)
        if site is not None:
            sites.append(site)
    return _name_sites(view, sites)


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
    cb, ca = view.scalar(b), view.scalar(a)
    if cb is not None and view.const(a) is None:
        return a, cb
    if ca is not None and view.const(b) is None and view.op(nid) == "mul":
        return b, ca
    return None


def _strip_scale(view: View, v: ValueRef) -> tuple[ValueRef, float, list[str]]:
    """q·c, q/c (and casts) -> (q, product of factors, nodes passed)."""
    factor, passed = 1.0, []
    while True:
        v2 = _skip_up(view, v)
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


def _unflatten_up(view: View, v: ValueRef) -> tuple[ValueRef, list[str]]:
    """(B*H, N, D) made by reshape(expand(x)) from a 4-D x with the same last two dims -> x.

    This undoes aten's decomposition of a 4-D matmul into bmm.
    """
    if view.rank(v) != 3:
        return v, []
    passed, cur = [], v
    while view.op(cur.node) in ("reshape", "expand", "identity") and view.input(cur.node, 0) is not None:
        kv, gqa = _strip_gqa(view, cur)
        if kv != cur:  # flattened straight from the GQA repeat: the kv tensor itself
            return kv, passed + gqa
        passed.append(cur.node)
        cur = view.input(cur.node, 0)
        s, s3 = view.shape(cur), view.shape(v)
        if s is not None and len(s) == 4 and s[-2:] == s3[-2:]:
            return cur, passed
        if s is not None and len(s) != 3 and len(s) != 4:
            break
    return v, []


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
    return v, (LAYOUT_BHDS if view.rank(v) == 4 else "(bh)ds"), []


def _dim_of(shape, layout: str, letter: str):
    if shape is None or len(shape) != len(layout.replace("(bh)", "b")):
        return None
    return shape[layout.replace("(bh)", "b").index(letter)]


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


def _strip_gqa(view: View, v: ValueRef) -> tuple[ValueRef, list[str]]:
    """GQA repetition, reshape(expand(unsqueeze(k, 2))) to (B, H, M, D) or (B*H, M, D) -> k."""
    if view.op(v.node) != "reshape" or view.rank(v) not in (3, 4, None):
        return v, []
    src, passed = _repeat_source(view, view.input(v.node, 0))
    return (src, [v.node] + passed) if src is not None else (v, [])


def _is_neg_fill(view: View, v: ValueRef | None) -> bool:
    c = view.const(v) if v is not None else None
    if c is None or np.size(c) == 0:
        return False
    try:
        return bool(np.all(np.asarray(c, dtype=np.float64) <= MASK_FILL_MAX))
    except (TypeError, ValueError):
        return False


def _is_zero(view: View, v: ValueRef | None) -> bool:
    return view.scalar(v) == 0.0


def _dynamic(view: View, v: ValueRef | None) -> bool:
    return v is not None and view.is_dynamic(v)


# --------------------------------------------------------------------------- decomposed

@dataclass
class _Up:
    """What the walk from softmax up to the score matmul collected."""
    matmul: str
    scale: float = 1.0
    masks: list = field(default_factory=list)  # [(ValueRef, kind)]
    nodes: list = field(default_factory=list)


def _reaches_matmul(view: View, v: ValueRef, depth: int = 10) -> bool:
    for _ in range(depth):
        op = view.op(v.node)
        if op == "matmul":
            a, b = view.inputs(v.node)[:2]
            return _dynamic(view, a) and _dynamic(view, b)
        if op in TRANSPARENT | {"reshape", "expand", "mul", "div", "add", "where", "masked_fill"}:
            ins = [x for x in view.inputs(v.node) if x is not None and view.const(x) is None]
            if op == "where":
                ins = ins[1:]
            if not ins:
                return False
            if op == "add":
                return any(_reaches_matmul(view, x, depth - 1) for x in ins)
            v = ins[0]
            continue
        return False
    return False


def _walk_up(view: View, v: ValueRef) -> _Up | None:
    scale, masks, nodes = 1.0, [], []
    for _ in range(32):
        nid = v.node
        op = view.op(nid)
        ins = view.inputs(nid)
        if op == "matmul":
            return _Up(nid, scale, masks, nodes)
        if op in ("add", "where", "masked_fill") and scale != 1.0:
            # Walking up, a mask found above a scale was scaled too: (s + m)·c is not plain attention.
            return None
        nodes.append(nid)
        if op in TRANSPARENT or op in ("reshape", "expand"):
            v = ins[0]
        elif op in ("mul", "div"):
            found = _scalar_operand(view, nid)
            if found is None:
                return None
            x, c = found
            if c == 0:
                return None
            scale *= c if op == "mul" else 1.0 / c
            v = x
        elif op == "add":
            a, b = ins[:2]
            if _reaches_matmul(view, a):
                scores, mask = a, b
            elif _reaches_matmul(view, b):
                scores, mask = b, a
            else:
                return None
            masks.append((mask, MASK_ADDITIVE))
            v = scores
        elif op == "where":
            cond, x, y = ins[:3]
            if _is_neg_fill(view, y):  # where(keep, scores, -inf)
                masks.append((cond, MASK_BOOLEAN))
                v = x
            elif _is_neg_fill(view, x):  # where(blocked, -inf, scores)
                masks.append((cond, MASK_BOOLEAN_BLOCKED))
                v = y
            else:
                return None
        elif op == "masked_fill":
            x, cond, fill = ins[:3]
            if not _is_neg_fill(view, fill):
                return None
            masks.append((cond, MASK_BOOLEAN_BLOCKED))
            v = x
        else:
            return None
    return None


def _walk_down(view: View, p: ValueRef, depth: int = 16):
    """softmax output -> (value matmul node, nodes passed, flattened?, probabilities escape?)."""
    nodes, flattened, escapes = [], False, False
    for _ in range(depth):
        users = view.users(p)
        ops = sorted(view.op(u) for u, _ in users)
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
        if len(users) > 1:
            # The probabilities also leave the site (need_weights=True): follow the one
            # path that goes on to the value matmul; the site then can't be rewritten.
            onward = [(u, port) for u, port in users if _leads_to_value_matmul(view, u, port, depth - 1)]
            if len(onward) != 1:
                return None
            escapes, users = True, onward
        if not users:
            return None
        u, port = users[0]
        op = view.op(u)
        if op == "matmul":
            return (u, nodes, flattened, escapes) if port == 0 else None
        if op in TRANSPARENT or op in ("dropout", "expand"):
            nodes.append(u)
        elif op == "reshape":
            flattened = flattened or view.rank(ValueRef(u, 0)) == 3
            nodes.append(u)
        else:
            return None
        p = ValueRef(u, 0)
    return None


def _leads_to_value_matmul(view: View, user: str, port: int, depth: int) -> bool:
    if view.op(user) == "matmul":
        return port == 0
    if depth <= 0 or view.op(user) not in TRANSPARENT | {"dropout", "expand", "reshape"}:
        return False
    found = _walk_down(view, ValueRef(user, 0), depth)
    return found is not None and not found[3]


def _match_decomposed(view: View, sm: str) -> AttentionSite | None:
    x = view.input(sm, 0)
    if x is None:
        return None
    rank = view.rank(x)
    axis = view.attrs(sm).get("axis", -1)
    if rank is not None:
        if rank < 3 or axis % rank != rank - 1:
            return None
    elif axis != -1:
        return None

    down = _walk_down(view, ValueRef(sm, 0))
    if down is None:
        return None
    mm2, down_nodes, flattened, escapes = down
    value = view.input(mm2, 1)
    if not _dynamic(view, value):
        return None  # softmax(...) @ weight: a soft lookup, not attention
    up = _walk_up(view, x)
    if up is None:
        return None
    q, kt = view.inputs(up.matmul)[:2]
    if not (_dynamic(view, q) and _dynamic(view, kt)):
        return None

    removed = [sm, mm2, up.matmul] + up.nodes + down_nodes
    q, qn = _unflatten_up(view, q)
    kt, kn = _unflatten_up(view, kt)
    value, vn = _unflatten_up(view, value)
    removed += qn + kn + vn
    q, q_scale, qs = _strip_scale(view, q)
    kt, k_scale, ks = _strip_scale(view, kt)
    removed += qs + ks
    key, key_layout, tn = _strip_transpose(view, kt)
    key, k_scale2, ks2 = _strip_scale(view, key)  # (k·c)ᵀ: the scale may sit before the transpose
    k_scale *= k_scale2
    removed += tn + ks2
    key, gk = _strip_gqa(view, key) if key_layout == LAYOUT_BHSD else (key, [])
    value, gv = _strip_gqa(view, value)
    removed += gk + gv

    output = ValueRef(mm2, 0)
    four_d = view.rank(q) == 4 or (view.rank(q) is None and view.rank(output) == 4)
    if flattened:
        # bmm output (B*H, N, D) is reshaped back to 4-D right after.
        u = view.only_user(output)
        if u is not None and view.op(u[0]) == "reshape" and view.rank(ValueRef(u[0], 0)) == 4:
            removed.append(u[0])
            output = ValueRef(u[0], 0)
    layout = LAYOUT_BHSD if four_d else LAYOUT_FLAT
    if not four_d and key_layout == LAYOUT_BHDS:
        key_layout = "(bh)ds"

    qs_shape, ks_shape = view.shape(q), view.shape(key)
    head_dim = _dim(qs_shape, -1)
    if layout == LAYOUT_BHSD:
        heads, q_len = _dim(qs_shape, 1), _dim(qs_shape, 2)
        kv_heads, kv_len = _dim_of(ks_shape, key_layout, "h"), _dim_of(ks_shape, key_layout, "s")
    else:
        heads = _heads_from_split(view, q, head_dim)
        kv_heads = _heads_from_split(view, key, head_dim) or heads
        q_len, kv_len = _dim(qs_shape, 1), _dim_of(ks_shape, key_layout, "s")

    scale = up.scale * q_scale * k_scale
    terms, causal = _classify_masks(view, reversed(up.masks))  # graph order: innermost add first
    return AttentionSite(
        name="", form="decomposed", query=q, key=key, value=value, output=output,
        query_layout=layout, key_layout=key_layout,
        value_layout=layout, output_layout=layout,
        num_heads=heads, kv_num_heads=kv_heads if kv_heads is not None else heads,
        head_dim=head_dim, q_len=q_len, kv_len=kv_len, scale=_clean(scale, head_dim),
        masks=tuple(MaskTerm(m, k) for m, k in terms), causal=causal,
        nodes=tuple(dict.fromkeys(removed)), anchor=sm,
        unsupported="the attention probabilities are also used outside the site" if escapes else None,
    )


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


def _heads_from_split(view: View, v: ValueRef, head_dim) -> int | None:
    """For flat (B*H, N, D) tensors: find the reshape that split E into (.., H*?, D), E = H*D."""
    if not isinstance(head_dim, int):
        return None
    cur = v
    for _ in range(6):
        nid = cur.node
        if view.op(nid) in ("input", "constant") or not view.inputs(nid):
            return None
        if view.op(nid) == "reshape":
            src = view.input(nid, 0)
            e = _dim(view.shape(src), -1)
            if isinstance(e, int) and e != head_dim and e % head_dim == 0:
                return e // head_dim
        cur = view.input(nid, 0)
    return None


def _classify_masks(view: View, masks):
    """-> (mask terms left, causal). A constant term that is exactly causal becomes the causal flag."""
    causal = False
    kept = []
    for mask, kind in masks:
        if not causal and _is_causal_const(view, mask, kind):
            causal = True
        else:
            kept.append((mask, kind))
    return tuple(kept), causal


def _is_causal_const(view: View, mask: ValueRef, kind: str) -> bool:
    c = view.const(mask)
    if c is None or np.ndim(c) < 2:
        return False
    c = np.asarray(c)
    n, m = c.shape[-2:]
    if kind == MASK_ADDITIVE:
        allowed = np.asarray(c, dtype=np.float64) > MASK_FILL_MAX
        if not np.all(np.asarray(c, dtype=np.float64)[allowed] == 0):
            return False
    else:
        allowed = c.astype(bool)
        if kind == MASK_BOOLEAN_BLOCKED:
            allowed = ~allowed
    tril = np.tril(np.ones((n, m), dtype=bool), k=m - n)
    flat = allowed.reshape(-1, n, m)
    return bool(np.all(flat == tril))


# --------------------------------------------------------------------------- fused ops

def _match_fused(view: View, nid: str) -> AttentionSite | None:
    """sdpa/mha nodes: the frontend normalised their attributes (see graph.FUSED_ATTRS)."""
    a = view.attrs(nid)
    ins = view.inputs(nid)

    def port(name):
        p = a.get(name)
        return ins[p] if p is not None and p < len(ins) else None

    q, k, v, mask = port("q_port"), port("k_port"), port("v_port"), port("mask_port")
    if q is None:
        return None
    k = k if k is not None else q
    v = v if v is not None else k
    layout = a.get("layout", LAYOUT_BHSD)
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
        if head_dim is None and isinstance(_dim(qs, -1), int) and heads:
            head_dim = _dim(qs, -1) // heads
        q_len, kv_len = _dim(qs, 1), _dim(ks, 1)
    mask_kind = a.get("mask_kind")
    if mask is not None and mask_kind is None:
        mask_kind = MASK_BOOLEAN if view.dtype(mask) == "bool" else MASK_ADDITIVE
    return AttentionSite(
        name="", form=a.get("form", view.op(nid)), query=q, key=k, value=v,
        output=ValueRef(nid, 0), query_layout=layout, key_layout=layout, value_layout=layout,
        output_layout=a.get("output_layout", layout),
        num_heads=heads, kv_num_heads=kv_heads or heads, head_dim=head_dim, q_len=q_len, kv_len=kv_len,
        scale=_clean(a["scale"], head_dim) if a.get("scale") else None,
        masks=(MaskTerm(mask, mask_kind),) if mask is not None else (), causal=bool(a.get("causal", False)),
        nodes=(nid,), anchor=nid, unsupported=a.get("unsupported"),
    )


# --------------------------------------------------------------------------- naming

_LAYER_RE = re.compile(r"(?:^|[._/])(\d+)(?:[._/]|$)")


def _name_sites(view: View, sites: list[AttentionSite]) -> list[AttentionSite]:
    from dataclasses import replace
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
