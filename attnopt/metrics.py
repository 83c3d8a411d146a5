"""How far a rewritten model's tensor is from the original's: max-abs, relative L2, cosine.

validate reports these per output and per site; bench per sequence length.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class Metric:
    """How far ``b`` (rewritten) is from ``a`` (original) for one tensor."""

    name: str
    max_abs: float | None
    rel_l2: float | None  # ||a - b|| / ||a||
    cosine: float | None
    shape: tuple | None
    value: str = ""  # the tensor's name in the graph
    note: str = ""  # why it is not comparable, when it is not

    @property
    def comparable(self) -> bool:
        return self.rel_l2 is not None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape) if self.shape is not None else None
        for k in ("max_abs", "rel_l2", "cosine"):
            if d[k] is not None and not np.isfinite(d[k]):
                d[k] = str(d[k])  # JSON has no inf/nan
        return d


def not_comparable(name: str, note: str, shape=None, value: str = "") -> Metric:
    return Metric(name, None, None, None, shape, value, note)


def compare(name: str, a, b, value: str = "") -> Metric:
    """Metric of ``b`` against the reference ``a``. NaNs in the same places in both are ignored."""
    a, b = as_numpy(a), as_numpy(b)
    if a.shape != b.shape:
        return not_comparable(name, f"not comparable: shape {tuple(a.shape)} vs {tuple(b.shape)}",
                              tuple(a.shape), value)
    a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    nan_a, nan_b = np.isnan(a64), np.isnan(b64)
    if (nan_a != nan_b).any():
        return Metric(name, float("nan"), float("nan"), float("nan"), tuple(a.shape), value,
                      "NaN in one model and not the other")
    if nan_a.any():
        a64, b64 = a64[~nan_a], b64[~nan_a]
    inf = np.isinf(a64) | np.isinf(b64)
    if inf.any():  # equal infinities agree; anything else is an infinite error
        if (a64[inf] != b64[inf]).any():
            return Metric(name, float("inf"), float("inf"), float("nan"), tuple(a.shape), value)
        a64, b64 = a64[~inf], b64[~inf]
    diff = a64 - b64
    max_abs = float(np.abs(diff).max()) if diff.size else 0.0
    na, nb, nd = (float(np.linalg.norm(x)) for x in (a64, b64, diff))
    rel = nd / na if na > 0 else (0.0 if nd == 0 else float("inf"))
    if na > 0 and nb > 0:
        cosine = float(np.clip(np.dot(a64, b64) / (na * nb), -1.0, 1.0))
    else:
        cosine = 1.0 if na == nb else 0.0
    return Metric(name, max_abs, rel, cosine, tuple(a.shape), value)


def as_numpy(x) -> np.ndarray:
    """An array or a torch tensor as numpy; half precisions widen to float32 (numpy has no bfloat16)."""
    if hasattr(x, "detach"):  # checked by duck type: an onnxruntime process never imports torch
        import torch

        x = x.detach().cpu()
        if x.dtype in (torch.bfloat16, torch.float16):
            x = x.float()
        return x.numpy()
    return np.asarray(x)


def describe(feeds: dict) -> dict:
    """name -> {"shape", "dtype"} of the inputs a run used, for reports."""
    out = {}
    for name, value in feeds.items():
        array = as_numpy(value)
        out[name] = {"shape": list(array.shape), "dtype": str(array.dtype)}
    return out
