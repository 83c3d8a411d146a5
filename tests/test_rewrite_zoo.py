"""segmented at its exact limit (S >= N) rewrites every zoo model and validates as exact.

Every self-attention site (and KV-cache step) is rewritten, every cross-attention site is refused
with its reason, the written ONNX passes the checker and runs in stock
onnxruntime, and each output and site matches the original to rel-L2 < 1e-5.
"""

from __future__ import annotations

import onnx
import pytest

import attnopt
from attnopt.errors import NoSitesError

BIG = 1 << 16  # >= any zoo sequence length: the exact limit


def _tolerance(case) -> float:
    # hand-half-softmax runs its softmax in float16; the op computes it in float32, so
    # the rewrite differs from the original by fp16 rounding (~1e-4), not by the variant.
    return 2e-3 if "half" in case.name else 1e-5


def _self_attention(case, sites=()) -> int:
    """Sites segmented serves: self-attention, and KV-cache steps (their keys end with the queries' own). A step
    over an empty cache (CPM-Ant's, exported with the cache on) is self-attention already, counted once."""
    own = case.expected_sites if case.self_attention_sites is None else case.self_attention_sites
    return own + sum(s.past_len is not None and s.is_self_attention is not True for s in sites)


def _check_report(result, case, sites):
    """Every self-attention or KV-cache site rewritten; every other one refused because it is cross-attention."""
    statuses = [o.status for o in result.report]
    assert len(statuses) == case.expected_sites
    assert statuses.count("rewritten") == _self_attention(case, sites), result.to_dict()
    refused = [o for o in result.report if o.status == "refused"]
    assert len(refused) == case.expected_sites - _self_attention(case, sites), result.to_dict()
    for o in refused:
        assert o.reason.startswith("cross-attention (N="), o.reason
        assert o.reason.endswith("segmented needs self-attention"), o.reason
    # The rewritten model, detected again (result.loaded is relifted), holds only the refused sites: a
    # rewritten site's dense attention left in the graph (kept alive by a reader the rewrite missed, as a
    # Shape of the product once was) would still compute, and still be found here.
    left = [s.name for s in result.loaded.sites]
    assert len(left) == len(refused), (left, [o.site for o in refused])


@pytest.mark.zoo(select=lambda case, how: not case.negative)
def test_onnx_zoo_rewrite_is_exact_at_the_limit(zoo_onnx_case, tmp_path):
    case = zoo_onnx_case.case
    sites = attnopt.detect(zoo_onnx_case.path)
    if all(s.unsupported for s in sites):
        # e.g. com.microsoft.Attention with fused projections: detected, refused with the reason.
        with pytest.raises(NoSitesError, match="can serve"):
            attnopt.rewrite(zoo_onnx_case.path, "segmented", segment_size=BIG)
        return
    if _self_attention(case, sites) == 0:
        with pytest.raises(NoSitesError, match="cross-attention"):
            attnopt.rewrite(zoo_onnx_case.path, "segmented", segment_size=BIG)
        return
    result = attnopt.rewrite(zoo_onnx_case.path, "segmented", segment_size=BIG, sinks=2)
    _check_report(result, case, sites)
    out = tmp_path / "rewritten.onnx"
    result.save(out)
    onnx.checker.check_model(str(out), full_check=True)
    # The inputs the model was exported with: random ones may exceed a tiny config's positions.
    built = case.factory()
    names = [i.name for i in onnx.load(str(zoo_onnx_case.path), load_external_data=False).graph.input]
    inputs = {n: t.numpy() for n, t in zip(names, built.inputs)}
    known = case.ort_known_failures.get(zoo_onnx_case.exporter)
    if known:
        _compare_with_torch(out, built, inputs, known)
        return
    report = attnopt.validate(zoo_onnx_case.path, out, inputs=inputs)
    assert report.outputs and all(m.comparable for m in report.outputs)
    assert [m for m in report.sites if m.comparable], "no site could be compared"
    assert report.is_exact(_tolerance(case)), report.to_dict()


@pytest.mark.zoo(select=lambda case, how: how in case.ort_known_failures)
def test_declared_onnxruntime_failures_still_happen(zoo_onnx_case, zoo):
    """Tests skip or compare with torch where a case declares that onnxruntime fails on an export; a
    declaration onnxruntime has outgrown would keep those checks off unseen."""
    assert not zoo.ort_runs(zoo_onnx_case.case.name, zoo_onnx_case.exporter), (
        f"{zoo_onnx_case.id}: onnxruntime runs this export now; drop the case's ort_known_failures entry")


def _compare_with_torch(path, built, inputs, known_failure: str):
    """onnxruntime can't run the original export; check the rewritten one against torch instead."""
    import numpy as np
    import onnxruntime as ort
    import torch
    try:
        got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, inputs)
    except Exception as e:  # the failing op is outside the site, so the rewrite still has it
        assert known_failure.split("(")[0].strip() in str(e), e
        pytest.xfail(f"onnxruntime cannot run this export, before or after the rewrite: {known_failure}")
    with torch.no_grad():
        expected = built.module(*built.inputs)
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b.numpy(), atol=1e-4)


@pytest.mark.zoo(select=lambda case, how: not case.negative)
def test_fx_zoo_rewrite_is_exact_at_the_limit(zoo_fx_case):
    case = zoo_fx_case.case
    sites = attnopt.detect(zoo_fx_case.graph, example_inputs=zoo_fx_case.example_inputs)
    if _self_attention(case, sites) == 0 or all(s.unsupported for s in sites):
        with pytest.raises(NoSitesError):
            attnopt.rewrite(zoo_fx_case.graph, "segmented", segment_size=BIG,
                            example_inputs=zoo_fx_case.example_inputs)
        return
    result = attnopt.rewrite(zoo_fx_case.graph, "segmented", segment_size=BIG, sinks=2,
                             example_inputs=zoo_fx_case.example_inputs)
    _check_report(result, case, sites)
    report = attnopt.validate(zoo_fx_case.graph, result.model, example_inputs=zoo_fx_case.inputs)
    assert report.is_exact(_tolerance(case)), report.to_dict()
