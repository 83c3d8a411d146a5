"""Bands cuDNN's fused attention serves whole, where NVIDIA's cuDNN frontend is installed.

Windows, through cuDNN's diagonal band (below). Memory with M_mem = S, through views: segments 1.. against
overlapping two-segment runs of keys (k and v viewed with a row stride of one segment, no copy), segment 0 by
itself, each call writing its part of the output in place: two calls and nothing to merge, where torch's
cuDNN call (no output views, no bounds) needs a second call and a log-sum-exp merge
(``triton_band._segment_fast_path``). Segments with grouped kv heads the same way, in one call.

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
before. The calls are the ops ``attnopt::cudnn_window`` and ``attnopt::cudnn_segments``
with fakes, so torch.compile keeps each as one node inside the band ops' Triton
decomposition (no graph break).
Execution plans are built once per shape and reused (building takes about a second).
"""

from __future__ import annotations

import atexit
import os

import torch
from torch import Tensor

from .band import whole_segments

__all__ = ["available", "diagonal_bounds", "eligible", "frontend_version", "segment_pairs", "segments_attention", "segments_eligible",
           "window_attention"]

# "auto": cuDNN where the frontend imports and the call is eligible; "off": never (the band kernel and torch's
# folded-segment path, as without the frontend).
CUDNN_BANDS = os.environ.get("ATTNOPT_CUDNN_BANDS", "auto")
_state: dict = {}


@atexit.register
def _release() -> None:
    """Drop the plans and handles before the interpreter's teardown, where the binding reports any cuDNN object
    still alive as a leak (a screenful of "nanobind: leaked ..." at every exit)."""
    _state.pop("plans", None)
    _state.pop("handles", None)


def diagonal_bounds(unit: int, before: int, after: int, sinks: int, causal: bool, n: int,
                    m: int) -> tuple[int, int] | None:
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
    if CUDNN_BANDS == "off":
        return False
    if "cudnn" not in _state:
        try:
            import cudnn  # noqa: F401  nvidia-cudnn-frontend

            _state["cudnn"] = cudnn
        except Exception:  # noqa: BLE001  not installed, or no libcudnn it can load
            _state["cudnn"] = None
    return _state["cudnn"] is not None


def frontend_version() -> str | None:
    """The cuDNN frontend's version where it serves (``available``), else None."""
    return getattr(_state["cudnn"], "__version__", "?") if available() else None


def eligible(q: Tensor, k: Tensor, v: Tensor, bounds, scale: float) -> bool:
    """Whether cuDNN's fused attention takes this window: fp16/bf16 on CUDA, head dims a multiple of 8 up to 256,
    the last dim dense, static sizes, and a plan cuDNN supports (built here from shapes alone, so the check also
    runs on the fake tensors torch.compile traces with; a refusal is remembered)."""
    if bounds is None or not _inputs_ok(q, k, v):
        return False
    return _supported(q.device, q.dtype, _layout(q, k, v, _contiguous_like(q)), *bounds, scale)


def segment_pairs(unit: int, before: int, after: int, sinks: int, n: int, m: int) -> bool | None:
    """Whether a band is whole segments that cuDNN's attention serves as batches of views, and if so whether each
    also sees the previous one (memory with M_mem = S: True; segmented: False); None otherwise. Sinks are keys
    outside the segments (the merging fast path in ``triton_band`` serves them)."""
    return None if sinks else whole_segments(unit, before, after, n, m)


def segments_eligible(q: Tensor, k: Tensor, v: Tensor, unit: int, prev: bool, causal: bool, scale: float) -> bool:
    """``eligible`` for ``segments_attention``: every plan it would run is supported."""
    if not _inputs_ok(q, k, v):
        return False
    out = _contiguous_like(q)
    return all(_supported(q.device, q.dtype, _layout(*views), None, 0 if causal else None, scale)
               for views in _segment_views(q[:1], k[:1], v[:1], out[:1], unit, prev))


def _inputs_ok(q: Tensor, k: Tensor, v: Tensor) -> bool:
    return (q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and q.dtype == k.dtype == v.dtype
            and q.shape[-1] % 8 == 0 and q.shape[-1] <= 256 and all(t.stride(-1) == 1 for t in (q, k, v))
            and available())


def _supported(device, dtype, layout, left, right, scale) -> bool:
    if layout is None:
        return False
    try:
        _plan(device, dtype, layout, left, right, scale)
    except Exception:  # noqa: BLE001  cuDNN refused this configuration: the band kernel serves it
        _state.setdefault("plans", {})[(device.index, dtype, layout, left, right, float(scale))] = None
        return False
    return True


def _run(q: Tensor, k: Tensor, v: Tensor, out: Tensor, left: int | None, right: int | None, scale: float) -> None:
    """One cached plan over these views, writing ``out`` (any strides) in place."""
    run = _plan(q.device, q.dtype, _layout(q, k, v, out), left, right, scale)
    cudnn = run["cudnn"]
    cudnn.set_stream(handle=run["handle"], stream=torch.cuda.current_stream(q.device).cuda_stream)
    run["graph"].execute({run["q"]: q, run["k"]: k, run["v"]: v, run["o"]: out},
                         _workspace(run["workspace"], q.device), handle=run["handle"])


def _window(q: Tensor, k: Tensor, v: Tensor, left: int, right: int, scale: float) -> Tensor:
    """softmax over keys p − left < j ≤ p + right (p = i + M − N) of q (B, H, N, D) against k, v (B, Hkv, M, D),
    Hkv dividing H. Returns (B, H, N, D), contiguous. Callers check ``eligible`` first."""
    out = _contiguous_like(q)
    _run(q, k, v, out, left, right, scale)
    return out


def _segments(q: Tensor, k: Tensor, v: Tensor, segment: int, prev: bool, causal: bool, scale: float) -> Tensor:
    """Attention within segments of ``segment`` queries (causal: inside the segment), each also over the segment
    before it where ``prev``: q (B, H, N, D), k, v (B, Hkv, N, D), N a multiple of the segment. Returns
    (B, H, N, D), contiguous. Callers check ``segments_eligible`` first."""
    out = _contiguous_like(q)
    for b in range(q.shape[0]):  # a batch row's segments are one strided batch; rows are not (see _segment_views)
        for views in _segment_views(q[b:b + 1], k[b:b + 1], v[b:b + 1], out[b:b + 1], segment, prev):
            _run(*views, None, 0 if causal else None, scale)
    return out


def _segment_views(q: Tensor, k: Tensor, v: Tensor, out: Tensor, segment: int, prev: bool) -> list[tuple]:
    """(q, k, v, out) views of one batch row as batches of segments, no copies. Segmented: every segment is a
    batch entry. Memory (``prev``): segments 1.. against the two-segment runs of keys that start one segment
    earlier (k and v viewed overlapping: a row of the view starts a segment after the last), and segment 0 by
    itself. The output views are written in place, so nothing is merged or gathered afterwards. Causal is aligned
    to the last key (bottom-right), which inside a segment is ordinary causality and over a run of two lets a
    query see the whole previous segment."""
    nseg = q.shape[2] // segment

    def view(t, first, count, span):
        return t.as_strided((count, t.shape[1], span * segment, t.shape[3]),
                            (segment * t.stride(2), t.stride(1), t.stride(2), t.stride(3)),
                            t.storage_offset() + first * segment * t.stride(2))

    if not prev:
        return [tuple(view(t, 0, nseg, 1) for t in (q, k, v, out))]
    runs = [(view(q, 1, nseg - 1, 1), view(k, 0, nseg - 1, 2), view(v, 0, nseg - 1, 2), view(out, 1, nseg - 1, 1))]
    return runs + [tuple(view(t, 0, 1, 1) for t in (q, k, v, out))]


# A module may run twice (imported as attnopt.kernels and as kernels): torch.library defines an op once.
for _name, _impl in (("cudnn_window", _window), ("cudnn_segments", _segments)):
    if not hasattr(torch.ops.attnopt, _name):
        torch.library.custom_op(f"attnopt::{_name}", _impl, mutates_args=(), device_types="cuda").register_fake(
            lambda q, *args: q.new_empty(q.shape))
window_attention = torch.ops.attnopt.cudnn_window
segments_attention = torch.ops.attnopt.cudnn_segments


def _layout(q: Tensor, k: Tensor, v: Tensor, out: Tensor) -> tuple | None:
    """(shape, stride) of q, k, v and out, as plain ints; None for symbolic sizes."""
    parts = []
    for t in (q, k, v, out):
        parts += [tuple(t.shape), tuple(t.stride())]
    if not all(isinstance(d, int) for p in parts for d in p):
        return None
    return tuple(parts)


def _contiguous_like(q: Tensor) -> Tensor:
    return torch.empty(q.shape, dtype=q.dtype, device=q.device)


def _plan(device: torch.device, dtype: torch.dtype, layout: tuple, left: int | None, right: int | None,
          scale: float) -> dict:
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
                      diagonal_alignment=cudnn.diagonal_alignment.BOTTOM_RIGHT)  # a None bound: no bound
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
