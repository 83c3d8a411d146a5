"""Head groups: one site, different kernels per group of heads, equal to the reference per group.

DuoAttention's plan (some heads dense, the others windowed) through both
frontends; a one-group plan adds no slicing; plans that split a GQA group or
leave heads out are refused with their reason.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn

import attnopt
from attnopt.kernels.reference import dense_attention
from attnopt.kernels.window.reference import reference as window_reference
from attnopt.passes.base import AttentionPass, HeadGroup, OpCall
from attnopt.pipeline import Pipeline

B, N, H, HKV, D = 2, 16, 4, 2, 8
WINDOW = 3


class GQAAttention(nn.Module):
    """Decomposed GQA attention with a key-padding mask; returns the (B, H, N, D) attention output."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.q = nn.Linear(D * H, D * H)
        self.kv = nn.Linear(D * H, 2 * D * HKV)

    def project(self, x):
        b, n, _ = x.shape
        q = self.q(x).view(b, n, H, D).transpose(1, 2)
        k, v = self.kv(x).view(b, n, 2, HKV, D).permute(2, 0, 3, 1, 4)
        rep = H // HKV
        k = k[:, :, None].expand(b, HKV, rep, n, D).reshape(b, H, n, D)
        v = v[:, :, None].expand(b, HKV, rep, n, D).reshape(b, H, n, D)
        return q, k, v

    def forward(self, x, pad):
        q, k, v = self.project(x)
        s = q @ k.transpose(-1, -2) / D ** 0.5 + (1.0 - pad[:, None, None, :]) * -1e9
        return torch.softmax(s, dim=-1) @ v


class HalfDense(AttentionPass):
    """Heads [0, split) stay dense, the rest get a window: DuoAttention's retrieval/streaming split."""

    variant = "window"

    def __init__(self, split=2, **params):
        super().__init__(**params)
        self.split = split

    def plan_site(self, site):
        return OpCall(site, (HeadGroup("dense", {}, 0, self.split),
                             HeadGroup("window", {"window": self.params.window, "sinks": 0}, self.split, None)))


def inputs():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(B, N, D * H, generator=gen)
    pad = torch.ones(B, N)
    pad[0, -4:] = 0
    return x, pad


def expected(model, x, pad):
    q, k, v = model.project(x)
    kp = (1.0 - pad) * -1e9
    dense = dense_attention(q[:, :2], k[:, :2], v[:, :2], scale=D ** -0.5, key_padding=kp)
    kv = slice(2, None, H // HKV)  # the GQA repeat back to kv heads: heads 2, 3 read kv head 1
    windowed = window_reference(q[:, 2:], k[:, kv], v[:, kv], window=WINDOW, scale=D ** -0.5, key_padding=kp)
    return torch.cat([dense, windowed], dim=1)


def test_half_dense_half_window_onnx(tmp_path):
    model = GQAAttention().eval()
    x, pad = inputs()
    path = tmp_path / "gqa.onnx"
    torch.onnx.export(model, (x, pad), path, input_names=["x", "pad"], output_names=["y"], dynamo=True)
    result = Pipeline().add(HalfDense(window=WINDOW)).run(str(path))
    assert [o.status for o in result.report] == ["rewritten"]
    out = tmp_path / "gqa.groups.onnx"
    result.save(out)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {"x": x.numpy(), "pad": pad.numpy()})
    torch.testing.assert_close(torch.from_numpy(y), expected(model, x, pad), atol=1e-5, rtol=1e-5)
    # The plan really differs from dense: the windowed half changed.
    with torch.no_grad():
        assert not torch.allclose(torch.from_numpy(y), model(x, pad), atol=1e-3)


def test_half_dense_half_window_fx():
    model = GQAAttention().eval()
    x, pad = inputs()
    result = Pipeline().add(HalfDense(window=WINDOW)).run(torch.export.export(model, (x, pad)))
    gm = result.model
    assert "dense_attention" in gm.code and "window_attention" in gm.code
    with torch.no_grad():
        y = gm(x, pad)
    y = y[0] if isinstance(y, (tuple, list)) else y
    torch.testing.assert_close(y, expected(model, x, pad), atol=1e-5, rtol=1e-5)


def test_one_group_plan_slices_nothing(tmp_path):
    model = GQAAttention().eval()
    x, pad = inputs()
    path = tmp_path / "gqa.onnx"
    torch.onnx.export(model, (x, pad), path, input_names=["x", "pad"], output_names=["y"], dynamo=True)
    result = attnopt.rewrite(str(path), "window", window=WINDOW)
    ours = [n.op_type for n in result.model.graph if "attnopt_" in (n.name or "")]
    assert ours.count("WindowAttention") == 1 and "Concat" not in ours and "Slice" not in ours, ours


@pytest.mark.parametrize("groups, reason", [
    (((0, 1), (1, None)), "splits a GQA group"),
    (((0, 2),), "cover heads 0..2"),
    (((2, None), (0, 2)), "tile heads"),
])
def test_bad_head_groups_are_refused(tmp_path, groups, reason):
    class Bad(HalfDense):
        def plan_site(self, site):
            return OpCall(site, tuple(HeadGroup("dense", {}, a, b) for a, b in groups))

    model = GQAAttention().eval()
    x, pad = inputs()
    path = tmp_path / "gqa.onnx"
    torch.onnx.export(model, (x, pad), path, input_names=["x", "pad"], output_names=["y"], dynamo=True)
    result = Pipeline().add(Bad(window=WINDOW)).run(str(path), require_rewrite=False)
    (outcome,) = result.report
    assert outcome.status == "refused" and reason in outcome.reason, outcome


def test_head_groups_refuse_heads_folded_with_extra_axes(zoo):
    """Hiera-style attention over (B, H, units, N, D) reaches the ops with each (head, unit) pair as a head: a
    head range would mean something else there, so a split plan is refused with the reason; the whole site is
    rewritten (test_local_variants_zoo checks its numbers)."""
    path = str(zoo.onnx_path("hand-mask-units", "dynamo"))
    result = Pipeline().add(HalfDense(window=WINDOW)).run(path, require_rewrite=False)
    (outcome,) = result.report
    assert outcome.status == "refused" and "extra batching axes" in outcome.reason, outcome
    (outcome,) = attnopt.rewrite(path, "window", window=WINDOW).report
    assert outcome.status == "rewritten", outcome
