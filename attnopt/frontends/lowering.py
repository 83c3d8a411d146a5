"""What a frontend emits for one OpCall, decided once for both backends.

A frontend's surgery is: bring q/k/v to (B, H, N, D) / (B, Hkv, M, D), turn
the site's dense mask terms into one additive 4-D remainder and its key
padding into an additive (B | 1, M) vector, then for each head group slice the
heads, call the group's kernel with its constant tensors and attributes, and
concatenate the groups over heads. This module computes everything in that
recipe that does not depend on the backend: which kernel, which head ranges,
which attribute values in which order, which tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import SiteNotApplicable
from ..site import BLOCKED_ROWS_GROUPS, BLOCKED_ROWS_UNIFORM, AttentionSite, MaskTerm

FUSED_RELATIVE_BIAS = "relative_bias"  # OpCall.fuses: the kernel computes the site's relative bias


@dataclass(frozen=True)
class GroupCall:
    """One kernel call: query heads [q_start, q_stop) against kv heads [kv_start, kv_stop) (None = all)."""

    spec: object  # kernels.spec.VariantSpec
    q_heads: tuple[int, int] | None
    kv_heads: tuple[int, int] | None
    attrs: dict  # every attribute of the op, in spec.attr_names order
    tensors: tuple[tuple[str, np.ndarray], ...]  # constant inputs, in spec.tensor_inputs order
    # The op's states: each becomes a model input named state_name(site, state) and an output named
    # state_name(site, state, next_=True) (memory's streaming form).
    state: tuple = ()


def mask_terms(call) -> tuple[tuple[MaskTerm, ...], MaskTerm | None]:
    """(dense terms summed into the remainder mask, key padding term) that the op calls receive.

    A relative-position bias stays one of the site's dense terms, so every call that does not fuse
    it still adds it exactly. A call that fuses it drops that term and, where the term also carried
    the padding mask (T5 with SDPA adds it into position_bias), takes the padding as key padding.
    """
    site: AttentionSite = call.site
    rb = site.relative_bias
    if FUSED_RELATIVE_BIAS not in getattr(call, "fuses", ()):
        implied = window_terms(call)
        pads = {t.window_padding for t in implied} - {None}
        return tuple(t for t in site.masks if t not in implied), site.key_padding or next(iter(pads), None)
    if rb is None or rb.term not in site.masks:
        raise SiteNotApplicable("the plan fuses a relative-position bias the site does not have")
    key_padding = site.key_padding
    if rb.key_padding is not None:
        if key_padding is not None and key_padding != rb.key_padding:
            raise SiteNotApplicable("the relative bias carries a padding mask besides the site's key padding")
        key_padding = rb.key_padding
    return tuple(t for t in site.masks if t != rb.term), key_padding


def window_terms(call) -> tuple[MaskTerm, ...]:
    """The site's sliding-window terms (MaskTerm.window) that the kernels replace by causality and key padding:
    each kernel sees no key W or more positions back and has no sinks (a sink may lie farther back), and the
    terms' key padding agrees with the site's. The op then runs causal, with that key padding, and without them.
    """
    from attnopt.kernels.registry import get_variant

    site = call.site
    terms = [t for t in site.masks if t.window]
    if not terms or FUSED_RELATIVE_BIAS in getattr(call, "fuses", ()):
        return ()
    pads = {t.window_padding for t in terms} | {site.key_padding}
    if len(pads - {None}) > 1:
        return ()
    for g in call.groups:
        spec = get_variant(g.kernel)
        reach = spec.reach(g.attrs) if spec.reach is not None else None
        if reach is None or reach >= min(t.window for t in terms) or g.attrs.get("sinks", 0):
            return ()
    return tuple(terms)


def blocked_rows(call, masks) -> tuple[bool, int, tuple] | None:
    """(causal, window W or 0, AttentionSite.blocked_groups) where the rewrite must give the rows the site's key
    padding blocks entirely what the original gives them (AttentionSite.blocked_rows) instead of the ops' zero:
    the mean of every value, or of the first group of key classes that holds a key; None where nothing needs
    that. ``masks``: the dense terms the op receives (``mask_terms``).

    Which rows: query i (at position p = i + M − N) keeps no key j with j ≤ p (causal) and j > p − W (a window
    term, whether the kernels replace it or the op reads it), or none at all. Costs O(B·M) counts and one mean of
    the values per head; groups other than every key also take two running sums of the values along the keys.
    """
    site: AttentionSite = call.site
    # Learned sink logits (GPT-OSS) keep such a row from being empty: its weight all goes to the sink's zero
    # value, as in the ops. A relative-position bias left in the remainder (MPT's ALiBi) or a term no fill reaches
    # (MaskTerm.finite: Inkling's relative logits) is finite, so the fill swallows it too; a window term blocks
    # what mask analysis proved; any other remainder term may block keys of its own, and then the row is not what
    # the site records.
    rb = site.relative_bias
    if (site.blocked_rows not in (BLOCKED_ROWS_UNIFORM, BLOCKED_ROWS_GROUPS) or site.extra_axes
            or site.sink_logits is not None
            or any(not t.window and not t.finite and (rb is None or t != rb.term) for t in masks)):
        return None
    implied = window_terms(call)
    if site.key_padding is None and not any(t.window_padding for t in implied):
        return None
    windows = [t.window for t in site.masks if t.window]
    return site.causal or bool(windows), min(windows, default=0), site.blocked_groups


def state_name(site_name: str, state, next_: bool = False) -> str:
    """The model input (or output, ``next_``) that carries one site's state between calls."""
    return f"{site_name}.{state.name}" + (".next" if next_ else "")


def state_dims(site: AttentionSite, state) -> list:
    """The state's dims for a model signature: known head counts and head dim, other sizes symbolic."""
    known = {"Hkv": site.kv_num_heads, "D": site.head_dim, "1": 1, "B": "batch"}
    return [known.get(d) if isinstance(known.get(d), (int, str)) else f"{site.name}.{state.name}.{d}"
            for d in state.shape]


def head_dim_padding(site: AttentionSite) -> tuple[int, int]:
    """(zero columns appended to q and k, to v) so that the op sees one head dim where the values' differs.

    Zero columns change no q·k and no output column; the output's extra columns (zero) are cut off after the
    op. MLA's narrower values cost the op a third more value work (128 of 192 columns), LeViT's wider ones
    more score work: the price of running every variant unchanged.
    """
    dv, d = site.value_head_dim, site.head_dim
    if not isinstance(dv, int) or not isinstance(d, int):
        return 0, 0
    return max(dv - d, 0), max(d - dv, 0)


def lower(call) -> list[GroupCall]:
    """The kernel calls that replace ``call.site``, checked against each variant's spec."""
    from attnopt.kernels.registry import get_variant

    site: AttentionSite = call.site
    scale = site.effective_scale
    if scale is None:
        raise SiteNotApplicable("the head dim (and so the default scale) is unknown")
    causal = site.causal or bool(window_terms(call))  # a sliding-window term the op replaces is causal
    common = {"scale": float(scale), "causal": bool(causal), "softcap": float(site.softcap or 0.0)}
    groups = list(call.groups)
    whole = len(groups) == 1 and groups[0].start == 0 and groups[0].stop is None
    stateful = any(get_variant(g.kernel).state for g in groups)
    if site.extra_axes and (not whole or stateful):
        # The op sees each (head, extra axes) pair as a head (site.EXTRA_AXIS): head ranges and a state's
        # (B, Hkv, ...) shape would mean something else there.
        raise SiteNotApplicable("head groups and streaming states need plain heads; this site's heads are folded "
                                "with extra batching axes")
    if not whole:
        _check_cover(site, groups)
        if stateful:
            raise SiteNotApplicable("a stateful (streaming) kernel takes the whole site, not a head group")
    if site.sink_logits is not None:
        _check_sink_logits(site, groups)
    if stateful and any(head_dim_padding(site)):
        raise SiteNotApplicable(f"a streaming state holds keys and values of one head dim; the values' "
                                f"({site.value_head_dim}) differs from the keys' ({site.head_dim})")
    out = []
    for g in groups:
        spec = get_variant(g.kernel)
        missing = [n for n in spec.param_names if n not in g.attrs]
        if missing:
            raise SiteNotApplicable(f"the plan for {g.kernel} lacks {', '.join(missing)}")
        attrs = {**{n: g.attrs[n] for n in spec.param_names}, **common}
        names = [t.name for t in spec.tensor_inputs]
        if sorted(g.tensors) != sorted(names):
            raise SiteNotApplicable(f"{g.kernel} takes tensors {names}, the plan gave {sorted(g.tensors)}")
        tensors = tuple((n, np.asarray(g.tensors[n])) for n in names)
        if whole:
            out.append(GroupCall(spec, None, None, attrs, tensors, spec.state))
        else:
            rep = site.num_heads // site.kv_num_heads
            stop = site.num_heads if g.stop is None else g.stop
            tensors = _group_rows(spec, tensors, site.num_heads, g.start, stop)
            out.append(GroupCall(spec, (g.start, stop), (g.start // rep, stop // rep), attrs, tensors))
    return out


def _group_rows(spec, tensors, heads: int, start: int, stop: int):
    """A head group's own rows of the per-head tensors (relbias's slopes and table, made for the site's heads);
    a one-row tensor that every head shares stays whole."""
    per_head = {t.name for t in spec.tensor_inputs if t.per_head}
    return tuple((n, a[start:stop] if n in per_head and a.ndim and a.shape[0] == heads != 1 else a)
                 for n, a in tensors)


def _check_sink_logits(site: AttentionSite, groups) -> None:
    """Learned sink logits (GPT-OSS) reach only kernels that take them, one logit a plain head."""
    from attnopt.kernels.registry import all_variants, get_variant

    if site.extra_axes:
        raise SiteNotApplicable("learned sink logits are one a head; this site's heads are folded with extra "
                                "batching axes")
    refused = [g.kernel for g in groups if not get_variant(g.kernel).serves_sink_logits]
    if refused:
        takers = ", ".join(s.name for s in all_variants() if s.serves_sink_logits)
        raise SiteNotApplicable(f"its softmax also spans learned sink logits (GPT-OSS); {refused[0]} does not take "
                                f"them ({takers} do)")


def _check_cover(site: AttentionSite, groups) -> None:
    """Head groups must tile [0, H) in order, each a whole number of GQA groups."""
    heads, kv = site.num_heads, site.kv_num_heads
    if not isinstance(heads, int) or not isinstance(kv, int):
        raise SiteNotApplicable("head groups need the head counts known statically")
    rep = heads // kv
    at = 0
    for g in groups:
        stop = heads if g.stop is None else g.stop
        if g.start != at or stop <= g.start or stop > heads:
            raise SiteNotApplicable(f"head groups must tile heads 0..{heads} in order; got [{g.start}, {stop}) "
                                    f"after head {at}")
        if g.start % rep or stop % rep:
            raise SiteNotApplicable(f"head group [{g.start}, {stop}) splits a GQA group of {rep} query heads")
        at = stop
    if at != heads:
        raise SiteNotApplicable(f"head groups cover heads 0..{at}, not all {heads}")
