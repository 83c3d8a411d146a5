"""The Triton band kernel (attnopt.kernels.triton_band) against a plain-torch reference.

Two layers:

- TestInterpreted: small sizes under TRITON_INTERPRET=1 on the CPU (how CI runs
  it). The interpreter must be on before triton.jit decorates the kernel, so the
  cases run in one subprocess started with the variable set (this file, run as a
  script); each case is then checked as its own test.
- TestCuda: full sizes on a GPU (N up to 65536), skipped without CUDA. The N×M
  reference would not fit there, so it is computed for a sample of query rows.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from triton_interpreter import check_result, report, run_cases_in_subprocess

# --- the reference: the band formula as an explicit mask, softmax in fp32 ----------------


def band_allowed(rows: torch.Tensor, m: int, offset: int, unit: int, before: int, after: int, sinks: int,
                 causal: bool) -> torch.Tensor:
    """(len(rows), m) bool: the band (plus sinks, then causal) for query rows ``rows``."""
    p = (rows.to(torch.int64) + offset)[:, None]
    j = torch.arange(m, device=rows.device)[None, :]
    base = torch.div(p, unit, rounding_mode="floor") * unit
    ok = ((j >= base - before) & (j < base + unit + after)) | (j < sinks)
    if causal:
        ok = ok & (j <= p)
    return ok


def band_scores(q, k, v, rows, *, unit, before, after, sinks, scale, causal, softcap=0.0):
    """(scores over the band and sinks, −inf elsewhere; values), fp32, the kv heads repeated to q's."""
    B, H, N, D = q.shape
    Hkv, M = k.shape[1], k.shape[2]
    kf, vf = (t.float().repeat_interleave(H // Hkv, dim=1) for t in (k, v))
    s = (q[:, :, rows].float() @ kf.transpose(-1, -2)) * scale
    if softcap:
        s = softcap * torch.tanh(s / softcap)
    return s.masked_fill(~band_allowed(rows, M, M - N, unit, before, after, sinks, causal), float("-inf")), vf


def reference(q, k, v, *, unit, before, after, sinks, scale, causal, softcap=0.0, key_padding=None, mask=None,
              rows=None, sink_logits=None):
    """Band attention for query rows ``rows`` (all by default), from explicit masks, in fp32."""
    B, H, N, D = q.shape
    M = k.shape[2]
    rows = torch.arange(N, device=q.device) if rows is None else rows
    s, vf = band_scores(q, k, v, rows, unit=unit, before=before, after=after, sinks=sinks, scale=scale,
                        causal=causal, softcap=softcap)
    if key_padding is not None:
        s = s + key_padding.float().reshape(key_padding.shape[0], 1, 1, M)
    if mask is not None:
        mk = mask[:, :, rows]
        s = s.masked_fill(~mk, float("-inf")) if mk.dtype == torch.bool else s + mk.float()
    if sink_logits is not None:  # GPT-OSS's sink: a column of score σ_h and value zero, dropped after the softmax
        s = torch.cat([s, sink_logits.float().reshape(1, H, 1, 1).expand(*s.shape[:3], 1)], dim=-1)
    p = torch.softmax(s, dim=-1)[..., :M]
    p = torch.where(torch.isnan(p), 0.0, p)
    return (p @ vf).to(q.dtype)


# --- the cases ------------------------------------------------------------------------

BIG = 2**30
# name: (B, H, Hkv, N, M, D, dtype, band (unit, before, after, sinks), causal, extras)
CASES: dict[str, dict] = {
    "segmented": dict(N=64, band=(16, 0, 0, 0)),
    "segmented_ragged_seg": dict(N=70, band=(24, 0, 0, 0)),
    "segmented_sinks": dict(N=80, band=(16, 0, 0, 3)),
    "segmented_sinks_causal": dict(N=80, band=(16, 0, 0, 3), causal=True),
    "segmented_sinks_past_band": dict(N=50, band=(8, 0, 0, 40)),
    "window": dict(N=77, band=(1, 11, 11, 0)),
    "window_causal": dict(N=77, band=(1, 11, 11, 0), causal=True),
    "window_sinks_causal": dict(N=77, band=(1, 7, 7, 4), causal=True),
    "memory": dict(N=96, band=(16, 16, 0, 0)),
    "memory_causal_sinks": dict(N=96, band=(16, 20, 0, 2), causal=True),
    "dense": dict(N=45, band=(BIG, 0, 0, 0)),
    "dense_causal": dict(N=45, band=(BIG, 0, 0, 0), causal=True),
    "hier_fine": dict(N=64, band=(8, 8, 8, 0)),
    "gqa": dict(H=4, Hkv=2, N=50, band=(1, 9, 9, 2)),
    "gqa_mqa_causal": dict(H=4, Hkv=1, N=40, band=(8, 8, 0, 0), causal=True),
    "kv_cache_window": dict(N=20, M=70, band=(1, 16, 16, 2), causal=True),
    "kv_cache_segmented": dict(N=13, M=64, band=(16, 0, 0, 4), causal=True),
    "kv_cache_memory": dict(N=30, M=61, band=(16, 16, 0, 0)),
    "cross_shorter_keys": dict(N=40, M=24, band=(BIG, 0, 0, 0)),
    "key_padding": dict(B=2, N=48, band=(16, 8, 0, 2), kp="pad"),
    "key_padding_broadcast": dict(B=2, N=48, band=(1, 9, 9, 0), kp="broadcast"),
    "key_padding_finfo_min": dict(B=2, N=48, band=(16, 0, 0, 0), kp="finfo"),
    "mask_additive": dict(N=40, band=(1, 12, 12, 1), mask="float"),
    "mask_bool_broadcast": dict(B=2, H=2, N=40, band=(8, 8, 0, 0), mask="bool", causal=True),
    "softcap": dict(N=48, band=(1, 9, 9, 2), softcap=3.0),
    "empty_rows": dict(N=40, band=(16, 0, 0, 0), kp="neg_inf_segment"),
    "causal_empty_rows": dict(N=8, M=4, band=(BIG, 0, 0, 0), causal=True),
    "head_dim_8_fp16": dict(N=33, D=8, dtype="float16", band=(1, 5, 5, 1)),
    "head_dim_32_bf16": dict(N=33, D=32, dtype="bfloat16", band=(8, 8, 0, 1), causal=True),
    "fp32": dict(N=33, D=16, dtype="float32", band=(1, 5, 5, 1)),
    "strided_q": dict(N=40, band=(8, 0, 8, 0), layout="bnhd"),
    "tma_interp": dict(N=40, band=(1, 9, 9, 2), causal=True, tma=True),
    # the SDPA fast path's merge kernel (previous segment + sinks by log-sum-exp), SDPA stood in by torch
    "fast_segmented_sinks": dict(N=64, band=(16, 0, 0, 3), fast=True),
    "fast_segmented_causal_sinks": dict(N=64, band=(16, 0, 0, 16), causal=True, fast=True),
    "fast_memory": dict(N=64, band=(16, 16, 0, 0), fast=True),
    "fast_memory_causal_sinks": dict(B=2, N=80, band=(16, 16, 0, 4), causal=True, fast=True),
    "tiles_m32_n16": dict(N=75, M=90, band=(1, 13, 13, 3), causal=True, blocks=(32, 16)),
    "tiles_m16_n32": dict(N=75, band=(16, 16, 0, 5), causal=True, blocks=(16, 32)),
    # GPT-OSS's learned sink logits: one more denominator term a head, in the kernel's epilogue or the merge
    "sink_logits_window": dict(N=77, band=(1, 11, 11, 0), sinkl=True),
    "sink_logits_gqa_causal_sinks": dict(H=4, Hkv=2, N=50, band=(16, 0, 0, 3), causal=True, sinkl=True),
    "sink_logits_empty_rows": dict(N=40, band=(16, 0, 0, 0), kp="neg_inf_segment", sinkl=True),
    "fast_segmented_sink_logits": dict(N=64, band=(16, 0, 0, 0), fast=True, sinkl=True),
    "fast_memory_causal_sinks_sink_logits": dict(B=2, N=80, band=(16, 16, 0, 4), causal=True, fast=True, sinkl=True),
    # a window's sinks merged into its fused attention (cuDNN's on the GPU, torch's here) by the same kernel
    "fast_window_sinks": dict(N=77, band=(1, 11, 11, 4), fast="window"),
    "fast_window_sinks_causal_gqa_kv_cache": dict(H=4, Hkv=2, N=20, M=70, band=(1, 16, 16, 5), causal=True,
                                                  fast="window"),
    "fast_window_sinks_past_a_narrow_band": dict(N=40, band=(1, 2, 1, 6), fast="window"),
    "fast_window_sinks_sink_logits": dict(B=2, N=50, band=(1, 9, 9, 3), causal=True, fast="window", sinkl=True),
}


def make_inputs(spec: dict, device="cpu", seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    B, H, Hkv = spec.get("B", 1), spec.get("H", 2), spec.get("Hkv", spec.get("H", 2))
    N = spec["N"]
    M = spec.get("M", N)
    D = spec.get("D", 16)
    dtype = getattr(torch, spec.get("dtype", "float16"))

    def rnd(*shape):
        return torch.randn(*shape, generator=g).to(dtype).to(device)

    if spec.get("layout") == "bnhd":
        q = rnd(B, N, H, D).transpose(1, 2)
    else:
        q = rnd(B, H, N, D)
    k, v = rnd(B, Hkv, M, D), rnd(B, Hkv, M, D)
    unit, before, after, sinks = spec["band"]
    kw = dict(unit=unit, before=before, after=after, sinks=sinks, scale=1.0 / math.sqrt(D),
              causal=spec.get("causal", False), softcap=spec.get("softcap", 0.0))
    if spec.get("sinkl"):  # large enough to matter next to scores of about ±2, one head's below them
        kw["sink_logits"] = torch.tensor([2.5, -1.0, 4.0, 0.0][:H], device=device)
    kp = spec.get("kp")
    if kp == "pad":
        pad = torch.zeros(B, M)
        pad[0, M - 7:] = float("-inf")
        pad[1, 3:9] = float("-inf")
        kw["key_padding"] = pad.to(device)
    elif kp == "broadcast":
        pad = torch.zeros(1, M)
        pad[0, 5:11] = float("-inf")
        kw["key_padding"] = pad.to(device).expand(B, M)
    elif kp == "finfo":
        pad = torch.zeros(B, M)
        pad[:, :16] = torch.finfo(torch.float32).min  # segment 0 only sees finfo.min keys: uniform, not 0
        kw["key_padding"] = pad.to(device)
    elif kp == "neg_inf_segment":
        pad = torch.zeros(B, M)
        pad[:, 16:32] = float("-inf")  # segment 1 sees no allowed key: exactly 0
        kw["key_padding"] = pad.to(device)
    if spec.get("mask") == "float":
        kw["mask"] = (torch.randn(B, H, N, M, generator=g) * 2).to(device)
    elif spec.get("mask") == "bool":
        kw["mask"] = (torch.rand(1, H, N, M, generator=g) > 0.3).to(device)
    return q, k, v, kw


def torch_sdpa_lse(q, k, v, causal, scale):
    """(out in q's dtype, natural log-sum-exp in fp32): what the fused SDPA kernels return."""
    s = (q.float() @ k.float().transpose(-1, -2)) * scale
    if causal:
        s = s.masked_fill(torch.ones(s.shape[-2:], dtype=torch.bool).triu(1), float("-inf"))
    lse = torch.logsumexp(s, -1)
    return (torch.softmax(s, -1) @ v.float()).to(q.dtype), lse


def torch_band_lse(q, k, v, *, unit, before, after, scale, causal, **_):
    """(out, natural log-sum-exp in fp32) over the band alone, no sinks: what cuDNN's window returns."""
    s, vf = band_scores(q, k, v, torch.arange(q.shape[2]), unit=unit, before=before, after=after, sinks=0,
                        scale=scale, causal=causal)
    return (torch.softmax(s, -1) @ vf).to(q.dtype), torch.logsumexp(s, -1)


def run_case(name: str) -> dict:
    """Run one case through the kernel; the errors against the reference, as JSON-able numbers."""
    from attnopt.kernels import triton_band

    spec = CASES[name]
    q, k, v, kw = make_inputs(spec)
    bm, bn = spec.get("blocks", (16, 16))
    cfg = triton_band.BandConfig(block_m=bm, block_n=bn, num_warps=4, num_stages=1, use_tma=spec.get("tma", False))
    if spec.get("fast") == "window":
        out = triton_band.window_sinks(
            q, k, v, before=kw["before"], after=kw["after"], sinks=kw["sinks"], scale=kw["scale"], causal=kw["causal"],
            sink_logits=kw.get("sink_logits"), window_lse=lambda: torch_band_lse(q, k, v, **kw))
    elif spec.get("fast"):
        out = triton_band._segment_fast_path(q, k, v, **{"key_padding": None, "mask": None, **kw}, sdpa=torch_sdpa_lse)
        assert out is not None, "fast path refused"
    else:
        out = triton_band._band_attention(q, k, v, **kw, config=cfg)
    ref = reference(q, k, v, **kw)
    err = (out.float() - ref.float()).abs()
    result = dict(max_err=float(err.max()), finite=bool(torch.isfinite(out).all()), dtype=str(q.dtype),
                  shape_ok=tuple(out.shape) == tuple(q.shape) and out.dtype == q.dtype)
    if spec.get("kp") == "neg_inf_segment":
        result["zero_rows_exact"] = bool((out[:, :, 16:32] == 0).all())
    if name == "causal_empty_rows":
        result["zero_rows_exact"] = bool((out[:, :, :4] == 0).all())
    return result


# --- interpreted (CI) ------------------------------------------------------------------


@pytest.fixture(scope="module")
def interpreted_results() -> dict:
    return run_cases_in_subprocess(str(Path(__file__).resolve()))


@pytest.mark.parametrize("name", sorted(CASES))
def test_interpreted(interpreted_results, name):
    r = interpreted_results[name]
    check_result(r)
    if "zero_rows_exact" in r:
        assert r["zero_rows_exact"], r


def test_rejects_bad_arguments():
    from attnopt.kernels import triton_band

    q = torch.zeros(1, 2, 8, 16, dtype=torch.float16)
    k = torch.zeros(1, 2, 8, 16, dtype=torch.float16)
    base = dict(unit=4, before=0, after=0, sinks=0, scale=0.25, causal=False)
    with pytest.raises(ValueError, match="multiple"):
        triton_band.band_attention(q, k[:, :1].expand(1, 3, 8, 16), k[:, :1].expand(1, 3, 8, 16), **base)
    with pytest.raises(ValueError, match="unit"):
        triton_band.band_attention(q, k, k, **{**base, "unit": 0})
    with pytest.raises(ValueError, match="key_padding"):
        triton_band.band_attention(q, k, k, **base, key_padding=torch.zeros(1, 7))
    with pytest.raises(TypeError, match="key_padding"):
        triton_band.band_attention(q, k, k, **base, key_padding=torch.zeros(1, 8, dtype=torch.bool))


# --- CUDA, full sizes -------------------------------------------------------------------

GPU_CASES = {
    # name: (N, band, causal, extras)
    "segmented_fast_path": (65536, (1024, 0, 0, 0), False, {}),
    "segmented_kernel": (65536, (1024, 0, 0, 0), False, {"fast_path": False}),
    "segmented_sinks": (65536, (1024, 0, 0, 4), False, {}),
    "segmented_causal": (16384, (1024, 0, 0, 0), True, {}),
    "window": (65536, (1, 1023, 1023, 0), False, {}),  # cuDNN's diagonal band where its frontend is installed
    "window_kernel": (65536, (1, 1023, 1023, 0), False, {"fast_path": False}),
    "window_causal": (65536, (1, 1023, 1023, 0), True, {}),
    "window_uneven_gqa_kv_cache_ragged": (3000, (1, 700, 300, 0), False, {"Hkv": 4, "M": 5000}),
    "window_causal_kv_cache_fp16_d64": (1000, (1, 255, 255, 0), True, {"M": 3000, "dtype": torch.float16, "D": 64}),
    "window_wider_than_the_keys": (4096, (1, 8191, 8191, 0), False, {}),
    "window_causal_sinks": (65536, (1, 1023, 1023, 4), True, {}),  # cuDNN's window, the sinks merged after
    "window_sinks": (65536, (1, 1023, 1023, 4), False, {}),
    "window_sinks_kernel": (16384, (1, 1023, 1023, 4), True, {"fast_path": False}),
    "window_sinks_uneven_gqa_kv_cache": (3000, (1, 700, 300, 6), True, {"Hkv": 4, "M": 5000}),
    "memory": (65536, (1024, 1024, 0, 0), False, {}),
    "memory_kernel": (65536, (1024, 1024, 0, 0), False, {"fast_path": False}),
    "memory_sinks_fast_path": (65536, (1024, 1024, 0, 4), True, {}),
    "segmented_causal_sinks_fast_path": (16384, (1024, 0, 0, 4), True, {}),
    "segmented_sinks_kernel": (16384, (1024, 0, 0, 4), False, {"fast_path": False}),
    "memory_causal": (16384, (1024, 1024, 0, 4), True, {}),
    "dense_ragged": (16000, (BIG, 0, 0, 0), False, {}),
    "dense_causal_kv_cache": (4000, (BIG, 0, 0, 0), True, {"M": 9000}),
    "window_key_padding_gqa": (16384, (1, 511, 511, 0), False, {"kp": True, "Hkv": 4}),
    "softcap_window": (16384, (1, 511, 511, 4), True, {"softcap": 30.0}),
    "mask_dense_remainder": (4096, (1, 255, 255, 0), False, {"mask": True}),
    "tma_window": (65536, (1, 1023, 1023, 4), True, {"tma": True, "fast_path": False}),
    "fp16_d64": (16384, (256, 256, 0, 0), True, {"dtype": torch.float16, "D": 64}),
    # DeepSeek MLA's width (values padded to it): 128×64 tiles, the kernel's head dim padded to 256
    "mla_d192_window_causal": (65536, (1, 1023, 1023, 4), True, {"D": 192}),
    "mla_d192_segmented_fast_path": (16384, (1024, 0, 0, 0), False, {"D": 192}),
    "mla_d192_memory_sinks": (16384, (1024, 1024, 0, 4), True, {"D": 192}),
    # GPT-OSS's sink logits: the kernel's epilogue, and the fast path's merge
    "sink_logits_window_causal": (65536, (1, 1023, 1023, 0), True, {"sinkl": True}),
    "sink_logits_segmented_fast_path": (65536, (1024, 0, 0, 0), False, {"sinkl": True}),
    "sink_logits_memory_sinks_fast_path": (16384, (1024, 1024, 0, 4), True, {"sinkl": True}),
    "sink_logits_window": (16384, (1, 127, 127, 0), False, {"sinkl": True}),  # cuDNN's sink token
    "sink_logits_window_sinks": (16384, (1, 127, 127, 4), True, {"sinkl": True}),
    "sink_logits_segmented_gqa_causal": (16384, (1024, 0, 0, 0), True, {"sinkl": True, "Hkv": 4}),
    "sink_logits_memory": (16384, (1024, 1024, 0, 0), False, {"sinkl": True}),
    # short bands (at most SHORT_BAND_BLOCKS key blocks a row): one loop, the unpipelined tiles
    "short_band_fine_window": (65536, (64, 64, 64, 0), False, {}),
    "short_band_fine_window_causal": (65536, (64, 64, 0, 0), True, {}),
    "short_band_key_padding": (16384, (64, 64, 64, 0), False, {"kp": True}),
    "short_band_window_sinks_uneven_gqa_kv_cache": (3000, (1, 100, 100, 2), True, {"Hkv": 4, "M": 5000}),
}


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
class TestCuda:
    @pytest.mark.parametrize("name", sorted(GPU_CASES))
    def test_full_size(self, name):
        from attnopt.kernels import triton_band

        N, (unit, before, after, sinks), causal, ex = GPU_CASES[name]
        torch.manual_seed(0)
        dev = "cuda"
        H, D = 16, ex.get("D", 128)
        Hkv = ex.get("Hkv", H)
        M = ex.get("M", N)
        dtype = ex.get("dtype", torch.bfloat16)
        q = torch.randn(1, H, N, D, device=dev, dtype=dtype)
        k = torch.randn(1, Hkv, M, D, device=dev, dtype=dtype)
        v = torch.randn(1, Hkv, M, D, device=dev, dtype=dtype)
        kw = dict(unit=unit, before=before, after=after, sinks=sinks, scale=D ** -0.5, causal=causal,
                  softcap=ex.get("softcap", 0.0))
        if ex.get("kp"):
            kp = torch.zeros(1, M, device=dev)
            kp[0, torch.randperm(M, device=dev)[: M // 10]] = float("-inf")
            kw["key_padding"] = kp
        if ex.get("mask"):
            kw["mask"] = torch.randn(1, 1, N, M, device=dev)
        if ex.get("sinkl"):
            kw["sink_logits"] = torch.linspace(-2.0, 6.0, H, device=dev)
        cfg = None
        if ex.get("tma"):
            cfg = triton_band.BandConfig(**{**triton_band.default_config(D, dtype, q.device).__dict__, "use_tma": True})
        out = torch.full_like(q, float("nan"))  # poison: every element must be rewritten
        out = triton_band._band_attention(q, k, v, **kw, config=cfg, fast_path=ex.get("fast_path", True))
        torch.cuda.synchronize()
        assert torch.isfinite(out).all()
        # rows: the first and last blocks (ragged tail included) and a random sample
        rows = torch.cat([torch.arange(0, 160), torch.arange(N - 200, N),
                          torch.randint(0, N, (384,), generator=torch.Generator().manual_seed(1))]).unique().to(dev)
        ref = reference(q, k, v, **kw, rows=rows)
        got = out[:, :, rows]
        rel = ((got.float() - ref.float()).norm() / ref.float().norm()).item()
        assert rel < 1e-2, rel
        assert (got.float() - ref.float()).abs().max().item() < 0.06


# --- the interpreter subprocess ------------------------------------------------------------

if __name__ == "__main__" and "--interpret" in sys.argv:
    report(CASES, run_case)
