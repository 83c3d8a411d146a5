"""nystrom's pseudo-inverse: the Newton–Schulz iteration of Nyströmformer, MatMuls only (so it lowers to ONNX)."""

from __future__ import annotations

import torch
from torch import Tensor


def newton_schulz_pinv(a: Tensor, steps: int) -> Tensor:
    """pinv(a) for a (..., p, q) with nonnegative entries (softmax rows), after ``steps`` iterations.

    Z₀ = aᵀ / (‖a‖₁‖a‖∞) starts inside the region of convergence;
    Z ← ¼ Z (13I − aZ (15I − aZ (7I − aZ))). An all-zero a gives 0.
    """
    norm1 = a.sum(dim=-2).amax(dim=-1)
    norm_inf = a.sum(dim=-1).amax(dim=-1)
    z = a.transpose(-1, -2) / (norm1 * norm_inf).clamp_min(torch.finfo(a.dtype).tiny)[..., None, None]
    eye = torch.eye(a.shape[-2], dtype=a.dtype, device=a.device)
    for _ in range(steps):
        az = a @ z
        z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
    return z
