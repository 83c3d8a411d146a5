"""Evaluate chosen values of an ONNX model on given inputs.

The probe serialises only the nodes the chosen values depend on (plus the
initializers and graph inputs those nodes read) into a small model whose
outputs are exactly those values, and runs it in onnxruntime on the CPU EP.
Weights nobody asked about are never copied, so probing the mask of a deep
model costs about as much as its mask construction.

A ``Shape(x)`` whose dims shape inference wrote in terms of the graph inputs'
dims is rebuilt from those inputs' shapes, so x itself is not computed: HF
masks read the shape of ``inputs_embeds``, and TorchScript exports would
otherwise drag the embedding table (a vocabulary of weights) into the probe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import onnx
import onnx_ir as ir

from ..onnx_compat import IR_VERSION
from ..site import ValueRef

# Probe models are written at this IR version at most: onnxruntime rejects the newest.


@dataclass(frozen=True)
class ProbeInput:
    """One graph input the probed values depend on: its View ref, name, numpy dtype and shape."""

    ref: ValueRef
    name: str
    dtype: np.dtype
    shape: tuple | None  # int static, str symbolic, None unknown


class OnnxProbe:
    """A pruned copy of the model whose outputs are the chosen View values; ``run`` evaluates them."""

    def __init__(self, model: ir.Model, view, refs: Sequence[ValueRef]):
        self.refs = list(refs)
        values = [view.value_of[r] for r in refs]
        nodes, inits, graph_inputs, shortcuts = _ancestors(model.graph, values)
        input_refs = {v: r for r, v in view.value_of.items()}
        self.inputs = [ProbeInput(input_refs[v], v.name, _np_dtype(v), _shape(v)) for v in graph_inputs]
        self._session = _session(_pruned_model(model, nodes, inits, graph_inputs, values, shortcuts))

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """The chosen values, in the order given, for one set of inputs (by input name)."""
        return self._session.run(None, {p.name: feeds[p.name] for p in self.inputs})


def _ancestors(graph: ir.Graph, values: Sequence[ir.Value]):
    """(nodes in graph order, initializer values, graph input values, Shape shortcuts) ``values`` need.

    A shortcut maps a Shape node to its dims as (graph input, axis) or int, read from shape inference.
    """
    inputs, inits = set(graph.inputs), graph.initializers
    dims_of_inputs = _input_dims(graph)
    shortcuts: dict[ir.Node, list] = {}
    needed_nodes: set[ir.Node] = set()
    needed_inits: dict[str, ir.Value] = {}
    needed_inputs: set[ir.Value] = set()
    stack = list(values)
    seen: set[ir.Value] = set()
    while stack:
        v = stack.pop()
        if v is None or v in seen:
            continue
        seen.add(v)
        node = v.producer()
        if node is None:
            if v in inputs and v.name not in inits:
                needed_inputs.add(v)
            elif v.name in inits:
                needed_inits[v.name] = inits[v.name]
            continue
        if node.graph is not graph:
            raise ValueError(f"{v.name}: produced inside a subgraph")
        if node in needed_nodes:
            continue
        needed_nodes.add(node)
        dims = _shape_from_inputs(node, dims_of_inputs)
        if dims is not None:
            shortcuts[node] = dims
            stack.extend(d[0] for d in dims if not isinstance(d, int))
            continue
        stack.extend(node.inputs)
        stack.extend(_captured(node))
    order = [n for n in graph if n in needed_nodes]
    graph_inputs = [v for v in graph.inputs if v in needed_inputs]
    return order, list(needed_inits.values()), graph_inputs, shortcuts


def _input_dims(graph: ir.Graph) -> dict[str, tuple[ir.Value, int]]:
    """Symbolic dim name -> (graph input, axis) where it first occurs."""
    out: dict[str, tuple[ir.Value, int]] = {}
    for v in graph.inputs:
        if v.name in graph.initializers:
            continue
        for axis, d in enumerate(_shape(v) or ()):
            if isinstance(d, str):
                out.setdefault(d, (v, axis))
    return out


def _shape_from_inputs(node: ir.Node, dims_of_inputs: dict) -> list | None:
    """For Shape(x), x computed by nodes: x's dims [start:end] as ints or (graph input, axis); else None."""
    if node.op_type != "Shape" or node.domain not in ("", "ai.onnx") or not node.inputs:
        return None
    x = node.inputs[0]
    if x is None or x.producer() is None:
        return None  # a graph input or initializer: nothing to save
    shape = _shape(x)
    if shape is None or any(d is None or (isinstance(d, str) and d not in dims_of_inputs) for d in shape):
        return None
    start, end = node.attributes.get("start"), node.attributes.get("end")
    dims = [d if isinstance(d, int) else dims_of_inputs[d] for d in shape]
    return dims[(start.value if start is not None else 0):(end.value if end is not None else None)]


def _captured(node: ir.Node):
    """Values a node's subgraphs (If/Loop/Scan bodies) read from the enclosing scopes."""
    for attr in node.attributes.values():
        graphs = [attr.value] if attr.type == ir.AttributeType.GRAPH else (
            list(attr.value) if attr.type == ir.AttributeType.GRAPHS else [])
        for sub in graphs:
            local = set(sub.inputs) | set(sub.initializers.values())
            for inner in ir.traversal.RecursiveGraphIterator(sub):
                local.update(inner.outputs)
            for inner in ir.traversal.RecursiveGraphIterator(sub):
                for v in inner.inputs:
                    if v is not None and v not in local:
                        yield v


def _pruned_model(model: ir.Model, nodes, inits, graph_inputs, outputs, shortcuts) -> onnx.ModelProto:
    graph = onnx.GraphProto(name="attnopt_probe")
    for n in nodes:
        if n in shortcuts:
            graph.node.extend(_shape_nodes(n.outputs[0].name, shortcuts[n]))
        else:
            graph.node.append(ir.serde.serialize_node(n))
    graph.initializer.extend(ir.serde.serialize_tensor(v.const_value) for v in inits)
    graph.input.extend(ir.serde.serialize_value(v) for v in graph_inputs)
    # Element type only: the probe may run at other sizes than the shapes inference wrote down.
    graph.output.extend(onnx.helper.make_tensor_value_info(v.name, v.dtype.value if v.dtype is not None
                                                           else onnx.TensorProto.UNDEFINED, None)
                        for v in outputs)
    proto = onnx.helper.make_model(
        graph, opset_imports=[onnx.helper.make_opsetid(d, v) for d, v in model.opset_imports.items()])
    proto.ir_version = min(model.ir_version or IR_VERSION, IR_VERSION)
    proto.functions.extend(ir.serde.serialize_function(f) for f in model.functions.values())
    return proto


def _shape_nodes(out: str, dims: list) -> list[onnx.NodeProto]:
    """Nodes computing the 1-D int64 shape ``dims`` (ints and (graph input, axis) pairs) into ``out``."""
    make, nodes, parts = onnx.helper.make_node, [], []
    for k, d in enumerate(dims):
        part = f"{out}__attnopt_probe_dim{k}"
        if isinstance(d, int):
            nodes.append(make("Constant", [], [part], value=onnx.numpy_helper.from_array(np.array([d], np.int64))))
        else:
            value, axis = d
            nodes += [make("Shape", [value.name], [part + "_shape"]),
                      make("Constant", [], [part + "_axis"],
                           value=onnx.numpy_helper.from_array(np.array([axis], np.int64))),
                      make("Gather", [part + "_shape", part + "_axis"], [part], axis=0)]
        parts.append(part)
    if not parts:
        return [make("Constant", [], [out], value=onnx.numpy_helper.from_array(np.zeros(0, np.int64)))]
    return nodes + [make("Concat", parts, [out], axis=0)]


def _session(proto: onnx.ModelProto):
    import onnxruntime as ort

    so = ort.SessionOptions()
    # Fatal only: a probe that fails at run time (a Gather the probe's inputs send out of range) is
    # an answer the caller handles, not an error to print at the user.
    so.log_severity_level = 4
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _np_dtype(value: ir.Value) -> np.dtype:
    try:
        return np.dtype(value.dtype.numpy())
    except Exception:
        return np.dtype(np.float32)


def _shape(value: ir.Value):
    if value.shape is None:
        return None
    return tuple(d if isinstance(d, int) else (str(d.value) if d.value is not None else None) for d in value.shape)
