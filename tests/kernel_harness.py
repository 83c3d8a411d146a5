"""Running one variant three ways (reference, torch op, ONNX body in onnxruntime) on the same tensors.

Every call goes through the op contract of ``attnopt.kernels.spec``, driven by
the variant's spec alone, so a new variant is covered by registering.
"""

from __future__ import annotations

import functools

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper
from torch.utils._python_dispatch import TorchDispatchMode

from attnopt.kernels.onnx_functions import attach_functions, register_schemas
from attnopt.kernels.registry import get_variant
from attnopt.onnx_compat import DOMAIN

register_schemas()

# Symbolic dims for the ONNX graph inputs: every size, N and M included, is left to run time.
RANKS = {"Q": ["B", "H", "N", "D"], "K": ["B", "Hkv", "M", "D"], "V": ["B", "Hkv", "M", "D"],
         "Mask": ["Bm", "Hm", "Nm", "Mm"], "KeyPadding": ["Bk", "Mk"], "SinkLogits": ["Hs"]}
# The op contract's graph inputs (the variant's constant tensors are initializers); SinkLogits where served.
COMMON = ("Q", "K", "V", "Mask", "KeyPadding", "SinkLogits")


def tensors(spec, params: dict, q: torch.Tensor, k: torch.Tensor, seed: int = 0) -> dict:
    return {name: torch.from_numpy(np.asarray(arr)) for name, arr in
            spec.tensors_for(params, tuple(q.shape), tuple(k.shape), seed).items()}


def run_reference(name, q, k, v, params, *, scale, mask=None, key_padding=None, causal=False, softcap=0.0,
                  sink_logits=None):
    spec = get_variant(name)
    extra = tensors(spec, params, q, k)
    if sink_logits is not None:
        extra["sink_logits"] = sink_logits
    return spec.reference(q, k, v, **params, **extra, scale=scale, mask=mask, key_padding=key_padding,
                          causal=causal, softcap=softcap)


def run_op(name, q, k, v, params, *, scale, mask=None, key_padding=None, causal=False, softcap=0.0,
           sink_logits=None):
    spec = get_variant(name)
    extra = tensors(spec, params, q, k)
    args = [extra[t.name] for t in spec.tensor_inputs] + [params[p] for p in spec.param_names]
    sinks = [sink_logits] if spec.serves_sink_logits else []
    return spec.torch_op(q, k, v, mask, key_padding, *args, scale, causal, softcap, *sinks)


def onnx_model(name, params: dict, *, scale, causal, softcap=0.0, opset=18, elem_type=TensorProto.FLOAT,
               dims=None, q_shape=(1, 1, 1, 1), k_shape=(1, 1, 1, 1)) -> onnx.ModelProto:
    """A model with one ai.attnopt node of variant ``name``, its constant tensors as initializers."""
    spec = get_variant(name)
    dims = dims or RANKS
    attrs = {**params, "scale": scale, "causal": int(causal), "softcap": softcap}
    consts = spec.tensors_for(params, q_shape, k_shape, 0)
    node = helper.make_node(spec.onnx_op_type, list(spec.onnx_inputs), ["Y"], domain=DOMAIN,
                            **{a: attrs[a] for a in spec.attr_names})
    inputs = [helper.make_tensor_value_info(n, elem_type if n in "QKV" else TensorProto.FLOAT,
                                            dims.get(n, RANKS[n]))
              for n in COMMON if n in spec.onnx_inputs]
    inits = [onnx.numpy_helper.from_array(np.asarray(consts[t.name]), t.name) for t in spec.tensor_inputs]
    graph = helper.make_graph([node], name, inputs, [helper.make_tensor_value_info("Y", elem_type, dims["Q"])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    attach_functions(model, [spec.onnx_op_type])
    return model


@functools.lru_cache(maxsize=None)
def _session(name, frozen_params, scale, causal, softcap, opset, q_shape, k_shape):
    model = onnx_model(name, dict(frozen_params), scale=scale, causal=causal, softcap=softcap, opset=opset,
                       q_shape=q_shape, k_shape=k_shape)
    onnx.checker.check_model(model, full_check=True)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def run_onnx(name, q, k, v, params, *, scale, mask=None, key_padding=None, causal=False, softcap=0.0, opset=18,
             sink_logits=None):
    """The ONNX body in onnxruntime (CPU); "no mask", "no key padding" and "no sink logits" are the documented
    broadcast zeros and empty vector."""
    spec = get_variant(name)
    shapes = (tuple(q.shape), tuple(k.shape)) if spec.tensor_inputs else ((1,) * 4, (1,) * 4)
    sess = _session(name, tuple(sorted(params.items())), float(scale), bool(causal), float(softcap), opset, *shapes)
    mask = torch.zeros(1, 1, 1, 1) if mask is None else mask.float()
    key_padding = torch.zeros(1, 1) if key_padding is None else key_padding.float()
    feeds = {"Q": q.numpy(), "K": k.numpy(), "V": v.numpy(), "Mask": mask.numpy(), "KeyPadding": key_padding.numpy()}
    if spec.serves_sink_logits:
        feeds["SinkLogits"] = (torch.zeros(0) if sink_logits is None else sink_logits.float()).numpy()
    (y,) = sess.run(None, feeds)
    return torch.from_numpy(y)


def ops_onnxruntime_runs(model: onnx.ModelProto, path) -> list[str]:
    """The op types (subgraphs included) of ``model`` as onnxruntime's CPU EP runs it: the graph it saves at
    ``path`` after inlining the bodies and its extended optimisations (constant folding, If with a constant
    condition replaced by its branch)."""
    from attnopt.kernels.onnx_functions import all_nodes

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(path)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return [n.op_type for n in all_nodes(onnx.load(str(path)).graph.node)]


def run_counting_steps(model: onnx.ModelProto, feeds: dict) -> tuple[list, int]:
    """The model's outputs and how many steps its one Scan (a body's query blocks) ran, on the CPU EP.

    The body is inlined so the Scan's first output, its step counter, can be read as a graph output.
    """
    import onnx.inliner

    model = onnx.inliner.inline_local_functions(model)
    (scan,) = [node for node in model.graph.node if node.op_type == "Scan"]
    model.graph.output.append(helper.make_tensor_value_info(scan.output[0], TensorProto.INT64, None))
    *outputs, steps = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, feeds)
    return outputs, int(steps)


class MaxNumel(TorchDispatchMode):
    """Records the largest tensor any aten op produces, inside attnopt's own ops too.

    A custom op (torch.library.custom_op) reaches a dispatch mode as one call, and
    its body runs with the mode popped: left alone, the mode would see only the op's
    output. An ``attnopt`` op is therefore redispatched to its backend kernel with
    the mode pushed again, so every tensor its implementation builds is seen.
    """

    def __init__(self):
        super().__init__()
        self.max_numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "attnopt":
            with self:
                out = func.redispatch(_backend_keys(args), *args, **kwargs)
        else:
            out = func(*args, **kwargs)
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.max_numel = max(self.max_numel, t.numel())
        return out


def _backend_keys(args) -> torch._C.DispatchKeySet:
    """The backend an op's tensor arguments live on, as the key set to redispatch to."""
    cuda = any(isinstance(a, torch.Tensor) and a.is_cuda for a in args)
    return torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA if cuda else torch._C.DispatchKey.CPU)
