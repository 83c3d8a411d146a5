"""memory's streaming form: a model that takes one segment per call and carries memory and sinks as state.

Driving it segment by segment equals the one-shot memory rewrite of the whole
sequence (to fp32 tolerance), for ONNX and fx, while each call only sees
S + M_mem + G keys.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import attnopt
from attnopt.errors import InvalidParamsError, NoSitesError

B, N, E, H, HKV, LAYERS = 2, 24, 32, 4, 2, 2
D = E // H
S, MEMORY, SINKS = 6, 5, 2
PARAMS = dict(segment_size=S, memory=MEMORY, sinks=SINKS)


class Decoder(nn.Module):
    """Causal GQA self-attention layers with learned positions taken as an input."""

    def __init__(self, positions_input: bool = True):
        super().__init__()
        torch.manual_seed(0)
        self.positions_input = positions_input
        self.pos = nn.Embedding(64, E)
        self.q = nn.ModuleList(nn.Linear(E, E) for _ in range(LAYERS))
        self.kv = nn.ModuleList(nn.Linear(E, 2 * HKV * D) for _ in range(LAYERS))
        self.out = nn.ModuleList(nn.Linear(E, E) for _ in range(LAYERS))

    def forward(self, x, position_ids):
        h = x + self.pos(position_ids)
        b, n, _ = x.shape
        for q_proj, kv_proj, out in zip(self.q, self.kv, self.out):
            q = q_proj(h).view(b, n, H, D).transpose(1, 2)
            k, v = kv_proj(h).view(b, n, 2, HKV, D).permute(2, 0, 3, 1, 4)
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            h = h + out(o.transpose(1, 2).reshape(b, n, E))
        return h


def _inputs(n=N):
    gen = torch.Generator().manual_seed(1)
    return torch.randn(B, n, E, generator=gen), torch.arange(n)[None].expand(B, n).contiguous()


def _initial_state(names):
    return {name: np.zeros((1,), np.int64) if name.endswith(".seen") else np.zeros((B, HKV, 0, D), np.float32)
            for name in names}


@pytest.fixture(scope="module")
def decoder_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("stream") / "decoder.onnx"
    x, pos = _inputs()
    seq = torch.export.Dim("seq", min=2, max=64)
    torch.onnx.export(Decoder().eval(), (x, pos), path, input_names=["x", "position_ids"], output_names=["h"],
                      dynamo=True, opset_version=23, dynamic_shapes=({1: seq}, {1: seq}))
    return path


def test_onnx_stream_equals_the_one_shot_rewrite(decoder_onnx, tmp_path):
    x, pos = _inputs()
    one_shot = tmp_path / "one_shot.onnx"
    attnopt.rewrite(decoder_onnx, "memory", **PARAMS).save(one_shot)
    (expected,) = ort.InferenceSession(str(one_shot)).run(None, {"x": x.numpy(), "position_ids": pos.numpy()})

    streamed = tmp_path / "stream.onnx"
    result = attnopt.rewrite(decoder_onnx, "memory", streaming=True, **PARAMS)
    assert len(result.rewritten) == LAYERS
    result.save(streamed)
    sess = ort.InferenceSession(str(streamed))
    names = [i.name for i in sess.get_inputs()][2:]
    assert len(names) == 5 * LAYERS and [o.name for o in sess.get_outputs()][1:] == [n + ".next" for n in names]
    state, chunks = _initial_state(names), []
    for t in range(0, N, S):
        out = sess.run(None, {"x": x[:, t:t + S].numpy(), "position_ids": pos[:, t:t + S].numpy(), **state})
        chunks.append(out[0])
        state = dict(zip(names, out[1:]))
        # Bounded state: never more than M_mem memory keys and G sinks per site.
        assert all(v.shape[2] <= max(MEMORY, SINKS) for k, v in state.items() if not k.endswith(".seen"))
    np.testing.assert_allclose(np.concatenate(chunks, axis=1), expected, atol=2e-5, rtol=1e-5)
    # ... and the memory really restricts: the stream differs from dense attention.
    (dense,) = ort.InferenceSession(str(decoder_onnx)).run(None, {"x": x.numpy(), "position_ids": pos.numpy()})
    assert not np.allclose(dense, expected, atol=1e-3)


def test_fx_stream_equals_the_one_shot_rewrite():
    x, pos = _inputs()
    seq = torch.export.Dim("seq", min=2, max=64)
    program = torch.export.export(Decoder().eval(), (x, pos), dynamic_shapes=({1: seq}, {1: seq}))
    with torch.no_grad():
        expected = attnopt.rewrite(program, "memory", **PARAMS).model(x, pos)
        gm = attnopt.rewrite(program, "memory", streaming=True, **PARAMS).model
        names = [n.name for n in gm.graph.nodes if n.op == "placeholder"][2:]
        state = [torch.from_numpy(v) for v in _initial_state([n.replace("_seen", ".seen") for n in names]).values()]
        chunks = []
        for t in range(0, N, S):
            h, *state = gm(x[:, t:t + S], pos[:, t:t + S], *state)
            chunks.append(h)
    torch.testing.assert_close(torch.cat(chunks, dim=1), expected, atol=2e-5, rtol=1e-5)


def test_streaming_needs_positions_as_an_input(tmp_path):
    class NoPositions(Decoder):
        def forward(self, x, unused):
            return super().forward(x, torch.arange(x.shape[1])[None].expand(x.shape[0], -1))

    x, pos = _inputs()
    with pytest.raises(NoSitesError, match="positions as an input"):
        attnopt.rewrite(torch.export.export(NoPositions().eval(), (x, pos)), "memory", streaming=True, **PARAMS)


def test_only_passes_with_a_streaming_form_stream(decoder_onnx):
    with pytest.raises(InvalidParamsError, match="no streaming form"):
        attnopt.rewrite(decoder_onnx, "window", streaming=True, window=4)
