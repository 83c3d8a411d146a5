"""attnopt ops inside torch: compiled rewritten modules, and the CUDA implementations (Triton) where a GPU is.

The CUDA class skips without a GPU; it runs on the GPU machine (see BENCHMARKS.md for the command).
"""

from __future__ import annotations

import contextlib
import copy
import logging

import pytest
import torch
import torch.nn as nn

import attnopt
from attnopt.kernels.registry import all_variants, get_variant

N, E, H = 24, 32, 4


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.qkv = nn.Linear(E, 3 * E)

    def forward(self, x, pad):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, H, E // H).permute(2, 0, 3, 1, 4)
        s = q @ k.transpose(-1, -2) / (E // H) ** 0.5 + (1.0 - pad[:, None, None, :]) * -1e9
        return torch.softmax(s, dim=-1) @ v


@contextlib.contextmanager
def _records(logger: str):
    """The records ``logger`` emits inside the block, read at the logger itself (torch's loggers may not
    propagate to the root logger, where pytest's caplog listens)."""
    records = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append
    log = logging.getLogger(logger)
    log.addHandler(handler)
    try:
        yield records
    finally:
        log.removeHandler(handler)


def _inputs(device="cpu"):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, N, E, generator=gen)
    pad = torch.ones(2, N)
    pad[1, -5:] = 0
    return x.to(device), pad.to(device)


@pytest.mark.parametrize("name, params", [("segmented", {"segment_size": 8, "sinks": 2}),
                                          ("window", {"window": 5, "sinks": 1})])
def test_compiled_rewrite_has_no_graph_break(name, params):
    x, pad = _inputs()
    result = attnopt.rewrite(torch.export.export(Attention().eval(), (x, pad)), name, **params)
    gm = result.model
    with torch.no_grad():  # the ops are forward-only (no autograd formula)
        eager = gm(x, pad)
        # fullgraph=True turns any graph break into an error; aot_eager traces through the op's fake.
        compiled = torch.compile(gm, fullgraph=True, backend="aot_eager")(x, pad)
    torch.testing.assert_close(compiled, eager)


BAND_VARIANTS = ["segmented", "window", "memory", "dense"]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
class TestCuda:
    @pytest.mark.parametrize("causal", [False, True])
    @pytest.mark.parametrize("name", BAND_VARIANTS)
    def test_cuda_op_equals_the_reference(self, name, causal):
        spec = get_variant(name)
        gen = torch.Generator().manual_seed(0)
        b, h, hkv, n, d = 1, 8, 2, 3000, 64
        q, k, v = (torch.randn(b, hh, n, d, generator=gen) for hh in (h, hkv, hkv))
        kp = torch.zeros(b, n)
        kp[:, -17:] = float("-inf")
        for params in spec.test_params + ({**spec.test_params[-1], **{p: 256 for p in ("segment_size", "window",
                                                                                        "memory")
                                                                       if p in spec.param_names}},):
            args = [params[p] for p in spec.param_names]
            want = spec.torch_op(q, k, v, None, kp, *args, 0.125, causal, 0.0)  # the CPU op is tested against the spec
            got = spec.torch_op(*(t.cuda().bfloat16() for t in (q, k, v)), None, kp.cuda(), *args, 0.125, causal, 0.0)
            torch.testing.assert_close(got.float().cpu(), want, atol=3e-2, rtol=3e-2)

    def test_compiled_rewrite_on_cuda(self):
        x, pad = _inputs("cuda")
        model = Attention().eval().cuda()
        result = attnopt.rewrite(torch.export.export(model, (x, pad)), "window", window=5, sinks=1)
        gm = result.model
        with torch.no_grad():
            torch.testing.assert_close(torch.compile(gm, fullgraph=True)(x, pad), gm(x, pad), atol=1e-4, rtol=1e-4)

    @pytest.mark.parametrize("name, params", [("window", {"window": 3, "sinks": 1}), ("lsh", {"n_buckets": 2, "chunk": 4})])
    def test_scores_of_two_products_on_cuda(self, zoo, name, params):
        """LiLT's softmax reads two q·kᵀ products: the rewrite concatenates them to 6 + 12 columns of q and k and pads
        the values' 6 or 12 to 18, and the kernels on CUDA compute what the CPU ops do."""
        built = zoo.build("lilt-eager")
        runs = []
        for device in ("cpu", "cuda"):  # a copy each: the zoo's module is the session's, on the CPU
            module, inputs = copy.deepcopy(built.module).to(device), tuple(t.to(device) for t in built.inputs)
            result = attnopt.rewrite(torch.export.export(module, inputs), name, **params)
            assert [o.status for o in result.report] == ["rewritten"] * 3
            with torch.no_grad():
                out = result.model(*inputs)
            runs.append((out[0] if isinstance(out, (tuple, list)) else out).cpu())
        torch.testing.assert_close(runs[1], runs[0], atol=2e-3, rtol=2e-3)

    @pytest.mark.parametrize("name, params", [("window", {"window": 256}), ("lsh", {}), ("relbias", {"kind": "alibi"}),
                                              ("hierarchical", {})])
    def test_compiled_op_keeps_its_tma_descriptors(self, name, params, monkeypatch):
        """Inductor's code builds the kernels' TMA descriptors (kernels.triton_launch), torch's analysis of what each
        kernel writes succeeds (where it fails, Inductor copies every tensor argument first: 1 ms a relbias call at
        N = 65536), and the compiled op computes what eager does. The window stays on the band kernel here (cuDNN's
        diagonal band would serve it where installed: tests/test_cudnn_band.py)."""
        from torch._inductor.utils import run_and_get_code

        from attnopt.kernels import cudnn_band

        monkeypatch.setattr(cudnn_band, "CUDNN_BANDS", "off")

        spec = get_variant(name)
        params = {**{p.name: p.default for p in spec.params}, **params}
        args = [params[p] for p in spec.param_names]
        gen = torch.Generator(device="cuda").manual_seed(0)
        q, k, v = (torch.randn(1, 4, 2048, 128, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in "qkv")
        made = spec.tensors_for(params, tuple(q.shape), tuple(k.shape), 0)
        extra = [torch.as_tensor(made[t.name]).cuda() for t in spec.tensor_inputs]

        op = spec.torch_op  # outside the traced call: the property imports the op's module, which dynamo refuses

        def call(q, k, v):
            return op(q, k, v, None, None, *extra, *args, 128 ** -0.5, False, 0.0)

        torch._dynamo.reset()
        with torch.no_grad(), _records("torch._dynamo") as records:  # where triton_kernel_wrap logs
            got, codes = run_and_get_code(torch.compile(call, fullgraph=True), q, k, v)
            want = call(q, k, v)
        failed = [r.getMessage() for r in records if "mutated" in r.getMessage()]
        assert not failed, failed
        assert any("TensorDescriptor.from_tensor" in c for c in codes), codes
        torch.testing.assert_close(got, want, atol=0, rtol=0)


def test_every_band_variant_has_a_cuda_kernel():
    """A guard: the band variants register the Triton kernel for CUDA, not the CPU code."""
    for name in BAND_VARIANTS:
        op = get_variant(name).torch_op.default
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), "CUDA"), name
    assert {s.name for s in all_variants()} >= set(BAND_VARIANTS)
