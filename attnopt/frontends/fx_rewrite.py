"""fx graph surgery: replace a site with a call to ``torch.ops.attnopt.<kernel>``.

Same contract as the ONNX half: q/k/v are brought to (B, H, N, D) and
(B, Hkv, M, D), the mask terms are summed into one additive 4-D mask, the op
is called, and its result is laid out like the site's output. The new node
takes over the output node's name so validation can compare it per site.
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx

from ..errors import SiteNotApplicable
from ..site import LAYOUT_BHSD, LAYOUT_BSD, LAYOUT_FLAT, MASK_ADDITIVE, MASK_BOOLEAN, AttentionSite


def boolean_to_additive(mask: torch.Tensor, like: torch.Tensor, keep_when_true: bool) -> torch.Tensor:
    """True/False mask -> 0/-inf in ``like``'s dtype (which way round is ``keep_when_true``)."""
    zero = torch.zeros((), dtype=like.dtype, device=like.device)
    neg = torch.full((), float("-inf"), dtype=like.dtype, device=like.device)
    return torch.where(mask, zero, neg) if keep_when_true else torch.where(mask, neg, zero)


def apply(loaded, call) -> None:
    from attnopt.kernels.registry import get_kernel
    site: AttentionSite = call.site
    gm: fx.GraphModule = loaded.model
    view = loaded.view
    spec = get_kernel(call.groups[0].kernel)
    scale = site.effective_scale
    if scale is None:
        raise SiteNotApplicable("the head dim (and so the default scale) is unknown")
    node = view.value_of
    out_old: fx.Node = node[site.output]
    _check_layouts(site)
    g = gm.graph
    with g.inserting_before(out_old):
        q = _to_bhsd(g, node[site.query], site.query_layout, site.num_heads)
        k = _to_bhsd(g, node[site.key], site.key_layout, site.kv_num_heads)
        v = _to_bhsd(g, node[site.value], site.value_layout, site.kv_num_heads)
        mask = None
        for ref, kind in ((t.value, t.kind) for t in site.masks):
            term = node[ref]
            if kind == MASK_ADDITIVE:
                term = g.call_method("to", (term, _dtype_of(node[site.query])))  # picklable, unlike Tensor.to
            else:
                term = g.call_function(boolean_to_additive, (term, q, kind == MASK_BOOLEAN))
            term = _mask_to_4d(g, term, view.rank(ref), site)
            mask = term if mask is None else g.call_function(operator.add, (mask, term))
        args = [call.groups[0].attrs[a] for a in spec.attrs]
        y = g.call_function(spec.torch_op.default, (q, k, v, mask, *args, float(scale), bool(site.causal)))
        y = _from_bhsd(g, y, site.output_layout)
    name = out_old.name
    out_old.replace_all_uses_with(y)
    g.erase_node(out_old)
    y.name = name  # the fx namespace is freed by the erase above


def finalize(loaded, kernels: set[str]) -> None:
    gm: fx.GraphModule = loaded.model
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()
    from . import fx as fx_frontend
    from ..match import detect_sites
    loaded.view = fx_frontend.lift(gm)
    loaded.sites = detect_sites(loaded.view)


def _dtype_of(n: fx.Node):
    val = n.meta.get("val")
    if isinstance(val, torch.Tensor):
        return val.dtype
    tm = n.meta.get("tensor_meta")
    return tm.dtype if tm is not None else torch.float32


def _check_layouts(site: AttentionSite) -> None:
    for layout, heads in ((site.query_layout, site.num_heads), (site.key_layout, site.kv_num_heads)):
        if layout in (LAYOUT_BSD, LAYOUT_FLAT, "(bh)ds") and not isinstance(heads, int):
            raise SiteNotApplicable("the head count is not known statically")


def _to_bhsd(g: fx.Graph, x: fx.Node, layout: str, heads) -> fx.Node:
    if layout == LAYOUT_BHSD:
        return x
    if layout == LAYOUT_BSD:
        x = g.call_function(torch.unflatten, (x, -1, (heads, -1)))
        return g.call_function(torch.permute, (x, (0, 2, 1, 3)))
    if layout in (LAYOUT_FLAT, "(bh)ds"):
        if layout == "(bh)ds":
            x = g.call_function(torch.transpose, (x, 1, 2))
        return g.call_function(torch.unflatten, (x, 0, (-1, heads)))
    if sorted(layout) == sorted(LAYOUT_BHSD):
        return g.call_function(torch.permute, (x, tuple(layout.index(c) for c in LAYOUT_BHSD)))
    raise SiteNotApplicable(f"unsupported tensor layout {layout!r}")


def _from_bhsd(g: fx.Graph, y: fx.Node, layout: str) -> fx.Node:
    if layout == LAYOUT_BHSD:
        return y
    if layout == LAYOUT_BSD:
        y = g.call_function(torch.permute, (y, (0, 2, 1, 3)))
        return g.call_function(torch.flatten, (y, 2))
    if layout == LAYOUT_FLAT:
        return g.call_function(torch.flatten, (y, 0, 1))
    raise SiteNotApplicable(f"unsupported output layout {layout!r}")


def _mask_to_4d(g: fx.Graph, m: fx.Node, rank, site: AttentionSite) -> fx.Node:
    if rank is None:
        raise SiteNotApplicable("the mask's rank is unknown")
    if site.query_layout == LAYOUT_FLAT and rank == 3:
        return g.call_function(torch.unflatten, (m, 0, (-1, site.num_heads)))
    for _ in range(4 - rank):
        m = g.call_function(torch.unsqueeze, (m, 0))
    if rank > 4:
        raise SiteNotApplicable(f"a {rank}-D mask")
    return m
