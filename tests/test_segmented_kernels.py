"""segmented attention: what is specific to it, and the shared machinery that attaches ONNX bodies.

What every variant must satisfy (reference == op == ONNX body over ragged /
GQA / masks / causal / softcap, exact limit == dense at ``exact_params``,
fp16/bf16, signatures consistent with the spec, nothing quadratic with key
padding) is tests/test_variant_conformance.py's. Here: segmented's allowed
pattern and contract, its edge cases (whole segments, sinks, broadcast and
expanded masks, empty rows, its key-padding fast path), its refusals, its
torch integration, and reading a dense mask block by block.
"""

from __future__ import annotations

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
from onnx import helper

from attnopt.errors import InvalidParamsError
from attnopt.kernels import onnx_functions
from attnopt.kernels.reference import band_allowed, dense_attention, with_sinks
from attnopt.kernels.registry import get_variant
from attnopt.onnx_compat import DOMAIN, DOMAIN_VERSION
from attnopt.passes import OpCall, Refusal, make_pass
from attnopt.site import AttentionSite, ValueRef
from kernel_harness import MaxNumel, onnx_model, run_onnx, run_op, run_reference

NAME = "segmented"
SPEC = get_variant(NAME)
B, H, D, S = 2, 4, 8, 8
SCALE = 1 / math.sqrt(D)
TOL = dict(atol=1e-5, rtol=1e-5)
op = SPEC.torch_op  # torch.ops.attnopt.segmented_attention (registered on first use)


# --- helpers -----------------------------------------------------------------------


def params(segment_size=S, sinks=0):
    return {"segment_size": segment_size, "sinks": sinks}


def make_qkv(n, hkv=H, seed=0, m=None):
    gen = torch.Generator().manual_seed(seed)
    m = n if m is None else m
    return torch.randn(B, H, n, D, generator=gen), torch.randn(B, hkv, m, D, generator=gen), \
        torch.randn(B, hkv, m, D, generator=gen)


def three_ways(q, k, v, p, **kw):
    """The reference; the torch op and the ONNX body must equal it. Returns the reference's output."""
    kw.setdefault("scale", SCALE)
    expected = run_reference(NAME, q, k, v, p, **kw)
    torch.testing.assert_close(run_op(NAME, q, k, v, p, **kw), expected, **TOL, msg=lambda m: f"torch op: {m}")
    torch.testing.assert_close(run_onnx(NAME, q, k, v, p, **kw), expected, **TOL, msg=lambda m: f"ONNX body: {m}")
    return expected


def sdpa(q, k, v, mask=None, causal=False, scale=None):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scale, enable_gqa=True)


def site(q_len, kv_len, past_len=None):
    return AttentionSite(name="attn", form="sdpa", query=ValueRef("q"), key=ValueRef("k"), value=ValueRef("v"),
                         output=ValueRef("y"), num_heads=H, kv_num_heads=H, head_dim=D, q_len=q_len, kv_len=kv_len,
                         past_len=past_len)


# --- the spec itself -----------------------------------------------------------------


def test_allowed_pattern_is_segments_plus_sinks():
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
    assert torch.equal(with_sinks(band_allowed(5, 5, 2, 0, 0), 1), expected)
    # The reference attends exactly there: zero queries spread uniformly over the
    # allowed keys, and one-hot values read that spread back.
    q = torch.zeros(1, 1, 5, 5)
    v = torch.eye(5)[None, None]
    out = SPEC.reference(q, q, v, segment_size=2, sinks=1)
    torch.testing.assert_close(out[0, 0], expected / expected.sum(-1, keepdim=True))


def test_segmented_contract():
    """The op contract, spelled out: names and order (the conformance test checks them against each other)."""
    assert SPEC.torch_op is op is torch.ops.attnopt.segmented_attention
    assert SPEC.onnx_op_type == "SegmentedAttention"
    assert [a.name for a in op.default._schema.arguments] == [
        "q", "k", "v", "mask", "key_padding", "segment_size", "sinks", "scale", "causal", "softcap", "sink_logits"]
    proto = onnx_functions.function_proto("SegmentedAttention", 18)
    assert (proto.domain, proto.name) == (DOMAIN, "SegmentedAttention")
    assert list(proto.input) == ["Q", "K", "V", "Mask", "KeyPadding", "SinkLogits"]
    assert list(proto.attribute) == ["segment_size", "sinks", "scale", "causal", "softcap"]
    assert SPEC.defaults == {"segment_size": 512, "sinks": 0}
    assert not SPEC.kv_cache and SPEC.needs_self_attention and SPEC.subquadratic


@pytest.mark.parametrize("mask_kind", ["none", "full", "bool-full", "key-padding"])
@pytest.mark.parametrize("causal", [False, True])
def test_dense_reference_matches_sdpa(mask_kind, causal):
    n = 20
    q, k, v = make_qkv(n, hkv=2)
    gen = torch.Generator().manual_seed(1)
    mask = key_padding = None
    if mask_kind == "full":
        mask = torch.randn(B, 1, n, n, generator=gen)
    elif mask_kind == "bool-full":  # True = may attend; the diagonal keeps every row alive (SDPA's empty rows differ)
        mask = (torch.rand(B, 1, n, n, generator=gen) < 0.7) | torch.eye(n, dtype=torch.bool)
    elif mask_kind == "key-padding":
        key_padding = torch.zeros(B, n)
        key_padding[0, -4:] = float("-inf")
        key_padding[1, 3] = torch.finfo(torch.float32).min
    sdpa_mask = mask if key_padding is None else key_padding[:, None, None, :]
    if causal and sdpa_mask is not None:  # SDPA takes either a mask or is_causal
        tril = torch.ones(n, n, dtype=torch.bool).tril()
        sdpa_mask = sdpa_mask & tril if sdpa_mask.dtype == torch.bool else sdpa_mask.masked_fill(~tril, float("-inf"))
    expected = sdpa(q, k, v, sdpa_mask, causal and sdpa_mask is None)
    got = dense_attention(q, k, v, mask=mask, key_padding=key_padding, causal=causal)
    torch.testing.assert_close(got, expected, **TOL)


# --- exact limits ------------------------------------------------------------------------


@pytest.mark.parametrize("segment_size", [20, 25, 1 << 20, (1 << 31) - 1])
@pytest.mark.parametrize("causal", [False, True])
def test_exact_limit_with_huge_segments_is_dense(segment_size, causal):
    n = 20
    q, k, v = make_qkv(n, hkv=2)
    gen = torch.Generator().manual_seed(4)
    mask = torch.randn(B, 1, n, n, generator=gen)
    key_padding = torch.zeros(B, n)
    key_padding[1, -3:] = float("-inf")
    kw = dict(scale=0.3, mask=mask, key_padding=key_padding, causal=causal)
    dense = dense_attention(q, k, v, **kw)
    torch.testing.assert_close(three_ways(q, k, v, params(segment_size), **kw), dense, **TOL)


@pytest.mark.parametrize("sinks", [20, 21, 1 << 20])
def test_sinks_covering_every_key_is_dense(sinks):
    q, k, v = make_qkv(20)
    out = three_ways(q, k, v, params(3, sinks), causal=True)
    torch.testing.assert_close(out, dense_attention(q, k, v, scale=SCALE, causal=True), **TOL)


# --- paths of the ONNX body and of the op ----------------------------------------------------


@pytest.mark.parametrize("sinks", [0, 3])
@pytest.mark.parametrize("hkv", [H, 2], ids=["mha", "gqa"])
def test_whole_segments(hkv, sinks):
    """N a multiple of S with nothing masked: the body's plain path (no bias, no padding) when sinks are 0."""
    q, k, v = make_qkv(24, hkv=hkv)
    for causal in (False, True):
        out = three_ways(q, k, v, params(S, sinks), causal=causal)
        assert not torch.allclose(out, dense_attention(q, k, v, scale=SCALE, causal=causal))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("before,sinks", [(0, 0), (0, 3), (S, 0), (S, S), (S, 2)],
                         ids=["segmented", "sinks", "memory", "memory-sinks=S", "memory-sinks"])
@pytest.mark.parametrize("causal", [False, True])
def test_cpu_op_folds_whole_segments_into_fused_attention(before, sinks, causal, dtype, monkeypatch):
    """Whole segments with only causality and sinks on top: the CPU op runs torch's fused attention on the
    segments folded into the batch (band.segment_fold), merging memory and sinks by log-sum-exp; it must
    equal the spec and the blocked path, and it must be the path taken."""
    from attnopt.kernels import band
    from attnopt.kernels.reference import restricted_attention

    runs = []
    folded = band._folded_segments_cpu
    monkeypatch.setattr(band, "_folded_segments_cpu", lambda *a, **kw: runs.append(1) or folded(*a, **kw))
    n = 4 * S
    q, k, v = (t.to(dtype) for t in make_qkv(n))
    kw = dict(unit=S, before=before, after=0, sinks=sinks, scale=SCALE, causal=causal)
    fast = band.band_attention(q, k, v, None, None, **kw)
    assert runs, "the fold did not run"
    blocked = band.band_attention(q, k, v, None, None, **kw, block=S)
    allowed = with_sinks(band_allowed(n, n, S, before, 0), sinks)
    spec = restricted_attention(q.float(), k.float(), v.float(), allowed, scale=SCALE, causal=causal)
    tol = TOL if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(fast.float(), spec, **tol)
    torch.testing.assert_close(fast.float(), blocked.float(), **tol)
    assert fast.dtype == dtype
    if before == 0:  # the segmented op has its own blocked code; whole segments take the same fold
        runs.clear()
        op = SPEC.torch_op(q, k, v, None, None, S, sinks, SCALE, causal, 0.0)
        assert runs, "the segmented op did not fold"
        torch.testing.assert_close(op.float(), spec, **tol)


@pytest.mark.parametrize("case", ["ragged", "key_padding", "gqa", "window"])
def test_cpu_op_fold_refuses_what_is_not_whole_segments(case):
    """The fold is exact only for whole segments with nothing on top: these keep the blocked path."""
    from attnopt.kernels.band import segment_fold

    n, hkv, kp, after = {"ragged": (4 * S + 3, H, None, 0), "key_padding": (4 * S, H, torch.zeros(B, 4 * S), 0),
                         "gqa": (4 * S, 2, None, 0), "window": (4 * S, H, None, S)}[case]
    q, k, _ = make_qkv(n, hkv=hkv)
    assert segment_fold(q, k, unit=S, before=0, after=after, sinks=0, softcap=0.0, key_padding=kp, mask=None) is None


@pytest.mark.parametrize("sinks", [0, 3, S + 2])
@pytest.mark.parametrize("n", [20, 24], ids=["ragged", "whole"])
def test_key_padding_fast_path(n, sinks):
    """A (B, M) KeyPadding with no causality or softcap is the body's per-key path ([q, 1]·[k, bias])."""
    q, k, v = make_qkv(n, hkv=2)
    kp = torch.zeros(B, n)
    kp[0, 8:16] = float("-inf")  # batch 0: the whole second segment is padding
    kp[0, -2:] = float("-inf")
    kp[1, 5] = torch.finfo(torch.float32).min
    kp[1, 1] = float("-inf")  # a padded sink
    out = three_ways(q, k, v, params(S, sinks), key_padding=kp)
    if sinks:
        assert out[0, :, 8:16].abs().min() > 0  # the sinks keep the padded segment's rows alive
    else:
        assert torch.equal(out[0, :, 8:16], torch.zeros(H, 8, D))
    # Broadcast over the batch, and joined by a per-key dense mask: still one column per key.
    three_ways(q, k, v, params(S, sinks), key_padding=kp[:1])
    three_ways(q, k, v, params(S, sinks), key_padding=kp, mask=torch.randn(B, 1, 1, n))
    three_ways(q, k, v, params(S, sinks), key_padding=kp[1:], mask=torch.full((1, 1, 1, 1), 0.5))


@pytest.mark.parametrize("value", [2.5, float("-inf")])
@pytest.mark.parametrize("which", ["mask", "key_padding"])
def test_one_element_mask_on_the_plain_path(which, value):
    """Whole segments, no sinks, a one-element mask: a constant softmax ignores, or −inf, which allows no key."""
    q, k, v = make_qkv(24, hkv=2)
    given = {"mask": torch.full((1, 1, 1, 1), value)} if which == "mask" else {"key_padding": torch.full((1, 1), value)}
    out = three_ways(q, k, v, params(S, 0), **given)
    plain = run_reference(NAME, q, k, v, params(S, 0), scale=SCALE)
    if value == float("-inf"):
        assert torch.equal(out, torch.zeros_like(out))
    else:
        torch.testing.assert_close(out, plain, **TOL)


@pytest.mark.parametrize("mask_shape", [(1, 1, 1, 20), (B, H, 20, 20), (1, H, 1, 1), (B, 1, 20, 1), (B, 1, 1, 1)])
def test_mask_broadcast_shapes(mask_shape):
    q, k, v = make_qkv(20, hkv=2)
    mask = torch.randn(mask_shape, generator=torch.Generator().manual_seed(3))
    three_ways(q, k, v, params(S, 3), mask=mask, causal=True)
    three_ways(q, k, v, params(S, 3), mask=mask, key_padding=torch.zeros(B, 20))


def test_expanded_mask_is_read_without_copy():
    # A stride-0 (expanded) mask: the op must index it, not reshape (copy) it.
    n = 64
    q, k, v = make_qkv(n)
    mask = torch.randn(B, 1, 1, n).expand(B, H, n, n)
    expected = run_reference(NAME, q, k, v, params(), scale=SCALE, mask=mask)
    with MaxNumel() as seen:
        out = run_op(NAME, q, k, v, params(), scale=SCALE, mask=mask)
    torch.testing.assert_close(out, expected, **TOL)
    assert seen.max_numel < mask.numel() // 4


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("sinks", [0, 3])
def test_fully_masked_row_is_zero(sinks, causal):
    n, row = 20, 5
    q, k, v = make_qkv(n)
    mask = torch.zeros(1, 1, n, n)
    mask[..., row, :] = float("-inf")
    for impl in (run_reference, run_op, run_onnx):
        out = impl(NAME, q, k, v, params(S, sinks), scale=SCALE, mask=mask, causal=causal)
        assert torch.equal(out[:, :, row], torch.zeros(B, H, D)), impl.__name__
        assert out[:, :, row + 1].abs().min() > 0, impl.__name__
        assert not out.isnan().any(), impl.__name__


def test_segment_masked_but_sinks_visible_is_not_zero():
    # Row 9's own segment is fully masked; the sinks keep it alive.
    n = 20
    q, k, v = make_qkv(n)
    mask = torch.zeros(1, 1, n, n)
    mask[..., 9, 8:16] = float("-inf")
    out = three_ways(q, k, v, params(S, 3), mask=mask)
    assert out[:, :, 9].abs().min() > 0


def test_finfo_min_row_is_ordinary_softmax():
    # HF masks with finfo.min: a row masked that way is a uniform average, not 0.
    n, row = 20, 5
    q, k, v = make_qkv(n)
    mask = torch.zeros(1, 1, n, n)
    mask[..., row, :] = torch.finfo(torch.float32).min
    out = three_ways(q, k, v, params(), mask=mask)
    assert out[:, :, row].abs().max() > 0
    torch.testing.assert_close(out[:, :, row], v[:, :, 0:8].mean(dim=2), **TOL)


# --- refusals --------------------------------------------------------------------------


def test_cross_attention_is_refused_by_the_pass():
    seg = make_pass(NAME, segment_size=16, sinks=2)
    for bad, why in ((site(20, 24), "cross-attention"), (site(24, 20), "cross-attention"), (site(20, None), "unknown")):
        refusal = seg.plan(bad)
        assert isinstance(refusal, Refusal) and why in refusal.reason, refusal
        assert "\n" not in refusal.reason
    plan = seg.plan(site(20, 20))
    assert isinstance(plan, OpCall)
    assert [(g.kernel, g.attrs) for g in plan.groups] == [(NAME, {"segment_size": 16, "sinks": 2})]
    # A KV-cache step (M > N) is not cross-attention: it is planned, on a kernel that serves such steps.
    step = seg.plan(site(1, 21, past_len=20))
    assert isinstance(step, OpCall) and all(get_variant(g.kernel).kv_cache for g in step.groups), step


def test_cross_attention_is_refused_by_the_op_and_reference():
    q, _, _ = make_qkv(20)
    for m in (16, 24):
        _, k, v = make_qkv(m, m=m)
        with pytest.raises(ValueError, match="query length == key length"):
            run_op(NAME, q, k, v, params(), scale=SCALE)
    _, k, v = make_qkv(16)
    with pytest.raises(ValueError, match="self-attention"):
        run_reference(NAME, q, k, v, params(), scale=SCALE)


@pytest.mark.parametrize("given, message", [
    ({"segment_size": 0}, "segmented: segment_size must be >= 1, got 0"),
    ({"segment_size": "-3"}, "segmented: segment_size must be >= 1, got -3"),
    ({"sinks": -1}, "segmented: sinks must be >= 0, got -1"),
    ({"segment_size": "8.5"}, "segmented: segment_size='8.5' is not a valid int"),
    ({"window": 4}, "pass 'segmented' has no parameter 'window'; it takes: segment_size, sinks"),
])
def test_bad_parameters_are_refused(given, message):
    for parse in (SPEC.parse_params, lambda p: make_pass(NAME, **p)):
        with pytest.raises(InvalidParamsError) as info:
            parse(given)
        assert str(info.value) == message


def test_parameters_parse_from_cli_strings():
    assert SPEC.parse_params({"segment_size": "64", "sinks": "4"}) == {"segment_size": 64, "sinks": 4}
    assert make_pass(NAME, segment_size="64").params == make_pass(NAME, segment_size=64, sinks=0).params


def test_op_refuses_boolean_mask():
    q, k, v = make_qkv(20)
    with pytest.raises(ValueError, match="additive"):
        run_op(NAME, q, k, v, params(), scale=SCALE, mask=torch.ones(1, 1, 20, 20, dtype=torch.bool))


# --- torch integration ---------------------------------------------------------------------


def test_opcheck():
    q, k, v = (t[:1] for t in make_qkv(10, hkv=2))
    mask = torch.randn(1, 1, 10, 10)
    kp = torch.zeros(1, 10)
    kp[0, -2:] = float("-inf")
    torch.library.opcheck(op, (q, k, v, mask, kp, 4, 2, 0.3, True, 0.0))
    torch.library.opcheck(op, (q, k, v, None, kp, 4, 0, 0.3, False, 2.5))
    torch.library.opcheck(op, (q, k, v, None, None, 4, 0, 0.3, False, 0.0))


def test_torch_export_with_symbolic_length():
    class Segmented(torch.nn.Module):
        def forward(self, q, k, v, mask, key_padding):
            return op(q, k, v, mask, key_padding, S, 3, SCALE, True, 0.0)

    def example(n, seed):
        q, k, v = make_qkv(n, hkv=2, seed=seed)
        kp = torch.zeros(B, n)
        kp[0, -3:] = float("-inf")
        return q, k, v, torch.randn(B, 1, n, n, generator=torch.Generator().manual_seed(seed)), kp

    n = torch.export.Dim("N", min=2, max=4096)
    program = torch.export.export(
        Segmented(), example(20, 0), dynamic_shapes=({2: n}, {2: n}, {2: n}, {2: n, 3: n}, {1: n})
    )
    targets = [node.target for node in program.graph.nodes if node.op == "call_function"]
    assert targets == [op.default]
    args = example(27, 1)
    torch.testing.assert_close(program.module()(*args), op(*args, S, 3, SCALE, True, 0.0))


def test_registry_and_specs_do_not_load_onnxscript():
    code = (
        "import sys\n"
        "import attnopt.kernels.registry as registry\n"
        "for spec in registry.all_variants():\n"
        "    spec.torch_schema, spec.onnx_inputs, spec.onnx_op_type, spec.op_name, spec.parse_params({})\n"
        "    [spec.onnx_attr_type(a) for a in spec.attr_names]\n"
        "registry.get_variant('segmented').defaults\n"
        "assert 'onnxscript' not in sys.modules, 'reading specs imported onnxscript'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- attaching functions (shared machinery) -------------------------------------------------------


def test_function_proto_takes_the_model_opset():
    for version in (17, 18, 23):
        proto = onnx_functions.function_proto("SegmentedAttention", version)
        # ai.attnopt too: the body calls the shared Softcap helper (inside an If branch).
        assert {o.domain: o.version for o in proto.opset_import} == {"": version, DOMAIN: DOMAIN_VERSION}
    with pytest.raises(ValueError, match="opset"):
        onnx_functions.function_proto("SegmentedAttention", 13)


def bare_model(opset):
    """A model with one SegmentedAttention node and no function (nor ai.attnopt import) attached."""
    model = onnx_model(NAME, params(S, 3), scale=SCALE, causal=True, opset=opset)
    del model.functions[:]
    keep = [o for o in model.opset_import if o.domain != DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(keep)
    return model


def run_session(model, q, k, v):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {"Q": q.numpy(), "K": k.numpy(), "V": v.numpy(),
                           "Mask": np.zeros((1, 1, 1, 1), np.float32), "KeyPadding": np.zeros((1, 1), np.float32),
                           "SinkLogits": np.zeros(0, np.float32)})
    return torch.from_numpy(y)


def test_attach_functions_to_onnx_ir_model_is_idempotent():
    import onnx_ir as ir

    model = ir.serde.deserialize_model(bare_model(23))
    onnx_functions.attach_functions(model, ["SegmentedAttention"])
    onnx_functions.attach_functions(model, ["SegmentedAttention", "SegmentedAttention"])
    assert sorted(f.name for f in model.functions.values()) == \
        sorted(onnx_functions.functions_for(["SegmentedAttention"]))
    assert model.opset_imports[DOMAIN] == DOMAIN_VERSION
    assert all(fn.opset_imports[""] == 23 for fn in model.functions.values())
    saved = ir.serde.serialize_model(model)
    onnx.checker.check_model(saved, full_check=True)
    q, k, v = make_qkv(20, hkv=2)
    expected = run_reference(NAME, q, k, v, params(S, 3), scale=SCALE, causal=True)
    torch.testing.assert_close(run_session(saved, q, k, v), expected, **TOL)


def test_attach_functions_to_model_proto_is_idempotent():
    model = bare_model(17)
    for _ in range(2):
        onnx_functions.attach_functions(model, ["SegmentedAttention"])
    # The body and the shared helpers it calls (onnx_functions.functions_for), callees first, each once.
    assert [(f.domain, f.name) for f in model.functions] == \
        [(DOMAIN, f) for f in onnx_functions.functions_for(["SegmentedAttention"])]
    assert {"Softcap", "SegmentedAttention"} <= {f.name for f in model.functions}
    assert sorted((o.domain, o.version) for o in model.opset_import) == [("", 17), (DOMAIN, DOMAIN_VERSION)]
    onnx.checker.check_model(model, full_check=True)
    q, k, v = make_qkv(20, hkv=2)
    expected = run_reference(NAME, q, k, v, params(S, 3), scale=SCALE, causal=True)
    torch.testing.assert_close(run_session(model, q, k, v), expected, **TOL)


# --- cost: a dense mask is read block by block, never copied whole ---------------------------------
# (Nothing quadratic with key padding alone is the conformance test's.)


@pytest.mark.parametrize("key_padding", [False, True], ids=["mask", "mask+key-padding"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cpu_op_reads_a_dense_mask_block_by_block(dtype, key_padding):
    n, seg = 2048, 64
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, n, 16, generator=gen).to(dtype) for _ in range(3))
    mask = torch.randn(1, 1, n, n, generator=gen).to(dtype)  # a full mask is input, not intermediate
    kp = torch.zeros(1, n, dtype=dtype) if key_padding else None
    with MaxNumel() as seen:
        out = run_op(NAME, q, k, v, params(seg, 4), scale=SCALE, mask=mask, key_padding=kp, causal=True)
    assert seen.max_numel > out.numel()  # the detector sees the op's own scores, not just its output
    assert seen.max_numel < n * n // 16


def test_onnx_body_reads_a_dense_mask_block_by_block():
    # One batch and kv head, so any per-head N×N tensor would have >= N*N elements.
    n, seg, hq = 192, 16, 2
    dims = {"Q": [1, hq, "N", D], "K": [1, 1, "N", D], "V": [1, 1, "N", D], "Mask": [1, 1, "N", "N"],
            "KeyPadding": [1, 1]}
    model = onnx_model(NAME, params(seg, 4), scale=SCALE, causal=True, dims=dims)
    model = onnx.shape_inference.infer_shapes(onnx.inliner.inline_local_functions(model))
    types = {vi.name: vi.type.tensor_type.elem_type for vi in model.graph.value_info}
    produced = [out for node in model.graph.node for out in node.output if out in types]
    assert len(produced) > 40
    # A Reshape of a graph input is a view in onnxruntime (it aliases its input).
    views = {node.output[0] for node in model.graph.node if node.op_type == "Reshape" and node.input[0] == "Mask"}
    model.graph.output.extend(helper.make_tensor_value_info(name, types[name], None) for name in produced)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, h, n, D, generator=gen) for h in (hq, 1, 1))
    mask = torch.randn(1, 1, n, n, generator=gen)
    results = sess.run(None, {"Q": q.numpy(), "K": k.numpy(), "V": v.numpy(), "Mask": mask.numpy(),
                              "KeyPadding": np.zeros((1, 1), np.float32), "SinkLogits": np.zeros(0, np.float32)})
    torch.testing.assert_close(
        torch.from_numpy(results[0]),
        run_reference(NAME, q, k, v, params(seg, 4), scale=SCALE, mask=mask, causal=True), **TOL)
    sizes = {out.name: arr.size for out, arr in zip(model.graph.output, results)}
    assert not {name: size for name, size in sizes.items() if size >= n * n and name not in views}
