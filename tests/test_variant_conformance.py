"""Every registered variant, by registering: reference == torch op == ONNX body, and the exact limit is dense.

Shapes are small and random, with ragged lengths, GQA, key padding, a dense
remainder mask, causality, softcapping, sinks where the variant has them, and
KV-cache steps (M > N) where the variant serves them. Nothing here names a
variant: the specs drive it.
"""

from __future__ import annotations

import inspect

import numpy as np
import onnx
import onnx.inliner
import onnxruntime as ort
import pytest
import torch

from attnopt.kernels.reference import dense_attention
from attnopt.kernels.registry import all_variants, get_variant
from kernel_harness import MaxNumel, onnx_model, ops_onnxruntime_runs, run_onnx, run_op, run_reference

# Stateful variants (a streaming form) run a segment per call; their own tests drive them over a stream.
STATELESS = [s for s in all_variants() if not s.state]
VARIANTS = [s.name for s in STATELESS]
TOL = dict(atol=2e-5, rtol=1e-5)
SCALE = 0.3


def _settings():
    """(name, params, causal) for every test setting; causal only where the spec serves it (lowrank refuses)."""
    for spec in STATELESS:
        for i, params in enumerate(spec.test_params):
            for causal in (False, True)[:1 + spec.serves_causal]:
                yield pytest.param(spec.name, params, causal, id=f"{spec.name}-{i}-{'causal' if causal else 'bidir'}")


def _variants_and_causality():
    for spec in STATELESS:
        for causal in (False, True)[:1 + spec.serves_causal]:
            yield pytest.param(spec.name, causal, id=f"{spec.name}-{'causal' if causal else 'bidir'}")


def shapes(spec):
    """(B, H, Hkv, N, M, D): ragged, GQA, one query; KV-cache steps where the variant serves them."""
    out = [(2, 4, 2, 13, 13, 8), (1, 2, 2, 7, 7, 4), (2, 4, 1, 1, 1, 8)]
    if spec.kv_cache or not spec.needs_self_attention:
        out += [(2, 4, 2, 3, 11, 8), (1, 2, 1, 1, 9, 4)]
    return out


def inputs(b, h, hkv, n, m, d, seed, spec=None):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = torch.randn(b, h, n, d, generator=gen), torch.randn(b, hkv, m, d, generator=gen), \
        torch.randn(b, hkv, m, d, generator=gen)
    key_padding = torch.zeros(b, m)
    key_padding[0, max(1, m - 3):] = float("-inf")  # trailing pad in batch 0; never every key
    key_padding[-1, m // 2] = torch.finfo(torch.float32).min  # HF's "minus infinity"
    dense = torch.randn(1, h, n, m, generator=gen)
    masks = {"none": (None, None), "padding": (None, key_padding), "dense": (dense, None),
             "both": (dense, key_padding)}
    if spec is not None and not spec.serves_dense_mask:  # it refuses such sites; nothing to compare
        masks = {kind: pair for kind, pair in masks.items() if pair[0] is None}
    return q, k, v, masks


@pytest.mark.parametrize("name, params, causal", list(_settings()))
def test_op_and_onnx_body_equal_the_reference(name, params, causal):
    spec = get_variant(name)
    checked = 0
    for seed, shape in enumerate(shapes(spec)):
        q, k, v, masks = inputs(*shape, seed, spec)
        for kind, (mask, kp) in masks.items():
            for softcap in (0.0, 2.5):
                kw = dict(scale=SCALE, mask=mask, key_padding=kp, causal=causal, softcap=softcap)
                expected = run_reference(name, q, k, v, params, **kw)
                assert torch.isfinite(expected).all()
                torch.testing.assert_close(run_op(name, q, k, v, params, **kw), expected, **TOL,
                                           msg=lambda m: f"torch op, {shape} {kind} softcap={softcap}: {m}")
                torch.testing.assert_close(run_onnx(name, q, k, v, params, **kw), expected, **TOL,
                                           msg=lambda m: f"ONNX body, {shape} {kind} softcap={softcap}: {m}")
                checked += 1
            if spec.serves_sink_logits and kind in ("none", "both"):
                # GPT-OSS's learned sinks, one a head: one large enough to take most of a row, one -inf (none)
                sinks = torch.linspace(-1.0, 3.0, q.shape[1])
                sinks[0] = float("-inf")
                kw = dict(scale=SCALE, mask=mask, key_padding=kp, causal=causal, sink_logits=sinks)
                expected = run_reference(name, q, k, v, params, **kw)
                if expected.abs().sum() > 0:  # (a query whose every key is padded out outputs 0 either way)
                    assert not torch.allclose(expected, run_reference(name, q, k, v, params,
                                                                      **{**kw, "sink_logits": None}))
                for impl in (run_op, run_onnx):
                    torch.testing.assert_close(impl(name, q, k, v, params, **kw), expected, **TOL,
                                               msg=lambda m: f"{impl.__name__} with sink logits, {shape} {kind}: {m}")
    assert checked >= 12


@pytest.mark.parametrize("name, causal", list(_variants_and_causality()))
def test_exact_limit_is_dense(name, causal):
    spec = get_variant(name)
    for seed, shape in enumerate(shapes(spec)):
        q, k, v, masks = inputs(*shape, seed, spec)
        params = spec.exact_params(q.shape[2], k.shape[2])
        for kind, (mask, kp) in masks.items():
            kw = dict(scale=SCALE, mask=mask, key_padding=kp, causal=causal, softcap=0.0)
            dense = dense_attention(q, k, v, **kw)
            for impl in (run_reference, run_op, run_onnx):
                torch.testing.assert_close(impl(name, q, k, v, params, **kw), dense, **TOL,
                                           msg=lambda m: f"{impl.__name__} {shape} {kind}: {m}")


@pytest.mark.parametrize("name", [s.name for s in STATELESS if s.subquadratic])
def test_below_the_limit_differs_from_dense(name):
    """A test of the tests: the variants restrict something at their test settings (dense is no restriction)."""
    spec = get_variant(name)
    q, k, v, _ = inputs(1, 2, 2, 24, 24, 8, 0)
    params = spec.test_params[0]
    assert not torch.allclose(run_op(name, q, k, v, params, scale=SCALE), dense_attention(q, k, v, scale=SCALE))


@pytest.mark.parametrize("name", VARIANTS)
def test_half_precision_inputs_compute_in_float32(name):
    spec = get_variant(name)
    q, k, v, masks = inputs(2, 4, 2, 13, 13, 8, 3)
    params = spec.test_params[-1]
    for dtype in (torch.float16, torch.bfloat16):
        expected = run_reference(name, q, k, v, params, scale=SCALE)
        got = run_op(name, q.to(dtype), k.to(dtype), v.to(dtype), params, scale=SCALE)
        assert got.dtype == dtype
        torch.testing.assert_close(got.float(), expected, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("name", VARIANTS)
def test_signatures_follow_the_spec(name):
    """The ONNX body's inputs and attributes, and the torch schema, are the spec's."""
    spec = get_variant(name)
    body = spec.onnx_function
    sig = [p.name for p in body.op_signature.params]
    assert sig == list(spec.onnx_inputs) + list(spec.attr_names)
    schema = spec.torch_op.default._schema
    assert [a.name for a in schema.arguments] == (["q", "k", "v", "mask", "key_padding"]
                                                  + [t.name for t in spec.tensor_inputs] + list(spec.attr_names)
                                                  + ["sink_logits"] * spec.serves_sink_logits)
    if spec.serves_sink_logits:
        assert "sink_logits" in inspect.signature(spec.reference).parameters
    assert set(inspect.signature(spec.reference).parameters) >= set(spec.param_names) | {"scale", "mask", "causal",
                                                                                         "key_padding", "softcap"}
    assert onnx.defs.has(spec.onnx_op_type, "ai.attnopt")


@pytest.mark.parametrize("name", VARIANTS)
def test_spec_parameters_check_themselves(name):
    spec = get_variant(name)
    assert spec.parse_params({}) == spec.defaults
    for params in spec.test_params + (spec.exact_params(64, 64),) + ((spec.demo_params,) if spec.demo_params else ()):
        assert spec.parse_params({k: str(v) for k, v in params.items()}) == {**spec.defaults, **params}
    assert all(p.help for p in spec.params)


@pytest.mark.parametrize("name", [s.name for s in STATELESS if s.subquadratic])
def test_cpu_op_builds_nothing_quadratic(name):
    spec = get_variant(name)
    n = 2048
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, n, 16, generator=gen) for _ in range(3))
    kp = torch.zeros(1, n)
    params = spec.test_params[-1]
    with MaxNumel() as seen:
        run_op(name, q, k, v, params, scale=SCALE, key_padding=kp, causal=spec.serves_causal)
    assert seen.max_numel < n * n // 16
    with MaxNumel() as seen:  # the detector itself: dense attention through an op does build N×N
        run_op("dense", q[..., :128, :], k[..., :128, :], v[..., :128, :], {}, scale=SCALE)
    assert seen.max_numel >= 128 * 128


@pytest.mark.parametrize("name", [s.name for s in STATELESS if s.subquadratic])
def test_onnx_body_builds_nothing_quadratic(name):
    """Every intermediate of the inlined body, exposed as an output, stays below N×N (one batch, one kv head)."""
    spec = get_variant(name)
    n = 192
    d = 8
    dims = {"Q": [1, 2, "N", d], "K": [1, 1, "N", d], "V": [1, 1, "N", d], "Mask": [1, 1, 1, 1], "KeyPadding": [1, "N"]}
    params = spec.test_params[-1]
    # The constant tensors (a per-head table) must be built for the heads actually run.
    model = onnx_model(name, params, scale=SCALE, causal=spec.serves_causal, dims=dims, q_shape=(1, 2, n, d),
                       k_shape=(1, 1, n, d))
    model = onnx.shape_inference.infer_shapes(onnx.inliner.inline_local_functions(model))
    types = {vi.name: vi.type.tensor_type.elem_type for vi in model.graph.value_info}
    produced = [out for node in model.graph.node for out in node.output if out in types]
    assert len(produced) > 20
    model.graph.output.extend(onnx.helper.make_tensor_value_info(name_, types[name_], None) for name_ in produced)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, h, n, d, generator=gen) for h in (2, 1, 1))
    kp = torch.zeros(1, n)
    kp[0, -5:] = float("-inf")
    feeds = {"Q": q.numpy(), "K": k.numpy(), "V": v.numpy(), "Mask": np.zeros((1, 1, 1, 1), np.float32),
             "KeyPadding": kp.numpy()}
    if spec.serves_sink_logits:
        feeds["SinkLogits"] = np.zeros(0, np.float32)
    results = sess.run(None, feeds)
    sizes = {out.name: arr.size for out, arr in zip(model.graph.output, results)}
    assert not {k_: s for k_, s in sizes.items() if s >= n * n}
    torch.testing.assert_close(torch.from_numpy(results[0]),
                               run_reference(name, q, k, v, params, scale=SCALE, key_padding=kp,
                                             causal=spec.serves_causal), **TOL)


@pytest.mark.parametrize("name", VARIANTS)
def test_softcap_costs_nothing_at_zero(name, tmp_path):
    """The bodies softcap through an If on the cap (kernels/softcap_onnx.py): onnxruntime folds it at load, so at
    softcap 0 no Tanh is left in the graph it runs, and at softcap > 0 the Tanh is there."""
    spec = get_variant(name)
    for softcap in (0.0, 2.5):
        model = onnx_model(name, spec.test_params[0], scale=SCALE, causal=False, softcap=softcap, q_shape=(2, 4, 13, 8),
                           k_shape=(2, 2, 13, 8))
        ran = ops_onnxruntime_runs(model, tmp_path / f"{softcap}.onnx")
        assert ("Tanh" in ran) == (softcap > 0), (softcap, sorted(set(ran)))
