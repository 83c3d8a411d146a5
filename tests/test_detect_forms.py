"""What the matcher reads off a site beyond its count and geometry (tests/test_detect_zoo.py):
skipped anchors and their reasons, score modifiers (softcap, a bias before the scale),
KV-cache steps, and self-attention proven from the dataflow.

Zoo checks run on the matcher's own output (``attnopt.match.detect`` on the model's View),
before structured-mask refinement rewrites the mask terms.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnx import TensorProto, helper

import attnopt
from attnopt import match
from attnopt.errors import NoSitesError
from attnopt.frontends.fx import functorch_nesting
from attnopt.loaded import open_model


def _detection(model, example_inputs=None) -> match.Detection:
    return match.detect(open_model(model, example_inputs).view)


def _zoo_detection(c) -> match.Detection:
    if hasattr(c, "path"):
        return _detection(c.path)
    return _detection(c.graph, c.example_inputs)


# --------------------------------------------------------------------------- skipped anchors

B, N, H, D = 2, 6, 2, 4


def _two_attentions(middle_op: str) -> onnx.ModelProto:
    """Two attention blocks over inputs q, k, v; the second puts ``middle_op`` between scores and softmax."""
    nodes, inits = [], [helper.make_tensor("scale", TensorProto.FLOAT, [], [D ** -0.5])]
    for i, extra in enumerate((None, middle_op)):
        nodes += [helper.make_node("Transpose", ["k"], [f"kt{i}"], perm=[0, 1, 3, 2]),
                  helper.make_node("MatMul", ["q", f"kt{i}"], [f"s{i}"]),
                  helper.make_node("Mul", [f"s{i}", "scale"], [f"ss{i}"])]
        scores = f"ss{i}"
        if extra is not None:
            nodes.append(helper.make_node(extra, [scores], [f"odd{i}"]))
            scores = f"odd{i}"
        nodes += [helper.make_node("Softmax", [scores], [f"p{i}"], axis=-1),
                  helper.make_node("MatMul", [f"p{i}", "v"], [f"y{i}"])]
    nodes.append(helper.make_node("Add", ["y0", "y1"], ["y"]))
    shape = [B, H, N, D]
    graph = helper.make_graph(nodes, "two", [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in "qkv"],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def test_an_anchor_the_matcher_cannot_read_is_skipped_with_its_reason():
    found = _detection(_two_attentions("Abs"))
    assert len(found.sites) == 1
    (skipped,) = found.skipped
    assert skipped.op == "softmax" and not skipped.internal_error
    assert "between the scores and the softmax" in skipped.reason and "Abs" in skipped.reason
    assert set(skipped.summary()) == {"name", "op", "reason", "internal_error"}
    assert [s.name for s in attnopt.detect(_two_attentions("Abs"))] == [s.name for s in found.sites]


def test_a_matcher_failure_on_one_anchor_skips_it_and_keeps_the_others(monkeypatch):
    view = open_model(_two_attentions("Identity")).view
    real, calls = match._match_decomposed, []

    def fails_once(view, sm):
        calls.append(sm)
        if len(calls) == 1:
            raise ValueError("substring not found")
        return real(view, sm)

    monkeypatch.setattr(match, "_match_decomposed", fails_once)
    found = match.detect(view)
    assert len(found.sites) == 1 and len(found.skipped) == 1
    assert found.skipped[0].internal_error and "ValueError: substring not found" in found.skipped[0].reason
    assert found.skipped[0].anchor == calls[0] != found.sites[0].anchor


def test_classifier_softmax_is_skipped_as_not_attention(zoo):
    found = _detection(zoo.onnx_path("neg-classifier", "dynamo"))
    assert found.sites == [] and found.skipped and not any(s.internal_error for s in found.skipped)


# --------------------------------------------------------------------------- score modifiers

@pytest.mark.zoo(select=lambda case, how: case.family == "gemma2")
def test_gemma2_softcapping_is_reported(zoo_onnx_case):
    for site in _zoo_detection(zoo_onnx_case).sites:
        assert site.softcap == pytest.approx(50.0), zoo_onnx_case.id
        assert site.effective_scale == pytest.approx(16 ** -0.5), zoo_onnx_case.id


@pytest.mark.zoo(select=lambda case, how: case.family in ("gemma2", "gemma2-flex"))
def test_gemma2_softcapping_is_reported_fx(zoo_fx_case):
    for site in _zoo_detection(zoo_fx_case).sites:
        assert site.softcap == pytest.approx(50.0), zoo_fx_case.id


def _swinv2_sites(detection):
    """SwinV2: a per-head logit scale on every site, and the shift mask of the second block added to the
    scores viewed (images, windows, H, N, N), twice (as transformers writes it): MaskTerm.view."""
    first, second = detection.sites
    for site in (first, second):
        assert site.query_factor is not None and site.effective_scale == pytest.approx(1.0), site
    assert not any(t.view for t in first.masks)
    assert sum(t.view is not None for t in second.masks) == 2, second.masks


@pytest.mark.zoo(select=lambda case, how: case.family == "swinv2")
def test_swinv2_per_head_scale_and_windowed_shift_mask(zoo_onnx_case):
    _swinv2_sites(_zoo_detection(zoo_onnx_case))


@pytest.mark.zoo(select=lambda case, how: case.family == "swinv2")
def test_swinv2_per_head_scale_and_windowed_shift_mask_fx(zoo_fx_case):
    _swinv2_sites(_zoo_detection(zoo_fx_case))


def _alibi_factor_sites(detection):
    """Falcon eager: (s + alibi)·c + mask -> terms alibi (factor c) and mask (factor 1), scale c."""
    c = 1 / math.sqrt(8)
    for site in detection.sites:
        factors = sorted(t.factor for t in site.masks)
        assert factors == pytest.approx([c, 1.0]) and site.effective_scale == pytest.approx(c), site
        assert site.softcap is None


@pytest.mark.zoo(select=lambda case, how: case.name == "falcon-alibi-eager")
def test_falcon_bias_before_the_scale_is_a_scaled_term(zoo_onnx_case):
    _alibi_factor_sites(_zoo_detection(zoo_onnx_case))


@pytest.mark.zoo(select=lambda case, how: case.name == "falcon-alibi-eager")
def test_falcon_bias_before_the_scale_is_a_scaled_term_fx(zoo_fx_case):
    _alibi_factor_sites(_zoo_detection(zoo_fx_case))


class _Scored(nn.Module):
    """One attention whose scores pass through ``modify`` before the softmax."""

    def __init__(self, modify):
        super().__init__()
        torch.manual_seed(0)
        self.qkv = nn.Linear(H * D, 3 * H * D)
        self.modify = modify

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, H, D).permute(2, 0, 3, 1, 4)
        return torch.softmax(self.modify(q @ k.transpose(-1, -2)), -1) @ v


@pytest.mark.parametrize("modify, reason", [
    (lambda s: torch.tanh(s + 1.0), "inside the tanh softcap"),
    (lambda s: torch.zeros_like(s) - s, "negated scores"),
    (lambda s: s * s, "multiplied by a tensor"),
])
def test_score_chains_that_are_not_attention_are_skipped_with_a_reason(modify, reason):
    x = torch.randn(B, N, H * D)
    found = _detection(_Scored(modify).eval(), (x,))
    assert found.sites == [] and len(found.skipped) == 1 and reason in found.skipped[0].reason


# --------------------------------------------------------------------------- scores that add two q·kᵀ products

class _TwoProducts(nn.Module):
    """LiLT's form: the scores add a second stream's q·kᵀ (another input, another head dim, its own scale) to the
    first's, with key padding after; ``masked_part`` adds the padding inside the second product instead."""

    def __init__(self, masked_part: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.qkv, self.qk2 = nn.Linear(H * D, 3 * H * D), nn.Linear(3, 2 * H * 2)
        self.masked_part = masked_part

    def parts(self, x, y):
        """(q, k, v, q2, k2), each (B, H, N, ·)."""
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, H, D).permute(2, 0, 3, 1, 4)
        q2, k2 = self.qk2(y).view(b, n, 2, H, 2).permute(2, 0, 3, 1, 4)
        return q, k, v, q2, k2

    def forward(self, x, y, keep):
        q, k, v, q2, k2 = self.parts(x, y)
        pad = (1.0 - keep[:, None, None, :]) * -1e9
        second = q2 @ k2.transpose(-1, -2) * 0.75
        if self.masked_part:
            second = second + pad
        s = q @ k.transpose(-1, -2) / math.sqrt(D) + second
        if not self.masked_part:
            s = s + pad
        return torch.softmax(s, -1) @ v


def _two_products_inputs():
    g = torch.Generator().manual_seed(1)
    keep = torch.ones(B, N)
    keep[1, -2:] = 0.0
    return torch.randn(B, N, H * D, generator=g), torch.randn(B, N, 3, generator=g), keep


def _exported(model, inputs, how, tmp_path):
    """(what attnopt takes, its keyword arguments, validate's keyword arguments) for ONNX or torch.export."""
    if how == "fx":
        return torch.export.export(model, inputs), {}, {"example_inputs": inputs}
    path = tmp_path / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, inputs, str(path), dynamo=False, opset_version=17, input_names=["x", "y", "keep"],
                          output_names=["out"])
    return str(path), {}, {"inputs": {n: t.numpy() for n, t in zip(("x", "y", "keep"), inputs)}}


@pytest.mark.parametrize("how", ["onnx", "fx"])
def test_scores_adding_two_products_are_one_product_over_concatenated_q_and_k(how, tmp_path):
    """Σ σᵢ·qᵢ·kᵢᵀ = σ₁·[q₁, (σ₂/σ₁)·q₂]·[k₁, k₂]ᵀ: the site's head dim counts both, the rewrite at the exact
    limit equals the model, and a variant that reads q and k (lsh) runs on the concatenation."""
    inputs = _two_products_inputs()
    model, kw, vkw = _exported(_TwoProducts().eval(), inputs, how, tmp_path)
    (site,) = attnopt.detect(model, **kw)
    assert not site.unsupported and site.summary()["score_parts"] == [D, 2]
    assert (site.head_dim, site.value_head_dim, site.scale) == (D + 2, D, pytest.approx(D ** -0.5))
    (part,) = site.score_parts
    assert part.head_dim == 2 and part.scale == pytest.approx(0.75)
    assert site.key_padding is not None and not site.masks  # the padding is structured, the product is no mask
    for name, params in (("segmented", {"segment_size": 1 << 16}), ("lsh", {"n_buckets": 2, "n_rounds": 1})):
        result = attnopt.rewrite(model, name, **params, **kw)
        assert [o.status for o in result.report] == ["rewritten"]
        report = attnopt.validate(model, result.model if how == "fx" else _saved(result, tmp_path), **vkw)
        if name == "segmented":
            assert report.is_exact(1e-5), report.to_dict()
        assert all(m.comparable for m in report.outputs)


def _saved(result, tmp_path):
    out = tmp_path / "rewritten.onnx"
    result.save(out)
    return str(out)


def test_a_second_product_with_a_mask_of_its_own_is_left_dense_with_the_reason():
    inputs = _two_products_inputs()
    (site,) = attnopt.detect(torch.export.export(_TwoProducts(masked_part=True).eval(), inputs))
    assert site.unsupported.startswith("its scores add a second q·kᵀ product that is not served: that product "
                                       "carries masks"), site.unsupported


def test_the_tuner_reads_the_op_s_q_and_k_of_a_site_with_two_products():
    """The tuner's q and k (routed's k-means reads them) are the op's: their scaled product is the model's
    scores."""
    from attnopt.tune import _Evaluator

    inputs = _two_products_inputs()
    model = _TwoProducts().eval()
    program = torch.export.export(model, inputs)
    ev = _Evaluator(program, None, inputs, None, B, 0, None, read_qk=True)
    q, k, _ = ev.site_qk(0)
    with torch.no_grad():
        q1, k1, _, q2, k2 = model.parts(*inputs[:2])
        scores = q1 @ k1.transpose(-1, -2) / math.sqrt(D) + q2 @ k2.transpose(-1, -2) * 0.75
    torch.testing.assert_close(q @ k.transpose(-1, -2) * ev.loaded.sites[0].scale, scores, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- KV cache, self-attention

@pytest.mark.zoo(select=lambda case, how: case.family == "llama-decode")
def test_decode_steps_report_the_cached_length(zoo_onnx_case):
    sites = _zoo_detection(zoo_onnx_case).sites
    assert len(sites) == 2
    for site in sites:
        assert (site.q_len, site.kv_len, site.past_len) == (1, 8, 7), (zoo_onnx_case.id, site)
        assert not site.proven_self_attention and site.is_self_attention is False


@pytest.mark.zoo(select=lambda case, how: case.family == "llama-decode")
def test_decode_steps_report_the_cached_length_fx(zoo_fx_case):
    for site in _zoo_detection(zoo_fx_case).sites:
        assert (site.q_len, site.kv_len, site.past_len) == (1, 8, 7), (zoo_fx_case.id, site)


@pytest.mark.zoo(select=lambda case, how: case.name.endswith("-dynamic") and case.family in ("torch", "modernbert"))
def test_self_attention_is_proven_from_the_dataflow(zoo_onnx_case):
    for site in attnopt.detect(zoo_onnx_case.path):
        assert site.proven_self_attention and site.is_self_attention, (zoo_onnx_case.id, site)
        assert site.q_len == site.kv_len and isinstance(site.q_len, str), (zoo_onnx_case.id, site)


class _Cross(nn.Module):
    """Queries from x, keys and values from memory: never self-attention, whatever the lengths."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.q, self.kv = nn.Linear(H * D, H * D), nn.Linear(H * D, 2 * H * D)

    def forward(self, x, memory):
        b, n, _ = x.shape
        q = self.q(x).view(b, n, H, D).transpose(1, 2)
        k, v = self.kv(memory).view(b, -1, 2, H, D).permute(2, 0, 3, 1, 4)
        return torch.softmax(q @ k.transpose(-1, -2) * D ** -0.5, -1) @ v


def test_cross_attention_is_never_proven_self_attention(tmp_path):
    x, memory = torch.randn(B, N, H * D), torch.randn(B, N, H * D)
    path = tmp_path / "cross.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Cross().eval(), (x, memory), str(path), dynamo=False, opset_version=17,
                          input_names=["x", "memory"], dynamic_axes={"x": {1: "n"}, "memory": {1: "m"}})
    (site,) = attnopt.detect(path)
    assert not site.proven_self_attention and site.is_self_attention is False
    (site,) = attnopt.detect(_Cross().eval(), example_inputs=(x, memory))
    assert not site.proven_self_attention


def test_self_attention_without_shapes_is_proven():
    """q, k and v from one projection: self-attention even when no length is known."""
    gm = torch.fx.symbolic_trace(_Scored(lambda s: s * D ** -0.5).eval())
    (site,) = attnopt.detect(gm)  # no example inputs: no shapes at all
    assert site.q_len is None and site.proven_self_attention and site.is_self_attention


# --------------------------------------------------------------------------- einsum layouts

@pytest.mark.parametrize("equation", ["bhqd,bhkd->bhqk", "bhqk,bhkd->bhqd", "bind,bjnd->bnij", "bnij,bjnd->bind",
                                      "bqhd,bkhd->hbqk", "bhqk,bkhd->qbhd", "qd,kd->qk", "xbi,xjb->xji"])
def test_an_einsum_that_is_one_matmul_is_read_as_permutes_around_it(equation):
    from attnopt.graph import einsum_as_matmul

    form = einsum_as_matmul(equation)
    assert form is not None
    lhs, out = equation.split("->")
    sizes = dict(zip("bhqkdnijx", (2, 3, 4, 5, 6, 3, 4, 5, 2)))
    a, b = (torch.randn(*(sizes[c] for c in t)) for t in lhs.split(","))
    a2 = a if form.perm_a is None else a.permute(form.perm_a)
    b2 = b if form.perm_b is None else b.permute(form.perm_b)
    product = a2 @ b2
    got = product if form.perm_out is None else product.permute(form.perm_out)
    torch.testing.assert_close(got, torch.einsum(equation, a, b))


@pytest.mark.parametrize("equation", ["bhqk,bhkd->bhd", "bhqd,bhkd->bhqkd", "bhqd,bhkd,bhkd->bhqk", "bhqd,bhkf->bhqk",
                                      "...qd,...kd->...qk", "bhqq,bhqd->bhqd", "bqd,bkd->bq"])
def test_an_einsum_that_is_not_one_matmul_is_left_alone(equation):
    from attnopt.graph import einsum_as_matmul

    assert einsum_as_matmul(equation) is None


class _EinsumLayouts(nn.Module):
    """Attention over k, v held as (B, N, H, D) and q and the output as (N, B, H, D): a layout whose
    permutation is not its own inverse, unlike Funnel's."""

    def forward(self, q, k, v):
        p = torch.einsum("qbhd,bkhd->bhqk", q, k * D ** -0.5).softmax(-1)
        return torch.einsum("bhqk,bkhd->qbhd", p, v)


@pytest.mark.parametrize("how", ["onnx", "fx"])
def test_einsum_operands_and_output_in_their_own_layouts_rewrite_exactly(how, tmp_path):
    q, k, v = (torch.randn(*shape, generator=torch.Generator().manual_seed(i))
               for i, shape in enumerate([(N, B, H, D), (B, N, H, D), (B, N, H, D)]))
    model, kwargs = _EinsumLayouts().eval(), {}
    if how == "onnx":
        path = tmp_path / "einsum.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (q, k, v), str(path), dynamo=False, opset_version=17,
                              input_names=["q", "k", "v"], output_names=["y"])
        model, inputs = str(path), {"q": q.numpy(), "k": k.numpy(), "v": v.numpy()}
    else:
        model = torch.export.export(model, (q, k, v)).module()
        kwargs, inputs = {"example_inputs": (q, k, v)}, (q, k, v)
    (site,) = attnopt.detect(model, **kwargs)
    assert (site.query_layout, site.key_layout, site.value_layout, site.output_layout) == ("sbhd", "bshd", "bshd", "sbhd")
    assert site.scale == pytest.approx(D ** -0.5) and (site.num_heads, site.head_dim, site.q_len) == (H, D, N)
    result = attnopt.rewrite(model, "segmented", segment_size=1 << 16, **kwargs)
    report = attnopt.validate(model, result.model, **({"inputs": inputs} if how == "onnx" else {"example_inputs": inputs}))
    assert report.is_exact(1e-5), report.to_dict()


def test_kv_heads_a_reshape_infers_from_its_size_are_known(zoo):
    """TorchScript writes JetMoE's key heads as a -1 in a Reshape whose other sizes come from Shape; ONNX's
    inference leaves that axis unknown, onnxruntime's symbolic inference solves it."""
    sites = attnopt.detect(zoo.onnx_path("jetmoe-eager", "torchscript"))
    assert [(s.num_heads, s.kv_num_heads) for s in sites] == [(16, 16)] * 2


def test_shape_inference_writes_nothing_where_it_runs(zoo, tmp_path, monkeypatch):
    """onnxruntime's symbolic inference, left to itself, saves the model and its weights in the working
    directory whenever a shape stays unknown (Swin's TorchScript export has such shapes)."""
    path = zoo.onnx_path("swin-eager", "torchscript")
    monkeypatch.chdir(tmp_path)
    assert attnopt.detect(path)
    assert list(tmp_path.iterdir()) == []


def test_learned_sink_logits_are_found_as_one_logit_a_head(zoo):
    """GPT-OSS: [scores, sink] − max, softmax, the sink's column dropped. Found, the sink value being the
    (1, H, 1, 1) logits behind the expand; a variant that does not take them refuses the site with the reason
    (tests/test_sink_logits.py rewrites it)."""
    for exporter in ("dynamo", "torchscript"):
        path = zoo.onnx_path("hand-sink-logits", exporter)
        (site,) = attnopt.detect(path)
        assert site.unsupported is None and site.sink_logits is not None
        assert site.summary()["sink_logits"] is True
        with pytest.raises(NoSitesError, match="sink logits.*lowrank does not take them"):
            attnopt.rewrite(path, "lowrank")


class _SharedKeysOverUnits(nn.Module):
    """Attention over (B, H, units, N, D) whose keys and values have one head broadcast to the four query heads:
    folding the units into the heads would pair query and key heads across units, so it stays dense."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.q, self.kv = nn.Linear(32, 32), nn.Linear(32, 16)

    def forward(self, x):
        b, n, _ = x.shape
        q = self.q(x).view(b, 2, n // 2, 4, 8).permute(0, 3, 1, 2, 4)  # (B, 4, 2, N/2, 8)
        k, v = self.kv(x).view(b, 2, n // 2, 2, 1, 8).permute(3, 0, 4, 1, 2, 5)  # (B, 1, 2, N/2, 8) each
        s = q @ k.transpose(-1, -2) * 8 ** -0.5
        return (s.softmax(-1) @ v).permute(0, 2, 3, 1, 4).reshape(b, n, 32)


def test_grouped_query_heads_over_extra_axes_stay_dense(tmp_path):
    x = torch.randn(2, 10, 32)
    path = tmp_path / "units.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_SharedKeysOverUnits().eval(), (x,), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"])
    for model in (str(path), torch.export.export(_SharedKeysOverUnits().eval(), (x,))):
        (site,) = attnopt.detect(model)
        assert (site.query_layout, site.num_heads, site.kv_num_heads) == ("bhxsd", 4, 1)
        assert "grouped-query attention (4 query heads, 1 key heads) over extra batching axes" in site.unsupported
        with pytest.raises(NoSitesError, match="over extra batching axes"):
            attnopt.rewrite(model, "segmented", segment_size=4)


class _BlendedMask(nn.Module):
    """masked_fill written as a blend, ``s * b + fill * (1 - b)`` (GPT-1's causal mask), with b a 0/1 buffer that
    keeps an arbitrary pattern; ``b`` with another value in it (0.5) scales scores instead: no mask, no site."""

    def __init__(self, keep_value: float = 1.0):
        super().__init__()
        torch.manual_seed(0)
        self.qkv = nn.Linear(16, 48)
        keep = (torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(3)) > 0.4).float()
        keep[..., 0] = 1.0  # every row keeps a key
        self.register_buffer("b", keep * keep_value)

    def forward(self, x):
        n = x.shape[1]
        q, k, v = (t.view(x.shape[0], n, 2, 8).transpose(1, 2) for t in self.qkv(x).chunk(3, -1))
        b = self.b[:, :, :n, :n]
        s = q @ k.transpose(-1, -2) / 8 ** 0.5 * b + -1e9 * (1 - b)
        return (s.softmax(-1) @ v).transpose(1, 2).reshape(x.shape[0], n, 16)


def test_a_blended_mask_is_a_masked_fill(tmp_path):
    """Folded by the exporter (TorchScript: a constant product and term) and written out (torch.export with a
    dynamic length: b is a slice of the buffer, the term c·(1 − b) of the same b): both read as b's nonzero
    entries kept, the rest filled with -1e9, and the rewrite at the limit is exact."""
    x = torch.randn(2, 6, 16)
    model = _BlendedMask().eval()
    path = tmp_path / "blend.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17, input_names=["x"],
                          output_names=["y"])
    program = torch.export.export(model, (x,), dynamic_shapes=({1: torch.export.Dim("n", min=2, max=7)},))
    for m in (str(path), program):
        (site,) = attnopt.detect(m)
        assert not site.unsupported and not site.causal
        (term,) = site.masks
        assert (term.kind, term.fill) == ("nonzero-keep", -1e9)
        result = attnopt.rewrite(m, "segmented", segment_size=1 << 16)
        kw = {"inputs": {"x": x.numpy()}} if isinstance(m, str) else {"example_inputs": (x,)}
        out = tmp_path / "blend.seg.onnx"
        if isinstance(m, str):
            result.save(out)
        assert attnopt.validate(m, out if isinstance(m, str) else result.model, **kw).is_exact(1e-5)
    # a factor that is not 0 or 1 scales the scores: no site
    half = torch.export.export(_BlendedMask(keep_value=0.5).eval(), (x,))
    assert not attnopt.detect(half)


# mask_mods by name, and what each reads as: causal or not, a causal window of W keys, or None: one dense term
_FLEX_MASKS = {
    "causal": (lambda b, h, qi, ki: ki <= qi, True),
    "open": (lambda b, h, qi, ki: qi >= 0, False),
    "window": (lambda b, h, qi, ki: (ki <= qi) & (qi - ki < 4), 4),
    # causal at every length below 41: only a run one past its constant shows the window
    "wide window": (lambda b, h, qi, ki: (ki <= qi) & (qi - ki < 40), 40),
    "per head": (lambda b, h, qi, ki: (ki <= qi) | (h == 1), None),
    "documents": (None, None),  # built in forward: a tensor of document ids, which the mask_mod reads
}


_SCORE_MODS = {
    "softcap": lambda s, b, h, qi, ki: 2.0 * torch.tanh(s / 2.0),  # Gemma 2's, as transformers writes it
    "bias": lambda s, b, h, qi, ki: s + 0.1 * (ki - qi),  # a relative bias: not read
}


class _FlexAndSdpa(nn.Module):
    """Two attention layers: torch's FlexAttention (a block mask from one of ``_FLEX_MASKS``; a score_mod from
    ``_SCORE_MODS``; its log-sum-exp added to the output where ``lse``) and plain SDPA. transformers'
    ``attn_implementation="flex_attention"`` exports to the same higher-order op."""

    def __init__(self, score: str | None = None, mask: str = "causal", lse: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.qkv1, self.qkv2, self.score, self.mask, self.lse = nn.Linear(16, 48), nn.Linear(16, 48), score, mask, \
            lse

    def forward(self, x):
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        b, n, _ = x.shape
        q, k, v = (t.view(b, n, 2, 8).transpose(1, 2) for t in self.qkv1(x).chunk(3, -1))
        mask_mod = _FLEX_MASKS[self.mask][0]
        if mask_mod is None:
            doc = torch.arange(n) // 8
            mask_mod = lambda b_, h, qi, ki: doc[qi] == doc[ki]  # noqa: E731
        mask = create_block_mask(mask_mod, None, None, n, n, device="cpu")
        y = flex_attention(q, k, v, score_mod=_SCORE_MODS.get(self.score), block_mask=mask, return_lse=self.lse)
        if self.lse:
            y = y[0] + y[1][..., None]
        x = x + y.transpose(1, 2).reshape(b, n, 16)
        q, k, v = (t.view(b, n, 2, 8).transpose(1, 2) for t in self.qkv2(x).chunk(3, -1))
        return x + F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, n, 16)


def _export_flex(model: nn.Module, inputs):
    with warnings.catch_warnings(), torch.no_grad():  # FlexAttention on the CPU refuses inputs needing grads
        warnings.simplefilter("ignore")  # torch: "torch.compile is ignored when called inside torch.export"
        return torch.export.export(model, inputs if isinstance(inputs, tuple) else (inputs,))


@pytest.mark.parametrize("mask, score", [("causal", None), ("open", None), ("causal", "softcap")])
def test_a_flex_attention_whose_mask_mod_is_causal_or_open_is_rewritten(mask, score):
    """FlexAttention's mask_mod is run over index grids (every batch row and head, a few lengths): causal and open
    ones are read, and so is a score_mod that is c·tanh(s/c) of the score alone (run over scores); the site is
    rewritten like SDPA, exact at the variant's limit, and no flex call is left."""
    x = torch.randn(2, 32, 16)
    exported = _export_flex(_FlexAndSdpa(score, mask=mask).eval(), x)
    flex, sdpa = attnopt.detect(exported)
    assert flex.form == "flex_attention" and (flex.num_heads, flex.head_dim) == (2, 8)
    assert flex.unsupported is None and flex.causal == _FLEX_MASKS[mask][1] and flex.masks == ()
    assert flex.softcap == (2.0 if score else None)
    assert sdpa.form == "sdpa" and sdpa.unsupported is None and sdpa.causal
    result = attnopt.rewrite(exported, "segmented", segment_size=64)
    assert len(result.rewritten) == 2
    assert not any("flex_attention" in str(n.target) for n in result.model.graph.nodes)
    report = attnopt.validate(exported, result.model, inputs=(x,))
    assert report.is_exact(1e-5), report.worst_rel_l2
    # below the limit the rewritten flex site changes the output: the op runs in its place
    short = attnopt.rewrite(exported, "segmented", segment_size=8)
    assert not attnopt.validate(exported, short.model, inputs=(x,)).is_exact(1e-3)


@pytest.mark.parametrize("mask", ["window", "wide window"])
def test_a_flex_attention_window_is_read_and_served_exactly_by_the_window_pass(mask):
    """A causal sliding window in a mask_mod is read by mask_analysis, which runs the mask_mod on its probe inputs
    (one past its constant: the wide window is causal at every shorter length). The window pass at that W is exact
    on the flex site; a segment that reaches past the window reads the mask whole, which the rewritten model
    computes by running the mask_mod."""
    x, w = torch.randn(2, 48, 16), _FLEX_MASKS[mask][1]
    exported = _export_flex(_FlexAndSdpa(mask=mask).eval(), x)
    flex, _ = attnopt.detect(exported)
    assert flex.unsupported is None and not flex.causal and [t.window for t in flex.masks] == [w]
    result = attnopt.rewrite(exported, "window", window=w, layers="0")
    assert [o.status for o in result.report] == ["rewritten", "skipped"]
    assert attnopt.validate(exported, result.model, inputs=(x,)).is_exact(1e-5)
    result = attnopt.rewrite(exported, "segmented", segment_size=64)
    assert [o.status for o in result.report] == ["rewritten", "rewritten"]
    assert attnopt.validate(exported, result.model, inputs=(x,)).is_exact(1e-5)


class _FlexPadded(nn.Module):
    """FlexAttention whose mask_mod reads a key-padding input: causal, and key j of row b kept where keep[b, j]."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.qkv = nn.Linear(16, 48)

    def forward(self, x, keep):
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        b, n, _ = x.shape
        q, k, v = (t.view(b, n, 2, 8).transpose(1, 2) for t in self.qkv(x).chunk(3, -1))
        mask = create_block_mask(lambda b_, h, qi, ki: (ki <= qi) & keep[b_, ki], b, None, n, n, device="cpu")
        return flex_attention(q, k, v, block_mask=mask).transpose(1, 2).reshape(b, n, 16)


def test_a_flex_attention_mask_mod_reading_a_padding_input_is_causal_with_key_padding():
    """A mask_mod that reads a tensor is run on the probe's inputs with that tensor: here it reads the model's
    keep mask, and mask_analysis finds causality and key padding by that input, as in an SDPA decoder."""
    x, keep = torch.randn(2, 32, 16), torch.ones(2, 32, dtype=torch.bool)
    keep[1, 20:] = False
    exported = _export_flex(_FlexPadded().eval(), (x, keep))
    (site,) = attnopt.detect(exported)
    assert site.unsupported is None and site.causal and site.masks == ()
    assert site.key_padding is not None and site.key_padding.value.node == "keep"
    result = attnopt.rewrite(exported, "segmented", segment_size=64)
    assert [o.status for o in result.report] == ["rewritten"]
    assert attnopt.validate(exported, result.model, inputs=(x, keep)).is_exact(1e-5)


@pytest.mark.parametrize("mask", ["per head", "documents"])
def test_a_flex_attention_mask_with_no_structure_is_computed_whole_by_the_rewritten_model(mask):
    """A mask_mod that reads as none of causal, a window or key padding (per head; document ids it reads from a
    tensor, run on the probe's inputs) stays one dense term: the rewritten model runs the mask_mod for it, and is
    exact at the limit, with no flex call left."""
    x = torch.randn(2, 48, 16)
    exported = _export_flex(_FlexAndSdpa(mask=mask).eval(), x)
    flex, _ = attnopt.detect(exported)
    assert flex.unsupported is None and not flex.causal and [t.window for t in flex.masks] == [0]
    result = attnopt.rewrite(exported, "segmented", segment_size=64)
    assert [o.status for o in result.report] == ["rewritten", "rewritten"]
    assert not any("flex_attention" in str(n.target) for n in result.model.graph.nodes)
    assert attnopt.validate(exported, result.model, inputs=(x,)).is_exact(1e-5)


@pytest.mark.parametrize("mask", ["causal", "per head"])
def test_a_rewritten_flex_attention_model_keeps_no_block_mask_and_exports_to_onnx(mask, tmp_path):
    """Once its flex call is rewritten, nothing of the block mask is left: its construction (vmap brackets, the
    index_put_ into a fresh table whose only other reader feeds that write) is dead code, which the rewrite drops.
    So the model exports to ONNX, and onnxruntime agrees with torch; a materialised mask (its mask_mod's ops
    copied into the rewritten graph) exports with it."""
    import onnxruntime

    x = torch.randn(2, 48, 16)
    exported = _export_flex(_FlexAndSdpa(mask=mask).eval(), x)
    result = attnopt.rewrite(exported, "segmented", segment_size=8)
    assert not any(functorch_nesting(n) or "index_put" in str(n.target) for n in result.model.graph.nodes)
    path = attnopt.export_onnx(result.model, (x,), tmp_path / "flex.onnx", input_names=["x"])
    got = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        want = result.model(x)
    np.testing.assert_allclose(got, (want[0] if isinstance(want, (tuple, list)) else want).numpy(), atol=1e-5)


@pytest.mark.parametrize("case", ["bias", "lse"])
def test_a_flex_attention_attnopt_cannot_read_is_left_as_it_is(case):
    """A score_mod other than a softcap (a relative bias) or a read log-sum-exp leaves the site dense from
    detection on, with the reason; the SDPA beside it is rewritten, and the model stays exact."""
    x = torch.randn(2, 48, 16)
    exported = _export_flex(_FlexAndSdpa(**({"lse": True} if case == "lse" else {"score": case})).eval(), x)
    flex, sdpa = attnopt.detect(exported)
    reason = {"bias": "reads no score_mod but tanh softcapping", "lse": "its log-sum-exp is read"}[case]
    assert flex.form == "flex_attention" and sdpa.unsupported is None
    assert flex.unsupported.startswith("FlexAttention: ") and reason in flex.unsupported, flex.unsupported
    result = attnopt.rewrite(exported, "segmented", segment_size=64)
    assert [o.status for o in result.report][1] == "rewritten"
    assert attnopt.validate(exported, result.model, inputs=(x,)).is_exact(1e-5)


class _VmapMask(nn.Module):
    """SDPA under a causal mask built with ``torch.vmap``: export records the vmap as functorch calls with no
    users (``_vmap_increment_nesting`` ... ``_vmap_decrement_nesting``) around the vmapped ops."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.qkv = nn.Linear(16, 48)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = (t.view(b, n, 2, 8).transpose(1, 2) for t in self.qkv(x).chunk(3, -1))
        pos = torch.arange(n)
        mask = torch.vmap(lambda i: pos <= i)(pos)  # (n, n), a row at a time
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(b, n, 16)


def test_a_mask_built_with_vmap_is_read_and_its_rewrite_runs():
    """The mask analysis evaluates the vmapped ops with their nesting calls (so the mask reads as causal, not as
    an N×N remainder), and the rewrite keeps those calls (dead-code elimination would drop them: fx does not
    count them as side effects, and the ops between them then fail)."""
    x = torch.randn(2, 32, 16)
    with torch.no_grad():
        exported = torch.export.export(_VmapMask().eval(), (x,))
    (site,) = attnopt.detect(exported)
    assert site.causal and site.masks == () and site.unsupported is None
    result = attnopt.rewrite(exported, "segmented", segment_size=64)
    assert len(result.rewritten) == 1
    assert attnopt.validate(exported, result.model, inputs=(x,)).is_exact(1e-5)


class _SdpaForms(nn.Module):
    """SDPA, causal or under a (B, 1, 1, M) key-padding mask, boolean or additive, with GQA's kv heads."""

    def __init__(self, causal: bool, mask: str | None):
        super().__init__()
        torch.manual_seed(0)
        self.q, self.kv, self.causal, self.mask = nn.Linear(16, 32), nn.Linear(16, 16), causal, mask

    def forward(self, x, keep):
        b, n, _ = x.shape
        q = self.q(x).view(b, n, 4, 8).transpose(1, 2)
        k, v = (t.view(b, n, 1, 8).transpose(1, 2) for t in self.kv(x).chunk(2, -1))
        mask = None
        if self.mask == "bool":
            mask = keep[:, None, None, :]
        elif self.mask == "additive":
            mask = torch.zeros(keep.shape).masked_fill(~keep, float("-inf"))[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=self.causal, enable_gqa=True)
        return out.transpose(1, 2).reshape(b, n, 32)


@pytest.mark.parametrize("dynamic", [False, True])
@pytest.mark.parametrize("causal, mask", [(True, None), (False, "bool"), (False, "additive"), (False, None)])
def test_sdpa_decomposed_by_run_decompositions_is_found(causal, mask, dynamic):
    """``ExportedProgram.run_decompositions()`` writes SDPA out as matmuls around torch's safe softmax, which
    zeroes the rows whose scores are all −inf: where(not(any(not(s == −inf))), 0, softmax(s)). Those rows have
    no allowed key, so the ops' answer (0) is the same; the site reads as the SDPA it was (its kv heads too:
    kᵀ unflattens from bmm's 3-D operand also where the length is symbolic), and rewrites exactly, a batch row
    with every key padded included."""
    x, keep = torch.randn(2, 32, 16), torch.ones(2, 32, dtype=torch.bool)
    keep[0, 20:] = False
    if mask is not None:
        keep[1] = False  # every key padded: the safe softmax's zero rows
    module = _SdpaForms(causal, mask).eval()
    dims = ({1: torch.export.Dim.AUTO}, {1: torch.export.Dim.AUTO}) if dynamic else None
    exported = torch.export.export(module, (x, keep), dynamic_shapes=dims).run_decompositions()
    assert dynamic == any(isinstance(d, torch.SymInt) for d in exported.graph_module.graph.find_nodes(
        op="placeholder")[-1].meta["val"].shape)
    assert not any("scaled_dot_product" in str(n.target) for n in exported.graph.nodes)
    (site,) = attnopt.detect(exported)
    assert site.form == "decomposed" and site.unsupported is None and site.causal == causal
    assert (site.num_heads, site.kv_num_heads) == (4, 1)
    assert (site.key_padding is not None) == (mask is not None) and site.masks == ()
    result = attnopt.rewrite(exported, "segmented", segment_size=64)
    assert len(result.rewritten) == 1
    assert attnopt.validate(exported, result.model, inputs=(x, keep)).is_exact(1e-5)


class _MixedRepeats(nn.Module):
    """Grouped-query attention whose keys are repeated by repeat_interleave and values by expand + reshape:
    the matcher reads the second as a GQA repeat and not the first."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.q, self.kv = nn.Linear(16, 32), nn.Linear(16, 16)

    def forward(self, x):
        b, n, _ = x.shape
        q = self.q(x).view(b, n, 4, 8).transpose(1, 2)
        k, v = (t.view(b, n, 1, 8).transpose(1, 2) for t in self.kv(x).chunk(2, -1))
        k = k.repeat_interleave(4, dim=1)
        v = v[:, :, None].expand(b, 1, 4, n, 8).reshape(b, 4, n, 8)
        p = (q @ k.transpose(-1, -2) / 8 ** 0.5).softmax(-1)
        return (p @ v).transpose(1, 2).reshape(b, n, 32)


def test_keys_and_values_keep_one_head_count_when_one_repeat_is_unread():
    """Where only one of k and v is read back to its kv heads, both are taken as repeated: the rewritten op gets
    k and v with the same heads (it refuses others), and the result is exact."""
    x = torch.randn(2, 24, 16)
    exported = torch.export.export(_MixedRepeats().eval(), (x,))
    (site,) = attnopt.detect(exported)
    assert (site.num_heads, site.kv_num_heads) == (4, 4) and site.unsupported is None
    result = attnopt.rewrite(exported, "segmented", segment_size=64)
    assert attnopt.validate(exported, result.model, inputs=(x,)).is_exact(1e-5)


class _CausalPadded(_SdpaForms):
    """A decoder's mask built at run time: causal and key padding in one boolean N×N term."""

    def __init__(self):
        super().__init__(False, "built")

    def forward(self, x, keep):
        b, n, _ = x.shape
        q = self.q(x).view(b, n, 4, 8).transpose(1, 2)
        k, v = (t.view(b, n, 1, 8).transpose(1, 2) for t in self.kv(x).chunk(2, -1))
        mask = torch.ones(n, n, dtype=torch.bool).tril()[None, None] & keep[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        return out.transpose(1, 2).reshape(b, n, 32)


def test_detect_and_rewrite_leave_the_users_exported_program_symbolic():
    """The lifter reads dims without guarding on them: ``int()`` of a SymInt guards it, and the guard specialised
    the shape environment the user's ExportedProgram shares. Its placeholders then read as the example's sizes,
    and a later ``run_decompositions()`` of it was static (its causal mask then read as a dense N×N term)."""
    x, keep = torch.randn(2, 32, 16), torch.ones(2, 32, dtype=torch.bool)
    keep[0, 20:] = False
    dims = ({1: torch.export.Dim.AUTO}, {1: torch.export.Dim.AUTO})
    exported = torch.export.export(_CausalPadded().eval(), (x, keep), dynamic_shapes=dims)

    def shapes(program):
        return [str(tuple(n.meta["val"].shape)) for n in program.graph.find_nodes(op="placeholder")[-2:]]

    before = shapes(exported)
    assert all("s" in s for s in before)  # symbolic to start with
    (site,) = attnopt.detect(exported)
    result = attnopt.rewrite(exported, "segmented", segment_size=64)
    attnopt.validate(exported, result.model, inputs=(x, keep))
    assert shapes(exported) == before
    (decomposed_site,) = attnopt.detect(exported.run_decompositions())
    assert decomposed_site.causal and decomposed_site.masks == () and isinstance(decomposed_site.q_len, str)
    # the program and its rewrite still take another length, and agree there
    x2, keep2 = torch.randn(2, 40, 16), torch.ones(2, 40, dtype=torch.bool)
    keep2[1, 33:] = False
    expected = exported.module()(x2, keep2)
    torch.testing.assert_close(result.model(x2, keep2), expected, rtol=1e-5, atol=1e-5)
