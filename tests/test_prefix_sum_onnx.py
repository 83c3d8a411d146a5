"""kernels/prefix_sum_onnx.py: PrefixSum is the running sum along axis −2, whatever the length and dtype.

It runs in onnxscript's eager mode, and as a graph-level ``ai.attnopt`` node (how the blocked-row
correction calls it) in onnxruntime's CPU provider, and where a GPU is present on the CUDA provider.
Its torch twin, kernels/prefix_sum.py's op, is cumsum with cumsum's gradient, and a tracer records it.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import torch
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from attnopt.kernels.onnx_functions import attach_functions
from attnopt.kernels.prefix_sum import prefix_sum
from attnopt.kernels.prefix_sum_onnx import SCAN_BLOCK, PrefixSum
from attnopt.onnx_compat import DOMAIN
from bench_scripts import load
from test_ort_cuda import _cuda_ep

# Lengths around the block: shorter than one, exactly one, one over, several with a remainder.
LENGTHS = [1, SCAN_BLOCK - 1, SCAN_BLOCK, SCAN_BLOCK + 1, 5 * SCAN_BLOCK + 7]


def _input(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * 7).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.int32, np.int64])
@pytest.mark.parametrize("length", LENGTHS)
def test_prefix_sum_is_the_running_sum_along_axis_minus_two(length, dtype):
    for lead in ((), (2,), (2, 3)):
        x = _input((*lead, length, 5), dtype)
        got = np.asarray(PrefixSum(x))
        assert got.dtype == x.dtype and got.shape == x.shape
        np.testing.assert_allclose(got, np.cumsum(x, axis=-2, dtype=x.dtype), rtol=1e-5, atol=1e-3)


def prefix_sum_model(elem: int, dims: list) -> bytes:
    """One graph-level ai.attnopt::PrefixSum node, as a rewrite emits it."""
    node = helper.make_node("PrefixSum", ["X"], ["Y"], domain=DOMAIN)
    graph = helper.make_graph([node], "prefix_sum", [helper.make_tensor_value_info("X", elem, dims)],
                              [helper.make_tensor_value_info("Y", elem, dims)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    attach_functions(model, ["PrefixSum"])
    onnx.checker.check_model(model)
    return model.SerializeToString()


@pytest.mark.parametrize("elem, dtype", [(TensorProto.FLOAT, np.float32), (TensorProto.INT64, np.int64)])
def test_prefix_sum_node_runs_in_onnxruntime(elem, dtype):
    sess = ort.InferenceSession(prefix_sum_model(elem, ["B", "L", "C"]), providers=["CPUExecutionProvider"])
    for length in (*LENGTHS, 4099):
        x = _input((2, length, 3), dtype, seed=length)
        np.testing.assert_allclose(sess.run(None, {"X": x})[0], np.cumsum(x, axis=1, dtype=dtype),
                                   rtol=1e-5, atol=1e-2)


@pytest.mark.cuda
@pytest.mark.skipif(not _cuda_ep(), reason="needs a GPU and onnxruntime-gpu")
@pytest.mark.parametrize("elem, dtype", [(TensorProto.FLOAT, np.float32), (TensorProto.INT32, np.int32)])
def test_prefix_sum_node_on_the_cuda_provider(elem, dtype):
    sess = ort.InferenceSession(prefix_sum_model(elem, ["B", "L", "C"]), providers=["CUDAExecutionProvider"])
    x = (np.random.default_rng(1).random((3, 16387, 5)) < 0.5).astype(dtype)  # 0/1: float sums stay exact
    np.testing.assert_array_equal(sess.run(None, {"X": x})[0], np.cumsum(x, axis=1, dtype=dtype))


def test_benchmark_script_times_both_and_checks_they_agree(tmp_path):
    """benchmarks/ort_prefix_sum.py on the CPU provider at a small length: every row compares equal."""
    out = tmp_path / "rows.json"
    load("ort_prefix_sum").main(["--provider", "cpu", "--n", "100", "--budget-s", "0", "--json", str(out)])
    rows = json.loads(out.read_text())
    assert len(rows) == 2 and all(r["equal"] and r["cumsum_ms"] > 0 and r["prefix_sum_ms"] > 0 for r in rows)


def test_torch_op_is_cumsum_with_its_gradient_and_a_tracer_records_it():
    x = torch.randn(2, 7, 3, dtype=torch.float64, requires_grad=True)
    assert torch.equal(torch.ops.attnopt.prefix_sum(x), x.cumsum(-2))
    assert torch.autograd.gradcheck(torch.ops.attnopt.prefix_sum, (x,))

    class Summing(torch.nn.Module):
        def forward(self, t):
            return prefix_sum(t) * 2

    graph = torch.export.export(Summing(), (x.detach(),)).graph
    assert [n.target for n in graph.nodes if n.op == "call_function"][0] == torch.ops.attnopt.prefix_sum.default
