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


# ----------------------------------------------------------------------------- the op with a relative bias

def _stream_onnx_session(causal: bool):
    """One MemoryStreamAttention node; the bias tensors and the states are graph inputs."""
    from onnx import TensorProto, helper

    from attnopt.kernels.onnx_functions import attach_functions, register_schemas
    from attnopt.kernels.registry import get_variant
    from attnopt.onnx_compat import DOMAIN

    register_schemas()
    spec = get_variant("memory_stream")
    node = helper.make_node(spec.onnx_op_type, list(spec.onnx_inputs), list(spec.onnx_outputs), domain=DOMAIN,
                            memory=MEMORY, sinks=SINKS, scale=D ** -0.5, causal=int(causal), softcap=0.0)
    io = [helper.make_tensor_value_info(n, TensorProto.INT64 if n.startswith("seen") else TensorProto.FLOAT, None)
          for n in (*spec.onnx_inputs, *spec.onnx_outputs)]
    graph = helper.make_graph([node], "stream", io[:len(spec.onnx_inputs)], io[len(spec.onnx_inputs):])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    attach_functions(model, [spec.onnx_op_type])
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("causal", [True, False])
def test_op_and_onnx_body_stream_a_relative_bias_over_absolute_positions(causal):
    """Per-head ALiBi slopes plus a clipped table (T5-like, both directions): the stream equals one-shot memory
    with the same bias as a dense N×N mask, through the torch op and the ONNX body."""
    from attnopt.kernels.registry import get_variant
    from attnopt.kernels.relbias.positions import alibi_slopes
    from attnopt.kernels.relbias.reference import relative_bias

    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(B, h, N, D, generator=gen) for h in (H, HKV, HKV))
    slopes = torch.tensor(alibi_slopes(H))
    table = torch.randn(H, 2 * 3 + 1, generator=gen)
    expected = get_variant("memory").reference(q, k, v, **PARAMS, scale=D ** -0.5, causal=causal,
                                               mask=relative_bias(slopes, table, N, N)[None])
    op = get_variant("memory_stream").torch_op
    sess = _stream_onnx_session(causal)
    empty = torch.zeros(B, HKV, 0, D)
    state = (empty, empty, empty, empty, torch.zeros(1, dtype=torch.int64))
    onnx_state = tuple(t.numpy() for t in state)
    got, got_onnx = [], []
    for t in range(0, N, S):
        seg = [x[:, :, t:t + S] for x in (q, k, v)]
        y, *state = op(*seg, None, None, slopes, table, *state, MEMORY, SINKS, D ** -0.5, causal, 0.0)
        got.append(y)
        feeds = dict(zip(get_variant("memory_stream").onnx_inputs,
                         (*(x.numpy() for x in seg), np.zeros((1, 1, 1, 1), np.float32), np.zeros((1, 1), np.float32),
                          slopes.numpy(), table.numpy(), *onnx_state)))
        y_onnx, *onnx_state = sess.run(None, feeds)
        got_onnx.append(y_onnx)
    torch.testing.assert_close(torch.cat(got, dim=2), expected, atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(np.concatenate(got_onnx, axis=2), expected.numpy(), atol=2e-5, rtol=1e-5)
    # The bias matters: without it the stream is another function.
    plain = get_variant("memory").reference(q, k, v, **PARAMS, scale=D ** -0.5, causal=causal)
    assert not torch.allclose(plain, expected, atol=1e-3)
    # Nothing a call builds grows with the stream: a million tokens in, the largest tensor is still per-call sized.
    from kernel_harness import MaxNumel

    state[-1] = torch.tensor([10 ** 6])
    with MaxNumel() as seen:
        op(*seg, None, None, slopes, table, *state, MEMORY, SINKS, D ** -0.5, causal, 0.0)
    assert seen.max_numel <= B * H * (S + MEMORY + SINKS) * max(S, D)  # the scores, or the keys over heads


def test_streaming_takes_every_site_or_none(decoder_onnx):
    """A site left dense in a streamed model would attend within its segment only: refused, naming the site."""
    with pytest.raises(NoSitesError, match=r"every attention site streamed .*attention\.1.*outside --layers 0:1"):
        attnopt.rewrite(decoder_onnx, "memory", streaming=True, layers="0:1", **PARAMS)
