"""Defining a variant's torch op from its spec: the schema, the fake, the device implementations."""

from __future__ import annotations

from typing import Callable

import torch

from .registry import get_variant


def define_op(variant: str, forward: Callable, *, cuda: Callable | None = None):
    """Register ``torch.ops.attnopt.<variant>_attention`` with the schema the spec derives.

    ``forward`` takes the op's arguments positionally (``spec.torch_schema``) and
    serves every device unless ``cuda`` is given. Returns the op.
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
        op.register_kernel("cuda", cuda)
    op.register_fake(_fake(spec))
    return getattr(torch.ops.attnopt, spec.op_name)



def _checked(spec, fn: Callable) -> Callable:
    """``fn`` behind the spec's parameter checks, so a bad value called straight at the op is a clear ValueError."""
    first = 5 + len(spec.tensor_inputs) + len(spec.state)  # q, k, v, mask, key_padding, tensors, states, params

    def checked(*args):
        for p, value in zip(spec.params, args[first:first + len(spec.params)]):
            if p.check is not None and not p.check(value):
                raise ValueError(f"{spec.op_name}: {p.name} {p.rule}, got {value!r}")
        return fn(*args)

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
