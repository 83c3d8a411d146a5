"""The model zoo: tiny models, their exports, and the attention sites each must yield.

Every case builds a small model from a config with seeded random weights (no
downloads), wraps it so it takes tensors positionally and returns a tuple of
tensors, and states exactly how many dense attention sites it contains and
their geometry. The exports are cached on disk under ``<repo>/.zoo_cache/``
(or $ATTNOPT_ZOO_CACHE), keyed by the library versions and by this file's
content above the CLI section, so a second run reuses them. Every ONNX export
is run once in onnxruntime (CPU EP) against torch when it is built.

Plain module: importable without pytest. Build everything and print a table with

    python -m tests.zoo --build [-j 2] [--only SUBSTRING] [--clean]
    python -m tests.zoo --list
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import hashlib
import json
import logging
import math
import os
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE_ROOT = Path(os.environ.get("ATTNOPT_ZOO_CACHE") or REPO_ROOT / ".zoo_cache")  # env: e.g. a scratch dir

# ONNX exporters. Every case is exported by each of these unless it lists the
# exporter in ``excluded`` (with the exact error as the reason).
DYNAMO = "dynamo"  # torch.onnx.export(dynamo=True) at its default opset
DYNAMO_OPSET23 = "dynamo-opset23"  # dynamo=True, opset_version=23: SDPA becomes ONNX Attention
TORCHSCRIPT = "torchscript"  # torch.onnx.export(dynamo=False), opset 17
ORT_FUSED = "dynamo-ortfused"  # DYNAMO passed through onnxscript's optimize_for_ort
ONNX_EXPORTERS = (DYNAMO, DYNAMO_OPSET23, TORCHSCRIPT)

# torch-level graphs handed to attnopt.detect directly.
EXPORT = "export"  # torch.export.export -> ExportedProgram
SYMBOLIC_TRACE = "symbolic_trace"  # torch.fx.symbolic_trace -> GraphModule (+ example_inputs)
MODULE = "module"  # the nn.Module itself, with example_inputs; detect() exports it
FX_TRACERS = (EXPORT, SYMBOLIC_TRACE, MODULE)
# torch.export, then ExportedProgram.run_decompositions(): SDPA written out as matmuls around torch's safe softmax.
# Only for some HF sdpa cases (``_impl_cases(..., decomposed=True)``), which keeps the suite's time.
DECOMPOSED = "decomposed"

TORCHSCRIPT_OPSET = 17
SEQ = 10  # text length; differs from every head count and head_dim on purpose
DEC_SEQ = 6  # decoder length for encoder-decoder models (cross attention: 6 x 10)
BATCH = 2
VOCAB = 100


@dataclass
class Built:
    """What a case factory returns."""

    module: nn.Module
    inputs: tuple[torch.Tensor, ...]
    input_names: Sequence[str] | None = None
    output_names: Sequence[str] | None = None
    # {input_name: {axis: dim_name}}; None means every shape is static.
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None


@dataclass(frozen=True)
class ZooCase:
    name: str
    family: str
    factory: Callable[[], Built] = field(repr=False)
    expected_sites: int
    heads: int | tuple[int, ...] | None = None  # a tuple: each site's, in graph order (Hiera's stages differ)
    kv_heads: int | None = None  # None: same as heads
    head_dim: int | None = None
    # Acceptable values of the effective scale; None: (1/sqrt(head_dim),).
    scales: tuple[float, ...] | None = None
    # Number of sites whose attention is causal / whose q and kv are the same
    # sequence. None: not stated.
    causal_sites: int | None = None
    self_attention_sites: int | None = None
    onnx_exporters: tuple[str, ...] = ONNX_EXPORTERS
    fx_tracers: tuple[str, ...] = (EXPORT,)
    # exporter or tracer -> why that combination is left out (the exact error).
    excluded: Mapping[str, str] = field(default_factory=dict)
    # A decode step over a KV cache: (new tokens N, cached tokens M − N). Its sites have q_len N,
    # kv_len M and past_len M − N; None: not a KV-cache step.
    kv_cache_step: tuple[int, int] | None = None
    # exporter -> substring of the error onnxruntime raises on a valid-looking export. The export is
    # kept (the graph is still a detection target) but marked unverified.
    ort_known_failures: Mapping[str, str] = field(default_factory=dict)
    atol: float = 1e-4  # onnxruntime vs torch, checked once at build time

    @property
    def expected_kv_heads(self) -> int | None:
        return self.kv_heads if self.kv_heads is not None else self.heads

    @property
    def expected_scales(self) -> tuple[float, ...]:
        if self.scales is not None:
            return self.scales
        if self.head_dim is None:
            return ()
        return (1.0 / math.sqrt(self.head_dim),)

    @property
    def negative(self) -> bool:
        return self.expected_sites == 0

    @property
    def cross_attention_sites(self) -> int | None:
        if self.self_attention_sites is None:
            return None
        return self.expected_sites - self.self_attention_sites

    @property
    def active_onnx_exporters(self) -> tuple[str, ...]:
        return tuple(e for e in self.onnx_exporters if e not in self.excluded)

    @property
    def active_fx_tracers(self) -> tuple[str, ...]:
        return tuple(t for t in self.fx_tracers if t not in self.excluded)


# ---------------------------------------------------------------------------
# Wrappers: positional tensors in, tuple of tensors out.


class HFWrapper(nn.Module):
    """Calls a Hugging Face model with keyword inputs, returns (last_hidden_state,) or another output field."""

    def __init__(self, model: nn.Module, arg_names: Sequence[str], extra: Mapping[str, Any] | None = None,
                 output: str = "last_hidden_state"):
        super().__init__()
        self.model = model
        self.arg_names = tuple(arg_names)
        self.extra = dict(extra or {})
        self.output = output  # the model output's field to return (Mask2Former has no last_hidden_state)

    # Explicit positional parameters (not *args) so dynamic_shapes can be given per input.
    def forward(self, x0, x1=None, x2=None, x3=None, x4=None):
        kwargs = dict(zip(self.arg_names, (x0, x1, x2, x3, x4)))
        out = self.model(**kwargs, **self.extra, return_dict=True)
        return (getattr(out, self.output),)


# transformers' FlexAttention: export records each call as the flex_attention higher-order op, its mask_mod
# reading packed-sequence tensors the graph builds from the positions (attnopt/frontends/fx_flex.py).
FLEX = "flex_attention"


def _flex_built(model: nn.Module) -> Built:
    """A decoder with transformers' FlexAttention, called with input_ids alone: with an attention_mask, its flex
    mask stops torch.export on a data-dependent guard. No gradients: FlexAttention has no backward on the CPU."""
    return Built(HFWrapper(model.requires_grad_(False), ["input_ids"], {"use_cache": False}), _text_inputs()[:1],
                 ["input_ids"], ["last_hidden_state"], None)


def _text_built(model: nn.Module, **extra) -> Built:
    """A Hugging Face text model called with input_ids and attention_mask (``_text_inputs``) and keyword
    ``extra`` (use_cache=False for decoders), its last_hidden_state the output."""
    names = ["input_ids", "attention_mask"]
    return Built(HFWrapper(model, names, extra), _text_inputs(), names, ["last_hidden_state"])


def _text_inputs(seq: int = SEQ, pad_from: int | None = SEQ - 3, gen_seed: int = 1):
    g = torch.Generator().manual_seed(gen_seed)
    ids = torch.randint(1, VOCAB, (BATCH, seq), generator=g)
    return ids, _padding_mask(seq, pad_from)


def _padding_mask(seq: int, pad_from: int | None) -> torch.Tensor:
    """(BATCH, seq) ones, the second row zero from ``pad_from`` on: right padding, so no query row is fully
    masked, even when causal."""
    mask = torch.ones(BATCH, seq, dtype=torch.long)
    if pad_from is not None:
        mask[1, pad_from:] = 0
    return mask


def _word_boxes() -> torch.Tensor:
    """(BATCH, SEQ, 4) word boxes (x0, y0, x1, y1) on a 0..1000 page, for the layout models' ``bbox``."""
    corner = torch.randint(0, 500, (BATCH, SEQ, 2), generator=torch.Generator().manual_seed(7))
    return torch.cat([corner, corner + 10], -1)


def _pixels(size: int = 16, channels: int = 3):
    g = torch.Generator().manual_seed(2)
    return torch.randn(BATCH, channels, size, size, generator=g)


def _video(frames: int = 4, size: int = 16) -> torch.Tensor:
    """(BATCH, frames, 3, size, size) pixels."""
    return torch.randn(BATCH, frames, 3, size, size, generator=torch.Generator().manual_seed(2))


def _hf_model(cls, config, impl: str) -> nn.Module:
    config._attn_implementation = impl
    torch.manual_seed(0)
    model = cls(config).eval()
    got = model.config._attn_implementation
    if got != impl:
        raise RuntimeError(f"{cls.__name__}: asked for attn_implementation={impl!r}, got {got!r}")
    # torch's ONNX exporters cannot export transformers' default experts kernel, grouped_mm (TorchScript: aten::histc
    # unsupported; dynamo: no ONNX function for transformers::grouped_mm_fallback); batched_mm computes the same
    # experts with batched matmuls. transformers defaults to grouped_mm only for models whose experts dispatch
    # through its experts interface (any other model gets "eager" and is left as it is).
    if hasattr(model, "set_experts_implementation") and "grouped_mm" in model.get_experts_implementation().values():
        model.set_experts_implementation("batched_mm")
    return model


def _hf_quiet():
    import transformers

    transformers.logging.set_verbosity_error()


# ---------------------------------------------------------------------------
# Hugging Face families. Each factory takes the attention implementation.


def bert(impl: str, dynamic: bool = False) -> Built:
    from transformers import BertConfig, BertModel

    _hf_quiet()
    cfg = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    model = _hf_model(lambda c: BertModel(c, add_pooling_layer=False), cfg, impl)
    names = ["input_ids", "attention_mask"]
    dyn = {n: {0: "batch", 1: "seq"} for n in names} if dynamic else None
    return Built(HFWrapper(model, names), _text_inputs(), names, ["last_hidden_state"], dyn)


def distilbert(impl: str) -> Built:
    from transformers import DistilBertConfig, DistilBertModel

    _hf_quiet()
    cfg = DistilBertConfig(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                           max_position_embeddings=64)
    model = _hf_model(DistilBertModel, cfg, impl)
    return _text_built(model)


def gpt2(impl: str) -> Built:
    from transformers import GPT2Config, GPT2Model

    _hf_quiet()
    cfg = GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64, n_inner=64)
    model = _hf_model(GPT2Model, cfg, impl)
    return _text_built(model, use_cache=False)


def openai_gpt(impl: str) -> Built:
    """GPT-1: its causal mask is a blend, ``w * b + -1e4 * (1 - b)`` with b the 0/1 lower triangle, which is
    masked_fill written as arithmetic (no sdpa form)."""
    from transformers import OpenAIGPTConfig, OpenAIGPTModel

    _hf_quiet()
    cfg = OpenAIGPTConfig(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64)
    model = _hf_model(OpenAIGPTModel, cfg, impl)
    return _text_built(model)


def vit(impl: str) -> Built:
    from transformers import ViTConfig, ViTModel

    _hf_quiet()
    cfg = ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
                    num_attention_heads=2, intermediate_size=64)
    model = _hf_model(lambda c: ViTModel(c, add_pooling_layer=False), cfg, impl)
    return Built(HFWrapper(model, ["pixel_values"]), (_pixels(),), ["pixel_values"], ["last_hidden_state"])


def dinov3_vit(impl: str) -> Built:
    """DINOv3: RoPE over the patch tokens only, so q and k concatenate the untouched CLS and register tokens with
    the rotated patches. TorchScript computes the RoPE tables' sizes in If nodes that no shape inference takes;
    the lengths, and so the proof of self-attention, come from those Ifs folded (``onnx.infer_shapes``)."""
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    _hf_quiet()
    cfg = DINOv3ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
                          num_attention_heads=4, intermediate_size=64, num_register_tokens=2)
    model = _hf_model(DINOv3ViTModel, cfg, impl)
    return Built(HFWrapper(model, ["pixel_values"]), (_pixels(),), ["pixel_values"], ["last_hidden_state"])


def swin(impl: str) -> Built:
    """One stage of two blocks: windowed attention with a relative-position bias, then shifted windows
    with the shift mask added (8x8 patches, 4 windows of 16 tokens each, folded into the batch)."""
    from transformers import SwinConfig, SwinModel

    _hf_quiet()
    cfg = SwinConfig(image_size=32, patch_size=4, num_channels=3, embed_dim=16, depths=[2], num_heads=[2],
                     window_size=4, mlp_ratio=2.0)
    model = _hf_model(lambda c: SwinModel(c, add_pooling_layer=False), cfg, impl)
    return Built(HFWrapper(model, ["pixel_values"]), (_pixels(32),), ["pixel_values"], ["last_hidden_state"])


def swinv2(impl: str) -> Built:
    """Swin's windows and shift mask with cosine attention: normalised q and k, and the scores multiplied by
    a learned scale per head, exp(clamp(logit_scale)) of shape (H, 1, 1), before the position bias."""
    from transformers import Swinv2Config, Swinv2Model

    _hf_quiet()
    cfg = Swinv2Config(image_size=32, patch_size=4, num_channels=3, embed_dim=16, depths=[2], num_heads=[2],
                       window_size=4, mlp_ratio=2.0)
    model = _hf_model(lambda c: Swinv2Model(c, add_pooling_layer=False), cfg, impl)
    with torch.no_grad():  # distinct scales per head, so a rewrite that dropped them or mixed heads up shows
        for block in model.encoder.layers[0].blocks:
            block.attention.self.logit_scale.copy_(torch.log(torch.tensor([4.0, 12.0])).view(2, 1, 1))
    return Built(HFWrapper(model, ["pixel_values"]), (_pixels(32),), ["pixel_values"], ["last_hidden_state"])


def hiera(impl: str) -> Built:
    """Mask-unit attention over five axes, (B, H, windows, N, D): a windowed block, then a global one over one
    "window" with pooled queries (4 queries against 16 keys). The rewrites fold the windows into the heads."""
    from transformers import HieraConfig, HieraModel

    _hf_quiet()
    cfg = HieraConfig(embed_dim=16, image_size=[32, 32], patch_size=[3, 3], patch_stride=[2, 2], patch_padding=[1, 1],
                      depths=[1, 1], num_heads=[1, 2], num_query_pool=1, query_stride=[2, 2], masked_unit_size=[4, 4],
                      masked_unit_attention=[True, False], mlp_ratio=2.0)
    model = _hf_model(HieraModel, cfg, impl)
    return Built(HFWrapper(model, ["pixel_values"]), (_pixels(32),), ["pixel_values"], ["last_hidden_state"])


def vitdet(impl: str) -> Built:
    """Decomposed relative positions (ViTDet, and SAM's image encoder): terms computed from q added to the
    scores viewed (B·H, qh, qw, kh, kw), one varying over kh and one over kw; a windowed block (2x2 windows
    of the 4x4 patch grid folded into the batch) then a global one."""
    from transformers import VitDetConfig, VitDetModel

    _hf_quiet()
    cfg = VitDetConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       mlp_ratio=2, pretrain_image_size=32, use_relative_position_embeddings=True, window_size=2,
                       window_block_indices=[0])
    model = _hf_model(VitDetModel, cfg, impl)
    with torch.no_grad():  # transformers starts the position tables at zero: random ones make the terms count
        for name, p in model.named_parameters():
            if "rel_pos" in name:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(7)))
    return Built(HFWrapper(model, ["pixel_values"]), (_pixels(32),), ["pixel_values"], ["feature_maps"])


def perceiver(impl: str) -> Built:
    """Learned latents attend to the inputs (queries from a parameter, keys and values from the input, with its
    padding mask), then the latents attend to each other twice."""
    from transformers import PerceiverConfig, PerceiverModel

    _hf_quiet()
    cfg = PerceiverConfig(num_latents=6, d_latents=32, d_model=32, num_blocks=1, num_self_attends_per_block=2,
                          num_self_attention_heads=4, num_cross_attention_heads=4)
    model = _hf_model(PerceiverModel, cfg, impl)
    x = torch.randn(BATCH, SEQ, 32, generator=torch.Generator().manual_seed(6))
    mask = torch.ones(BATCH, SEQ, dtype=torch.long)
    mask[1, SEQ - 3:] = 0
    names = ["inputs", "attention_mask"]
    return Built(HFWrapper(model, names), (x, mask), names, ["last_hidden_state"])


def _t5_config():
    from transformers import T5Config

    return T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2,
                    num_decoder_layers=2, relative_attention_num_buckets=8,
                    relative_attention_max_distance=16, decoder_start_token_id=0, pad_token_id=0)


def gpt_neo(impl: str) -> Built:
    """A global layer then a local one (a causal window of 4 keys), the scores unscaled; the causal (and window)
    mask is a constant where(mask, scores, finfo.min)."""
    from transformers import GPTNeoConfig, GPTNeoModel

    _hf_quiet()
    cfg = GPTNeoConfig(vocab_size=VOCAB, max_position_embeddings=64, hidden_size=32, num_heads=4, num_layers=2,
                       attention_types=[[["global", "local"], 1]], window_size=4)
    model = _hf_model(GPTNeoModel, cfg, impl)
    return _text_built(model, use_cache=False)


def switch_transformers(impl: str) -> Built:
    """T5's bucketed position bias, kept apart from the padding mask: a (1, H, N, M) term beside a (B, 1, 1, M)
    one (the relative-bias probe once broadcast the first against the second's batch and raised)."""
    from transformers import SwitchTransformersConfig, SwitchTransformersModel

    _hf_quiet()
    cfg = SwitchTransformersConfig(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_decoder_layers=1,
                                   num_heads=4, num_experts=2, relative_attention_num_buckets=8, dropout_rate=0.0,
                                   decoder_start_token_id=0, pad_token_id=0)
    model = _hf_model(SwitchTransformersModel, cfg, impl)
    names = ["input_ids", "attention_mask", "decoder_input_ids"]
    return Built(HFWrapper(model, names, {"use_cache": False}), (*_text_inputs(), _dec_ids()), names,
                 ["last_hidden_state"])


def t5_encoder(impl: str) -> Built:
    from transformers import T5EncoderModel

    _hf_quiet()
    model = _hf_model(T5EncoderModel, _t5_config(), impl)
    return _text_built(model)


def _dec_ids():
    g = torch.Generator().manual_seed(3)
    return torch.randint(1, VOCAB, (BATCH, DEC_SEQ), generator=g)


def t5(impl: str) -> Built:
    from transformers import T5Model

    _hf_quiet()
    model = _hf_model(T5Model, _t5_config(), impl)
    names = ["input_ids", "attention_mask", "decoder_input_ids"]
    return Built(HFWrapper(model, names, {"use_cache": False}), (*_text_inputs(), _dec_ids()), names,
                 ["last_hidden_state"])


def bart(impl: str) -> Built:
    from transformers import BartConfig, BartModel

    _hf_quiet()
    cfg = BartConfig(vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=2,
                     encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                     decoder_ffn_dim=64, max_position_embeddings=64)
    model = _hf_model(BartModel, cfg, impl)
    names = ["input_ids", "attention_mask", "decoder_input_ids"]
    return Built(HFWrapper(model, names, {"use_cache": False}), (*_text_inputs(), _dec_ids()), names,
                 ["last_hidden_state"])


def llama(impl: str, dynamic: bool = False) -> Built:
    from transformers import LlamaConfig, LlamaModel

    _hf_quiet()
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = _hf_model(LlamaModel, cfg, impl)
    if impl == FLEX:
        return _flex_built(model)
    names = ["input_ids", "attention_mask"]
    dyn = {n: {0: "batch", 1: "seq"} for n in names} if dynamic else None
    return Built(HFWrapper(model, names, {"use_cache": False}), _text_inputs(), names, ["last_hidden_state"], dyn)


def diffllama(impl: str) -> Built:
    """Differential attention: each layer attends twice with the same q and k (two halves of the values); the
    dynamo exporter merges the two softmaxes into one that two value products read."""
    from transformers import DiffLlamaConfig, DiffLlamaModel

    _hf_quiet()
    cfg = DiffLlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return _text_built(_hf_model(DiffLlamaModel, cfg, impl), use_cache=False)


def jetmoe(impl: str) -> Built:
    """Mixture of attention heads; its sdpa form calls ``.view`` on the transposed output, which works only
    because torch's SDPA stores (B, H, N, D) as (B, N, H, D): a rewrite must keep that memory order."""
    from transformers import JetMoeConfig, JetMoeModel

    _hf_quiet()
    cfg = JetMoeConfig(vocab_size=VOCAB, hidden_size=32, num_attention_heads=4, num_hidden_layers=2, kv_channels=8,
                       num_local_experts=2, num_experts_per_tok=1, intermediate_size=64, max_position_embeddings=64)
    return _text_built(_hf_model(JetMoeModel, cfg, impl), use_cache=False)


def xlnet(impl: str) -> Built:
    """Relative attention in einsums over (N, B, H, D); with no segment ids its scores get a literal 0 added
    (in fx, a Python number, not a graph value)."""
    from transformers import XLNetConfig, XLNetModel

    _hf_quiet()
    cfg = XLNetConfig(vocab_size=VOCAB, d_model=64, n_layer=2, n_head=4, d_inner=128)
    return _text_built(_hf_model(XLNetModel, cfg, impl))


def deepseek_mla(impl: str) -> Built:
    """Multi-head latent attention (DeepSeek V2/V3, Kimi K2): q and k over 16 dims (8 of them rotary), values
    over 8, as DeepSeek's 192 against 128; the rewrites zero-pad the values and cut the output back."""
    from transformers import DeepseekV3Config, DeepseekV3Model

    _hf_quiet()
    cfg = DeepseekV3Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                           num_key_value_heads=4, num_hidden_layers=2, max_position_embeddings=64, kv_lora_rank=16,
                           q_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8,
                           first_k_dense_replace=2, n_routed_experts=2, num_experts_per_tok=1, n_group=1,
                           topk_group=1, moe_intermediate_size=32, pad_token_id=0)
    return _text_built(_hf_model(DeepseekV3Model, cfg, impl), use_cache=False)


def gpt_oss(impl: str) -> Built:
    """GPT-OSS: one learned sink logit a head joins every row's softmax as a column of value zero (the ops take
    it); sliding-window and full layers alternate. Neither ONNX exporter of torch exports it (TorchScript:
    aten::histc in the MoE router; dynamo: a conversion error), so it is an fx case (no sdpa form either)."""
    from transformers import GptOssConfig, GptOssModel

    _hf_quiet()
    cfg = GptOssConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                       num_key_value_heads=2, num_hidden_layers=2, pad_token_id=0, head_dim=8, num_local_experts=2,
                       num_experts_per_tok=1, sliding_window=4, layer_types=["sliding_attention", "full_attention"],
                       max_position_embeddings=64)
    return _text_built(_hf_model(GptOssModel, cfg, impl), use_cache=False)


def mistral(impl: str) -> Built:
    from transformers import MistralConfig, MistralModel

    _hf_quiet()
    # sliding_window=None, as Mistral 7B v0.2+: a window wider than SEQ would be plain causal here anyway.
    cfg = MistralConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                        sliding_window=None)
    model = _hf_model(MistralModel, cfg, impl)
    return _text_built(model, use_cache=False)


def qwen2(impl: str) -> Built:
    from transformers import Qwen2Config, Qwen2Model

    _hf_quiet()
    cfg = Qwen2Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = _hf_model(Qwen2Model, cfg, impl)
    return _text_built(model, use_cache=False)


def whisper_encoder(impl: str) -> Built:
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    _hf_quiet()
    cfg = WhisperConfig(vocab_size=VOCAB, num_mel_bins=16, d_model=32, encoder_layers=2,
                        encoder_attention_heads=4, decoder_layers=2, decoder_attention_heads=4,
                        encoder_ffn_dim=64, decoder_ffn_dim=64, max_source_positions=12,
                        max_target_positions=16)
    model = _hf_model(WhisperEncoder, cfg, impl)
    g = torch.Generator().manual_seed(4)
    feats = torch.randn(BATCH, 16, 24, generator=g)  # 24 frames -> 12 tokens after the stride-2 conv
    return Built(HFWrapper(model, ["input_features"]), (feats,), ["input_features"], ["last_hidden_state"])


def clip_vision(impl: str) -> Built:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    _hf_quiet()
    cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=2,
                           image_size=16, patch_size=4, projection_dim=32)
    model = _hf_model(CLIPVisionModel, cfg, impl)
    return Built(HFWrapper(model, ["pixel_values"]), (_pixels(),), ["pixel_values"], ["last_hidden_state"])


def mllama_vision(impl: str) -> Built:
    """Mllama's vision tower: images cut into tiles, each tile's patches padded to a multiple of 8 and attended
    with its image's other tiles; a local and a global transformer. TorchScript sizes its repeats from a Shape
    ONNX inference leaves symbolic (unk__), which the frontend's shape refinement read as an int."""
    from transformers import MllamaVisionConfig, MllamaVisionModel

    _hf_quiet()
    cfg = MllamaVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_global_layers=1,
                             attention_heads=4, image_size=16, patch_size=4, max_num_tiles=2, vision_output_dim=64,
                             intermediate_layers_indices=[0], supported_aspect_ratios=[[1, 1], [1, 2], [2, 1]])
    model = _hf_model(MllamaVisionModel, cfg, impl)
    names = ["pixel_values", "aspect_ratio_ids", "aspect_ratio_mask"]
    # aspect ratios 1 x 2 (two tiles) and 1 x 1 (one tile and a masked one)
    inputs = (torch.randn(2, 1, 2, 3, 16, 16, generator=torch.Generator().manual_seed(2)), torch.tensor([[2], [1]]),
              torch.tensor([[[1, 1]], [[1, 0]]]))
    return Built(HFWrapper(model, names), inputs, names, ["last_hidden_state"])


def bloom(impl: str) -> Built:
    from transformers import BloomConfig, BloomModel

    _hf_quiet()
    cfg = BloomConfig(vocab_size=VOCAB, hidden_size=32, n_layer=2, n_head=4)
    model = _hf_model(BloomModel, cfg, impl)
    return _text_built(model, use_cache=False)


def xglm(impl: str) -> Built:
    from transformers import XGLMConfig, XGLMModel

    _hf_quiet()
    cfg = XGLMConfig(vocab_size=VOCAB, d_model=32, ffn_dim=64, attention_heads=4, num_layers=2,
                     max_position_embeddings=64)
    model = _hf_model(XGLMModel, cfg, impl)
    return _text_built(model, use_cache=False)


def cpmant(impl: str) -> Built:
    """CPM-Ant, called as its users do (input_ids alone, the cache on): it masks the scores with
    ``mask == torch.tensor(False)`` and zeroes the probabilities with the same test written again, which
    torch.export records over two lifted constants."""
    from transformers import CpmAntConfig, CpmAntModel

    _hf_quiet()
    cfg = CpmAntConfig(vocab_size=VOCAB, hidden_size=32, dim_ff=64, num_attention_heads=4, dim_head=8,
                       num_hidden_layers=2, prompt_length=4)
    model = _hf_model(CpmAntModel, cfg, impl)
    return Built(HFWrapper(model, ["input_ids"]), _text_inputs()[:1], ["input_ids"], ["last_hidden_state"])


def vjepa2(impl: str) -> Built:
    """V-JEPA 2's video encoder: rotary embeddings over frame, height and width, each third of the head dim
    rotated by pairs (unflatten, unbind, stack, flatten). TorchScript writes the stack as Unsqueeze and Concat
    and tiles the angles, ops whose shapes ONNX shape inference leaves unknown."""
    from transformers import VJEPA2Config, VJEPA2Model

    _hf_quiet()
    cfg = VJEPA2Config(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2,
                       crop_size=16, patch_size=8, frames_per_clip=4, tubelet_size=2, pred_hidden_size=32,
                       pred_num_attention_heads=4, pred_num_hidden_layers=1, pred_num_mask_tokens=2)
    model = _hf_model(VJEPA2Model, cfg, impl)
    return Built(HFWrapper(model, ["pixel_values_videos"]), (_video(),), ["pixel_values_videos"],
                 ["last_hidden_state"])


def lilt(impl: str) -> Built:
    """LiLT: a text and a layout stream whose scores are added together before each softmax (two q·kᵀ
    products a softmax); the last layer's layout attention feeds no output and is left out of the graph."""
    from transformers import LiltConfig, LiltModel

    _hf_quiet()
    cfg = LiltConfig(vocab_size=VOCAB, hidden_size=48, intermediate_size=64, num_attention_heads=4,
                     num_hidden_layers=2, channel_shrink_ratio=2, max_position_embeddings=64)
    model = _hf_model(LiltModel, cfg, impl)
    ids, mask = _text_inputs()
    names = ["input_ids", "bbox", "attention_mask"]
    return Built(HFWrapper(model, names), (ids, _word_boxes(), mask), names, ["last_hidden_state"])


def deformable_detr(impl: str) -> Built:
    """Deformable DETR: its encoder and cross-attention sample points (a softmax over points, not keys); its
    decoder's first self-attention reads the learned queries alone, expanded over the batch, so its scores fold
    to a constant before their float scale."""
    from transformers import DeformableDetrConfig, DeformableDetrModel

    _hf_quiet()
    backbone = dict(model_type="resnet", embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], out_features=["stage2"])
    cfg = DeformableDetrConfig(d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
                               decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=5,
                               num_feature_levels=1, encoder_n_points=2, decoder_n_points=2, use_timm_backbone=False,
                               use_pretrained_backbone=False, backbone_config=backbone)
    model = _hf_model(DeformableDetrModel, cfg, impl)
    return Built(HFWrapper(model, ["pixel_values"]), (_pixels(32),), ["pixel_values"], ["last_hidden_state"])


def funnel(impl: str) -> Built:
    from transformers import FunnelConfig, FunnelModel

    _hf_quiet()
    # Two one-layer blocks: the second pools its queries to half the keys (5 × 10); one decoder layer.
    cfg = FunnelConfig(vocab_size=VOCAB, d_model=32, n_head=4, d_head=8, d_inner=64, block_sizes=[1, 1],
                       num_decoder_layers=1, max_position_embeddings=64)
    model = _hf_model(FunnelModel, cfg, impl)
    return _text_built(model)


def deberta_v2(impl: str) -> Built:
    from transformers import DebertaV2Config, DebertaV2Model

    _hf_quiet()
    cfg = DebertaV2Config(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=64, max_position_embeddings=64, relative_attention=True,
                          pos_att_type=["p2c", "c2p"], position_buckets=8, max_relative_positions=16)
    model = _hf_model(DebertaV2Model, cfg, impl)
    return _text_built(model)


def gemma2(impl: str) -> Built:
    from transformers import Gemma2Config, Gemma2Model

    _hf_quiet()
    cfg = Gemma2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=8, query_pre_attn_scalar=16,
                       attn_logit_softcapping=50.0, final_logit_softcapping=None, max_position_embeddings=64)
    model = _hf_model(Gemma2Model, cfg, impl)
    return _flex_built(model) if impl == FLEX else _text_built(model, use_cache=False)


# Inkling's own sizes (the probe's Inkling 2 takes them too): its sliding layers have their own heads; both layer
# kinds add a relative bias over the last rel_extent keys; the MoE cut to a few tiny experts.
INKLING = dict(swa_num_attention_heads=4, swa_num_key_value_heads=2, swa_head_dim=8, sliding_window_size=4, d_rel=4,
               rel_extent=6, layer_types=["hybrid_sliding", "hybrid"], moe_intermediate_size=32, n_routed_experts=4,
               num_experts_per_tok=2, n_shared_experts=1)


def inkling(impl: str) -> Built:
    """Inkling: a sliding layer (its own heads, window 4) and a full one, each adding a relative bias that the
    hidden states compute (r @ P gathered by distance, zero past 6 keys) before HF's causal-and-padding mask."""
    from transformers import InklingTextConfig, InklingTextModel

    _hf_quiet()
    cfg = InklingTextConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, head_dim=8, pad_token_id=0,
                            max_position_embeddings=64, **INKLING)
    return _text_built(_hf_model(InklingTextModel, cfg, impl), use_cache=False)


class Float32Alibi(HFWrapper):
    """Falcon builds its ALiBi slopes in bfloat16: onnxruntime has no bfloat16 Mul, and the TorchScript
    exporter writes that cast as complex128. BLOOM's builder is the same formula in float32."""

    def forward(self, x0, x1=None, x2=None):
        from unittest import mock

        from transformers.models.bloom import modeling_bloom
        from transformers.models.falcon import modeling_falcon

        with mock.patch.object(modeling_falcon, "build_alibi_tensor", modeling_bloom.build_alibi_tensor):
            return super().forward(x0, x1, x2)


def falcon_alibi(impl: str) -> Built:
    from transformers import FalconConfig, FalconModel

    _hf_quiet()
    cfg = FalconConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, alibi=True,
                       multi_query=True, new_decoder_architecture=False, parallel_attn=True, bias=False)
    model = _hf_model(FalconModel, cfg, impl)
    names = ["input_ids", "attention_mask"]
    return Built(Float32Alibi(model, names, {"use_cache": False}), _text_inputs(), names, ["last_hidden_state"])


def modernbert(impl: str, dynamic: bool = False) -> Built:
    from transformers import ModernBertConfig, ModernBertModel

    _hf_quiet()
    # A local window of 8 (4 each side) keeps every padded query row in reach of a real key.
    cfg = ModernBertConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, max_position_embeddings=64, global_attn_every_n_layers=2,
                           local_attention=8, pad_token_id=0, bos_token_id=1, eos_token_id=2, sep_token_id=2,
                           cls_token_id=1)
    model = _hf_model(ModernBertModel, cfg, impl)
    names = ["input_ids", "attention_mask"]
    dyn = {n: {0: "batch", 1: "seq"} for n in names} if dynamic else None
    return Built(HFWrapper(model, names), _text_inputs(), names, ["last_hidden_state"], dyn)


# ---------------------------------------------------------------------------
# Decoders with a KV cache: one step over PAST cached tokens, the cache given as tensors.

PAST = 7  # cached tokens before the step


class DecodeStep(nn.Module):
    """Runs a Hugging Face decoder on new tokens over a cache given as (key, value) tensors per layer."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, *past):
        from transformers import DynamicCache

        cache = DynamicCache(list(zip(past[0::2], past[1::2])))
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, past_key_values=cache, use_cache=True,
                         return_dict=True)
        return (out.last_hidden_state,)


def _decode_step(model: nn.Module, kv_heads: int, head_dim: int, layers: int, new: int, past: int) -> Built:
    """``new`` tokens per sequence over a cache of ``past`` random keys/values, left padding in row 1's cache."""
    g = torch.Generator().manual_seed(8)
    ids = torch.randint(1, VOCAB, (BATCH, new), generator=g)
    mask = torch.ones(BATCH, past + new, dtype=torch.long)
    mask[1, :2] = 0
    cache = [torch.randn(BATCH, kv_heads, past, head_dim, generator=g) for _ in range(2 * layers)]
    names = ["input_ids", "attention_mask"] + [f"past_{kv}_{i}" for i in range(layers) for kv in "kv"]
    return Built(DecodeStep(model), (ids, mask, *cache), names, ["last_hidden_state"])


def llama_decode(impl: str, new: int = 1, past: int = PAST) -> Built:
    """A Llama (GQA 4/2) decode step."""
    from transformers import LlamaConfig, LlamaModel

    _hf_quiet()
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return _decode_step(_hf_model(LlamaModel, cfg, impl), 2, 16, 2, new, past)


def gpt2_decode(impl: str, new: int = 1, past: int = PAST) -> Built:
    """A GPT-2 (4 heads, no GQA, learned positions) decode step."""
    from transformers import GPT2Config, GPT2Model

    _hf_quiet()
    cfg = GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64, n_inner=64)
    return _decode_step(_hf_model(GPT2Model, cfg, impl), 4, 8, 2, new, past)


def qwen3_decode(impl: str, new: int = 1, past: int = PAST) -> Built:
    """A Qwen3 (GQA 4/2, RMSNorm on q and k per head) decode step."""
    from transformers import Qwen3Config, Qwen3Model

    _hf_quiet()
    cfg = Qwen3Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=64)
    return _decode_step(_hf_model(Qwen3Model, cfg, impl), 2, 16, 2, new, past)


# ---------------------------------------------------------------------------
# torch.nn families.


class TorchEncoder(nn.Module):
    def __init__(self, with_mask: bool):
        super().__init__()
        torch.manual_seed(0)
        layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
        # Nested tensors turn a padding mask into a ragged batch, which neither export supports.
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.with_mask = with_mask

    def forward(self, x, padding_mask=None):
        return (self.encoder(x, src_key_padding_mask=padding_mask),)


def _hidden(seq: int = SEQ, dim: int = 32, seed: int = 5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(BATCH, seq, dim, generator=g)


def torch_encoder(with_mask: bool, dynamic: bool = False) -> Built:
    module = TorchEncoder(with_mask).eval()
    if not with_mask:
        return Built(module, (_hidden(),), ["x"], ["output"], {"x": {0: "batch", 1: "seq"}} if dynamic else None)
    pad = torch.zeros(BATCH, SEQ, dtype=torch.bool)
    pad[1, SEQ - 3:] = True  # True = padding (ignored key)
    return Built(module, (_hidden(), pad), ["x", "padding_mask"], ["output"])


class TorchMHA(nn.Module):
    def __init__(self, need_weights: bool):
        super().__init__()
        torch.manual_seed(0)
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
        self.need_weights = need_weights

    def forward(self, x):
        # need_weights=True computes softmax(q k^T) explicitly (bmm), need_weights=False calls SDPA.
        out, _ = self.attn(x, x, x, need_weights=self.need_weights)
        return (out,)


def torch_mha(need_weights: bool, dynamic: bool = False) -> Built:
    return Built(TorchMHA(need_weights).eval(), (_hidden(),), ["x"], ["output"],
                 {"x": {0: "batch", 1: "seq"}} if dynamic else None)


# ---------------------------------------------------------------------------
# Hand-written attention: one way of writing the same math per module.


class HandAttention(nn.Module):
    """Multi-head self-attention over (batch, seq, 32) with 4 heads of 8; subclasses write the core."""

    heads = 4
    head_dim = 8

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        d = self.heads * self.head_dim
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        # Sized to the example sequence: slicing a buffer by a traced length does not symbolic_trace.
        self.register_buffer("tril", torch.tril(torch.ones(SEQ, SEQ, dtype=torch.bool)), persistent=False)

    def split(self, t):
        b, s = t.shape[0], t.shape[1]
        return t.view(b, s, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x):
        b, s, d = x.shape[0], x.shape[1], x.shape[2]
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        o = self.core(self.split(q), self.split(k), self.split(v))
        return (self.out(o.transpose(1, 2).reshape(b, s, d)),)

    def core(self, q, k, v):
        raise NotImplementedError


class ScaleQ(HandAttention):
    def core(self, q, k, v):
        q = q * (1.0 / math.sqrt(self.head_dim))
        return torch.softmax(q @ k.transpose(-2, -1), dim=-1) @ v


class DivSqrt(HandAttention):
    def core(self, q, k, v):
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        return torch.matmul(F.softmax(scores, dim=-1), v)


class CausalTrilFill(HandAttention):
    def core(self, q, k, v):
        scores = (q @ k.transpose(-2, -1)) * self.head_dim**-0.5
        scores = scores.masked_fill(~self.tril, float("-inf"))
        return scores.softmax(-1) @ v


class CausalTriuFill(HandAttention):
    def core(self, q, k, v):
        scores = (q @ k.transpose(-2, -1)) * self.head_dim**-0.5
        blocked = torch.triu(torch.ones_like(scores, dtype=torch.bool), diagonal=1)
        scores = scores.masked_fill(blocked, float("-inf"))
        return F.softmax(scores, dim=-1) @ v


class ClampedFill(HandAttention):
    """XGLM's guard, max(scores, finfo.min), after a -inf fill: row 3 blocks every key, and the clamp makes it
    uniform where the fill alone would leave it empty (the rewrite must keep that)."""

    def __init__(self):
        super().__init__()
        blocked = ~self.tril
        blocked[3] = True
        self.register_buffer("blocked", blocked, persistent=False)
        self.register_buffer("floor", torch.tensor(torch.finfo(torch.float32).min), persistent=False)

    def core(self, q, k, v):
        scores = (q @ k.transpose(-2, -1)) * self.head_dim**-0.5
        scores = torch.max(scores.masked_fill(self.blocked, float("-inf")), self.floor)
        return scores.softmax(-1) @ v


class ClampedScores(HandAttention):
    """Not attention as the variants define it: the scores are clamped at 0, a value real scores reach."""

    def __init__(self):
        super().__init__()
        self.register_buffer("floor", torch.tensor(0.0), persistent=False)

    def core(self, q, k, v):
        return torch.max(q @ k.transpose(-2, -1) * self.head_dim**-0.5, self.floor).softmax(-1) @ v


class OpenConstantMask(HandAttention):
    """A constant mask of one row that blocks nothing, (1, 1, 1, M) zeros, as a model exported without its
    attention mask input bakes in (SEW-D): a row that is all open is not a causal mask."""

    def __init__(self):
        super().__init__()
        self.register_buffer("open_row", torch.zeros(1, 1, 1, SEQ), persistent=False)

    def core(self, q, k, v):
        return (q @ k.transpose(-2, -1) * self.head_dim**-0.5 + self.open_row).softmax(-1) @ v


class MaskUnitAttention(HandAttention):
    """Attention within mask units batched over an extra axis, (B, H, units, N, D) as Hiera lays it out, with
    two terms: a bias of its own per unit (it folds with the heads as q does) and keys blocked per sequence,
    computed at run time and shared by every head and unit (it folds to a single row)."""

    units = 2

    def __init__(self):
        super().__init__()
        n = SEQ // self.units
        g = torch.Generator().manual_seed(6)
        self.register_buffer("unit_bias", torch.randn(1, 1, self.units, n, n, generator=g), persistent=False)

    def core(self, q, k, v):
        q, k, v = (t.unflatten(2, (self.units, -1)) for t in (q, k, v))
        blocked = torch.where(k[:, 0, 0, :, 0] > 0.5, -1e4, 0.0)[:, None, None, None, :]  # (B, 1, 1, 1, N)
        s = q @ k.transpose(-2, -1) * self.head_dim**-0.5 + self.unit_bias + blocked
        return (s.softmax(-1) @ v).flatten(2, 3)


class XSoftmaxAttention(HandAttention):
    """DeBERTa's XSoftmax: the blocked scores filled with finfo.min, then the same entries of the probabilities
    zeroed. Row 3 is blocked whole: the fill leaves it uniform and the zeroing empties it (output 0)."""

    def __init__(self):
        super().__init__()
        keep = torch.rand(SEQ, SEQ, generator=torch.Generator().manual_seed(5)) > 0.3
        keep[3] = False
        self.register_buffer("blocked", ~keep, persistent=False)

    def core(self, q, k, v):
        s = (q @ k.transpose(-2, -1) * self.head_dim**-0.5).masked_fill(self.blocked, torch.finfo(torch.float32).min)
        return s.softmax(-1).masked_fill(self.blocked, 0.0) @ v


class SharedProbabilities(HandAttention):
    """One softmax read by two value products, as DiffLlama's two attention calls with the same q and k become
    once an exporter merges their identical softmaxes: two sites."""

    def core(self, q, k, v):
        p = (q @ k.transpose(-2, -1) * self.head_dim**-0.5).softmax(-1)
        return p @ v - 0.5 * (p @ torch.tanh(v))


class DroppedProbabilities(HandAttention):
    """Dropout on the probabilities written out, as a model exported in training mode has it (SEW-D's
    XDropout): zero where a uniform draw falls under p, rescale by 1/(1 − p). The rewrite leaves it out, as it
    leaves out an ONNX Dropout. At p = 0 no draw falls under it: the model is deterministic and the rewrite exact."""

    drop = 0.0

    def core(self, q, k, v):
        p = (q @ k.transpose(-2, -1) * self.head_dim**-0.5).softmax(-1)
        return p.masked_fill(torch.rand_like(p) < self.drop, 0.0) * (1.0 / (1.0 - self.drop)) @ v


class PooledQueries(HandAttention):
    """Queries max-pooled over token pairs (MViT's and SAM 2's query pooling) against every key: cross-attention
    of N/2 queries over N keys, though q and k come from the same projection. With a dynamic length the two
    lengths are symbols, and the dataflow alone must not prove them equal."""

    def core(self, q, k, v):
        return (self.pool(q) @ k.transpose(-2, -1) * self.head_dim**-0.5).softmax(-1) @ v

    def pool(self, q):
        b, h, n, d = q.shape
        return q.reshape(b, h, n // 2, 2, d).amax(3)

    def forward(self, x):
        b, s, d = x.shape[0], x.shape[1], x.shape[2]
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        o = self.core(self.split(q), self.split(k), self.split(v))
        return (self.out(o.transpose(1, 2).reshape(b, s // 2, d)),)


class ReshapePooledQueries(PooledQueries):
    """The same with the pairs summed through a reshape (two tokens become one row of 2·D features): every op on
    the way is a layout op or elementwise, so only the two length symbols tell the lengths apart."""

    def pool(self, q):
        b, h, n, d = q.shape
        pairs = q.reshape(b, h, n // 2, 2 * d)
        return pairs[..., :d] + pairs[..., d:]


class ZeroedProbabilities(HandAttention):
    """Not attention as the variants define it: probabilities zeroed where the scores were not masked."""

    def __init__(self):
        super().__init__()
        self.register_buffer("dropped", torch.rand(SEQ, SEQ, generator=torch.Generator().manual_seed(6)) > 0.7,
                             persistent=False)

    def core(self, q, k, v):
        return (q @ k.transpose(-2, -1) * self.head_dim**-0.5).softmax(-1).masked_fill(self.dropped, 0.0) @ v


class WideValues(nn.Module):
    """Values twice as wide as queries and keys, per head (LeViT's). Every op takes one head dim for q, k and v,
    so the rewrites zero-pad q and k to the values' (no q·k changes)."""

    heads, head_dim = 4, 8

    def __init__(self, fused: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.fused = fused
        self.qk = nn.Linear(32, 2 * 32)
        self.v = nn.Linear(32, 2 * 32)
        self.out = nn.Linear(2 * 32, 32)

    def forward(self, x):
        b, s = x.shape[0], x.shape[1]
        qk = self.qk(x).view(b, s, 2, self.heads, self.head_dim)
        q, k = qk[:, :, 0].transpose(1, 2), qk[:, :, 1].transpose(1, 2)
        v = self.v(x).view(b, s, self.heads, 2 * self.head_dim).transpose(1, 2)
        if self.fused:
            o = F.scaled_dot_product_attention(q, k, v)
        else:
            o = (q @ k.transpose(-2, -1) * self.head_dim**-0.5).softmax(-1) @ v
        return (self.out(o.transpose(1, 2).reshape(b, s, 2 * 32)),)


class SinkLogits(nn.Module):
    """GPT-OSS's attention sinks: a learned logit a head joins every row's softmax as an extra column, which
    is dropped before the value product. The ops that take sink logits (every variant but lowrank)
    carry them; the others refuse the site with that reason (a rewrite must never drop the sinks)."""

    heads, head_dim = 4, 8

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.qkv = nn.Linear(32, 3 * 32)
        self.sinks = nn.Parameter(torch.randn(self.heads))
        self.out = nn.Linear(32, 32)

    def forward(self, x):
        b, s = x.shape[0], x.shape[1]
        q, k, v = self.qkv(x).view(b, s, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-2, -1) * self.head_dim**-0.5
        sinks = self.sinks.reshape(1, -1, 1, 1).expand(b, -1, s, -1)
        logits = torch.cat([scores, sinks], dim=-1)
        logits = logits - logits.max(dim=-1, keepdim=True).values
        o = logits.softmax(-1)[..., :-1] @ v
        return (self.out(o.transpose(1, 2).reshape(b, s, 32)),)


class LearnedKeys(HandAttention):
    """Not attention as the variants define it: the input's queries score a learned table of keys (a router,
    as soft mixtures of experts compute), whose weights then mix the input's values."""

    def __init__(self):
        super().__init__()
        self.slots = nn.Parameter(torch.randn(self.heads, SEQ, self.head_dim))

    def core(self, q, k, v):
        return (q @ self.slots.transpose(-2, -1) * self.head_dim**-0.5).softmax(-1) @ v


class KeyWeightedScores(HandAttention):
    """Not attention as the variants define it: the scores are multiplied by a weight per key, which no
    scaling of q can carry (a weight per head can: SwinV2's logit scale)."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(0.5, 1.5, SEQ))

    def core(self, q, k, v):
        return (q @ k.transpose(-2, -1) * self.weight).softmax(-1) @ v


class HalfSoftmax(HandAttention):
    """fp16-style: softmax in float32, probabilities stored in float16, matmul back in the model dtype."""

    def core(self, q, k, v):
        scores = (q @ k.transpose(-2, -1)) * self.head_dim**-0.5
        probs = F.softmax(scores.float(), dim=-1).to(torch.float16)
        return probs.to(q.dtype) @ v


class SdpaCausal(HandAttention):
    def core(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


class SqrtScaleQK(HandAttention):
    def core(self, q, k, v):
        r = self.head_dim**-0.25
        return torch.softmax((q * r) @ (k * r).transpose(-2, -1), dim=-1) @ v


class AdditiveMaskCross(nn.Module):
    """Cross attention (6 queries over 10 keys) with a float additive mask input (batch, 1, 6, 10)."""

    heads = 4
    head_dim = 8

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        d = self.heads * self.head_dim
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(d, 2 * d)
        self.out = nn.Linear(d, d)

    def forward(self, x, memory, mask):
        b, t, d = x.shape[0], x.shape[1], x.shape[2]
        s = memory.shape[1]
        q = self.q(x).view(b, t, self.heads, self.head_dim).permute(0, 2, 1, 3)
        k, v = self.kv(memory).view(b, s, 2, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        scores = q @ k.transpose(-2, -1) * self.head_dim**-0.5 + mask
        o = scores.softmax(-1) @ v
        return (self.out(o.permute(0, 2, 1, 3).reshape(b, t, d)),)


class EinsumAttention(HandAttention):
    """Both products as einsum: exporters keep ONNX Einsum / aten.einsum rather than MatMul."""

    def core(self, q, k, v):
        scores = torch.einsum("bhqd,bhkd->bhqk", q, k) * self.head_dim**-0.5
        return torch.einsum("bhqk,bhkd->bhqd", scores.softmax(-1), v)


class PermutedEinsumAttention(HandAttention):
    """Einsums that read and write (batch, seq, heads, dim) directly, as Funnel's do: no transposes in
    the graph, the scale on the query before the product."""

    def forward(self, x):
        b, s, d = x.shape[0], x.shape[1], x.shape[2]
        q, k, v = self.qkv(x).view(b, s, 3, self.heads, self.head_dim).unbind(2)
        scores = torch.einsum("bqhd,bkhd->bhqk", q * self.head_dim**-0.5, k)
        o = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v)
        return (self.out(o.reshape(b, s, d)),)


def hand(cls, dynamic: bool = False) -> Callable[[], Built]:
    def factory() -> Built:
        dyn = {"x": {0: "batch", 1: "seq"}} if dynamic else None
        return Built(cls().eval(), (_hidden(),), ["x"], ["output"], dyn)

    factory.__name__ = f"hand_{cls.__name__}"
    return factory


def additive_mask_cross() -> Built:
    x = _hidden(DEC_SEQ, seed=6)
    memory = _hidden(SEQ, seed=7)
    mask = torch.zeros(BATCH, 1, DEC_SEQ, SEQ)
    mask[1, :, :, SEQ - 3:] = -1e4
    return Built(AdditiveMaskCross().eval(), (x, memory, mask), ["x", "memory", "mask"], ["output"])


# ---------------------------------------------------------------------------
# Negatives: softmax that is not attention.


class ClassifierHead(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(32, 16)
        self.fc2 = nn.Linear(16, 5)

    def forward(self, x):
        return (torch.softmax(self.fc2(torch.relu(self.fc1(x.mean(1)))), dim=-1),)


class SoftLookup(nn.Module):
    """Softmax(x K^T) V with K and V learned tables: a memory lookup, not attention between tokens."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.keys = nn.Parameter(torch.randn(32, 24))
        self.values = nn.Parameter(torch.randn(24, 32))

    def forward(self, x):
        return (torch.softmax(x @ self.keys, dim=-1) @ self.values,)


class SoftmaxPooling(nn.Module):
    """Attention pooling: softmax over the sequence axis (dim=1), used elementwise then summed."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.score = nn.Linear(32, 1)

    def forward(self, x):
        w = torch.softmax(self.score(x), dim=1)  # (batch, seq, 1)
        return ((w * x).sum(dim=1),)


def plain(cls) -> Callable[[], Built]:
    def factory() -> Built:
        return Built(cls().eval(), (_hidden(),), ["x"], ["output"])

    factory.__name__ = f"plain_{cls.__name__}"
    return factory


# ---------------------------------------------------------------------------
# The cases.

# What torch.fx.symbolic_trace raises on the Hugging Face wrappers (transformers 5.x); torch.export covers them.
_HF_SYMTRACE_CONTROL_FLOW = ("TraceError: symbolically traced variables cannot be used as inputs to control flow "
                             "(mask creation / shape checks in transformers)")
_HF_SYMTRACE_SLICE = ("TypeError: slice indices must be integers or None or have an __index__ method "
                      "(the position_ids buffer sliced by a traced sequence length)")


def _impl_cases(family: str, make: Callable[[str], Built], **kw) -> list[ZooCase]:
    out = []
    kw.setdefault("fx_tracers", (EXPORT, SYMBOLIC_TRACE))
    symtrace_error = kw.pop("symtrace_error", _HF_SYMTRACE_CONTROL_FLOW)
    decomposed = kw.pop("decomposed", False)  # the sdpa case also as a decomposed program
    for impl in ("eager", "sdpa"):
        extra = dict(kw)
        if decomposed and impl == "sdpa":
            extra["fx_tracers"] = (*extra["fx_tracers"], DECOMPOSED)
        excluded = {SYMBOLIC_TRACE: symtrace_error}
        excluded.update(extra.pop("excluded", {}))
        per_impl = {i: extra.pop(f"excluded_{i}", {}) for i in ("eager", "sdpa")}
        excluded.update(per_impl[impl])
        out.append(ZooCase(name=f"{family}-{impl}", family=family, factory=_bind(make, impl),
                           excluded=excluded, **extra))
    return out


def _bind(fn, *args, **kwargs):
    def factory() -> Built:
        return fn(*args, **kwargs)

    factory.__name__ = f"{fn.__name__}{args}{kwargs or ''}"
    return factory


MULTI_NEW, MULTI_PAST = 3, 5  # a multi-token decode step: 3 new tokens over 5 cached
# What torch.fx.symbolic_trace raises on DecodeStep, which takes the cache as *past.
_DECODE_SYMTRACE = ("TraceError: Proxy object cannot be iterated. This can be attempted when the Proxy is used in "
                    "a loop or as a *args or **kwargs function argument. (DecodeStep's *past cache tensors)")


def _decode_cases(family: str, make: Callable[..., Built], new: int, past: int, **kw) -> list[ZooCase]:
    """eager and sdpa cases of one decode step (``new`` tokens over ``past`` cached): two causal sites."""

    def step(impl: str) -> Built:
        return make(impl, new=new, past=past)

    step.__name__ = make.__name__
    return _impl_cases(family, step, expected_sites=2, self_attention_sites=0, causal_sites=2,
                       kv_cache_step=(new, past), symtrace_error=_DECODE_SYMTRACE, **kw)


# The dynamo exporter's decomposition step turns SDPA-with-float-bias into math whose output is
# non-contiguous, and T5's `attn_output.reshape(*input_shape, -1)` was recorded as aten.view:
_T5_SDPA_ERROR = ("ConversionError: Failed to decompose the FX graph for ONNX compatibility. ValueError: Cannot "
                  "view a tensor with shape torch.Size([2, 10, 4, 8]) and strides (320, 8, 80, 1) as a tensor "
                  "with shape (2, 10, 32)! (aten.view after scaled_dot_product_attention, "
                  "modeling_t5.py `attn_output.reshape(*input_shape, -1)`)")
_T5_SDPA_DYNAMO = {DYNAMO: _T5_SDPA_ERROR, DYNAMO_OPSET23: _T5_SDPA_ERROR}
# The same decomposition failure for Swin's windows (SDPA with the relative-position bias as a float mask):
_SWIN_SDPA_ERROR = ("ConversionError: Failed to decompose the FX graph for ONNX compatibility. ValueError: Cannot "
                    "view a tensor with shape torch.Size([8, 16, 2, 8]) and strides (256, 8, 128, 1) as a tensor "
                    "with shape (8, 16, 16)! (aten.view after scaled_dot_product_attention, "
                    "modeling_swin.py `attn_output.reshape(*input_shape, -1)`)")

_HAND = dict(family="hand", heads=4, head_dim=8, fx_tracers=FX_TRACERS)

CASES: list[ZooCase] = [
    *_impl_cases("bert", bert, expected_sites=2, heads=2, head_dim=16, self_attention_sites=2, causal_sites=0,
                 onnx_exporters=(*ONNX_EXPORTERS, ORT_FUSED), symtrace_error=_HF_SYMTRACE_SLICE, decomposed=True),
    ZooCase("bert-sdpa-dynamic", "bert", _bind(bert, "sdpa", dynamic=True), expected_sites=2, heads=2,
            head_dim=16, causal_sites=0, fx_tracers=(EXPORT, SYMBOLIC_TRACE),
            excluded={SYMBOLIC_TRACE: _HF_SYMTRACE_SLICE}),
    *_impl_cases("distilbert", distilbert, expected_sites=2, heads=4, head_dim=8, self_attention_sites=2,
                 causal_sites=0, symtrace_error=_HF_SYMTRACE_SLICE),
    *_impl_cases("gpt2", gpt2, expected_sites=2, heads=4, head_dim=8, self_attention_sites=2, causal_sites=2),
    ZooCase("openai-gpt-eager", "openai-gpt", _bind(openai_gpt, "eager"), expected_sites=2, heads=4, head_dim=8,
            self_attention_sites=2, causal_sites=2, fx_tracers=(EXPORT,)),
    *_impl_cases("vit", vit, expected_sites=2, heads=2, head_dim=16, self_attention_sites=2, causal_sites=0,
                 onnx_exporters=(*ONNX_EXPORTERS, ORT_FUSED)),
    # T5 does not scale q.k at all.
    *_impl_cases("t5-encoder", t5_encoder, expected_sites=2, heads=4, head_dim=8, scales=(1.0,),
                 self_attention_sites=2, causal_sites=0, excluded_sdpa=_T5_SDPA_DYNAMO),
    *_impl_cases("t5", t5, expected_sites=6, heads=4, head_dim=8, scales=(1.0,), self_attention_sites=4,
                 causal_sites=2, excluded_sdpa=_T5_SDPA_DYNAMO),
    # A constant where(mask, scores, fill) with the condition folded (no sdpa form in transformers 5).
    ZooCase("gpt-neo-eager", "gpt-neo", _bind(gpt_neo, "eager"), expected_sites=2, heads=4, head_dim=8,
            scales=(1.0,), self_attention_sites=2, causal_sites=2, fx_tracers=(EXPORT,)),
    # The same bias kept apart from the padding mask (no sdpa form in transformers 5).
    ZooCase("switch-eager", "switch", _bind(switch_transformers, "eager"), expected_sites=3, heads=4, head_dim=8,
            scales=(1.0,), self_attention_sites=2, causal_sites=1, fx_tracers=(EXPORT,)),
    *_impl_cases("bart", bart, expected_sites=6, heads=4, head_dim=8, self_attention_sites=4, causal_sites=2),
    *_impl_cases("llama-gqa", llama, expected_sites=2, heads=4, kv_heads=2, head_dim=16,
                 self_attention_sites=2, causal_sites=2, decomposed=True),
    # Two attention calls a layer with the same q and k (one shared softmax once exported); TorchScript cannot
    # export its RMSNorm at opset 17.
    *_impl_cases("diffllama", diffllama, expected_sites=4, heads=4, kv_heads=2, head_dim=16, self_attention_sites=4,
                 causal_sites=4, fx_tracers=(EXPORT,), onnx_exporters=(DYNAMO, DYNAMO_OPSET23)),
    # torch's SDPA output is stored (B, N, H, D), and JetMoE's sdpa form relies on it (a .view after the transpose).
    *_impl_cases("jetmoe", jetmoe, expected_sites=2, heads=16, head_dim=8, self_attention_sites=2, causal_sites=2,
                 fx_tracers=(EXPORT,)),
    # Relative attention over (N, B, H, D) whose scores add a literal 0 (no segment ids); no sdpa form. The
    # dynamo exporter fails on it in torch (aten::sub of a float and a tensor, from `1.0 - attention_mask`).
    # Decomposed, its einsums become bmms reached through 5-D detours (attnopt/frontends/fx_singleton_axes.py).
    ZooCase("xlnet-eager", "xlnet", _bind(xlnet, "eager"), expected_sites=2, heads=4, head_dim=16,
            self_attention_sites=2, causal_sites=0, fx_tracers=(EXPORT, DECOMPOSED), onnx_exporters=(TORCHSCRIPT,)),
    # MLA: values narrower than q and k (8 against 16 dims a head); the scale is 1/sqrt(16).
    *_impl_cases("deepseek-mla", deepseek_mla, expected_sites=2, heads=4, head_dim=16, self_attention_sites=2,
                 causal_sites=2, fx_tracers=(EXPORT,)),
    # TorchScript only: the dynamo and torch.export forms carry their lengths (benchmarks/family_probe.py).
    ZooCase("dinov3-vit-eager", "dinov3-vit", _bind(dinov3_vit, "eager"), expected_sites=2, heads=4, head_dim=8,
            self_attention_sites=2, causal_sites=0, onnx_exporters=(TORCHSCRIPT,), fx_tracers=()),
    # Its sliding-window layer's mask (window, causality and padding in one term) stays whole, marked as a window
    # of 4 with its key padding (mask analysis): that site reads as causal only where an op replaces the term.
    ZooCase("gpt-oss-eager", "gpt-oss", _bind(gpt_oss, "eager"), expected_sites=2, heads=4, kv_heads=2, head_dim=8,
            self_attention_sites=2, causal_sites=1, fx_tracers=(EXPORT,), onnx_exporters=()),
    *_impl_cases("mistral-gqa", mistral, expected_sites=2, heads=4, kv_heads=2, head_dim=16,
                 self_attention_sites=2, causal_sites=2),
    *_impl_cases("qwen2-gqa", qwen2, expected_sites=2, heads=4, kv_heads=2, head_dim=16,
                 self_attention_sites=2, causal_sites=2, decomposed=True),
    # FlexAttention (FLEX), torch.export only. Its own family: it has no attention_mask, which the
    # structured-mask tests of the llama-gqa decoders read.
    ZooCase("llama-gqa-flex", "llama-gqa-flex", _bind(llama, FLEX), expected_sites=2, heads=4, kv_heads=2,
            head_dim=16, causal_sites=2, fx_tracers=(EXPORT,), onnx_exporters=()),
    # With a dynamic sequence the opset-23 export emits RotaryEmbedding (the static one keeps rotary
    # decomposed), and onnxruntime 1.31 rejects its cos/sin caches at run time: "Inputs 'cos_cache' and
    # 'sin_cache' are expected to have the same shape as input 'x', got 1 and 10".
    ZooCase("llama-gqa-sdpa-dynamic", "llama-gqa", _bind(llama, "sdpa", dynamic=True), expected_sites=2,
            heads=4, kv_heads=2, head_dim=16, causal_sites=2, fx_tracers=(EXPORT, SYMBOLIC_TRACE, DECOMPOSED),
            excluded={SYMBOLIC_TRACE: _HF_SYMTRACE_CONTROL_FLOW},
            ort_known_failures={DYNAMO_OPSET23: "Inputs 'cos_cache' and 'sin_cache' are expected to have the "
                                                "same shape as input 'x'"}),
    # Whisper multiplies q_proj's output by 1/sqrt(d) before splitting heads and then attends with scale 1:
    # a site whose query is taken after that Mul has scale 1, one that folds the Mul in has 1/sqrt(d).
    *_impl_cases("whisper-encoder", whisper_encoder, expected_sites=2, heads=4, head_dim=8,
                 scales=(1 / math.sqrt(8), 1.0), self_attention_sites=2, causal_sites=0),
    *_impl_cases("clip-vision", clip_vision, expected_sites=2, heads=2, head_dim=16, self_attention_sites=2,
                 causal_sites=0),
    # TorchScript alone: the other exporters and torch.export read it already (benchmarks/family_probe.py)
    *_impl_cases("mllama-vision", mllama_vision, expected_sites=3, heads=4, head_dim=8, self_attention_sites=3,
                 causal_sites=0, onnx_exporters=(TORCHSCRIPT,), fx_tracers=()),
    # Windows folded into the batch; a relative-position bias on every site, the shift mask on the second.
    *_impl_cases("swin", swin, expected_sites=2, heads=2, head_dim=8, self_attention_sites=2, causal_sites=0,
                 excluded_sdpa={DYNAMO: _SWIN_SDPA_ERROR, DYNAMO_OPSET23: _SWIN_SDPA_ERROR}),
    # SwinV2: cosine attention, the scale a learned tensor per head (no sdpa form in transformers 5).
    ZooCase("swinv2-eager", "swinv2", _bind(swinv2, "eager"), expected_sites=2, heads=2, head_dim=8, scales=(1.0,),
            self_attention_sites=2, causal_sites=0, fx_tracers=(EXPORT,)),
    ZooCase("vitdet-eager", "vitdet", _bind(vitdet, "eager"), expected_sites=2, heads=4, head_dim=8,
            self_attention_sites=2, causal_sites=0, fx_tracers=(EXPORT, DECOMPOSED)),
    ZooCase("hiera-eager", "hiera", _bind(hiera, "eager"), expected_sites=2, heads=(1, 2), head_dim=16,
            self_attention_sites=1,
            causal_sites=0, fx_tracers=(EXPORT,)),
    # A cross-attention whose queries are learned (constant in the graph), then two self-attentions.
    ZooCase("perceiver-eager", "perceiver", _bind(perceiver, "eager"), expected_sites=3, heads=4, head_dim=8,
            self_attention_sites=2, causal_sites=0, fx_tracers=(EXPORT,)),
    # BLOOM folds the batch into the heads, (B·H, N, D), and adds ALiBi with baddbmm.
    ZooCase("bloom-eager", "bloom", _bind(bloom, "eager"), expected_sites=2, heads=4, head_dim=8,
            self_attention_sites=2, causal_sites=2, fx_tracers=(EXPORT,)),
    # XGLM folds the heads into the batch, (B·H, N, D), and clamps the masked scores with max(s, finfo.min)
    # before the softmax (no sdpa form in transformers 5); q is scaled before the heads split, as Whisper's.
    ZooCase("xglm-eager", "xglm", _bind(xglm, "eager"), expected_sites=2, heads=4, head_dim=8,
            scales=(1 / math.sqrt(8), 1.0), self_attention_sites=2, causal_sites=2, fx_tracers=(EXPORT,)),
    # The probabilities zeroed by the score mask's test written a second time (two lifted constants under
    # torch.export); a relative position bias; the prompt's 4 positions before the 10 tokens.
    ZooCase("cpmant-eager", "cpmant", _bind(cpmant, "eager"), expected_sites=2, heads=4, head_dim=8,
            causal_sites=0, fx_tracers=(EXPORT,), onnx_exporters=(DYNAMO,)),
    # Its queries' and keys' shapes known only once Concat and Tile are followed (TorchScript).
    ZooCase("vjepa2-sdpa", "vjepa2", _bind(vjepa2, "sdpa"), expected_sites=2, heads=4, head_dim=8,
            self_attention_sites=2, causal_sites=0, onnx_exporters=(TORCHSCRIPT,), fx_tracers=()),
    # Each softmax reads the sum of two q·kᵀ products, served as one over q and k concatenated (6 + 12 columns).
    ZooCase("lilt-eager", "lilt", _bind(lilt, "eager"), expected_sites=3, heads=4, head_dim=18,
            scales=(1 / math.sqrt(12), 1 / math.sqrt(6)), causal_sites=0, fx_tracers=(EXPORT,),
            onnx_exporters=(TORCHSCRIPT, DYNAMO)),
    # One self-attention over learned queries (its scores constant but for the batch), the rest deformable.
    ZooCase("deformable-detr-eager", "deformable-detr", _bind(deformable_detr, "eager"), expected_sites=1, heads=4,
            head_dim=8, self_attention_sites=1, causal_sites=0, fx_tracers=(EXPORT,), onnx_exporters=()),
    # Disentangled attention: c2p/p2c terms added to the (B·H, N, M) scores; scale 1/sqrt(3·d).
    ZooCase("deberta-v2-eager", "deberta-v2", _bind(deberta_v2, "eager"), expected_sites=2, heads=4, head_dim=8,
            scales=(1 / math.sqrt(3 * 8),), self_attention_sites=2, causal_sites=0, fx_tracers=(EXPORT,)),
    # Relative attention in einsums over (B, N, H, D) ("bind,bjnd->bnij"): the operands and the value
    # product in permuted layouts; the query is pre-scaled, so the scores' own scale is 1.
    ZooCase("funnel-eager", "funnel", _bind(funnel, "eager"), expected_sites=3, heads=4, head_dim=8,
            scales=(1.0,), self_attention_sites=2, causal_sites=0, fx_tracers=(EXPORT, DECOMPOSED)),
    # Logit softcapping 50·tanh(s/50); the scale is query_pre_attn_scalar**-0.5, not 1/sqrt(head_dim).
    # A relative bias computed from the hidden states, a dense term beside HF's structured mask; scale 1/d.
    ZooCase("inkling-eager", "inkling", _bind(inkling, "eager"), expected_sites=2, heads=4, kv_heads=2, head_dim=8,
            scales=(1 / 8,), self_attention_sites=2, causal_sites=2, fx_tracers=(EXPORT,)),
    ZooCase("gemma2-eager", "gemma2", _bind(gemma2, "eager"), expected_sites=2, heads=4, kv_heads=2, head_dim=8,
            scales=(16 ** -0.5,), self_attention_sites=2, causal_sites=2, fx_tracers=(EXPORT,)),
    # FlexAttention: the softcap a score_mod, c·tanh(s/c), read by running it.
    ZooCase("gemma2-flex", "gemma2-flex", _bind(gemma2, FLEX), expected_sites=2, heads=4, kv_heads=2, head_dim=8,
            scales=(16 ** -0.5,), causal_sites=2, fx_tracers=(EXPORT,), onnx_exporters=()),
    # ALiBi added before the scale (eager), or folded into the float mask (sdpa); multi-query k/v.
    # decomposed: the one kv head reaches the bmm broadcast over the query heads by an expand
    *_impl_cases("falcon-alibi", falcon_alibi, expected_sites=2, heads=4, kv_heads=1, head_dim=8,
                 self_attention_sites=2, causal_sites=2, decomposed=True,
                 excluded_sdpa={DYNAMO_OPSET23: "ConversionError: ... AssertionError: SDPA (MHA) requires "
                                                "q_num_heads = kv_num_heads (multi-query k/v of one head)"}),
    *_impl_cases("modernbert", modernbert, expected_sites=2, heads=4, head_dim=8, self_attention_sites=2,
                 causal_sites=0),
    ZooCase("modernbert-sdpa-dynamic", "modernbert", _bind(modernbert, "sdpa", dynamic=True), expected_sites=2,
            heads=4, head_dim=8, self_attention_sites=2, causal_sites=0, fx_tracers=(EXPORT,),
            ort_known_failures={DYNAMO_OPSET23: "Inputs 'cos_cache' and 'sin_cache' are expected to have the "
                                                "same shape as input 'x'"}),
    # One decode step over a 7-token cache: q_len 1, kv_len 8, past_len 7. TorchScript's sdpa form
    # packs the 4 query heads into the query axis of the 2 kv heads.
    *_impl_cases("llama-decode", llama_decode, expected_sites=2, heads=4, kv_heads=2, head_dim=16,
                 self_attention_sites=0, causal_sites=2, kv_cache_step=(1, PAST), symtrace_error=_DECODE_SYMTRACE),
    *_decode_cases("gpt2-decode", gpt2_decode, 1, PAST, heads=4, head_dim=8),
    *_decode_cases("qwen3-decode", qwen3_decode, 1, PAST, heads=4, kv_heads=2, head_dim=16),
    # Several new tokens over the cache (speculative decoding, chunked prefill): causal among the new ones.
    *_decode_cases("llama-decode-multi", llama_decode, MULTI_NEW, MULTI_PAST, heads=4, kv_heads=2, head_dim=16),
    *_decode_cases("gpt2-decode-multi", gpt2_decode, MULTI_NEW, MULTI_PAST, heads=4, head_dim=8),
    *_decode_cases("qwen3-decode-multi", qwen3_decode, MULTI_NEW, MULTI_PAST, heads=4, kv_heads=2, head_dim=16),
    ZooCase("torch-encoder", "torch", _bind(torch_encoder, False), expected_sites=2, heads=4, head_dim=8,
            self_attention_sites=2, causal_sites=0, fx_tracers=FX_TRACERS,
            excluded={SYMBOLIC_TRACE: "the default fx Tracer keeps nn.TransformerEncoder as one leaf "
                                      "call_module: the graph holds no attention to find"}),
    # opset 23 passes the (batch, 1, 1, kv) padding mask to ONNX Attention unexpanded; the spec allows
    # broadcasting but onnxruntime 1.31's CPU Attention insists the mask's q dimension equal q_len.
    ZooCase("torch-encoder-padmask", "torch", _bind(torch_encoder, True), expected_sites=2, heads=4, head_dim=8,
            self_attention_sites=2, causal_sites=0, fx_tracers=FX_TRACERS,
            ort_known_failures={DYNAMO_OPSET23: "inconsistent q_sequence_length (between attn_mask and Q)"},
            excluded={SYMBOLIC_TRACE: "the default fx Tracer keeps nn.TransformerEncoder as one leaf "
                                      "call_module: the graph holds no attention to find"}),
    # symbolic_trace keeps nn.MultiheadAttention as a leaf call_module, which is itself an attention op.
    ZooCase("torch-mha", "torch", _bind(torch_mha, False), expected_sites=1, heads=4, head_dim=8,
            self_attention_sites=1, causal_sites=0, fx_tracers=FX_TRACERS),
    ZooCase("torch-mha-weights", "torch", _bind(torch_mha, True), expected_sites=1, heads=4, head_dim=8,
            self_attention_sites=1, causal_sites=0, fx_tracers=FX_TRACERS),
    # TorchScript with a dynamic sequence bakes the key length (10) and leaves the query's symbolic:
    # only the dataflow (q, k and v from one projection) shows these are self-attention.
    ZooCase("torch-mha-dynamic", "torch", _bind(torch_mha, False, dynamic=True), expected_sites=1, heads=4,
            head_dim=8, self_attention_sites=1, causal_sites=0),
    ZooCase("torch-mha-weights-dynamic", "torch", _bind(torch_mha, True, dynamic=True), expected_sites=1, heads=4,
            head_dim=8, self_attention_sites=1, causal_sites=0),
    ZooCase("torch-encoder-dynamic", "torch", _bind(torch_encoder, False, dynamic=True), expected_sites=2,
            heads=4, head_dim=8, self_attention_sites=2, causal_sites=0),
    ZooCase("hand-scale-q", factory=hand(ScaleQ), expected_sites=1, causal_sites=0, self_attention_sites=1, **_HAND),
    ZooCase("hand-pooled-queries-dynamic", factory=hand(PooledQueries, dynamic=True), expected_sites=1,
            causal_sites=0, self_attention_sites=0, **_HAND),
    ZooCase("hand-reshape-pooled-queries-dynamic", factory=hand(ReshapePooledQueries, dynamic=True),
            expected_sites=1, causal_sites=0, self_attention_sites=0, **_HAND),
    ZooCase("hand-scale-q-dynamic", factory=hand(ScaleQ, dynamic=True), expected_sites=1, causal_sites=0,
            **_HAND),
    ZooCase("hand-div-sqrt", factory=hand(DivSqrt), expected_sites=1, causal_sites=0, self_attention_sites=1,
            **_HAND),
    ZooCase("hand-causal-tril", factory=hand(CausalTrilFill), expected_sites=1, causal_sites=1,
            self_attention_sites=1, **_HAND),
    ZooCase("hand-causal-triu", factory=hand(CausalTriuFill), expected_sites=1, causal_sites=1,
            self_attention_sites=1, **_HAND),
    ZooCase("hand-clamped-fill", factory=hand(ClampedFill), expected_sites=1, self_attention_sites=1, **_HAND),
    ZooCase("hand-half-softmax", factory=hand(HalfSoftmax), expected_sites=1, causal_sites=0,
            self_attention_sites=1, atol=5e-3, **_HAND),
    ZooCase("hand-sdpa-causal", factory=hand(SdpaCausal), expected_sites=1, causal_sites=1,
            self_attention_sites=1, **_HAND),
    ZooCase("hand-sqrt-scale-qk", factory=hand(SqrtScaleQK), expected_sites=1, causal_sites=0,
            self_attention_sites=1, **_HAND),
    ZooCase("hand-additive-mask-cross", factory=additive_mask_cross, expected_sites=1, causal_sites=0,
            self_attention_sites=0, **_HAND),
    ZooCase("hand-einsum", factory=hand(EinsumAttention), expected_sites=1, causal_sites=0,
            self_attention_sites=1, **{**_HAND, "fx_tracers": (*FX_TRACERS, DECOMPOSED)}),
    ZooCase("hand-einsum-permuted", factory=hand(PermutedEinsumAttention), expected_sites=1, causal_sites=0,
            self_attention_sites=1, **{**_HAND, "fx_tracers": (*FX_TRACERS, DECOMPOSED)}),
    ZooCase("hand-open-constant-mask", factory=hand(OpenConstantMask), expected_sites=1, causal_sites=0,
            self_attention_sites=1, **_HAND),
    ZooCase("hand-shared-probabilities", factory=hand(SharedProbabilities), expected_sites=2, causal_sites=0,
            self_attention_sites=2, **_HAND),
    # onnxruntime has no RandomUniformLike for opset 22+ (the opset-23 export's).
    ZooCase("hand-dropped-probabilities", factory=hand(DroppedProbabilities), expected_sites=1, causal_sites=0,
            self_attention_sites=1, onnx_exporters=(DYNAMO, TORCHSCRIPT), **_HAND),
    ZooCase("hand-xsoftmax", factory=hand(XSoftmaxAttention), expected_sites=1, causal_sites=0,
            self_attention_sites=1, **_HAND),
    ZooCase("neg-classifier", "negative", plain(ClassifierHead), expected_sites=0, fx_tracers=FX_TRACERS),
    ZooCase("neg-soft-lookup", "negative", plain(SoftLookup), expected_sites=0, fx_tracers=FX_TRACERS),
    ZooCase("neg-softmax-pooling", "negative", plain(SoftmaxPooling), expected_sites=0, fx_tracers=FX_TRACERS),
    ZooCase("neg-clamped-scores", "negative", hand(ClampedScores), expected_sites=0, fx_tracers=FX_TRACERS),
    ZooCase("hand-wide-values", factory=plain(WideValues), expected_sites=1, causal_sites=0,
            self_attention_sites=1, **_HAND),
    ZooCase("hand-sdpa-wide-values", factory=plain(lambda: WideValues(fused=True)), expected_sites=1,
            causal_sites=0, self_attention_sites=1, **_HAND),
    ZooCase("hand-sink-logits", factory=plain(SinkLogits), expected_sites=1, causal_sites=0,
            self_attention_sites=1, **_HAND),
    ZooCase("hand-mask-units", factory=hand(MaskUnitAttention), expected_sites=1, causal_sites=0,
            self_attention_sites=1, **_HAND),
    ZooCase("neg-key-weighted-scores", "negative", hand(KeyWeightedScores), expected_sites=0, fx_tracers=FX_TRACERS),
    ZooCase("neg-learned-keys", "negative", hand(LearnedKeys), expected_sites=0, fx_tracers=FX_TRACERS),
    ZooCase("neg-zeroed-probabilities", "negative", hand(ZeroedProbabilities), expected_sites=0,
            fx_tracers=FX_TRACERS),
]

CASES_BY_NAME: dict[str, ZooCase] = {c.name: c for c in CASES}
assert len(CASES_BY_NAME) == len(CASES), "duplicate zoo case names"


def onnx_combos(cases: Sequence[ZooCase] = CASES) -> list[tuple[str, str]]:
    return [(c.name, e) for c in cases for e in c.active_onnx_exporters]


def fx_combos(cases: Sequence[ZooCase] = CASES) -> list[tuple[str, str]]:
    return [(c.name, t) for c in cases for t in c.active_fx_tracers]


def excluded_combos(cases: Sequence[ZooCase] = CASES) -> list[tuple[str, str, str]]:
    return [(c.name, k, why) for c in cases for k, why in c.excluded.items()]


# ---------------------------------------------------------------------------
# Building, exporting, caching.


class ZooBuildError(RuntimeError):
    """An export of a case failed or disagrees with torch: a bug in the zoo (or the exporter)."""


def _versions() -> str:
    import onnx
    import onnxruntime
    import onnxscript
    import transformers

    parts = [f"torch{torch.__version__}", f"tf{transformers.__version__}", f"onnx{onnx.__version__}",
             f"os{onnxscript.__version__}", f"ort{onnxruntime.__version__}"]
    return "-".join(p.replace("+", "_") for p in parts)


_CLI_MARKER = "# " + "CLI (not part of the cache key)"


def cache_dir() -> Path:
    """The cache folder for these library versions and this file's cases and build code (CLI excluded)."""
    text = Path(__file__).read_text()
    digest = hashlib.sha256(text.split(_CLI_MARKER)[0].encode()).hexdigest()[:10]
    return CACHE_ROOT / f"{_versions()}-zoo{digest}"


@contextlib.contextmanager
def quiet():
    """Silence exporters (prints, warnings, logging) at the file-descriptor level; keep the text."""
    sys.stdout.flush()
    sys.stderr.flush()
    with tempfile.TemporaryFile(mode="w+b") as sink, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        saved = os.dup(1), os.dup(2)
        levels = {}
        for name in ("torch", "torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "transformers"):
            lg = logging.getLogger(name)
            levels[name] = lg.level
            lg.setLevel(logging.ERROR)
        captured = []
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            yield captured
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            for name, lvl in levels.items():
                logging.getLogger(name).setLevel(lvl)
            sink.seek(0)
            captured.append(sink.read().decode(errors="replace"))


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _torch_outputs(built: Built) -> list[torch.Tensor]:
    with torch.no_grad():
        out = built.module(*built.inputs)
    return [t.detach() for t in (out if isinstance(out, (tuple, list)) else (out,))]


def _check_in_ort(path_or_bytes, built: Built, expected: list[torch.Tensor], atol: float) -> float:
    """Run the ONNX model in onnxruntime (CPU EP) on the example inputs; return max |ort - torch|."""
    import numpy as np
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 4  # errors surface as exceptions; keep the C++ logger quiet
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(path_or_bytes, so, providers=["CPUExecutionProvider"])
    feeds_in = sess.get_inputs()
    if len(feeds_in) != len(built.inputs):
        raise ZooBuildError(f"ONNX graph has {len(feeds_in)} inputs, the module takes {len(built.inputs)}")
    feeds = {i.name: t.numpy() for i, t in zip(feeds_in, built.inputs)}
    got = sess.run(None, feeds)
    if len(got) != len(expected):
        raise ZooBuildError(f"ONNX graph has {len(got)} outputs, torch gives {len(expected)}")
    worst = 0.0
    for g, e in zip(got, expected):
        e = e.numpy()
        if g.shape != e.shape:
            raise ZooBuildError(f"output shape {g.shape} != torch {e.shape}")
        diff = float(np.max(np.abs(g.astype(np.float64) - e.astype(np.float64)))) if g.size else 0.0
        worst = max(worst, diff)
    if not worst <= atol:
        raise ZooBuildError(f"onnxruntime disagrees with torch: max abs diff {worst:.3g} > {atol:g}")
    return worst


def _dynamic_shapes_for_export(built: Built):
    if not built.dynamic_axes:
        return None
    names = list(built.input_names or [])
    return tuple({ax: torch.export.Dim.AUTO for ax in built.dynamic_axes.get(n, {})} or None for n in names)


def _export_onnx(zoo: "Zoo", case: ZooCase, exporter: str, built: Built, path: Path) -> None:
    common = dict(input_names=list(built.input_names) if built.input_names else None,
                  output_names=list(built.output_names) if built.output_names else None, verbose=False)
    if exporter in (DYNAMO, DYNAMO_OPSET23):
        kw = dict(dynamo=True, external_data=False, **common)
        if exporter == DYNAMO_OPSET23:
            kw["opset_version"] = 23
        if built.dynamic_axes:
            kw["dynamic_shapes"] = _dynamic_shapes_for_export(built)
        torch.onnx.export(built.module, built.inputs, str(path), **kw)
    elif exporter == TORCHSCRIPT:
        torch.onnx.export(built.module, built.inputs, str(path), dynamo=False, opset_version=TORCHSCRIPT_OPSET,
                          dynamic_axes=dict(built.dynamic_axes) if built.dynamic_axes else None,
                          do_constant_folding=True, **common)
    elif exporter == ORT_FUSED:
        import onnx_ir as ir
        from onnxscript.rewriter.ort_fusions import optimize_for_ort

        base = zoo.onnx_path(case.name, DYNAMO)
        model = ir.load(str(base))
        model, _counts = optimize_for_ort(model)
        ir.save(model, str(path))
    else:
        raise ValueError(f"unknown exporter {exporter!r}")


@dataclass
class BuildRecord:
    case: str
    exporter: str
    ok: bool
    seconds: float
    path: str
    error: str = ""
    ort_max_abs_diff: float | None = None
    # False when onnxruntime could not run the export for a known reason (ZooCase.ort_known_failures).
    verified: bool = True
    note: str = ""


class Zoo:
    """Builds cases lazily and caches their exports on disk. One per process is enough."""

    _default: "Zoo | None" = None

    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root is not None else cache_dir()
        self._built: dict[str, Built] = {}
        self._expected: dict[str, list[torch.Tensor]] = {}
        self._fx: dict[tuple[str, str], Any] = {}

    @classmethod
    def default(cls) -> "Zoo":
        if cls._default is None:
            cls._default = cls()
        return cls._default

    # -- modules -------------------------------------------------------------

    def build(self, name: str) -> Built:
        """The case's module (eval mode) and example inputs; built once per process."""
        if name not in self._built:
            case = CASES_BY_NAME[name]
            with quiet():
                built = case.factory()
            built.module.eval()
            self._built[name] = built
        return self._built[name]

    def torch_outputs(self, name: str) -> list[torch.Tensor]:
        if name not in self._expected:
            self._expected[name] = _torch_outputs(self.build(name))
        return self._expected[name]

    # -- ONNX ------------------------------------------------------------------

    def _paths(self, name: str, exporter: str) -> tuple[Path, Path]:
        d = self.root / name
        return d / f"{exporter}.onnx", d / f"{exporter}.json"

    def record(self, name: str, exporter: str) -> BuildRecord | None:
        _, meta = self._paths(name, exporter)
        if not meta.exists():
            return None
        return BuildRecord(**json.loads(meta.read_text()))

    def onnx_record(self, name: str, exporter: str) -> BuildRecord:
        """Export (or reuse the cached export of) one case; never raises for a failed export."""
        rec = self.record(name, exporter)
        if rec is not None:
            return rec
        case = CASES_BY_NAME[name]
        path, meta = self._paths(name, exporter)
        path.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        ok, error, diff, verified, note = False, "", None, True, ""
        # Export to a private name, verify, then publish: a concurrent reader never sees a half file.
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.onnx")
        log: list[str] = []
        try:
            built = self.build(name)
            expected = self.torch_outputs(name)
            with quiet() as log:
                _export_onnx(self, case, exporter, built, tmp)
            try:
                diff = _check_in_ort(str(tmp), built, expected, case.atol)
            except Exception as e:
                known = case.ort_known_failures.get(exporter)
                if not known or known not in str(e):
                    raise
                verified, note = False, f"onnxruntime cannot run it (known): {known}"
            os.replace(tmp, path)
            ok = True
        except Exception as e:  # recorded: a failed export is reported per combination, not fatal to the zoo
            tail = (log[0] if log else "")[-2000:]
            error = f"{type(e).__name__}: {e}".strip()
            error = error[:4000] + ("\n--- exporter output ---\n" + tail if tail.strip() else "")
            error += "\n--- traceback ---\n" + traceback.format_exc()[-3000:]
        finally:
            for leftover in (tmp, tmp.with_name(tmp.name + ".data")):
                if leftover.exists():
                    leftover.unlink()
        rec = BuildRecord(name, exporter, ok, round(time.perf_counter() - t0, 2), str(path), error, diff,
                          verified, note)
        _atomic_write_bytes(meta, json.dumps(rec.__dict__, indent=1).encode())
        return rec

    def ort_runs(self, name: str, exporter: str) -> bool:
        """False only when the export's record saw onnxruntime fail with the case's declared message
        (ZooCase.ort_known_failures), checked when the export was built under these library versions."""
        return self.onnx_record(name, exporter).verified

    def onnx_path(self, name: str, exporter: str) -> Path:
        """Path of a verified export; raises ZooBuildError if this combination failed to export."""
        rec = self.onnx_record(name, exporter)
        if not rec.ok:
            raise ZooBuildError(f"zoo export {name}/{exporter} failed: {rec.error.splitlines()[0]}\n"
                                f"(details in {self._paths(name, exporter)[1]})")
        return Path(rec.path)

    # -- torch graphs -------------------------------------------------------------

    def exported_program(self, name: str) -> torch.export.ExportedProgram:
        key = (name, EXPORT)
        if key in self._fx:
            return self._fx[key]
        built = self.build(name)
        pt2 = self.root / name / "export.pt2"
        ep = None
        if pt2.exists():
            try:
                with quiet():
                    ep = torch.export.load(str(pt2))
            except Exception:
                ep = None
        if ep is None:
            with quiet():
                ep = torch.export.export(built.module, built.inputs,
                                         dynamic_shapes=_dynamic_shapes_for_export(built))
            try:
                buf = tempfile.NamedTemporaryFile(dir=pt2.parent if pt2.parent.exists() else None, delete=False,
                                                  suffix=".pt2.tmp")
                buf.close()
                pt2.parent.mkdir(parents=True, exist_ok=True)
                with quiet():
                    torch.export.save(ep, buf.name)
                os.replace(buf.name, pt2)
            except Exception:
                with contextlib.suppress(OSError):
                    os.unlink(buf.name)
        self._fx[key] = ep
        return ep

    def symbolic_trace(self, name: str) -> torch.fx.GraphModule:
        key = (name, SYMBOLIC_TRACE)
        if key not in self._fx:
            with quiet():
                self._fx[key] = torch.fx.symbolic_trace(self.build(name).module)
        return self._fx[key]

    def fx_graph(self, name: str, tracer: str):
        """(graph-or-module, example_inputs) as attnopt.detect takes them for this tracer."""
        built = self.build(name)
        if tracer == EXPORT:
            return self.exported_program(name), None
        if tracer == DECOMPOSED:
            key = (name, DECOMPOSED)
            if key not in self._fx:
                with quiet():
                    self._fx[key] = self.exported_program(name).run_decompositions()
            return self._fx[key], None
        if tracer == SYMBOLIC_TRACE:
            return self.symbolic_trace(name), built.inputs
        if tracer == MODULE:
            return built.module, built.inputs
        raise ValueError(f"unknown tracer {tracer!r}")

    def fx_record(self, name: str, tracer: str) -> BuildRecord:
        t0 = time.perf_counter()
        try:
            if tracer == MODULE:
                # What detect() will do with the module: check that torch.export accepts it.
                self.exported_program(name)
            else:
                self.fx_graph(name, tracer)
            return BuildRecord(name, tracer, True, round(time.perf_counter() - t0, 2), "")
        except Exception as e:
            return BuildRecord(name, tracer, False, round(time.perf_counter() - t0, 2), "",
                               f"{type(e).__name__}: {e}"[:2000])

    # -- everything ------------------------------------------------------------------

    def build_all(self, cases: Sequence[ZooCase] = CASES, progress: Callable[[BuildRecord], None] | None = None
                  ) -> list[BuildRecord]:
        out = []
        for case in cases:
            order = sorted(case.active_onnx_exporters, key=lambda e: e == ORT_FUSED)  # fused needs dynamo
            for exporter in order:
                rec = self.onnx_record(case.name, exporter)
                out.append(rec)
                if progress:
                    progress(rec)
            for tracer in case.active_fx_tracers:
                rec = self.fx_record(case.name, tracer)
                out.append(rec)
                if progress:
                    progress(rec)
            # Free the module: the zoo is built once, the tests rebuild what they need lazily.
            self._built.pop(case.name, None)
            self._expected.pop(case.name, None)
            for k in [k for k in self._fx if k[0] == case.name]:
                del self._fx[k]
        return out


# ---------------------------------------------------------------------------
# CLI (not part of the cache key)


def _build_worker(names: list[str]) -> list[dict]:
    torch.set_num_threads(1)
    zoo = Zoo()
    return [r.__dict__ for r in zoo.build_all([CASES_BY_NAME[n] for n in names])]


def _print_row(r: BuildRecord) -> None:
    status = ("ok" if r.verified else "ok*") if r.ok else "FAILED"
    where = os.path.relpath(r.path, REPO_ROOT) if r.path else "(in memory)"
    print(f"{r.case:28s} {r.exporter:16s} {status:6s} {r.seconds:7.2f}s  {where}", flush=True)
    if not r.ok:
        print("    " + r.error.splitlines()[0][:300], flush=True)
    elif r.note:
        print("    " + r.note, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.zoo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", action="store_true", help="build every export into the cache and print a table")
    ap.add_argument("--list", action="store_true", help="list cases, expected sites and combinations")
    ap.add_argument("--only", action="append", default=[], help="glob or substring of case names (repeatable)")
    ap.add_argument("-j", "--jobs", type=int, default=1, help="worker processes for --build")
    ap.add_argument("--clean", action="store_true",
                    help="delete all of .zoo_cache/ first (including folders of older zoo.py versions)")
    args = ap.parse_args(argv)

    cases = CASES
    if args.only:
        cases = [c for c in CASES if any(fnmatch.fnmatch(c.name, p) or p in c.name for p in args.only)]
    if args.list or not args.build:
        for c in cases:
            print(f"{c.name:28s} sites={c.expected_sites} heads={c.heads} kv={c.expected_kv_heads} "
                  f"d={c.head_dim} onnx={','.join(c.active_onnx_exporters)} fx={','.join(c.active_fx_tracers)}")
        for name, k, why in excluded_combos(cases):
            print(f"excluded {name}/{k}: {why}")
        if not args.build:
            return 0
    if args.clean:
        import shutil

        shutil.rmtree(CACHE_ROOT, ignore_errors=True)

    print(f"cache: {cache_dir()}", flush=True)
    t0 = time.perf_counter()
    records: list[BuildRecord] = []
    if args.jobs <= 1:
        records = Zoo().build_all(cases, progress=_print_row)
    else:
        import multiprocessing as mp

        # Balance by rough cost: HF cases are the heavy ones; deal them round-robin.
        buckets: list[list[str]] = [[] for _ in range(args.jobs)]
        for i, c in enumerate(sorted(cases, key=lambda c: c.family in ("hand", "torch", "negative"))):
            buckets[i % args.jobs].append(c.name)
        with mp.get_context("spawn").Pool(args.jobs) as pool:
            for chunk in pool.imap_unordered(_build_worker, buckets):
                for d in chunk:
                    r = BuildRecord(**d)
                    records.append(r)
                    _print_row(r)
            pool.close()
            pool.join()
    total = time.perf_counter() - t0
    failed = [r for r in records if not r.ok]
    unverified = [r for r in records if r.ok and not r.verified]
    print(f"\n{len(records)} combinations, {len(failed)} failed, {len(unverified)} not runnable in "
          f"onnxruntime (known, marked ok*), {len(excluded_combos(cases))} excluded, {total:.1f}s wall")
    for r in failed:
        print(f"FAILED {r.case}/{r.exporter}: {r.error.splitlines()[0][:300]}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
