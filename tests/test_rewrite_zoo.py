"""segmented at its exact limit (S >= N) rewrites every zoo model and validates as exact.

Every self-attention site is rewritten, every cross-attention site is refused
with its reason, the written ONNX passes the checker and runs in stock
onnxruntime, and each output and site matches the original to rel-L2 < 1e-5.
"""

from __future__ import annotations

import onnx
import pytest

import attnopt
from attnopt.errors import NoSitesError

BIG = 1 << 16  # >= any zoo sequence length: the exact limit


def _self_attention(case) -> int:
    return case.expected_sites if case.self_attention_sites is None else case.self_attention_sites


def _check_report(result, case):
    statuses = [o.status for o in result.report]
    assert len(statuses) == case.expected_sites
    if case.self_attention_sites is not None:
        assert statuses.count("rewritten") == case.self_attention_sites
    refused = [o for o in result.report if o.status == "refused"]
    assert all("cross-attention" in o.reason or o.reason for o in refused)


@pytest.mark.zoo(select=lambda case, how: not case.negative)
def test_onnx_zoo_rewrite_is_exact_at_the_limit(zoo_onnx_case, tmp_path):
    case = zoo_onnx_case.case
    sites = attnopt.detect(zoo_onnx_case.path)
    if all(s.unsupported for s in sites):
        # e.g. com.microsoft.Attention with fused projections: detected, refused with the reason.
        with pytest.raises(NoSitesError, match="can serve"):
            attnopt.rewrite(zoo_onnx_case.path, "segmented", segment_size=BIG)
        return
    if _self_attention(case) == 0:
        with pytest.raises(NoSitesError, match="cross-attention"):
            attnopt.rewrite(zoo_onnx_case.path, "segmented", segment_size=BIG)
        return
    result = attnopt.rewrite(zoo_onnx_case.path, "segmented", segment_size=BIG, sinks=2)
    _check_report(result, case)
    out = tmp_path / "rewritten.onnx"
    result.save(out)
    onnx.checker.check_model(str(out), full_check=True)
    report = attnopt.validate(zoo_onnx_case.path, out)
    assert report.outputs and all(m.comparable for m in report.outputs)
    assert [m for m in report.sites if m.comparable], "no site could be compared"
    assert report.is_exact(1e-5), report.to_dict()


@pytest.mark.zoo(select=lambda case, how: not case.negative)
def test_fx_zoo_rewrite_is_exact_at_the_limit(zoo_fx_case):
    case = zoo_fx_case.case
    sites = attnopt.detect(zoo_fx_case.graph, example_inputs=zoo_fx_case.example_inputs)
    if _self_attention(case) == 0 or all(s.unsupported for s in sites):
        with pytest.raises(NoSitesError):
            attnopt.rewrite(zoo_fx_case.graph, "segmented", segment_size=BIG,
                            example_inputs=zoo_fx_case.example_inputs)
        return
    result = attnopt.rewrite(zoo_fx_case.graph, "segmented", segment_size=BIG, sinks=2,
                             example_inputs=zoo_fx_case.example_inputs)
    _check_report(result, case)
    report = attnopt.validate(zoo_fx_case.graph, result.model, example_inputs=zoo_fx_case.inputs)
    assert report.is_exact(1e-5), report.to_dict()
