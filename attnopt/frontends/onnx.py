"""ONNX frontend: onnx_ir model <-> View.

This is the only module (with its rewrite half, onnx_rewrite.py) that touches
onnx_ir objects. ``load`` accepts a path, ModelProto or ir.Model; ``lift``
builds the View with shapes (after ONNX shape inference), dtypes, folded
constants and a module-path name for each node.
"""

from __future__ import annotations

import ast
import functools
import os
import re
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from ..errors import ModelLoadError, UnsupportedModelError, one_line
from ..graph import View, broadcast_dims, einsum_as_matmul, einsum_op, lift_einsum
from ..onnx_compat import DOMAIN
from ..site import LAYOUT_BHSD, LAYOUT_BSD, MASK_ADDITIVE, MASK_KEY_END, MASK_NONZERO_KEEP, ValueRef
from .onnx_fold import MAX_FOLD_ELEMENTS, dims_array, fold

# Default-domain opsets we understand; older models predate Softmax's last-axis semantics.
MIN_OPSET, MAX_OPSET = 7, 25
KNOWN_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "com.microsoft", "com.microsoft.nchwc", DOMAIN,
                 "ai.onnx.preview.training", "pkg.onnxscript.torch_lib", "pkg.onnxscript.torch_lib.common",
                 "pkg.torch.onnx"}

# ONNX op -> canonical View op (default domain).
OP_TABLE = {
    "MatMul": "matmul", "Transpose": "transpose", "Reshape": "reshape", "Flatten": "reshape",
    "Expand": "expand", "Unsqueeze": "unsqueeze", "Squeeze": "squeeze", "Slice": "slice",
    "Concat": "concat", "Mul": "mul", "Div": "div", "Add": "add", "Sub": "sub", "Neg": "neg",
    "Sqrt": "sqrt", "Reciprocal": "reciprocal", "Pow": "pow", "Softmax": "softmax",
    "Where": "where", "Cast": "cast", "CastLike": "cast", "Identity": "identity",
    "Dropout": "dropout", "IsNaN": "isnan", "Not": "not", "Constant": "constant", "Tanh": "tanh",
    "Max": "max",
}


# ----------------------------------------------------------------------------- load

def load(model) -> ir.Model:
    """Any ONNX handle -> ir.Model, with clear errors for bad files."""
    if isinstance(model, ir.Model):
        out = model
    elif isinstance(model, onnx.ModelProto):
        out = ir.serde.deserialize_model(model)
    elif isinstance(model, (str, os.PathLike)):
        out = _load_path(Path(model))
    else:
        raise ModelLoadError(f"cannot read a model of type {type(model).__name__}")
    check_supported(out)
    return out


def _load_path(path: Path) -> ir.Model:
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    if path.is_dir():
        raise ModelLoadError(f"{path}: is a directory, not an ONNX file")
    if path.stat().st_size == 0:
        raise ModelLoadError(f"{path}: empty file, not an ONNX model")
    with open(path, "rb") as f:
        if f.read(4) == b"PK\x03\x04":  # a zip: what torch.save and torch.export.save write (ONNX is protobuf)
            raise ModelLoadError(f"{path}: a torch archive (torch.save / torch.export.save), not ONNX; the command "
                                 "line reads ONNX, torch models go through the Python API (attnopt.detect, "
                                 "attnopt.rewrite on an ExportedProgram or a GraphModule)")
    try:
        model = ir.load(str(path))
    except Exception as e:  # protobuf gives DecodeError, RuntimeError or worse for junk
        raise ModelLoadError(f"{path}: not a readable ONNX model (corrupt or truncated?): "
                             f"{type(e).__name__}: {one_line(e, 200)}") from None
    if len(model.graph) == 0 and not model.graph.outputs:
        raise ModelLoadError(f"{path}: not a readable ONNX model (no graph; corrupt, truncated or not ONNX)")
    try:  # touch external data now so a missing .data file fails here, not mid-rewrite
        for init in model.graph.initializers.values():
            if init.const_value is not None and isinstance(init.const_value, ir.ExternalTensor):
                p = Path(init.const_value.base_dir) / init.const_value.location
                if not p.exists():
                    raise ModelLoadError(f"{path}: external data file {init.const_value.location} is missing")
    except ModelLoadError:
        raise
    except Exception:
        pass
    return model


def check_supported(model: ir.Model) -> None:
    local = {f.domain for f in model.functions.values()}
    # Only a domain some node uses can hide attention: onnxruntime's transformers optimizer imports
    # a list of domains (ai.onnx.training, org.pytorch.aten, ...) whatever the model holds.
    used = {node.domain for node in ir.traversal.RecursiveGraphIterator(model.graph)}
    for domain, version in model.opset_imports.items():
        if domain in ("", "ai.onnx"):
            if not MIN_OPSET <= version <= MAX_OPSET:
                raise UnsupportedModelError(
                    f"unsupported opset {version} (attnopt reads default-domain opsets {MIN_OPSET}-{MAX_OPSET})")
        elif domain not in KNOWN_DOMAINS and domain not in local and domain in used:
            raise UnsupportedModelError(f"unknown opset domain '{domain}' (version {version}); "
                                        f"attnopt cannot see inside its ops")
    if "" not in model.opset_imports and "ai.onnx" not in model.opset_imports:
        raise UnsupportedModelError("the model imports no default ONNX opset")


def infer_shapes(model: ir.Model) -> ir.Model:
    """ONNX shape inference, written into the model's values (TorchScript exports carry few shapes).

    Only shapes and dtypes are copied back, by value name: deserialising the whole
    inferred model (as onnx_ir's ShapeInferencePass does) costs more than inference.
    """
    values = {v.name: v for node in model.graph for v in node.outputs if v.name}
    if all(v.shape is not None and v.dtype is not None for v in values.values()):
        return model
    try:
        proto = _weights_as_inputs(ir.serde.serialize_model(model))
        inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    except Exception:
        return model  # shapes stay unknown; the matcher copes with fewer facts
    _copy_types(values, inferred.graph.value_info)
    if any(v.dtype is None for v in values.values()) and any(n.domain == "com.microsoft" for n in model.graph):
        # ONNX shape inference stops at contrib ops (models onnxruntime's optimizer fused), so nothing
        # after them has a type; onnxruntime's own symbolic inference knows those ops.
        _copy_types(values, _symbolic_value_info(proto, auto_merge=True))
    if any(_unnamed_axes(v.shape) for v in values.values()):
        # ONNX inference gives up on a Reshape whose target mixes a -1 with sizes read off Shape (TorchScript
        # writes them so): JetMoE's key heads came out as unk__16. onnxruntime's symbolic inference solves
        # such reshapes; only the dims left unknown take its answer, and only where it is a number.
        _fill_dims(values, _symbolic_value_info(proto, auto_merge=False))
    if any(v.shape is None or _unnamed_axes(v.shape) for v in values.values()) \
            and any(n.op_type == "If" for n in model.graph):
        # TorchScript writes some sizes as If nodes whose condition is a constant (DINOv3's RoPE tables, and so
        # its queries' length): no inference takes a branch, so everything after stays unknown. onnxscript's
        # optimizer folds such Ifs in a copy; the dims still unknown take that copy's inferred sizes, by name.
        _fill_dims(values, _folded_value_info(proto), whole=True)
    return model


def _folded_value_info(proto: onnx.ModelProto) -> list:
    """Value infos of ``proto`` after onnxscript's constant folding (constant Ifs taken), or nothing on failure."""
    try:
        from onnxscript import optimizer

        folded = optimizer.optimize(proto)  # a proto in, a new proto out: ``proto`` stays as it is
        return list(onnx.shape_inference.infer_shapes(folded, data_prop=True).graph.value_info)
    except Exception:  # noqa: BLE001  shapes stay as they were
        return []


_INTEGER_TYPES = {onnx.TensorProto.INT64, onnx.TensorProto.INT32, onnx.TensorProto.INT16, onnx.TensorProto.INT8,
                  onnx.TensorProto.UINT64, onnx.TensorProto.UINT32, onnx.TensorProto.UINT16, onnx.TensorProto.UINT8}


def _weights_as_inputs(proto: onnx.ModelProto, limit: int = 4096) -> onnx.ModelProto:
    """``proto`` for shape inference: each non-integer initializer over ``limit`` bytes becomes a graph input of
    its type and shape. Inference reads weights' shapes only (the sizes a shape computation reads are small
    integer tensors, kept), and handing it BERT-large's 1.2 GB of weights took ONNX's inference 11 s, not 0.03."""
    graph = proto.graph
    inputs = {i.name for i in graph.input}  # older models also list their initializers as inputs
    keep, moved = [], []
    for init in graph.initializer:
        if init.data_type in _INTEGER_TYPES or init.ByteSize() <= limit:
            keep.append(init)
        elif init.name not in inputs:
            moved.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    if moved:
        del graph.initializer[:]
        graph.initializer.extend(keep)
        graph.input.extend(moved)
    return proto


def _symbolic_value_info(proto, auto_merge: bool) -> list:
    """onnxruntime's symbolic shape inference, or nothing where it is not installed or fails.

    Its loop is run here rather than through ``SymbolicShapeInference.infer_shapes``: that one, when a shape
    stays unknown, saves the model as ``sym_shape_infer_temp.onnx`` with its weights in the caller's working
    directory before raising. Shapes it did infer are kept either way.
    """
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        inference = SymbolicShapeInference(2**31 - 1, auto_merge, True, 0)
        inference._preprocess(proto)
        while inference.run_:
            inference._infer_impl()
        return list(inference.out_mp_.graph.value_info)
    except Exception:
        return []


def _unnamed_axes(shape) -> list[int]:
    """The axes of ``shape`` that no inference named: None, or a symbol ONNX made up (``unk__``)."""
    if shape is None:
        return []
    return [i for i, d in enumerate(shape) if d is None or (isinstance(d, ir.SymbolicDim) and
                                                              (d.value is None or d.value.startswith("unk__")))]


def _fill_dims(values: dict, value_info, whole: bool = False) -> None:
    """Each dim no inference named takes ``value_info``'s size, where it has one; ``whole``: a value of unknown
    rank takes the info's shape too, where every dim of it is a size."""
    for info in value_info:
        value = values.get(info.name)
        dims = info.type.tensor_type.shape.dim if info.type.HasField("tensor_type") else []
        if whole and value is not None and value.shape is None and dims and all(d.HasField("dim_value") for d in dims):
            value.shape = ir.Shape([d.dim_value for d in dims])
            continue
        unknown = _unnamed_axes(value.shape) if value is not None else []
        if not unknown or len(dims) != len(value.shape):
            continue
        filled = [dims[i].dim_value if i in unknown and dims[i].HasField("dim_value") else d
                  for i, d in enumerate(value.shape)]
        value.shape = ir.Shape(filled)


def _copy_types(values: dict, value_info) -> None:
    for info in value_info:
        value = values.get(info.name)
        if value is None or not info.type.HasField("tensor_type"):
            continue
        tensor_type = info.type.tensor_type
        if value.dtype is None and tensor_type.elem_type:
            value.dtype = ir.DataType(tensor_type.elem_type)
        if value.shape is None and tensor_type.HasField("shape"):
            value.shape = ir.Shape([d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                                    for d in tensor_type.shape.dim])


# ----------------------------------------------------------------------------- lift

def lift(model: ir.Model) -> View:
    """ir.Model -> View. Node ids are 'n<k>' in graph order; graph inputs 'in:<name>'."""
    graph = model.graph
    view = View(source=graph.name or "onnx")
    ids: dict[ir.Value, ValueRef] = {}
    opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 17))

    for value in graph.inputs:
        nid = view.add_node(f"in:{value.name}", "input", ref=value, name=value.name,
                            shapes=[_shape(value)], dtypes=[_dtype(value)])
        ids[value] = ValueRef(nid)
    for name, value in graph.initializers.items():
        if value in ids:
            continue  # an initializer that is also an input: treat as input
        nid = view.add_node(f"init:{name}", "constant", ref=value, name=name,
                            shapes=[_shape(value)], dtypes=[_dtype(value)], consts=[_lazy_tensor(value)])
        ids[value] = ValueRef(nid)

    for k, node in enumerate(graph):
        op, attrs = _canonical(node, opset)
        nid = f"n{k}"
        args = [view.info(ids[v].node).consts[ids[v].port] if v is not None and v in ids else None
                for v in node.inputs]
        consts = _shape_lazily(view, ids, node) or _fold_lazily(node, args)
        inputs = [ids[v] if v is not None and v in ids else None for v in node.inputs]
        einsum = attrs.pop("einsum", None)
        if einsum is not None and None not in inputs:
            inputs = lift_einsum(view, nid, einsum, *inputs, _shape(node.outputs[0]), _dtype(node.outputs[0]),
                                 _scope(node))
        elif einsum is not None:
            op, attrs = "other:Einsum", {}
        view.add_node(nid, op, attrs=attrs, ref=node, outputs=len(node.outputs), name=_scope(node),
                      shapes=[_shape(v) for v in node.outputs], dtypes=[_dtype(v) for v in node.outputs],
                      consts=consts)
        for port, ref in enumerate(inputs):
            if ref is not None:
                view.connect(ref, nid, port)
        for port, v in enumerate(node.outputs):
            ids[v] = ValueRef(nid, port)
    view.value_of = {ref: v for v, ref in ids.items()}  # for the rewrite half
    _refine_shapes(view)
    return view


_ELEMENTWISE = {"cast", "identity", "softmax", "dropout", "mul", "div", "add", "sub", "where", "neg", "sqrt",
                "reciprocal", "pow", "isnan", "not", "tanh"}


def _refine_shapes(view: View) -> None:
    """Fill in dims ONNX shape inference left symbolic ('unk__3') where the graph fixes them.

    TorchScript exports with dynamic axes reshape to Concat(Shape(x)[0], .., 2, 16):
    the head count and head dim are constants there. Folding that target and
    pushing it through transposes, elementwise ops and matmuls recovers them.
    """
    for nid in sorted(view.nodes(), key=lambda n: view.info(n).order):
        info = view.info(nid)
        if info.op == "other:Split":
            _refine_split(view, nid, info)
            continue
        if not info.shapes or _complete(info.shapes[0]):
            continue
        ins = view.inputs(nid)
        derived = None
        if info.op == "reshape" and len(ins) > 1:
            target, src = view.const(ins[1]), view.shape(ins[0])
            if target is not None and np.ndim(target) == 1:
                derived = _reshape_dims(src, target.tolist())
        elif info.op == "transpose" and ins and view.shape(ins[0]) is not None and info.attrs.get("perm"):
            src = view.shape(ins[0])
            derived = tuple(src[p] for p in info.attrs["perm"])
        elif info.op == "slice" and ins and view.shape(ins[0]) is not None:
            src = view.shape(ins[0])
            axes = view.const(ins[3]) if len(ins) > 3 and ins[3] is not None else None
            if axes is not None or (len(ins) > 1 and view.shape(ins[1]) == (len(src),)):
                cut = {int(a) % len(src) for a in np.ravel(axes)} if axes is not None else set(range(len(src)))
                derived = tuple(None if i in cut else d for i, d in enumerate(src))
        elif info.op in ("unsqueeze", "squeeze") and ins and view.shape(ins[0]) is not None:
            derived = _unsqueeze_dims(info, view.shape(ins[0]), view.const(ins[1]) if len(ins) > 1 else None)
        elif info.op == "other:Gather" and len(ins) == 2 and view.shape(ins[0]) is not None:
            idx = view.const(ins[1])
            if idx is not None and np.ndim(idx) == 0:
                src = view.shape(ins[0])
                axis = info.ref.attributes.get("axis")
                axis = (axis.value if axis is not None else 0) % len(src)
                derived = tuple(src[:axis]) + tuple(src[axis + 1:])
        elif info.op == "expand" and len(ins) > 1 and view.shape(ins[0]) is not None:
            target = view.const(ins[1])
            if target is not None and np.ndim(target) == 1:
                derived = _broadcast([view.shape(ins[0]), tuple(_dim_or_none(d) for d in target.tolist())])
        elif info.op == "concat" and ins and all(v is not None and view.shape(v) is not None for v in ins):
            derived = _concat_dims([view.shape(v) for v in ins], _attr(info.ref, "axis", 0))
        elif info.op == "other:Tile" and len(ins) == 2 and view.shape(ins[0]) is not None:
            repeats = view.const(ins[1])
            if repeats is not None and np.ndim(repeats) == 1 and len(repeats) == len(view.shape(ins[0])):
                derived = tuple(_tiled_dim(d, _dim_or_none(r)) for d, r in zip(view.shape(ins[0]), repeats))
        elif info.op in _ELEMENTWISE:
            derived = _broadcast([view.shape(v) for v in ins if v is not None and view.const(v) is None])
        elif info.op == "matmul" and len(ins) == 2:
            a, b = view.shape(ins[0]), view.shape(ins[1])
            if a is not None and b is not None and len(a) >= 2 and len(b) >= 2:
                batch = _broadcast([a[:-2], b[:-2]])
                derived = None if batch is None else batch + (a[-2], b[-1])
        if derived is not None:
            info.shapes[0] = _merge(info.shapes[0], derived)


def _refine_split(view: View, nid: str, info) -> None:
    """Split's outputs: the input's dims with the split axis cut to each part (TorchScript splits fused QKV)."""
    ins = view.inputs(nid)
    src = view.shape(ins[0]) if ins else None
    if src is None:
        return
    axis = _attr(info.ref, "axis", 0) % len(src)
    parts = view.const(ins[1]) if len(ins) > 1 and ins[1] is not None else None
    n = len(info.shapes)
    if parts is not None:
        sizes = [_dim_or_none(p) for p in np.ravel(parts)]  # a part sized from a symbolic Shape stays a symbol
    elif isinstance(src[axis], int) and src[axis] % n == 0:
        sizes = [src[axis] // n] * n
    else:
        return
    if len(sizes) != n:
        return
    for port, size in enumerate(sizes):
        derived = tuple(size if i == axis else d for i, d in enumerate(src))
        info.shapes[port] = _merge(info.shapes[port], derived)


def _concat_dims(shapes: list, axis: int):
    """Concat's output dims (rotary embeddings' stack of halves, written as Unsqueeze and Concat by
    TorchScript): the parts' sum along the axis, the first part's dims elsewhere; None if ranks differ."""
    rank = len(shapes[0])
    if rank == 0 or any(len(s) != rank for s in shapes):
        return None
    axis %= rank
    along = [s[axis] for s in shapes]
    total = sum(along) if all(isinstance(d, int) for d in along) else None
    shared = functools.reduce(_merge, shapes)  # the parts share every other dim: the best known of each
    return tuple(total if i == axis else d for i, d in enumerate(shared))


def _dim_or_none(d):
    """A folded shape entry as a dim: an int, a symbol name (a constant folded from a partly symbolic Shape,
    onnx_fold.dims_array), or None."""
    return int(d) if isinstance(d, (int, np.integer)) else (d if isinstance(d, str) else None)


def _tiled_dim(d, r):
    """Tile's output dim from the input's ``d`` and its repeat ``r`` (each an int, a symbol or None)."""
    if isinstance(d, int) and isinstance(r, int):
        return d * r
    if r == 1:
        return d
    return r if d == 1 else None


def _unsqueeze_dims(info, src, axes):
    if axes is None:
        a = info.ref.attributes.get("axes")
        axes = a.value if a is not None else None
    if axes is None:
        return None
    axes = [int(x) for x in np.ravel(axes)]
    if info.op == "squeeze":
        cut = {a % len(src) for a in axes}
        return tuple(d for i, d in enumerate(src) if i not in cut)
    out = list(src)
    rank = len(src) + len(axes)
    for a in sorted(x % rank for x in axes):
        out.insert(a, 1)
    return tuple(out)


def _reshape_dims(src, target: list):
    """Reshape's output dims from a partly symbolic target, solving -1 by cancelling symbols."""
    out = []
    for i, t in enumerate(target):
        if isinstance(t, str) or t is None:
            out.append(t)
        elif t == 0:
            out.append(src[i] if src is not None and i < len(src) else None)
        else:
            out.append(int(t))
    if out.count(-1) == 1 and src is not None:
        num, den = list(src), [d for d in out if d != -1]
        for d in list(den):
            if d in num:
                num.remove(d)
                den.remove(d)
        if all(isinstance(d, int) for d in num + den) and den.count(0) == 0:
            total, part = int(np.prod(num)), int(np.prod(den))
            if part and total % part == 0:
                out[out.index(-1)] = total // part
    return tuple(d if isinstance(d, (int, str)) and d != -1 else None for d in out)


def _complete(shape) -> bool:
    return shape is not None and all(isinstance(d, int) for d in shape)


def _merge(have, derived):
    """Known ints win; then symbols the graph structure implies over ones inference invented."""
    if have is None or len(have) != len(derived):
        return tuple(derived)

    def pick(h, d):
        if isinstance(h, int) or d is None:
            return h
        if isinstance(d, int) or h is None or str(h).startswith("unk__"):
            return d
        return h
    return tuple(pick(h, d) for h, d in zip(have, derived))


def _broadcast(shapes):
    """The broadcast of the shapes the View knows (an operand of unknown shape is left out)."""
    known = [s for s in shapes if s is not None]
    return broadcast_dims(known, proven=False) if known else None


def _lazy_tensor(value: ir.Value):
    tensor = value.const_value
    if tensor is None:
        return None
    return lambda: tensor.numpy()


def _shape_lazily(view: View, ids: dict, node: ir.Node):
    """Shape(x) folds from the View's shape of x, which _refine_shapes may improve before it is read."""
    if node.op_type != "Shape" or node.domain not in ("", "ai.onnx") or not node.inputs or node.inputs[0] not in ids:
        return None
    ref = ids[node.inputs[0]]

    def compute():
        dims = view.shape(ref)
        if dims is None:
            return None
        return dims_array(list(dims)[_attr(node, "start", 0):_attr(node, "end", None)])
    return [compute]


def _fold_lazily(node: ir.Node, args: list):
    """Per output, a closure folding the node, or None when an input is not constant."""
    if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
        attr = next(iter(node.attributes.values()), None)
        if attr is None:
            return [None]
        val = attr.value

        def const():
            # hasattr, not isinstance(ir.TensorProtocol): Protocol checks are slow at scale.
            return val.numpy() if hasattr(val, "numpy") else np.asarray(val)
        return [const]
    if len(node.outputs) != 1 or node.op_type not in _FOLDABLE:
        return [None] * len(node.outputs)
    if any(v is not None and a is None for a, v in zip(args, node.inputs)) and node.op_type != "Concat":
        return [None]
    out_shape = node.outputs[0].shape
    if out_shape is not None and out_shape.is_static() and int(np.prod(out_shape.numpy())) > MAX_FOLD_ELEMENTS:
        return [None]

    def compute():
        resolved = [a() if callable(a) else a for a in args]
        if node.op_type == "Concat":
            if all(a is None for a in resolved):
                return None
            resolved = [_unknown_dims(v) if v is not None and a is None else a for a, v in zip(resolved, node.inputs)]
        return fold(node, resolved)
    return [compute]


def _unknown_dims(value: ir.Value):
    """A shape piece that does not fold (batch·heads from a symbolic batch) as that many unknown
    dims, so the rest of a reshape target (the head count and head dim) still folds."""
    shape = value.shape
    if shape is None or len(shape) != 1 or not isinstance(shape[0], int) or value.dtype != ir.DataType.INT64:
        return None
    return dims_array([None] * shape[0])


_FOLDABLE = {"Identity", "Gather", "Slice", "Concat", "Unsqueeze", "Squeeze", "Cast", "Add", "Sub",
             "Mul", "Div", "Neg", "Sqrt", "Reciprocal", "Pow", "Not", "Equal", "Less", "Greater",
             "LessOrEqual", "GreaterOrEqual", "And", "Or", "Where", "Reshape", "Transpose", "Expand",
             "ConstantOfShape", "Trilu", "Range", "Sum", "Mod", "Max", "Min", "Floor", "Ceil", "Abs"}


def _shape(value: ir.Value):
    if value is None or value.shape is None:
        return None
    return tuple(d if isinstance(d, int) else (str(d.value) if d.value is not None else None)
                 for d in value.shape)


def _dtype(value: ir.Value):
    if value is None or value.dtype is None:
        return None
    return "bool" if value.dtype == ir.DataType.BOOL else str(value.dtype.name).lower()


def _attr(node: ir.Node, name: str, default=None):
    a = node.attributes.get(name)
    return default if a is None else a.value


def _used(node: ir.Node, port: int) -> bool:
    return port < len(node.outputs) and bool(node.outputs[port].uses()) or \
        (port < len(node.outputs) and node.outputs[port].is_graph_output())


def _present(node: ir.Node, port: int) -> bool:
    return port < len(node.inputs) and node.inputs[port] is not None


def _canonical(node: ir.Node, opset: int) -> tuple[str, dict]:
    domain = node.domain if node.domain != "ai.onnx" else ""
    if domain == "":
        if node.op_type == "Softmax":
            return "softmax", {"axis": _attr(node, "axis", -1 if opset >= 13 else 1)}
        if node.op_type == "Transpose":
            return "transpose", {"perm": _attr(node, "perm")}
        if node.op_type == "Concat":
            return "concat", {"axis": _attr(node, "axis")}
        if node.op_type == "Gemm" and not _attr(node, "transA", 0):
            # A @ B (+ C): with B a weight this is a Linear over the rows of A.
            return "linear", {}
        if node.op_type == "Attention":
            return _onnx_attention(node)
        if node.op_type == "Einsum" and len(node.inputs) == 2:
            form = einsum_as_matmul(str(_attr(node, "equation", "")))
            if form is not None:
                op, attrs = einsum_op(form)
                return op, {**attrs, "einsum": form}
        return OP_TABLE.get(node.op_type, f"other:{node.op_type}"), {}
    if domain == "com.microsoft":
        if node.op_type == "MultiHeadAttention":
            return _ms_mha(node)
        if node.op_type in ("Attention", "GroupQueryAttention", "PackedAttention",
                            "PackedMultiHeadAttention", "DecoderMaskedMultiHeadAttention"):
            return _ms_attention(node)
    return f"other:{domain}::{node.op_type}", {}


def _onnx_attention(node: ir.Node) -> tuple[str, dict]:
    """ONNX Attention (opset 23+): 4-D (B,H,S,D) or 3-D (B,S,H*D) with q_num_heads."""
    three_d = _attr(node, "q_num_heads") is not None
    unsupported = None
    if _present(node, 4) or _present(node, 5) or _present(node, 6):
        unsupported = "uses a KV cache (past_key/past_value) or nonpad_kv_seqlen"
    elif any(_used(node, p) for p in (1, 2, 3)):
        unsupported = "its present_key/present_value/qk outputs are used"
    elif _attr(node, "softcap", 0.0):
        unsupported = "uses softcap"
    attrs = {
        "form": "onnx-attention", "layout": LAYOUT_BSD if three_d else LAYOUT_BHSD,
        "q_port": 0, "k_port": 1, "v_port": 2, "mask_port": 3 if _present(node, 3) else None,
        "num_heads": _attr(node, "q_num_heads"), "kv_num_heads": _attr(node, "kv_num_heads"),
        "scale": _attr(node, "scale"), "causal": bool(_attr(node, "is_causal", 0)),
        "unsupported": unsupported,
    }
    return ("mha" if three_d else "sdpa"), attrs


def _ms_mha(node: ir.Node) -> tuple[str, dict]:
    """com.microsoft.MultiHeadAttention.

    query (B, N, H·D) with key/value (B, M, H·D) or already split (B, H, M, D); or packed q/k/v
    (B, N, H, 3, D) with no key/value; or packed k/v (B, M, H, 2, D) with no value. An optional
    ``bias`` (2·H·D + H·Dv) is the projections' bias, added to q, k and v in that order.
    """
    heads = _attr(node, "num_heads")
    q_shape, k_shape, v_shape = (_input_shape(node, p) for p in (0, 1, 2))
    has_bias = _present(node, 3)
    unsupported = None
    head_dim = None
    layouts = (LAYOUT_BSD,) * 3
    projections = (None, None, None)
    if not _present(node, 1):  # packed q/k/v: slot i of axis 3
        layouts = ("bshd",) * 3
        projections = tuple({"source": 0, "pick": (3, i)} for i in range(3))
        head_dim = _dim_at(q_shape, 4)
    elif k_shape is not None and len(k_shape) == 5:  # packed k/v
        layouts = (LAYOUT_BSD, "bshd", "bshd")
        projections = (None, {"source": 1, "pick": (3, 0)}, {"source": 1, "pick": (3, 1)})
        head_dim = _dim_at(k_shape, 4)
    elif k_shape is not None and len(k_shape) == 4:  # key/value given per head, (B, H, M, D)
        layouts = (LAYOUT_BSD, LAYOUT_BHSD, LAYOUT_BHSD)
        head_dim = _dim_at(k_shape, 3)
    elif k_shape is None:
        unsupported = "the rank of its key is unknown"
    if has_bias and unsupported is None:
        if projections != (None, None, None) or layouts[1] != LAYOUT_BSD:
            unsupported = "adds a projection bias to packed or per-head (B, H, M, D) inputs"
        else:
            sizes = _bias_split(q_shape, k_shape, v_shape, _input_shape(node, 3))
            if sizes is None:
                unsupported = "its projection bias cannot be split: the hidden sizes are unknown"
            else:
                bounds = np.cumsum([0, *sizes]).tolist()
                projections = tuple({"source": p, "bias": 3, "start": bounds[p], "stop": bounds[p + 1]}
                                    for p in range(3))
    if any(_present(node, p) for p in (6, 7, 8, 9)) or any(_used(node, p) for p in (1, 2, 3)):
        unsupported = "uses a KV cache (past_key/past_value) or its present/qk outputs"
    key_padding, why = _raw_key_mask(node, 4, "key_padding_mask")
    unsupported = unsupported or why
    attrs = {
        "form": "ms-mha", "layout": LAYOUT_BSD, "layouts": layouts, "output_layout": LAYOUT_BSD,
        # Packed inputs: k and v are read from the tensor that packs them.
        "q_port": 0, "k_port": 1 if _present(node, 1) else 0,
        "v_port": 2 if _present(node, 2) else (1 if _present(node, 1) else 0),
        "mask_port": 5 if _present(node, 5) else None, "mask_kind": MASK_ADDITIVE,
        "num_heads": heads, "head_dim": head_dim, "scale": _attr(node, "scale") or None,
        "causal": bool(_attr(node, "unidirectional", 0)), "unsupported": unsupported,
        "projections": projections, **key_padding,
    }
    return "mha", attrs


def _ms_attention(node: ir.Node) -> tuple[str, dict]:
    """com.microsoft.Attention: the q/k/v projection is fused in, input (B, N, Din) @ weights
    (Din, Hq + Hk + Hv) + bias; q, k and v are the three column blocks, sizes ``qkv_hidden_sizes``.

    Its relatives (GroupQueryAttention, the Packed* and DecoderMasked* ops) are detected only.
    """
    heads = _attr(node, "num_heads")
    kv_heads = _attr(node, "kv_num_heads") or heads
    sizes = _attr(node, "qkv_hidden_sizes")
    w = _input_shape(node, 1)
    if sizes:
        sizes = [int(s) for s in sizes]
    elif w is not None and len(w) == 2 and isinstance(w[1], int) and w[1] % 3 == 0:
        sizes = [w[1] // 3] * 3
    head_dim = sizes[0] // heads if sizes and heads and sizes[0] % heads == 0 else None
    attrs = {
        "form": f"ms-{node.op_type.lower()}", "layout": LAYOUT_BSD, "q_port": 0, "k_port": None,
        "v_port": None, "mask_port": None, "num_heads": heads, "kv_num_heads": kv_heads, "head_dim": head_dim,
        "scale": _attr(node, "scale") or None, "causal": bool(_attr(node, "unidirectional", 0)),
    }
    if node.op_type != "Attention":
        return "mha", {**attrs, "unsupported": f"com.microsoft.{node.op_type} is not rewritable yet"}
    key_padding, unsupported = _raw_key_mask(node, 3, "mask_index", key_counts=True)
    if _present(node, 4) or _present(node, 6) or _used(node, 1):
        unsupported = "uses a KV cache (past/present)"
    elif _attr(node, "do_rotary", 0):
        unsupported = "applies rotary embeddings inside the op (do_rotary)"
    elif sizes is None or head_dim is None:
        unsupported = "its q/k/v hidden sizes are unknown or not a multiple of num_heads"
    elif len(set(sizes)) != 1:
        unsupported = f"qkv_hidden_sizes {sizes}: the ops take one head size for q, k and v"
    projections = (None, None, None)
    if sizes is not None:
        bounds = np.cumsum([0, *sizes]).tolist()
        bias = 2 if _present(node, 2) else None
        projections = tuple({"source": 0, "weight": 1, "bias": bias, "start": bounds[i], "stop": bounds[i + 1]}
                            for i in range(3))
    return "mha", {**attrs, "k_port": 0, "v_port": 0, "layouts": (LAYOUT_BSD,) * 3, "output_layout": LAYOUT_BSD,
                   "mask_port": 5 if _present(node, 5) else None, "mask_kind": MASK_ADDITIVE,
                   "projections": projections, "unsupported": unsupported, **key_padding}


def _raw_key_mask(node: ir.Node, port: int, what: str, key_counts: bool = False) -> tuple[dict, str | None]:
    """A key mask input (Attention's mask_index, MultiHeadAttention's key_padding_mask) as the site's
    key padding: ({key_padding_port, key_padding_kind, key_padding_fill}, None), or ({}, why) for
    the forms not read. Read are the (B, M) 0/1 mask and, with ``key_counts``, (B,) key counts.

    onnxruntime adds ``mask_filter_value`` (not -inf) at the masked keys; the site keeps that fill.
    """
    if not _present(node, port):
        return {}, None
    value = node.inputs[port]
    shape = _shape(value)
    found = {"key_padding_port": port, "key_padding_fill": float(_attr(node, "mask_filter_value", -10000.0))}
    if shape is not None and len(shape) == 2:
        return {**found, "key_padding_kind": MASK_NONZERO_KEEP}, None
    if key_counts and _one_per_row(node, value, shape):
        return {**found, "key_padding_kind": MASK_KEY_END}, None
    form = "unknown shape" if shape is None else f"shape {list(shape)}"
    read = "the (B, M) 0/1 key mask and (B,) key counts are" if key_counts else "the (B, M) 0/1 key mask is"
    return {}, f"its {what} has {form}: only {read} read"


def _one_per_row(node: ir.Node, value: ir.Value, shape) -> bool:
    """Whether ``value`` holds one entry per batch row: 1-D of the input's batch size, or the mask_index
    output of EmbedLayerNormalization, whose (B,) shape ONNX shape inference (not knowing the op) leaves unknown."""
    if shape is None:
        producer = value.producer()
        return (producer is not None and producer.domain == "com.microsoft"
                and producer.op_type == "EmbedLayerNormalization" and value.index() == 1)
    data = _input_shape(node, 0)
    batch = data[0] if data else None  # a symbolic batch matches the same symbol
    return len(shape) == 1 and batch is not None and shape[0] == batch


def _input_shape(node: ir.Node, port: int):
    return _shape(node.inputs[port]) if _present(node, port) else None


def _dim_at(shape, i: int):
    return shape[i] if shape is not None and len(shape) > i and isinstance(shape[i], int) else None


def _bias_split(q_shape, k_shape, v_shape, bias_shape) -> list[int] | None:
    """[Hq, Hk, Hv]: the widths of q, k and v in a MultiHeadAttention projection bias."""
    widths = [_dim_at(s, 2) for s in (q_shape, k_shape, v_shape)]
    total = _dim_at(bias_shape, 0)
    known = [x for x in widths if x is not None]
    if len(known) == 2 and total is not None:
        widths[widths.index(None)] = total - sum(known)
    if any(x is None for x in widths) or (total is not None and sum(widths) != total):
        return None
    return widths


# ----------------------------------------------------------------------------- naming

_SCOPE_KEYS = ("pkg.torch.onnx.name_scopes", "namespace")


def _scope(node: ir.Node) -> str:
    """A module path like 'encoder.layer.0.attention.self' for the node, if the exporter left one."""
    meta = node.metadata_props
    scopes, classes = meta.get("pkg.torch.onnx.name_scopes"), meta.get("pkg.torch.onnx.class_hierarchy")
    if scopes and classes:
        try:
            # The innermost scope whose class is a module, not the aten op itself.
            pairs = zip(ast.literal_eval(scopes), ast.literal_eval(classes))
            modules = [s for s, c in pairs if s and not str(c).startswith(("aten.", "<built-in"))]
            return modules[-1] if modules else ""
        except (ValueError, SyntaxError):
            pass
    name = node.name or ""
    if name.startswith("/"):  # TorchScript: /encoder/layer.0/attention/self/Softmax
        parts = name.strip("/").split("/")[:-1]
        return ".".join(p for p in parts if p)
    return re.sub(r"[^A-Za-z0-9_.]+", "_", name)
