"""segmented attention: reference (spec) vs torch op vs ONNX body in onnxruntime."""

from __future__ import annotations

import functools
import math
import subprocess
import sys

import numpy as np
import onnx
import onnx.inliner
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper
from torch.utils._python_dispatch import TorchDispatchMode

import attnopt.kernels.segmented  # noqa: F401  (registers torch.ops.attnopt.segmented_attention)
from attnopt.kernels import onnx_functions, reference
from attnopt.kernels.registry import COMMON_ATTRS, get_kernel

B, H, D, S = 2, 4, 8, 8
SCALE = 1 / math.sqrt(D)
TOL = dict(atol=1e-5, rtol=1e-5)
op = torch.ops.attnopt.segmented_attention


# --- helpers -----------------------------------------------------------------------


def make_qkv(n, hkv=H, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, n, D, generator=gen)
    k = torch.randn(B, hkv, n, D, generator=gen)
    v = torch.randn(B, hkv, n, D, generator=gen)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def make_mask(kind, n, seed=1):
    """(mask for the reference, the same mask as the additive float the op takes)."""
    gen = torch.Generator().manual_seed(seed)
    if kind == "none":
        return None, None
    if kind == "key-padding":  # (B, 1, 1, N) with -inf holes
        m = torch.where(torch.rand(B, 1, 1, n, generator=gen) < 0.3, float("-inf"), 0.0)
        return m, m
    if kind == "full":  # (B, 1, N, N) arbitrary additive bias
        m = torch.randn(B, 1, n, n, generator=gen)
        return m, m
    if kind == "bool-full":  # True = may attend
        m = torch.rand(B, 1, n, n, generator=gen) < 0.7
        return m, as_additive(m)
    raise AssertionError(kind)


def as_additive(bool_mask):
    return torch.where(bool_mask, 0.0, float("-inf"))


def run_op(q, k, v, mask, segment_size, sinks, causal, scale=SCALE):
    return op(q, k, v, mask, segment_size, sinks, scale, causal)


SYMBOLIC_DIMS = {
    "Q": ["B", "H", "N", "D"],
    "K": ["B", "Hkv", "N", "D"],
    "V": ["B", "Hkv", "N", "D"],
    "Mask": ["Bm", "Hm", "Nm", "Mm"],
}


def segmented_model(opset, segment_size, sinks, causal, scale=SCALE, dims=SYMBOLIC_DIMS, elem_type=TensorProto.FLOAT):
    """A model with one ai.attnopt::SegmentedAttention node and no function attached yet.

    Q, K, V and Y have ``elem_type``; the Mask is always float32.
    """
    node = helper.make_node(
        "SegmentedAttention",
        ["Q", "K", "V", "Mask"],
        ["Y"],
        domain=onnx_functions.DOMAIN,
        segment_size=segment_size,
        sinks=sinks,
        scale=scale,
        causal=int(causal),
    )
    graph = helper.make_graph(
        [node],
        "segmented",
        [
            helper.make_tensor_value_info(name, TensorProto.FLOAT if name == "Mask" else elem_type, shape)
            for name, shape in dims.items()
        ],
        [helper.make_tensor_value_info("Y", elem_type, dims["Q"])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)


@functools.lru_cache(maxsize=None)
def onnx_session(opset, segment_size, sinks, causal, scale=SCALE):
    """Every dimension symbolic, N included."""
    model = segmented_model(opset, segment_size, sinks, causal, scale)
    onnx_functions.attach_functions(model, ["SegmentedAttention"])
    onnx.checker.check_model(model, full_check=True)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def run_onnx(q, k, v, mask, segment_size, sinks, causal, opset=18, scale=SCALE):
    if mask is None:  # the documented "no mask" form
        mask = torch.zeros(1, 1, 1, 1, dtype=q.dtype)
    sess = onnx_session(opset, segment_size, sinks, causal, scale)
    feeds = {name: t.numpy() for name, t in zip("QKV", (q, k, v))}
    feeds["Mask"] = mask.numpy()
    (y,) = sess.run(None, feeds)
    return torch.from_numpy(y)


def sdpa(q, k, v, mask=None, causal=False):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=True)


# --- the spec itself -----------------------------------------------------------------


def test_allowed_pattern_is_segments_plus_sinks():
    allowed = reference.with_sinks(reference.segment_allowed(5, 2), 1)
    expected = torch.tensor(
        [
            [1, 1, 0, 0, 0],
            [1, 1, 0, 0, 0],
            [1, 0, 1, 1, 0],
            [1, 0, 1, 1, 0],
            [1, 0, 0, 0, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(allowed, expected)


@pytest.mark.parametrize("mask_kind", ["none", "full", "bool-full"])
@pytest.mark.parametrize("causal", [False, True])
def test_dense_reference_matches_sdpa(mask_kind, causal):
    q, k, v = make_qkv(20, hkv=2)
    mask, _ = make_mask(mask_kind, 20)
    if mask is not None and mask.dtype == torch.bool:
        mask = mask | torch.eye(20, dtype=torch.bool)  # SDPA's empty-row convention differs
    sdpa_mask = mask
    if causal and mask is not None:  # SDPA takes either a mask or is_causal
        tril = torch.ones(20, 20, dtype=torch.bool).tril()
        sdpa_mask = mask & tril if mask.dtype == torch.bool else mask.masked_fill(~tril, float("-inf"))
    expected = sdpa(q, k, v, sdpa_mask, causal and mask is None)
    torch.testing.assert_close(reference.dense_attention(q, k, v, mask=mask, causal=causal), expected, **TOL)


def test_reference_differs_from_dense_below_the_limit():
    q, k, v = make_qkv(24)
    dense = reference.dense_attention(q, k, v)
    assert (reference.segmented_attention(q, k, v, segment_size=8) - dense).abs().max() > 1e-2
    assert (reference.segmented_attention(q, k, v, segment_size=8, sinks=3) - dense).abs().max() > 1e-2


def test_sinks_covering_every_key_is_dense():
    q, k, v = make_qkv(20)
    torch.testing.assert_close(
        reference.segmented_attention(q, k, v, segment_size=3, sinks=20), reference.dense_attention(q, k, v), **TOL
    )


# --- reference vs op vs ONNX body ----------------------------------------------------


@pytest.mark.parametrize("mask_kind", ["none", "key-padding", "full", "bool-full"])
@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize("sinks", [0, 3, S + 2])
@pytest.mark.parametrize("hkv", [H, 2], ids=["mha", "gqa"])
@pytest.mark.parametrize("n", [20, 24], ids=["ragged", "whole"])
def test_implementations_match_reference(n, hkv, sinks, causal, mask_kind):
    q, k, v = make_qkv(n, hkv)
    ref_mask, additive = make_mask(mask_kind, n)
    expected = reference.segmented_attention(q, k, v, segment_size=S, sinks=sinks, mask=ref_mask, causal=causal)
    torch.testing.assert_close(run_op(q, k, v, additive, S, sinks, causal), expected, **TOL)
    for opset in (18, 23):
        torch.testing.assert_close(run_onnx(q, k, v, additive, S, sinks, causal, opset=opset), expected, **TOL)


@pytest.mark.parametrize("mask_shape", [(1, 1, 1, 20), (B, H, 20, 20), (1, H, 1, 1), (B, 1, 20, 1)])
def test_mask_broadcast_shapes(mask_shape):
    q, k, v = make_qkv(20, hkv=2)
    mask = torch.randn(mask_shape, generator=torch.Generator().manual_seed(3))
    expected = reference.segmented_attention(q, k, v, segment_size=S, sinks=3, mask=mask, causal=True)
    torch.testing.assert_close(run_op(q, k, v, mask, S, 3, True), expected, **TOL)
    torch.testing.assert_close(run_onnx(q, k, v, mask, S, 3, True), expected, **TOL)


def test_expanded_mask_is_read_without_copy():
    # A stride-0 (expanded) key-padding mask: the op must index it, not reshape it.
    q, k, v = make_qkv(20)
    mask = torch.randn(B, 1, 1, 20).expand(B, H, 20, 20)
    expected = reference.segmented_attention(q, k, v, segment_size=S, mask=mask)
    torch.testing.assert_close(run_op(q, k, v, mask, S, 0, False), expected, **TOL)


@pytest.mark.parametrize("sinks", [0, 3])
def test_fully_masked_row_is_zero(sinks):
    n, row = 20, 5
    q, k, v = make_qkv(n)
    mask = torch.zeros(1, 1, n, n)
    mask[..., row, :] = float("-inf")
    outputs = [
        reference.segmented_attention(q, k, v, segment_size=S, sinks=sinks, mask=mask),
        run_op(q, k, v, mask, S, sinks, False),
        run_onnx(q, k, v, mask, S, sinks, False),
    ]
    for out in outputs:
        assert torch.equal(out[:, :, row], torch.zeros(B, H, D))
        assert out[:, :, row + 1].abs().min() > 0
        assert not out.isnan().any()


def test_segment_masked_but_sinks_visible_is_not_zero():
    # Row 9's own segment is fully masked; the sinks keep it alive.
    n = 20
    q, k, v = make_qkv(n)
    mask = torch.zeros(1, 1, n, n)
    mask[..., 9, 8:16] = float("-inf")
    expected = reference.segmented_attention(q, k, v, segment_size=S, sinks=3, mask=mask)
    assert expected[:, :, 9].abs().min() > 0
    torch.testing.assert_close(run_op(q, k, v, mask, S, 3, False), expected, **TOL)
    torch.testing.assert_close(run_onnx(q, k, v, mask, S, 3, False), expected, **TOL)


def test_finfo_min_row_is_ordinary_softmax():
    # HF masks with finfo.min: a row masked that way is a uniform average, not 0.
    n, row = 20, 5
    q, k, v = make_qkv(n)
    mask = torch.zeros(1, 1, n, n)
    mask[..., row, :] = torch.finfo(torch.float32).min
    expected = reference.segmented_attention(q, k, v, segment_size=S, mask=mask)
    assert expected[:, :, row].abs().max() > 0
    torch.testing.assert_close(run_op(q, k, v, mask, S, 0, False), expected, **TOL)
    torch.testing.assert_close(run_onnx(q, k, v, mask, S, 0, False), expected, **TOL)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_computes_in_float32(dtype):
    q, k, v = make_qkv(20, hkv=2, dtype=dtype)
    expected = reference.segmented_attention(q.float(), k.float(), v.float(), segment_size=S, sinks=3, causal=True)
    out = run_op(q, k, v, None, S, 3, True)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), expected, atol=1e-2, rtol=1e-2)
    if dtype == torch.float16:  # numpy has no bfloat16
        model = segmented_model(18, S, 3, True, elem_type=TensorProto.FLOAT16)
        onnx_functions.attach_functions(model, ["SegmentedAttention"])
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        feeds = {name: t.numpy() for name, t in zip("QKV", (q, k, v))}
        (y,) = sess.run(None, {**feeds, "Mask": np.zeros((1, 1, 1, 1), np.float32)})
        assert y.dtype == np.float16
        torch.testing.assert_close(torch.from_numpy(y).float(), expected, atol=1e-2, rtol=1e-2)


# --- exact limit -------------------------------------------------------------------------


@pytest.mark.parametrize("segment_size", [20, 25, 1 << 20])
@pytest.mark.parametrize("causal", [False, True])
def test_exact_limit_is_dense(segment_size, causal):
    n = 20
    q, k, v = make_qkv(n, hkv=2)
    mask = torch.randn(B, 1, n, n, generator=torch.Generator().manual_seed(4))
    scale = 0.3
    dense = reference.dense_attention(q, k, v, scale=scale, mask=mask, causal=causal)
    # SDPA takes a mask or is_causal, not both.
    sdpa_mask = mask.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), float("-inf")) if causal else mask
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=sdpa_mask, scale=scale, enable_gqa=True)
    torch.testing.assert_close(dense, expected, **TOL)
    torch.testing.assert_close(
        reference.segmented_attention(q, k, v, segment_size=segment_size, scale=scale, mask=mask, causal=causal),
        dense,
        **TOL,
    )
    torch.testing.assert_close(run_op(q, k, v, mask, segment_size, 0, causal, scale=scale), dense, **TOL)
    torch.testing.assert_close(run_onnx(q, k, v, mask, segment_size, 0, causal, scale=scale), dense, **TOL)


# --- refusals --------------------------------------------------------------------------


def test_cross_attention_is_refused():
    q, _, _ = make_qkv(20)
    _, k, v = make_qkv(24)
    with pytest.raises(ValueError, match="self-attention"):
        reference.segmented_attention(q, k, v, segment_size=S)
    with pytest.raises(ValueError, match="self-attention"):
        run_op(q, k, v, None, S, 0, False)


@pytest.mark.parametrize("segment_size, sinks, message", [(0, 0, "segment_size"), (8, -1, "sinks")])
def test_bad_parameters_are_refused(segment_size, sinks, message):
    q, k, v = make_qkv(20)
    with pytest.raises(ValueError, match=message):
        reference.segmented_attention(q, k, v, segment_size=segment_size, sinks=sinks)
    with pytest.raises(ValueError, match=message):
        run_op(q, k, v, None, segment_size, sinks, False)


def test_op_refuses_boolean_mask():
    q, k, v = make_qkv(20)
    with pytest.raises(ValueError, match="additive"):
        run_op(q, k, v, torch.ones(1, 1, 20, 20, dtype=torch.bool), S, 0, False)


# --- torch integration ---------------------------------------------------------------------


def test_opcheck():
    q, k, v = (t[:1] for t in make_qkv(10, hkv=2))
    mask = torch.randn(1, 1, 10, 10)
    torch.library.opcheck(op, (q, k, v, mask, 4, 2, 0.3, True))
    torch.library.opcheck(op, (q, k, v, None, 4, 0, 0.3, False))


def test_torch_export_with_symbolic_length():
    class Segmented(torch.nn.Module):
        def forward(self, q, k, v, mask):
            return op(q, k, v, mask, S, 3, SCALE, True)

    q, k, v = make_qkv(20, hkv=2)
    mask = torch.randn(B, 1, 20, 20)
    n = torch.export.Dim("N", min=2, max=4096)
    program = torch.export.export(
        Segmented(), (q, k, v, mask), dynamic_shapes=({2: n}, {2: n}, {2: n}, {2: n, 3: n})
    )
    targets = [node.target for node in program.graph.nodes if node.op == "call_function"]
    assert targets == [op.default]
    q, k, v = make_qkv(27, hkv=2)
    mask = torch.randn(B, 1, 27, 27)
    torch.testing.assert_close(program.module()(q, k, v, mask), run_op(q, k, v, mask, S, 3, True))


# --- the contract is ordered in one place ------------------------------------------------------


def test_signatures_follow_the_registry():
    spec = get_kernel("segmented_attention")
    assert spec.torch_op is op
    assert spec.onnx_op_type == onnx_functions.onnx_op_type("segmented_attention") == "SegmentedAttention"
    torch_args = [a.name for a in op.default._schema.arguments]
    assert torch_args == ["q", "k", "v", "mask", *spec.attrs, *COMMON_ATTRS]
    proto = onnx_functions.function_proto(spec.onnx_op_type, 18)
    assert list(proto.input) == ["Q", "K", "V", "Mask"]
    assert list(proto.attribute) == [*spec.attrs, *COMMON_ATTRS]
    schema = onnx.defs.get_schema(spec.onnx_op_type, 1, onnx_functions.DOMAIN)
    assert set(schema.attributes) == {*spec.attrs, *COMMON_ATTRS}


def test_registry_import_does_not_load_onnxscript():
    code = (
        "import sys, attnopt; before = 'onnxscript' in sys.modules\n"
        "import attnopt.kernels, attnopt.kernels.registry\n"
        "assert before or 'onnxscript' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- attaching functions -----------------------------------------------------------------------


def test_function_proto_takes_the_model_opset():
    for version in (17, 18, 23):
        proto = onnx_functions.function_proto("SegmentedAttention", version)
        assert {o.domain: o.version for o in proto.opset_import} == {"": version}
    with pytest.raises(ValueError, match="opset"):
        onnx_functions.function_proto("SegmentedAttention", 13)


def test_attach_functions_to_onnx_ir_model_is_idempotent():
    import onnx_ir as ir

    proto = segmented_model(23, S, 3, True)
    model = ir.serde.deserialize_model(proto)
    onnx_functions.attach_functions(model, ["SegmentedAttention"])
    onnx_functions.attach_functions(model, ["SegmentedAttention", "SegmentedAttention"])
    assert len(model.functions) == 1
    assert model.opset_imports[onnx_functions.DOMAIN] == 1
    (fn,) = model.functions.values()
    assert fn.opset_imports[""] == 23
    saved = ir.serde.serialize_model(model)
    onnx.checker.check_model(saved, full_check=True)
    sess = ort.InferenceSession(saved.SerializeToString(), providers=["CPUExecutionProvider"])
    q, k, v = make_qkv(20, hkv=2)
    (y,) = sess.run(None, {"Q": q.numpy(), "K": k.numpy(), "V": v.numpy(), "Mask": np.zeros((1, 1, 1, 1), np.float32)})
    expected = reference.segmented_attention(q, k, v, segment_size=S, sinks=3, causal=True)
    torch.testing.assert_close(torch.from_numpy(y), expected, **TOL)


# --- cost: no N×N intermediate --------------------------------------------------------------------


class MaxNumel(TorchDispatchMode):
    """Records the largest tensor any aten op produces."""

    def __init__(self):
        super().__init__()
        self.max_numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.max_numel = max(self.max_numel, t.numel())
        return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cpu_op_builds_nothing_quadratic(dtype):
    n, seg = 4096, 64
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, n, 16, generator=gen).to(dtype) for _ in range(3))
    mask = torch.randn(1, 1, n, n, generator=gen).to(dtype)  # a full mask is input, not intermediate
    with MaxNumel() as seen:
        run_op(q, k, v, mask, seg, 4, True)
    assert seen.max_numel < n * n // 16

    # The detector itself: the reference does build N×N.
    q, k, v, mask = q[..., :256, :], k[..., :256, :], v[..., :256, :], mask[..., :256, :256]
    with MaxNumel() as seen:
        reference.segmented_attention(q, k, v, segment_size=seg, mask=mask)
    assert seen.max_numel >= 256 * 256


def test_onnx_body_builds_nothing_quadratic():
    # One batch and kv head, so any per-head N×N tensor would have >= N*N elements.
    n, seg, hq = 192, 16, 2
    dims = {"Q": [1, hq, "N", D], "K": [1, 1, "N", D], "V": [1, 1, "N", D], "Mask": [1, 1, "N", "N"]}
    model = segmented_model(18, seg, 4, True, dims=dims)
    onnx_functions.attach_functions(model, ["SegmentedAttention"])
    model = onnx.shape_inference.infer_shapes(onnx.inliner.inline_local_functions(model))
    types = {vi.name: vi.type.tensor_type.elem_type for vi in model.graph.value_info}
    produced = [out for node in model.graph.node for out in node.output if out != "Y"]
    assert len(produced) > 40 and set(produced) <= set(types)
    # A Reshape of a graph input is a view in onnxruntime (it aliases its input).
    views = {node.output[0] for node in model.graph.node if node.op_type == "Reshape" and node.input[0] == "Mask"}
    model.graph.output.extend(helper.make_tensor_value_info(name, types[name], None) for name in produced)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, h, n, D, generator=gen) for h in (hq, 1, 1))
    mask = torch.randn(1, 1, n, n, generator=gen)
    results = sess.run(None, {"Q": q.numpy(), "K": k.numpy(), "V": v.numpy(), "Mask": mask.numpy()})
    sizes = {out.name: arr.size for out, arr in zip(model.graph.output, results)}
    assert not {name: size for name, size in sizes.items() if size >= n * n and name not in views}
    torch.testing.assert_close(
        torch.from_numpy(results[0]),
        reference.segmented_attention(q, k, v, segment_size=seg, sinks=4, mask=mask, causal=True),
        **TOL,
    )
