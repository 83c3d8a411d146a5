"""window and memory on the test zoo: exact at their limits through ONNX and fx, and restricting below them.

Three families (an encoder with padding, a decoder with its run-time causal mask, a GQA decoder), two whose
values have another head dim than q and k (DeepSeek's MLA, narrower; LeViT-style, wider: the rewrites pad),
one batched over mask units as Hiera is (the rewrites fold the units into the heads), one with GPT-OSS's
learned sink logits (the ops take them), LiLT, whose scores add two q·kᵀ products (the rewrites concatenate
q and k), and an encoder-decoder whose cross-attention must be refused with the reason.
"""

from __future__ import annotations

import onnx
import onnxruntime as ort
import pytest
import torch

import attnopt
from attnopt.errors import NoSitesError

FAMILIES = ("bert-eager", "gpt2-sdpa", "llama-gqa-sdpa", "deepseek-mla-sdpa", "hand-wide-values", "hand-mask-units",
            "hand-sink-logits", "lilt-eager")
BIG = 1 << 16  # >= any zoo length
EXACT = {"window": {"window": BIG, "sinks": 2}, "memory": {"segment_size": BIG, "memory": BIG, "sinks": 2}}
BELOW = {"window": {"window": 3, "sinks": 1}, "memory": {"segment_size": 3, "memory": 2, "sinks": 1}}


def _onnx_inputs(case, path):
    names = [i.name for i in onnx.load(str(path), load_external_data=False).graph.input]
    return {name: t.numpy() for name, t in zip(names, case.factory().inputs)}


@pytest.mark.parametrize("variant", sorted(EXACT))
@pytest.mark.zoo(select=lambda case, how: case.name in FAMILIES and how in ("dynamo", "torchscript"))
def test_onnx_exact_at_the_limit_and_restricting_below(zoo_onnx_case, variant, tmp_path):
    case, path = zoo_onnx_case.case, zoo_onnx_case.path
    inputs = _onnx_inputs(case, path)
    for params, exact in ((EXACT[variant], True), (BELOW[variant], False)):
        result = attnopt.rewrite(path, variant, **params)
        assert len(result.rewritten) == case.expected_sites, result.to_dict()
        out = tmp_path / f"{variant}.onnx"
        result.save(out)
        report = attnopt.validate(path, out, inputs=inputs)
        assert report.is_exact(1e-5) == exact, report.to_dict()


@pytest.mark.parametrize("variant", sorted(EXACT))
@pytest.mark.zoo(select=lambda case, how: case.name in FAMILIES and how == "export")
def test_fx_exact_at_the_limit_and_equal_to_onnx_below(zoo_fx_case, zoo, variant, tmp_path):
    case = zoo_fx_case.case
    result = attnopt.rewrite(zoo_fx_case.graph, variant, example_inputs=zoo_fx_case.example_inputs, **EXACT[variant])
    assert attnopt.validate(zoo_fx_case.graph, result.model, example_inputs=zoo_fx_case.inputs).is_exact(1e-5)
    # Below the limit both frontends lower the same plan to the same numbers.
    below = attnopt.rewrite(zoo_fx_case.graph, variant, example_inputs=zoo_fx_case.example_inputs, **BELOW[variant])
    with torch.no_grad():
        got_fx = below.model(*zoo_fx_case.inputs)
    got_fx = got_fx[0] if isinstance(got_fx, (tuple, list)) else got_fx
    path = zoo.onnx_path(case.name, "dynamo")
    attnopt.rewrite(path, variant, **BELOW[variant]).save(tmp_path / "below.onnx")
    (got_onnx, *_) = ort.InferenceSession(str(tmp_path / "below.onnx")).run(None, _onnx_inputs(case, path))
    torch.testing.assert_close(torch.from_numpy(got_onnx), got_fx, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("variant", sorted(EXACT))
def test_cross_attention_is_refused_with_the_reason(zoo, variant):
    """BART's decoder attends to the encoder: those sites stay dense, and the report says why."""
    result = attnopt.rewrite(zoo.onnx_path("bart-eager", "dynamo"), variant, **EXACT[variant])
    refused = [o for o in result.report if o.status == "refused"]
    assert len(refused) == 2 and all(o.reason.startswith("cross-attention (N=") and
                                     o.reason.endswith(f"{variant} needs self-attention") for o in refused), refused
    with pytest.raises(NoSitesError, match="cross-attention"):
        attnopt.rewrite(zoo.onnx_path("bart-eager", "dynamo"), variant, names="*.encoder_attn",
                        **EXACT[variant])
