"""Bands cuDNN serves whole (attnopt.kernels.cudnn_band), where the cuDNN frontend is installed: windows through
its diagonal band, memory's segment pairs and GQA segments through strided views.

The bounds, the segment rule and the views are plain arithmetic, checked everywhere. The GPU tests run only with
CUDA and ``nvidia-cudnn-frontend``: the band kernel's full-size cases (tests/test_triton_band.py) compare the
window and memory rows, which take these paths there, with the reference; here, that each path is taken, equals
the band kernel, and compiles into one graph.
"""

from __future__ import annotations

import pytest
import torch

from attnopt.kernels import cudnn_band
from attnopt.kernels.untraced import untraced


def _allowed(n: int, m: int, unit: int, before: int, after: int, causal: bool) -> torch.Tensor:
    """The band's (N, M) keys, as triton_band defines them (query i at position i + M − N)."""
    p = torch.arange(n)[:, None] + (m - n)
    j = torch.arange(m)[None, :]
    base = torch.div(p, unit, rounding_mode="floor") * unit
    ok = (j >= base - before) & (j < base + unit + after)
    return ok & (j <= p) if causal else ok


def _diagonal(n: int, m: int, left: int, right: int) -> torch.Tensor:
    """cuDNN's diagonal band aligned bottom-right: p − left < j ≤ p + right."""
    p = torch.arange(n)[:, None] + (m - n)
    j = torch.arange(m)[None, :]
    return (j > p - left) & (j <= p + right)


@pytest.mark.parametrize("n, m, before, after, causal", [
    (64, 64, 7, 7, False), (64, 64, 7, 7, True), (40, 100, 9, 3, False), (40, 100, 9, 3, True),
    (50, 50, 0, 0, False), (30, 30, 200, 200, False), (30, 90, 1 << 30, 1 << 30, True)])
def test_bounds_select_the_bands_keys(n, m, before, after, causal):
    bounds = cudnn_band.diagonal_bounds(1, before, after, causal, n, m)
    assert bounds is not None
    assert torch.equal(_diagonal(n, m, *bounds), _allowed(n, m, 1, before, after, causal))
    assert max(bounds) <= m + n + 1  # an int32 for cuDNN


@pytest.mark.parametrize("unit, n, m", [(16, 64, 64), (1, 64, 32), (1, 0, 8)])
def test_bounds_refuse_what_is_not_a_diagonal_band(unit, n, m):
    """Units above 1 (segmented, memory), fewer keys than queries, no query."""
    assert cudnn_band.diagonal_bounds(unit, 7, 7, False, n, m) is None


def test_cpu_tensors_are_not_eligible():
    q = torch.randn(1, 2, 16, 64, dtype=torch.bfloat16)
    assert not cudnn_band.eligible(q, q, q, (8, 8), 0.125)


def test_ops_run_directly_only_where_nothing_traces():
    """kernels.untraced (cuDNN's bands and the running sum): plain tensors call the implementation; fake tensors (torch.compile's tracing) and an active dispatch mode
    keep the op, so a traced graph records it."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils._python_dispatch import TorchDispatchMode

    q = torch.randn(1, 2, 16, 64)
    assert untraced(q, q, q)
    with FakeTensorMode():
        fake = torch.empty(1, 2, 16, 64)
        assert not untraced(fake, fake, fake)

    class Watching(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    with Watching():
        assert not untraced(q, q, q)
    assert not torch.vmap(lambda t: torch.tensor(untraced(t, t, t)))(q).any()


def test_the_output_layout_needs_no_tensor():
    q = torch.empty(2, 3, 5, 8)
    assert cudnn_band._layout(q, q, q, cudnn_band._Contiguous(q.shape)) == cudnn_band._layout(q, q, q, q)


def test_symbolic_sizes_have_no_layout():
    """torch.compile with dynamic shapes traces SymInts: no plan can be built for them, so no cuDNN path."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv, StatelessSymbolicContext

    mode = FakeTensorMode(shape_env=ShapeEnv())
    x = mode.from_tensor(torch.empty(1, 2, 16, 8),
                         symbolic_context=StatelessSymbolicContext(dynamic_sizes=[DimDynamic.DYNAMIC] * 4))
    assert cudnn_band._layout(x, x, x, x) is None


def test_the_plan_cache_keeps_the_most_recently_used(monkeypatch):
    """A server sees many lengths: past MAX_PLANS the least recently used plan goes (refusals count too), and a
    hit in ``_plan`` counts as a use."""
    monkeypatch.setattr(cudnn_band, "_state", {})
    monkeypatch.setattr(cudnn_band, "MAX_PLANS", 3)
    args = [(torch.device("cpu"), torch.bfloat16, ("layout", n), 1, 0, 0.5) for n in range(4)]
    keys = [cudnn_band._plan_key(*a, False, False) for a in args]
    for n in range(3):
        cudnn_band._keep(keys[n], {"n": n})
    assert cudnn_band._plan(*args[0]) == {"n": 0}  # found, not built
    cudnn_band._keep(keys[3], None)  # a refusal
    assert list(cudnn_band._plans()) == [keys[2], keys[0], keys[3]]
    with pytest.raises(RuntimeError, match="refused"):
        cudnn_band._plan(*args[3])


def test_segment_eligibility_is_found_once_a_shape_and_kept_within_the_same_bound(monkeypatch):
    """``segments_eligible`` asks cuDNN once a shape, remembers the answer, and forgets the least recently used
    past MAX_PLANS: a server seeing many lengths would otherwise keep one answer for each."""
    monkeypatch.setattr(cudnn_band, "_state", {})
    monkeypatch.setattr(cudnn_band, "MAX_PLANS", 2)
    monkeypatch.setattr(cudnn_band, "_inputs_ok", lambda q, k, v: True)
    asked = []
    monkeypatch.setattr(cudnn_band, "_supported", lambda device, dtype, layout, *a: asked.append(layout[0]) or True)
    for n in (64, 128, 64, 192, 128):
        q = torch.zeros(1, 2, n, 8, dtype=torch.bfloat16)
        assert cudnn_band.segments_eligible(q, q, q, 32, False, False, 0.5)
    queries = [shape[2] for shape in asked]  # the views' query lengths: one segment
    assert len(asked) == 4 and set(queries) == {32}  # 64 asked once; 128 again after 192 pushed it out
    assert [key[0][0][2] for key in cudnn_band._state["segments_eligible"]] == [192, 128]


def _torch_run(q, k, v, out, left, right, scale, lse=None, sink_logits=None):
    """cuDNN's call over views as torch computes it: keys aligned bottom-right, causal where ``right`` is 0."""
    assert left is None and lse is None and sink_logits is None
    group = q.shape[1] // k.shape[1]
    k, v = (t.repeat_interleave(group, 1) for t in (k, v))
    s = q @ k.transpose(-1, -2) * scale
    if right == 0:
        n, m = q.shape[2], k.shape[2]
        s = s.masked_fill(torch.arange(m)[None, :] > torch.arange(n)[:, None] + m - n, float("-inf"))
    out.copy_(s.softmax(-1) @ v)  # out is a strided view: written in place, as cuDNN writes it


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("prev, causal", [(False, False), (True, False), (True, True), (False, True)])
def test_segment_views_cover_every_batch_row_and_segment(monkeypatch, batch, prev, causal):
    """The views ``_segments`` hands cuDNN, run by torch: each batch row and segment sees its own segment (and the
    one before it with ``prev``), grouped kv heads included."""
    monkeypatch.setattr(cudnn_band, "_run", _torch_run)
    seg, n, scale = 8, 32, 0.3
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(batch, 4, n, 16, generator=gen)
    k, v = (torch.randn(batch, 2, n, 16, generator=gen) for _ in "kv")
    got = cudnn_band._segments(q, k, v, seg, prev, causal, scale)
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    allowed = (j // seg == i // seg) | (prev & (j // seg == i // seg - 1))
    if causal:
        allowed &= j <= i
    scores = (q @ k.repeat_interleave(2, 1).transpose(-1, -2) * scale).masked_fill(~allowed, float("-inf"))
    torch.testing.assert_close(got, scores.softmax(-1) @ v.repeat_interleave(2, 1))


def _cudnn_here() -> bool:
    return torch.cuda.is_available() and cudnn_band.available()


@pytest.mark.cuda
@pytest.mark.skipif(not _cudnn_here(), reason="needs a CUDA GPU and nvidia-cudnn-frontend")
class TestCuda:
    def _qkv(self, n=4096, m=None, h=8, hkv=2, d=128, dtype=torch.bfloat16):
        gen = torch.Generator(device="cuda").manual_seed(0)
        q = torch.randn(1, h, n, d, device="cuda", dtype=dtype, generator=gen)
        k, v = (torch.randn(1, hkv, m or n, d, device="cuda", dtype=dtype, generator=gen) for _ in "kv")
        return q, k, v

    @pytest.mark.parametrize("causal", [False, True])
    def test_window_takes_the_diagonal_band_and_equals_the_kernel(self, causal):
        from attnopt.kernels import triton_band

        q, k, v = self._qkv(n=3000, m=3500)
        kw = dict(unit=1, before=511, after=255, sinks=0, scale=128 ** -0.5, causal=causal)
        plans = len(cudnn_band._state.get("plans", {}))
        got = triton_band._band_attention(q, k, v, **kw)
        assert len(cudnn_band._state["plans"]) == plans + 1, "the window did not take cuDNN's band"
        want = triton_band._band_attention(q, k, v, **kw, fast_path=False)
        torch.testing.assert_close(got, want, atol=2e-2, rtol=2e-2)
        again = triton_band._band_attention(q, k, v, **kw)  # the plan is reused
        assert len(cudnn_band._state["plans"]) == plans + 1
        torch.testing.assert_close(again, got, atol=0, rtol=0)

    @pytest.mark.parametrize("causal", [False, True])
    @pytest.mark.parametrize("prev, hkv", [(True, 8), (True, 2), (False, 2)],
                             ids=["memory", "memory-gqa", "segmented-gqa"])
    def test_segments_run_as_views_and_equal_the_kernel(self, prev, hkv, causal):
        """Memory's pairs (and segment 0) and GQA segments, two batch rows: cuDNN plans, no merge, the kernel's
        result."""
        from attnopt.kernels import triton_band

        q, k, v = self._qkv(n=4096, h=8, hkv=hkv)
        q, k, v = (torch.cat([t, t.flip(2)]) for t in (q, k, v))  # two different batch rows
        kw = dict(unit=512, before=512 if prev else 0, after=0, sinks=0, scale=128 ** -0.5, causal=causal)
        plans = len(cudnn_band._state.get("plans", {}))
        got = triton_band._band_attention(q, k, v, **kw)
        assert len(cudnn_band._state["plans"]) == plans + (2 if prev else 1), "the segments did not take cuDNN"
        want = triton_band._band_attention(q, k, v, **kw, fast_path=False)
        torch.testing.assert_close(got, want, atol=2e-2, rtol=2e-2)

    def test_mha_segments_keep_the_folded_sdpa_path(self):
        from attnopt.kernels import triton_band

        q, k, v = self._qkv(n=2048, h=4, hkv=4)
        plans = len(cudnn_band._state.get("plans", {}))
        triton_band._band_attention(q, k, v, unit=512, before=0, after=0, sinks=0, scale=0.1, causal=False)
        assert len(cudnn_band._state.get("plans", {})) == plans

    @pytest.mark.parametrize("sinks, sink_logits, causal", [(4, False, False), (3, True, True), (0, True, False)],
                             ids=["sinks", "sinks-sink-logits-causal", "sink-logits"])
    def test_window_sinks_and_sink_logits_take_cudnn_and_equal_the_kernel(self, sinks, sink_logits, causal):
        """Sink keys: cuDNN's window with its log-sum-exp (the stats plan), merged after; sink logits alone:
        cuDNN's sink token (its own plan). GQA, a KV cache."""
        from attnopt.kernels import triton_band

        q, k, v = self._qkv(n=2000, m=2600)
        kw = dict(unit=1, before=511, after=100, sinks=sinks, scale=128 ** -0.5, causal=causal)
        if sink_logits:
            kw["sink_logits"] = torch.linspace(-2.0, 6.0, q.shape[1], device="cuda")
        before = set(cudnn_band._state.get("plans", {}))
        got = triton_band._band_attention(q, k, v, **kw)
        new = [key for key in cudnn_band._state["plans"] if key not in before]
        assert len(new) == 1 and new[0][-2:] == (sinks > 0, sinks == 0), new  # (stats, sink token)
        want = triton_band._band_attention(q, k, v, **kw, fast_path=False)
        torch.testing.assert_close(got, want, atol=2e-2, rtol=2e-2)

    def test_mha_segments_with_sink_logits_take_cudnns_sink_token(self):
        from attnopt.kernels import triton_band

        q, k, v = self._qkv(n=2048, h=4, hkv=4)
        kw = dict(unit=512, before=0, after=0, sinks=0, scale=0.1, causal=True,
                  sink_logits=torch.tensor([2.5, -1.0, 4.0, 0.0], device="cuda"))
        before = set(cudnn_band._state.get("plans", {}))
        got = triton_band._band_attention(q, k, v, **kw)
        assert [key[-2:] for key in cudnn_band._state["plans"] if key not in before] == [(False, True)]
        torch.testing.assert_close(got, triton_band._band_attention(q, k, v, **kw, fast_path=False),
                                   atol=2e-2, rtol=2e-2)

    def test_what_the_band_kernel_adds_stays_on_it(self):
        """Key padding and softcap: the band kernel, no cuDNN plan."""
        from attnopt.kernels import triton_band

        q, k, v = self._qkv(n=1024)
        plans = len(cudnn_band._state.get("plans", {}))
        base = dict(unit=1, before=127, after=127, scale=128 ** -0.5, causal=False)
        triton_band._band_attention(q, k, v, **base, sinks=0, key_padding=torch.zeros(1, 1024, device="cuda"))
        triton_band._band_attention(q, k, v, **base, sinks=0, softcap=30.0)
        assert len(cudnn_band._state.get("plans", {})) == plans

    @pytest.mark.parametrize("variant, params, causal, called", [
        ("window", {"window": 256, "sinks": 0}, False, "cudnn_window"),
        ("memory", {"segment_size": 512, "memory": 512, "sinks": 0}, True, "cudnn_segments"),
        ("window", {"window": 1024, "sinks": 2}, True, "cudnn_window_lse")])
    def test_compiled_op_calls_cudnn_without_a_graph_break(self, variant, params, causal, called):
        from torch._inductor.utils import run_and_get_code

        from attnopt.kernels.registry import get_variant

        spec = get_variant(variant)
        op = spec.torch_op  # outside the traced call: the property imports the op's module, which dynamo refuses
        args = [{**{p.name: p.default for p in spec.params}, **params}[p] for p in spec.param_names]
        q, k, v = self._qkv(n=2048)

        def call(q, k, v):
            return op(q, k, v, None, None, *args, 128 ** -0.5, causal, 0.0)

        torch._dynamo.reset()
        with torch.no_grad():
            got, codes = run_and_get_code(torch.compile(call, fullgraph=True), q, k, v)
            want = call(q, k, v)
        assert any(called in c for c in codes), codes
        torch.testing.assert_close(got, want, atol=0, rtol=0)


@pytest.mark.parametrize("unit, before, after, sinks, n, m, want", [
    (16, 16, 0, 0, 64, 64, True), (16, 0, 0, 0, 64, 64, False), (16, 16, 0, 2, 64, 64, None),
    (16, 8, 0, 0, 64, 64, None), (16, 16, 16, 0, 64, 64, None), (16, 16, 0, 0, 60, 60, None),
    (16, 16, 0, 0, 64, 80, None), (64, 64, 0, 0, 64, 64, None)])
def test_segment_pairs_are_whole_segments_with_or_without_the_previous_one(unit, before, after, sinks, n, m, want):
    assert cudnn_band.segment_pairs(unit, before, after, sinks, n, m) is want


def test_segment_views_read_the_segments_and_their_predecessors_in_place():
    """The views cuDNN runs on: memory's pairs start one segment earlier and overlap; the output views tile the
    output exactly once; nothing is copied."""
    s, n = 4, 12
    q = torch.arange(2 * 3 * n * 2, dtype=torch.float32).view(2, 3, n, 2)
    k = torch.arange(2 * 1 * n * 2, dtype=torch.float32).view(2, 1, n, 2)
    out = torch.zeros_like(q)
    for prev in (False, True):
        views = cudnn_band._segment_views(q[1:], k[1:], k[1:], out[1:], s, prev)
        assert all(v.data_ptr() >= t.data_ptr() for v, t in zip(views[0], (q, k, k, out)))
        covered = torch.zeros(n, dtype=torch.int64)
        for qv, kv, _, ov in views:
            for seg in range(qv.shape[0]):
                first = int((qv[seg, 0, 0, 0] - q[1, 0, 0, 0]).item()) // 2  # the query segment's first row
                covered[first:first + s] += 1
                keys = kv[seg, 0, :, 0]
                want_first = first - s if prev and first else first
                torch.testing.assert_close(keys, k[1, 0, want_first:first + s, 0])
                ov[seg].fill_(1)
        assert torch.equal(covered, torch.ones(n, dtype=torch.int64))
        assert bool((out[1] == 1).all()) and bool((out[0] == 0).all())
        out.zero_()
