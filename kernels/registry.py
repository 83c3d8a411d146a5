"""What frontends need to call an attention kernel, without knowing variants.

The torch op is called as ``op(q, k, v, mask, *[params[a] for a in spec.attrs],
scale, causal)``; the ONNX node has inputs (Q, K, V, Mask) and attributes
``spec.attrs + COMMON_ATTRS``. ``attrs`` here is the one place that orders a
variant's parameters; the op schemas and ONNX bodies are tested against it.

Importing this module is cheap: torch ops and onnxscript bodies load on first use.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

__all__ = ["COMMON_ATTRS", "KERNELS", "KernelSpec", "get_kernel"]

# Trailing arguments every attention kernel takes after its own attrs.
COMMON_ATTRS = ("scale", "causal")


@dataclass(frozen=True)
class KernelSpec:
    name: str  # torch.ops.attnopt.<name>, also the variant's name
    onnx_op_type: str  # ai.attnopt::<onnx_op_type>
    attrs: tuple[str, ...]  # the variant's own parameters, in call order
    module: str  # the attnopt.kernels module that defines the torch op

    @property
    def torch_op(self):
        """torch.ops.attnopt.<name> (imports torch and registers the op)."""
        importlib.import_module(f"{__package__}.{self.module}")
        import torch

        return getattr(torch.ops.attnopt, self.name)

    @property
    def onnx_function(self):
        """The onnxscript function that is the ONNX body (imports onnxscript)."""
        from .onnx_functions import FUNCTIONS

        return FUNCTIONS[self.onnx_op_type]


KERNELS: dict[str, KernelSpec] = {
    spec.name: spec
    for spec in (
        KernelSpec("segmented_attention", "SegmentedAttention", ("segment_size", "sinks"), "segmented"),
    )
}


def get_kernel(name: str) -> KernelSpec:
    try:
        return KERNELS[name]
    except KeyError:
        raise KeyError(f"no attnopt kernel named {name!r}; known: {sorted(KERNELS)}") from None
