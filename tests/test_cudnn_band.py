"""Windows through cuDNN's diagonal band (attnopt.kernels.cudnn_band), where the cuDNN frontend is installed.

The bounds are plain arithmetic, checked everywhere. The GPU tests run only with CUDA and
``nvidia-cudnn-frontend``: the band kernel's full-size cases (tests/test_triton_band.py) compare the
window rows, which take this path there, with the reference; here, that the path is taken, equals the
band kernel, and compiles into one graph.
"""

from __future__ import annotations

import pytest
import torch

from attnopt.kernels import cudnn_band


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
    bounds = cudnn_band.diagonal_bounds(1, before, after, 0, causal, n, m)
    assert bounds is not None
    assert torch.equal(_diagonal(n, m, *bounds), _allowed(n, m, 1, before, after, causal))
    assert max(bounds) <= m + n + 1  # an int32 for cuDNN


@pytest.mark.parametrize("unit, sinks, n, m", [(16, 0, 64, 64), (1, 4, 64, 64), (1, 0, 64, 32), (1, 0, 0, 8)])
def test_bounds_refuse_what_is_not_a_diagonal_band(unit, sinks, n, m):
    """Units above 1 (segmented, memory), sinks (keys outside the band), fewer keys than queries, no query."""
    assert cudnn_band.diagonal_bounds(unit, 7, 7, sinks, False, n, m) is None


def test_cpu_tensors_are_not_eligible():
    q = torch.randn(1, 2, 16, 64, dtype=torch.bfloat16)
    assert not cudnn_band.eligible(q, q, q, (8, 8), 0.125)


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

    def test_what_the_band_kernel_adds_stays_on_it(self):
        """Sinks, key padding and softcap: the band kernel, no cuDNN plan."""
        from attnopt.kernels import triton_band

        q, k, v = self._qkv(n=1024)
        plans = len(cudnn_band._state.get("plans", {}))
        base = dict(unit=1, before=127, after=127, scale=128 ** -0.5, causal=False)
        triton_band._band_attention(q, k, v, **base, sinks=4)
        triton_band._band_attention(q, k, v, **base, sinks=0, key_padding=torch.zeros(1, 1024, device="cuda"))
        triton_band._band_attention(q, k, v, **base, sinks=0, softcap=30.0)
        assert len(cudnn_band._state.get("plans", {})) == plans

    def test_compiled_window_op_calls_cudnn_without_a_graph_break(self):
        from torch._inductor.utils import run_and_get_code

        from attnopt.kernels.registry import get_variant

        op = get_variant("window").torch_op
        q, k, v = self._qkv(n=2048)

        def call(q, k, v):
            return op(q, k, v, None, None, 256, 0, 128 ** -0.5, False, 0.0)

        torch._dynamo.reset()
        with torch.no_grad():
            got, codes = run_and_get_code(torch.compile(call, fullgraph=True), q, k, v)
            want = call(q, k, v)
        assert any("cudnn_window" in c for c in codes), codes
        torch.testing.assert_close(got, want, atol=0, rtol=0)
