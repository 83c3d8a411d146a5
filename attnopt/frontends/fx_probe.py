"""Evaluate chosen values of a torch.fx graph on given inputs.

Only the nodes the chosen values depend on run, eagerly, one by one (aten
OpOverloads, torch functions, Tensor methods, submodules), with the graph's
weights and buffers bound from the model. Works on ExportedPrograms (lifted
weights), their ``.module()`` and symbolic_trace GraphModules alike.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch
import torch.fx as fx

from ..site import ValueRef
from .fx import functorch_nesting, graph_module_of
from .fx_flex import evaluate
from .onnx_probe import ProbeInput


class FxProbe:
    """The ancestors of the chosen View values; ``run`` evaluates them on one set of inputs."""

    def __init__(self, model, view, refs: Sequence[ValueRef]):
        self._gm, self._weights = graph_module_of(model)
        self.refs = list(refs)
        # a View-only FlexAttention mask (fx_flex.FlexMask) is evaluated from its inputs' values
        self._flex = {r: (view.attrs(r.node)["flex"], [view.value_of.get(i, view.const(i))
                                                        for i in view.inputs(r.node)])
                      for r in refs if view.view_only(r.node) and view.op(r.node) == "flex_mask"}
        self._targets = [None if r in self._flex else view.value_of[r] for r in refs]
        needed = _ancestors([t for t in self._targets if t is not None]
                            + [x for _, ins in self._flex.values() for x in ins if isinstance(x, fx.Node)])
        # functorch's vmap nesting calls have no users but bracket the vmapped ops (``fx.functorch_nesting``)
        # (those of another vmap, whose inputs are not evaluated here, stay out: FlexAttention's create_block_mask)
        self._order = [n for n in self._gm.graph.nodes
                       if n in needed or (functorch_nesting(n) and all(a in needed for a in n.all_input_nodes))]
        input_refs = {n: r for r, n in view.value_of.items()}
        # Shapes as the View recorded them at lift time, whose symbols are the ones the sites name.
        self.inputs = [ProbeInput(input_refs[n], n.name, _meta(n)[0], view.shape(input_refs[n]) or _meta(n)[1])
                       for n in self._order if n.op == "placeholder" and n.name not in self._weights]

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """The chosen values, in the order given, for one set of inputs (by placeholder name)."""
        env: dict[fx.Node, object] = {}
        with torch.no_grad():
            for node in self._order:
                env[node] = self._eval(node, env, feeds)
        # output k of a node whose value is a tuple (FlexAttention's (out, lse, ...)) is its item k
        return [_numpy(self._flex_mask(r, env) if t is None else
                       env[t][r.port] if isinstance(env[t], (tuple, list)) else env[t])
                for t, r in zip(self._targets, self.refs)]

    def _flex_mask(self, ref: ValueRef, env: dict) -> torch.Tensor:
        mask, ins = self._flex[ref]
        values = [env[x] if isinstance(x, fx.Node) else x for x in ins]
        return evaluate(mask, values[:2], values[2:2 + len(mask.buffers)])

    def _eval(self, node: fx.Node, env: dict, feeds: Mapping[str, np.ndarray]):
        if node.op == "placeholder":
            if node.name in self._weights:
                return self._weights[node.name]
            want = _torch_dtype(node)
            x = torch.from_numpy(np.ascontiguousarray(feeds[node.name]))
            return x if want is None else x.to(want)
        if node.op == "get_attr":
            obj = self._gm
            for part in str(node.target).split("."):
                obj = getattr(obj, part)
            return obj
        args = fx.node.map_arg(node.args, lambda n: env[n])
        kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n])
        if node.op == "call_function":
            return node.target(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        if node.op == "call_module":
            return self._gm.get_submodule(node.target)(*args, **kwargs)
        raise ValueError(f"cannot evaluate fx node {node.name} ({node.op})")


def _ancestors(targets: Sequence[fx.Node]) -> set[fx.Node]:
    needed, stack = set(), list(targets)
    while stack:
        n = stack.pop()
        if n not in needed:
            needed.add(n)
            stack.extend(n.all_input_nodes)
    return needed


def _meta(node: fx.Node) -> tuple[np.dtype, tuple | None]:
    val = node.meta.get("val")
    if not isinstance(val, torch.Tensor):
        val = node.meta.get("tensor_meta")
    if val is None or not hasattr(val, "shape"):
        return np.dtype(np.float32), None
    shape = tuple(int(d) if _static(d) else str(d) for d in val.shape)
    return _np_dtype(val.dtype), shape


def _torch_dtype(node: fx.Node):
    val = node.meta.get("val", node.meta.get("tensor_meta"))
    return getattr(val, "dtype", None)


def _static(d) -> bool:
    if isinstance(d, int):
        return True
    try:
        return d.node.is_constant()
    except Exception:
        return False


def _np_dtype(dtype: torch.dtype) -> np.dtype:
    if dtype == torch.bool:
        return np.dtype(np.bool_)
    if dtype.is_floating_point:
        return np.dtype(np.float32) if dtype == torch.bfloat16 else np.dtype(torch.empty((), dtype=dtype).numpy().dtype)
    return np.dtype(torch.empty((), dtype=dtype).numpy().dtype)


def _numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        return (x.float() if x.dtype == torch.bfloat16 else x).numpy()
    return np.asarray(x)
