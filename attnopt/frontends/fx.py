"""fx frontend: torch.fx graphs <-> View.

Handles torch-level graphs (``symbolic_trace``: call_function/call_method/
call_module on torch functions) and aten-level graphs (``torch.export``:
OpOverloads, with parameters and buffers lifted to placeholders). Both map
into the View vocabulary through the tables below.
"""

from __future__ import annotations

import operator
import re

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F

from ..graph import View, einsum_as_matmul, einsum_op, lift_einsum
from ..site import LAYOUT_BHSD, LAYOUT_BSD, ValueRef
from .fx_flex import flex_attrs, is_flex_attention
from .fx_singleton_axes import fold_singleton_detours

MAX_FOLD_ELEMENTS = 1 << 22

# torch-level callables -> canonical op.
FUNCTION_TABLE = {
    torch.matmul: "matmul", operator.matmul: "matmul", torch.bmm: "matmul",
    operator.mul: "mul", torch.mul: "mul", operator.truediv: "div", torch.div: "div",
    operator.add: "add", torch.add: "add", operator.sub: "sub", torch.sub: "sub", operator.neg: "neg",
    torch.softmax: "softmax", F.softmax: "softmax", torch.transpose: "transpose", torch.permute: "transpose",
    torch.reshape: "reshape", torch.where: "where", torch.masked_fill: "masked_fill",
    F.dropout: "dropout", torch.unsqueeze: "unsqueeze", torch.sqrt: "sqrt", torch.isnan: "isnan",
    F.scaled_dot_product_attention: "sdpa", operator.invert: "not", torch.logical_not: "not",
    operator.getitem: "getitem", torch.einsum: "einsum", torch.tanh: "tanh", F.linear: "linear",
    torch.baddbmm: "baddbmm", torch.maximum: "max",
}
# Tensor methods -> canonical op.
METHOD_TABLE = {
    "matmul": "matmul", "bmm": "matmul", "mul": "mul", "div": "div", "add": "add", "sub": "sub",
    "softmax": "softmax", "transpose": "transpose", "permute": "transpose", "view": "reshape",
    "reshape": "reshape", "expand": "expand", "unsqueeze": "unsqueeze", "squeeze": "squeeze",
    "masked_fill": "masked_fill", "float": "cast", "half": "cast", "bfloat16": "cast", "to": "cast",
    "type": "cast", "type_as": "cast", "contiguous": "identity", "clone": "identity",
    "logical_not": "not", "mul_": "mul", "div_": "div", "add_": "add", "masked_fill_": "masked_fill",
    "tanh": "tanh", "baddbmm": "baddbmm", "maximum": "max",
}
# aten OpOverloadPacket names -> canonical op.
ATEN_TABLE = {
    "matmul": "matmul", "bmm": "matmul", "mul": "mul", "div": "div", "add": "add", "sub": "sub",
    "neg": "neg", "sqrt": "sqrt", "reciprocal": "reciprocal", "_softmax": "softmax", "softmax": "softmax",
    "transpose": "transpose", "permute": "transpose", "view": "reshape", "_unsafe_view": "reshape",
    "reshape": "reshape", "expand": "expand", "unsqueeze": "unsqueeze", "squeeze": "squeeze",
    "slice": "slice", "cat": "concat", "where": "where", "masked_fill": "masked_fill",
    "_to_copy": "cast", "to": "cast", "type_as": "cast", "clone": "identity", "contiguous": "identity",
    "alias": "identity", "detach": "identity", "lift_fresh_copy": "identity", "dropout": "dropout",
    "native_dropout": "dropout", "isnan": "isnan", "logical_not": "not", "bitwise_not": "not",
    "scaled_dot_product_attention": "sdpa", "einsum": "einsum", "mm": "matmul", "tanh": "tanh",
    "linear": "linear", "addmm": "linear", "baddbmm": "baddbmm", "flatten": "reshape", "maximum": "max",
    # In-place forms as export records them (Falcon's `scores *= scale`); the graph still uses their result.
    "mul_": "mul", "div_": "div", "add_": "add", "masked_fill_": "masked_fill",
}


def graph_module_of(model) -> tuple[fx.GraphModule, dict]:
    """GraphModule plus the placeholder-name -> tensor map of lifted weights (export only)."""
    if isinstance(model, torch.export.ExportedProgram):
        sig = model.graph_signature
        weights = {}
        for name, target in {**sig.inputs_to_parameters, **sig.inputs_to_buffers}.items():
            weights[name] = model.state_dict.get(target, model.constants.get(target))
        for name, target in sig.inputs_to_lifted_tensor_constants.items():
            weights[name] = model.constants.get(target)
        return model.graph_module, weights
    return model, {}


def propagate_shapes(gm: fx.GraphModule, example_inputs) -> None:
    """Record tensor_meta on a symbolic_trace graph so the matcher sees shapes."""
    from torch.fx.passes.shape_prop import ShapeProp
    with torch.no_grad():
        ShapeProp(gm).propagate(*example_inputs)


def lift(model) -> View:
    gm, weights = graph_module_of(model)
    view = View(source=type(gm).__name__)
    refs: dict[fx.Node, ValueRef] = {}
    literal_ids = iter(range(1 << 30))

    def literal(value) -> ValueRef:
        nid = f"lit{next(literal_ids)}"
        view.add_node(nid, "constant", consts=[np.asarray(value)], shapes=[()], name=repr(value))
        return ValueRef(nid)

    live = _live_nodes(gm.graph)
    for node in gm.graph.nodes:
        if node.op == "output" or _is_assertion(node) or (node not in live and node.op != "placeholder"):
            continue
        op, attrs, ports = _canonical(gm, node)
        shape, dtype = _meta(node)
        const = None
        if node.op == "placeholder":
            if node.name in weights:
                op, const = "constant", _tensor_const(weights[node.name])
            else:
                op = "input"
        elif node.op == "get_attr":
            op, const = "constant", _tensor_const(_fetch_attr(gm, node.target))
        elif op not in ("sdpa", "mha"):
            const = _fold_lazily(view, refs, node, shape)
        einsum = attrs.pop("einsum", None)
        if einsum is not None and all(p in refs for p in ports):
            ports = lift_einsum(view, node.name, einsum, refs[ports[0]], refs[ports[1]], shape, dtype, _scope(node))
        elif einsum is not None:
            op, attrs = "other:einsum", {}
        baddbmm = attrs.pop("baddbmm", None)
        if baddbmm is not None:
            ports = _lift_baddbmm(view, refs, node, ports, baddbmm, shape, dtype, literal)
        flex_mask = attrs.pop("flex_mask", None)
        if flex_mask is not None:
            ports = [*ports, _lift_flex_mask(view, refs, node, flex_mask, literal)]
        view.add_node(node.name, op, attrs=attrs, ref=node, shapes=[shape], dtypes=[dtype],
                      consts=[const], name=_scope(node))
        # Nodes nested in list arguments (sizes, cat's inputs) are dependencies: ports 100+.
        nested = [a for arg in ports if isinstance(arg, (list, tuple)) for a in arg if isinstance(a, fx.Node)]
        for k, arg in enumerate(nested):
            if arg in refs:
                view.connect(refs[arg], node.name, 100 + k)
        for port, arg in enumerate(ports):
            if isinstance(arg, fx.Node):
                if arg in refs:
                    view.connect(refs[arg], node.name, port)
            elif isinstance(arg, ValueRef):  # a View-only node made for this one (baddbmm)
                view.connect(arg, node.name, port)
            elif isinstance(arg, (int, float, bool)) and not isinstance(arg, torch.SymInt):
                view.connect(literal(arg), node.name, port)
        refs[node] = ValueRef(node.name)
    dropped = fold_singleton_detours(view)  # decomposed einsums (fx_singleton_axes)
    view.value_of = {ref: n for n, ref in refs.items() if ref.node not in dropped}
    return view


def _lift_flex_mask(view: View, refs: dict, node: fx.Node, mask, literal) -> ValueRef:
    """The (B, H, N, M) boolean a FlexAttention call's mask_mod allows, as a View-only value (``fx_flex.FlexMask``)
    that the probe evaluates: its inputs are the block mask's lengths, the mask_mod's tensors and its integers
    (constants, which mask_analysis reads as lengths to probe)."""
    nid = f"{node.name}.mask"
    (b, h, n, _), (_, _, m, _) = _meta(node.args[0])[0], _meta(node.args[1])[0]
    view.add_node(nid, "flex_mask", attrs={"flex": mask}, shapes=[(b, h, n, m)], dtypes=["bool"], name=_scope(node))
    for port, x in enumerate((*mask.lengths, *mask.buffers, *mask.constants)):
        view.connect(refs[x] if isinstance(x, fx.Node) else literal(x), nid, port)
    return ValueRef(nid)


def _lift_baddbmm(view: View, refs: dict, node: fx.Node, ports: list, factors, shape, dtype, literal) -> list:
    """baddbmm(input, b1, b2, beta, alpha) = beta·input + alpha·(b1 @ b2) (BLOOM adds ALiBi this way).

    The node itself becomes the ``add``; the product and the two scalings are View-only
    nodes in front of it, so the matcher sees the same ops as in an ONNX export.
    """
    beta, alpha = factors
    inp, b1, b2 = ports

    def helper(suffix: str, op: str, inputs: list) -> ValueRef:
        nid = f"{node.name}.{suffix}"
        view.add_node(nid, op, shapes=[shape], dtypes=[dtype], name=_scope(node))
        for port, ref in enumerate(inputs):
            view.connect(ref, nid, port)
        return ValueRef(nid)

    product = helper("bmm", "matmul", [refs[b1], refs[b2]])
    if alpha != 1:
        product = helper("alpha", "mul", [product, literal(alpha)])
    term = refs[inp]
    if beta != 1:
        term = helper("beta", "mul", [term, literal(beta)])
    return [product, term]


# ----------------------------------------------------------------------------- op table

def _canonical(gm: fx.GraphModule, node: fx.Node) -> tuple[str, dict, list]:
    """-> (canonical op, attrs, positional inputs) for one fx node."""
    args, kwargs = list(node.args), dict(node.kwargs)
    packet = node.target.overloadpacket.__name__ if isinstance(node.target, torch._ops.OpOverload) else None
    if node.op == "call_function" and (packet == "cat" or node.target in (torch.cat, torch.concat)):
        return "concat", {"axis": args[1] if len(args) > 1 else kwargs.get("dim", 0)}, list(args[0])
    if node.op == "call_function" and is_flex_attention(node):
        return "sdpa", flex_attrs(gm, node, args), args[:3]
    if node.op == "call_function" and packet is not None:
        name = packet
        # aten.max.other is the elementwise maximum of two tensors; aten.max's other overloads reduce
        op = "max" if (name, node.target._overloadname) == ("max", "other") else \
            ATEN_TABLE.get(name, f"other:aten.{name}")
        if name == "rsub":  # rsub(x, y) = y − x, as export records ``1 - x``
            op, args = "sub", [args[1], args[0], *args[2:]]
    elif node.op == "call_function":
        op = FUNCTION_TABLE.get(node.target, f"other:{getattr(node.target, '__name__', node.target)}")
        if node.target is torch.max and len(args) == 2 and isinstance(args[1], fx.Node):
            op = "max"  # torch.max(a, b): elementwise (torch.max(x, dim) reduces)
    elif node.op == "call_method":
        op = METHOD_TABLE.get(node.target, f"other:Tensor.{node.target}")
    elif node.op == "call_module":
        return _module_op(gm, node)
    else:
        return node.op, {}, []

    attrs: dict = {}
    if op == "softmax":
        attrs["axis"] = args[1] if len(args) > 1 else kwargs.get("dim", -1)
        args = args[:1]
    elif op == "transpose":
        if node.target in (torch.permute, "permute") or "permute" in str(node.target):
            perm = args[1:] if node.op == "call_method" and len(args) > 2 else args[1]
            attrs["perm"] = [int(p) for p in perm]
        else:
            attrs["dims"] = (int(args[1]), int(args[2]))
        args = args[:1]
    elif op in ("reshape", "expand", "unsqueeze", "squeeze", "slice", "cast", "dropout", "identity", "not",
                "isnan", "sqrt", "neg", "reciprocal"):
        args = args[:1]
    elif op in ("add", "sub") and (kwargs.get("alpha", 1) != 1 or (len(args) > 2 and args[2] != 1)):
        op = f"other:{op}_alpha"
    elif op == "masked_fill":
        args = args[:2] + [args[2] if len(args) > 2 else kwargs.get("value")]
    elif op == "getitem":
        op, attrs = ("unsqueeze", {}) if _is_none_index(args[1]) else ("other:getitem", {})
        args = args[:1]
    elif op == "einsum":
        operands = list(args[1]) if len(args) == 2 and isinstance(args[1], (list, tuple)) else args[1:]
        form = einsum_as_matmul(str(args[0])) if len(operands) == 2 else None
        if form is None or not all(isinstance(o, fx.Node) for o in operands):
            return "other:einsum", {}, operands
        op, attrs = einsum_op(form)
        return op, {**attrs, "einsum": form}, operands
    elif op == "sdpa":
        return "sdpa", _sdpa_attrs(args, kwargs), args[:3] + [args[3] if len(args) > 3 else kwargs.get("attn_mask")]
    elif op == "linear" and _packet_name(node) == "addmm":
        args = [args[1], args[2], args[0]]  # addmm(bias, x, W): x first, like every other linear
    elif op == "baddbmm":
        beta, alpha = kwargs.get("beta", 1), kwargs.get("alpha", 1)
        if not all(isinstance(f, (int, float)) and isinstance(a, fx.Node) for f in (beta, alpha) for a in args[:3]):
            return "other:baddbmm", {}, args
        return "add", {"baddbmm": (beta, alpha)}, args[:3]
    return op, attrs, args


def _packet_name(node: fx.Node) -> str:
    return getattr(getattr(node.target, "overloadpacket", None), "__name__", "")


def _live_nodes(graph: fx.Graph) -> set:
    """Nodes the outputs depend on. Export leaves dead code (nn.MultiheadAttention's unused
    head-averaged weights); a dead reader must not make probabilities look escaped."""
    live, stack = set(), [n for n in graph.nodes if n.op == "output"]
    while stack:
        n = stack.pop()
        if n not in live:
            live.add(n)
            stack.extend(n.all_input_nodes)
    return live


def _is_assertion(node: fx.Node) -> bool:
    """Export's runtime checks (_assert_tensor_metadata, ...) only read a value; they are not users."""
    name = getattr(getattr(node.target, "overloadpacket", None), "__name__", "") or getattr(node.target, "__name__", "")
    return node.op == "call_function" and name.startswith(("_assert", "sym_constrain")) and not node.users


def _is_none_index(idx) -> bool:
    return isinstance(idx, tuple) and None in idx and all(i is None or i == slice(None) or i is Ellipsis for i in idx)


def _sdpa_attrs(args, kwargs) -> dict:
    def arg(i, name, default):
        return args[i] if len(args) > i else kwargs.get(name, default)
    dropout = arg(4, "dropout_p", 0.0)
    return {"form": "sdpa", "layout": LAYOUT_BHSD, "q_port": 0, "k_port": 1, "v_port": 2,
            "mask_port": 3 if arg(3, "attn_mask", None) is not None else None,
            "causal": bool(arg(5, "is_causal", False)), "scale": arg(6, "scale", None),
            "unsupported": "uses attention dropout" if isinstance(dropout, float) and dropout > 0 else None}


def functorch_nesting(node: fx.Node) -> bool:
    """A functorch pre-dispatch call: export records a ``torch.vmap`` (FlexAttention's ``create_block_mask``) as
    ``_vmap_increment_nesting`` ... ``_vmap_decrement_nesting``, calls with no users that the vmapped ops
    between them need. fx does not count them as side effects; whoever drops or skips dead nodes must."""
    return node.op == "call_function" and getattr(node.target, "__module__", "") == "torch._functorch.predispatch"


def _module_op(gm: fx.GraphModule, node: fx.Node) -> tuple[str, dict, list]:
    mod = gm.get_submodule(node.target)
    args = list(node.args)
    if isinstance(mod, torch.nn.Dropout):
        return "dropout", {}, args[:1]
    if isinstance(mod, torch.nn.Softmax):
        return "softmax", {"axis": mod.dim if mod.dim is not None else -1}, args[:1]
    if isinstance(mod, torch.nn.Linear):
        return "linear", {}, args[:1]  # the weight lives in the module: a projection of its input
    if isinstance(mod, torch.nn.MultiheadAttention):
        # Kept as a leaf: the projections are inside, like com.microsoft.Attention.
        return "mha", {
            "form": "nn-mha", "layout": LAYOUT_BSD if mod.batch_first else "sbd", "q_port": 0,
            "k_port": 1, "v_port": 2, "mask_port": None, "num_heads": mod.num_heads,
            "head_dim": mod.embed_dim // mod.num_heads, "causal": bool(node.kwargs.get("is_causal", False)),
            "unsupported": "nn.MultiheadAttention kept as a leaf module; trace through it to rewrite",
        }, args[:3]
    return f"other:module.{type(mod).__name__}", {}, args


# ----------------------------------------------------------------------------- facts

def _meta(node: fx.Node):
    val = node.meta.get("val")
    if isinstance(val, torch.Tensor):
        return tuple(_dim(d) for d in val.shape), _dtype_name(val.dtype)
    tm = node.meta.get("tensor_meta")
    if tm is not None and hasattr(tm, "shape"):
        return tuple(_dim(d) for d in tm.shape), _dtype_name(tm.dtype)
    return None, None


def _dim(d):
    return int(d) if isinstance(d, int) or (hasattr(d, "node") and d.node.is_nested_int() is False and
                                            _static(d)) else str(d)


def _static(d) -> bool:
    if isinstance(d, torch.SymInt):
        # never int(d) on a symbol: that guards it, and the guard specialises the shape environment the user's
        # ExportedProgram shares (its placeholders then read as the example's sizes, and so does every later
        # run_decompositions() or re-export of it)
        return d.node.is_constant()
    try:
        int(d)
        return True
    except Exception:
        return False


def _dtype_name(dtype) -> str:
    return "bool" if dtype == torch.bool else str(dtype).replace("torch.", "")


def _fetch_attr(gm: fx.GraphModule, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _tensor_const(t):
    if not isinstance(t, torch.Tensor):
        return None if t is None else np.asarray(t)
    return lambda: t.detach().cpu().numpy() if t.dtype != torch.bfloat16 else t.detach().float().cpu().numpy()


def _fold_lazily(view: View, refs: dict, node: fx.Node, shape):
    """A closure that runs the node on constant inputs, for small pure ops only."""
    if node.op not in ("call_function", "call_method"):
        return None
    target = node.target
    shape_of = _static_shape_query(node)
    if shape_of is not None:
        return shape_of
    if isinstance(target, torch._ops.OpOverload) and torch.Tag.nondeterministic_seeded in target.tags:
        return None
    if target in (F.dropout,) or node.target in ("uniform_", "normal_"):
        return None
    inputs = [a for a in node.all_input_nodes]
    if not inputs and not isinstance(target, torch._ops.OpOverload):
        return None  # only aten factories (ones, arange, full) fold without inputs
    if any(view.info(refs[a].node).op != "constant" and view.info(refs[a].node).consts[0] is None
                         for a in inputs if a in refs):
        return None
    if shape is not None and all(isinstance(d, int) for d in shape) and int(np.prod(shape)) > MAX_FOLD_ELEMENTS:
        return None

    def compute():
        env = {a: _as_torch(view.const(refs[a])) for a in inputs}
        if any(v is None for v in env.values()):
            return None
        args = fx.node.map_arg(node.args, lambda n: env[n])
        kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n])
        with torch.no_grad():
            out = getattr(args[0], target)(*args[1:], **kwargs) if node.op == "call_method" \
                else target(*args, **kwargs)
        return out.numpy() if isinstance(out, torch.Tensor) else np.asarray(out)
    return compute


def _as_torch(c):
    """Folded values back to what the op expects: 0-d integers as Python ints (sizes)."""
    if c is None:
        return None
    c = np.asarray(c)
    if c.ndim == 0 and np.issubdtype(c.dtype, np.integer):
        return int(c)
    return torch.from_numpy(np.ascontiguousarray(c))


def _static_shape_query(node: fx.Node):
    """x.shape / x.size() / x.size(d) on a tensor of static shape folds to numbers."""
    is_shape = node.op == "call_function" and node.target is getattr and node.args[1:] == ("shape",)
    is_size = node.op == "call_method" and node.target == "size"
    if not (is_shape or is_size) or not isinstance(node.args[0], fx.Node):
        return None
    shape, _ = _meta(node.args[0])
    if shape is None or not all(isinstance(d, int) for d in shape):
        return None
    if is_size and len(node.args) > 1 and isinstance(node.args[1], int):
        return np.asarray(shape[node.args[1]])
    return np.asarray(shape, dtype=np.int64)


_QUAL = re.compile(r"L\['self'\]\.?|\[(\d+)\]")


def _scope(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack")
    if stack:
        path = list(stack.values())[-1][0]
        path = _QUAL.sub(lambda m: f".{m.group(1)}" if m.group(1) else "", path)
        return path.replace("..", ".").strip(".")
    if node.op == "call_module":
        return str(node.target)
    return ""
