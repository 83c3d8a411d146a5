"""Whether a call is plain eager, with nothing tracing it: where an op's implementation may run directly.

A Python custom op's round trip through the dispatcher costs about 25 µs a call on the H200's host
(BENCHMARKS.md, issue 9), as much as a short band's kernel. Outside of any tracing nothing records the
call, so the ops that are cheap to run (cuDNN's bands, the running sum) call their implementation then, and
go through ``torch.ops.attnopt`` only where a tracer must see them whole.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils._python_dispatch import _get_current_dispatch_mode


def untraced(*tensors: Tensor) -> bool:
    """Real tensors with nothing tracing them: not compiling, no dispatch mode, no fake, functional or
    functorch-wrapped tensors. The compiling test comes first: dynamo reads it as True and stops there, where it
    could not trace the functorch check."""
    return (not torch.compiler.is_compiling() and _get_current_dispatch_mode() is None
            and all(type(t) is torch.Tensor and not torch._C._functorch.is_functorch_wrapped_tensor(t)
                    for t in tensors))
