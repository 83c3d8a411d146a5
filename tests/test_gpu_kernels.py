"""Every attnopt op's CUDA implementation at full sizes on the GPU, and torch.compile through the ops.

Skipped without CUDA. Run on the GPU machine:

    python3 -m pytest -q tests/test_gpu_kernels.py

- Generic over the registry: every variant whose op has a CUDA kernel, at a size where the
  variant's reference (the spec, N×M) fits, against that reference, for each of its test settings.
- Full sizes (N up to 65536, bf16, H=16, D=128) for segmented, window, memory, relbias and
  hierarchical, against a reference evaluated on a sample of query rows (the first and last blocks,
  the ragged tail, random rows): the full N×M reference would not fit.
- torch.compile(fullgraph=True) of fx-rewritten modules: no graph break, Inductor's code launches
  the Triton kernel itself, and the result equals eager.
"""

from __future__ import annotations

import copy

import pytest
import torch

from attnopt.kernels.registry import all_variants, get_variant

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

DEV = "cuda"


def _cuda_variants() -> list[str]:
    return [s.name for s in all_variants()
            if torch._C._dispatch_has_kernel_for_dispatch_key(s.torch_op.default.name(), "CUDA")]


def _extra_tensors(spec, params, q, k) -> list[torch.Tensor]:
    import numpy as np

    made = spec.tensors_for(params, tuple(q.shape), tuple(k.shape), 0)
    return [torch.from_numpy(np.asarray(made[t.name])).to(q.device) for t in spec.tensor_inputs]


def _sample_rows(n: int, block: int = 1024) -> torch.Tensor:
    rows = torch.cat([torch.arange(0, min(n, block + 64)), torch.arange(max(0, n - block - 64), n),
                      torch.randint(0, n, (256,), generator=torch.Generator().manual_seed(1))])
    return rows.unique().to(DEV)


def _assert_close(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    got, want = got.float(), want.float()
    assert torch.isfinite(got).all(), what
    rel = ((got - want).norm() / want.norm().clamp(min=1e-12)).item()
    assert rel < 1e-2, (what, rel)
    assert (got - want).abs().max().item() < 0.06, (what, (got - want).abs().max().item())


# --- every variant with a CUDA kernel, against its reference -------------------------------------------


def _reference_cases() -> list:
    """(variant, causal) for every stateless variant with a CUDA kernel; causal only where the spec serves it.
    A streaming op (state in, state out) is tested by its own module (tests/test_streaming.py)."""
    return [pytest.param(name, causal, id=f"{name}-{causal}") for name in _cuda_variants()
            for causal in (False, True)
            if not get_variant(name).state and (get_variant(name).serves_causal or not causal)]


@pytest.mark.parametrize("name, causal", _reference_cases())
def test_cuda_op_equals_the_reference(name, causal):
    spec = get_variant(name)
    gen = torch.Generator().manual_seed(0)
    b, h, hkv, n, d = 2, 4, 2, 1024, 64
    q, k, v = (torch.randn(b, hh, n, d, generator=gen).to(DEV, torch.bfloat16) for hh in (h, hkv, hkv))
    kp = torch.zeros(b, n, device=DEV)
    kp[1, -37:] = float("-inf")
    for params in spec.test_params:
        if "block" in params:  # hierarchical: a block the kernel's tiles take (smaller ones keep the torch code)
            params = {**params, "block": 16 * params["block"]}
        extra = _extra_tensors(spec, params, q, k)
        args = extra + [params[p] for p in spec.param_names]
        got = spec.torch_op(q, k, v, None, kp, *args, d ** -0.5, causal, 0.0)
        names = {t.name: x for t, x in zip(spec.tensor_inputs, extra)}
        want = spec.reference(q.float(), k.float(), v.float(), **params, **names, scale=d ** -0.5, key_padding=kp,
                              causal=causal)
        _assert_close(got, want, f"{name} {params}")
        if spec.serves_sink_logits:  # GPT-OSS's learned sinks, one a head, as the op's last argument
            sinks = torch.tensor([-1.0, 2.0, float("-inf"), 6.0], device=DEV)
            got = spec.torch_op(q, k, v, None, kp, *args, d ** -0.5, causal, 0.0, sinks)
            want = spec.reference(q.float(), k.float(), v.float(), **params, **names, scale=d ** -0.5,
                                  key_padding=kp, causal=causal, sink_logits=sinks)
            _assert_close(got, want, f"{name} {params} with sink logits")


# --- full sizes, sampled rows --------------------------------------------------------------------------


def _qkv(n: int, hkv: int = 16, dtype=torch.bfloat16, seed: int = 0, d: int = 128):
    torch.manual_seed(seed)
    q = torch.randn(1, 16, n, d, device=DEV, dtype=dtype)
    k = torch.randn(1, hkv, n, d, device=DEV, dtype=dtype)
    v = torch.randn(1, hkv, n, d, device=DEV, dtype=dtype)
    return q, k, v


def _rows_attention(q, k, v, rows, allowed, bias=None, key_padding=None, scale=None):
    """Softmax attention of query rows ``rows`` in fp32 from an explicit (R, M) mask and an optional bias."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    rep = q.shape[1] // k.shape[1]
    kf, vf = (t.float().repeat_interleave(rep, dim=1) for t in (k, v))
    s = (q[:, :, rows].float() @ kf.transpose(-1, -2)) * scale
    if bias is not None:
        s = s + bias
    if key_padding is not None:
        s = s + key_padding[:, None, None, :]
    p = torch.softmax(s.masked_fill(~allowed, float("-inf")), dim=-1)
    return torch.nan_to_num(p, nan=0.0) @ vf


BAND_FULL = {
    # name: (variant, params, N, causal)
    "segmented_65536": ("segmented", dict(segment_size=1024, sinks=0), 65536, False),
    "segmented_sinks_65536": ("segmented", dict(segment_size=1024, sinks=4), 65536, False),
    "window_65536": ("window", dict(window=1024, sinks=0), 65536, False),
    "window_causal_sinks_65536": ("window", dict(window=1024, sinks=4), 65536, True),
    "memory_65536": ("memory", dict(segment_size=1024, memory=1024, sinks=0), 65536, False),
    "memory_causal_sinks_16384": ("memory", dict(segment_size=1024, memory=1024, sinks=4), 16384, True),
}


def _band_of(name: str, params: dict, causal: bool) -> tuple[int, int, int, int]:
    if name == "segmented":
        return params["segment_size"], 0, 0, params["sinks"]
    if name == "window":
        w = params["window"]
        return 1, w - 1, 0 if causal else w - 1, params["sinks"]
    return params["segment_size"], params["memory"], 0, params["sinks"]


@pytest.mark.parametrize("case", sorted(BAND_FULL))
def test_band_variants_full_size(case):
    name, params, n, causal = BAND_FULL[case]
    spec = get_variant(name)
    q, k, v = _qkv(n)
    got = spec.torch_op(q, k, v, None, None, *[params[p] for p in spec.param_names], 128 ** -0.5, causal, 0.0)
    unit, before, after, sinks = _band_of(name, params, causal)
    rows = _sample_rows(n)
    p, j = rows[:, None], torch.arange(n, device=DEV)[None, :]
    base = torch.div(p, unit, rounding_mode="floor") * unit
    ok = ((j >= base - before) & (j < base + unit + after)) | (j < sinks)
    if causal:
        ok &= j <= p
    _assert_close(got[:, :, rows], _rows_attention(q, k, v, rows, ok), case)


@pytest.mark.parametrize("kind, n, causal, padding", [
    ("alibi", 65536, True, True), ("alibi", 16384, False, True), ("t5", 16384, False, True),
    # no key padding: the kernel skips the key blocks too far to weigh (triton_band's DECAY)
    ("alibi", 65536, False, False), ("alibi", 16384, True, False),
])
def test_relbias_full_size(kind, n, causal, padding):
    from attnopt.kernels.relbias import make_tensors

    spec = get_variant("relbias")
    params = {**spec.demo_params, "kind": kind}
    if kind == "t5":
        params.update(num_buckets=32, max_distance=128, init_std=1.0)
    q, k, v = _qkv(n, hkv=4)
    made = make_tensors(params, q.shape, k.shape, seed=0)
    slopes, table = (torch.from_numpy(made[x]).to(DEV) for x in ("slopes", "table"))
    kp = None
    if padding:
        kp = torch.zeros(1, n, device=DEV)
        kp[0, torch.randperm(n, device=DEV)[: n // 10]] = float("-inf")
    got = spec.torch_op(q, k, v, None, kp, slopes, table, *[params[p] for p in spec.param_names], 128 ** -0.5,
                        causal, 0.0)
    rows = _sample_rows(n)
    delta = torch.arange(n, device=DEV)[None, :] - rows[:, None]  # (R, M)
    r = (table.shape[1] - 1) // 2
    bias = -slopes[:, None, None] * delta.abs() + table[:, delta.clamp(-r, r) + r]
    ok = delta <= 0 if causal else torch.ones_like(delta, dtype=torch.bool)
    _assert_close(got[:, :, rows], _rows_attention(q, k, v, rows, ok, bias=bias[None], key_padding=kp),
                  f"relbias {kind} {n}")


@pytest.mark.parametrize("n, params, causal, d", [
    (65536, dict(block=64, levels=1, sinks=4), False, 128),
    (65536, dict(block=128, levels=3, sinks=0), True, 128),
    (16384, dict(block=64, levels=2, sinks=2), False, 128),
    # DeepSeek MLA's head dim: the pooled level's own tiles past 128
    (65536, dict(block=64, levels=1, sinks=4), False, 192),
    (16384, dict(block=64, levels=2, sinks=4), True, 192),
])
def test_hierarchical_full_size(n, params, causal, d):
    """Against the op's torch code on the GPU (tested against the spec in tests/test_hierarchical.py): the
    spec's (N, C, M) group membership does not fit at these sizes. Key padding included."""
    from attnopt.kernels.hierarchical.op import forward as torch_forward

    spec = get_variant("hierarchical")
    q, k, v = _qkv(n, hkv=4, d=d)
    kp = torch.zeros(1, n, device=DEV)
    kp[0, torch.randperm(n, device=DEV)[: n // 10]] = float("-inf")
    args = [params[p] for p in spec.param_names]
    got = spec.torch_op(q, k, v, None, kp, *args, d ** -0.5, causal, 0.0)
    rows = _sample_rows(n, params["block"])
    want = torch_forward(q, k, v, None, kp, *args, d ** -0.5, causal, 0.0)
    _assert_close(got[:, :, rows], want[:, :, rows], f"hierarchical {n} {params}")


def test_peak_memory_is_linear():
    """No op upcasts whole tensors or builds S-wide fp32 scores: extra memory stays a small multiple of q."""
    n = 65536
    q, k, v = _qkv(n, hkv=4)
    kp = torch.zeros(1, n, device=DEV)
    calls = {
        "window": lambda: get_variant("window").torch_op(q, k, v, None, kp, 1024, 4, 0.088, True, 0.0),
        "relbias": lambda: get_variant("relbias").torch_op(q, k, v, None, kp, torch.ones(16, device=DEV) * 0.01,
                                                           torch.zeros(16, 1, device=DEV), "alibi", 32, 128, True,
                                                           "", 0.0, 1.0, 0.088, True, 0.0),
        "hierarchical": lambda: get_variant("hierarchical").torch_op(q, k, v, None, kp, 64, 2, 4, 0.088, True, 0.0),
    }
    for name, call in calls.items():
        call()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        out = call()
        torch.cuda.synchronize()
        extra = torch.cuda.max_memory_allocated() - before
        assert extra <= 1.6 * q.numel() * q.element_size(), (name, extra / 2**20)
        del out


# --- torch.compile through the ops ------------------------------------------------------------------------


@pytest.mark.parametrize("name, params", [("segmented", dict(segment_size=16, sinks=2)),
                                          ("window", dict(window=9, sinks=1)),
                                          ("relbias", dict(kind="alibi")),
                                          ("hierarchical", dict(block=16, levels=2, sinks=1))])
def test_compiled_rewrite_runs_the_triton_kernel(name, params):
    from torch._inductor.utils import run_and_get_code

    import attnopt
    from test_torch_integration import Attention

    torch.manual_seed(0)
    x = torch.randn(2, 64, 32, device=DEV)
    pad = torch.ones(2, 64, device=DEV)
    pad[1, -5:] = 0
    gm = attnopt.rewrite(torch.export.export(Attention().eval().to(DEV), (x, pad)), name, **params).model
    torch._dynamo.reset()
    with torch.no_grad():
        eager = gm(x, pad)
        compiled, code = run_and_get_code(torch.compile(gm, fullgraph=True), x, pad)
    assert "_band_fwd" in "\n".join(code), "Inductor did not see the band kernel"
    torch.testing.assert_close(compiled, eager, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name, params", [("segmented", dict(segment_size=16)), ("window", dict(window=9)),
                                          ("memory", dict(segment_size=16, memory=16, sinks=1))])
def test_sink_logits_through_the_kernels_eager_and_compiled(name, params):
    """GPT-OSS's learned sinks: the rewritten model on the GPU equals the CPU's torch code, eager and compiled
    (the sink logits reach the band kernel's epilogue, or the fast path's merge, through Inductor too)."""
    from torch._inductor.utils import run_and_get_code

    import attnopt
    from test_sink_logits import Sinks

    torch.manual_seed(0)
    model = Sinks().eval()
    x = torch.randn(2, 64, 32)
    gm = attnopt.rewrite(torch.export.export(model, (x,)), name, **params).model
    with torch.no_grad():
        want = gm(x)
        gm = gm.to(DEV)
        eager = gm(x.to(DEV))
        torch._dynamo.reset()
        compiled, code = run_and_get_code(torch.compile(gm, fullgraph=True), x.to(DEV))
    assert "_band_fwd" in "\n".join(code) or "_merge_fwd" in "\n".join(code)
    torch.testing.assert_close(eager.cpu(), want, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(compiled, eager, atol=1e-4, rtol=1e-4)


# --- values with their own head dim (DeepSeek's MLA shapes) ------------------------------------------------


class _NarrowValues(torch.nn.Module):
    """MLA's shapes: q and k over 192 dims a head, values over 128 (the rewrites pad the values to 192)."""

    def __init__(self, heads: int = 4, dqk: int = 192, dv: int = 128, width: int = 256):
        super().__init__()
        self.heads, self.dqk, self.dv = heads, dqk, dv
        self.qk = torch.nn.Linear(width, 2 * heads * dqk)
        self.v = torch.nn.Linear(width, heads * dv)
        self.out = torch.nn.Linear(heads * dv, width)

    def forward(self, x):
        b, n, _ = x.shape
        q, k = self.qk(x).view(b, n, 2, self.heads, self.dqk).permute(2, 0, 3, 1, 4)
        v = self.v(x).view(b, n, self.heads, self.dv).transpose(1, 2)
        o = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(o.transpose(1, 2).reshape(b, n, self.heads * self.dv))


@pytest.mark.parametrize("name, exact, below", [("segmented", dict(segment_size=1 << 16), dict(segment_size=128)),
                                                ("window", dict(window=1 << 16), dict(window=100, sinks=4))])
def test_narrower_values_through_the_kernels(name, exact, below):
    import attnopt

    torch.manual_seed(0)
    model = _NarrowValues().eval()
    x = torch.randn(2, 1000, 256)
    program = torch.export.export(model, (x,))
    (site,) = attnopt.detect(program)
    assert (site.head_dim, site.value_head_dim) == (192, 128)
    _check_rewrites_on_the_gpu(model, program, x, name, exact, below)


def _check_rewrites_on_the_gpu(model, program, x, name, exact, below):
    """At the limit the rewritten model on the GPU (bf16) equals the model there; below it, the same plan on
    the GPU's kernels equals the CPU's torch code (float32, ``program``), and differs from dense."""
    import attnopt

    gpu = copy.deepcopy(model).to(DEV, torch.bfloat16)  # the CPU program keeps the float32 weights
    xg = x.to(DEV, torch.bfloat16)
    with torch.no_grad():
        dense = gpu(xg).float()
        at_limit = attnopt.rewrite(torch.export.export(gpu, (xg,)), name, **exact).model(xg).float()
        torch.testing.assert_close(at_limit, dense, atol=3e-2, rtol=3e-2)
        got = attnopt.rewrite(torch.export.export(gpu, (xg,)), name, **below).model(xg).float().cpu()
        want = attnopt.rewrite(program, name, **below).model(x)
    assert (got - dense.cpu()).abs().max() > 0.05  # a restriction the model feels
    torch.testing.assert_close(got, want, atol=3e-2, rtol=3e-2)


# --- attention batched over extra axes (Hiera's mask units) ------------------------------------------------


class _MaskUnits(torch.nn.Module):
    """Hiera's layout: (B, H, units, N, D) from one permute of the packed projection, plus a bias per unit."""

    def __init__(self, heads: int = 4, dim: int = 64, units: int = 4, unit_len: int = 512):
        super().__init__()
        self.heads, self.dim, self.units = heads, dim, units
        self.qkv = torch.nn.Linear(heads * dim, 3 * heads * dim)
        self.register_buffer("unit_bias", torch.randn(1, 1, units, unit_len, unit_len))

    def forward(self, x):
        b, n, _ = x.shape
        qkv = self.qkv(x).view(b, self.units, n // self.units, 3, self.heads, self.dim).permute(3, 0, 4, 1, 2, 5)
        q, k, v = qkv.unbind(0)
        s = q @ k.transpose(-1, -2) * self.dim**-0.5 + self.unit_bias
        return (s.softmax(-1) @ v).transpose(1, 3).reshape(b, n, -1)


@pytest.mark.parametrize("name, exact, below", [("segmented", dict(segment_size=1 << 16), dict(segment_size=128)),
                                                ("window", dict(window=1 << 16), dict(window=100, sinks=4))])
def test_extra_axes_through_the_kernels(name, exact, below):
    """Each (head, unit) pair reaches the kernels as a head, the per-unit bias as a dense mask folded the same way:
    at the limit the output equals the model's, below it the GPU's kernels equal the CPU's torch code."""
    import attnopt

    torch.manual_seed(0)
    model = _MaskUnits().eval()
    x = torch.randn(2, 2048, 256)
    program = torch.export.export(model, (x,))
    (site,) = attnopt.detect(program)
    assert (site.num_heads, site.extra_axes, site.q_len) == (4, 1, 512)
    _check_rewrites_on_the_gpu(model, program, x, name, exact, below)
