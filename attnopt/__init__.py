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


def rewrite(model, pass_name: str, *, layers=None, names=(), example_inputs=None, **params):
    """Rewrite the selected sites with one pass; returns a RewriteResult (see attnopt.pipeline)."""
    from .pipeline import rewrite as _rewrite
    return _rewrite(model, pass_name, layers=layers, names=names, example_inputs=example_inputs, **params)


def validate(original, rewritten, inputs=None, seq_len=None, **kwargs):
    """Compare original and rewritten on identical inputs, per output and per site (see attnopt.validate)."""
    from .validate import validate as _validate
    return _validate(original, rewritten, inputs=inputs, seq_len=seq_len, **kwargs)


def bench(model, pass_name: str, params=None, seq_lens=(512, 1024), **kwargs):
    """Time original vs rewritten across sequence lengths (see attnopt.bench)."""
    from .bench import bench as _bench
    return _bench(model, pass_name, params or {}, seq_lens, **kwargs)


def export_onnx(graph_module, example_inputs, path, **kwargs):
    """Export an fx-rewritten model to ONNX with ai.attnopt functions attached (see attnopt.export)."""
    from .export import export_onnx as _export
    return _export(graph_module, example_inputs, path, **kwargs)


__all__ = ["AttentionSite", "AttnoptError", "bench", "detect", "export_onnx", "rewrite", "validate"]
