"""How every attnopt Triton kernel is launched, eagerly and under torch.compile, and its TMA descriptors.

``launch(kernel)[grid](...)`` goes through ``torch.library.wrap_triton`` so the
ops that ``torch_ops.define_op`` registers are transparent to torch.compile: under a
tracer the launch becomes a ``triton_kernel_wrapper_mutation`` node Inductor compiles.

Host-side TMA descriptors (``tma_descriptor``) need care there. torch's
non-dynamo tracer (the one that traces a ``triton_op``'s body, torch 2.11-2.13)
records none: a ``TensorDescriptor`` of a traced tensor would be stored as a
constant. Dynamo, tracing ``TensorDescriptor.from_tensor`` itself, records the
descriptor as metadata on the node (the base tensor stays a graph input), and
Inductor builds the descriptor at run time. ``launch`` records that same metadata
for the descriptors our launchers build, so a compiled op runs the kernel the
eager one runs (and the GPU tests test), TMA loads included, instead of a
pointer-loading specialisation only torch.compile ever ran. On the H200 the two
timed within 2% of each other (BENCHMARKS.md, "torch.compile runs the eager
kernels"). The metadata goes through torch's private wrap_triton machinery
(torch 2.11 and 2.13 checked); where that is missing, traced launches load by
pointer.

A kernel must also survive torch's analysis of what it writes, which compiles it
with some integer arguments as Python constants: where that analysis fails,
Inductor copies every tensor argument before the launch (``triton_band``'s
``far`` line says how one kernel failed it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
from torch import Tensor

__all__ = ["launch", "tma_descriptor", "tma_ok"]


@dataclass(frozen=True)
class TracedDescriptor:
    """A TMA descriptor of a tensor a tracer holds: its base and block shape, for the traced node's metadata."""

    base: Tensor
    block_shape: tuple[int, ...]


def _descriptor_hopifier():
    """A wrap_triton tracer that records ``TracedDescriptor`` arguments as Inductor's stable TMA metadata."""
    try:
        from torch._higher_order_ops.triton_kernel_wrap import (
            TracingTritonHOPifier,
            create_tma_stable_metadata,
            triton_kernel_wrapper_mutation,
        )
    except ImportError:
        return None

    class DescriptorHOPifier(TracingTritonHOPifier):
        def call_HOP(self, variable, grids, combined_args, tx):  # noqa: N802  torch's name
            args, meta = {}, {}
            for name, value in combined_args.items():
                if isinstance(value, TracedDescriptor):
                    args[name] = value.base
                    meta[name] = create_tma_stable_metadata(list(value.block_shape))
                else:
                    args[name] = value
            graphable, constant_idx = self.store_non_graphable_args(args)
            return triton_kernel_wrapper_mutation(kernel_idx=variable.kernel_idx, constant_args_idx=constant_idx,
                                                  grid=grids, tma_descriptor_metadata=meta, kwargs=graphable)

    return DescriptorHOPifier()


# "0" turns the traced descriptors off (traced launches then load by pointer): the A/B switch for the benchmark
_HOPIFIER = _descriptor_hopifier() if os.environ.get("ATTNOPT_TRACED_TMA", "1") != "0" else None


def _tracing() -> bool:
    from torch.utils._python_dispatch import _get_current_dispatch_mode

    return _get_current_dispatch_mode() is not None


class _TracedLaunch:
    """``kernel[grid](...)`` under a tracer, through ``DescriptorHOPifier``."""

    def __init__(self, kernel):
        self.kernel = kernel

    def __getitem__(self, grid):
        wrapped = torch.library.wrap_triton(self.kernel)[grid]
        return lambda *args, **kwargs: _HOPIFIER.call_triton_kernel(wrapped, args, kwargs, None)


def launch(kernel):
    """``kernel`` for ``[grid](...)``, through ``torch.library.wrap_triton`` so that tracers record it.

    Under a dispatch mode (torch.compile's functionalization of the ops that
    ``torch_ops.define_op`` registers, make_fx) the launch becomes a
    ``triton_kernel_wrapper`` node Inductor compiles, with its TMA descriptors as
    metadata; with no mode active (eager) wrap_triton is switched off and hands
    back the kernel itself, which skips the higher-order op's dispatch (about a
    millisecond a launch). Under the interpreter it is the interpreted kernel.
    """
    from torch._library.triton import set_wrap_triton_enabled

    if not _tracing():
        if not isinstance(kernel, (triton.runtime.JITFunction, triton.runtime.Autotuner)):
            return kernel  # the interpreter's function: torch 2.11's wrap_triton refuses it even switched off
        with set_wrap_triton_enabled(False):
            return torch.library.wrap_triton(kernel)
    if _HOPIFIER is not None:
        return _TracedLaunch(kernel)
    return torch.library.wrap_triton(kernel)


def tma_ok(t: Tensor) -> bool:
    """Whether ``t`` can back a TMA descriptor: 16-byte aligned base and strides (the storage offset stands for
    the base: the allocator aligns storages far beyond 16 bytes). A tensor a tracer holds can where its launch
    records descriptors (above); elsewhere the traced kernel loads by pointer."""
    from torch._subclasses.fake_tensor import is_fake

    size = t.element_size()
    return ((_HOPIFIER is not None or not is_fake(t)) and t.storage_offset() * size % 16 == 0
            and all(st * size % 16 == 0 for st in t.stride()[:-1]))


def tma_descriptor(t: Tensor, block_shape: list[int]):
    """A host-side TMA descriptor of ``t`` (``tma_ok(t)`` holds); under a tracer, its stand-in for ``launch``."""
    if _tracing() and _HOPIFIER is not None:
        return TracedDescriptor(t, tuple(block_shape))
    from triton.tools.tensor_descriptor import TensorDescriptor

    return TensorDescriptor.from_tensor(t, list(block_shape))
