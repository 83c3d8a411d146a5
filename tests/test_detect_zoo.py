"""attnopt.detect finds exactly the attention sites of every zoo model, in every export.

The zoo (tests/zoo.py) states, per case, the number of sites and their geometry;
each test runs detection on one (case, exporter) or (case, tracer) combination.
"""

from __future__ import annotations

import math

import pytest

import attnopt


def _summaries(sites) -> str:
    rows = []
    for s in sites:
        d = s.summary() if hasattr(s, "summary") else repr(s)
        rows.append(f"  {d}")
    return "\n".join(rows) or "  (none)"


def _scale(site) -> float | None:
    if site.scale is not None:
        return float(site.scale)
    return site.effective_scale


def check_sites(case, sites, where: str) -> None:
    sites = list(sites)
    detail = f"{where}: detected\n{_summaries(sites)}"
    assert len(sites) == case.expected_sites, (
        f"{where}: expected {case.expected_sites} attention sites, got {len(sites)}\n{detail}")
    names = [s.name for s in sites]
    assert len(set(names)) == len(names), f"{where}: site names are not unique: {names}"
    if case.negative:
        return
    for i, s in enumerate(sites):
        heads = case.heads[i] if isinstance(case.heads, tuple) else case.heads
        kv_heads = case.expected_kv_heads[i] if isinstance(case.expected_kv_heads, tuple) else case.expected_kv_heads
        assert s.num_heads == heads, f"{where}: {s.name}: num_heads {s.num_heads} != {heads}\n{detail}"
        assert s.kv_num_heads == kv_heads, f"{where}: {s.name}: kv_num_heads {s.kv_num_heads} != {kv_heads}\n{detail}"
        assert s.head_dim == case.head_dim, f"{where}: {s.name}: head_dim {s.head_dim} != {case.head_dim}\n{detail}"
        got = _scale(s)
        assert got is not None and any(math.isclose(got, want, rel_tol=1e-6) for want in case.expected_scales), (
            f"{where}: {s.name}: scale {got} not in {case.expected_scales}\n{detail}")
    if case.causal_sites is not None:
        # Sites may meet causality as a flag or as an explicit mask, so only two things are certain:
        # no more sites claim to be causal than the model has, and a causal site is never reported
        # as unmasked, non-causal attention.
        flagged = sum(bool(s.causal) for s in sites)
        assert flagged <= case.causal_sites, (
            f"{where}: {flagged} sites flagged causal, the model has {case.causal_sites}\n{detail}")
        open_sites = sum((not s.causal) and s.mask is None and s.key_padding is None for s in sites)
        assert open_sites <= case.expected_sites - case.causal_sites, (
            f"{where}: {open_sites} sites say unmasked and non-causal, but {case.causal_sites} of "
            f"{case.expected_sites} are causal\n{detail}")
    if case.self_attention_sites is not None:
        # Exact: self-attention is proven from the dataflow where the lengths alone leave it open
        # (an exporter that baked one length and not the other); a KV-cache step is not self-attention.
        same = sum(s.is_self_attention is True for s in sites)
        cross = sum(s.is_self_attention is False for s in sites)
        assert same == case.self_attention_sites and cross == case.cross_attention_sites, (
            f"{where}: {same} self- and {cross} cross-attention sites; expected "
            f"{case.self_attention_sites} and {case.cross_attention_sites}\n{detail}")


def test_detect_onnx(zoo_onnx_case):
    c = zoo_onnx_case
    sites = attnopt.detect(c.path)
    check_sites(c.case, sites, c.id)
    again = attnopt.detect(c.path)
    assert [s.name for s in again] == [s.name for s in sites], f"{c.id}: site names change between runs"


def test_detect_fx(zoo_fx_case):
    c = zoo_fx_case
    sites = attnopt.detect(c.graph, example_inputs=c.example_inputs)
    check_sites(c.case, sites, c.id)
    again = attnopt.detect(c.graph, example_inputs=c.example_inputs)
    assert [s.name for s in again] == [s.name for s in sites], f"{c.id}: site names change between runs"


_INPUT_KIND_COMBOS = {("bert-sdpa", "dynamo"), ("llama-gqa-eager", "torchscript"),
                      ("hand-sdpa-causal", "dynamo-opset23"), ("vit-eager", "dynamo-ortfused")}


@pytest.mark.zoo(select=lambda case, how: (case.name, how) in _INPUT_KIND_COMBOS)
def test_detect_onnx_input_kinds(zoo_onnx_case):
    """A path, a ModelProto and an onnx_ir.Model of the same file give the same sites."""
    import onnx
    import onnx_ir

    c = zoo_onnx_case
    by_path = [s.summary() for s in attnopt.detect(c.path)]
    by_path_str = [s.summary() for s in attnopt.detect(str(c.path))]
    by_proto = [s.summary() for s in attnopt.detect(onnx.load(str(c.path)))]
    by_ir = [s.summary() for s in attnopt.detect(onnx_ir.load(str(c.path)))]
    assert by_path == by_path_str == by_proto == by_ir, c.id
