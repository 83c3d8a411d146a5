"""Bands cuDNN's fused attention serves whole, where NVIDIA's cuDNN frontend is installed.

Windows, through cuDNN's diagonal band (below); with sink keys, the window's
log-sum-exp too (``window_lse_attention``), for ``triton_band`` to merge the
sinks into. Memory with M_mem = S, through views: segments 1.. against
overlapping two-segment runs of keys (k and v viewed with a row stride of one
segment, no copy), segment 0 by itself, each call writing its part of the
output in place: two calls and nothing to merge, where torch's cuDNN call (no
output views, no bounds) needs a second call and a log-sum-exp merge
(``triton_band._segment_fast_path``). Segments with grouped kv heads the same
way, in one call. Sink logits (GPT-OSS) as cuDNN's sink token, one more
denominator term a head, in any of these plans.

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
(key padding, masks, softcap, fp32), ``triton_band`` runs as before. The calls are
the ops ``attnopt::cudnn_window``, ``cudnn_window_lse`` and ``cudnn_segments`` with
fakes, so torch.compile keeps each as one node inside the band ops' Triton
decomposition (no graph break).
Execution plans are built once per shape and reused (building takes about a second). Outside of any tracing
the ops' implementations run directly (``untraced``): at short lengths the host's time is the call's time.
"""

from __future__ import annotations

import atexit
import os
from collections import OrderedDict
from typing import Optional  # torch.library reads the ops' annotations: Optional, not "Tensor | None"

import torch
from torch import Tensor

from .band import whole_segments
from .untraced import untraced

__all__ = ["available", "diagonal_bounds", "eligible", "frontend_version", "segment_pairs", "segments_attention",
           "segments_eligible", "window_attention", "window_lse_attention"]

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
    _state.pop("streams", None)


def diagonal_bounds(unit: int, before: int, after: int, causal: bool, n: int, m: int) -> tuple[int, int] | None:
    """cuDNN's (left, right) bounds for a band of unit 1 over N queries and M keys: it keeps key j for query i
    at position p = i + M − N where p − left < j ≤ p + right. None for any other band: units above 1
    (segmented, memory) are not diagonal, and fewer keys than queries would put positions below zero. Sinks are
    keys outside the band: callers merge them in (``window_lse_attention`` returns what that needs)."""
    if unit != 1 or m < n or n == 0:
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


def eligible(q: Tensor, k: Tensor, v: Tensor, bounds, scale: float, *, stats: bool = False,
             sink: bool = False) -> bool:
    """Whether cuDNN's fused attention takes this window: fp16/bf16 on CUDA, head dims a multiple of 8 up to 256,
    the last dim dense, static sizes, and a plan cuDNN supports (built here from shapes alone, so the check also
    runs on the fake tensors torch.compile traces with; a refusal is remembered). ``stats``: the plan that also
    returns the log-sum-exp; ``sink``: the one with a sink logit a head."""
    if bounds is None or not _inputs_ok(q, k, v):
        return False
    return _supported(q.device, q.dtype, _layout(q, k, v, _Contiguous(q.shape)), *bounds, scale, stats, sink)


def segment_pairs(unit: int, before: int, after: int, sinks: int, n: int, m: int) -> bool | None:
    """Whether a band is whole segments that cuDNN's attention serves as batches of views, and if so whether each
    also sees the previous one (memory with M_mem = S: True; segmented: False); None otherwise. Sink keys are
    outside the segments (the merging fast path in ``triton_band`` serves them); sink logits are not keys, and
    cuDNN takes them."""
    return None if sinks else whole_segments(unit, before, after, n, m)


def segments_eligible(q: Tensor, k: Tensor, v: Tensor, unit: int, prev: bool, causal: bool, scale: float, *,
                      sink: bool = False) -> bool:
    """``eligible`` for ``segments_attention``: every plan it would run is supported."""
    if not _inputs_ok(q, k, v):
        return False
    key = (_layout(q, k, v, q), q.device.index, q.dtype, unit, prev, causal, float(scale), sink)
    if key[0] is None:
        return False
    known = _lru("segments_eligible")
    if key in known:  # building the views and finding their plans costs tens of microseconds: once a shape
        known.move_to_end(key)
        return known[key]
    out = _contiguous_like(q)
    _remember(known, key, all(_supported(q.device, q.dtype, _layout(*views), None, 0 if causal else None, scale,
                                         False, sink)
                              for views in _segment_views(q[:1], k[:1], v[:1], out[:1], unit, prev)))
    return known[key]


def _inputs_ok(q: Tensor, k: Tensor, v: Tensor) -> bool:
    return (q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and q.dtype == k.dtype == v.dtype
            and q.shape[-1] % 8 == 0 and q.shape[-1] <= 256 and all(t.stride(-1) == 1 for t in (q, k, v))
            and available())


def _supported(device, dtype, layout, left, right, scale, stats: bool = False, sink: bool = False) -> bool:
    if layout is None:
        return False
    return supported(_plan_key(device, dtype, layout, left, right, scale, stats, sink),
                     lambda: _plan(device, dtype, layout, left, right, scale, stats, sink))


def supported(key: tuple, build) -> bool:
    """Whether ``build()`` gets a plan from cuDNN; a refusal is remembered under ``key`` (``built_plan``'s)."""
    try:
        build()
    except Exception:  # noqa: BLE001  cuDNN refused this configuration: the Triton kernels serve it
        _keep(key, None)
        return False
    return True


def _run(q: Tensor, k: Tensor, v: Tensor, out: Tensor, left: int | None, right: int | None, scale: float,
         lse: Tensor | None = None, sink_logits: Tensor | None = None) -> None:
    """One cached plan over these views, writing ``out`` (any strides) in place, and ``lse`` (B, H, N) fp32, the
    natural-log log-sum-exp of each row's scaled scores, where given; ``sink_logits`` (H,) fp32: one more
    denominator term a head (GPT-OSS's learned sink)."""
    run = _plan(q.device, q.dtype, _layout(q, k, v, out), left, right, scale, lse is not None,
                sink_logits is not None)
    pack = {run["q"]: q, run["k"]: k, run["v"]: v, run["o"]: out}
    if lse is not None:
        pack[run["stats"]] = lse
    if sink_logits is not None:
        pack[run["sink"]] = sink_logits
    execute(run, pack, q.device)


def execute(run: dict, pack: dict, device: torch.device) -> None:
    """Run a plan of ``built_plan`` on ``pack`` ({its tensor: the torch tensor}) on torch's current stream."""
    stream = torch._C._cuda_getCurrentRawStream(device.index)  # torch.cuda.current_stream's pointer, no object
    streams = _state.setdefault("streams", {})
    if streams.get(device.index) != stream:  # the handle keeps its stream: set it only when torch's changes
        run["cudnn"].set_stream(handle=run["handle"], stream=stream)
        streams[device.index] = stream
    size = run["workspace"]
    run["graph"].execute(pack, torch.empty(size, dtype=torch.uint8, device=device) if size else None,
                         handle=run["handle"])


def _sink_values(sink_logits: Tensor | None) -> Tensor | None:
    return None if sink_logits is None else sink_logits.to(torch.float32).contiguous()


def _window(q: Tensor, k: Tensor, v: Tensor, left: int, right: int, scale: float,
            sink_logits: Optional[Tensor] = None) -> Tensor:
    """softmax over keys p − left < j ≤ p + right (p = i + M − N) of q (B, H, N, D) against k, v (B, Hkv, M, D),
    Hkv dividing H, plus the (H,) sink logits where given. Returns (B, H, N, D), contiguous. Callers check
    ``eligible`` first."""
    out = _contiguous_like(q)
    _run(q, k, v, out, left, right, scale, sink_logits=_sink_values(sink_logits))
    return out


def _window_lse(q: Tensor, k: Tensor, v: Tensor, left: int, right: int, scale: float) -> tuple[Tensor, Tensor]:
    """``_window`` and its (B, H, N) fp32 log-sum-exp, in natural-log units (what a merge of more keys needs)."""
    out = _contiguous_like(q)
    lse = torch.empty(q.shape[:3], dtype=torch.float32, device=q.device)
    _run(q, k, v, out, left, right, scale, lse=lse)
    return out, lse


def _segments(q: Tensor, k: Tensor, v: Tensor, segment: int, prev: bool, causal: bool, scale: float,
              sink_logits: Optional[Tensor] = None) -> Tensor:
    """Attention within segments of ``segment`` queries (causal: inside the segment), each also over the segment
    before it where ``prev``, plus the (H,) sink logits where given: q (B, H, N, D), k, v (B, Hkv, N, D), N a
    multiple of the segment. Returns (B, H, N, D), contiguous. Callers check ``segments_eligible`` first."""
    out = _contiguous_like(q)
    sinks = _sink_values(sink_logits)
    # a batch row's segments are one strided batch; rows are not (see _segment_views)
    rows = [(q, k, v, out)] if q.shape[0] == 1 else [tuple(t[b:b + 1] for t in (q, k, v, out))
                                                     for b in range(q.shape[0])]
    for row in rows:
        for views in _segment_views(*row, segment, prev):
            _run(*views, None, 0 if causal else None, scale, sink_logits=sinks)
    return out


def _segment_views(q: Tensor, k: Tensor, v: Tensor, out: Tensor, segment: int, prev: bool) -> list[tuple]:
    """(q, k, v, out) views of one batch row as batches of segments, no copies. Segmented: every segment is a
    batch entry. Memory (``prev``): segments 1.. against the two-segment runs of keys that start one segment
    earlier (k and v viewed overlapping: a row of the view starts a segment after the last), and segment 0 by
    itself. The output views are written in place, so nothing is merged or gathered afterwards. Causal is aligned
    to the last key (bottom-right), which inside a segment is ordinary causality and over a run of two lets a
    query see the whole previous segment."""
    nseg = q.shape[2] // segment

    def view(t, first, count, span):  # one read of the shape and strides: this runs on every call
        (_, heads, _, d), (_, sh, sn, sd) = t.shape, t.stride()
        return t.as_strided((count, heads, span * segment, d), (segment * sn, sh, sn, sd),
                            t.storage_offset() + first * segment * sn)

    if not prev:
        return [tuple(view(t, 0, nseg, 1) for t in (q, k, v, out))]
    runs = [(view(q, 1, nseg - 1, 1), view(k, 0, nseg - 1, 2), view(v, 0, nseg - 1, 2), view(out, 1, nseg - 1, 1))]
    return runs + [tuple(view(t, 0, 1, 1) for t in (q, k, v, out))]


def _like_out(q: Tensor, *args, **kwargs) -> Tensor:
    return q.new_empty(q.shape)


def _like_out_lse(q: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
    return q.new_empty(q.shape), q.new_empty(q.shape[:3], dtype=torch.float32)


# A module may run twice (imported as attnopt.kernels and as kernels): torch.library defines an op once.
for _name, _impl, _fake in (("cudnn_window", _window, _like_out), ("cudnn_window_lse", _window_lse, _like_out_lse),
                            ("cudnn_segments", _segments, _like_out)):
    if not hasattr(torch.ops.attnopt, _name):
        torch.library.custom_op(f"attnopt::{_name}", _impl, mutates_args=(), device_types="cuda").register_fake(
            _fake)
_IMPLS = {"cudnn_window": _window, "cudnn_window_lse": _window_lse, "cudnn_segments": _segments}


def _call(name: str):
    op = getattr(torch.ops.attnopt, name)
    impl = _IMPLS[name]

    def call(q: Tensor, k: Tensor, v: Tensor, *args):
        return (impl if untraced(q, k, v) else op)(q, k, v, *args)

    call.__name__ = name
    call.__doc__ = f"torch.ops.attnopt.{name}, or its implementation where nothing traces the call (``untraced``)."
    return call


window_attention = _call("cudnn_window")
window_lse_attention = _call("cudnn_window_lse")
segments_attention = _call("cudnn_segments")


class _Contiguous:
    """The shape and strides of a contiguous tensor of ``shape``, without allocating one (for ``_layout``)."""

    def __init__(self, shape):
        self.shape = tuple(shape)
        strides, step = [], 1
        for d in reversed(self.shape):
            strides.append(step)
            step *= d
        self._strides = tuple(reversed(strides))

    def stride(self) -> tuple:
        return self._strides


def _layout(q: Tensor, k: Tensor, v: Tensor, out: Tensor) -> tuple | None:
    """(shape, stride) of q, k, v and out, as plain ints; None for symbolic sizes."""
    parts = (tuple(q.shape), tuple(q.stride()), tuple(k.shape), tuple(k.stride()), tuple(v.shape),
             tuple(v.stride()), tuple(out.shape), tuple(out.stride()))
    try:
        hash(parts)  # on every call, so no per-dim scan: a symbolic size (SymInt) is unhashable
    except TypeError:
        return None
    return parts


def _contiguous_like(q: Tensor) -> Tensor:
    return torch.empty(q.shape, dtype=q.dtype, device=q.device)


def _plan_key(device, dtype, layout, left, right, scale, stats, sink) -> tuple:
    return device.index, dtype, layout, left, right, float(scale), stats, sink


def _plan(device: torch.device, dtype: torch.dtype, layout: tuple, left: int | None, right: int | None,
          scale: float, stats: bool = False, sink: bool = False) -> dict:
    """The built cuDNN graph for these shapes, strides and bounds (built on first use, then reused); ``stats``:
    it also writes the log-sum-exp, (B, H, N) fp32; ``sink``: it takes a sink logit a head, (H,) fp32."""

    def describe(cudnn, graph, io):
        (sq, tq), (sk, tk), (sv, tv), (so, to_) = zip(layout[0::2], layout[1::2])
        q, k, v = (graph.tensor(name=n, dim=list(s), stride=list(t), data_type=io)
                   for n, s, t in (("q", sq, tq), ("k", sk, tk), ("v", sv, tv)))
        heads = sq[1]
        sink_t = graph.tensor(name="sink", dim=[1, heads, 1, 1], stride=[heads, 1, 1, 1],
                              data_type=cudnn.data_type.FLOAT) if sink else None
        o, lse = graph.sdpa(name="band", q=q, k=k, v=v, generate_stats=stats, attn_scale=float(scale),
                            diagonal_band_left_bound=left, diagonal_band_right_bound=right, sink_token=sink_t,
                            diagonal_alignment=cudnn.diagonal_alignment.BOTTOM_RIGHT)  # a None bound: no bound
        o.set_output(True).set_dim(list(so)).set_stride(list(to_))
        if stats:  # (B, H, N, 1) to cuDNN, the caller's (B, H, N) contiguous
            b, h, n = sq[:3]
            lse.set_output(True).set_data_type(cudnn.data_type.FLOAT).set_dim([b, h, n, 1]).set_stride(
                [h * n, n, 1, 1])
        return {"q": q, "k": k, "v": v, "o": o, "stats": lse, "sink": sink_t}

    return built_plan(_plan_key(device, dtype, layout, left, right, scale, stats, sink), device, dtype, describe)


def built_plan(key: tuple, device: torch.device, dtype: torch.dtype, describe) -> dict:
    """The cuDNN graph kept under ``key``, built on first use: ``describe(cudnn, graph, io_type)`` declares its
    tensors and operations and returns the tensors a call binds, by name. Raises where cuDNN refused it (a
    refusal is remembered too)."""
    plans = _plans()
    if key in plans:
        plans.move_to_end(key)
        if plans[key] is None:
            raise RuntimeError("cuDNN refused this configuration")
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
    tensors = describe(cudnn, graph, io)
    graph.validate()
    graph.build_operation_graph()
    graph.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
    graph.check_support()
    graph.build_plans()
    return _keep(key, {"cudnn": cudnn, "graph": graph, "handle": handle, **tensors,
                       "workspace": graph.get_workspace_size()})


# The most plans (and remembered refusals) kept, least recently used dropped first, and as many remembered
# segment eligibilities: one per distinct shape, strides and bounds, so a server that sees many lengths would
# otherwise keep every one. A dropped plan is built again on its next use (about a second).
MAX_PLANS = 256


def _plans() -> OrderedDict:
    return _lru("plans")


def _lru(name: str) -> OrderedDict:
    return _state.setdefault(name, OrderedDict())


def _keep(key: tuple, plan: dict | None) -> dict | None:
    plans = _plans()
    if key not in plans and len(plans) >= MAX_PLANS and torch.cuda.is_initialized():
        # a dropped plan's kernels may still be running, and its runtime-compiled code goes with it; this only
        # happens when a new plan is built, which takes far longer than the wait
        for device in range(torch.cuda.device_count()):
            torch.cuda.synchronize(device)
    return _remember(plans, key, plan)


def _remember(table: OrderedDict, key: tuple, value):
    """Keep ``value`` as the most recent of at most ``MAX_PLANS`` entries, the least recently used dropped."""
    table[key] = value
    table.move_to_end(key)
    while len(table) > MAX_PLANS:
        table.popitem(last=False)
    return value
