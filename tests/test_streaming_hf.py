"""memory's streaming form on Hugging Face exports: BLOOM (ALiBi) and Llama (RoPE from position_ids).

Each model is built from a small config with seeded random weights (tests/zoo.py's helpers; zoo.py
itself is not touched, its text keys the export cache), exported with a dynamic sequence, rewritten
``--streaming`` and driven segment by segment; the outputs must equal the one-shot memory rewrite of
the whole sequence to fp32 tolerance, in ONNX (TorchScript exporter, as fast as the zoo's) and fx.

BLOOM has no position input: its only position dependence is the ALiBi bias, which mask analysis
recognises and the streaming op computes over absolute stream positions. Llama takes position_ids.
GPT-2's learned absolute positions are computed inside the graph: streaming it is refused.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

import attnopt
from attnopt.errors import NoSitesError

import zoo as zoo_lib
from test_relbias_fuse import _hand_export

N, S, MEMORY, SINKS = 24, 6, 5, 2
PARAMS = dict(segment_size=S, memory=MEMORY, sinks=SINKS)
ATOL = 2e-5


def _bloom():
    from transformers import BloomConfig, BloomModel

    zoo_lib._hf_quiet()
    model = zoo_lib._hf_model(BloomModel, BloomConfig(vocab_size=zoo_lib.VOCAB, hidden_size=32, n_layer=2, n_head=4),
                              "eager")
    names = ["input_ids", "attention_mask"]
    return zoo_lib.HFWrapper(model, names, {"use_cache": False}), zoo_lib._text_inputs(N, N - 3), names, (4, 8)


class LlamaWithPositions(torch.nn.Module):
    """HF's own argument names, so fx placeholders are named position_ids too (zoo's HFWrapper says x0, x1, x2)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         use_cache=False, return_dict=True)
        return (out.last_hidden_state,)


def _llama():
    from transformers import LlamaConfig, LlamaModel

    zoo_lib._hf_quiet()
    cfg = LlamaConfig(vocab_size=zoo_lib.VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = zoo_lib._hf_model(LlamaModel, cfg, "sdpa")
    names = ["input_ids", "attention_mask", "position_ids"]
    ids, mask = zoo_lib._text_inputs(N, N - 3)
    positions = torch.arange(N)[None].expand(zoo_lib.BATCH, N).contiguous()
    return LlamaWithPositions(model), (ids, mask, positions), names, (2, 16)


MODELS = {"bloom": _bloom, "llama": _llama}


def _zero_state(name: str, kv_heads: int, head_dim: int) -> np.ndarray:
    """A site's state at the start of the stream: no token seen, no key kept."""
    if name.endswith("seen"):
        return np.zeros((1,), np.int64)
    return np.zeros((zoo_lib.BATCH, kv_heads, 0, head_dim), np.float32)


def _segments(inputs):
    return [[t[:, start:start + S] for t in inputs] for start in range(0, N, S)]


@pytest.fixture(scope="module", params=sorted(MODELS))
def hf_onnx(request, tmp_path_factory):
    module, inputs, names, kv = MODELS[request.param]()
    path = tmp_path_factory.mktemp("stream_hf") / f"{request.param}.onnx"
    torch.onnx.export(module, inputs, path, input_names=names, output_names=["h"], dynamo=False,
                      opset_version=zoo_lib.TORCHSCRIPT_OPSET, dynamic_axes={n: {0: "batch", 1: "seq"} for n in names})
    return request.param, path, inputs, names, kv


def test_onnx_stream_equals_the_one_shot_rewrite(hf_onnx, tmp_path):
    family, path, inputs, names, kv = hf_onnx
    feeds = {n: t.numpy() for n, t in zip(names, inputs)}
    one_shot = tmp_path / "one_shot.onnx"
    attnopt.rewrite(path, "memory", **PARAMS).save(one_shot)
    (expected,) = ort.InferenceSession(str(one_shot)).run(None, feeds)

    result = attnopt.rewrite(path, "memory", streaming=True, **PARAMS)
    assert [o.kernel for o in result.report] == ["memory_stream"] * 2, result.to_dict()
    if family == "bloom":  # the ALiBi term was recognised and is computed by the op, not carried as a mask
        assert all(o.groups[0].tensors == ["slopes", "table"] for o in result.report)
        assert not any(s.masks for s in result.loaded.sites), [s.summary() for s in result.loaded.sites]
    streamed = tmp_path / "stream.onnx"
    result.save(streamed)
    sess = ort.InferenceSession(str(streamed))
    states = [i.name for i in sess.get_inputs()][len(names):]
    state, chunks = {n: _zero_state(n, *kv) for n in states}, []
    for segment in _segments(inputs):
        out = sess.run(None, {**{n: t.numpy() for n, t in zip(names, segment)}, **state})
        chunks.append(out[0])
        state = dict(zip(states, out[1:]))
        assert all(v.shape[2] <= max(MEMORY, SINKS) for k, v in state.items() if not k.endswith(".seen"))
    np.testing.assert_allclose(np.concatenate(chunks, axis=1), expected, atol=ATOL, rtol=1e-5)
    # The memory really restricts: the one-shot rewrite is not dense attention.
    (dense,) = ort.InferenceSession(str(path)).run(None, feeds)
    assert not np.allclose(dense, expected, atol=1e-3)


@pytest.mark.parametrize("family", sorted(MODELS))
def test_fx_stream_equals_the_one_shot_rewrite(family):
    module, inputs, names, kv = MODELS[family]()
    seq = torch.export.Dim("seq", min=2, max=64)
    program = torch.export.export(module, tuple(inputs), dynamic_shapes=tuple({1: seq} for _ in inputs))
    with torch.no_grad():
        (expected,) = attnopt.rewrite(program, "memory", **PARAMS).model(*inputs)
        gm = attnopt.rewrite(program, "memory", streaming=True, **PARAMS).model
        states = [n.name for n in gm.graph.nodes if n.op == "placeholder"][len(inputs):]
        state = [torch.from_numpy(_zero_state(n, *kv)) for n in states]
        chunks = []
        for segment in _segments(inputs):
            h, *state = gm(*segment, *state)
            chunks.append(h)
    torch.testing.assert_close(torch.cat(chunks, dim=1), expected, atol=ATOL, rtol=1e-5)


def test_absolute_positions_computed_inside_the_model_are_refused(tmp_path):
    """GPT-2 adds learned positions from an arange it builds itself: each segment would restart them."""
    built = zoo_lib.gpt2("eager")
    path = tmp_path / "gpt2.onnx"
    torch.onnx.export(built.module, built.inputs, path, input_names=list(built.input_names), output_names=["h"],
                      dynamo=False, opset_version=zoo_lib.TORCHSCRIPT_OPSET)
    with pytest.raises(NoSitesError, match="positions as an input .* or relative at every site"):
        attnopt.rewrite(path, "memory", streaming=True, **PARAMS)


def test_a_dense_mask_that_is_not_a_relative_bias_is_refused():
    with pytest.raises(NoSitesError, match="not a recognised relative-position bias"):
        attnopt.rewrite(_hand_export("absolute"), "memory", streaming=True, **PARAMS)
