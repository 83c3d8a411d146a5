"""relbias fuse mode (VARIANTS.md): a relative-position bias the model materialises is computed on the fly.

Mask analysis recognises T5's position_bias (with the padding mask added in, for SDPA) and ALiBi as
BLOOM builds it, by probing; ``relbias kind=fuse`` hands the site's slopes and table to the op and
drops the B×H×N×M term. The rewrite equals the original (right padding in the inputs) and leaves no
N×M value in the graph. Other passes keep the bias dense (segmented at its exact limit stays exact);
a site whose mask is not such a bias is refused with the reason; hand-built biases that are not
Toeplitz, or whose tail never settles, stay unrecognised.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn

import attnopt
from attnopt.errors import NoSitesError
from attnopt.kernels.relbias.positions import alibi_slopes
from attnopt.site import MASK_NONZERO_KEEP

import zoo as zoo_lib
from test_structured_masks import _nm_nodes_fx, _nm_values_onnx

SEQ = zoo_lib.SEQ
FAMILIES = ("t5-encoder", "bloom")
FUSE = {"kind": "fuse"}


def _fused_family(case, how) -> bool:
    return case.family in FAMILIES and how != zoo_lib.ORT_FUSED


def _onnx_feeds(path, built) -> dict:
    names = [i.name for i in onnx.load(str(path), load_external_data=False).graph.input]
    assert (built.inputs[1] == 0).any() and (built.inputs[1][:, 0] == 1).all(), "right padding expected"
    return {name: t.numpy() for name, t in zip(names, built.inputs)}


def _check_recognised(case, sites, where: str) -> None:
    selves = [s for s in sites if s.is_self_attention]
    assert len(selves) == case.self_attention_sites, where
    for s in selves:
        rb = s.relative_bias
        assert rb is not None and rb.term in s.masks, (where, s.summary(), s.masks)
        slopes, table = rb.arrays()
        if case.family == "bloom":  # ALiBi: the paper's slopes, no table, positions counted over kept keys
            np.testing.assert_array_equal(slopes, np.float32(alibi_slopes(case.heads)))
            assert rb.radius == 0 and not table.any() and rb.contiguous_padding_only, (where, rb.summary())
        else:  # T5: a table of the learned buckets, no slopes; with SDPA the term carries the padding mask
            assert not slopes.any() and table.shape[0] == case.heads and np.ptp(table) > 0, (where, rb.summary())
            assert not rb.contiguous_padding_only, where
            if s.key_padding is None:
                assert rb.key_padding is not None and rb.key_padding.kind == MASK_NONZERO_KEEP, (where, rb)


# ----------------------------------------------------------------------------- zoo: ONNX and fx

@pytest.mark.zoo(select=_fused_family)
def test_onnx_fuse_is_exact_and_leaves_no_nxm_bias(zoo_onnx_case, zoo, tmp_path):
    case, path = zoo_onnx_case.case, zoo_onnx_case.path
    _check_recognised(case, attnopt.detect(path), zoo_onnx_case.id)
    assert _nm_values_onnx(path, SEQ), "the check must see the original's N×M values"
    result = attnopt.rewrite(path, "relbias", **FUSE)
    assert len(result.rewritten) == case.self_attention_sites, result.to_dict()
    out = tmp_path / "fused.onnx"
    result.save(out)
    report = attnopt.validate(path, out, inputs=_onnx_feeds(path, zoo.build(case.name)))
    assert report.is_exact(1e-5), report.to_dict()
    left = _nm_values_onnx(out, SEQ)
    assert not left, f"{zoo_onnx_case.id}: N×M values after the rewrite:\n" + "\n".join(left)


@pytest.mark.zoo(select=lambda case, how: _fused_family(case, how) and how == zoo_lib.EXPORT)
def test_fx_fuse_is_exact_and_leaves_no_nxm_bias(zoo_fx_case):
    case = zoo_fx_case.case
    _check_recognised(case, attnopt.detect(zoo_fx_case.graph), zoo_fx_case.id)
    inputs = zoo_fx_case.inputs
    assert _nm_nodes_fx(zoo_fx_case.graph.module(), inputs, SEQ), "the check must see the original's N×M values"
    result = attnopt.rewrite(zoo_fx_case.graph, "relbias", **FUSE)
    assert len(result.rewritten) == case.self_attention_sites, result.to_dict()
    report = attnopt.validate(zoo_fx_case.graph, result.model, example_inputs=inputs)
    assert report.is_exact(1e-5), report.to_dict()
    left = _nm_nodes_fx(result.model, inputs, SEQ)
    assert not left, f"{zoo_fx_case.id}: N×M values after the rewrite:\n" + "\n".join(left)


@pytest.mark.zoo(select=lambda case, how: case.family == "switch" and how != zoo_lib.ORT_FUSED)
def test_onnx_fuse_reads_a_bias_the_batch_shares(zoo_onnx_case, zoo, tmp_path):
    """Switch adds its (1, H, N, M) bias apart from the per-row padding (TorchScript keeps them apart): the
    bias is read once per row, and every site fuses, the encoder's included (it stayed dense before)."""
    path = zoo_onnx_case.path
    sites = attnopt.detect(path)
    assert all(s.relative_bias is not None for s in sites), [s.summary() for s in sites]
    result = attnopt.rewrite(path, "relbias", **FUSE)
    assert len(result.rewritten) == zoo_onnx_case.case.expected_sites, result.to_dict()
    out = tmp_path / "fused.onnx"
    result.save(out)
    report = attnopt.validate(path, out, inputs=_onnx_feeds(path, zoo.build(zoo_onnx_case.case.name)))
    assert report.is_exact(1e-5), report.to_dict()
    left = _nm_values_onnx(out, SEQ)
    assert not left, f"{zoo_onnx_case.id}: the encoder's N×N values after the rewrite:\n" + "\n".join(left)


@pytest.mark.zoo(select=lambda case, how: case.family == "t5-encoder" and how in (zoo_lib.DYNAMO,
                                                                                   zoo_lib.TORCHSCRIPT))
def test_onnx_unfused_pass_keeps_the_bias(zoo_onnx_case, zoo, tmp_path):
    """segmented at its exact limit does not fuse: the bias goes back into its dense remainder."""
    path = zoo_onnx_case.path
    result = attnopt.rewrite(path, "segmented", segment_size=SEQ)
    assert len(result.rewritten) == zoo_onnx_case.case.expected_sites, result.to_dict()
    out = tmp_path / "segmented.onnx"
    result.save(out)
    report = attnopt.validate(path, out, inputs=_onnx_feeds(path, zoo.build(zoo_onnx_case.case.name)))
    assert report.is_exact(1e-5), report.to_dict()


@pytest.mark.zoo(select=lambda case, how: case.family == "t5-encoder" and how == zoo_lib.EXPORT)
def test_fx_unfused_pass_keeps_the_bias(zoo_fx_case):
    result = attnopt.rewrite(zoo_fx_case.graph, "segmented", segment_size=SEQ)
    assert len(result.rewritten) == zoo_fx_case.case.expected_sites, result.to_dict()
    report = attnopt.validate(zoo_fx_case.graph, result.model, example_inputs=zoo_fx_case.inputs)
    assert report.is_exact(1e-5), report.to_dict()


@pytest.mark.zoo(select=lambda case, how: case.family == "bert" and how in (zoo_lib.DYNAMO, zoo_lib.EXPORT))
def test_fuse_refuses_a_mask_that_is_not_a_relative_bias(zoo_onnx_case):
    assert all(s.relative_bias is None for s in attnopt.detect(zoo_onnx_case.path))
    with pytest.raises(NoSitesError, match="its mask is not a relative-position bias"):
        attnopt.rewrite(zoo_onnx_case.path, "relbias", **FUSE)


# ----------------------------------------------------------------------------- hand-built biases

class BiasedAttention(nn.Module):
    """One attention layer adding a per-head bias built at run time from positions (and the padding)."""

    def __init__(self, rule: str, radius: int = 5):
        super().__init__()
        torch.manual_seed(0)
        self.rule, self.radius = rule, radius
        self.qkv = nn.Linear(16, 48)
        self.table = nn.Parameter(torch.randn(2, 2 * radius + 1))

    def forward(self, x, attention_mask):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, 2, 8).permute(2, 0, 3, 1, 4).unbind(0)
        i = torch.arange(n, device=x.device)[:, None]
        j = torch.arange(n, device=x.device)[None, :]
        delta = j - i
        if self.rule == "clipped":  # a learned bias per distance, constant beyond ±radius
            bias = self.table[:, (delta.clamp(-self.radius, self.radius) + self.radius)]
        elif self.rule == "square":  # grows without bound: no finite table holds it
            bias = -0.01 * self.table[:, :1, None] ** 2 * (delta * delta).float()
        else:  # "absolute": depends on i and j, not on j - i alone
            bias = self.table[:, (i.clamp(max=self.radius) + 0 * j)] * 0.5 + 0.1 * j.float()
        pad = torch.zeros(b, 1, 1, n).masked_fill(attention_mask[:, None, None, :] == 0, torch.finfo(x.dtype).min)
        scores = (q @ k.transpose(-1, -2)) * 8**-0.5 + (bias[None] + pad)  # T5-style: padding added into the bias
        out = scores.softmax(-1) @ v
        return (out.transpose(1, 2).reshape(b, n, 16),)


def _hand_inputs(n: int):
    x = torch.randn(2, n, 16, generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, n, dtype=torch.long)
    mask[1, n - 3:] = 0
    return x, mask


def _hand_export(rule: str):
    dims = ({0: torch.export.Dim.AUTO, 1: torch.export.Dim.AUTO},) * 2
    return torch.export.export(BiasedAttention(rule).eval(), _hand_inputs(SEQ), dynamic_shapes=dims)


def test_dynamic_clipped_table_is_fused_exactly_at_other_lengths():
    """Symbolic shapes: the table is read at the probe length (> 2R) and must hold at every length."""
    ep = _hand_export("clipped")
    (site,) = attnopt.detect(ep)
    rb = site.relative_bias
    assert rb is not None and rb.radius == 5 and rb.key_padding is not None, site.summary()
    result = attnopt.rewrite(ep, "relbias", **FUSE)
    assert len(result.rewritten) == 1, result.to_dict()
    for n in (7, 40):
        report = attnopt.validate(ep, result.model, example_inputs=_hand_inputs(n))
        assert report.is_exact(1e-5), (n, report.to_dict())


@pytest.mark.parametrize("rule", ["square", "absolute"])
def test_a_bias_that_is_not_a_bounded_relative_bias_stays_dense(rule):
    (site,) = attnopt.detect(_hand_export(rule))
    assert site.relative_bias is None and site.masks, site.summary()
    with pytest.raises(NoSitesError, match="its mask is not a relative-position bias"):
        attnopt.rewrite(_hand_export(rule), "relbias", **FUSE)


# ----------------------------------------------------------------------------- tune

@pytest.mark.zoo(select=lambda case, how: case.family == "t5-encoder" and how == zoo_lib.TORCHSCRIPT)
def test_tune_at_an_exact_budget_fuses_the_bias(zoo_onnx_case, zoo):
    """tune offers relbias fuse where a site has a relative bias: at budget 1.0 every site takes it, exactly."""
    path = zoo_onnx_case.path
    result = attnopt.tune(path, 1.0, inputs=_onnx_feeds(path, zoo.build(zoo_onnx_case.case.name)),
                          variants=("segmented",))
    kernels = {(g.kernel, g.params.get("kind")) for s in result.plan.sites for g in s.groups}
    assert kernels == {("relbias", "fuse")}, result.plan.to_dict()
    assert all(s.rel_l2 is not None and s.rel_l2 <= 1e-5 for s in result.plan.sites), result.plan.to_dict()
