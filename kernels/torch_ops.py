"""Defining a variant's torch op from its spec: the schema, the fake, the device implementations."""

from __future__ import annotations

import os
from typing import Callable

import torch

from .registry import get_variant
from .spec import COMMON_ATTRS


def define_op(variant: str, forward: Callable, *, cuda: Callable | None = None):
    """Register ``torch.ops.attnopt.<variant>_attention`` with the schema the spec derives.

    ``forward`` takes the op's arguments positionally (``spec.torch_schema``) and
    serves every device unless ``cuda`` is given. ``cuda`` is a Triton
    implementation registered the way ``torch.library.triton_op`` does it (see
    ``_register_triton``): it launches its kernels through
    ``torch.library.wrap_triton`` (``kernels.triton_launch.launch``), and may return
    None for arguments its kernels do not serve, where ``forward`` runs instead.
    Returns the op.
    """
    spec = get_variant(variant)
    forward = _checked(spec, forward)
    if cuda is not None:
        cuda = _checked(spec, cuda)
    # A module may be executed twice (importlib.reload, or imported under two names);
    # torch.library refuses to define the same op twice.
    if hasattr(torch.ops.attnopt, spec.op_name):
        return getattr(torch.ops.attnopt, spec.op_name)
    op = torch.library.custom_op(f"attnopt::{spec.op_name}", forward, mutates_args=(),
                                 device_types=("cpu", "cuda") if cuda is None else ("cpu",), schema=spec.torch_schema)
    if cuda is not None:
        _register_triton(op, cuda, forward)
    op.register_fake(_fake(spec))
    return getattr(torch.ops.attnopt, spec.op_name)


def _register_triton(op, cuda: Callable, forward: Callable) -> None:
    """What ``torch.library.triton_op`` does, for an op whose schema comes from the spec and whose CPU
    implementation is torch code: triton_op infers its schema from type hints and serves every device with
    one function, so it cannot take either.

    - eager CUDA: ``cuda`` with ``wrap_triton`` switched off, so each launch goes straight to the kernel
      (through the higher-order op it would cost about a millisecond of dispatch);
    - torch.compile: when AOTAutograd functionalizes the graph, the op decomposes into ``cuda``'s own
      calls, its launches recorded by ``wrap_triton`` as ``triton_kernel_wrapper_functional`` nodes, so
      Inductor sees and schedules the kernels instead of an opaque call. CPU tensors, torch.export (which
      keeps custom ops whole), arguments ``cuda`` declines, and ATTNOPT_OPAQUE_OPS=1 keep the op as one node.

    Inductor launches user kernels with Python floats as fp64 scalars (Triton's own launcher: fp32), so a
    kernel casts its float arguments to fp32 before they meet its loop-carried state.
    """
    from torch._library.triton import set_wrap_triton_enabled
    from torch._subclasses.fake_tensor import FakeTensor
    from torch._subclasses.functional_tensor import FunctionalTensor, FunctionalTensorMode

    def eager(*args, **kwargs):
        with set_wrap_triton_enabled(False):
            out = cuda(*args, **kwargs)
        return forward(*args, **kwargs) if out is None else out

    op.register_kernel("cuda", eager)

    def decompose(mode, func, types, args, kwargs):
        if os.environ.get("ATTNOPT_OPAQUE_OPS") == "1":  # escape hatch: compile around the ops, as custom_op does
            return mode.__torch_dispatch__(func, types, args, kwargs)
        try:
            from torch.export._trace import custom_triton_ops_decomposition_disabled
            keep_whole = custom_triton_ops_decomposition_disabled()
        except ImportError:
            keep_whole = False
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        if any(not issubclass(t, (FakeTensor, FunctionalTensor)) and t is not torch.Tensor for t in types):
            return NotImplemented
        if keep_whole or not tensors or tensors[0].device.type != "cuda":
            return mode.__torch_dispatch__(func, types, args, kwargs)
        with mode:
            out = cuda(*args, *kwargs.values())
        return mode.__torch_dispatch__(func, types, args, kwargs) if out is None else out

    op.register_torch_dispatch(FunctionalTensorMode, decompose)


def _checked(spec, fn: Callable) -> Callable:
    """``fn`` behind the spec's parameter checks, so a bad value called straight at the op is a clear ValueError."""
    first = 5 + len(spec.tensor_inputs) + len(spec.state)  # q, k, v, mask, key_padding, tensors, states, params
    complete = first + len(spec.params) + len(COMMON_ATTRS) + spec.serves_sink_logits

    def checked(*args, **kwargs):
        if spec.serves_sink_logits and len(args) < complete:
            # the schema's last argument has a default, which a caller may leave out or name: every
            # implementation gets it positionally
            args = (*args, kwargs.pop("sink_logits", None))
        for p, value in zip(spec.params, args[first:first + len(spec.params)]):
            if p.check is not None and not p.check(value):
                raise ValueError(f"{spec.op_name}: {p.name} {p.rule}, got {value!r}")
        return fn(*args, **kwargs)

    checked.__name__ = fn.__name__
    return checked


def _fake(spec) -> Callable:
    """Shapes without compute, so the op traces and exports: Y like q; a next state like its state (a new length)."""
    def fake(q, k, v, mask, key_padding, *rest):
        if not spec.state:
            return q.new_empty(q.shape)
        states = rest[len(spec.tensor_inputs):len(spec.tensor_inputs) + len(spec.state)]
        ctx = torch.library.get_ctx()
        return (q.new_empty(q.shape), *(s.new_empty((*s.shape[:2], ctx.new_dynamic_size(), *s.shape[3:]))
                                        if s.dim() == 4 else s.new_empty(s.shape) for s in states))
    return fake
