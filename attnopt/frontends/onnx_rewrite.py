"""ONNX graph surgery: apply an OpCall to an onnx_ir model.

A site's q/k/v arrive in whatever layout the exporter left them (bhsd, bshd,
(b·h)sd, bsd with heads folded into the hidden size...). Every ai.attnopt op
takes (B, H, N, D) q and (B, Hkv, M, D) k/v, a 4-D additive remainder mask and
an additive (B, M) key padding (the op contract in kernels/spec.py), so the
surgery is: bring q/k/v/masks into that form, call the op once per head group
(attnopt.frontends.lowering decides the calls), concatenate over heads, bring
the result back into the site's output layout, and rewire the site's output
value, which keeps its name so validation can compare it per site.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx_ir import tape as ir_tape

from ..atomic import write_atomic
from ..errors import SiteNotApplicable
from ..match import MASK_FILL_MAX
from ..onnx_compat import DOMAIN, IR_VERSION, MIN_OPSET
from ..site import (LAYOUT_BHSD, LAYOUT_BSD, LAYOUT_FLAT, MASK_ADDITIVE, MASK_BOOLEAN,
                    MASK_BOOLEAN_BLOCKED, MASK_KEY_END, MASK_NONZERO_KEEP, AttentionSite, ValueRef, extra_axis_count,
                    folded, permutes_bhsd)
from ..kernels.ort_cuda import PORTABLE, LoweringFacts, choose, lowering_attrs
from .lowering import blocked_rows, head_dim_padding, lower, mask_terms, state_dims, state_name


def apply(loaded, call, target: str = PORTABLE) -> list[str]:
    """Replace ``call.site``; returns why a requested lowering was not used, one line per head group that fell back.

    ``target`` "ort-cuda" emits a variant's contrib-op lowering (kernels.ort_cuda) where it is
    exact for this call, and the portable body elsewhere.
    """
    site: AttentionSite = call.site
    model: ir.Model = loaded.model
    view = loaded.view

    opset = model.opset_imports.get("", 0)
    if opset < MIN_OPSET:
        raise SiteNotApplicable(f"the model's opset {opset} is below {MIN_OPSET}, which ai.attnopt ops need")
    groups = lower(call)

    value = view.value_of
    out_old: ir.Value = value[site.output]
    anchor: ir.Node = out_old.producer()
    b = _Builder(site.name)  # every node and value it adds is named after the site, so errors can name it

    q_in = b.projected(value, site.query, site.query_projection)
    q = b.to_bhsd(q_in, site.query_layout, site.num_heads, site.head_dim)
    k = b.to_bhsd(b.projected(value, site.key, site.key_projection), site.key_layout, site.kv_num_heads,
                  site.head_dim)
    v = b.to_bhsd(b.projected(value, site.value, site.value_projection), site.value_layout, site.kv_num_heads,
                  site.value_head_dim or site.head_dim)
    if site.query_factor is not None:  # (q·f)·kᵀ = f·(q·kᵀ): SwinV2's per-head logit scale
        f = b.mask_to_4d(value[site.query_factor], view.rank(site.query_factor), site, q_in)
        q = b.op("Mul", [q, b.op("CastLike", [f, q])])
    for part, factor in zip(site.score_parts, site.score_part_factors()):  # see site.ScorePart
        q2 = b.to_bhsd(value[part.query], part.query_layout, site.num_heads, part.head_dim)
        q2 = b.op("Mul", [q2, b.op("CastLike", [b.const(np.array(factor, np.float32)), q2])])
        k2 = b.to_bhsd(value[part.key], part.key_layout, site.kv_num_heads, part.head_dim)
        q = b.op("Concat", [q, b.op("CastLike", [q2, q])], {"axis": 3})
        k = b.op("Concat", [k, b.op("CastLike", [k2, k])], {"axis": 3})
    q, k, v = b.own(q), b.own(k), b.own(v)
    pad_qk, pad_v = head_dim_padding(site)
    q, k, v = b.wider(q, pad_qk), b.wider(k, pad_qk), b.wider(v, pad_v)
    b.keys = k
    dtype = value[site.query].dtype or ir.DataType.FLOAT
    masks, kp = mask_terms(call)
    mask = None
    for term in masks:
        t = b.additive(value[term.value], term.kind, dtype, term.factor, term.fill)
        rank = view.rank(term.value)
        if term.view is not None:
            t, rank = b.through_view(t, rank, view, term.view, q, k)
        t = b.mask_to_4d(t, rank, site, q_in)
        mask = t if mask is None else b.op("Add", [mask, t])
    if mask is None:
        mask = b.const(np.zeros((1, 1, 1, 1), dtype.numpy()))
    mask = b.own(mask)
    if kp is not None:
        key_padding = b.op("Reshape", [b.additive(value[kp.value], kp.kind, dtype, kp.factor, kp.fill),
                                       b.const(np.array([0, -1], np.int64))])  # (B, M) or (B, 1, 1, M) -> (B, M)
    else:
        key_padding = b.const(np.zeros((1, 1), dtype.numpy()))

    # learned sink logits (GPT-OSS): the site's (B | 1, H, N | 1, 1) value at batch 0, query 0 as the op's float
    # (H,) (site.sink_logits); none is an empty vector
    if site.sink_logits is not None:
        first = b.op("Slice", [value[site.sink_logits], b.ints(0, 0), b.ints(1, 1), b.ints(0, 2)])
        sinks = b.op("Cast", [b.op("Reshape", [first, b.ints(-1)])], {"to": ir.DataType.FLOAT})
    outputs, fallbacks = [], []
    for g in groups:
        gq, gk, gv, gmask = q, k, v, mask
        gsinks = []
        if g.spec.serves_sink_logits:
            gsinks = [b.const(np.zeros(0, np.float32)) if site.sink_logits is None else
                      sinks if g.q_heads is None else b.cut(sinks, *g.q_heads)]
        if g.q_heads is not None:
            gq = b.heads(q, *g.q_heads)
            gk, gv = b.heads(k, *g.kv_heads), b.heads(v, *g.kv_heads)
            if masks:
                gmask = b.heads_if_many(mask, *g.q_heads, site.num_heads)
        tensors = [b.initializer(model, arr, f"{g.spec.name}_{name}") for name, arr in g.tensors]
        states = [_state_input(model, site, st, dtype) for st in g.state]
        attrs = {n: int(x) if isinstance(x, bool) else x for n, x in g.attrs.items()}
        heads = site.num_heads if g.q_heads is None else g.q_heads[1] - g.q_heads[0]
        kv_heads = site.kv_num_heads if g.kv_heads is None else g.kv_heads[1] - g.kv_heads[0]
        if site.extra_axes:  # the op's heads are the folded (head, extra axes) pairs: a count no lowering reads
            heads = kv_heads = None
        facts = LoweringFacts(dict(g.attrs), heads, kv_heads, bool(masks),
                              self_attention=bool(site.is_self_attention) and site.past_len is None,
                              q_len=site.q_len, kv_len=site.kv_len, sink_logits=site.sink_logits is not None)
        op_type, fallback = choose(g.spec.name, target, facts)
        if fallback:
            fallbacks.append(fallback)
        if op_type is None or g.state:
            op_type = g.spec.onnx_op_type
        else:
            attrs.update(lowering_attrs(g.spec.name, heads))
        results = b.tape.op_multi_out(op_type, [gq, gk, gv, gmask, key_padding, *gsinks, *tensors, *states],
                                      attrs, domain=DOMAIN, name=b.name("attn"), num_outputs=1 + len(g.state))
        y = results[0]
        y.name = b.name("y")
        for st, value in zip(g.state, results[1:]):
            value.name = state_name(site.name, st, next_=True)
            value.dtype = states[g.state.index(st)].dtype
            value.shape = ir.Shape(state_dims(site, st))
            model.graph.outputs.append(value)
        outputs.append(y)
    y = outputs[0] if len(outputs) == 1 else b.op("Concat", outputs, {"axis": 1})
    blocked = blocked_rows(call, masks)
    if blocked is not None:
        y = b.mean_where_blocked(y, v, key_padding, *blocked)
    if pad_v:  # the padded value columns come out zero: the site's output has the values' head dim
        y = b.op("Slice", [y, b.const(np.array([0], np.int64)), b.const(np.array([site.value_head_dim], np.int64)),
                           b.const(np.array([3], np.int64))])
    y = b.from_bhsd(y, site.output_layout, site.num_heads, site.value_head_dim or site.head_dim, q_in)

    anchor.graph.insert_before(anchor, b.tape.nodes)
    for reader, old, same_shape in site.shape_readers:  # see AttentionSite.shape_readers
        node: ir.Node = view.info(reader).ref
        for i, x in enumerate(node.inputs):
            if x is value[old]:
                node.replace_input_with(i, value[same_shape])
    name = out_old.name
    out_old.name = b.name("dense")  # the dead dense value frees its name for the new one
    out_old.replace_all_uses_with(y, replace_graph_outputs=True)
    y.name = name
    if out_old.dtype is not None:  # a contrib op's output may have no type: leave y's unset, not empty
        y.dtype, y.shape = out_old.dtype, out_old.shape
    return list(dict.fromkeys(fallbacks))


def _state_input(model: ir.Model, site: AttentionSite, state, dtype: ir.DataType) -> ir.Value:
    """A new model input that carries one site's state into the call."""
    value = ir.Value(name=state_name(site.name, state), shape=ir.Shape(state_dims(site, state)),
                     type=ir.TensorType(dtype if state.dtype == "query" else ir.DataType.INT64))
    model.graph.inputs.append(value)
    return value


def finalize(loaded, kernels: set[str]) -> None:
    """Drop dead dense nodes, attach the op bodies, keep the model loadable by stock onnxruntime."""
    from onnx_ir.passes.common import RemoveUnusedNodesPass
    from attnopt.kernels.onnx_functions import attach_functions
    from attnopt.kernels.registry import get_variant

    model: ir.Model = loaded.model
    RemoveUnusedNodesPass()(model)
    # What the graph calls: a kernel's portable body, or its ort-cuda lowering where one was emitted.
    called = {n.op_type for n in model.graph.all_nodes() if n.domain == DOMAIN}
    attach_functions(model, sorted(called or {get_variant(k).onnx_op_type for k in kernels}))
    model.ir_version = min(model.ir_version or IR_VERSION, IR_VERSION)


def has_external_data(model: ir.Model) -> bool:
    """Whether some weights live in files beside the model rather than inside it."""
    return any(isinstance(v.const_value, ir.ExternalTensor) for v in model.graph.initializers.values())


def save_atomic(model: ir.Model, path) -> None:
    """Write ``model`` at ``path``; weights kept outside the model go to ``<path>.data`` beside it.

    A model whose weights live in external files keeps relative references to them,
    which would dangle in another folder: those weights are written out again, into a
    scratch folder beside the target, and both files are moved into place whole.
    """
    if not has_external_data(model):
        write_atomic(path, lambda tmp: ir.save(model, tmp))
        return
    import os
    import tempfile
    from pathlib import Path
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent) as tmp:
        data = f"{path.name}.data"
        ir.save(model, os.path.join(tmp, path.name), external_data=data)
        os.replace(os.path.join(tmp, data), path.parent / data)
        os.replace(os.path.join(tmp, path.name), path)


class _Builder:
    """Emits the layout glue for one site with deterministic value names."""

    def __init__(self, prefix: str):
        self.tape = ir_tape.Tape()
        self.prefix = prefix
        self.count = 0
        self.made: set[ir.Value] = set()  # the values this builder's nodes compute
        self.packed: dict[tuple, ir.Value] = {}  # one packed projection per (source, pick, weight, bias)
        self.keys: ir.Value | None = None  # the site's (B, Hkv, M, D) keys: a mask given as key counts needs M

    def name(self, what: str) -> str:
        self.count += 1
        return f"{self.prefix}/attnopt_{what}_{self.count}"

    def op(self, op_type: str, inputs, attrs=None, domain: str = "") -> ir.Value:
        out = self.tape.op(op_type, inputs, attrs, domain=domain, name=self.name(op_type.lower()))
        out.name = self.name(op_type.lower() + "_out")
        self.made.add(out)
        return out

    def prefix_sum(self, x: ir.Value) -> ir.Value:
        """x's running sum along axis −2, as ``ai.attnopt::PrefixSum`` (``kernels.prefix_sum_onnx``: onnxruntime's
        CUDA CumSum is O(L²) along its axis)."""
        return self.op("PrefixSum", [x], domain=DOMAIN)

    def const(self, array) -> ir.Value:
        return self.op("Constant", [], {"value": ir.tensor(np.asarray(array), name=self.name("c"))})

    def ints(self, *xs: int) -> ir.Value:
        """An int64 vector constant (starts, ends, axes, shapes)."""
        return self.const(np.array(xs, np.int64))

    def transpose(self, x, perm) -> ir.Value:
        return x if list(perm) == list(range(len(perm))) else self.op("Transpose", [x], {"perm": list(perm)})

    def projected(self, value_of: dict, ref, projection) -> ir.Value:
        """The value a site reads as q, k or v: ``value_of[ref]``, or what a fused op derives from its
        inputs (site.Projection): pick(source) @ weight[:, start:stop] + bias[start:stop].

        With a weight, the packed product is computed once and cut, as the fused op does, so q, k
        and v of one site share one MatMul (and bias Add).
        """
        if projection is None:
            return value_of[ref]
        x = value_of[projection.source]
        if projection.pick is not None:
            axis, index = projection.pick
            x = self.op("Gather", [x, self.const(np.array(index, np.int64))], {"axis": axis})
        if projection.weight is None:
            if projection.bias is not None:
                x = self.op("Add", [x, self.cut(value_of[projection.bias], projection.start, projection.stop)])
            return x
        key = (projection.source, projection.pick, projection.weight, projection.bias)
        if key not in self.packed:
            packed = self.op("MatMul", [x, value_of[projection.weight]])
            if projection.bias is not None:
                packed = self.op("Add", [packed, value_of[projection.bias]])
            self.packed[key] = packed
        return self.cut(self.packed[key], projection.start, projection.stop)

    def cut(self, x: ir.Value, start: int, stop: int | None) -> ir.Value:
        """x[..., start:stop]."""
        stop = np.iinfo(np.int64).max if stop is None else stop
        return self.op("Slice", [x, self.const(np.array([start], np.int64)), self.const(np.array([stop], np.int64)),
                                 self.const(np.array([-1], np.int64))])

    def own(self, x: ir.Value) -> ir.Value:
        """``x`` as a value only the op reads: through a no-op Reshape (which onnxruntime aliases, no copy)
        when another node of the model computes it.

        The op bodies cast their inputs to float32 and read them inside If branches. When such a
        value is also read elsewhere and a Shape of it is constant folded (the site's leftover
        output-reshape glue: Swin, TorchScript), onnxruntime 1.31's CastElimination and If-branch
        constant folding together leave a reference to the value without its producer, and the
        session refuses the model ("Node input ... is not a graph input, initializer, or output of
        a previous node"). A value
        private to the op is never seen by those rewrites from the outside. Graph inputs and
        initializers have no producer to lose.
        """
        if x.producer() is None or x in self.made:
            return x
        return self.op("Reshape", [x, self.const(np.zeros(4, np.int64))])  # op inputs here are all 4-D

    def to_bhsd(self, x: ir.Value, layout: str, heads, head_dim) -> ir.Value:
        if extra_axis_count(layout):  # (B, H, X.., ...) -> (B, H·X.., ...): site.EXTRA_AXIS
            tail = self.op("Shape", [x], {"start": -2})
            x = self.op("Reshape", [x, self.op("Concat", [self.const(np.array([0, -1], np.int64)), tail], {"axis": 0})])
            layout = folded(layout)
        if layout in (LAYOUT_BSD,):
            _need_int(heads, "head count")
            x = self.op("Reshape", [x, self.const(np.array([0, 0, heads, -1], np.int64))])
            return self.transpose(x, [0, 2, 1, 3])
        if layout in (LAYOUT_FLAT, "(bh)ds"):
            if layout == "(bh)ds":
                x = self.transpose(x, [0, 2, 1])
            _need_int(heads, "head count")
            tail = self.op("Slice", [self.op("Shape", [x]), self.const(np.array([1], np.int64)),
                                     self.const(np.array([3], np.int64))])
            shape = self.op("Concat", [self.const(np.array([-1, heads], np.int64)), tail], {"axis": 0})
            return self.op("Reshape", [x, shape])
        if permutes_bhsd(layout):
            return self.transpose(x, [layout.index(c) for c in LAYOUT_BHSD])
        raise SiteNotApplicable(f"unsupported tensor layout {layout!r}")

    def from_bhsd(self, y: ir.Value, layout: str, heads, head_dim, query: ir.Value) -> ir.Value:
        """(B, H, N, D) ``y`` in the output's ``layout``; extra batching axes unfold as in ``query``, the site's q."""
        if extra_axis_count(layout):
            if folded(layout) != LAYOUT_BHSD:
                raise SiteNotApplicable(f"unsupported output layout {layout!r}")
            shape = self.op("Concat", [self.op("Shape", [query], {"end": -1}), self.op("Shape", [y], {"start": -1})],
                            {"axis": 0})
            return self.op("Reshape", [y, shape])
        if layout == LAYOUT_BHSD:
            return y
        if layout == LAYOUT_BSD:
            y = self.transpose(y, [0, 2, 1, 3])
            return self.op("Reshape", [y, self.const(np.array([0, 0, -1], np.int64))])
        if layout == LAYOUT_FLAT:
            tail = self.op("Slice", [self.op("Shape", [y]), self.const(np.array([2], np.int64)),
                                     self.const(np.array([4], np.int64))])
            shape = self.op("Concat", [self.const(np.array([-1], np.int64)), tail], {"axis": 0})
            return self.op("Reshape", [y, shape])
        if permutes_bhsd(layout):
            return self.transpose(y, [LAYOUT_BHSD.index(c) for c in layout])
        raise SiteNotApplicable(f"unsupported output layout {layout!r}")

    def additive(self, mask: ir.Value, kind: str, dtype: ir.DataType, factor: float = 1.0,
                 fill: float = float("-inf")) -> ir.Value:
        """One mask term as an additive float mask in ``dtype`` (booleans become 0/``fill``)."""
        np_dtype = dtype.numpy()
        with np.errstate(over="ignore"):  # a float32 finfo.min fill is -inf in float16
            zero, neg = self.const(np.zeros((), np_dtype)), self.const(np.array(fill, np_dtype))
        if kind == MASK_NONZERO_KEEP:
            mask, kind = self.op("Cast", [mask], {"to": ir.DataType.BOOL}), MASK_BOOLEAN
        elif kind == MASK_KEY_END:  # (B,) counts -> (B, M): key j kept iff j < count[b]
            if self.keys is None:
                raise SiteNotApplicable("a mask of key counts needs the site's keys")
            m = self.op("Squeeze", [self.op("Shape", [self.keys], {"start": 2, "end": 3})])
            positions = self.op("Range", [self.const(np.array(0, np.int64)), m, self.const(np.array(1, np.int64))])
            counts = self.op("Unsqueeze", [self.op("Cast", [mask], {"to": ir.DataType.INT64}),
                                           self.const(np.array([1], np.int64))])
            mask, kind = self.op("Less", [positions, counts]), MASK_BOOLEAN
        if kind in (MASK_BOOLEAN, MASK_BOOLEAN_BLOCKED):
            return self.op("Where", [mask, zero, neg] if kind == MASK_BOOLEAN else [mask, neg, zero])
        if kind != MASK_ADDITIVE:
            raise SiteNotApplicable(f"unknown mask kind {kind!r}")
        if mask.dtype is not None and mask.dtype != dtype:
            mask = self.op("Cast", [mask], {"to": dtype})
        if factor != 1.0:
            mask = self.op("Mul", [mask, self.const(np.array(factor, np_dtype))])
        return mask

    def mean_where_blocked(self, y: ir.Value, v: ir.Value, key_padding: ir.Value, causal: bool,
                           window: int, groups: tuple = ()) -> ir.Value:
        """``fx_rewrite.mean_where_blocked`` in ONNX ops: y (B, H, N, D) with the rows that key_padding (additive
        (B | 1, M)) leaves no key replaced by the mean of every value, or with ``groups`` of the first group of
        key classes that holds a key (``lowering.blocked_rows``)."""
        i64 = ir.DataType.INT64
        kept_keys = self.op("Greater", [key_padding, self.op("CastLike", [
            self.const(np.array(MASK_FILL_MAX, np.float32)), key_padding])])
        kept = self.op("Squeeze", [self.prefix_sum(self.op("Unsqueeze", [self.op("Cast", [kept_keys], {"to": i64}),
                                                                         self.ints(2)])), self.ints(2)])
        zero = self.const(np.array(0, np.int64))
        n = self.op("Shape", [y], {"start": 2, "end": 3})
        m = self.op("Shape", [v], {"start": 2, "end": 3})
        pos = self.op("Range", [self.op("Squeeze", [self.op("Sub", [m, n])]), self.op("Squeeze", [m]),
                                self.const(np.array(1, np.int64))])
        if causal:
            seen = self.op("Gather", [kept, pos], {"axis": 1})
            if window:
                before = self.op("Sub", [pos, self.const(np.array(window, np.int64))])  # the last key left out
                earlier = self.op("Gather", [kept, self.op("Max", [before, zero])], {"axis": 1})
                seen = self.op("Sub", [seen, self.op("Where", [self.op("GreaterOrEqual", [before, zero]), earlier,
                                                               zero])])
        else:
            seen = self.cut(kept, -1, None)  # every key's count: (B | 1, 1)
        blocked = self.op("Unsqueeze", [self.op("Equal", [seen, zero]), self.ints(1, 3)])  # (B | 1, 1, N | 1, 1)
        if groups:
            mean = self._mean_of_first_group(v, kept_keys, pos, window, groups)
        else:  # the mean over the keys: (B, Hkv, 1, D)
            mean = self.op("Div", [self.op("ReduceSum", [v, self.ints(2)], {"keepdims": 1}),
                                   self.op("CastLike", [m, v])])
        # each query head reads its kv head's: (B, Hkv, N | 1, D) -> (B, H, N | 1, D)
        rep = self.op("Div", [self.op("Shape", [y], {"start": 1, "end": 2}),
                              self.op("Shape", [v], {"start": 1, "end": 2})])
        mean = self.op("Expand", [self.op("Unsqueeze", [mean, self.ints(2)]),
                                  self.op("Concat", [self.ints(1, 1), rep, self.ints(1, 1)], {"axis": 0})])
        mean = self.op("Reshape", [mean, self.op("Concat", [self.op("Shape", [y], {"start": 0, "end": 2}),
                                                            self.op("Shape", [mean], {"start": 3})], {"axis": 0})])
        return self.op("Where", [blocked, self.op("CastLike", [mean, y]), y])

    def _mean_of_first_group(self, v: ir.Value, kept_keys: ir.Value, pos: ir.Value, window: int,
                             groups: tuple) -> ir.Value:
        """``fx_rewrite._mean_of_first_group`` in ONNX ops: (B, Hkv, N, D) float32, from running sums along the
        keys of v with a column of ones appended (only sites whose blocked rows need more than the mean of every
        key pay them)."""
        f32 = ir.DataType.FLOAT
        vf = self.op("Cast", [v], {"to": f32})
        ones = self.op("ConstantOfShape", [self.op("Concat", [self.op("Shape", [vf], {"end": 3}), self.ints(1)],
                                                   {"axis": 0})], {"value": ir.tensor(np.ones(1, np.float32))})
        v1 = self.op("Concat", [vf, ones], {"axis": -1})
        kept_col = self.op("Unsqueeze", [self.op("Cast", [kept_keys], {"to": f32}), self.ints(1, 3)])  # (B|1,1,M,1)
        run_all = self.prefix_sum(v1)
        run_kept = self.prefix_sum(self.op("Mul", [v1, kept_col]))
        zero_i, zero_f = self.const(np.array(0, np.int64)), self.const(np.array(0, np.float32))

        def upto(run, i):  # the running sum up to key i (0 before the first key), per query row
            got = self.op("Gather", [run, self.op("Max", [i, zero_i])], {"axis": 2})
            return self.op("Where", [self.op("Unsqueeze", [self.op("GreaterOrEqual", [i, zero_i]), self.ints(1)]),
                                     got, zero_f])

        lasts = {}

        def last(run):  # the running sum over every key: one Slice a sum, however many classes read it
            if id(run) not in lasts:
                lasts[id(run)] = self.op("Slice", [run, self.ints(-1), self.ints(np.iinfo(np.int64).max),
                                                   self.ints(2)])
            return lasts[id(run)]

        minus_one = self.const(np.array(-1, np.int64))
        old = (self.op("Max", [self.op("Sub", [pos, self.const(np.array(window, np.int64))]), minus_one]) if window
               else self.op("Add", [self.op("Sub", [pos, pos]), minus_one]))  # the last key j <= p − W
        all_p, kept_p, all_old, kept_old = (upto(r, i) for r, i in ((run_all, pos), (run_kept, pos),
                                                                     (run_all, old), (run_kept, old)))
        sums = {  # class: the sum of its values, then its key count: (B, Hkv, N, D + 1), built on first use
            "past": lambda: self.op("Sub", [all_p, all_old]),
            "older": lambda: self.op("Sub", [all_old, kept_old]),
            "older_kept": lambda: kept_old,
            "future": lambda: self.op("Add", [self.op("Sub", [self.op("Sub", [last(run_all), last(run_kept)]),
                                                              all_p]), kept_p]),
            "future_kept": lambda: self.op("Sub", [last(run_kept), kept_p]),
        }
        mean, chosen = None, None
        for group in groups:
            total = sums[group[0]]()
            for c in group[1:]:
                total = self.op("Add", [total, sums[c]()])
            count = self.op("Slice", [total, self.ints(-1), self.ints(np.iinfo(np.int64).max), self.ints(3)])
            value = self.op("Div", [self.op("Slice", [total, self.ints(0), self.ints(-1), self.ints(3)]),
                                    self.op("Max", [count, self.const(np.array(1, np.float32))])])
            has = self.op("Greater", [count, zero_f])
            if mean is None:
                mean, chosen = self.op("Where", [has, value, zero_f]), has
            else:
                take = self.op("And", [self.op("Not", [chosen]), has])
                mean, chosen = self.op("Where", [take, value, mean]), self.op("Or", [chosen, take])
        return mean

    def through_view(self, mask: ir.Value, rank, view, pair: tuple[str, str], q: ir.Value, k: ir.Value):
        """A term added to the scores viewed in another shape (MaskTerm.view) as one of the scores: broadcast to
        the view's shape, then reshaped as the model reshapes the scores back. -> (term, its rank)."""
        into, back = (view.info(nid).ref for nid in pair)
        if into.op_type != "Reshape" or back.op_type != "Reshape" or rank is None:
            raise SiteNotApplicable("a term added to a view of the scores the rewrite cannot read back")
        q_shape, k_shape = self.op("Shape", [q]), self.op("Shape", [k])
        heads_dims = self.op("Slice", [q_shape, self.ints(0), self.ints(3)])
        if view.rank(view.input(pair[0], 0)) == 3:  # folded (B·H, N, M) scores
            bh = self.op("Mul", [self.op("Slice", [q_shape, self.ints(0), self.ints(1)]),
                                 self.op("Slice", [q_shape, self.ints(1), self.ints(2)])])
            heads_dims = self.op("Concat", [bh, self.op("Slice", [q_shape, self.ints(2), self.ints(3)])], {"axis": 0})
        scores = self.op("Concat", [heads_dims, self.op("Slice", [k_shape, self.ints(2), self.ints(3)])], {"axis": 0})
        shape = self._reshaped(view, pair[0], scores)
        out_rank = view.rank(ValueRef(pair[0], 0))
        if rank < out_rank:
            mask = self.op("Unsqueeze", [mask, self.const(np.arange(out_rank - rank, dtype=np.int64))])
        full = self.op("Expand", [mask, shape])
        return self.op("Reshape", [full, self._reshaped(view, pair[1], shape)]), view.rank(ValueRef(pair[1], 0))

    def _reshaped(self, view, nid: str, source: ir.Value) -> ir.Value:
        """The shape the Reshape ``nid`` gives a tensor of shape ``source``: its target with ONNX's −1 (infer the
        dim) resolved, and 0 (copy the dim) where the target is a constant; a computed target is taken to hold
        sizes (torch's exporters write view sizes so)."""
        node = view.info(nid).ref
        target = node.inputs[1]
        c = view.const(view.input(nid, 1))
        if c is not None and any(d is None for d in np.asarray(c, dtype=object).reshape(-1)):
            c = None  # a shape the View knows only in part (symbolic dims)
        if c is not None:
            c = np.asarray(c, np.int64).reshape(-1)
            if not node.attributes.get_int("allowzero", 0) and (c == 0).any():
                at = np.where(c == 0, np.arange(c.size), 0)
                target = self.op("Where", [self.const(c == 0), self.op("Gather", [source, self.const(at)]),
                                           self.const(c)])
            elif not (c == -1).any():
                return self.const(c)
        minus = self.op("Equal", [target, self.const(np.array(-1, np.int64))])
        known = self.op("ReduceProd", [self.op("Where", [minus, self.const(np.array(1, np.int64)), target])],
                        {"keepdims": 1})
        numel = self.op("ReduceProd", [source], {"keepdims": 1})
        return self.op("Where", [minus, self.op("Div", [numel, known]), target])

    def mask_to_4d(self, mask: ir.Value, rank, site: AttentionSite, query: ir.Value) -> ir.Value:
        if site.extra_axes:
            return self.fold_term(mask, 4 + site.extra_axes, query)
        if rank is None:
            raise SiteNotApplicable("the mask's rank is unknown")
        if site.query_layout == LAYOUT_FLAT and rank == 3:
            # (B*H, N, M) -> (B, H, N, M), matching how q was unflattened.
            _need_int(site.num_heads, "head count")
            tail = self.op("Slice", [self.op("Shape", [mask]), self.const(np.array([1], np.int64)),
                                     self.const(np.array([3], np.int64))])
            shape = self.op("Concat", [self.const(np.array([-1, site.num_heads], np.int64)), tail], {"axis": 0})
            return self.op("Reshape", [mask, shape])
        if rank < 4:
            return self.op("Unsqueeze", [mask, self.const(np.arange(4 - rank, dtype=np.int64))])
        if rank > 4:
            raise SiteNotApplicable(f"a {rank}-D mask")
        return mask

    def fold_term(self, term: ir.Value, scores_rank: int, query: ir.Value) -> ir.Value:
        """A term added to scores (B, H, X.., N, M) as the same term on the folded scores (B, H·X.., N, M),
        as ``fx_rewrite.fold_term``: shared across heads and extra axes it stays shared (extent 1); varying
        along any of them, it is broadcast to all of them first, so that it folds as q did."""
        # To the scores' rank by broadcasting against ones: it needs no rank known here (TorchScript's exports
        # leave some terms' ranks unknown), and a term is as small as the scores' rows at most.
        term = self.op("Expand", [term, self.const(np.ones(scores_rank, np.int64))])
        shape = self.op("Shape", [term])
        mid = self.op("Slice", [shape, self.ints(1), self.ints(-2)])
        shared = self.op("Equal", [self.op("ReduceMax", [mid], {"keepdims": 1}), self.ints(1)])
        mid = self.op("Where", [shared, mid,
                                self.op("Slice", [self.op("Shape", [query]), self.ints(1), self.ints(-2)])])
        ends = (self.op("Slice", [shape, self.ints(0), self.ints(1)]),
                self.op("Slice", [shape, self.ints(-2), self.ints(scores_rank)]))
        term = self.op("Expand", [term, self.op("Concat", [ends[0], mid, ends[1]], {"axis": 0})])
        return self.op("Reshape", [term, self.op("Concat", [ends[0], self.ints(-1), ends[1]], {"axis": 0})])

    def wider(self, x: ir.Value, columns: int) -> ir.Value:
        """A bhsd tensor with ``columns`` zero columns appended to its head dim (``lowering.head_dim_padding``)."""
        if not columns:
            return x
        return self.op("Pad", [x, self.const(np.array([0, 0, 0, 0, 0, 0, 0, columns], np.int64))])

    def heads(self, x: ir.Value, start: int, stop: int) -> ir.Value:
        """x[:, start:stop] (the head axis of a bhsd tensor)."""
        return self.op("Slice", [x, self.const(np.array([start], np.int64)), self.const(np.array([stop], np.int64)),
                                 self.const(np.array([1], np.int64))])

    def heads_if_many(self, mask: ir.Value, start: int, stop: int, heads: int) -> ir.Value:
        """A 4-D mask's rows for heads [start, stop) when it has one per head; a shared one as it is."""
        h = self.op("Shape", [mask], {"start": 1, "end": 2})
        # Slice end = stop for H heads, 1 for a broadcast head axis; start likewise 0.
        many = self.op("Equal", [h, self.const(np.array([heads], np.int64))])
        starts = self.op("Where", [many, self.const(np.array([start], np.int64)), self.const(np.array([0], np.int64))])
        ends = self.op("Where", [many, self.const(np.array([stop], np.int64)), self.const(np.array([1], np.int64))])
        return self.op("Slice", [mask, starts, ends, self.const(np.array([1], np.int64))])

    def initializer(self, model: ir.Model, array: np.ndarray, what: str) -> ir.Value:
        """A constant tensor input stored as a graph initializer (a pass's rotations or table)."""
        name = self.name(what)
        value = ir.Value(name=name, const_value=ir.tensor(np.ascontiguousarray(array), name=name))
        model.graph.register_initializer(value)
        return value


def _need_int(value, what: str) -> None:
    if not isinstance(value, int):
        raise SiteNotApplicable(f"the {what} is not known statically")
