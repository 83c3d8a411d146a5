"""relbias and hierarchical in Triton (the band kernel's in-kernel bias and pooled coarse level), and the
registration that lets torch.compile see every Triton kernel.

- Interpreted cases run the ops' CUDA implementations (``<variant>.op.cuda_forward``) on CPU tensors under
  TRITON_INTERPRET=1, in one subprocess (the interpreter must be on before triton.jit runs), against the
  variant's reference (the spec); hierarchical's KV-cache step, which the reference does not take, against
  the CPU op.
- The registration check traces each op that has a CUDA kernel through AOTAutograd with fake CUDA tensors
  (no GPU needed): the graph must hold the Triton kernels themselves, not an opaque call to the op.

Full sizes on the H200 are in ``tests/test_gpu_kernels.py``.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from triton_interpreter import check_result, report, run_cases_in_subprocess

# name: variant, params, and the setting (B, H, Hkv, N, M, D, dtype, causal, kp, mask, softcap)
CASES: dict[str, dict] = {
    "relbias_alibi": dict(variant="relbias", params=0, H=4, N=40),
    "relbias_alibi_causal_gqa": dict(variant="relbias", params=0, H=4, Hkv=2, N=40, causal=True),
    "relbias_t5_key_padding": dict(variant="relbias", params=1, B=2, N=44, kp=True),
    "relbias_t5_unidirectional_causal": dict(variant="relbias", params=2, N=44, causal=True),
    "relbias_table_mask_softcap": dict(variant="relbias", params=3, N=36, mask=True, softcap=5.0),
    "relbias_table_kv_cache": dict(variant="relbias", params=4, N=20, M=50, causal=True),
    "relbias_alibi_bf16_d24": dict(variant="relbias", params=0, N=33, D=24, dtype="bfloat16", causal=True),
    # steep slopes: the kernel skips the key blocks too far to weigh (triton_band's DECAY); the gentlest head's
    # far keys still count, so skipping too much fails
    "relbias_alibi_far_blocks_skipped": dict(variant="relbias", params=0, bias_scale=12.0, H=4, N=300,
                                             dtype="float32"),
    "relbias_alibi_far_blocks_skipped_causal_gqa": dict(variant="relbias", params=0, bias_scale=12.0, H=4, Hkv=2,
                                                        N=260, M=300, dtype="float32", causal=True),
    "relbias_alibi_far_blocks_skipped_bf16": dict(variant="relbias", params=0, bias_scale=8.0, H=4, N=200, D=24,
                                                  dtype="bfloat16"),
    # GPT-OSS's learned sink logits: one more denominator term per head in the epilogue (the far-block skipping
    # stays exact: a sink only grows the denominator)
    "relbias_alibi_sink_logits_causal_gqa": dict(variant="relbias", params=0, H=4, Hkv=2, N=40, causal=True,
                                                 sinkl=True),
    "relbias_t5_sink_logits_key_padding": dict(variant="relbias", params=1, B=2, H=4, N=44, kp=True, sinkl=True),
    "relbias_alibi_far_blocks_skipped_sink_logits": dict(variant="relbias", params=0, bias_scale=12.0, H=4, N=300,
                                                         dtype="float32", sinkl=True),
    "hier_l1": dict(variant="hierarchical", params=dict(block=16, levels=1, sinks=0), N=70),
    "hier_l2_sinks_causal": dict(variant="hierarchical", params=dict(block=16, levels=2, sinks=2), N=100,
                                 causal=True),
    "hier_l3_padding": dict(variant="hierarchical", params=dict(block=16, levels=3, sinks=1), B=2, N=130,
                            kp=True),
    "hier_l2_gqa_softcap": dict(variant="hierarchical", params=dict(block=16, levels=2, sinks=0), H=4, Hkv=2,
                                N=80, softcap=4.0),
    "hier_mask": dict(variant="hierarchical", params=dict(block=16, levels=1, sinks=3), N=96, mask=True),
    "hier_bf16_d24_ragged": dict(variant="hierarchical", params=dict(block=32, levels=2, sinks=0), N=100, D=24,
                                 dtype="bfloat16", causal=True),
    "hier_kv_cache": dict(variant="hierarchical", params=dict(block=16, levels=2, sinks=2), N=30, M=130,
                          causal=True),
    "hier_block_covers_all": dict(variant="hierarchical", params=dict(block=64, levels=2, sinks=0), N=48),
    "hier_l1_causal_sinks": dict(variant="hierarchical", params=dict(block=16, levels=1, sinks=2), N=90,
                                 causal=True),
    "hier_l1_kv_cache": dict(variant="hierarchical", params=dict(block=16, levels=1, sinks=1), N=30, M=130,
                             causal=True),
    # one level takes tiles taller than a block (each row excludes its own neighbours): 64 rows, blocks of 16
    "hier_l1_tall_tiles": dict(variant="hierarchical", params=dict(block=16, levels=1, sinks=1), N=150, kp=True,
                               tile=(64, 16)),
    "hier_l1_tall_tiles_causal_offset": dict(variant="hierarchical", params=dict(block=16, levels=1, sinks=0),
                                             N=70, M=150, causal=True, tile=(32, 16)),
    # one level over more blocks than a tile of slots holds: only the tiles that can hold a row's neighbours
    # mask per row, and a tile edge falls right after row block 15's last excluded slot (17)
    "hier_l1_far_tiles_unmasked": dict(variant="hierarchical", params=dict(block=16, levels=1, sinks=0), N=300),
    "hier_l1_far_tiles_unmasked_tall_causal": dict(variant="hierarchical", params=dict(block=16, levels=1, sinks=1),
                                                   N=300, causal=True, tile=(32, 16)),
    # GPT-OSS's learned sink logits: one more column per head in the epilogue, beside the pooled ones
    "hier_l2_sink_logits_gqa_causal": dict(variant="hierarchical", params=dict(block=16, levels=2, sinks=1), H=4,
                                           Hkv=2, N=100, causal=True, kp=True, sinkl=True),
    "hier_l1_sink_logits": dict(variant="hierarchical", params=dict(block=16, levels=1, sinks=0), N=70, sinkl=True),
}


def make_case(spec: dict, seed: int = 0):
    from attnopt.kernels.registry import get_variant

    g = torch.Generator().manual_seed(seed)
    B, H = spec.get("B", 1), spec.get("H", 2)
    Hkv, N = spec.get("Hkv", H), spec["N"]
    M, D = spec.get("M", N), spec.get("D", 16)
    dtype = getattr(torch, spec.get("dtype", "float16"))
    q, k, v = (torch.randn(B, h, n, D, generator=g).to(dtype) for h, n in ((H, N), (Hkv, M), (Hkv, M)))
    variant = get_variant(spec["variant"])
    params = spec["params"]
    params = variant.test_params[params] if isinstance(params, int) else params
    if "bias_scale" in spec:
        params = {**params, "bias_scale": spec["bias_scale"]}
    kp = mask = None
    if spec.get("kp"):
        kp = torch.zeros(B, M)
        kp[0, M - 7:] = float("-inf")
        kp[-1, 16:35] = float("-inf")  # block 1 wholly padded: an empty pooled group
    if spec.get("mask"):
        mask = torch.randn(1, H, N, M, generator=g) * 2
    kw = dict(scale=1.0 / math.sqrt(D), mask=mask, key_padding=kp, causal=spec.get("causal", False),
              softcap=spec.get("softcap", 0.0))
    if spec.get("sinkl"):  # one a head, -inf among them (no sink) and one large enough to take most of a row
        kw["sink_logits"] = torch.tensor([2.5, -1.0, float("-inf"), 4.0][:H])
    return variant, params, q, k, v, kw


def run_case(name: str) -> dict:
    """The op's CUDA implementation (Triton, interpreted) against the reference; errors as JSON-able numbers."""
    import importlib

    from kernel_harness import run_op, run_reference, tensors

    spec = CASES[name]
    variant, params, q, k, v, kw = make_case(spec)
    extra = tensors(variant, params, q, k)
    args = [extra[t.name] for t in variant.tensor_inputs] + [params[p] for p in variant.param_names]
    if "tile" in spec:  # the launcher with a given tile shape, as a GPU configuration would set it
        from attnopt.kernels.triton_band import BandConfig
        from attnopt.kernels.triton_hierarchical import hierarchical_attention

        out = hierarchical_attention(q, k, v, **params, **kw, config=BandConfig(*spec["tile"], 4, 1))
    else:
        cuda_forward = importlib.import_module(f"attnopt.kernels.{variant.name}.op").cuda_forward
        sinkl = [kw["sink_logits"]] if "sink_logits" in kw else []
        out = cuda_forward(q, k, v, kw["mask"], kw["key_padding"], *args, kw["scale"], kw["causal"],
                           kw["softcap"], *sinkl)
    assert out is not None, "the kernel declined the case"
    if q.shape[2] == k.shape[2]:
        ref = run_reference(variant.name, q, k, v, params, **kw)
    else:  # the reference takes self-attention only; the CPU op is tested against it elsewhere
        ref = run_op(variant.name, q.float(), k.float(), v.float(), params, **kw)
    err = (out.float() - ref.float()).abs()
    return dict(max_err=float(err.max()), finite=bool(torch.isfinite(out).all()), dtype=str(q.dtype),
                shape_ok=tuple(out.shape) == tuple(q.shape) and out.dtype == q.dtype)


@pytest.fixture(scope="module")
def interpreted_results() -> dict:
    return run_cases_in_subprocess(str(Path(__file__).resolve()))


@pytest.mark.parametrize("name", sorted(CASES))
def test_interpreted(interpreted_results, name):
    check_result(interpreted_results[name])


def test_hierarchical_small_blocks_keep_the_torch_code():
    """A block the kernel's 16-row tiles cannot hold is served by the op's torch code, not refused."""
    from attnopt.kernels.hierarchical.op import cuda_forward

    q = torch.zeros(1, 1, 32, 16)
    assert cuda_forward(q, q, q, None, None, 8, 1, 0, 0.25, False, 0.0) is None


# --- registration: torch.compile sees the Triton kernels -------------------------------------------


def _ops_with_cuda_kernels():
    from attnopt.kernels.registry import all_variants

    found = []
    for spec in all_variants():
        op = spec.torch_op.default
        if torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), "CUDA"):
            found.append(spec.name)
    return found


@pytest.mark.parametrize("name", ["segmented", "window", "memory", "dense", "relbias", "hierarchical"])
def test_variant_registers_a_triton_cuda_kernel(name):
    assert name in _ops_with_cuda_kernels()


@pytest.mark.parametrize("name", ["window", "relbias", "hierarchical"])
def test_compile_traces_into_the_triton_kernels(name, monkeypatch):
    """AOTAutograd (what torch.compile runs before Inductor) decomposes the op into its kernel launches. (The
    window stays on the band kernel: where cuDNN's frontend is installed it would take cuDNN's diagonal band,
    tests/test_cudnn_band.py.)"""
    import logging

    from functorch.compile import aot_function
    from torch._subclasses.fake_tensor import FakeTensorMode

    from attnopt.kernels import cudnn_band
    from attnopt.kernels.registry import get_variant
    from kernel_harness import tensors

    monkeypatch.setattr(cudnn_band, "CUDNN_BANDS", "off")

    logging.getLogger("torch._higher_order_ops.triton_kernel_wrap").setLevel(logging.ERROR)  # no GPU driver here
    spec = get_variant(name)
    params = {**spec.test_params[0], **({"block": 16} if name == "hierarchical" else {})}
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    with mode:
        q = torch.empty(1, 2, 64, 16, dtype=torch.float16, device="cuda")
    extra = tensors(spec, params, torch.empty(1, 2, 64, 16), torch.empty(1, 2, 64, 16))
    args = [extra[t.name] for t in spec.tensor_inputs] + [params[p] for p in spec.param_names]
    graphs = []

    class Captured(Exception):
        """Stops after tracing: without a GPU driver the kernels' TTIR (which says what they write) is not
        available, so AOTAutograd assumes they mutate their inputs and cannot run the graph here."""

    def keep(gm, _inputs):
        graphs.append(gm)
        raise Captured

    def call(q):
        return spec.torch_op(q, q, q, None, None, *args, 0.25, False, 0.0)

    with torch.no_grad(), mode, pytest.raises(Captured):
        aot_function(call, fw_compiler=keep)(q)
    code = graphs[0].code
    assert "triton_kernel_wrapper_functional" in code, code
    assert "attnopt" not in code, code
    # the band kernel's TMA descriptors travel as Inductor's metadata, so the compiled kernel loads by TMA too
    # (hierarchical's group tables as well)
    band = [n for n in graphs[0].graph.nodes if n.kwargs.get("tma_descriptor_metadata")]
    assert len(band) == 1, code
    tables = {"desc_tk", "desc_tv"} if name == "hierarchical" else set()
    assert set(band[0].kwargs["tma_descriptor_metadata"]) == {"desc_q", "desc_k", "desc_v", "desc_o", *tables}


if __name__ == "__main__" and "--interpret" in sys.argv:
    report(CASES, run_case)
