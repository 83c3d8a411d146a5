"""fx graph surgery: replace a site with a call to ``torch.ops.attnopt.<kernel>``.

Same contract as the ONNX half: q/k/v are brought to (B, H, N, D) and
(B, Hkv, M, D), the dense mask terms are summed into one additive 4-D
remainder and the key padding becomes an additive (B, M) vector, the op is
called once per head group (attnopt.frontends.lowering decides the calls) and
the groups are concatenated over heads; the result is laid out like the
site's output. The new node
takes over the output node's name so validation can compare it per site.
"""

from __future__ import annotations

import math
import operator

import numpy as np
import torch
import torch.fx as fx

from ..errors import SiteNotApplicable
from ..kernels.prefix_sum import prefix_sum
from ..match import MASK_FILL_MAX
from ..site import (LAYOUT_BHSD, LAYOUT_BSD, LAYOUT_FLAT, MASK_BOOLEAN, MASK_BOOLEAN_BLOCKED, MASK_NONZERO_KEEP,
                    AttentionSite, ValueRef, extra_axis_count, folded, permutes_bhsd)
from .fx import functorch_nesting
from .fx_flex import materialize
from .lowering import blocked_rows, head_dim_padding, lower, mask_terms, state_name


def boolean_to_additive(mask: torch.Tensor, like: torch.Tensor, keep_when_true: bool,
                        fill: float = float("-inf")) -> torch.Tensor:
    """True/False mask -> 0/``fill`` in ``like``'s dtype (which way round is ``keep_when_true``)."""
    zero = torch.zeros((), dtype=like.dtype, device=like.device)
    neg = torch.full((), fill, dtype=like.dtype, device=like.device)
    return torch.where(mask, zero, neg) if keep_when_true else torch.where(mask, neg, zero)


def additive(term: torch.Tensor, like: torch.Tensor, kind: str, factor: float = 1.0,
             fill: float = float("-inf")) -> torch.Tensor:
    """One mask term as an additive mask in ``like``'s dtype (booleans and nonzero-keep vectors become 0/``fill``)."""
    if kind == MASK_NONZERO_KEEP:
        term, kind = term != 0, MASK_BOOLEAN
    if kind in (MASK_BOOLEAN, MASK_BOOLEAN_BLOCKED):
        return boolean_to_additive(term, like, kind == MASK_BOOLEAN, fill)
    term = term.to(like.dtype)
    return term * factor if factor != 1.0 else term


def mean_where_blocked(y: torch.Tensor, v: torch.Tensor, key_padding: torch.Tensor, causal: bool,
                       window: int, groups: tuple = ()) -> torch.Tensor:
    """y (B, H, N, D) with the rows that ``key_padding`` (additive (B | 1, M)) leaves no key, under causality and
    a window of W keys (0: none), replaced by the mean of every value, or with ``groups`` (AttentionSite.
    blocked_groups) of the first group of key classes that holds a key (``lowering.blocked_rows``). The running
    sums are ``prefix_sum``'s, which an ONNX export turns into ``ai.attnopt::PrefixSum``."""
    kept_keys = key_padding > MASK_FILL_MAX  # (B | 1, M): the unpadded keys
    kept = prefix_sum(kept_keys.to(torch.int64)[..., None])[..., 0]  # kept keys up to j
    n, m = y.shape[2], v.shape[2]
    pos = torch.arange(m - n, m, device=y.device)
    if causal:
        seen = kept[:, pos]
        if window:
            before = pos - window  # the last key the window leaves out
            seen = seen - torch.where(before >= 0, kept[:, before.clamp(min=0)], 0)
    else:
        seen = kept[:, -1:]
    if groups:
        mean = _mean_of_first_group(v, kept_keys, pos, window, groups)
    else:
        mean = v.mean(dim=2, keepdim=True)
    mean = mean.repeat_interleave(y.shape[1] // v.shape[1], dim=1)
    return torch.where((seen == 0)[:, None, :, None], mean.to(y.dtype), y)


def _mean_of_first_group(v: torch.Tensor, kept_keys: torch.Tensor, pos: torch.Tensor, window: int,
                         groups: tuple) -> torch.Tensor:
    """(B, Hkv, N, D): for each query row at position ``pos``, the mean of v over the first of ``groups`` (tuples
    of KEY_CLASSES) that holds a key, from running sums along the keys of v with a column of ones appended (its
    running sum counts the keys). ``kept_keys`` (B | 1, M) bool: the unpadded keys."""
    v1 = torch.cat([v.float(), torch.ones_like(v[..., :1], dtype=torch.float32)], dim=-1)
    run_all, run_kept = prefix_sum(v1), prefix_sum(v1 * kept_keys.to(v1.dtype)[:, None, :, None])

    def upto(run, i):  # the running sum up to key i (0 before the first key), per query row
        return torch.where((i >= 0)[:, None], run[..., i.clamp(min=0), :], torch.zeros((), dtype=run.dtype))

    p, old = pos, (pos - window).clamp(min=-1) if window else pos.new_full(pos.shape, -1)  # old: the last key j <= p − W
    sums = {  # class: the sum of its values, then its key count: (B, Hkv, N, D + 1)
        "past": upto(run_all, p) - upto(run_all, old),
        "older": upto(run_all, old) - upto(run_kept, old),
        "older_kept": upto(run_kept, old),
        "future": run_all[..., -1:, :] - run_kept[..., -1:, :] - upto(run_all, p) + upto(run_kept, p),
        "future_kept": run_kept[..., -1:, :] - upto(run_kept, p),
    }
    mean = torch.zeros_like(sums["past"][..., :-1])
    chosen = torch.zeros((), dtype=torch.bool)
    for group in groups:
        total = sum(sums[c] for c in group)
        count = total[..., -1:]
        take = ~chosen & (count > 0)
        mean = torch.where(take, total[..., :-1] / count.clamp(min=1), mean)
        chosen = chosen | take
    return mean


def heads_if_many(mask: torch.Tensor, start: int, stop: int, heads: int) -> torch.Tensor:
    """A 4-D mask's rows for heads [start, stop) when it has one per head; a shared one as it is."""
    return mask[:, start:stop] if mask.shape[1] == heads else mask


def sink_vector(sinks: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
    """A site's (B | 1, H, N | 1, 1) learned sink logits (GPT-OSS), at batch 0 and query 0 (the matcher proved
    them the same for all), as the op's float (H,), heads [start, stop)."""
    return sinks[:1, :, :1].reshape(-1)[start:stop].float()


def apply(loaded, call) -> None:
    site: AttentionSite = call.site
    gm: fx.GraphModule = loaded.model
    view = loaded.view
    groups = lower(call)
    node = view.value_of
    out_old: fx.Node = node[site.output]
    _check_layouts(site)
    g = gm.graph
    with g.inserting_before(out_old):
        q_in = node[site.query]
        q = to_bhsd(q_in, site.query_layout, site.num_heads, g.call_function)
        k = to_bhsd(node[site.key], site.key_layout, site.kv_num_heads, g.call_function)
        v = to_bhsd(node[site.value], site.value_layout, site.kv_num_heads, g.call_function)
        if site.query_factor is not None:  # (q·f)·kᵀ = f·(q·kᵀ): SwinV2's per-head logit scale
            f = _mask_to_4d(g, node[site.query_factor], view.rank(site.query_factor), site, q_in)
            q = g.call_function(operator.mul, (q, g.call_method("type_as", (f, q))))
        q, k = with_score_parts(site, q, k, [(node[p.query], node[p.key]) for p in site.score_parts],
                                g.call_function)
        pad_qk, pad_v = head_dim_padding(site)
        if pad_qk:
            q, k = (g.call_function(torch.nn.functional.pad, (t, (0, pad_qk))) for t in (q, k))
        if pad_v:
            v = g.call_function(torch.nn.functional.pad, (v, (0, pad_v)))
        masks, kp = mask_terms(call)
        mask = None
        for t in masks:
            term = g.call_function(additive, (_operand(gm, view, t.value), q, t.kind, t.factor, t.fill))
            rank = view.rank(t.value)
            if t.view is not None:  # added to the scores viewed in another shape (MaskTerm.view)
                into, back = (view.info(nid).ref for nid in t.view)
                flat = view.rank(view.input(t.view[0], 0)) == 3
                term = g.call_function(_through_view, (term, q, k, _sizes(into), _sizes(back), flat))
                rank = view.rank(ValueRef(t.view[1], 0))
            term = _mask_to_4d(g, term, rank, site, q_in)
            mask = term if mask is None else g.call_function(operator.add, (mask, term))
        key_padding = None
        if kp is not None:
            key_padding = g.call_function(torch.flatten, (g.call_function(additive, (node[kp.value], q, kp.kind,
                                                                                       kp.factor, kp.fill)), 1))
        outputs = []
        for group in groups:
            gq, gk, gv, gmask = q, k, v, mask
            if group.q_heads is not None:
                gq = g.call_function(operator.getitem, (q, (slice(None), slice(*group.q_heads))))
                gk = g.call_function(operator.getitem, (k, (slice(None), slice(*group.kv_heads))))
                gv = g.call_function(operator.getitem, (v, (slice(None), slice(*group.kv_heads))))
                if mask is not None:
                    gmask = g.call_function(heads_if_many, (mask, *group.q_heads, site.num_heads))
            sinks = []  # the op's last argument, None by default
            if site.sink_logits is not None:
                sinks = [g.call_function(sink_vector, (_operand(gm, view, site.sink_logits), *(group.q_heads or ())))]
            tensors = [_constant(gm, g, arr, f"{group.spec.name}_{name}") for name, arr in group.tensors]
            states = [_state_input(g, site, st) for st in group.state]
            call_ = g.call_function(group.spec.torch_op.default, (gq, gk, gv, gmask, key_padding, *tensors, *states,
                                                                  *group.attrs.values(), *sinks))
            if group.state:
                _state_outputs(g, site, group.state, [g.call_function(operator.getitem, (call_, i + 1))
                                                      for i in range(len(group.state))])
                call_ = g.call_function(operator.getitem, (call_, 0))
            outputs.append(call_)
        y = outputs[0] if len(outputs) == 1 else g.call_function(torch.cat, (outputs, 1))
        blocked = blocked_rows(call, masks)
        if blocked is not None:
            y = g.call_function(mean_where_blocked, (y, v, key_padding, *blocked))
        if pad_v:  # the padded value columns come out zero: the site's output has the values' head dim
            y = g.call_function(operator.getitem, (y, (Ellipsis, slice(None, site.value_head_dim))))
        y = _in_memory_order_of(g, _from_bhsd(g, y, site.output_layout, q_in), out_old)
    for reader, old, same_shape in site.shape_readers:  # see AttentionSite.shape_readers
        view.info(reader).ref.replace_input_with(node[old], node[same_shape])
    name = out_old.name
    out_old.replace_all_uses_with(y)
    g.erase_node(out_old)
    y.name = name  # the fx namespace is freed by the erase above


def _in_memory_order_of(g: fx.Graph, y: fx.Node, original: fx.Node) -> fx.Node:
    """``y`` laid out in memory as the site's original output was. torch's SDPA returns (B, H, N, D) stored as
    (B, N, H, D), and a model may rely on it: JetMoE calls ``.view`` on the transposed output, which fails on
    a contiguous (B, H, N, D). The ops return contiguous tensors, so a permuted original costs one copy here,
    and the copy the model's own transpose-and-reshape would make disappears."""
    order = _memory_order(original)
    if order is None or order == sorted(order):
        return y
    inverse = [order.index(i) for i in range(len(order))]
    physical = g.call_method("contiguous", (g.call_method("permute", (y, order)),))
    return g.call_method("permute", (physical, inverse))


def _memory_order(node: fx.Node) -> list[int] | None:
    """The node's axes from outermost to innermost in memory: torch.export's fake value, or the strides a
    shape propagation recorded (symbolic_trace with example inputs); None where neither is there."""
    val = node.meta.get("val")
    if isinstance(val, torch.Tensor):
        try:
            return list(val.dim_order())
        except Exception:  # strides torch cannot order (unbacked symbols): keep the ops' own layout
            return None
    stride = getattr(node.meta.get("tensor_meta"), "stride", None)
    if stride and all(isinstance(st, int) for st in stride):
        return sorted(range(len(stride)), key=lambda i: -stride[i])  # stable: equal strides keep their order
    return None


def _operand(gm: fx.GraphModule, view, ref: ValueRef) -> fx.Node:
    """The fx node behind ``ref``; where the graph passed a Python number instead of a node (XLNet adds a
    literal 0 to its scores when it has no segment term), that number as a constant of the module."""
    if ref in view.value_of:
        return view.value_of[ref]
    if view.op(ref.node) == "flex_mask":  # a FlexAttention mask no structure was read in: computed whole
        return materialize(gm.graph, view.attrs(ref.node)["flex"])
    const = view.const(ref)
    if const is None:
        raise SiteNotApplicable(f"a mask term ({ref.node}) is neither a graph value nor a constant")
    return _constant(gm, gm.graph, const, "literal")


def _state_input(g: fx.Graph, site: AttentionSite, state) -> fx.Node:
    """A new trailing positional input carrying one site's state (after every existing input)."""
    last_input = [n for n in g.nodes if n.op == "placeholder"][-1]
    with g.inserting_after(last_input):
        node = g.placeholder(_identifier(state_name(site.name, state)))
    _plain_signature(g)
    return node


def _state_outputs(g: fx.Graph, site: AttentionSite, states, values) -> None:
    """Append the next states to the module's outputs (after the original ones, in state order)."""
    out = g.output_node()
    results = out.args[0]
    results = list(results) if isinstance(results, (tuple, list)) else [results]
    out.args = (tuple(results + list(values)),)
    _plain_signature(g)


def _plain_signature(g: fx.Graph) -> None:
    """Flat positional inputs and a flat tuple of outputs: the pytree signature of an exported module no
    longer holds once state inputs and outputs are added."""
    if type(g._codegen) is not fx.graph.CodeGen:
        g.set_codegen(fx.graph.CodeGen())


def _identifier(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)


def _constant(gm: fx.GraphModule, g: fx.Graph, array, what: str) -> fx.Node:
    """A pass's constant tensor as a buffer of the module (saved and exported with it)."""
    base = "attnopt_" + _identifier(what)
    name, i = base, 0
    while hasattr(gm, name):
        i += 1
        name = f"{base}_{i}"
    gm.register_buffer(name, torch.as_tensor(np.array(array, order="C")))  # ascontiguousarray makes 0-d 1-d
    return g.get_attr(name)


def finalize(loaded, kernels: set[str]) -> None:
    gm: fx.GraphModule = loaded.model
    gm.graph.eliminate_dead_code(is_impure_node=_impure)
    if _drop_empty_vmaps(gm.graph):
        gm.graph.eliminate_dead_code(is_impure_node=_impure)
    gm.graph.lint()
    gm.recompile()
    if type(gm.graph._codegen) is fx.graph.CodeGen and type(gm) is not fx.GraphModule:
        # State inputs changed the signature: an exported module's input checks (pytree specs, forward
        # hooks) no longer apply, so the result is a plain GraphModule over the same graph and weights.
        loaded.model = fx.GraphModule(gm, gm.graph, class_name="StreamingModule")


def _impure(n: fx.Node) -> bool:
    """fx's notion of side effects, less the export's shape assertions and dropout: those would keep
    the dead dense attention and its N×M mask construction alive (and running). Plus functorch's
    vmap nesting calls (``fx.functorch_nesting``), which fx does not count."""
    name = getattr(getattr(n.target, "overloadpacket", None), "__name__", "")
    if n.op == "call_function" and (name.startswith("_assert") or name in ("dropout", "native_dropout")):
        return False
    if functorch_nesting(n):  # the brackets; a batch dim added or removed is a value like any other
        return n.target.__name__ not in _VMAP_VALUES
    if _private_in_place(n):
        return False
    return n.is_impure()


_VMAP_VALUES = ("_add_batch_dim", "_remove_batch_dim")


def _drop_empty_vmaps(graph: fx.Graph) -> bool:
    """Erase the vmap brackets (``_vmap_increment_nesting`` ... ``_vmap_decrement_nesting``, and the
    ``lazy_load_decompositions`` call before each) that hold no op any more: a FlexAttention block mask's, once
    the call it fed is rewritten. Left in, they would be all that remains of it, and no ONNX exporter takes
    them. True where one went."""
    nodes, opened, erased = list(graph.nodes), [], set()
    for i, n in enumerate(nodes):
        name = getattr(n.target, "__name__", "") if functorch_nesting(n) else ""
        if name == "_vmap_increment_nesting":
            opened.append(i)
        elif name == "_vmap_decrement_nesting" and opened:
            start = opened.pop()
            region = [r for r in nodes[start:i + 1] if r not in erased]
            if all(functorch_nesting(r) and not r.users for r in region):
                before = nodes[start - 1] if start else None
                if before is not None and functorch_nesting(before) and not before.users \
                        and before.target.__name__ == "lazy_load_decompositions":
                    region.insert(0, before)
                for r in reversed(region):
                    graph.erase_node(r)
                erased.update(region)
    return bool(erased)


def _private_in_place(n: fx.Node) -> bool:
    """An in-place op whose target is a fresh intermediate nobody else reads (T5's ``relative_buckets +=``
    in its position-bias construction): removing it changes no input, buffer or live value. Visited
    after its later users, so those are already gone when dead. A reader of the target that feeds only this op
    (``x.index_put_(i, x.new_ones(...))`` in FlexAttention's create_block_mask) does not count."""
    schema = getattr(n.target, "_schema", None)
    if n.op != "call_function" or schema is None or not schema.is_mutable or not n.args:
        return False
    target = n.args[0]
    if not isinstance(target, fx.Node) or target.op != "call_function" \
            or any(u is not n and set(u.users) - {n} for u in target.users):
        return False
    mutated = [a for a in schema.arguments if a.alias_info is not None and a.alias_info.is_write]
    made = getattr(target.target, "_schema", None)
    fresh = made is not None and all(r.alias_info is None for r in made.returns)  # not a view of another tensor
    return fresh and len(mutated) == 1 and mutated[0].name == schema.arguments[0].name


def _check_layouts(site: AttentionSite) -> None:
    for layout, heads in ((site.query_layout, site.num_heads), (site.key_layout, site.kv_num_heads)):
        if layout in (LAYOUT_BSD, LAYOUT_FLAT, "(bh)ds") and not isinstance(heads, int):
            raise SiteNotApplicable("the head count is not known statically")


def to_bhsd(x, layout: str, heads, call=None):
    """``x`` in ``layout`` as (B, H, S, D): any order of b, h, s, d; bsd; (bh)sd; (bh)ds.

    ``call(fn, args)`` applies each torch function: an fx graph's ``call_function`` builds the nodes of a
    rewrite; the default runs them on a tensor (the tuner reads q and k out of a calibration run this way).
    """
    call = call or (lambda fn, args: fn(*args))
    if extra_axis_count(layout):  # (B, H, X.., ...) -> (B, H·X.., ...): site.EXTRA_AXIS
        x = call(torch.flatten, (x, 1, 1 + extra_axis_count(layout)))
        layout = folded(layout)
    if layout == LAYOUT_BHSD:
        return x
    if layout == LAYOUT_BSD:
        x = call(torch.unflatten, (x, -1, (heads, -1)))
        return call(torch.permute, (x, (0, 2, 1, 3)))
    if layout in (LAYOUT_FLAT, "(bh)ds"):
        if layout == "(bh)ds":
            x = call(torch.transpose, (x, 1, 2))
        return call(torch.unflatten, (x, 0, (-1, heads)))
    if permutes_bhsd(layout):
        return call(torch.permute, (x, tuple(layout.index(c) for c in LAYOUT_BHSD)))
    raise SiteNotApplicable(f"unsupported tensor layout {layout!r}")


def with_score_parts(site: AttentionSite, q, k, parts: list, call=None):
    """(B, H, N, D) q and k with the site's score parts (site.ScorePart) concatenated along the head dim, each
    part's q scaled by its factor over the site's scale; ``parts`` holds each part's (query, key) as the site
    names them. ``call`` as in ``to_bhsd``."""
    call = call or (lambda fn, args: fn(*args))
    for part, factor, (q2, k2) in zip(site.score_parts, site.score_part_factors(), parts):
        q2 = call(operator.mul, (to_bhsd(q2, part.query_layout, site.num_heads, call), factor))
        k2 = to_bhsd(k2, part.key_layout, site.kv_num_heads, call)
        q = call(torch.cat, ([q, call(torch.Tensor.type_as, (q2, q))], -1))
        k = call(torch.cat, ([k, call(torch.Tensor.type_as, (k2, k))], -1))
    return q, k


def _from_bhsd(g: fx.Graph, y: fx.Node, layout: str, query: fx.Node) -> fx.Node:
    """(B, H, N, D) ``y`` in the output's ``layout``; extra batching axes unfold as in ``query``, the site's q."""
    if extra_axis_count(layout):
        if folded(layout) != LAYOUT_BHSD:
            raise SiteNotApplicable(f"unsupported output layout {layout!r}")
        return g.call_function(unfold_heads, (y, query))
    if layout == LAYOUT_BHSD:
        return y
    if layout == LAYOUT_BSD:
        y = g.call_function(torch.permute, (y, (0, 2, 1, 3)))
        return g.call_function(torch.flatten, (y, 2))
    if layout == LAYOUT_FLAT:
        return g.call_function(torch.flatten, (y, 0, 1))
    if permutes_bhsd(layout):
        return g.call_function(torch.permute, (y, tuple(LAYOUT_BHSD.index(c) for c in layout)))
    raise SiteNotApplicable(f"unsupported output layout {layout!r}")


def _sizes(node: fx.Node) -> list:
    """The target sizes of a view/reshape node, ``x.view(a, b)`` or ``x.view([a, b])``."""
    rest = node.args[1:]
    return list(rest[0]) if len(rest) == 1 and isinstance(rest[0], (list, tuple)) else list(rest)


def _through_view(term: torch.Tensor, q: torch.Tensor, k: torch.Tensor, into: list, back: list,
                  flat: bool) -> torch.Tensor:
    """A term added to the scores viewed as ``into`` (MaskTerm.view) as one of the scores: broadcast to the view,
    then reshaped as the model reshapes the scores back (to ``back``). q and k are (B, H, N, D) and (B, Hkv, M, D);
    the scores were (B·H, N, M) if ``flat``, else (B, H, N, M)."""
    scores = (q.shape[0] * q.shape[1], q.shape[2], k.shape[2]) if flat else (*q.shape[:3], k.shape[2])
    sizes = [int(s) for s in into]
    if -1 in sizes:  # expand() reads −1 as "keep", a view as "infer"
        known = math.prod(s for s in sizes if s != -1)
        sizes[sizes.index(-1)] = math.prod(scores) // known
    term = term.reshape((1,) * (len(sizes) - term.dim()) + tuple(term.shape))
    return term.expand(sizes).reshape([int(s) for s in back])


def unfold_heads(y: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """(B, H·X.., N, D) -> (B, H, X.., N, D), the heads and extra axes of the site's ``query`` (site.EXTRA_AXIS)."""
    return y.unflatten(1, query.shape[1:-2])


def fold_term(term: torch.Tensor, query: torch.Tensor, rank: int) -> torch.Tensor:
    """A term added to scores (B, H, X.., N, M) as the same term on the folded scores (B, H·X.., N, M).

    A term shared by every head and extra axis stays shared (extent 1, nothing materialised); one that
    varies along any of them is first broadcast to all of them, so that it folds as q did."""
    term = term.reshape((1,) * (rank - term.dim()) + tuple(term.shape))
    if any(s != 1 for s in term.shape[1:-2]):
        term = term.expand(term.shape[0], *query.shape[1:-2], *term.shape[-2:])
    return term.flatten(1, rank - 3)


def _mask_to_4d(g: fx.Graph, m: fx.Node, rank, site: AttentionSite, query: fx.Node) -> fx.Node:
    if site.extra_axes:
        return g.call_function(fold_term, (m, query, 4 + site.extra_axes))
    if rank is None:
        raise SiteNotApplicable("the mask's rank is unknown")
    if site.query_layout == LAYOUT_FLAT and rank == 3:
        return g.call_function(torch.unflatten, (m, 0, (-1, site.num_heads)))
    for _ in range(4 - rank):
        m = g.call_function(torch.unsqueeze, (m, 0))
    if rank > 4:
        raise SiteNotApplicable(f"a {rank}-D mask")
    return m
