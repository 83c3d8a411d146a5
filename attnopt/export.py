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
from .errors import AttnoptError, one_line
from .onnx_compat import DOMAIN, IR_VERSION



def _translation(spec):
    """A custom_translation_table entry for one variant: the op's arguments in ``spec.torch_schema`` order."""
    import onnx
    from onnxscript import opset18 as op

    from attnopt.kernels.onnx_functions import attnopt_opset

    no_sinks = onnx.helper.make_tensor("no_sink_logits", onnx.TensorProto.FLOAT, [0], [])
    tensor_names = [t.name for t in spec.tensor_inputs]
    attr_types = {name: spec.onnx_attr_type(name) for name in spec.attr_names}

    def translate(q, k, v, mask, key_padding, *rest, sink_logits=None):
        sinks = []
        if spec.serves_sink_logits:  # the torch op's last argument; in ONNX after KeyPadding, empty for none
            if len(rest) > len(tensor_names) + len(spec.attr_names):
                *rest, sink_logits = rest
            sinks = [op.Constant(value=no_sinks) if sink_logits is None else op.Cast(sink_logits, to=1)]
        tensors, attrs = rest[:len(tensor_names)], dict(zip(spec.attr_names, rest[len(tensor_names):]))
        attrs = {n: int(x) if attr_types[n] == "int" else float(x) if attr_types[n] == "float" else x
                 for n, x in attrs.items()}
        zero = op.CastLike(op.Constant(value_float=0.0), q)
        if mask is None:  # "no mask" and "no key padding" are broadcast zeros (kernels.onnx_functions)
            mask = op.Expand(zero, op.Constant(value_ints=[1, 1, 1, 1]))
        if key_padding is None:
            key_padding = op.Expand(zero, op.Constant(value_ints=[1, 1]))
        return getattr(attnopt_opset, spec.onnx_op_type)(q, k, v, mask, key_padding, *sinks, *tensors, **attrs)

    translate.__name__ = f"attnopt_{spec.op_name}"
    return translate


def _prefix_sum_translation():
    """``attnopt::prefix_sum`` (the blocked-row correction's running sums) as ``ai.attnopt::PrefixSum``, not the
    CumSum that onnxruntime's CUDA provider computes in O(L²) along its axis (``kernels.prefix_sum_onnx``)."""
    from attnopt.kernels.onnx_functions import attnopt_opset

    def attnopt_prefix_sum(x):
        return attnopt_opset.PrefixSum(x)

    return attnopt_prefix_sum


def export_onnx(graph_module, example_inputs, path, *, dynamic_shapes=None, input_names=None,
                output_names=None, opset_version: int = 18, verbose: bool = False):
    """Export a (rewritten) GraphModule / nn.Module to ONNX at ``path``; returns the path.

    attnopt ops become ``ai.attnopt`` nodes with their bodies attached, the IR
    version stays loadable by onnxruntime, and the file is written atomically.
    """
    import onnx
    import torch

    from attnopt.kernels import prefix_sum  # noqa: F401  registers torch.ops.attnopt.prefix_sum
    from attnopt.kernels.onnx_functions import attach_functions, register_schemas
    from attnopt.kernels.registry import all_variants

    register_schemas()
    table = {spec.torch_op.default: _translation(spec) for spec in all_variants()}
    table[torch.ops.attnopt.prefix_sum.default] = _prefix_sum_translation()
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
        raise AttnoptError(f"ONNX export failed: {type(e).__name__}: {one_line(e)}") from None
    proto = program.model_proto
    used = {n.op_type for n in _all_nodes(proto) if n.domain == DOMAIN}
    if used:
        attach_functions(proto, sorted(used))
    proto.ir_version = min(proto.ir_version, IR_VERSION)
    return write_atomic(path, lambda tmp: onnx.save(proto, tmp))


def _all_nodes(proto):
    yield from proto.graph.node
    for f in proto.functions:
        yield from f.node


__all__ = ["export_onnx"]
