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
    # A module may be executed twice (importlib.reload, or imported under two names);
    # torch.library refuses to define the same op twice.
    if hasattr(torch.ops.attnopt, spec.op_name):
        return getattr(torch.ops.attnopt, spec.op_name)
    op = torch.library.custom_op(f"attnopt::{spec.op_name}", forward, mutates_args=(),
                                 device_types=("cpu", "cuda") if cuda is None else ("cpu",), schema=spec.torch_schema)
    if cuda is not None:
        op.register_kernel("cuda", cuda)
    op.register_fake(lambda q, *rest: q.new_empty(q.shape))
    return getattr(torch.ops.attnopt, spec.op_name)


def key_padding_as_mask(key_padding: torch.Tensor | None) -> torch.Tensor | None:
    """(B | 1, M) key padding -> (B | 1, 1, 1, M), a 4-D additive mask term (a view, no copy)."""
    if key_padding is None:
        return None
    return key_padding.reshape(key_padding.shape[0], 1, 1, key_padding.shape[-1])


def combined_mask(mask: torch.Tensor | None, key_padding: torch.Tensor | None) -> torch.Tensor | None:
    """The dense remainder plus key padding as one broadcastable 4-D additive mask (no N×M unless mask is)."""
    kp = key_padding_as_mask(key_padding)
    if mask is None or kp is None:
        return mask if kp is None else kp
    return mask + kp
