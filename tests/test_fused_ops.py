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
