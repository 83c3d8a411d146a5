"""GPT-OSS's learned sink logits through both frontends: found as one logit a head, carried to the ops that take
them (every variant but lowrank), sliced per head group, refused with the reason where no
op takes them.

The zoo case ``hand-sink-logits`` is the model; test_rewrite_zoo and test_local_variants_zoo rewrite it at and
below the variants' limits in every exporter. Here: what those sweeps do not show.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn

import attnopt
from attnopt.errors import NoSitesError
from attnopt.kernels.reference import dense_attention
from attnopt.kernels.window.reference import reference as window_reference
from attnopt.passes.base import AttentionPass, HeadGroup, OpCall
from attnopt.pipeline import Pipeline

B, N, H, D = 2, 12, 4, 8
WINDOW = 3


class Sinks(nn.Module):
    """GPT-OSS's eager attention, small: [scores, sinks] − max, softmax, the sink column dropped. ``per_query``
    makes the sink column a projection of each token instead (not one logit a head: no op takes that)."""

    def __init__(self, per_query: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.qkv = nn.Linear(H * D, 3 * H * D)
        self.sinks = nn.Parameter(torch.tensor([2.0, -1.0, 0.5, 3.0]))  # distinct, so a wrong slice shows
        self.per_query = nn.Linear(H * D, H) if per_query else None

    def project(self, x):
        b, s = x.shape[:2]
        return self.qkv(x).view(b, s, 3, H, D).permute(2, 0, 3, 1, 4)

    def forward(self, x):
        b, s = x.shape[:2]
        q, k, v = self.project(x)
        scores = q @ k.transpose(-2, -1) * D ** -0.5
        if self.per_query is None:
            sinks = self.sinks.reshape(1, -1, 1, 1).expand(b, -1, s, -1)
        else:
            sinks = self.per_query(x).transpose(1, 2).unsqueeze(-1)
        logits = torch.cat([scores, sinks], dim=-1)
        logits = logits - logits.max(dim=-1, keepdim=True).values
        return logits.softmax(-1)[..., :-1] @ v


def _x():
    return torch.randn(B, N, H * D, generator=torch.Generator().manual_seed(1))


def _onnx(model, tmp_path, name="sinks.onnx"):
    path = tmp_path / name
    torch.onnx.export(model, (_x(),), path, input_names=["x"], output_names=["y"], dynamo=True)
    return str(path)


def _run(path, x):
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return torch.from_numpy(sess.run(None, {"x": x.numpy()})[0])


class HalfDense(AttentionPass):
    """Heads 0, 1 dense, heads 2, 3 windowed: each group must get its own heads' sink logits."""

    variant = "window"

    def plan_site(self, site):
        return OpCall(site, (HeadGroup("dense", {}, 0, 2),
                             HeadGroup("window", {"window": self.params.window, "sinks": 0}, 2, None)))


def _expected_groups(model, x):
    """Heads 0, 1 dense and 2, 3 windowed, each with its head's sink logit (the spec's functions)."""
    q, k, v = model.project(x)
    s = model.sinks.detach()
    dense = dense_attention(q[:, :2], k[:, :2], v[:, :2], scale=D ** -0.5, sink_logits=s[:2])
    windowed = window_reference(q[:, 2:], k[:, 2:], v[:, 2:], window=WINDOW, scale=D ** -0.5, sink_logits=s[2:])
    return torch.cat([dense, windowed], dim=1)


def test_head_groups_take_their_own_heads_sinks_onnx(tmp_path):
    model = Sinks().eval()
    result = Pipeline().add(HalfDense(window=WINDOW)).run(_onnx(model, tmp_path))
    assert [o.status for o in result.report] == ["rewritten"]
    out = str(tmp_path / "groups.onnx")
    result.save(out)
    x = _x()
    with torch.no_grad():
        expected = _expected_groups(model, x)
        assert not torch.allclose(expected, model(x), atol=1e-3)  # the window restricts something
    torch.testing.assert_close(_run(out, x), expected, atol=1e-5, rtol=1e-5)


def test_head_groups_take_their_own_heads_sinks_fx():
    model = Sinks().eval()
    x = _x()
    result = Pipeline().add(HalfDense(window=WINDOW)).run(torch.export.export(model, (x,)))
    with torch.no_grad():
        y = result.model(x)
        torch.testing.assert_close(y[0] if isinstance(y, (tuple, list)) else y, _expected_groups(model, x),
                                   atol=1e-5, rtol=1e-5)


class EveryTaker(AttentionPass):
    """One head each for hierarchical, lsh, routed and relbias, all at their exact limits: exact only if every
    group gets its own head's sink logit."""

    variant = "hierarchical"

    def plan_site(self, site):
        from attnopt.kernels.registry import get_variant
        from attnopt.passes import make_pass

        groups = []
        for head, name in enumerate(("hierarchical", "lsh", "routed", "relbias")):
            # each pass's own call (its constant tensors made for the site), moved to one head, as a plan does
            (one,) = make_pass(name, **get_variant(name).exact_params(N, N)).plan(site).groups
            groups.append(HeadGroup(one.kernel, dict(one.attrs), head, head + 1 if head < 3 else None,
                                    dict(one.tensors)))
        return OpCall(site, tuple(groups))


@pytest.mark.parametrize("form", ["onnx", "fx"])
def test_every_taker_gets_its_own_heads_sinks(form, tmp_path):
    model = Sinks().eval()
    x = _x()
    source = _onnx(model, tmp_path) if form == "onnx" else torch.export.export(model, (x,))
    result = Pipeline().add(EveryTaker()).run(source)
    assert [o.status for o in result.report] == ["rewritten"]
    if form == "onnx":
        out = str(tmp_path / "takers.onnx")
        result.save(out)
        got = _run(out, x)
    else:
        with torch.no_grad():
            got = result.model(x)
        got = got[0] if isinstance(got, (tuple, list)) else got
    with torch.no_grad():
        torch.testing.assert_close(got, model(x), atol=1e-5, rtol=1e-5)


def test_without_the_sinks_the_output_would_differ():
    """A test of the tests: dropping the sink logits changes the output at these settings."""
    model = Sinks().eval()
    x = _x()
    q, k, v = model.project(x)
    with torch.no_grad():
        assert not torch.allclose(dense_attention(q, k, v, scale=D ** -0.5), model(x), atol=1e-2)
        torch.testing.assert_close(dense_attention(q, k, v, scale=D ** -0.5, sink_logits=model.sinks), model(x),
                                   atol=1e-6, rtol=1e-5)


def test_detect_shows_the_sink_logits(tmp_path):
    from click.testing import CliRunner

    from attnopt.cli import main

    path = _onnx(Sinks().eval(), tmp_path)
    result = CliRunner().invoke(main, ["detect", path])
    assert result.exit_code == 0 and "sink logits" in result.output, result.output


def test_a_sink_column_per_query_is_not_taken(tmp_path):
    """A column that varies per token is not one learned logit a head: the site stays dense with the reason."""
    path = _onnx(Sinks(per_query=True).eval(), tmp_path)
    (site,) = attnopt.detect(path)
    assert "not one learned logit a head" in site.unsupported
    with pytest.raises(NoSitesError, match="not one learned logit a head"):
        attnopt.rewrite(path, "window", window=WINDOW)


def test_ort_cuda_target_keeps_the_portable_body_with_the_reason(tmp_path):
    model = Sinks().eval()
    result = attnopt.rewrite(_onnx(model, tmp_path), "segmented", segment_size=N, target="ort-cuda")
    (outcome,) = result.report
    assert outcome.status == "rewritten" and "no learned sink logits" in outcome.fallback, outcome
    out = str(tmp_path / "ortcuda.onnx")
    result.save(out)
    with torch.no_grad():
        torch.testing.assert_close(_run(out, _x()), model(_x()), atol=1e-5, rtol=1e-5)


def test_fx_rewrite_exports_to_onnx_with_the_sinks(tmp_path):
    """fx rewrite -> export_onnx -> onnxruntime: the op's sink logits become the ONNX op's SinkLogits input."""
    model = Sinks().eval()
    x = _x()
    result = attnopt.rewrite(torch.export.export(model, (x,)), "window", window=WINDOW)
    path = attnopt.export_onnx(result.model, (x,), tmp_path / "exported.onnx", input_names=["x"])
    with torch.no_grad():
        y = result.model(x)
        y = y[0] if isinstance(y, (tuple, list)) else y
        assert not torch.allclose(y, model(x), atol=1e-3)
    torch.testing.assert_close(_run(str(path), x), y, atol=1e-5, rtol=1e-5)


def test_without_sinks_the_onnx_op_gets_an_empty_vector(zoo):
    """A site with no sink logits hands the op a constant empty SinkLogits, which onnxruntime folds the body's
    sink branch away on (tests/test_sink_logits_onnx.py shows the folding)."""
    result = attnopt.rewrite(zoo.onnx_path("bert-eager", "dynamo"), "window", window=4)
    node = next(n for n in result.model.graph if n.op_type == "WindowAttention")
    sinks = node.inputs[5]
    assert sinks.producer().op_type == "Constant"
    assert np.asarray(sinks.producer().attributes["value"].value).shape == (0,)


@pytest.mark.parametrize("variant, exact, below", [
    ("window", dict(window=1 << 16), dict(window=3)),
    ("memory", dict(segment_size=1 << 16, memory=1 << 16), dict(segment_size=4, memory=2)),
])
def test_gpt_oss_rewritten_with_its_sinks(zoo, variant, exact, below):
    """The real family (transformers' GptOssModel, random weights, through torch.export): both layers' sites
    carry their sink logits, exact at the limit, restricting below it."""
    graph, inputs = zoo.fx_graph("gpt-oss-eager", "export")
    assert all(s.sink_logits is not None and not s.unsupported for s in attnopt.detect(graph))
    for params, is_exact in ((exact, True), (below, False)):
        result = attnopt.rewrite(graph, variant, example_inputs=inputs, **params)
        assert [o.status for o in result.report] == ["rewritten"] * 2
        assert attnopt.validate(graph, result.model, example_inputs=inputs).is_exact(1e-5) == is_exact


def test_gpt_oss_rows_the_padding_blocks_entirely_stay_zero(zoo):
    """Left padding leaves the first queries of row 1 no key: with a learned sink the original puts all their
    weight on the sink's zero value, so the rewrite must not give them the mean of the values as it does where
    HF's eager mask leaves such a row uniform (lowering.blocked_rows)."""
    graph, _ = zoo.fx_graph("gpt-oss-eager", "export")
    inputs = zoo.build("gpt-oss-eager").inputs
    mask = torch.ones_like(inputs[1])
    mask[1, :3] = 0
    left = (inputs[0], mask, *inputs[2:])
    result = attnopt.rewrite(graph, "window", example_inputs=inputs, window=1 << 16)
    assert attnopt.validate(graph, result.model, example_inputs=left).is_exact(1e-5)


def test_gpt_oss_full_layer_rewritten_by_hierarchical_with_its_sinks(zoo):
    """hierarchical takes the sink logits too. It pools far keys, so it refuses the sliding-window layer (a
    per-query mask it cannot pool) and serves the full-attention layer: exact at the limit, restricting below."""
    graph, inputs = zoo.fx_graph("gpt-oss-eager", "export")
    for params, is_exact in ((dict(block=1 << 16, levels=1, sinks=0), True), (dict(block=2, levels=1, sinks=1), False)):
        result = attnopt.rewrite(graph, "hierarchical", example_inputs=inputs, **params)
        assert [o.status for o in result.report] == ["refused", "rewritten"], result.report
        assert "neither causal nor key padding" in result.report[0].reason
        (op,) = [n for n in result.model.graph.nodes if "attnopt" in str(n.target)]
        assert op.args[-1] is not None  # the sink logits reach the op
        assert attnopt.validate(graph, result.model, example_inputs=inputs).is_exact(1e-5) == is_exact


def test_gpt_oss_sliding_layer_rewritten_by_its_own_window_reads_no_mask(zoo):
    """Layer 0 is a sliding-window layer (4 keys): mask analysis finds causality, key padding and the window,
    so window 4 over that layer alone equals the model and its op reads no N×M mask."""
    graph, inputs = zoo.fx_graph("gpt-oss-eager", "export")
    (sliding, full) = attnopt.detect(graph)
    assert [t.window for t in sliding.masks] == [4] and sliding.masks[0].window_padding is not None
    assert full.causal and not full.masks
    result = attnopt.rewrite(graph, "window", layers="0", example_inputs=inputs, window=4)
    assert [o.status for o in result.report] == ["rewritten", "skipped"]
    (op,) = [n for n in result.model.graph.nodes if "attnopt" in str(n.target)]
    assert op.args[3] is None and op.args[4] is not None and op.args[8] is True  # causal, (B, M) padding, no mask
    assert attnopt.validate(graph, result.model, example_inputs=inputs).is_exact(1e-5)

