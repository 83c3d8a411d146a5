"""The ort-cuda target: each contrib-op lowering equals its variant's portable body.

Both run as one-node models in onnxruntime on the same tensors, on the CPU EP
(com.microsoft.MultiHeadAttention has a CPU kernel) and, where a GPU is
present, on the CUDA EP. Then the target end to end: rewrite, report, fallback.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import attnopt
from attnopt.kernels import onnx_functions
from attnopt.kernels.onnx_functions import attach_functions
from attnopt.kernels.ort_cuda import LoweringFacts, choose, lowering_attrs, lowering_module, lowering_op_type
from attnopt.kernels.registry import get_variant
from attnopt.onnx_compat import DOMAIN
from kernel_harness import onnx_model, run_counting_steps

DIMS = {"Q": ["B", "H", "N", "D"], "K": ["B", "H", "N", "D"], "V": ["B", "H", "N", "D"],
        "Mask": [1, 1, 1, 1], "KeyPadding": ["Bk", "N"]}
# A lowering has its own kernels: equal to the portable body up to float rounding of each dtype.
TOLERANCE = {TensorProto.FLOAT: 2e-5, TensorProto.FLOAT16: 4e-3}


def _model(op_type: str, attrs: dict, elem: int, dims: dict = DIMS) -> bytes:
    node = helper.make_node(op_type, list(dims), ["Y"], domain=DOMAIN, **attrs)
    inputs = [helper.make_tensor_value_info(n, elem if n in "QKV" or n in ("Mask", "KeyPadding") else
                                            TensorProto.FLOAT, dims[n]) for n in dims]
    graph = helper.make_graph([node], op_type, inputs, [helper.make_tensor_value_info("Y", elem, DIMS["Q"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    attach_functions(model, [op_type])
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _run(op_type, attrs, feeds, elem, provider, dims=DIMS):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    # The CUDA EP runs float32 MatMuls in TF32 by default: off, so float32 compares at float32 precision.
    options = {"use_tf32": "0"} if provider == "CUDAExecutionProvider" else {}
    sess = ort.InferenceSession(_model(op_type, attrs, elem, dims), opts, providers=[(provider, options)])
    return sess.run(None, feeds)[0].astype(np.float32)


def _feeds(b, h, n, d, kp_kind, elem, seed=0):
    rng = np.random.default_rng(seed)
    dtype = np.float16 if elem == TensorProto.FLOAT16 else np.float32
    q, k, v = (rng.standard_normal((b, h, n, d)).astype(dtype) for _ in range(3))
    kp = np.zeros((1, 1), dtype)
    if kp_kind == "finite":  # BERT-style (1 - mask) * -1e4 on the last keys
        kp = np.zeros((b, n), dtype)
        kp[:, -max(1, n // 3):] = -1e4
    elif kp_kind == "inf":  # boolean padding: the whole first segment of batch 0 sees no key
        kp = np.where(rng.random((b, n)) < 0.3, -np.inf, 0).astype(dtype)
        kp[0, :8] = -np.inf
    return {"Q": q, "K": k, "V": v, "Mask": np.zeros((1, 1, 1, 1), dtype), "KeyPadding": kp}


CASES = [  # (segment_size or window, N, causal, key padding)
    (4, 12, 0, "none"), (5, 13, 0, "finite"), (4, 13, 1, "none"), (5, 12, 1, "inf"), (8, 19, 0, "inf"),
    (16, 6, 0, "finite"),  # S > N: one segment
]


LOWERED = {"segmented": "segment_size", "window": "window"}  # the chunked lowerings, by the parameter CASES sets


def _compare(provider, elem, case, variant="segmented"):
    s, n, causal, kp = case
    b, h, d = 2, 3, 8
    attrs = {LOWERED[variant]: s, "sinks": 0, "scale": 0.3, "causal": causal, "softcap": 0.0}
    # the band variants take sink logits after the key padding: none here (an empty vector), as a lowering needs
    feeds = {**_feeds(b, h, n, d, kp, elem), "SinkLogits": np.zeros(0, np.float32)}
    dims = {**DIMS, "SinkLogits": [0]}
    portable = _run(get_variant(variant).onnx_op_type, attrs, feeds, elem, provider, dims)
    lowered = _run(lowering_op_type(variant), {**attrs, **lowering_attrs(variant, h)}, feeds, elem, provider, dims)
    assert np.isfinite(lowered).all()
    np.testing.assert_allclose(lowered, portable, atol=TOLERANCE[elem], rtol=0)


@pytest.mark.parametrize("variant", sorted(LOWERED))
@pytest.mark.parametrize("elem", [TensorProto.FLOAT, TensorProto.FLOAT16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"S{c[0]}-N{c[1]}-causal{c[2]}-kp_{c[3]}")
def test_lowering_equals_portable_body_cpu(case, elem, variant):
    _compare("CPUExecutionProvider", elem, case, variant)


RELBIAS_DIMS = {"Q": ["B", "H", "N", "D"], "K": ["B", "H", "M", "D"], "V": ["B", "H", "M", "D"],
                "Mask": ["Bm", "Hm", "Nm", "Mm"], "KeyPadding": ["Bk", "M"], "SinkLogits": [0], "slopes": ["H"],
                "table": ["H", "T"]}
RELBIAS_CASES = [  # (kind, N, M, causal, key padding, dense mask)
    ("alibi", 12, 12, 0, "none", False), ("alibi", 9, 12, 1, "finite", False), ("t5", 12, 12, 0, "inf", True),
    ("t5", 7, 7, 1, "none", True), ("alibi", 5, 11, 0, "inf", False),
]


def _relbias_call(elem, case, chunk_rows=None):
    """(portable body's attributes, the lowering's, feeds) of one relbias case. ``chunk_rows``: the lowering's
    Scan takes that many queries a step (default: its own step size, all N in one at these sizes)."""
    kind, n, m, causal, kp_kind, dense = case
    spec = get_variant("relbias")
    b, h, d = 2, 3, 8
    params = {**spec.defaults, "kind": kind, "num_buckets": 8, "max_distance": 12,
              "init_std": 1.0 if kind == "t5" else 0.0, "bias_scale": 0.7}
    dtype = np.float16 if elem == TensorProto.FLOAT16 else np.float32
    rng = np.random.default_rng(1)
    q = rng.standard_normal((b, h, n, d)).astype(dtype)
    k, v = (rng.standard_normal((b, h, m, d)).astype(dtype) for _ in range(2))
    kp = _feeds(b, h, m, d, kp_kind, elem)["KeyPadding"]
    mask = (rng.standard_normal((1, h, n, m)) if dense else np.zeros((1, 1, 1, 1))).astype(dtype)
    feeds = {"Q": q, "K": k, "V": v, "Mask": mask, "KeyPadding": kp, "SinkLogits": np.zeros(0, np.float32),
             **spec.tensors_for(params, q.shape, k.shape, 0)}
    attrs = {**{p: int(x) if isinstance(x, bool) else x for p, x in params.items()}, "scale": 0.3,
             "causal": causal, "softcap": 0.0}
    lowered = {**attrs, **lowering_attrs("relbias", h)}
    if chunk_rows is not None:
        lowered["step_elements"] = chunk_rows * h * m
    return attrs, lowered, feeds


def _compare_relbias(provider, elem, case, chunk_rows=None):
    attrs, lowered_attrs, feeds = _relbias_call(elem, case, chunk_rows)
    portable = _run(get_variant("relbias").onnx_op_type, attrs, feeds, elem, provider, RELBIAS_DIMS)
    lowered = _run(lowering_op_type("relbias"), lowered_attrs, feeds, elem, provider, RELBIAS_DIMS)
    assert np.isfinite(lowered).all()
    np.testing.assert_allclose(lowered, portable, atol=TOLERANCE[elem] * 2, rtol=0)


@pytest.mark.parametrize("chunk_rows", [None, 4, 1], ids=["one-step", "4-rows", "1-row"])
@pytest.mark.parametrize("elem", [TensorProto.FLOAT, TensorProto.FLOAT16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("case", RELBIAS_CASES, ids=lambda c: "-".join(map(str, c)))
def test_relbias_lowering_equals_portable_body_cpu(case, elem, chunk_rows):
    """The lowering walks the queries in chunks (a ragged last one where 4 does not divide N): every chunking
    gives the portable body's output."""
    _compare_relbias("CPUExecutionProvider", elem, case, chunk_rows)


def test_relbias_lowering_aligns_long_chunks():
    """Chunks over 64 rows shrink to 64k + 1, so the keys grow by a multiple of 64: 70 rows become 65, three
    chunks of 135 queries (70 would take two; cross-attention over 1200 keys), and the output is still the
    portable body's."""
    case = ("t5", 135, 1200, 1, "inf", True)
    for elem in (TensorProto.FLOAT, TensorProto.FLOAT16):
        _compare_relbias("CPUExecutionProvider", elem, case, chunk_rows=70)
    _, lowered_attrs, feeds = _relbias_call(TensorProto.FLOAT, case, chunk_rows=70)
    model = onnx.ModelProto.FromString(_model(lowering_op_type("relbias"), lowered_attrs, TensorProto.FLOAT,
                                              RELBIAS_DIMS))
    assert run_counting_steps(model, feeds)[1] == 3


def test_every_lowering_is_tested():
    from attnopt.kernels.registry import variant_names

    assert {v for v in variant_names() if lowering_module(v) is not None} == set(LOWERED) | {"relbias"}


def _cuda_ep() -> bool:
    import torch

    return torch.cuda.is_available() and "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.mark.cuda
@pytest.mark.skipif(not _cuda_ep(), reason="needs a GPU and onnxruntime-gpu")
@pytest.mark.parametrize("variant", sorted(LOWERED))
@pytest.mark.parametrize("elem", [TensorProto.FLOAT, TensorProto.FLOAT16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("case", CASES + [(64, 300, 0, "finite"), (64, 300, 1, "inf")],
                         ids=lambda c: f"S{c[0]}-N{c[1]}-causal{c[2]}-kp_{c[3]}")
def test_lowering_equals_portable_body_cuda(case, elem, variant):
    _compare("CUDAExecutionProvider", elem, case, variant)


@pytest.mark.cuda
@pytest.mark.skipif(not _cuda_ep(), reason="needs a GPU and onnxruntime-gpu")
@pytest.mark.parametrize("elem", [TensorProto.FLOAT, TensorProto.FLOAT16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("case", RELBIAS_CASES, ids=lambda c: "-".join(map(str, c)))
def test_relbias_lowering_equals_portable_body_cuda(case, elem):
    _compare_relbias("CUDAExecutionProvider", elem, case)
    _compare_relbias("CUDAExecutionProvider", elem, case, chunk_rows=4)


@pytest.mark.cuda
@pytest.mark.skipif(not _cuda_ep(), reason="needs a GPU and onnxruntime-gpu")
@pytest.mark.parametrize("variant", ["lsh", "routed"])
@pytest.mark.parametrize("causal", [0, 1])
def test_bucket_bodies_on_cuda_equal_the_cpu_provider(variant, causal):
    """lsh's and routed's portable bodies on the CUDA EP equal the CPU EP's result (which
    test_variant_conformance ties to the spec): several blocks per bucket, rows with no allowed key in a
    pair (key padding of −inf, causality), every test_params case (several rounds, sinks, many buckets), without
    and with GPT-OSS's sink logits (a graph input here, so the If on them runs on the device)."""
    b, h, n, d = 2, 3, 300, 8
    dims = {"Q": [b, h, "N", d], "K": [b, h, "N", d], "V": [b, h, "N", d], "Mask": [1, 1, 1, 1],
            "KeyPadding": [b, "N"], "SinkLogits": ["Hs"]}
    feeds = _feeds(b, h, n, d, "inf", TensorProto.FLOAT, seed=3)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    for params in get_variant(variant).test_params:
        model = onnx_model(variant, params, scale=0.3, causal=causal, dims=dims, q_shape=(b, h, n, d),
                           k_shape=(b, h, n, d)).SerializeToString()
        for sinks in (np.zeros(0, np.float32), np.array([0.5, 4.0, -np.inf], np.float32)):
            run = {**feeds, "SinkLogits": sinks}
            cpu, cuda = (ort.InferenceSession(model, opts, providers=[provider]).run(None, run)[0]
                         for provider in ("CPUExecutionProvider", ("CUDAExecutionProvider", {"use_tf32": "0"})))
            assert np.isfinite(cuda).all(), params
            np.testing.assert_allclose(cuda, cpu, atol=1e-4, rtol=0, err_msg=f"{params} sinks {sinks}")


def test_lowering_declines_what_it_cannot_compute_exactly():
    facts = dict(attrs={"segment_size": 8, "sinks": 0, "softcap": 0.0}, num_heads=4, kv_num_heads=4,
                 dense_mask=False)
    assert choose("segmented", "ort-cuda", LoweringFacts(**facts)) == (lowering_op_type("segmented"), "")
    assert choose("segmented", "portable", LoweringFacts(**facts)) == (None, "")
    for change, words in [({"attrs": {"sinks": 2}}, "sinks"), ({"kv_num_heads": 2}, "GQA"),
                          ({"dense_mask": True}, "mask"), ({"attrs": {"softcap": 30.0}}, "softcap")]:
        op_type, reason = choose("segmented", "ort-cuda", LoweringFacts(**{**facts, **change}))
        assert op_type is None and words in reason
    assert lowering_module("lsh") is None
    assert "no ort-cuda lowering" in choose("lsh", "ort-cuda", LoweringFacts(**facts))[1]
    window = {**facts, "attrs": {"window": 8, "sinks": 0, "softcap": 0.0}}
    assert choose("window", "ort-cuda", LoweringFacts(**window))[0] == lowering_op_type("window")
    assert "KV-cache" in choose("window", "ort-cuda", LoweringFacts(**window, self_attention=False))[1]
    relbias = {**facts, "attrs": {"kind": "alibi", "softcap": 0.0}, "dense_mask": True}
    assert choose("relbias", "ort-cuda", LoweringFacts(**relbias, q_len=64, kv_len=64))[0] == \
        lowering_op_type("relbias")
    # Chunked, its bias is bounded whatever the length: symbolic and long sites are lowered too.
    for n in ("seq", 2**16):
        assert choose("relbias", "ort-cuda", LoweringFacts(**relbias, q_len=n, kv_len=n))[0] == \
            lowering_op_type("relbias")
    assert "softcap" in choose("relbias", "ort-cuda", LoweringFacts(**{**relbias, "attrs": {
        "kind": "alibi", "softcap": 30.0}}))[1]


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    from attnopt.examples import export_example

    return str(export_example("bert", tmp_path_factory.mktemp("ortcuda") / "bert.onnx", seq_len=32))


@pytest.mark.parametrize("variant, params, seq_len", [
    ("segmented", {"segment_size": 16}, 40), ("window", {"window": 8}, 37), ("relbias", {"kind": "alibi"}, 37),
])
def test_rewrite_target_ort_cuda_matches_portable_model(bert, tmp_path, variant, params, seq_len):
    """The whole model rewritten with the lowering equals the portable rewrite, at a length other than the
    export's (the example's length is symbolic)."""
    lowered = attnopt.rewrite(bert, variant, target="ort-cuda", **params)
    assert [(o.target, o.fallback) for o in lowered.report] == [("ort-cuda", "")] * 2
    lowered.save(tmp_path / "lowered.onnx")
    model = onnx.load(tmp_path / "lowered.onnx")
    nodes = {(n.domain, n.op_type) for f in model.functions for n in onnx_functions.all_nodes(f.node)}
    assert ("com.microsoft", "MultiHeadAttention") in nodes
    calls = [n for n in model.graph.node if n.op_type == lowering_op_type(variant)]
    assert calls and all({a.name for a in n.attribute} >= set(lowering_attrs(variant, 2)) for n in calls)
    attnopt.rewrite(bert, variant, **params).save(tmp_path / "portable.onnx")
    report = attnopt.validate(str(tmp_path / "portable.onnx"), str(tmp_path / "lowered.onnx"), seq_len=seq_len)
    assert report.to_dict()["outputs"][0]["max_abs"] < 1e-5


def test_rewrite_target_falls_back_and_says_why(bert):
    result = attnopt.rewrite(bert, "segmented", segment_size=16, sinks=2, target="ort-cuda")
    assert all(o.status == "rewritten" and "sinks" in o.fallback for o in result.report)
    result = attnopt.rewrite(bert, "lsh", target="ort-cuda")
    assert all("no ort-cuda lowering" in o.fallback for o in result.report)


def test_unknown_target_is_a_one_line_error(bert, tmp_path):
    from click.testing import CliRunner

    from attnopt.cli import main

    res = CliRunner().invoke(main, ["rewrite", bert, "--pass", "segmented", "--target", "tpu",
                                    "-o", str(tmp_path / "x.onnx")])
    assert res.exit_code == 2 and "tpu" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "x.onnx").exists()


def test_placement_counts_nodes_inside_if_branches_and_function_bodies(bert, tmp_path):
    """On the CPU EP every node is a CPU node: the count must include the inlined body's If branches."""
    from attnopt.frontends.onnx_frontend import ONNX
    from attnopt.loaded import open_model
    from attnopt.ort_runtime import placement

    path = tmp_path / "portable.onnx"
    attnopt.rewrite(bert, "segmented", segment_size=16).save(path)
    feeds = ONNX.inputs(open_model(str(path)), seq_len=32)
    p = placement(str(path), feeds, "cpu")
    assert p["cpu_nodes"] == p["nodes"] > 0
    assert "Softmax" in p["cpu_ops"] and "If" in p["cpu_ops"]  # the body's Softmax runs inside an If branch


def test_placement_counts_control_flow_nodes_by_their_own_time():
    """An If's kernel runs its branch's nodes, which the profile lists too: the If keeps only what its direct
    children leave (a nested Loop keeps its own share), other threads' nodes are not its children."""
    from attnopt.ort_runtime import _self_times

    def node(op, ts, dur, tid=1):
        return {"ts": ts, "dur": dur, "tid": tid, "args": {"op_name": op}}

    events = [node("MatMul", 10, 30), node("If", 0, 100), node("Loop", 50, 40), node("Add", 60, 10),
              node("Mul", 20, 50, tid=2), node("Sub", 120, 5)]
    assert _self_times(events) == [30.0, 30.0, 30.0, 10.0, 50.0, 5.0]


@pytest.mark.skipif(_cuda_ep(), reason="onnxruntime's CUDA provider works here")
def test_bench_provider_cuda_without_a_gpu_names_what_is_missing(bert):
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "attnopt", "bench", bert, "--pass", "segmented", "--provider", "cuda",
                          "--seq-len", "32"], capture_output=True, text=True)
    assert res.returncode == 2, res.stderr
    assert res.stderr.startswith("error: --provider cuda: ") and res.stderr.count("\n") == 1, res.stderr


@pytest.mark.cuda
@pytest.mark.skipif(not _cuda_ep(), reason="needs a GPU and onnxruntime-gpu")
def test_bench_provider_cuda_binds_on_the_gpu_and_reports_cpu_nodes(bert):
    # segment_size >= N: the exact limit, so the rewritten model must equal the original.
    report = attnopt.bench(bert, "segmented", {"segment_size": 64}, [64], provider="cuda", target="ort-cuda",
                           repeats=2, warmup=1, progress=False)
    (row,) = report.rows
    assert row["original_ms"] and row["rewritten_ms"] and row["max_abs"] < 1e-2, row
    for which in ("original", "rewritten"):
        p = row[which]["placement"]
        assert p["nodes"] > p["cpu_nodes"] >= 0 and row[f"{which}_cpu_nodes"] == p["cpu_nodes"]
    assert "MultiHeadAttention" not in row["rewritten"]["placement"]["cpu_ops"]


def test_memcpy_inputs_names_what_each_copy_carries_subgraphs_included(tmp_path):
    """placement's copy report reads the graph onnxruntime saved: each Memcpy by the op that made its input,
    inside If branches too, an outer-scope producer resolved from the branch."""
    import onnx
    from onnx import TensorProto, helper

    from attnopt.ort_runtime import _memcpy_inputs

    branch = helper.make_graph([helper.make_node("MemcpyToHost", ["r"], ["c"], domain="")], "then", [],
                               [helper.make_tensor_value_info("c", TensorProto.INT64, None)])
    graph = helper.make_graph(
        [helper.make_node("Range", ["a", "a", "a"], ["r"]),
         helper.make_node("Shape", ["r"], ["s"]),
         helper.make_node("MemcpyFromHost", ["s"], ["d"]),
         helper.make_node("MemcpyFromHost", ["a"], ["e"]),
         helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=branch)],
        "g", [helper.make_tensor_value_info(n, t, None) for n, t in (("a", TensorProto.INT64),
                                                                        ("cond", TensorProto.BOOL))],
        [helper.make_tensor_value_info(n, TensorProto.INT64, None) for n in ("d", "e", "y")])
    path = tmp_path / "saved.onnx"
    onnx.save(helper.make_model(graph), path)
    assert _memcpy_inputs(str(path)) == {"MemcpyToHost <- Range": 2, "MemcpyFromHost <- Shape": 1,
                                         "MemcpyFromHost <- input": 1}
    assert _memcpy_inputs(str(tmp_path / "missing.onnx")) == {}
