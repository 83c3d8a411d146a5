"""One handle for any model attnopt accepts, with its View and sites.

``open_model`` dispatches to the right frontend once, so detect, rewrite and
validate all agree on what a model is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from .errors import AttnoptError
from .graph import View
from .match import detect_sites
from .site import AttentionSite


@dataclass
class LoadedModel:
    kind: str  # "onnx" | "fx"
    model: Any  # onnx_ir.Model | torch.fx.GraphModule | torch.export.ExportedProgram
    view: View
    sites: list[AttentionSite]
    source: str = ""
    example_inputs: tuple | None = None
    extra: dict = field(default_factory=dict)


def is_onnx_handle(model) -> bool:
    if isinstance(model, (str, os.PathLike)):
        return True
    mod = type(model).__module__
    return mod.startswith("onnx") or mod.startswith("onnx_ir")


def open_model(model, example_inputs=None, *, mutable: bool = False) -> LoadedModel:
    """Load ``model`` and detect its sites.

    ``mutable=True`` prepares a private copy for graph surgery: the caller's
    object is never modified, and an ExportedProgram becomes its runnable
    GraphModule (``ep.module()``), which is what fx rewrites edit.
    """
    if is_onnx_handle(model):
        from .frontends import onnx as onnx_frontend
        if mutable and type(model).__module__.startswith("onnx_ir"):
            import onnx_ir as ir
            model = ir.from_proto(ir.to_proto(model))
        ir_model = onnx_frontend.infer_shapes(onnx_frontend.load(model))
        view = onnx_frontend.lift(ir_model)
        source = str(model) if isinstance(model, (str, os.PathLike)) else (ir_model.graph.name or "model")
        return LoadedModel("onnx", ir_model, view, detect_sites(view), source=source)
    return _open_torch(model, example_inputs, mutable)


def _open_torch(model, example_inputs, mutable: bool = False) -> LoadedModel:
    import torch
    from .frontends import fx as fx_frontend
    if isinstance(model, torch.export.ExportedProgram):
        graph = model
    elif isinstance(model, torch.fx.GraphModule):
        graph = model
        if example_inputs is not None:
            fx_frontend.propagate_shapes(model, tuple(example_inputs))
    elif isinstance(model, torch.nn.Module):
        if example_inputs is None:
            raise AttnoptError("an nn.Module needs example_inputs (a tuple of tensors) to be traced")
        try:
            graph = torch.export.export(model, tuple(example_inputs))
        except Exception as e:
            raise AttnoptError(f"torch.export could not trace the module: {type(e).__name__}: "
                               f"{str(e).splitlines()[0][:200]}") from None
    else:
        raise AttnoptError(f"cannot read a model of type {type(model).__name__}")
    if mutable:
        import copy
        graph = graph.module() if isinstance(graph, torch.export.ExportedProgram) else copy.deepcopy(graph)
    view = fx_frontend.lift(graph)
    return LoadedModel("fx", graph, view, detect_sites(view), source=type(model).__name__,
                       example_inputs=tuple(example_inputs) if example_inputs is not None else None)
