"""The running sum along axis −2 as a torch op, ``attnopt::prefix_sum``, so an exported graph says what it is.

torch computes it with one ``cumsum``. The op is there for the export: ``attnopt.export_onnx`` turns it into
``ai.attnopt::PrefixSum`` (``prefix_sum_onnx``), where a traced ``cumsum`` would become ONNX's CumSum, which
onnxruntime's CUDA provider computes in O(L²) along its axis. The blocked-row correction
(``fx_rewrite.mean_where_blocked``) sums over every key with it. Outside of any tracing ``prefix_sum`` calls torch
directly (``untraced``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .untraced import untraced


def _running_sum(x: Tensor) -> Tensor:
    return torch.cumsum(x, dim=-2)


def _backward(ctx, grad: Tensor) -> Tensor:
    return grad.flip(-2).cumsum(-2).flip(-2)  # each element feeds every sum at or after it


# A module may run twice (imported as attnopt.kernels and as kernels): torch.library defines an op once.
if not hasattr(torch.ops.attnopt, "prefix_sum"):
    _op = torch.library.custom_op("attnopt::prefix_sum", _running_sum, mutates_args=())
    _op.register_fake(lambda x: torch.empty_like(x))
    _op.register_autograd(_backward)


def prefix_sum(x: Tensor) -> Tensor:
    """The inclusive running sum of x (..., L, C) along axis −2: ``torch.ops.attnopt.prefix_sum``, or torch's
    ``cumsum`` where nothing traces the call."""
    return _running_sum(x) if untraced(x) else torch.ops.attnopt.prefix_sum(x)
