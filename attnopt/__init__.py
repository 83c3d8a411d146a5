"""attnopt: a compiler for attention.

Find every dense scaled-dot-product attention in an ONNX model or a torch.fx
graph, rewrite it into a long-sequence variant, validate and benchmark.

    >>> import attnopt
    >>> sites = attnopt.detect("bert.onnx")
    >>> result = attnopt.rewrite("bert.onnx", "segmented", segment_size=512, sinks=4)
    >>> result.save("bert.segmented.onnx")
    >>> report = attnopt.validate("bert.onnx", "bert.segmented.onnx", seq_len=1024)
"""

from __future__ import annotations

from .errors import AttnoptError
from .site import AttentionSite

# Imported eagerly: importing the submodule attnopt.validate (or .bench) would
# otherwise rebind the package attribute from the function to the module.
from .bench import bench  # noqa: E402
from .validate import validate  # noqa: E402
from .tune import tune  # noqa: E402

__version__ = "0.1.0"


def detect(model, example_inputs=None) -> list[AttentionSite]:
    """Every attention site in ``model``.

    ``model`` is an ONNX path, ``onnx.ModelProto``, ``onnx_ir.Model``,
    ``torch.fx.GraphModule`` (pass ``example_inputs`` to propagate shapes),
    ``torch.export.ExportedProgram`` or ``nn.Module`` (``example_inputs`` required;
    it is traced with ``torch.export``).
    """
    from .loaded import open_model
    return open_model(model, example_inputs).sites


def skipped(model, example_inputs=None) -> list:
    """The softmax and fused-attention anchors that did not become sites, each with its reason
    (``SkippedAnchor``; ``.summary()`` is a dict). A crash inside the matcher lands here too."""
    from .loaded import open_model
    from .match import detect as _detect
    return list(_detect(open_model(model, example_inputs).view).skipped)


def rewrite(model, pass_name: str | None = None, *, layers=None, names=(), example_inputs=None, target="portable",
            plan=None, **params):
    """Rewrite the selected sites with one pass; returns a RewriteResult (see attnopt.pipeline).

    ``target="ort-cuda"`` (ONNX models) emits each variant's onnxruntime contrib-op lowering where it is exact.
    ``plan`` (a plan file or ``attnopt.plan.Plan``, from ``attnopt.tune``) instead of a pass: each site as
    the plan says (see attnopt.plan); it takes no pass, parameters or site selection.
    """
    if plan is not None:
        if pass_name is not None or params or layers is not None or names:
            raise AttnoptError("rewrite: a plan takes no pass, parameters, layers or names (the plan holds them)")
        from .plan import apply_plan
        return apply_plan(model, plan, example_inputs=example_inputs, target=target)
    if pass_name is None:
        raise AttnoptError("rewrite: give a pass name, or a plan")
    from .pipeline import rewrite as _rewrite
    return _rewrite(model, pass_name, layers=layers, names=names, example_inputs=example_inputs, target=target,
                    **params)


def export_onnx(graph_module, example_inputs, path, **kwargs):
    """Export an fx-rewritten model to ONNX with ai.attnopt functions attached (see attnopt.export)."""
    from .export import export_onnx as _export
    return _export(graph_module, example_inputs, path, **kwargs)


__all__ = ["AttentionSite", "AttnoptError", "bench", "detect", "export_onnx", "rewrite", "skipped", "tune", "validate"]
