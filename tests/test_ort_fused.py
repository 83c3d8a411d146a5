"""Models that onnxruntime's tools already fused, and what onnxruntime does to the rewrite at load.

BERT and ViT built as the zoo builds them, after an optimizer that writes com.microsoft.Attention
(the q/k/v projection packed into one (E, 3E) weight and a (3E) bias):

- onnxruntime's own ``onnxruntime.transformers.optimizer.optimize_model``. On current exports
  (transformers 5, torch 2.13) it fuses attention only in BERT eager exported by TorchScript with a
  dynamic batch and sequence: static TorchScript BERT fails its mask-path match, and it fuses
  nothing (at opt_level 0, 1, 2 or 99) in the sdpa forms, in the dynamo exports, or in ViT, whose
  scores are scaled by a Mul and take no mask, a form none of its q·k patterns has. Both of its mask
  formats are tested: (B,) key counts (its BERT default) and the (B, M) 0/1 mask.
- onnxscript's ``optimize_for_ort`` on the dynamo export, which fuses BERT and ViT in both attention
  implementations (the zoo's "dynamo-ortfused" exporter).

Each is rewritten with segmented at the exact limit, exact per output and per site, and below it
equal, site by site, to the segmented reference computed on the same projections.
"""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import attnopt
from attnopt.kernels.segmented.reference import reference as segmented_reference

import zoo as zoo_lib

BIG = 1 << 16  # >= every sequence here: segmented's exact limit
SMALL = 4  # a segment shorter than every sequence here
HEADS, HIDDEN = 2, 32  # the zoo's BERT and ViT


def _ms_ops(path) -> collections.Counter:
    return collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node if n.domain == "com.microsoft")


@pytest.fixture(scope="module")
def ort_optimized_bert(tmp_path_factory):
    """The zoo's BERT (eager, dynamic batch and sequence) exported by TorchScript and fused by
    onnxruntime's optimizer: {mask format: path}, with the inputs it was exported with."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    built = zoo_lib.bert("eager", dynamic=True)
    d = tmp_path_factory.mktemp("ort_optimized")
    exported = d / "bert.onnx"
    with zoo_lib.quiet():
        torch.onnx.export(built.module.eval(), built.inputs, str(exported), dynamo=False,
                          opset_version=zoo_lib.TORCHSCRIPT_OPSET, input_names=list(built.input_names),
                          output_names=list(built.output_names), dynamic_axes=dict(built.dynamic_axes))
    paths = {}
    for mask_format, raw in (("key counts", False), ("0/1 mask", True)):
        options = FusionOptions("bert")
        options.use_raw_attention_mask(raw)
        with zoo_lib.quiet():
            fused = optimize_model(str(exported), model_type="bert", num_heads=HEADS, hidden_size=HIDDEN,
                                   optimization_options=options)
        paths[mask_format] = d / f"bert-{'raw' if raw else 'counts'}.onnx"
        fused.save_model_to_file(str(paths[mask_format]))
    feeds = {n: t.numpy() for n, t in zip(built.input_names, built.inputs)}
    return paths, feeds


@pytest.mark.parametrize("mask_format, kind", [("key counts", "key-end"), ("0/1 mask", "nonzero-keep")])
def test_bert_fused_by_onnxruntime_is_rewritten_exactly(ort_optimized_bert, mask_format, kind, tmp_path):
    paths, feeds = ort_optimized_bert
    path = paths[mask_format]
    assert _ms_ops(path)["Attention"] == 2, "onnxruntime's optimizer no longer fuses this export"
    sites = attnopt.detect(path)
    assert [s.form for s in sites] == ["ms-attention"] * 2
    for s in sites:
        assert (s.num_heads, s.head_dim, s.unsupported, s.is_self_attention) == (HEADS, HIDDEN // HEADS, None, True)
        assert s.key_padding is not None and s.key_padding.kind == kind and not s.masks
    _check_exact_and_reference(path, feeds, tmp_path)


@pytest.mark.zoo(select=lambda case, how: how == zoo_lib.ORT_FUSED)
def test_onnxscript_fused_models_match_the_reference(zoo_onnx_case, tmp_path):
    """BERT and ViT through onnxscript's ort fusions: every site com.microsoft.Attention, rewritten."""
    case = zoo_onnx_case.case
    path = zoo_onnx_case.path
    assert _ms_ops(path)["Attention"] == case.expected_sites
    assert [s.form for s in attnopt.detect(path)] == ["ms-attention"] * case.expected_sites
    built = case.factory()
    names = [i.name for i in onnx.load(str(path), load_external_data=False).graph.input]
    _check_exact_and_reference(path, {n: t.numpy() for n, t in zip(names, built.inputs)}, tmp_path)


def _check_exact_and_reference(path, feeds, tmp_path):
    """At the limit: exact per output and per site. Below it: each site equals segmented's reference on
    the site's own q, k and v (the fused projection of the Attention input) and its masks."""
    exact = tmp_path / "exact.onnx"
    result = attnopt.rewrite(path, "segmented", segment_size=BIG)
    assert [o.status for o in result.report] == ["rewritten"] * len(result.report), result.to_dict()
    result.save(exact)
    assert not _ms_ops(exact)["Attention"]
    report = attnopt.validate(path, exact, inputs=feeds)
    assert report.outputs and report.sites and all(m.comparable for m in report.outputs + report.sites)
    assert report.is_exact(1e-5), report.to_dict()

    small = tmp_path / "small.onnx"
    attnopt.rewrite(path, "segmented", segment_size=SMALL, sinks=0).save(small)
    model = onnx.load(str(path))  # the fused nodes, to read their inputs and attributes
    attention = [n for n in model.graph.node if n.domain == "com.microsoft" and n.op_type == "Attention"]
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    # The nodes' masks (mask_index, attention_bias) from the original, which computes them; their
    # inputs and outputs from the rewritten model, where a later site's input follows the earlier rewrites.
    masks = {n.input[p] for n in attention for p in (3, 5) if len(n.input) > p and n.input[p]} - set(inits)
    values = {**inits, **_run_exposing(path, feeds, masks),
              **_run_exposing(small, feeds, {n.input[0] for n in attention} | {n.output[0] for n in attention})}
    # Padding queries are left out: where a whole segment is padding, the result depends on the fill a
    # key padding is read with (the model's finite fill, or -inf where the mask analysis recognised it).
    real = feeds["attention_mask"] != 0 if "attention_mask" in feeds else slice(None)
    for node in attention:
        expected = _reference_site(node, values, SMALL)
        np.testing.assert_allclose(values[node.output[0]][real], expected[real], rtol=1e-5, atol=1e-5,
                                   err_msg=node.name)
        dense = _reference_site(node, values, BIG)
        assert np.abs(dense - expected).max() > 1e-3, f"{node.name}: segments of {SMALL} change nothing here"


def _reference_site(node, values: dict, segment_size: int) -> np.ndarray:
    """segmented's reference for one com.microsoft.Attention node, from its inputs' values."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    heads = attrs["num_heads"]
    x, w = values[node.input[0]], values[node.input[1]]
    packed = x @ w + (values[node.input[2]] if len(node.input) > 2 and node.input[2] else 0)
    b, n, _ = x.shape
    q, k, v = (torch.from_numpy(np.ascontiguousarray(t.reshape(b, n, heads, -1).transpose(0, 2, 1, 3)))
               for t in np.split(packed, 3, axis=-1))
    fill = attrs.get("mask_filter_value", -10000.0)
    key_padding = None
    if len(node.input) > 3 and node.input[3]:
        mask = values[node.input[3]]
        keep = mask != 0 if mask.ndim == 2 else np.arange(n)[None, :] < mask[:, None]  # (B, M) or (B,) counts
        key_padding = torch.from_numpy(np.where(keep, 0.0, fill).astype(np.float32))
    bias = None
    if len(node.input) > 5 and node.input[5]:
        bias = torch.tensor(np.asarray(values[node.input[5]], np.float32))
    out = segmented_reference(q, k, v, segment_size=segment_size, sinks=0, scale=attrs.get("scale") or None,
                              mask=bias, key_padding=key_padding, causal=bool(attrs.get("unidirectional", 0)))
    return out.permute(0, 2, 1, 3).reshape(b, n, -1).numpy()


def _run_exposing(path, feeds: dict, names: set) -> dict:
    """Run ``path`` in onnxruntime with the values ``names`` added as graph outputs: {name: value}."""
    import onnx_ir as ir

    from attnopt.frontends.onnx import infer_shapes  # a graph output needs its type

    model = infer_shapes(ir.load(str(path)))
    values = {v.name: v for node in model.graph for v in node.outputs}
    for name in sorted(names):
        if not values[name].is_graph_output():
            model.graph.outputs.append(values[name])
    session = ort.InferenceSession(ir.to_proto(model).SerializeToString(), providers=["CPUExecutionProvider"])
    outputs = [o.name for o in session.get_outputs()]
    return {k: v for k, v in zip(outputs, session.run(None, feeds)) if k in names}


def test_an_op_input_that_a_folded_shape_also_reads_loads_in_onnxruntime(tmp_path):
    """The general cause behind the Swin TorchScript rewrite onnxruntime refused to load.

    The dense site leaves its output-reshape glue behind, and that glue reads Shape(v) and Shape of the
    output. With a constant mask the op body's If conditions fold at load, and onnxruntime 1.31
    (CastElimination with If-branch constant folding) lost v's producer when the op read v itself:
    "Node input 'v' is not a graph input, initializer, or output of a previous node". The rewrite
    hands each op values of its own.
    """
    b, h, n, d = 2, 2, 6, 4
    e = h * d
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((e, e)) * e ** -0.5).astype(np.float32), f"w{t}")
             for t in "qkv"]
    inits += [numpy_helper.from_array(rng.standard_normal((1, h, n, n)).astype(np.float32), "bias"),
              numpy_helper.from_array(np.array(d ** -0.5, np.float32), "scale"),
              numpy_helper.from_array(np.array([b, n, h, d], np.int64), "heads"),
              numpy_helper.from_array(np.array([0, 0, -1], np.int64), "flat"),
              numpy_helper.from_array(np.array(0, np.int64), "zero"),
              numpy_helper.from_array(np.array(3, np.int64), "three"),
              numpy_helper.from_array(np.array([0], np.int64), "axes0"),
              numpy_helper.from_array(np.array([h, n], np.int64), "hn")]
    nodes = []
    for t, perm in (("q", [0, 2, 1, 3]), ("k", [0, 2, 3, 1]), ("v", [0, 2, 1, 3])):
        nodes += [helper.make_node("MatMul", ["x", f"w{t}"], [f"{t}_proj"]),
                  helper.make_node("Reshape", [f"{t}_proj", "heads"], [f"{t}_4d"]),
                  helper.make_node("Transpose", [f"{t}_4d"], [t], perm=perm)]
    nodes += [
        helper.make_node("MatMul", ["q", "k"], ["s0"]),
        helper.make_node("Mul", ["s0", "scale"], ["s1"]),
        helper.make_node("Add", ["s1", "bias"], ["s2"]),
        helper.make_node("Softmax", ["s2"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "v"], ["o"]),
        # TorchScript's output glue: o reshaped to a target read from Shape(o) and Shape(v).
        helper.make_node("Shape", ["o"], ["o_shape"]),
        helper.make_node("Gather", ["o_shape", "zero"], ["batch"], axis=0),
        helper.make_node("Shape", ["v"], ["v_shape"]),
        helper.make_node("Gather", ["v_shape", "three"], ["hd"], axis=0),
        helper.make_node("Unsqueeze", ["batch", "axes0"], ["batch1"]),
        helper.make_node("Unsqueeze", ["hd", "axes0"], ["hd1"]),
        helper.make_node("Concat", ["batch1", "hn", "hd1"], ["target"], axis=0),
        helper.make_node("Reshape", ["o", "target"], ["o4"]),
        helper.make_node("Transpose", ["o4"], ["o2"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["o2", "flat"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [b, n, e])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [b, n, e])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    (site,) = attnopt.detect(model)
    assert site.masks  # a constant mask: the op body's If conditions fold at load
    out = tmp_path / "seg.onnx"
    attnopt.rewrite(model, "segmented", segment_size=BIG).save(out)  # save verifies: an onnxruntime session
    feeds = {"x": rng.standard_normal((b, n, e)).astype(np.float32)}
    report = attnopt.validate(model, out, inputs=feeds)
    assert report.is_exact(1e-5), report.to_dict()
