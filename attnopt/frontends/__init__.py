"""Frontends: the only code that touches graph objects, one object per backend (see base.Frontend)."""

from __future__ import annotations

import os


def frontend_for(model):
    """The frontend that reads ``model``: the one place that tells an ONNX model from a torch one.

    ``model`` is any handle attnopt accepts, a LoadedModel, or a RewriteResult.
    Paths are ONNX files; anything from the ``onnx`` / ``onnx_ir`` packages is ONNX;
    everything else goes to the fx frontend, which refuses what torch cannot trace.
    """
    from ..loaded import LoadedModel
    from ..pipeline import RewriteResult

    if isinstance(model, RewriteResult):
        model = model.loaded
    if isinstance(model, LoadedModel):
        return model.frontend
    if isinstance(model, (str, os.PathLike)) or type(model).__module__.split(".")[0] in ("onnx", "onnx_ir"):
        from .onnx_frontend import ONNX

        return ONNX
    from .fx_frontend import FX  # imports torch: only for models that are not ONNX

    return FX
