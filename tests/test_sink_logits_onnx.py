"""Learned sink logits (GPT-OSS) in the ONNX bodies: body in onnxruntime == reference, and nothing extra without.

The bodies of the variants that serve sink logits take ``SinkLogits`` after
``KeyPadding`` and softmax through ``kernels/sink_onnx.py``'s ``SoftmaxWithSink``,
an ``If`` on the logits' size. Here the models are built with ``SinkLogits`` as
a graph input (the values vary per run) or as a constant initializer (as the
rewrite passes it, so onnxruntime folds the ``If`` at load).
"""

from __future__ import annotations

import functools
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from attnopt.kernels.onnx_functions import attach_functions, register_schemas
from attnopt.kernels.registry import all_variants, get_variant
from attnopt.onnx_compat import DOMAIN
from kernel_harness import RANKS, ops_onnxruntime_runs, tensors

register_schemas()

VARIANTS = [s.name for s in all_variants() if s.serves_sink_logits and not s.state]
TOL = dict(atol=2e-5, rtol=1e-5)
SCALE = 0.3
# One logit per query head (H = 4): ordinary, large enough to take nearly every row (+30), none (−inf), negative.
SINKS = torch.tensor([0.5, 30.0, float("-inf"), -2.0])


def test_the_sink_serving_variants_are_the_expected_ones():
    assert set(VARIANTS) >= {"segmented", "window", "memory", "dense"}


def _model(name, params: dict, *, causal: bool, softcap: float = 0.0, sinks: np.ndarray | None = None):
    """One ai.attnopt node of variant ``name``; SinkLogits is a graph input, or the constant ``sinks`` if given.
    The variant's constant tensors (relbias's slopes and table) are graph inputs of any shape, fed per run."""
    spec = get_variant(name)
    probe = spec.tensors_for(params, (1, 4, 13, 8), (1, 2, 13, 8), 0)  # their dtypes, which no shape changes
    attrs = {**params, "scale": SCALE, "causal": int(causal), "softcap": softcap}
    node = helper.make_node(spec.onnx_op_type, list(spec.onnx_inputs), ["Y"], domain=DOMAIN,
                            **{a: attrs[a] for a in spec.attr_names})
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, RANKS[n])
              for n in ("Q", "K", "V", "Mask", "KeyPadding")]
    for t in spec.tensor_inputs:
        arr = np.asarray(probe[t.name])
        inputs.append(helper.make_tensor_value_info(t.name, helper.np_dtype_to_tensor_dtype(arr.dtype),
                                                    [f"{t.name}{i}" for i in range(arr.ndim)]))
    inits = []
    if sinks is None:
        inputs.append(helper.make_tensor_value_info("SinkLogits", TensorProto.FLOAT, ["Hs"]))
    else:
        inits.append(onnx.numpy_helper.from_array(np.asarray(sinks, np.float32), "SinkLogits"))
    graph = helper.make_graph([node], name, inputs, [helper.make_tensor_value_info("Y", TensorProto.FLOAT, RANKS["Q"])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    attach_functions(model, [spec.onnx_op_type])
    return model


@functools.lru_cache(maxsize=None)
def _session(name, frozen_params, causal, softcap):
    model = _model(name, dict(frozen_params), causal=causal, softcap=softcap)
    onnx.checker.check_model(model, full_check=True)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _run_onnx(name, q, k, v, params, *, mask, key_padding, causal, softcap, sink_logits):
    sess = _session(name, tuple(sorted(params.items())), causal, softcap)
    feeds = {t: np.asarray(x) for t, x in tensors(get_variant(name), params, q, k).items()}
    feeds |= {"Q": q.numpy(), "K": k.numpy(), "V": v.numpy(),
             "Mask": (torch.zeros(1, 1, 1, 1) if mask is None else mask).numpy(),
             "KeyPadding": (torch.zeros(1, 1) if key_padding is None else key_padding).numpy(),
             "SinkLogits": (torch.zeros(0) if sink_logits is None else sink_logits).numpy()}
    return torch.from_numpy(sess.run(None, feeds)[0])


def _shapes(spec):
    """(B, H, Hkv, N, M, D): ragged N with GQA, plus a KV-cache step where the variant serves one."""
    out = [(2, 4, 2, 13, 13, 8), (1, 4, 2, 12, 12, 8)]  # ragged; whole segments (segmented's plain path)
    if spec.kv_cache or not spec.needs_self_attention:
        out.append((2, 4, 2, 3, 11, 8))
    return out


def _masks(b, h, n, m, gen):
    """(kind, mask, key padding): none; a one-element nonzero mask (which a softmax alone would ignore but a sink
    column does not); padding and a dense mask together, batch 1 (if any) fully padded: rows with no allowed key."""
    key_padding = torch.zeros(b, m)
    key_padding[0, max(1, m - 3):] = float("-inf")
    key_padding[0, m // 2] = torch.finfo(torch.float32).min
    if b > 1:
        key_padding[1, :] = float("-inf")
    return [("none", None, None), ("scalar", torch.full((1, 1, 1, 1), 1.5), None),
            ("both", torch.randn(1, h, n, m, generator=gen), key_padding)]


def _settings():
    for name in VARIANTS:
        spec = get_variant(name)
        for i, params in enumerate(spec.test_params):
            for causal in (False, True):
                yield pytest.param(name, params, causal, id=f"{name}-{i}-{'causal' if causal else 'bidir'}")
        for causal in (False, True):
            yield pytest.param(name, None, causal, id=f"{name}-exact-{'causal' if causal else 'bidir'}")


@pytest.mark.parametrize("name, params, causal", list(_settings()))
def test_onnx_body_with_sink_logits_equals_the_reference(name, params, causal):
    """Sink logits given (+30 and −inf among them) and absent (the empty (0,) tensor), against the reference."""
    spec = get_variant(name)
    checked = 0
    for seed, (b, h, hkv, n, m, d) in enumerate(_shapes(spec)):
        gen = torch.Generator().manual_seed(seed)
        q, k, v = (torch.randn(b, h, n, d, generator=gen), torch.randn(b, hkv, m, d, generator=gen),
                   torch.randn(b, hkv, m, d, generator=gen))
        run_params = spec.exact_params(n, m) if params is None else params
        for kind, mask, kp in _masks(b, h, n, m, gen):
            for softcap in (0.0, 2.5):
                kw = dict(mask=mask, key_padding=kp, causal=causal, softcap=softcap)
                outs = []
                for sinks in (SINKS, None):
                    expected = spec.reference(q, k, v, **run_params, **tensors(spec, run_params, q, k), scale=SCALE,
                                              **kw, sink_logits=sinks)
                    assert torch.isfinite(expected).all()
                    got = _run_onnx(name, q, k, v, run_params, **kw, sink_logits=sinks)
                    torch.testing.assert_close(got, expected, **TOL, msg=lambda msg: (
                        f"{(b, h, hkv, n, m, d)} {kind} softcap={softcap} sinks={sinks is not None}: {msg}"))
                    outs.append(expected)
                    checked += 1
                assert not torch.allclose(*outs)  # a test of the test: the sink logits changed the output
    assert checked >= 12


# The helpers that take the sink logits, each with what it is without them and the ops only its sink branch has:
# SoftmaxWithSink a plain Softmax (the band and hierarchical bodies); the bucket bodies' SinkDenominator, one more
# term of each row's denominator where their parts merge, its first input as it is.
_SINK_HELPERS = {"SoftmaxWithSink": (dict(op_type="Softmax", axis=-1), ("Concat", "Expand", "Slice")),
                 "SinkDenominator": (dict(op_type="Identity"), ("Concat", "Exp", "Add"))}


def _without_sinks(model: onnx.ModelProto) -> tuple[onnx.ModelProto, tuple]:
    """``model`` with its sink helper's body replaced by the plain form: the bodies as they were before sinks;
    and the ops the sink branch adds."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    (fn,) = [f for f in model.functions if f.domain == DOMAIN and f.name in _SINK_HELPERS]
    plain, added = _SINK_HELPERS[fn.name]
    del fn.node[:]
    fn.node.append(helper.make_node(inputs=[fn.input[0]], outputs=list(fn.output), **plain))
    return model, added


@pytest.mark.parametrize("name", VARIANTS)
def test_sink_logits_cost_nothing_when_absent(name, tmp_path):
    """With a constant empty SinkLogits onnxruntime folds the sink helper's If away at load: the graph it runs has
    exactly the ops of the body without it (a plain Softmax, or the bucket bodies' merge as it was). With constant
    logits the sink branch is what runs instead; with logits as a graph input the If stays."""
    spec = get_variant(name)
    params = spec.test_params[-1]
    runs = {}
    for label, sinks in (("empty", np.zeros(0, np.float32)), ("given", SINKS.numpy()), ("input", None)):
        model = _model(name, params, causal=True, sinks=sinks)
        runs[label] = Counter(ops_onnxruntime_runs(model, tmp_path / f"{label}.onnx"))
    without, added = _without_sinks(_model(name, params, causal=True, sinks=np.zeros(0)))
    plain = Counter(ops_onnxruntime_runs(without, tmp_path / "plain.onnx"))
    assert runs["empty"] == plain, (runs["empty"] - plain, plain - runs["empty"])
    extra = runs["given"] - plain
    assert all(extra[op] >= 1 for op in added), extra
    assert runs["given"]["If"] == plain["If"] < runs["input"]["If"], (runs["given"]["If"], plain["If"],
                                                                       runs["input"]["If"])
