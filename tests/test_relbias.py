"""relbias beyond conformance: slopes and buckets against their sources, the bias by hand, cost, zoo rewrites.

ALiBi slopes are checked against hand-written values and BLOOM's own
``build_alibi_tensor``; T5 buckets against HF's ``_relative_position_bucket``
over a wide range of distances (also through the per-distance table the op
reads, which clamps at ±R). The op and ONNX body are checked against dense
attention with a bias built here by hand, and the pass end to end.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx.inliner
import onnxruntime as ort
import pytest
import torch
from transformers.models.bloom.modeling_bloom import build_alibi_tensor
from transformers.models.t5.modeling_t5 import T5Attention

import attnopt
from attnopt.errors import InvalidParamsError, NoSitesError
from attnopt.kernels.reference import dense_attention
from attnopt.kernels.relbias import SPEC
from attnopt.kernels.relbias.op import QUERY_BLOCK
from attnopt.kernels.relbias.positions import alibi_slopes, relative_table, t5_bucket, table_bucket
from attnopt.passes.registry import make_pass
from kernel_harness import MaxNumel, onnx_model, run_counting_steps, run_onnx, run_op, run_reference

IMPLS = [run_reference, run_op, run_onnx]
SCALE = 0.4
T5_SETTINGS = [(True, 32, 128), (False, 32, 128), (True, 8, 12), (False, 6, 9), (True, 64, 256), (False, 2, 3)]


def _params(kind, **kw):
    return {**SPEC.defaults, "kind": kind, **kw}


# --- slopes and buckets --------------------------------------------------------------------------------------


def test_alibi_slopes_by_hand():
    assert alibi_slopes(8) == [2.0 ** -h for h in range(1, 9)]
    # Not a power of two: the 4-head slopes, then every other 8-head slope (2^-1, 2^-3).
    assert alibi_slopes(6) == [2.0 ** -2, 2.0 ** -4, 2.0 ** -6, 2.0 ** -8, 2.0 ** -1, 2.0 ** -3]
    assert alibi_slopes(1) == [2.0 ** -8]


@pytest.mark.parametrize("heads", [1, 2, 3, 5, 6, 8, 12, 16, 20, 40])
def test_alibi_slopes_equal_blooms(heads):
    bloom = build_alibi_tensor(torch.ones(1, 2), heads, torch.float32)[:, 0, 1]  # slope × position 1
    np.testing.assert_allclose(np.float32(alibi_slopes(heads)), bloom.numpy(), rtol=1e-6)


@pytest.mark.parametrize("bidirectional, num_buckets, max_distance", T5_SETTINGS)
def test_t5_buckets_equal_hf(bidirectional, num_buckets, max_distance):
    delta = torch.arange(-5 * max_distance, 5 * max_distance + 1)
    expected = T5Attention._relative_position_bucket(delta, bidirectional, num_buckets, max_distance)
    assert torch.equal(t5_bucket(delta, bidirectional, num_buckets, max_distance), expected)


@pytest.mark.parametrize("bidirectional, num_buckets, max_distance", T5_SETTINGS)
def test_the_per_distance_table_is_t5s_bucket_table_at_every_distance(bidirectional, num_buckets, max_distance):
    """The op reads table[h, clamp(δ, −R, R) + R]: equal to T[h, bucket(δ)] far beyond R too."""
    buckets = np.random.default_rng(0).standard_normal((3, num_buckets)).astype(np.float32)
    table = relative_table("t5", buckets, num_buckets, max_distance, bidirectional)
    r = (table.shape[1] - 1) // 2
    delta = torch.arange(-5 * max_distance, 5 * max_distance + 1)
    hf = T5Attention._relative_position_bucket(delta, bidirectional, num_buckets, max_distance).numpy()
    np.testing.assert_array_equal(table[:, (delta.clamp(-r, r) + r).numpy()], buckets[:, hf])


def test_table_kind_buckets_by_hand():
    delta = torch.tensor([-7, -2, -1, 0, 1, 2, 3])
    assert table_bucket(delta, True, 5).tolist() == [0, 0, 1, 2, 3, 4, 4]  # δ clamped to ±2, shifted by 2
    assert table_bucket(delta, False, 4).tolist() == [3, 2, 1, 0, 0, 0, 0]  # −δ clamped to 0..3


# --- the bias, checked by hand ----------------------------------------------------------------------------------


def _hand_bias(per_head, n, m):
    """(1, H, N, M) with per_head(h, δ) at δ = j − (i + M − N), one element at a time."""
    heads = len(per_head)
    bias = torch.zeros(1, heads, n, m)
    for h in range(heads):
        for i in range(n):
            for j in range(m):
                bias[0, h, i, j] = per_head[h](j - (i + m - n))
    return bias


def _qkv(b, h, hkv, n, m, d, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(b, h, n, d, generator=gen), torch.randn(b, hkv, m, d, generator=gen), \
        torch.randn(b, hkv, m, d, generator=gen)


@pytest.mark.parametrize("impl", IMPLS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
def test_alibi_is_dense_attention_plus_minus_slope_times_distance(impl, causal):
    """Six heads over three kv heads, 5 queries after 4 cached keys: the slopes land on their heads."""
    q, k, v = _qkv(2, 6, 3, 5, 9, 4, 0)
    slopes = [2.0 ** -2, 2.0 ** -4, 2.0 ** -6, 2.0 ** -8, 2.0 ** -1, 2.0 ** -3]
    bias = _hand_bias([lambda delta, s=s: -s * abs(delta) for s in slopes], 5, 9)
    kp = torch.zeros(2, 9)
    kp[1, :2] = float("-inf")
    got = impl("relbias", q, k, v, _params("alibi"), scale=SCALE, key_padding=kp, causal=causal)
    torch.testing.assert_close(got, dense_attention(q, k, v, scale=SCALE, mask=bias, key_padding=kp, causal=causal),
                               atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("impl", IMPLS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("bidirectional", [True, False])
def test_t5_is_dense_attention_plus_the_table_at_hfs_bucket(impl, bidirectional, tmp_path):
    """A per-head table from a file: head h reads its own row at HF's bucket of j − i, also past max_distance."""
    num_buckets, max_distance = 8, 6
    table = np.random.default_rng(1).standard_normal((4, num_buckets)).astype(np.float32)
    np.save(tmp_path / "t5.npy", table)
    params = _params("t5", num_buckets=num_buckets, max_distance=max_distance, bidirectional=bidirectional,
                     table_file=str(tmp_path / "t5.npy"))
    q, k, v = _qkv(1, 4, 2, 20, 20, 4, 1)

    def bucket(delta):
        return int(T5Attention._relative_position_bucket(torch.tensor(delta), bidirectional, num_buckets,
                                                         max_distance))

    bias = _hand_bias([lambda delta, h=h: float(table[h, bucket(delta)]) for h in range(4)], 20, 20)
    got = impl("relbias", q, k, v, params, scale=SCALE)
    torch.testing.assert_close(got, dense_attention(q, k, v, scale=SCALE, mask=bias), atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("impl", IMPLS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("kind", ["t5", "table"])
def test_a_zero_table_is_dense_attention(impl, kind):
    """The default t5 / table (no file, init_std 0) is the exact limit; one of three heads padded out."""
    q, k, v = _qkv(2, 3, 3, 7, 7, 4, 2)
    kp = torch.zeros(2, 7)
    kp[0, 5:] = torch.finfo(torch.float32).min
    params = _params(kind, num_buckets=5)
    for causal in (False, True):
        got = impl("relbias", q, k, v, params, scale=SCALE, key_padding=kp, causal=causal)
        torch.testing.assert_close(got, dense_attention(q, k, v, scale=SCALE, key_padding=kp, causal=causal),
                                   atol=2e-6, rtol=1e-5)


# --- cost ---------------------------------------------------------------------------------------------------------


def test_cpu_op_holds_one_block_of_queries_at_a_time():
    """Never B×H×N×M: the biggest tensor is one block of scores, (B, H, Bq, M)."""
    b, h, n, d = 2, 4, 1024, 8
    q, k, v = _qkv(b, h, h, n, n, d, 3)
    with MaxNumel() as seen:
        run_op("relbias", q, k, v, _params("t5", init_std=1.0), scale=SCALE, key_padding=torch.zeros(b, n),
               causal=True)
    assert seen.max_numel <= b * h * QUERY_BLOCK * n < b * h * n * n // 8


def test_onnx_body_scores_only_inside_its_scan():
    """Inlined, the graph's one Scan holds every MatMul (scores and output); nothing outside is N×M."""
    b, h, n, d = 1, 2, 256, 8
    dims = {"Q": [b, h, "N", d], "K": [b, h, "N", d], "V": [b, h, "N", d], "Mask": [1, 1, 1, 1],
            "KeyPadding": [1, "N"]}
    params = _params("t5", init_std=1.0)
    model = onnx_model("relbias", params, scale=SCALE, causal=False, dims=dims, q_shape=(b, h, n, d),
                       k_shape=(b, h, n, d))
    model = onnx.shape_inference.infer_shapes(onnx.inliner.inline_local_functions(model))
    ops = [node.op_type for node in model.graph.node]
    assert "MatMul" not in ops and ops.count("Scan") == 1
    (scan,) = [node for node in model.graph.node if node.op_type == "Scan"]
    (body,) = [a.g for a in scan.attribute if a.name == "body"]
    assert [node.op_type for node in body.node].count("MatMul") == 2
    types = {vi.name: vi.type.tensor_type.elem_type for vi in model.graph.value_info}
    produced = [out for node in model.graph.node for out in node.output if out in types]
    model.graph.output.extend(onnx.helper.make_tensor_value_info(name, types[name], None) for name in produced)
    q, k, v = _qkv(b, h, h, n, n, d, 4)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    results = sess.run(None, {"Q": q.numpy(), "K": k.numpy(), "V": v.numpy(), "Mask": np.zeros((1, 1, 1, 1), np.float32),
                              "KeyPadding": np.zeros((1, n), np.float32),
                              "SinkLogits": np.zeros(0, np.float32)})
    assert max(a.size for a in results) < b * h * n * n // 8
    torch.testing.assert_close(torch.from_numpy(results[0]), run_reference("relbias", q, k, v, params, scale=SCALE),
                               atol=2e-5, rtol=1e-5)


def test_onnx_body_steps_through_the_queries_in_blocks():
    """Two heads over 4100 keys: a step takes STEP_ELEMENTS // (2·4100) = 4092 queries, so the Scan runs twice,
    the second step ragged, and gives the reference's output."""
    from attnopt.kernels.relbias.onnx_body import STEP_ELEMENTS

    b, h, n, d = 1, 2, 4100, 4
    rows = STEP_ELEMENTS // (h * n)
    assert rows < n < 2 * rows  # the sizes this test needs, should the step size change
    params = _params("alibi")
    q, k, v = _qkv(b, h, h, n, n, d, 5)
    kp = np.zeros((b, n), np.float32)
    kp[0, -5:] = -np.inf
    feeds = {"Q": q.numpy(), "K": k.numpy(), "V": v.numpy(), "Mask": np.zeros((1, 1, 1, 1), np.float32),
             "KeyPadding": kp, "SinkLogits": np.zeros(0, np.float32)}
    dims = {"Q": [b, h, "N", d], "K": [b, h, "N", d], "V": [b, h, "N", d], "Mask": [1, 1, 1, 1],
            "KeyPadding": [b, "N"]}
    model = onnx_model("relbias", params, scale=SCALE, causal=True, dims=dims, q_shape=(b, h, n, d),
                       k_shape=(b, h, n, d))
    (got,), steps = run_counting_steps(model, feeds)
    assert steps == 2
    want = run_reference("relbias", q, k, v, params, scale=SCALE, key_padding=torch.from_numpy(kp), causal=True)
    torch.testing.assert_close(torch.from_numpy(got), want, atol=2e-6, rtol=1e-5)


# --- the pass ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("given, message", [
    ({"kind": "alibi", "table_file": "x.npy"}, "alibi takes no table_file"),
    ({"kind": "t5", "num_buckets": 2}, "t5 needs num_buckets >= 4"),
    ({"kind": "t5", "num_buckets": 8, "max_distance": 2}, "t5 needs max_distance > 2"),
    ({"kind": "table", "num_buckets": 6}, "bidirectional table needs an odd num_buckets"),
    ({"kind": "rope"}, "kind must be one of alibi, t5, table"),
    ({"init_std": -1}, "init_std must be >= 0"),
    ({"bias_scale": "nan"}, "bias_scale must be finite"),
])
def test_bad_parameters_are_refused_in_one_line(given, message):
    with pytest.raises(InvalidParamsError, match=message):
        make_pass("relbias", **given)


def test_table_files_are_checked_when_the_pass_is_made(tmp_path):
    with pytest.raises(InvalidParamsError, match="cannot read table_file"):
        make_pass("relbias", kind="t5", table_file=str(tmp_path / "missing.npy"))
    np.save(tmp_path / "wide.npy", np.zeros((2, 16), np.float32))
    with pytest.raises(InvalidParamsError, match=r"must hold one \(heads, num_buckets=32\) array, got \(2, 16\)"):
        make_pass("relbias", kind="t5", table_file=str(tmp_path / "wide.npy"))


def test_a_table_for_another_head_count_is_refused_per_site(zoo, tmp_path):
    np.save(tmp_path / "three.npy", np.zeros((3, 32), np.float32))
    with pytest.raises(NoSitesError, match="has 3 heads; the attention has 2"):  # the bert case has 2 heads
        attnopt.rewrite(zoo.onnx_path("bert-eager", "dynamo"), "relbias", kind="t5",
                        table_file=str(tmp_path / "three.npy"))


ZOO_FAMILIES = {"bert-eager", "gpt2-eager", "llama-gqa-sdpa", "bart-eager"}  # padding, causal, GQA, cross
LIMITS = [pytest.param({"kind": "t5"}, id="t5-zero-table"), pytest.param({"bias_scale": 0.0}, id="alibi-scale-0")]


def _onnx_inputs(case, path):
    built = case.factory()
    names = [i.name for i in onnx.load(str(path), load_external_data=False).graph.input]
    return {name: t.numpy() for name, t in zip(names, built.inputs)}


@pytest.mark.parametrize("limit", LIMITS)
@pytest.mark.zoo(select=lambda case, how: case.name in ZOO_FAMILIES and how in ("dynamo", "torchscript"))
def test_onnx_zoo_rewrite_is_exact_at_the_limit(zoo_onnx_case, limit, tmp_path):
    """Every site is rewritten, cross-attention included (relative positions need no self-attention)."""
    result = attnopt.rewrite(zoo_onnx_case.path, "relbias", **limit)
    assert [o.status for o in result.report] == ["rewritten"] * zoo_onnx_case.case.expected_sites
    out = tmp_path / "relbias.onnx"
    result.save(out)
    onnx.checker.check_model(str(out), full_check=True)
    report = attnopt.validate(zoo_onnx_case.path, out, inputs=_onnx_inputs(zoo_onnx_case.case, zoo_onnx_case.path))
    assert [m for m in report.sites if m.comparable], "no site could be compared"
    assert report.is_exact(1e-5), report.to_dict()


@pytest.mark.parametrize("limit", LIMITS)
@pytest.mark.zoo(select=lambda case, how: case.name in ZOO_FAMILIES and how == "export")
def test_fx_zoo_rewrite_is_exact_at_the_limit(zoo_fx_case, limit):
    result = attnopt.rewrite(zoo_fx_case.graph, "relbias", example_inputs=zoo_fx_case.example_inputs, **limit)
    assert [o.status for o in result.report] == ["rewritten"] * zoo_fx_case.case.expected_sites
    report = attnopt.validate(zoo_fx_case.graph, result.model, example_inputs=zoo_fx_case.inputs)
    assert report.is_exact(1e-5), report.to_dict()


@pytest.mark.parametrize("params", [pytest.param({"kind": "alibi"}, id="alibi"),
                                    pytest.param({"kind": "t5", "init_std": 1.0}, id="t5-random")])
def test_onnx_and_fx_rewrites_agree_away_from_the_limit(zoo, params, tmp_path):
    """Both frontends hand each head its own slopes and table rows (GQA: 4 heads over 2 kv heads)."""
    import zoo as zoo_lib

    name = "llama-gqa-sdpa"
    path = zoo.onnx_path(name, "dynamo")
    result = attnopt.rewrite(path, "relbias", **params)
    result.save(tmp_path / "r.onnx")
    inputs = _onnx_inputs(zoo_lib.CASES_BY_NAME[name], path)
    assert not attnopt.validate(path, tmp_path / "r.onnx", inputs=inputs).is_exact(1e-5)
    (got_onnx, *_) = ort.InferenceSession(str(tmp_path / "r.onnx"),
                                          providers=["CPUExecutionProvider"]).run(None, inputs)
    graph, example_inputs = zoo.fx_graph(name, "export")
    fx_result = attnopt.rewrite(graph, "relbias", example_inputs=example_inputs, **params)
    with torch.no_grad():
        got_fx = fx_result.model(*zoo.build(name).inputs)
    while not isinstance(got_fx, torch.Tensor):
        got_fx = got_fx[0] if isinstance(got_fx, (tuple, list)) else next(iter(got_fx.values()))
    np.testing.assert_allclose(got_onnx, got_fx.numpy(), atol=1e-5, rtol=1e-4)


class _FourHeads(torch.nn.Module):
    """Plain attention over 4 heads of 8, for head-group plans."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.qkv = torch.nn.Linear(32, 96)

    def project(self, x):
        return self.qkv(x).view(x.shape[0], x.shape[1], 3, 4, 8).permute(2, 0, 3, 1, 4)

    def forward(self, x):
        q, k, v = self.project(x)
        return ((q @ k.transpose(-2, -1) * 8 ** -0.5).softmax(-1) @ v).transpose(1, 2).reshape(x.shape)


@pytest.mark.parametrize("form", ["onnx", "fx"])
def test_a_head_group_takes_its_own_heads_slopes_and_table(form, tmp_path):
    """Heads 0, 1 dense, heads 2, 3 relbias (ALiBi plus a random T5-less table): the pass makes its slopes and
    table for the site's 4 heads; the group must read rows 2 and 3 of each (rows 0 and 1 would run, and be
    wrong)."""
    from attnopt.kernels.relbias.reference import reference as relbias_reference
    from attnopt.passes.base import AttentionPass, HeadGroup, OpCall
    from attnopt.pipeline import Pipeline

    relbias = make_pass("relbias", kind="table", num_buckets=7, init_std=1.0)

    class DenseThenRelbias(AttentionPass):
        variant = "relbias"

        def plan_site(self, site):
            (one,) = relbias.plan(site).groups
            return OpCall(site, (HeadGroup("dense", {}, 0, 2),
                                 HeadGroup("relbias", dict(one.attrs), 2, None, dict(one.tensors))))

    model = _FourHeads().eval()
    x = torch.randn(2, 10, 32, generator=torch.Generator().manual_seed(1))
    if form == "fx":
        result = Pipeline().add(DenseThenRelbias()).run(torch.export.export(model, (x,)))
        with torch.no_grad():
            got = result.model(x)
        got = got[0] if isinstance(got, (tuple, list)) else got
    else:
        path = tmp_path / "four.onnx"
        torch.onnx.export(model, (x,), str(path), input_names=["x"], dynamo=True)
        result = Pipeline().add(DenseThenRelbias()).run(str(path))
        result.save(tmp_path / "four.rb.onnx")
        got = torch.from_numpy(ort.InferenceSession(str(tmp_path / "four.rb.onnx"), providers=["CPUExecutionProvider"])
                               .run(None, {"x": x.numpy()})[0])
    (site,) = attnopt.detect(torch.export.export(model, (x,)))
    (one,) = relbias.plan(site).groups
    slopes, table = (torch.as_tensor(np.asarray(one.tensors[n])) for n in ("slopes", "table"))
    assert table.shape[0] == 4 and not torch.equal(table[:2], table[2:])  # a wrong slice would show
    with torch.no_grad():
        q, k, v = model.project(x)
        want = torch.cat([dense_attention(q[:, :2], k[:, :2], v[:, :2], scale=8 ** -0.5),
                          relbias_reference(q[:, 2:], k[:, 2:], v[:, 2:], **one.attrs, slopes=slopes[2:],
                                            table=table[2:], scale=8 ** -0.5)], dim=1)
    torch.testing.assert_close(got, want.transpose(1, 2).reshape(x.shape), atol=1e-5, rtol=1e-5)
