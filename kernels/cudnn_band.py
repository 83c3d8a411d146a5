"""Sliding-window bands through cuDNN's diagonal-band attention, where the cuDNN frontend is installed.

A band of unit 1 (window: query p sees keys p − P ≤ j ≤ p + A) is a diagonal band,
which cuDNN's fused attention computes natively and skips tiles outside of (its
``diagonal_band_left_bound`` / ``right_bound``, aligned bottom-right so that a KV
cache's offset M − N rides on the diagonal). On the H200 (bf16, H=16, D=128,
W=1024) it ran 1.23–1.30× faster than the band kernel, equal to it within bf16
rounding (BENCHMARKS.md, issue 9): FlashAttention-3-class throughput, which Triton 3.6
does not reach on Hopper (no warpgroup ping-pong).

torch exposes cuDNN's attention without the band, so this goes through NVIDIA's own
Python binding (``pip install nvidia-cudnn-frontend``, the ``[cudnn]`` extra) over
the libcudnn torch already loads. Without it, or for anything the band kernel adds
(sinks, key padding, masks, softcap, sink logits, fp32), ``triton_band`` runs as
before. The call is the op ``attnopt::cudnn_window`` with a fake, so torch.compile
keeps it as one node inside the band ops' Triton decomposition (no graph break).
Execution plans are built once per shape and reused (building takes about a second).
"""

from __future__ import annotations

import atexit
import os

import torch
from torch import Tensor

__all__ = ["available", "diagonal_bounds", "window_attention"]

# "auto": cuDNN's band where the frontend imports and the call is eligible; "off": always the band kernel.
CUDNN_WINDOW = os.environ.get("ATTNOPT_CUDNN_WINDOW", "auto")
_state: dict = {}


@atexit.register
def _release() -> None:
    """Drop the plans and handles before the interpreter's teardown, where the binding reports any cuDNN object
    still alive as a leak (a screenful of "nanobind: leaked ..." at every exit)."""
    _state.pop("plans", None)
    _state.pop("handles", None)


def diagonal_bounds(unit: int, before: int, after: int, sinks: int, causal: bool, n: int, m: int) -> tuple[int, int] | None:
    """cuDNN's (left, right) bounds for a band of unit 1 over N queries and M keys: it keeps key j for query i
    at position p = i + M − N where p − left < j ≤ p + right. None for any other band: units above 1
    (segmented, memory) are not diagonal, sinks are keys outside the band, and fewer keys than queries would put
    positions below zero."""
    if unit != 1 or sinks or m < n or n == 0:
        return None
    cap = m + n + 1  # a bound past every key keeps them all, and stays an int32
    return min(before + 1, cap), 0 if causal else min(after, cap)


def available() -> bool:
    """Whether cuDNN's frontend imports here (once per process)."""
    if CUDNN_WINDOW == "off":
        return False
    if "cudnn" not in _state:
        try:
            import cudnn  # noqa: F401  nvidia-cudnn-frontend

            _state["cudnn"] = cudnn
        except Exception:  # noqa: BLE001  not installed, or no libcudnn it can load
            _state["cudnn"] = None
    return _state["cudnn"] is not None


def eligible(q: Tensor, k: Tensor, v: Tensor, bounds, scale: float) -> bool:
    """Whether cuDNN's fused attention takes these inputs: fp16/bf16 on CUDA, head dims a multiple of 8 up to
    256, the last dim dense, static sizes, and a plan cuDNN supports (built here from shapes alone, so the check
    also runs on the fake tensors torch.compile traces with; a refusal is remembered)."""
    if not (bounds is not None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)
            and q.dtype == k.dtype == v.dtype and q.shape[-1] % 8 == 0 and q.shape[-1] <= 256 and available()):
        return False
    layout = _layout(q, k, v)
    if layout is None or any(s[-1] != 1 for s in layout[1::2]):
        return False
    try:
        _plan(q.device, q.dtype, layout, *bounds, scale)
    except Exception:  # noqa: BLE001  cuDNN refused this configuration: the band kernel serves it
        _state.setdefault("plans", {})[(q.device.index, q.dtype, layout, *bounds, float(scale))] = None
        return False
    return True


def _window(q: Tensor, k: Tensor, v: Tensor, left: int, right: int, scale: float) -> Tensor:
    """softmax over keys p − left < j ≤ p + right (p = i + M − N) of q (B, H, N, D) against k, v (B, Hkv, M, D),
    Hkv dividing H. Returns (B, H, N, D), contiguous. Callers check ``eligible`` first."""
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    run = _plan(q.device, q.dtype, _layout(q, k, v), left, right, scale)
    cudnn = run["cudnn"]
    cudnn.set_stream(handle=run["handle"], stream=torch.cuda.current_stream(q.device).cuda_stream)
    run["graph"].execute({run["q"]: q, run["k"]: k, run["v"]: v, run["o"]: out},
                         _workspace(run["workspace"], q.device), handle=run["handle"])
    return out


# A module may run twice (imported as attnopt.kernels and as kernels): torch.library defines an op once.
if not hasattr(torch.ops.attnopt, "cudnn_window"):
    torch.library.custom_op("attnopt::cudnn_window", _window, mutates_args=(), device_types="cuda").register_fake(
        lambda q, k, v, left, right, scale: q.new_empty(q.shape))
window_attention = torch.ops.attnopt.cudnn_window


def _layout(q: Tensor, k: Tensor, v: Tensor) -> tuple | None:
    """(shape, stride) of q, k, v and the contiguous output, as plain ints; None for symbolic sizes."""
    parts = []
    for t in (q, k, v):
        parts += [tuple(t.shape), tuple(t.stride())]
    parts += [tuple(q.shape), _contiguous(q.shape)]
    if not all(isinstance(d, int) for p in parts for d in p):
        return None
    return tuple(parts)


def _contiguous(shape) -> tuple:
    """A contiguous tensor's strides (what ``torch.empty(shape)`` gets)."""
    strides, step = [], 1
    for d in reversed(shape):
        strides.append(step)
        step *= max(d, 1)
    return tuple(reversed(strides))


def _plan(device: torch.device, dtype: torch.dtype, layout: tuple, left: int, right: int, scale: float) -> dict:
    """The built cuDNN graph for these shapes, strides and bounds (built on first use, then reused)."""
    key = (device.index, dtype, layout, left, right, float(scale))
    plans = _state.setdefault("plans", {})
    if key in plans:
        if plans[key] is None:
            raise RuntimeError("cuDNN refused this band configuration")
        return plans[key]
    if not available():
        raise RuntimeError("cuDNN's frontend is not available")
    cudnn = _state["cudnn"]
    handles = _state.setdefault("handles", {})
    handle = handles.get(device.index)
    if handle is None:
        with torch.cuda.device(device):
            handle = handles[device.index] = cudnn.create_handle()
    io = cudnn.data_type.HALF if dtype == torch.float16 else cudnn.data_type.BFLOAT16
    graph = cudnn.pygraph(io_data_type=io, intermediate_data_type=cudnn.data_type.FLOAT,
                          compute_data_type=cudnn.data_type.FLOAT, handle=handle)
    (sq, tq), (sk, tk), (sv, tv), (so, to_) = zip(layout[0::2], layout[1::2])
    q, k, v = (graph.tensor(name=n, dim=list(s), stride=list(t), data_type=io)
               for n, s, t in (("q", sq, tq), ("k", sk, tk), ("v", sv, tv)))
    o, _ = graph.sdpa(name="band", q=q, k=k, v=v, generate_stats=False, attn_scale=float(scale),
                      diagonal_band_left_bound=left, diagonal_band_right_bound=right,
                      diagonal_alignment=cudnn.diagonal_alignment.BOTTOM_RIGHT)
    o.set_output(True).set_dim(list(so)).set_stride(list(to_))
    graph.validate()
    graph.build_operation_graph()
    graph.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
    graph.check_support()
    graph.build_plans()
    plans[key] = {"cudnn": cudnn, "graph": graph, "handle": handle, "q": q, "k": k, "v": v, "o": o,
                  "workspace": graph.get_workspace_size()}
    return plans[key]


def _workspace(size: int, device: torch.device) -> Tensor:
    """A scratch buffer of at least ``size`` bytes, from torch's allocator (0 bytes: a one-byte placeholder)."""
    return torch.empty(max(size, 1), dtype=torch.uint8, device=device)
