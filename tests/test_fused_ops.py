"""Fused attention ops written directly in ONNX: ONNX Attention (opset 23) in its 3-D form
with q_num_heads/kv_num_heads, and com.microsoft.MultiHeadAttention. Detected with their
geometry, rewritten, and exact against onnxruntime's own op at the limit (S >= N)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import attnopt

B, N, H, HKV, D = 2, 12, 4, 2, 8


def _model(node, inputs, opsets):
    graph = helper.make_graph(
        [node], "fused",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in inputs],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [B, "n", H * D])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets], ir_version=10)


def _onnx_attention_3d(extra_inputs=()):
    names = ["q", "k", "v", *extra_inputs]
    node = helper.make_node("Attention", names, ["y"], q_num_heads=H, kv_num_heads=HKV)
    shapes = [("q", [B, "n", H * D]), ("k", [B, "n", HKV * D]), ("v", [B, "n", HKV * D])]
    shapes += [(name, [B, HKV, 3, D]) for name in extra_inputs if name]
    return _model(node, shapes, [("", 23)])


def _ms_mha():
    node = helper.make_node("MultiHeadAttention", ["q", "k", "v"], ["y"], domain="com.microsoft", num_heads=H)
    shapes = [(name, [B, "n", H * D]) for name in "qkv"]
    return _model(node, shapes, [("", 18), ("com.microsoft", 1)])


def _feeds(model):
    rng = np.random.default_rng(0)
    return {i.name: rng.standard_normal([d.dim_value or N for d in i.type.tensor_type.shape.dim]).astype(np.float32)
            for i in model.graph.input}


def _run(model_or_path, feeds):
    data = model_or_path.SerializeToString() if isinstance(model_or_path, onnx.ModelProto) else str(model_or_path)
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)[0]


@pytest.mark.parametrize("make, form, kv_heads", [(_onnx_attention_3d, "onnx-attention", HKV),
                                                  (_ms_mha, "ms-mha", H)])
def test_fused_3d_forms_are_detected_and_rewritten_exactly(make, form, kv_heads, tmp_path):
    model = make()
    (site,) = attnopt.detect(model)
    assert (site.form, site.query_layout, site.num_heads, site.kv_num_heads, site.head_dim) == \
        (form, "bsd", H, kv_heads, D)
    assert site.unsupported is None and site.effective_scale == pytest.approx(D ** -0.5)
    result = attnopt.rewrite(model, "segmented", segment_size=64)
    assert [o.status for o in result.report] == ["rewritten"]
    out = tmp_path / "seg.onnx"
    result.save(out)
    onnx.checker.check_model(str(out), full_check=True)
    feeds = _feeds(model)
    np.testing.assert_allclose(_run(out, feeds), _run(model, feeds), atol=1e-5)
    small = tmp_path / "small.onnx"
    attnopt.rewrite(model, "segmented", segment_size=4).save(small)
    assert np.abs(_run(small, feeds) - _run(model, feeds)).max() > 1e-3


def test_onnx_attention_with_a_kv_cache_is_detected_but_refused():
    model = _onnx_attention_3d(extra_inputs=("", "", "past_key", "past_value"))
    (site,) = attnopt.detect(model)
    assert site.form == "onnx-attention" and "KV cache" in site.unsupported
    with pytest.raises(attnopt.errors.NoSitesError, match="KV cache"):
        attnopt.rewrite(model, "segmented", segment_size=64)


# ----------------------------------------------------------------------------- onnxruntime's fused forms
# com.microsoft.Attention (the q/k/v projection fused in) and MultiHeadAttention with packed or biased
# inputs: the site carries how q, k and v are derived (site.Projection), the rewrite expands it.

E, DIN, PAD = H * D, 24, 3  # hidden size, Attention's input width (not E on purpose), padded keys of row 1
_MS = [("", 18), ("com.microsoft", 1)]
_INT = "mask"  # integer inputs are 0/1 key masks (or key counts), never random


def _graph_model(nodes, inputs, initializers=()):
    """A model of ``nodes`` with output y (B, N, E); ``inputs`` are (name, shape), int32 when named mask*."""
    graph = helper.make_graph(
        nodes, "fused",
        [helper.make_tensor_value_info(n, TensorProto.INT32 if n.startswith(_INT) else TensorProto.FLOAT, s)
         for n, s in inputs],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [B, N, E])], list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in _MS], ir_version=10)


def _mixed_feeds(model):
    rng = np.random.default_rng(1)
    feeds = {}
    for i in model.graph.input:
        shape = [d.dim_value for d in i.type.tensor_type.shape.dim]
        if not i.name.startswith(_INT):
            feeds[i.name] = rng.standard_normal(shape).astype(np.float32)
        elif len(shape) == 2:  # (B, M) 0/1, right padding in row 1 (no row is fully masked)
            feeds[i.name] = np.ones(shape, np.int32)
            feeds[i.name][1, -PAD:] = 0
        else:  # (B,) key counts
            feeds[i.name] = np.array([N, N - PAD], np.int32)
    return feeds


def _tensor(name, shape, seed):
    scale = shape[0] ** -0.5 if len(shape) == 2 else 1.0  # a weight keeps activations O(1), as trained ones do
    values = np.random.default_rng(seed).standard_normal(shape) * scale
    return onnx.numpy_helper.from_array(values.astype(np.float32), name)


def _gathered(src, slot, out):
    """x[:, :, :, slot, :] of a packed (B, N, H, n, D) tensor, as (B, N, E): the unpacked form onnxruntime's
    CPU op runs (it implements no packed input on CPU)."""
    return [helper.make_node("Gather", [src, f"slot{slot}"], [f"{out}_4d"], axis=3),
            helper.make_node("Reshape", [f"{out}_4d", "bne"], [out])]


def _slots():
    return [onnx.numpy_helper.from_array(np.array(i, np.int64), f"slot{i}") for i in range(3)] + [
        onnx.numpy_helper.from_array(np.array([B, N, E], np.int64), "bne")]


def _mha(inputs, **attrs):
    return helper.make_node("MultiHeadAttention", inputs, ["y"], domain="com.microsoft", num_heads=H, **attrs)


def _ms_form(form):
    """(model, reference): the form, and the same attention in a form onnxruntime's CPU op runs."""
    bias = _tensor("bias", [3 * E], 7)
    if form == "packed-qkv":
        model = _graph_model([_mha(["qkv"])], [("qkv", [B, N, H, 3, D])])
        ref = _graph_model([*_gathered("qkv", 0, "q"), *_gathered("qkv", 1, "k"), *_gathered("qkv", 2, "v"),
                            _mha(["q", "k", "v"])], [("qkv", [B, N, H, 3, D])], _slots())
        return model, ref
    if form == "packed-kv":
        inputs = [("q", [B, N, E]), ("kv", [B, N, H, 2, D])]
        model = _graph_model([_mha(["q", "kv"])], inputs)
        ref = _graph_model([*_gathered("kv", 0, "k"), *_gathered("kv", 1, "v"), _mha(["q", "k", "v"])], inputs,
                           _slots())
        return model, ref
    qkv = [(n, [B, N, E]) for n in "qkv"]
    if form == "bias":
        return (_graph_model([_mha(["q", "k", "v", "bias"])], qkv, [bias]),) * 2
    if form == "bias-padding-causal":
        model = _graph_model([_mha(["q", "k", "v", "bias", "mask_keys"], unidirectional=1)],
                             [*qkv, ("mask_keys", [B, N])], [bias])
        return model, model
    if form == "per-head-kv":  # key/value already (B, H, M, D)
        model = _graph_model([_mha(["q", "k", "v"])], [("q", [B, N, E]), ("k", [B, H, N, D]), ("v", [B, H, N, D])])
        return model, model
    raise ValueError(form)


def _ms_attention(mask_shape=None, sizes=True, **attrs):
    """com.microsoft.Attention over x (B, N, DIN) with packed weights (DIN, 3E) and bias (3E)."""
    inputs = [("x", [B, N, DIN])]
    names = ["x", "w", "b"]
    if mask_shape is not None:
        inputs.append(("mask_index", mask_shape))
        names.append("mask_index")
    if sizes:
        attrs["qkv_hidden_sizes"] = [E, E, E]
    node = helper.make_node("Attention", names, ["y"], domain="com.microsoft", num_heads=H, **attrs)
    return _graph_model([node], inputs, [_tensor("w", [DIN, 3 * E], 5), _tensor("b", [3 * E], 6)])


def _check_rewrites_exactly(model, reference, tmp_path):
    """Rewritten at the limit: equal to onnxruntime's own op on ``reference``; below it, not."""
    result = attnopt.rewrite(model, "segmented", segment_size=64)
    assert [o.status for o in result.report] == ["rewritten"], result.to_dict()
    out = tmp_path / "seg.onnx"
    result.save(out)
    onnx.checker.check_model(str(out), full_check=True)
    assert not any(n.domain == "com.microsoft" for n in onnx.load(str(out)).graph.node)
    feeds = _mixed_feeds(model)
    expected = _run(reference, feeds)
    np.testing.assert_allclose(_run(out, feeds), expected, rtol=1e-5, atol=1e-5)
    small = tmp_path / "small.onnx"
    attnopt.rewrite(model, "segmented", segment_size=4).save(small)
    assert np.abs(_run(small, feeds) - expected).max() > 1e-3


@pytest.mark.parametrize("form", ["packed-qkv", "packed-kv", "bias", "bias-padding-causal", "per-head-kv"])
def test_ms_mha_packed_biased_and_per_head_forms_are_rewritten_exactly(form, tmp_path):
    model, reference = _ms_form(form)
    (site,) = attnopt.detect(model)
    assert (site.form, site.num_heads, site.kv_num_heads, site.head_dim) == ("ms-mha", H, H, D)
    assert site.unsupported is None and site.is_self_attention
    assert site.causal == (form == "bias-padding-causal")
    assert (site.key_padding is not None) == (form == "bias-padding-causal")
    projected = [p is not None for p in (site.query_projection, site.key_projection, site.value_projection)]
    assert projected == {"packed-qkv": [True] * 3, "packed-kv": [False, True, True], "per-head-kv": [False] * 3
                         }.get(form, [True] * 3)
    _check_rewrites_exactly(model, reference, tmp_path)


@pytest.mark.parametrize("mask_shape, causal, sizes", [(None, 0, True), ([B, N], 0, False), ([B, N], 1, True),
                                                       ([B], 0, True)])
def test_ms_attention_with_packed_weights_is_rewritten_exactly(mask_shape, causal, sizes, tmp_path):
    """The projection is x @ W + b cut into q, k and v; mask_index as a (B, M) 0/1 mask or (B,) key counts."""
    model = _ms_attention(mask_shape, sizes, unidirectional=causal)
    (site,) = attnopt.detect(model)
    assert (site.form, site.num_heads, site.head_dim, site.causal) == ("ms-attention", H, D, bool(causal))
    assert site.unsupported is None and site.is_self_attention
    assert site.query_projection.start == 0 and site.value_projection.stop == 3 * E
    if mask_shape is not None:  # structured, with onnxruntime's fill at the masked keys
        assert site.key_padding.kind == ("nonzero-keep" if len(mask_shape) == 2 else "key-end")
        assert site.key_padding.fill == -10000.0 and not site.masks
    _check_rewrites_exactly(model, model, tmp_path)


@pytest.mark.parametrize("model, reason", [
    (lambda: _ms_attention([B, 1, N, N]), "mask_index has shape"),
    (lambda: _ms_attention([2 * B]), "mask_index has shape"),
    (lambda: _ms_attention(sizes=False, qkv_hidden_sizes=[E, E, E // 2]), "one head size"),
    (lambda: _ms_attention(do_rotary=1), "rotary"),
    (lambda: _graph_model([_mha(["qkv", "", "", "bias"])], [("qkv", [B, N, H, 3, D])], [_tensor("bias", [3 * E], 7)]),
     "projection bias to packed"),
    (lambda: _graph_model([_mha(["q", "k", "v", "", "", "", "past_k", "past_v"])],
                          [(n, [B, N, E]) for n in "qkv"] + [(n, [B, H, 2, D]) for n in ("past_k", "past_v")]),
     "KV cache"),
])
def test_ms_forms_not_served_are_refused_with_the_reason(model, reason):
    (site,) = attnopt.detect(model())
    assert site.unsupported and reason in site.unsupported, site.unsupported
    with pytest.raises(attnopt.errors.NoSitesError, match=reason):
        attnopt.rewrite(model(), "segmented", segment_size=64)
