"""The rewrite engine on small hand-built models: pipeline, both frontends, export, refusals."""

from __future__ import annotations

import hashlib
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn

import attnopt
from attnopt.errors import InvalidParamsError, NoSitesError
from attnopt.kernels import onnx_functions
from attnopt.kernels.segmented.reference import reference as segmented_attention

N, E, H = 12, 32, 4
D = E // H


class SelfAttention(nn.Module):
    """Decomposed multi-head attention with a key-padding mask, as people write it."""

    def __init__(self, layers: int = 1, causal: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.qkv = nn.ModuleList(nn.Linear(E, 3 * E) for _ in range(layers))
        self.causal = causal
        # A fixed-size causal buffer (no slicing by a traced length, so symbolic_trace works).
        self.register_buffer("future", torch.ones(N, N, dtype=torch.bool).triu(1), persistent=False)

    def forward(self, x, pad):
        b, n, _ = x.shape
        for proj in self.qkv:
            q, k, v = proj(x).view(b, n, 3, H, D).permute(2, 0, 3, 1, 4)
            s = q @ k.transpose(-1, -2) / D ** 0.5
            s = s + (1.0 - pad[:, None, None, :]) * -1e9
            if self.causal:
                s = s.masked_fill(self.future, float("-inf"))
            x = (torch.softmax(s, -1) @ v).transpose(1, 2).reshape(b, n, E) + x
        return x


class CrossAttention(nn.Module):
    def forward(self, x, mem):
        b, n, _ = x.shape
        q = x.view(b, n, H, D).transpose(1, 2)
        k = mem.view(b, -1, H, D).transpose(1, 2)
        return torch.softmax(q @ k.transpose(-1, -2) * D ** -0.5, -1) @ k


class NoAttention(nn.Module):
    def forward(self, x, pad):
        return torch.softmax(x, -1) * pad[..., None]


def _inputs(n=N):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, n, E, generator=g)
    pad = torch.ones(2, n)
    pad[1, -3:] = 0
    return x, pad


def _export(module, inputs, path, dynamo=False):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, inputs, str(path), input_names=["x", "pad"], output_names=["y"],
                          dynamo=dynamo, opset_version=17 if not dynamo else 18,
                          dynamic_axes=None if dynamo else {"x": {1: "n"}, "pad": {1: "n"}})
    return path


def _run(path, inputs):
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, {i.name: t.numpy() for i, t in zip(s.get_inputs(), inputs)})[0]


@pytest.fixture(scope="module")
def two_layer_onnx(tmp_path_factory):
    return _export(SelfAttention(layers=2), _inputs(), tmp_path_factory.mktemp("m") / "attn2.onnx")


def test_a_rewrite_that_leaves_the_dense_attention_computing_is_an_error(two_layer_onnx, tmp_path, monkeypatch):
    """If the rewritten model still holds a rewritten site's dense attention (kept alive by a reader the rewrite
    missed), the rewrite saved nothing while looking done: a one-line error, exit 2, no file."""
    import subprocess
    import sys

    from attnopt.errors import RewriteVerificationError
    from attnopt.frontends.onnx_frontend import OnnxFrontend

    def apply_nothing(self, loaded, call, target="portable"):  # the op is "applied", the dense nodes all stay
        return []

    monkeypatch.setattr(OnnxFrontend, "apply", apply_nothing)
    with pytest.raises(RewriteVerificationError, match="dense attention.* still computed"):
        attnopt.rewrite(two_layer_onnx, "segmented", segment_size=8)
    monkeypatch.undo()
    # Through the CLI (the same patch, in a child process): one line on stderr, exit 2, nothing written.
    out = tmp_path / "left.onnx"
    code = ("import sys; from attnopt.frontends.onnx_frontend import OnnxFrontend as F; "
            "F.apply = lambda self, loaded, call, target='portable': []; from attnopt.cli import main; "
            f"sys.argv = ['attnopt', 'rewrite', {str(two_layer_onnx)!r}, '--pass', 'segmented', '-p', "
            f"'segment_size=8', '-o', {str(out)!r}]; main()")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "still computed" in res.stderr, res.stderr
    assert not out.exists()


def test_onnx_rewrite_is_checked_loadable_and_exact_at_the_limit(two_layer_onnx, tmp_path):
    result = attnopt.rewrite(two_layer_onnx, "segmented", segment_size=64)
    assert [o.status for o in result.report] == ["rewritten", "rewritten"]
    out = tmp_path / "seg.onnx"
    result.save(out)
    onnx.checker.check_model(str(out), full_check=True)
    model = onnx.load(str(out))
    ops = [n.op_type for n in model.graph.node]
    assert "Softmax" not in ops and ops.count("SegmentedAttention") == 2
    assert model.ir_version <= 10
    assert [f.name for f in model.functions] == onnx_functions.functions_for(["SegmentedAttention"])  # + callees
    x = _inputs()
    np.testing.assert_allclose(_run(out, x), _run(two_layer_onnx, x), atol=1e-5)
    # A symbolic sequence axis survives: run at another length.
    x = _inputs(37)
    np.testing.assert_allclose(_run(out, x), _run(two_layer_onnx, x), atol=1e-5)


def test_onnx_rewrite_below_the_limit_computes_segmented_attention(tmp_path):
    module = SelfAttention(layers=1)
    path = _export(module, _inputs(), tmp_path / "a.onnx")
    result = attnopt.rewrite(path, "segmented", segment_size=5, sinks=2)
    result.save(tmp_path / "s.onnx")
    x, pad = _inputs(N)
    # The expected output, from the reference: same projections, segmented attention.
    q, k, v = module.qkv[0](x).view(2, N, 3, H, D).permute(2, 0, 3, 1, 4)
    mask = ((1.0 - pad[:, None, None, :]) * -1e9)
    o = segmented_attention(q, k, v, segment_size=5, sinks=2, mask=mask)
    expected = (o.transpose(1, 2).reshape(2, N, E) + x).detach().numpy()
    got = _run(tmp_path / "s.onnx", (x, pad))
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert np.abs(got - _run(path, (x, pad))).max() > 1e-3  # and it is not dense attention


def test_site_output_names_survive_the_rewrite(two_layer_onnx):
    before = attnopt.loaded.open_model(two_layer_onnx)
    names = [before.view.value_of[s.output].name for s in before.sites]
    result = attnopt.rewrite(two_layer_onnx, "segmented", segment_size=4)
    graph_values = {v.name for n in result.model.graph for v in n.outputs}
    assert set(names) <= graph_values


def test_rewrite_is_deterministic(two_layer_onnx, tmp_path):
    digests = []
    for i in range(2):
        out = tmp_path / f"r{i}.onnx"
        attnopt.rewrite(two_layer_onnx, "segmented", segment_size=4, sinks=1).save(out)
        digests.append(hashlib.sha256(out.read_bytes()).hexdigest())
    assert digests[0] == digests[1]


def test_layer_and_name_selection(two_layer_onnx):
    result = attnopt.rewrite(two_layer_onnx, "segmented", segment_size=4, layers="1:")
    assert [o.status for o in result.report] == ["skipped", "rewritten"]
    assert "outside --layers" in result.report[0].reason
    name = result.report[0].site
    result = attnopt.rewrite(two_layer_onnx, "segmented", segment_size=4, names=[name])
    assert [o.status for o in result.report] == ["rewritten", "skipped"]
    with pytest.raises(InvalidParamsError, match="range"):
        attnopt.rewrite(two_layer_onnx, "segmented", layers="3:1")
    with pytest.raises(NoSitesError):
        attnopt.rewrite(two_layer_onnx, "segmented", layers="5:9")


@pytest.mark.parametrize("params, message", [
    ({"segment_size": 0}, "segment_size must be >= 1"),
    ({"sinks": -1}, "sinks must be >= 0"),
    ({"segment_size": "abc"}, "not a valid int"),
    ({"window": 3}, "no parameter 'window'"),
])
def test_invalid_params_are_refused_with_a_clear_message(two_layer_onnx, params, message):
    with pytest.raises(InvalidParamsError, match=message):
        attnopt.rewrite(two_layer_onnx, "segmented", **params)


def test_unknown_pass():
    with pytest.raises(InvalidParamsError, match="unknown pass 'nope'; available: .*segmented"):
        attnopt.rewrite("whatever.onnx", "nope")


def test_cross_attention_is_refused_with_the_reason(tmp_path):
    x, mem = torch.randn(1, 6, E), torch.randn(1, 10, E)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(CrossAttention(), (x, mem), str(tmp_path / "x.onnx"), dynamo=False)
    with pytest.raises(NoSitesError, match=r"cross-attention \(N=6, M=10\)"):
        attnopt.rewrite(tmp_path / "x.onnx", "segmented", segment_size=4)
    result = attnopt.rewrite(CrossAttention(), "segmented", segment_size=4, example_inputs=(x, x))
    assert result.report[0].status == "rewritten"  # same module as self-attention is fine


def test_no_attention_is_an_error_for_rewrite_and_empty_for_detect(tmp_path):
    path = _export(NoAttention(), _inputs(), tmp_path / "none.onnx")
    assert attnopt.detect(path) == []
    with pytest.raises(NoSitesError, match="no attention sites found"):
        attnopt.rewrite(path, "segmented")


@pytest.mark.parametrize("tracer", ["export", "symbolic_trace", "module"])
def test_fx_rewrite_matches_dense_at_the_limit_and_reference_below(tracer):
    module = SelfAttention(layers=2, causal=True).eval()
    inputs = _inputs()
    model = {"export": lambda: torch.export.export(module, inputs),
             "symbolic_trace": lambda: torch.fx.symbolic_trace(module),
             "module": lambda: module}[tracer]()
    result = attnopt.rewrite(model, "segmented", segment_size=N, example_inputs=inputs)
    assert [o.status for o in result.report] == ["rewritten"] * 2
    gm = result.model
    assert "segmented_attention" in gm.code and "softmax" not in gm.code
    with torch.no_grad():
        torch.testing.assert_close(gm(*inputs), module(*inputs), atol=1e-5, rtol=1e-5)
        small = attnopt.rewrite(model, "segmented", segment_size=3, example_inputs=inputs).model
        assert (small(*inputs) - module(*inputs)).abs().max() > 1e-3
    sites = attnopt.detect(model, example_inputs=inputs)
    assert all(s.causal for s in sites)  # the constant triu mask was recognised as causal


class ViewsSdpaOutput(torch.nn.Module):
    """Calls ``.view`` on SDPA's transposed output (as JetMoE does): valid only because torch stores the
    (B, H, N, D) output as (B, N, H, D)."""

    def __init__(self):
        super().__init__()
        self.qkv = torch.nn.Linear(E, 3 * E)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, H, E // H).permute(2, 0, 3, 1, 4)
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return y.transpose(1, 2).view(b, n, E)


@pytest.mark.parametrize("tracer", ["export", "symbolic_trace"])
def test_fx_rewrite_keeps_the_outputs_memory_order(tracer):
    module, inputs = ViewsSdpaOutput().eval(), _inputs()[:1]
    model = torch.export.export(module, inputs) if tracer == "export" else torch.fx.symbolic_trace(module)
    result = attnopt.rewrite(model, "segmented", segment_size=N, example_inputs=inputs)
    assert [o.status for o in result.report] == ["rewritten"]
    with torch.no_grad():  # a contiguous (B, H, N, D) result would make the model's .view raise here
        torch.testing.assert_close(result.model(*inputs), module(*inputs), atol=1e-5, rtol=1e-5)


def test_fx_rewrite_does_not_touch_the_callers_graph():
    module = SelfAttention().eval()
    gm = torch.fx.symbolic_trace(module)
    code = gm.code
    attnopt.rewrite(gm, "segmented", segment_size=4, example_inputs=_inputs())
    assert gm.code == code


def test_fx_rewrite_exports_to_onnx_and_runs_in_onnxruntime(tmp_path):
    module = SelfAttention(layers=2).eval()
    inputs = _inputs()
    result = attnopt.rewrite(torch.export.export(module, inputs), "segmented", segment_size=5, sinks=1)
    path = attnopt.export_onnx(result.model, inputs, tmp_path / "fx.onnx")
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path))
    assert [n.op_type for n in model.graph.node if n.domain == "ai.attnopt"] == ["SegmentedAttention"] * 2
    with torch.no_grad():
        expected = result.model(*inputs).numpy()
    np.testing.assert_allclose(_run(path, inputs), expected, atol=1e-5)


def test_external_data_models_are_read_and_rewritten(two_layer_onnx, tmp_path):
    model = onnx.load(str(two_layer_onnx))
    path = tmp_path / "ext.onnx"
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location="ext.onnx.data", size_threshold=0)
    assert (tmp_path / "ext.onnx.data").exists()
    assert len(attnopt.detect(path)) == 2
    out = tmp_path / "seg.onnx"
    attnopt.rewrite(path, "segmented", segment_size=64).save(out)
    x = _inputs()
    np.testing.assert_allclose(_run(out, x), _run(two_layer_onnx, x), atol=1e-5)


def _break_first_op(result):
    """Feed one attnopt op a value nothing produces: the kind of graph onnxruntime refuses to load."""
    import onnx_ir as ir
    node = next(n for n in result.model.graph if n.domain == "ai.attnopt")
    node.replace_input_with(2, ir.Value(name="nowhere"))
    return node


def test_a_broken_rewrite_is_never_written(two_layer_onnx, tmp_path):
    result = attnopt.rewrite(two_layer_onnx, "segmented", segment_size=4)
    _break_first_op(result)
    out = tmp_path / "broken.onnx"
    with pytest.raises(attnopt.errors.RewriteVerificationError, match="not written"):
        result.save(out)
    assert not out.exists() and not list(tmp_path.iterdir())
    result.save(out, verify=False)  # the escape hatch writes it anyway
    assert out.exists()


def test_verification_names_the_site_at_fault(two_layer_onnx, tmp_path):
    result = attnopt.rewrite(two_layer_onnx, "segmented", segment_size=4)
    node = _break_first_op(result)
    site = next(o.site for o in result.rewritten if node.name.startswith(o.site + "/"))
    with pytest.raises(attnopt.errors.RewriteVerificationError) as e:
        result.save(tmp_path / "broken.onnx")
    assert "\n" not in str(e.value)
    assert str(e.value).startswith(f"site {site}: "), str(e.value)


def test_an_original_that_fails_onnxruntime_is_blamed_not_the_rewrite(two_layer_onnx, tmp_path):
    """Some exports fail onnxruntime outside any attention site (a TorchScript CANINE): the error says so."""
    model = onnx.load(two_layer_onnx)
    y = model.graph.output[0]
    # a MatMul on the output with a weight of the wrong height: the checker passes, ORT's shape inference refuses
    width = y.type.tensor_type.shape.dim[-1].dim_value
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.ones((width + 1, 2), np.float32), "odd_w"))
    model.graph.node.append(onnx.helper.make_node("MatMul", [y.name, "odd_w"], ["odd"]))
    model.graph.output.append(onnx.helper.make_tensor_value_info("odd", onnx.TensorProto.FLOAT, [None, None, 2]))
    path = tmp_path / "odd.onnx"
    onnx.save(model, str(path))
    result = attnopt.rewrite(path, "segmented", segment_size=4)
    with pytest.raises(attnopt.errors.RewriteVerificationError, match="original model fails onnxruntime too") as e:
        result.save(tmp_path / "seg.onnx")
    assert not (tmp_path / "seg.onnx").exists()
    # each model's own error, named: the original's points at the MatMul added outside the sites
    original, rewritten = str(e.value).split("The original: ")[1].split(" | the rewritten model: ")
    assert "MatMul" in original and "\n" not in str(e.value)
    result = attnopt.rewrite(two_layer_onnx, "segmented", segment_size=4)  # a good original keeps the site's blame
    _break_first_op(result)
    with pytest.raises(attnopt.errors.RewriteVerificationError, match="the rewritten model fails"):
        result.save(tmp_path / "broken.onnx")


def test_an_original_that_only_fails_when_run_is_named_beside_the_rewrite(two_layer_onnx, tmp_path):
    """A broken export can load and fail only on its first run, while the rewrite fails at load (a TorchScript
    CANINE): the rewrite is not written, and the error says that the original fails its run too."""
    import onnx_ir as ir

    model = ir.load(str(two_layer_onnx))
    _fails_when_run(model.graph, model.graph.outputs[0])
    path = tmp_path / "odd.onnx"
    ir.save(model, str(path))
    result = attnopt.rewrite(path, "segmented", segment_size=4)
    # a MatMul on the output with a weight of the wrong height: the checker passes, ORT's shape inference refuses
    graph, y = result.model.graph, result.model.graph.outputs[0]
    weight = ir.Value(name="odd_w", const_value=ir.tensor(np.ones((y.shape[-1] + 1, 2), np.float32)))
    graph.initializers[weight.name] = weight
    node = ir.node("MatMul", [y, weight], name="odd_matmul")
    node.outputs[0].name, node.outputs[0].dtype = "odd_product", ir.DataType.FLOAT
    node.outputs[0].shape = ir.Shape([None, None, 2])
    graph.append(node)
    graph.outputs.append(node.outputs[0])
    with pytest.raises(attnopt.errors.RewriteVerificationError,
                       match="the original loads but fails its first run") as e:
        result.save(tmp_path / "seg.onnx")
    assert not (tmp_path / "seg.onnx").exists()
    original, rewritten = str(e.value).split("The original: ")[1].split(" | the rewritten model: ")
    assert "odd_reshape" in original and "odd_matmul" in rewritten, str(e.value)


def _fails_when_run(graph, value):
    """An extra output that reshapes ``value`` to a size it cannot have: the model loads, and fails its first run."""
    import onnx_ir as ir

    shape = ir.Value(name="odd_shape", const_value=ir.tensor(np.array([-1, 7, 3], np.int64)))
    graph.initializers[shape.name] = shape
    node = ir.node("Reshape", [value, shape], name="odd_reshape")
    node.outputs[0].name = "odd"
    node.outputs[0].dtype = ir.DataType.FLOAT
    node.outputs[0].shape = ir.Shape([None, 7, 3])
    graph.append(node)
    graph.outputs.append(node.outputs[0])


def test_a_rewrite_that_fails_its_first_run_is_never_written(two_layer_onnx, tmp_path):
    """Loading is not enough: verification runs the rewritten model once on made-up inputs (a rewrite that fed
    pooled queries to segmented as self-attention loaded, and failed on its first run)."""
    result = attnopt.rewrite(two_layer_onnx, "segmented", segment_size=4)
    op = next(n for n in result.model.graph if n.domain == "ai.attnopt")
    _fails_when_run(result.model.graph, op.outputs[0])
    out = tmp_path / "fails.onnx"
    with pytest.raises(attnopt.errors.RewriteVerificationError, match="fails onnxruntime \\(a run\\)"):
        result.save(out)
    assert not out.exists()


def test_made_up_inputs_the_original_cannot_take_prove_nothing(two_layer_onnx, tmp_path):
    """Where the original itself fails on the made-up inputs, the run cannot blame the rewrite: it is written."""
    import onnx_ir as ir

    model = ir.load(str(two_layer_onnx))
    _fails_when_run(model.graph, model.graph.outputs[0])
    path = tmp_path / "odd.onnx"
    ir.save(model, str(path))
    result = attnopt.rewrite(path, "segmented", segment_size=4)
    result.save(tmp_path / "seg.onnx")
    assert (tmp_path / "seg.onnx").exists()
