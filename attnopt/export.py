"""fx -> ONNX export that turns ``torch.ops.attnopt.*`` into ``ai.attnopt`` nodes.

Each attnopt op gets a translation that emits a real ``ai.attnopt::<Op>``
node (passing the onnxscript *function* itself would make the exporter inline
it, which failed), then the op bodies are attached as model-local functions so
stock onnxruntime runs the result.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings

from .atomic import write_atomic
from .errors import AttnoptError

IR_VERSION = 10


def _translation(spec):
    """A custom_translation_table entry for one kernel: q, k, v, mask, *attrs, scale, causal."""
    import onnxscript
    from onnxscript import opset18 as op

    from attnopt.kernels.onnx_functions import DOMAIN, VERSION
    from attnopt.kernels.registry import COMMON_ATTRS

    attnopt_ops = onnxscript.values.Opset(DOMAIN, VERSION)
    names = spec.attrs + COMMON_ATTRS

    def translate(q, k, v, mask, *attrs):
        values = dict(zip(names, attrs))
        values["causal"] = int(bool(values["causal"]))
        values["scale"] = float(values["scale"])
        if mask is None:
            # "No mask" is a (1,1,1,1) zero in the query's dtype (see kernels.onnx_functions).
            mask = op.Expand(op.CastLike(op.Constant(value_float=0.0), q),
                             op.Constant(value_ints=[1, 1, 1, 1]))
        return getattr(attnopt_ops, spec.onnx_op_type)(q, k, v, mask, **values)

    translate.__name__ = f"attnopt_{spec.name}"
    return translate


def export_onnx(graph_module, example_inputs, path, *, dynamic_shapes=None, input_names=None,
                output_names=None, opset_version: int = 18, verbose: bool = False):
    """Export a (rewritten) GraphModule / nn.Module to ONNX at ``path``; returns the path.

    attnopt ops become ``ai.attnopt`` nodes with their bodies attached, the IR
    version stays loadable by onnxruntime, and the file is written atomically.
    """
    import onnx
    import torch

    from attnopt.kernels.onnx_functions import attach_functions, register_schemas
    from attnopt.kernels.registry import KERNELS

    register_schemas()
    table = {spec.torch_op.default: _translation(spec) for spec in KERNELS.values()}
    sink = io.StringIO()
    # The exporter logs a warning per missing optional library (torchvision) on every export.
    logging.getLogger("torch.onnx").setLevel(logging.WARNING if verbose else logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), \
                (contextlib.nullcontext() if verbose else contextlib.redirect_stderr(sink)):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                graph_module, tuple(example_inputs), dynamo=True, opset_version=opset_version,
                custom_translation_table=table, dynamic_shapes=dynamic_shapes, input_names=input_names,
                output_names=output_names, verbose=verbose, optimize=True)
    except Exception as e:
        raise AttnoptError(f"ONNX export failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}") from None
    proto = program.model_proto
    used = {n.op_type for n in _all_nodes(proto) if n.domain == "ai.attnopt"}
    if used:
        attach_functions(proto, sorted(used))
    proto.ir_version = min(proto.ir_version, IR_VERSION)
    return write_atomic(path, lambda tmp: onnx.save(proto, tmp))


def _all_nodes(proto):
    yield from proto.graph.node
    for f in proto.functions:
        yield from f.node


__all__ = ["export_onnx"]
