"""float16 models: the rewrite keeps them float16 outside the op, and every op body computes softmax in float32."""

from __future__ import annotations

import onnx
import onnx.inliner
import pytest
from onnx import TensorProto

import attnopt
from attnopt.kernels.registry import all_variants, get_variant
from attnopt.passes import pass_names

from kernel_harness import onnx_model


def _graphs(graph: onnx.GraphProto):
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g)


@pytest.mark.parametrize("name", [s.name for s in all_variants()])
def test_body_softmax_runs_in_float32_on_float16_inputs(name):
    spec = get_variant(name)
    params = dict(spec.test_params[0]) if spec.test_params else spec.defaults
    model = onnx_model(name, params, scale=0.25, causal=False, elem_type=TensorProto.FLOAT16,
                       q_shape=(1, 2, 8, 4), k_shape=(1, 2, 8, 4))
    inlined = onnx.shape_inference.infer_shapes(onnx.inliner.inline_local_functions(model))
    types = {}
    for graph in _graphs(inlined.graph):
        for info in [*graph.input, *graph.value_info, *graph.output]:
            types[info.name] = info.type.tensor_type.elem_type
    softmax_inputs = [n.input[0] for g in _graphs(inlined.graph) for n in g.node if n.op_type == "Softmax"]
    if not softmax_inputs:  # a body that normalises with its own Exp/ReduceSum: its Exp must see float32
        softmax_inputs = [n.input[0] for g in _graphs(inlined.graph) for n in g.node if n.op_type == "Exp"]
    assert softmax_inputs, f"{name}: no Softmax or Exp in the body"
    assert {types.get(v) for v in softmax_inputs} == {TensorProto.FLOAT}, name
    assert types["Y"] == TensorProto.FLOAT16


@pytest.fixture(scope="module")
def bert16(tmp_path_factory):
    from attnopt.examples import export_example

    return str(export_example("bert", tmp_path_factory.mktemp("fp16") / "bert16.onnx", seq_len=32,
                              dtype="float16"))


def _top_level_float_casts(model: onnx.ModelProto) -> int:
    return sum(1 for n in model.graph.node if n.op_type == "Cast"
               and any(a.name == "to" and a.i == TensorProto.FLOAT for a in n.attribute))


def test_example_float16_is_float16(bert16):
    model = onnx.load(bert16)
    assert {i.data_type for i in model.graph.initializer} == {TensorProto.FLOAT16}
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT16


@pytest.mark.parametrize("pass_name", pass_names())
def test_rewrite_keeps_float16_outside_the_op_and_validates(bert16, pass_name, tmp_path):
    """At each variant's exact limit the float16 rewrite equals the float16 original to float16 rounding."""
    n = 40
    spec = get_variant(pass_name)
    out = tmp_path / f"{pass_name}.onnx"
    attnopt.rewrite(bert16, pass_name, **spec.exact_params(n, n)).save(out)
    original, rewritten = onnx.load(bert16), onnx.load(out)
    assert rewritten.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert _top_level_float_casts(rewritten) <= _top_level_float_casts(original)
    op_inputs = {i for node in rewritten.graph.node if node.domain == "ai.attnopt" for i in node.input}
    # A pass's own constants (lsh rotations) are the op's business; the model's weights stay float16.
    assert all(i.data_type in (TensorProto.FLOAT16, TensorProto.INT64) for i in rewritten.graph.initializer
               if i.name not in op_inputs)
    report = attnopt.validate(bert16, str(out), seq_len=n).to_dict()
    # The original's softmax runs in float16, the op's in float32: they differ by float16 rounding.
    assert report["outputs"][0]["rel_l2"] < 5e-3, report["outputs"]


def test_example_cli_dtype(tmp_path):
    from click.testing import CliRunner

    from attnopt.cli import main

    res = CliRunner().invoke(main, ["example", "bert", "--layers", "1", "--dtype", "float16",
                                    "-o", str(tmp_path / "b.onnx")])
    assert res.exit_code == 0, res.output
    assert onnx.load(tmp_path / "b.onnx").graph.initializer[0].data_type == TensorProto.FLOAT16
    res = CliRunner().invoke(main, ["example", "bert", "--dtype", "int8", "-o", str(tmp_path / "c.onnx")])
    assert res.exit_code == 2 and not (tmp_path / "c.onnx").exists()
