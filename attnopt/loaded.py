"""One handle for any model attnopt accepts: its frontend, model object, View and sites.

``open_model`` asks ``attnopt.frontends.frontend_for`` which backend reads the
model, so detect, rewrite, validate and bench all agree on what a model is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .graph import View
from .site import AttentionSite


@dataclass
class LoadedModel:
    frontend: Any  # attnopt.frontends.base.Frontend
    model: Any  # onnx_ir.Model | torch.fx.GraphModule | torch.export.ExportedProgram
    view: View | None = None
    sites: list[AttentionSite] = field(default_factory=list)
    source: str = ""
    example_inputs: tuple | None = None

    @property
    def kind(self) -> str:
        """"onnx" | "fx", for reports; code that needs the backend asks ``frontend``."""
        return self.frontend.kind


def open_model(model, example_inputs=None, *, mutable: bool = False) -> LoadedModel:
    """Load ``model`` and detect its sites.

    ``mutable=True`` prepares a private copy for graph surgery: the caller's
    object is never modified, and an ExportedProgram becomes its runnable
    GraphModule (``ep.module()``), which is what fx rewrites edit.
    """
    from .frontends import frontend_for

    return frontend_for(model).load(model, example_inputs, mutable=mutable)


def relift(loaded: LoadedModel) -> LoadedModel:
    """Lift ``loaded.model`` into a fresh View and detect its sites: after loading, and again after surgery."""
    from .mask_analysis import refine_structured_masks
    from .match import detect_sites

    loaded.view = loaded.frontend.lift(loaded.model)
    loaded.sites = detect_sites(loaded.view)
    loaded.sites = refine_structured_masks(loaded)
    return loaded
