"""Probe Hugging Face families the zoo does not hold: find where detection or the rewrite breaks.

    python benchmarks/family_probe.py --json $OUT/families.json             # every family below
    python benchmarks/family_probe.py funnel swinv2 --exporters dynamo      # some of them

Each family is built from a tiny config with random weights, for each attention implementation transformers
offers it (eager, sdpa; flex_attention on request, for decoders, called with input_ids alone), and exported with
each exporter (TorchScript at opset 17, dynamo) or traced for the
fx path (``export``: torch.export with the sequence axes dynamic, as ``torch.export.Dim.AUTO`` leaves them;
``decomposed``: the same program after ``run_decompositions()``, where SDPA is written out as matmuls around
torch's safe softmax; not run by default).
attnopt then detects its sites, rewrites them with segmented at its exact limit (one segment longer than the
input, two sinks) and validates the result against the original. One JSON line per (family, implementation, exporter):
the stage reached (build, export, detect, rewrite, validate, done; an ONNX export that onnxruntime cannot load
stops at export), the sites found and rewritten, whether the rewrite is exact, and the error where one stopped
it. At the end a table counts the outcomes.

An export that fails in torch, or a family this transformers cannot build, is not attnopt's; any other stop
is. The house rule for those: add the family to ``tests/zoo.py``, then fix the general mechanism. The sizes
and inputs come from the zoo's own helpers (2 sequences of 10 tokens, the second padded from token 7);
decoders are validated a second time with the second sequence padded on the left instead (its first 3
queries see no key), and count as exact only if both agree.
This takes a few minutes on two cores; it is a development tool, not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from zoo import INKLING, _padding_mask, _video, _word_boxes  # noqa: E402  (tests/ is on the path only from here)

# One small config that many recent families build from as they are.
_GENERIC = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2,
                head_dim=8, pad_token_id=0)

# Multimodal rotary sections over 8-wide heads (the default sections are for 128).
_MROPE_8 = dict(rope_parameters={"rope_type": "default", "mrope_section": [2, 1, 1], "rope_theta": 10000.0})

# A tiny Parakeet (Conformer) encoder, for the speech encoder-decoders built on it.
_PARAKEET_32 = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, intermediate_size=64,
                    num_mel_bins=16, subsampling_conv_channels=8, conv_kernel_size=3, model_type="parakeet_encoder")

# family: (builder kind, config class, model class, config keyword arguments) -- tiny, random weights
FAMILIES = {
    "phi3": ("dec", "Phi3Config", "Phi3Model", dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, num_hidden_layers=2)),
    "gpt_neox": ("dec", "GPTNeoXConfig", "GPTNeoXModel", dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=2)),
    "olmo2": ("dec", "Olmo2Config", "Olmo2Model", dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, num_hidden_layers=2)),
    "stablelm": ("dec", "StableLmConfig", "StableLmModel", dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2)),
    "qwen3": ("dec", "Qwen3Config", "Qwen3Model", dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_hidden_layers=2)),
    "granite": ("dec", "GraniteConfig", "GraniteModel", dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2)),
    "starcoder2": ("dec", "Starcoder2Config", "Starcoder2Model", dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, sliding_window=None, num_hidden_layers=2)),
    "cohere": ("dec", "CohereConfig", "CohereModel", dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, num_hidden_layers=2)),
    "gemma": ("dec", "GemmaConfig", "GemmaModel", dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=16, pad_token_id=0, num_hidden_layers=2)),
    "opt": ("dec", "OPTConfig", "OPTModel", dict(hidden_size=64, ffn_dim=128, num_attention_heads=4, word_embed_proj_dim=64, pad_token_id=1, num_hidden_layers=2)),
    "roberta": ("enc", "RobertaConfig", "RobertaModel", dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, pad_token_id=1, num_hidden_layers=2)),
    "electra": ("enc", "ElectraConfig", "ElectraModel", dict(hidden_size=64, embedding_size=32, intermediate_size=128, num_attention_heads=4, num_hidden_layers=2)),
    "xlm_roberta": ("enc", "XLMRobertaConfig", "XLMRobertaModel", dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, pad_token_id=1, num_hidden_layers=2)),
    "albert": ("enc", "AlbertConfig", "AlbertModel", dict(hidden_size=64, embedding_size=32, intermediate_size=128, num_attention_heads=4, num_hidden_layers=2)),
    "mpnet": ("enc", "MPNetConfig", "MPNetModel", dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=2)),
    "phi": ("dec", "PhiConfig", "PhiModel", dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, partial_rotary_factor=0.5, num_hidden_layers=2)),
    "gpt_bigcode": ("dec", "GPTBigCodeConfig", "GPTBigCodeModel", dict(n_embd=64, n_head=4, n_layer=2, n_positions=64, multi_query=True)),
    "gptj": ("dec", "GPTJConfig", "GPTJModel", dict(n_embd=64, n_head=4, n_layer=2, n_positions=64, rotary_dim=8)),
    "codegen": ("dec", "CodeGenConfig", "CodeGenModel", dict(n_embd=64, n_head=4, n_layer=2, n_positions=64, n_ctx=64, rotary_dim=8)),
    "falcon_rotary": ("dec", "FalconConfig", "FalconModel", dict(hidden_size=64, num_attention_heads=4, alibi=False, new_decoder_architecture=True, num_kv_heads=2, num_hidden_layers=2)),
    "biogpt": ("dec", "BioGptConfig", "BioGptModel", dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=2)),
    "xglm": ("dec", "XGLMConfig", "XGLMModel", dict(d_model=64, ffn_dim=128, attention_heads=4, num_layers=2)),
    "mpt": ("dec", "MptConfig", "MptModel", dict(d_model=64, n_heads=4, n_layers=2, expansion_ratio=2)),
    "diffllama": ("dec", "DiffLlamaConfig", "DiffLlamaModel", dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2)),
    "mixtral": ("dec", "MixtralConfig", "MixtralModel", dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2, num_local_experts=2)),
    "olmoe": ("dec", "OlmoeConfig", "OlmoeModel", dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2, num_experts=2, num_experts_per_tok=1, pad_token_id=0)),
    "cohere2": ("dec", "Cohere2Config", "Cohere2Model", dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2, sliding_window=4, pad_token_id=0)),
    "modernbert": ("enc", "ModernBertConfig", "ModernBertModel", dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=3, global_attn_every_n_layers=3, local_attention=4, pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2)),
    "longformer": ("enc", "LongformerConfig", "LongformerModel", dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=2, attention_window=4, pad_token_id=1)),
    "xlnet": ("enc", "XLNetConfig", "XLNetModel", dict(d_model=64, n_layer=2, n_head=4, d_inner=128, max_position_embeddings=None)),
    "deberta_v2": ("enc", "DebertaV2Config", "DebertaV2Model", dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=2, relative_attention=True, pos_att_type=["p2c", "c2p"], position_buckets=8)),
    "reformer": ("enc", "ReformerConfig", "ReformerModel", dict(hidden_size=64, num_attention_heads=4, attention_head_size=16, feed_forward_size=128, axial_pos_embds=False, attn_layers=["local", "lsh"], local_attn_chunk_length=4, lsh_attn_chunk_length=4, num_buckets=2, is_decoder=False)),
    "llama_bias": ("dec", "LlamaConfig", "LlamaModel", dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=1, attention_bias=True, num_hidden_layers=2)),
    "hiera": ("vision32", "HieraConfig", "HieraModel", dict(embed_dim=16, image_size=[32, 32], patch_size=[3, 3], patch_stride=[2, 2], patch_padding=[1, 1], depths=[1, 1], num_heads=[1, 2], num_query_pool=1, query_stride=[2, 2], masked_unit_size=[4, 4], masked_unit_attention=[True, False], mlp_ratio=2.0)),
    "deit": ("vision", "DeiTConfig", "DeiTModel", dict(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)),
    "beit": ("vision", "BeitConfig", "BeitModel", dict(use_relative_position_bias=True, image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)),
    "dinov2": ("vision", "Dinov2Config", "Dinov2Model", dict(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)),
    "siglip": ("vision", "SiglipVisionConfig", "SiglipVisionModel", dict(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)),
    "vit_mae": ("vision", "ViTMAEConfig", "ViTMAEModel", dict(mask_ratio=0.0, image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)),
    "blenderbot": ("encdec", "BlenderbotConfig", "BlenderbotModel", dict(d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64)),
    "pegasus": ("encdec", "PegasusConfig", "PegasusModel", dict(d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64)),
    "marian": ("encdec", "MarianConfig", "MarianModel", dict(d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, pad_token_id=0, decoder_start_token_id=0)),
    "m2m100": ("encdec", "M2M100Config", "M2M100Model", dict(d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64)),
    "wav2vec2": ("audio", "Wav2Vec2Config", "Wav2Vec2Model", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)),
    "roformer": ("enc", "RoFormerConfig", "RoFormerModel", dict(embedding_size=64, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=2)),
    "megatron_bert": ("enc", "MegatronBertConfig", "MegatronBertModel", dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=2)),
    "ernie": ("enc", "ErnieConfig", "ErnieModel", dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=2)),
    "camembert": ("enc", "CamembertConfig", "CamembertModel", dict(pad_token_id=1, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=2)),
    "layoutlm": ("enc", "LayoutLMConfig", "LayoutLMModel", dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=2)),
    "funnel": ("enc", "FunnelConfig", "FunnelModel", dict(d_model=64, n_head=4, d_head=16, d_inner=128, block_sizes=[1, 1], num_decoder_layers=1)),
    "big_bird_sparse": ("enc", "BigBirdConfig", "BigBirdModel", dict(attention_type="block_sparse", block_size=2, num_random_blocks=1, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=2)),
    "ctrl": ("dec", "CTRLConfig", "CTRLModel", dict(n_embd=64, dff=128, n_head=4, n_layer=2, n_positions=64)),
    "mobilebert": ("enc", "MobileBertConfig", "MobileBertModel", dict(hidden_size=32, embedding_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, intra_bottleneck_size=32, true_hidden_size=32)),
    "squeezebert": ("enc", "SqueezeBertConfig", "SqueezeBertModel", dict(embedding_size=32, q_groups=1, k_groups=1, v_groups=1, post_attention_groups=1, intermediate_groups=1, output_groups=1, hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2)),
    "convbert": ("enc", "ConvBertConfig", "ConvBertModel", dict(embedding_size=32, hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2)),
    "rembert": ("enc", "RemBertConfig", "RemBertModel", dict(input_embedding_size=32, output_embedding_size=32, hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2)),
    "esm": ("enc", "EsmConfig", "EsmModel", dict(pad_token_id=1, position_embedding_type="rotary", hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2)),
    "canine": ("enc", "CanineConfig", "CanineModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2)),
    "luke": ("enc", "LukeConfig", "LukeModel", dict(entity_vocab_size=10, entity_emb_size=32, hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2)),
    "data2vec_text": ("enc", "Data2VecTextConfig", "Data2VecTextModel", dict(pad_token_id=1, hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2)),
    "ibert": ("enc", "IBertConfig", "IBertModel", dict(pad_token_id=1, hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2)),
    "markuplm": ("enc", "MarkupLMConfig", "MarkupLMModel", dict(pad_token_id=1, hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2)),
    "splinter": ("enc", "SplinterConfig", "SplinterModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2)),
    "yoso": ("enc", "YosoConfig", "YosoModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2)),
    "mra": ("enc", "MraConfig", "MraModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2)),
    "roc_bert": ("enc", "RoCBertConfig", "RoCBertModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2)),
    "mistral": ("dec", "MistralConfig", "MistralModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2)),
    "persimmon": ("dec", "PersimmonConfig", "PersimmonModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2)),
    "olmo": ("dec", "OlmoConfig", "OlmoModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, pad_token_id=0)),
    "nemotron": ("dec", "NemotronConfig", "NemotronModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_hidden_layers=2, pad_token_id=0)),
    "seed_oss": ("dec", "SeedOssConfig", "SeedOssModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_hidden_layers=2, pad_token_id=0)),
    "smollm3": ("dec", "SmolLM3Config", "SmolLM3Model", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2, pad_token_id=0)),
    "arcee": ("dec", "ArceeConfig", "ArceeModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2, pad_token_id=0)),
    "bitnet": ("dec", "BitNetConfig", "BitNetModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2, pad_token_id=0)),
    "gemma3_text": ("dec", "Gemma3TextConfig", "Gemma3TextModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_hidden_layers=2, pad_token_id=0, sliding_window=4096)),
    "vit_msn": ("vision", "ViTMSNConfig", "ViTMSNModel", dict(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)),
    "data2vec_vision": ("vision", "Data2VecVisionConfig", "Data2VecVisionModel", dict(use_relative_position_bias=True, image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)),
    "ijepa": ("vision", "IJepaConfig", "IJepaModel", dict(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)),
    "swinv2": ("vision", "Swinv2Config", "Swinv2Model", dict(image_size=16, patch_size=2, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=4)),
    "pvt_v2": ("vision", "PvtV2Config", "PvtV2Model", dict(image_size=32, hidden_sizes=[16, 32], num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], num_attention_heads=[1, 2], patch_sizes=[7, 3], strides=[4, 2], mlp_ratios=[2, 2])),
    "segformer": ("vision", "SegformerConfig", "SegformerModel", dict(image_size=32, hidden_sizes=[16, 32], num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], num_attention_heads=[1, 2], patch_sizes=[7, 3], strides=[4, 2], mlp_ratios=[2, 2], decoder_hidden_size=32)),
    "hubert": ("audio", "HubertConfig", "HubertModel", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)),
    "wavlm": ("audio", "WavLMConfig", "WavLMModel", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, num_buckets=32, max_bucket_distance=64)),
    "sew_d": ("audio", "SEWDConfig", "SEWDModel", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, squeeze_factor=1, position_buckets=8, max_relative_positions=16)),
    "data2vec_audio": ("audio", "Data2VecAudioConfig", "Data2VecAudioModel", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=4, conv_pos_kernel_size=4, num_conv_pos_embeddings_disabled=False)),
    "unispeech": ("audio", "UniSpeechConfig", "UniSpeechModel", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)),
    "mbart": ("encdec", "MBartConfig", "MBartModel", dict(d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64)),
    "plbart": ("encdec", "PLBartConfig", "PLBartModel", dict(d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64)),
    "led": ("encdec", "LEDConfig", "LEDModel", dict(max_encoder_position_embeddings=64, max_decoder_position_embeddings=64, attention_window=4, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64)),
    "bigbird_pegasus": ("encdec", "BigBirdPegasusConfig", "BigBirdPegasusModel", dict(attention_type="original_full", d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64)),
    "prophetnet": ("encdec", "ProphetNetConfig", "ProphetNetModel", dict(hidden_size=32, encoder_ffn_dim=64, decoder_ffn_dim=64, num_encoder_layers=1, num_decoder_layers=1, num_encoder_attention_heads=4, num_decoder_attention_heads=4)),
    "deberta": ("enc", "DebertaConfig", "DebertaModel", dict(relative_attention=True, pos_att_type=["c2p", "p2c"], max_relative_positions=16, hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2)),
    "deberta_noatt": ("enc", "DebertaConfig", "DebertaModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2)),
    "tapas": ("enc", "TapasConfig", "TapasModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2)),
    "xlm": ("enc", "XLMConfig", "XLMModel", dict(emb_dim=32, n_layers=2, n_heads=4)),
    "flaubert": ("enc", "FlaubertConfig", "FlaubertModel", dict(emb_dim=32, n_layers=2, n_heads=4)),
    "bert_relkq": ("enc", "BertConfig", "BertModel", dict(position_embedding_type="relative_key_query", hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2)),
    "roberta_relk": ("enc", "RobertaConfig", "RobertaModel", dict(position_embedding_type="relative_key", pad_token_id=1, hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2)),
    "ernie_relk": ("enc", "ErnieConfig", "ErnieModel", dict(position_embedding_type="relative_key_query", hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2)),
    "mvp": ("encdec", "MvpConfig", "MvpModel", dict(d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64)),
    "nllb_moe": ("encdec", "NllbMoeConfig", "NllbMoeModel", dict(num_experts=2, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64)),
    "switch": ("encdec", "SwitchTransformersConfig", "SwitchTransformersModel", dict(d_model=32, d_kv=8, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=4, num_experts=2, relative_attention_num_buckets=8)),
    "longt5": ("encdec", "LongT5Config", "LongT5Model", dict(d_model=32, d_kv=8, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=4, relative_attention_num_buckets=8, encoder_attention_type="transient-global", local_radius=4, global_block_size=4)),
    "longt5_local": ("encdec", "LongT5Config", "LongT5Model", dict(d_model=32, d_kv=8, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=4, relative_attention_num_buckets=8, encoder_attention_type="local", local_radius=4)),
    "umt5": ("encdec", "UMT5Config", "UMT5Model", dict(d_model=32, d_kv=8, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=4, relative_attention_num_buckets=8)),
    "mt5": ("encdec", "MT5Config", "MT5Model", dict(d_model=32, d_kv=8, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=4, relative_attention_num_buckets=8)),
    "pegasus_x": ("encdec", "PegasusXConfig", "PegasusXModel", dict(block_size=4, num_global_tokens=2, stagger_local_blocks=True, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64)),
    "gpt_neo": ("dec", "GPTNeoConfig", "GPTNeoModel", dict(hidden_size=32, num_heads=4, num_layers=2, attention_types=[[["global", "local"], 1]], window_size=4)),
    "falcon_new": ("dec", "FalconConfig", "FalconModel", dict(hidden_size=32, num_attention_heads=4, num_hidden_layers=2, new_decoder_architecture=True, num_kv_heads=2)),
    "jetmoe": ("dec", "JetMoeConfig", "JetMoeModel", dict(hidden_size=32, num_attention_heads=4, num_hidden_layers=2, kv_channels=8, num_local_experts=2, num_experts_per_tok=1, intermediate_size=64)),
    "clip_text": ("enc", "CLIPTextConfig", "CLIPTextModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2)),
    "owlvit_text": ("enc", "OwlViTTextConfig", "OwlViTTextModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2)),
    "siglip_text": ("enc", "SiglipTextConfig", "SiglipTextModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2)),
    "xclip_text": ("enc", "XCLIPTextConfig", "XCLIPTextModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2)),
    "groupvit_text": ("enc", "GroupViTTextConfig", "GroupViTTextModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2)),
    "blip_text": ("enc", "BlipTextConfig", "BlipTextModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, encoder_hidden_size=32)),
    "git": ("enc", "GitConfig", "GitModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, vision_config={"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "num_hidden_layers": 1, "image_size": 16, "patch_size": 4})),
    "mobilevit": ("vision32", "MobileViTConfig", "MobileViTModel", dict(image_size=32, hidden_sizes=[16, 24, 32], neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 64], num_attention_heads=2)),
    "dpt": ("vision32", "DPTConfig", "DPTModel", dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, backbone_out_indices=[0, 1], neck_hidden_sizes=[8, 16], fusion_hidden_size=16, readout_type="project")),
    "glpn": ("vision32", "GLPNConfig", "GLPNModel", dict(hidden_sizes=[16, 32], num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], num_attention_heads=[1, 2], patch_sizes=[7, 3], strides=[4, 2], mlp_ratios=[2, 2], decoder_hidden_size=32)),
    "vitdet": ("vision32", "VitDetConfig", "VitDetModel", dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=2, pretrain_image_size=32, use_relative_position_embeddings=True, window_size=2, window_block_indices=[0])),
    "pvt": ("vision32", "PvtConfig", "PvtModel", dict(image_size=32, hidden_sizes=[16, 32], num_encoder_blocks=2, depths=[1, 1], sequence_reduction_ratios=[2, 1], num_attention_heads=[1, 2], patch_sizes=[4, 2], strides=[4, 2], mlp_ratios=[2, 2])),
    "speech_to_text": ("speech2text", "Speech2TextConfig", "Speech2TextModel", dict(d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, input_feat_per_channel=8, conv_channels=16, max_source_positions=64, max_target_positions=64)),
    "gpt_oss": ("dec", "GptOssConfig", "GptOssModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2, pad_token_id=0, head_dim=8, num_local_experts=2, num_experts_per_tok=1, sliding_window=4, layer_types=["sliding_attention", "full_attention"])),
    "deepseek_v3": ("dec", "DeepseekV3Config", "DeepseekV3Model", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=4, num_hidden_layers=2, pad_token_id=0, kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16, n_routed_experts=2, num_experts_per_tok=1, first_k_dense_replace=2, n_group=1, topk_group=1, moe_intermediate_size=32)),
    # DeepSeek's own shapes: q·k over 192 dims, values of 128 (here 16 and 8).
    "deepseek_v3_mla": ("dec", "DeepseekV3Config", "DeepseekV3Model", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=4, num_hidden_layers=2, pad_token_id=0, kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8, n_routed_experts=2, num_experts_per_tok=1, first_k_dense_replace=2, n_group=1, topk_group=1, moe_intermediate_size=32)),
    "deepseek_v2": ("dec", "DeepseekV2Config", "DeepseekV2Model", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=4, num_hidden_layers=2, pad_token_id=0, kv_lora_rank=16, q_lora_rank=None, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16, n_routed_experts=2, num_experts_per_tok=1, first_k_dense_replace=2, n_group=1, topk_group=1, moe_intermediate_size=32)),
    "exaone4": ("dec", "Exaone4Config", "Exaone4Model", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2, pad_token_id=0, sliding_window=4, sliding_window_pattern=2)),
    "glm": ("dec", "GlmConfig", "GlmModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2, pad_token_id=0, head_dim=8)),
    "glm4": ("dec", "Glm4Config", "Glm4Model", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2, pad_token_id=0, head_dim=8)),
    "helium": ("dec", "HeliumConfig", "HeliumModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2, pad_token_id=0, head_dim=8)),
    "apertus": ("dec", "ApertusConfig", "ApertusModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2, pad_token_id=0)),
    "ministral": ("dec", "MinistralConfig", "MinistralModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2, pad_token_id=0, head_dim=8, sliding_window=4, layer_types=["sliding_attention", "full_attention"])),
    "hunyuan_v1_dense": ("dec", "HunYuanDenseV1Config", "HunYuanDenseV1Model", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2, pad_token_id=0, head_dim=8)),
    "ernie4_5": ("dec", "Ernie4_5Config", "Ernie4_5Model", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2, pad_token_id=0, head_dim=8)),
    "olmo3": ("dec", "Olmo3Config", "Olmo3Model", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2, pad_token_id=0, sliding_window=4)),
    "vaultgemma": ("dec", "VaultGemmaConfig", "VaultGemmaModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2, pad_token_id=0, head_dim=8, sliding_window=4)),
    "flex_olmo": ("dec", "FlexOlmoConfig", "FlexOlmoModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2, pad_token_id=0, num_experts=2, num_experts_per_tok=1)),
    "qwen2_moe": ("dec", "Qwen2MoeConfig", "Qwen2MoeModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2, pad_token_id=0, num_experts=2, num_experts_per_tok=1, moe_intermediate_size=32, shared_expert_intermediate_size=32)),
    "qwen3_moe": ("dec", "Qwen3MoeConfig", "Qwen3MoeModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2, pad_token_id=0, head_dim=8, num_experts=2, num_experts_per_tok=1, moe_intermediate_size=32)),
    "granitemoe": ("dec", "GraniteMoeConfig", "GraniteMoeModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2, pad_token_id=0, num_local_experts=2, num_experts_per_tok=1)),
    "doge": ("dec", "DogeConfig", "DogeModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2, pad_token_id=0)),
    "gemma3n_text": ("dec", "Gemma3nTextConfig", "Gemma3nTextModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2, pad_token_id=0, head_dim=8, vocab_size_per_layer_input=100, hidden_size_per_layer_input=8, num_kv_shared_layers=0, laurel_rank=4, altup_num_inputs=2, activation_sparsity_pattern=[0.0, 0.0], layer_types=["sliding_attention", "full_attention"], sliding_window=4)),
    "lfm2": ("dec", "Lfm2Config", "Lfm2Model", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2, pad_token_id=0, layer_types=["conv", "full_attention"])),
    # the eighteenth batch: decoders with softcaps, MLA-style projections, MoE attention, local attention; encoders
    # with rotary or pre-norm; vision towers with registers, RoPE, LeViT's wide values; audio with relative positions;
    # and three whose token mixing is no q·k softmax, where detection must find nothing it cannot rewrite
    "gemma2": ("dec", "Gemma2Config", "Gemma2Model", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2, pad_token_id=0, head_dim=8, sliding_window=4, attn_logit_softcapping=50.0, final_logit_softcapping=30.0)),
    "minicpm3": ("dec", "MiniCPM3Config", "MiniCPM3Model", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=4, num_hidden_layers=2, pad_token_id=0, q_lora_rank=16, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8)),
    "glm4_moe": ("dec", "Glm4MoeConfig", "Glm4MoeModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2, pad_token_id=0, head_dim=8, n_routed_experts=2, num_experts_per_tok=1, moe_intermediate_size=32, first_k_dense_replace=2, n_group=1, topk_group=1)),
    "dbrx": ("dec", "DbrxConfig", "DbrxModel", dict(d_model=32, n_heads=4, n_layers=2, max_seq_len=64, attn_config={"kv_n_heads": 2, "clip_qkv": 8.0, "rope_theta": 10000.0}, ffn_config={"ffn_hidden_size": 64, "moe_num_experts": 2, "moe_top_k": 1})),
    "phimoe": ("dec", "PhimoeConfig", "PhimoeModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2, num_local_experts=2, num_experts_per_tok=1)),
    "openai_gpt": ("dec", "OpenAIGPTConfig", "OpenAIGPTModel", dict(n_embd=32, n_head=4, n_layer=2, n_positions=64)),
    "recurrent_gemma": ("dec", "RecurrentGemmaConfig", "RecurrentGemmaModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=1, num_hidden_layers=2, pad_token_id=0, lru_width=32, attention_window_size=4, block_types=["attention", "recurrent"], conv1d_width=4)),
    "nanochat": ("dec", "NanoChatConfig", "NanoChatModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2, pad_token_id=0)),
    "modernbert_decoder": ("dec", "ModernBertDecoderConfig", "ModernBertDecoderModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2, local_attention=4, global_attn_every_n_layers=2)),
    "nomic_bert": ("enc", "NomicBertConfig", "NomicBertModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2)),
    "eurobert": ("enc", "EuroBertConfig", "EuroBertModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2, pad_token_id=0)),
    "xlm_roberta_xl": ("enc", "XLMRobertaXLConfig", "XLMRobertaXLModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, pad_token_id=1)),
    "roberta_prelayernorm": ("enc", "RobertaPreLayerNormConfig", "RobertaPreLayerNormModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, pad_token_id=1)),
    "bert_generation": ("enc", "BertGenerationConfig", "BertGenerationEncoder", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2)),
    "nystromformer": ("enc", "NystromformerConfig", "NystromformerModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, segment_means_seq_len=10, num_landmarks=10)),
    "dinov2_registers": ("vision", "Dinov2WithRegistersConfig", "Dinov2WithRegistersModel", dict(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, num_register_tokens=2)),
    "dinov3_vit": ("vision", "DINOv3ViTConfig", "DINOv3ViTModel", dict(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, num_register_tokens=2)),
    "levit": ("vision32", "LevitConfig", "LevitModel", dict(image_size=32, hidden_sizes=[16, 32], num_attention_heads=[2, 2], depths=[1, 1], key_dim=[8, 8], drop_path_rate=0, mlp_ratio=[2, 2], attention_ratio=[2, 2], down_ops=[["Subsample", 8, 2, 2, 2, 2]])),
    "yolos": ("vision", "YolosConfig", "YolosModel", dict(image_size=[16, 16], patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, num_detection_tokens=2)),
    "mlcd": ("vision", "MLCDVisionConfig", "MLCDVisionModel", dict(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)),
    "aimv2": ("vision", "Aimv2VisionConfig", "Aimv2VisionModel", dict(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)),
    "cvt": ("vision32", "CvtConfig", "CvtModel", dict(embed_dim=[16, 32], num_heads=[1, 2], depth=[1, 1], patch_sizes=[7, 3], patch_stride=[4, 2], patch_padding=[2, 1], mlp_ratio=[2.0, 2.0], drop_path_rate=[0.0, 0.0], qkv_bias=[True, True], cls_token=[False, True], qkv_projection_method=["dw_bn", "dw_bn"], kernel_qkv=[3, 3], padding_kv=[1, 1], stride_kv=[2, 2], padding_q=[1, 1], stride_q=[1, 1], attention_drop_rate=[0.0, 0.0], drop_rate=[0.0, 0.0])),
    "mobilevitv2": ("vision32", "MobileViTV2Config", "MobileViTV2Model", dict(image_size=32, width_multiplier=0.25)),
    "swiftformer": ("vision32", "SwiftFormerConfig", "SwiftFormerModel", dict(depths=[1, 1, 1, 1], embed_dims=[8, 16, 24, 32])),
    "sew": ("audio", "SEWConfig", "SEWModel", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, squeeze_factor=1)),
    "unispeech_sat": ("audio", "UniSpeechSatConfig", "UniSpeechSatModel", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)),
    "wav2vec2_conformer": ("audio", "Wav2Vec2ConformerConfig", "Wav2Vec2ConformerModel", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, position_embeddings_type="relative", conv_depthwise_kernel_size=3)),
    "wav2vec2_conformer_rope": ("audio", "Wav2Vec2ConformerConfig", "Wav2Vec2ConformerModel", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, position_embeddings_type="rotary", conv_depthwise_kernel_size=3)),
    # the nineteenth batch: families of this transformers (5.24) built from one generic small config (MoE, hybrid
    # Mamba/attention stacks, sliding windows, embedding encoders)
    "afmoe": ("dec", "AfmoeConfig", "AfmoeModel", _GENERIC),
    "cohere2_moe": ("dec", "Cohere2MoeConfig", "Cohere2MoeModel", _GENERIC),
    "cwm": ("dec", "CwmConfig", "CwmModel", _GENERIC),
    "ernie4_5_moe": ("dec", "Ernie4_5_MoeConfig", "Ernie4_5_MoeModel", _GENERIC),
    "exaone_moe": ("dec", "ExaoneMoeConfig", "ExaoneMoeModel", _GENERIC),
    "falcon_h1": ("dec", "FalconH1Config", "FalconH1Model", _GENERIC),
    "granite_swa": ("dec", "GraniteSWAConfig", "GraniteSWAModel", _GENERIC),
    "granitemoe_swa": ("dec", "GraniteMoeSWAConfig", "GraniteMoeSWAModel", _GENERIC),
    "granitemoeshared": ("dec", "GraniteMoeSharedConfig", "GraniteMoeSharedModel", _GENERIC),
    "hunyuan_v1_moe": ("dec", "HunYuanMoEV1Config", "HunYuanMoEV1Model", _GENERIC),
    "jais2": ("dec", "Jais2Config", "Jais2Model", _GENERIC),
    "laguna": ("dec", "LagunaConfig", "LagunaModel", _GENERIC),
    "mellum": ("dec", "MellumConfig", "MellumModel", _GENERIC),
    "mimo_v2_flash": ("dec", "MiMoV2FlashConfig", "MiMoV2FlashModel", _GENERIC),
    "minimax": ("dec", "MiniMaxConfig", "MiniMaxModel", _GENERIC),
    "minimax_m2": ("dec", "MiniMaxM2Config", "MiniMaxM2Model", _GENERIC),
    "ministral3": ("dec", "Ministral3Config", "Ministral3Model", _GENERIC),
    "nemotron_h": ("dec", "NemotronHConfig", "NemotronHModel", _GENERIC),
    "olmo_hybrid": ("dec", "OlmoHybridConfig", "OlmoHybridModel", _GENERIC),
    "sarvam_moe": ("dec", "SarvamMoEConfig", "Glm4MoeModel", _GENERIC),
    "solar_open": ("dec", "SolarOpenConfig", "SolarOpenModel", _GENERIC),
    "hyperclovax": ("dec", "HyperCLOVAXConfig", "HyperCLOVAXModel", _GENERIC),
    "gpt_neox_japanese": ("dec", "GPTNeoXJapaneseConfig", "GPTNeoXJapaneseModel", _GENERIC),
    "hy_v4": ("dec", "HYV4Config", "HYV4Model", _GENERIC),
    "deepseek_v4": ("dec", "DeepseekV4Config", "DeepseekV4Model", _GENERIC),
    "zaya": ("dec", "ZayaConfig", "ZayaModel", _GENERIC),
    "flint": ("dec", "FlintConfig", "FlintModel", _GENERIC),
    "kolibri1": ("dec", "Kolibri1Config", "Kolibri1Model", _GENERIC),
    "lara_mini": ("dec", "LaraMiniConfig", "LaraMiniModel", _GENERIC),
    "gemma4_text": ("dec", "Gemma4TextConfig", "Gemma4TextModel", _GENERIC),
    "ultrabert": ("enc", "UltrabertConfig", "UltrabertModel", _GENERIC),
    "gte": ("enc", "GteConfig", "GteModel", _GENERIC),
    "jina_embeddings_v3": ("enc", "JinaEmbeddingsV3Config", "JinaEmbeddingsV3Model", _GENERIC),
    "embedding_gemma2_text": ("enc", "EmbeddingGemma2TextConfig", "EmbeddingGemma2TextModel", _GENERIC),
    "qwen2": ("dec", "Qwen2Config", "Qwen2Model", _GENERIC),
    "hy_v3": ("dec", "HYV3Config", "HYV3Model", _GENERIC),
    "apertus1p5_text": ("dec", "Apertus1p5TextConfig", "Apertus1p5TextModel", _GENERIC),
    "llama4_text": ("dec", "Llama4TextConfig", "Llama4TextModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2, pad_token_id=0, head_dim=8, num_local_experts=2, num_experts_per_tok=1, intermediate_size_mlp=64, attention_chunk_size=4, no_rope_layers=[1, 0])),
    # the twentieth batch: hybrid decoders (Mamba, Mamba2, gated delta-rule / KDA linear attention, short convolutions)
    # and MLA decoders (some with a DSA indexer, index_topk=4 of the 10 keys) that need their own sizes. Each hybrid
    # has one softmax attention layer beside its other mixer, and detection must find it and nothing in the other
    # mixers. Zamba ties its shared transformer across hybrid layers and cannot build with only one, so both of its
    # layers are hybrid (two sites); LongCat-Flash has two attentions per layer (num_layers=1: two sites).
    "mistral4": ("dec", "Mistral4Config", "Mistral4Model", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=4, num_hidden_layers=2, pad_token_id=0, kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16, n_routed_experts=2, num_experts_per_tok=1, n_group=1, topk_group=1, moe_intermediate_size=32)),
    "glm4_moe_lite": ("dec", "Glm4MoeLiteConfig", "Glm4MoeLiteModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=4, num_hidden_layers=2, pad_token_id=0, kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16, n_routed_experts=2, num_experts_per_tok=1, n_group=1, topk_group=1, moe_intermediate_size=32)),
    "deepseek_v32": ("dec", "DeepseekV32Config", "DeepseekV32Model", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=4, num_hidden_layers=2, pad_token_id=0, kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16, n_routed_experts=2, num_experts_per_tok=1, n_group=1, topk_group=1, moe_intermediate_size=32, first_k_dense_replace=1, index_topk=4, index_head_dim=16, index_n_heads=2)),
    "qwen3_next": ("dec", "Qwen3NextConfig", "Qwen3NextModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2, pad_token_id=0, head_dim=8, linear_key_head_dim=8, linear_value_head_dim=8, linear_num_key_heads=2, linear_num_value_heads=4, num_experts=2, num_experts_per_tok=1, moe_intermediate_size=32, shared_expert_intermediate_size=32, layer_types=["linear_attention", "full_attention"])),
    "kimi_linear": ("dec", "KimiLinearConfig", "KimiLinearModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=4, num_hidden_layers=2, pad_token_id=0, kv_lora_rank=16, q_lora_rank=None, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16, linear_head_dim=8, linear_num_heads=4, num_local_experts=2, num_experts_per_tok=1, moe_intermediate_size=32, layer_types=["linear_attention", "full_attention"])),
    "jamba": ("dec", "JambaConfig", "JambaModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2, pad_token_id=0, attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2, expert_layer_offset=1, num_experts=2, num_experts_per_tok=1, use_mamba_kernels=False, mamba_d_state=8, mamba_dt_rank=4)),
    "bamba": ("dec", "BambaConfig", "BambaModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2, pad_token_id=0, attn_layer_indices=[1], mamba_n_heads=4, mamba_d_head=16, mamba_d_state=8, mamba_chunk_size=4)),
    "lfm3": ("dec", "Lfm3Config", "Lfm3Model", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2, pad_token_id=0, head_dim=8, layer_types=["conv", "full_attention"])),
    "zamba": ("dec", "ZambaConfig", "ZambaModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=4, num_hidden_layers=2, pad_token_id=0, layers_block_type=["hybrid", "hybrid"], n_mamba_heads=2, mamba_d_state=8, use_mamba_kernels=False)),
    "zamba2": ("dec", "Zamba2Config", "Zamba2Model", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=4, num_hidden_layers=2, pad_token_id=0, layers_block_type=["linear_attention", "hybrid"], n_mamba_heads=4, mamba_d_state=8, chunk_size=4, adapter_rank=4, use_mamba_kernels=False)),
    "granitemoehybrid": ("dec", "GraniteMoeHybridConfig", "GraniteMoeHybridModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2, pad_token_id=0, layer_types=["linear_attention", "full_attention"], mamba_n_heads=4, mamba_d_head=16, mamba_d_state=8, mamba_chunk_size=4, num_local_experts=2, num_experts_per_tok=1, shared_intermediate_size=32, position_embedding_type="rope")),
    "qwen3_5_text": ("dec", "Qwen3_5TextConfig", "Qwen3_5TextModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2, pad_token_id=0, head_dim=8, linear_key_head_dim=8, linear_value_head_dim=8, linear_num_key_heads=2, linear_num_value_heads=4, layer_types=["linear_attention", "full_attention"])),
    "qwen3_5_moe_text": ("dec", "Qwen3_5MoeTextConfig", "Qwen3_5MoeTextModel", dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2, pad_token_id=0, head_dim=8, linear_key_head_dim=8, linear_value_head_dim=8, linear_num_key_heads=2, linear_num_value_heads=4, num_experts=2, num_experts_per_tok=1, moe_intermediate_size=32, shared_expert_intermediate_size=32, layer_types=["linear_attention", "full_attention"])),
    "lfm2_moe": ("dec", "Lfm2MoeConfig", "Lfm2MoeModel", dict(hidden_size=32, intermediate_size=64, moe_intermediate_size=32, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2, pad_token_id=0, num_dense_layers=1, num_experts=2, num_experts_per_tok=1, layer_types=["conv", "full_attention"])),
    "bailing_hybrid": ("dec", "BailingHybridConfig", "BailingHybridModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=4, num_hidden_layers=2, pad_token_id=0, kv_lora_rank=16, q_lora_rank=None, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16, head_dim=8, n_group=1, topk_group=1, num_local_experts=2, num_experts_per_tok=1, moe_intermediate_size=32, first_k_dense_replace=1, layer_types=["linear_attention", "full_attention"])),
    "qwen4_exp_text": ("dec", "Qwen4ExpTextConfig", "Qwen4ExpTextModel", dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2, pad_token_id=0, head_dim=8, linear_key_head_dim=8, linear_value_head_dim=8, linear_num_key_heads=2, linear_num_value_heads=4, num_experts=2, num_experts_per_tok=1, moe_intermediate_size=32, shared_expert_intermediate_size=32, hc_count=2, hc_lowrank=8, indexer_n_heads=2, indexer_kv_heads=1, indexer_head_dim=8, indexer_budget=4, indexer_compress_ratio=2, layer_types=["linear_attention", "full_attention"])),
    "glm5_next_text": ("dec", "Glm5NextTextConfig", "Glm5NextTextModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=4, num_hidden_layers=2, pad_token_id=0, kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=0, qk_nope_head_dim=16, v_head_dim=16, n_routed_experts=2, num_experts_per_tok=1, moe_intermediate_size=32, index_topk=4, index_head_dim=16, index_n_heads=2, index_kpool=2, linear_head_dim=8, linear_num_heads=4, hc_mult=2, layer_types=["linear_attention", "full_attention"], mlp_layer_types=["dense", "sparse"])),
    "axk1": ("dec", "AXK1Config", "AXK1Model", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=4, num_hidden_layers=2, pad_token_id=0, kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16, n_routed_experts=2, num_experts_per_tok=1, n_group=1, topk_group=1, moe_intermediate_size=32)),
    "axk2": ("dec", "AXK2Config", "AXK2Model", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=4, num_hidden_layers=2, pad_token_id=0, kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16, n_routed_experts=2, num_experts_per_tok=1, n_group=1, topk_group=1, moe_intermediate_size=32, index_topk=4, index_head_dim=16, index_n_heads=2, gated_norm_rank=4)),
    "glm_moe_dsa": ("dec", "GlmMoeDsaConfig", "GlmMoeDsaModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=4, num_hidden_layers=2, pad_token_id=0, kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16, n_routed_experts=2, num_experts_per_tok=1, n_group=1, topk_group=1, moe_intermediate_size=32, index_topk=4, index_head_dim=16, index_n_heads=2, first_k_dense_replace=1)),
    "dots3_note_text": ("dec", "Dots3NoteTextConfig", "Dots3NoteTextModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=4, num_hidden_layers=2, pad_token_id=0, kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16, n_routed_experts=2, num_experts_per_tok=1, n_group=1, topk_group=1, moe_intermediate_size=32, index_topk=4, index_head_dim=16, index_n_heads=2, shared_experts_intermediate_size=32)),
    "mistral_large4_text": ("dec", "MistralLarge4TextConfig", "MistralLarge4TextModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=4, num_hidden_layers=2, pad_token_id=0, kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16, n_routed_experts=2, num_experts_per_tok=1, n_group=1, topk_group=1, moe_intermediate_size=32, index_topk=4, index_head_dim=16, index_n_heads=2, first_k_dense_replace=1)),
    "youtu": ("dec", "YoutuConfig", "YoutuModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=4, num_hidden_layers=2, pad_token_id=0, kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16)),
    "sarvam_mla": ("dec", "SarvamMLAConfig", "DeepseekV3Model", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=4, num_hidden_layers=2, pad_token_id=0, kv_lora_rank=16, q_lora_rank=None, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16, n_routed_experts=2, num_experts_per_tok=1, n_group=1, topk_group=1, moe_intermediate_size=32, first_k_dense_replace=1)),
    "longcat_flash": ("dec", "LongcatFlashConfig", "LongcatFlashModel", dict(hidden_size=32, ffn_hidden_size=64, num_attention_heads=4, num_layers=1, pad_token_id=0, kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, head_dim=8, v_head_dim=16, n_routed_experts=2, moe_topk=2, zero_expert_num=1, expert_ffn_hidden_size=32)),
    # kind "custom": inputs from CUSTOM_INPUTS below (bounding boxes, video, time series, audio features, ...)
    "imagegpt": ("dec", "ImageGPTConfig", "ImageGPTModel", dict(n_embd=32, n_head=4, n_layer=2, n_positions=64)),
    "xmod": ("enc", "XmodConfig", "XmodModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, languages=["en_XX"], default_language="en_XX")),
    "cpmant": ("custom", "CpmAntConfig", "CpmAntModel", dict(hidden_size=32, dim_ff=64, num_attention_heads=4, dim_head=8, num_hidden_layers=2, vocab_size=100, prompt_length=4)),
    "fsmt": ("encdec", "FSMTConfig", "FSMTModel", dict(d_model=32, encoder_ffn_dim=64, decoder_ffn_dim=64, encoder_attention_heads=4, decoder_attention_heads=4, encoder_layers=2, decoder_layers=2, src_vocab_size=100, tgt_vocab_size=100, langs=["en", "de"])),
    "lilt": ("custom", "LiltConfig", "LiltModel", dict(hidden_size=48, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, vocab_size=100, channel_shrink_ratio=2, max_position_embeddings=64)),
    "layoutlmv3": ("custom", "LayoutLMv3Config", "LayoutLMv3Model", dict(hidden_size=48, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, vocab_size=100, max_position_embeddings=64, coordinate_size=8, shape_size=8, visual_embed=False)),
    "udop": ("custom", "UdopConfig", "UdopEncoderModel", dict(d_model=32, d_kv=8, d_ff=64, num_heads=4, num_layers=2, vocab_size=100, relative_bias_args=[{"type": "1d"}, {"type": "horizontal"}, {"type": "vertical"}])),
    "moonshine": ("custom", "MoonshineConfig", "MoonshineModel", dict(hidden_size=32, intermediate_size=64, encoder_num_attention_heads=4, decoder_num_attention_heads=4, encoder_num_hidden_layers=2, decoder_num_hidden_layers=2, vocab_size=100, max_position_embeddings=64, pad_token_id=0)),
    "videomae": ("video", "VideoMAEConfig", "VideoMAEModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, image_size=16, patch_size=8, num_frames=4, tubelet_size=2)),
    "vivit": ("video", "VivitConfig", "VivitModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, image_size=16, num_frames=4, tubelet_size=[2, 8, 8])),
    "timesformer": ("video", "TimesformerConfig", "TimesformerModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, image_size=16, patch_size=8, num_frames=4)),
    "vjepa2": ("custom", "VJEPA2Config", "VJEPA2Model", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, crop_size=16, patch_size=8, frames_per_clip=4, tubelet_size=2, pred_hidden_size=32, pred_num_attention_heads=4, pred_num_hidden_layers=1, pred_num_mask_tokens=2)),
    "swin2sr": ("vision", "Swin2SRConfig", "Swin2SRModel", dict(image_size=16, patch_size=1, embed_dim=16, depths=[2], num_heads=[2], window_size=4)),
    "sam_vision": ("vision32", "SamVisionConfig", "SamVisionModel", dict(hidden_size=32, num_attention_heads=4, num_hidden_layers=2, image_size=32, patch_size=4, window_size=4, global_attn_indexes=[1], output_channels=16, mlp_dim=64)),
    "pixtral": ("vision32", "PixtralVisionConfig", "PixtralVisionModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, head_dim=8, image_size=32, patch_size=8)),
    "idefics3_vision": ("vision32", "Idefics3VisionConfig", "Idefics3VisionTransformer", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, image_size=32, patch_size=8)),
    "siglip2_vision": ("custom", "Siglip2VisionConfig", "Siglip2VisionModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, num_patches=16, patch_size=4)),
    "patchtst": ("custom", "PatchTSTConfig", "PatchTSTModel", dict(d_model=32, num_attention_heads=4, num_hidden_layers=2, ffn_dim=64, context_length=32, patch_length=4, patch_stride=4, num_input_channels=3)),
    "informer": ("custom", "InformerConfig", "InformerModel", dict(d_model=32, encoder_attention_heads=4, decoder_attention_heads=4, encoder_layers=2, decoder_layers=2, encoder_ffn_dim=64, decoder_ffn_dim=64, prediction_length=4, context_length=8, lags_sequence=[1], num_time_features=1, input_size=1)),
    "time_series_transformer": ("custom", "TimeSeriesTransformerConfig", "TimeSeriesTransformerModel", dict(d_model=32, encoder_attention_heads=4, decoder_attention_heads=4, encoder_layers=2, decoder_layers=2, encoder_ffn_dim=64, decoder_ffn_dim=64, prediction_length=4, context_length=8, lags_sequence=[1], num_time_features=1, input_size=1)),
    "parakeet_encoder": ("custom", "ParakeetEncoderConfig", "ParakeetEncoder", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, num_mel_bins=16, subsampling_conv_channels=8)),
    "gemma3n_audio": ("custom", "Gemma3nAudioConfig", "Gemma3nAudioEncoder", dict(hidden_size=32, conf_num_attention_heads=4, conf_num_hidden_layers=2, input_feat_size=16, sscp_conv_channel_size=[8, 8], conf_attention_chunk_size=4, conf_attention_context_left=5, conf_attention_context_right=0)),
    "qwen2_audio_encoder": ("custom", "Qwen2AudioEncoderConfig", "Qwen2AudioEncoder", dict(d_model=32, encoder_attention_heads=4, encoder_layers=2, encoder_ffn_dim=64, num_mel_bins=16, max_source_positions=32)),
    "decision_transformer": ("custom", "DecisionTransformerConfig", "DecisionTransformerModel", dict(state_dim=5, act_dim=3, hidden_size=32, n_layer=2, n_head=4, max_ep_len=64)),
    "rwkv": ("custom", "RwkvConfig", "RwkvModel", dict(hidden_size=32, attention_hidden_size=32, intermediate_size=64, num_hidden_layers=2, vocab_size=100, context_length=64)),
    "mamba": ("custom", "MambaConfig", "MambaModel", dict(hidden_size=32, state_size=8, num_hidden_layers=2, vocab_size=100)),
    "fnet": ("custom", "FNetConfig", "FNetModel", dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, vocab_size=100, max_position_embeddings=64, use_tpu_fourier_optimizations=False)),
    "groupvit_vision": ("vision", "GroupViTVisionConfig", "GroupViTVisionModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, depths=[1, 1], num_group_tokens=[4, 0], num_output_groups=[4, 4], image_size=16, patch_size=4)),
    "vilt": ("custom", "ViltConfig", "ViltModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, vocab_size=100, max_position_embeddings=64, image_size=16, patch_size=8, max_image_length=-1)),
    "visual_bert": ("custom", "VisualBertConfig", "VisualBertModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, vocab_size=100, max_position_embeddings=64, visual_embedding_dim=16)),
    "seggpt": ("custom", "SegGptConfig", "SegGptModel", dict(hidden_size=32, num_attention_heads=4, num_hidden_layers=2, mlp_dim=64, image_size=[16, 8], patch_size=4, merge_index=0, intermediate_hidden_state_indices=[1], pretrain_image_size=16)),
    "detr": ("vision32", "DetrConfig", "DetrModel", dict(d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=5, use_timm_backbone=False, use_pretrained_backbone=False, backbone_config=dict(model_type="resnet", embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], out_features=["stage2"]))),
    "clap_audio": ("custom", "ClapAudioConfig", "ClapAudioModel", dict(hidden_size=32, depths=[1, 1], num_attention_heads=[2, 4], patch_embeds_hidden_size=16, spec_size=32, window_size=4, num_mel_bins=16, patch_stride=(4, 4), patch_size=4, enable_fusion=False)),
    "qwen2_5_vl_vision": ("custom", "Qwen2_5_VLVisionConfig", "Qwen2_5_VisionTransformerPretrainedModel", dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=32, patch_size=2, temporal_patch_size=2, spatial_merge_size=2, window_size=8, fullatt_block_indexes=[1], in_channels=3)),
    "timesfm": ("custom", "TimesFmConfig", "TimesFmModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, head_dim=8, patch_length=4, context_length=16, horizon_length=4)),
    "wav2vec2_bert": ("custom", "Wav2Vec2BertConfig", "Wav2Vec2BertModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, feature_projection_input_dim=16, position_embeddings_type="relative_key", conv_depthwise_kernel_size=3, add_adapter=False)),
    "wav2vec2_bert_rotary": ("custom", "Wav2Vec2BertConfig", "Wav2Vec2BertModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, feature_projection_input_dim=16, position_embeddings_type="rotary", conv_depthwise_kernel_size=3, add_adapter=False)),
    "musicgen_decoder": ("custom", "MusicgenDecoderConfig", "MusicgenModel", dict(hidden_size=32, ffn_dim=64, num_attention_heads=4, num_hidden_layers=2, vocab_size=100, num_codebooks=2, max_position_embeddings=64)),
    "focalnet": ("vision32", "FocalNetConfig", "FocalNetModel", dict(embed_dim=16, depths=[1, 1], hidden_sizes=[16, 32], image_size=32, patch_size=4)),
    "poolformer": ("vision32", "PoolFormerConfig", "PoolFormerModel", dict(hidden_sizes=[16, 32], depths=[1, 1], num_encoder_blocks=2, patch_sizes=[7, 3], strides=[4, 2], padding=[2, 1])),
    "conditional_detr": ("vision32", "ConditionalDetrConfig", "ConditionalDetrModel", dict(d_model=32, encoder_layers=1, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=5, use_timm_backbone=False, use_pretrained_backbone=False, backbone_config=dict(model_type="resnet", embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], out_features=["stage2"]))),
    "deformable_detr": ("vision32", "DeformableDetrConfig", "DeformableDetrModel", dict(d_model=32, encoder_layers=1, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=5, num_feature_levels=1, encoder_n_points=2, decoder_n_points=2, use_timm_backbone=False, use_pretrained_backbone=False, backbone_config=dict(model_type="resnet", embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], out_features=["stage2"]))),
    "owlv2_vision": ("vision", "Owlv2VisionConfig", "Owlv2VisionModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, image_size=16, patch_size=4)),
    "speecht5": ("custom", "SpeechT5Config", "SpeechT5Model", dict(hidden_size=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, vocab_size=100, encoder_max_relative_position=8)),
    "bros": ("custom", "BrosConfig", "BrosModel", dict(hidden_size=64, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, vocab_size=100, max_position_embeddings=64)),
    "rt_detr": ("custom", "RTDetrConfig", "RTDetrModel", dict(d_model=32, encoder_hidden_dim=32, encoder_in_channels=[16, 32, 64], feat_strides=[8, 16, 32], encoder_layers=1, encoder_ffn_dim=64, encoder_attention_heads=4, decoder_layers=1, decoder_ffn_dim=64, decoder_attention_heads=4, decoder_in_channels=[32, 32, 32], num_queries=5, decoder_n_points=2, num_denoising=0, anchor_image_size=None, backbone_config=dict(model_type="rt_detr_resnet", embedding_size=8, hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1], out_features=["stage2", "stage3", "stage4"]), use_pretrained_backbone=False)),
    "dab_detr": ("vision32", "DabDetrConfig", "DabDetrModel", dict(hidden_size=32, encoder_layers=1, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=5, use_timm_backbone=False, use_pretrained_backbone=False, backbone_config=dict(model_type="resnet", embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], out_features=["stage2"]))),
    "depth_pro": ("vision32", "DepthProConfig", "DepthProModel", dict(patch_size=16, intermediate_hook_ids=[0], intermediate_feature_dims=[16], scaled_images_ratios=[0.5, 1.0], scaled_images_overlap_ratios=[0.0, 0.0], scaled_images_feature_dims=[16, 16], fusion_hidden_size=16, image_model_config=dict(model_type="dinov2", hidden_size=32, num_hidden_layers=1, num_attention_heads=4, image_size=16, patch_size=4), patch_model_config=dict(model_type="dinov2", hidden_size=32, num_hidden_layers=1, num_attention_heads=4, image_size=16, patch_size=4), fov_model_config=dict(model_type="dinov2", hidden_size=32, num_hidden_layers=1, num_attention_heads=4, image_size=16, patch_size=4))),
    "xclip_vision": ("custom", "XCLIPVisionConfig", "XCLIPVisionModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, image_size=16, patch_size=8, num_frames=2, mit_hidden_size=32, mit_intermediate_size=64, mit_num_hidden_layers=1, mit_num_attention_heads=4)),
    "mgp_str": ("custom", "MgpstrConfig", "MgpstrModel", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, image_size=[16, 32], patch_size=4, max_token_length=5)),
    "mask2former": ("custom", "Mask2FormerConfig", "Mask2FormerModel", dict(hidden_dim=32, feature_size=32, mask_feature_size=32, encoder_feedforward_dim=64, dim_feedforward=64, encoder_layers=1, decoder_layers=2, num_attention_heads=4, num_queries=5, common_stride=4, backbone_config=dict(model_type="swin", embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=4, image_size=64, out_features=["stage1", "stage2", "stage3", "stage4"]), use_pretrained_backbone=False)),
    "granite_speech_encoder": ("custom", "GraniteSpeechEncoderConfig", "GraniteSpeechCTCEncoder", dict(input_dim=16, num_layers=2, hidden_dim=32, num_heads=4, dim_head=8, output_dim=10, context_size=4, conv_kernel_size=3, max_pos_emb=16)),
    "lasr_encoder": ("custom", "LasrEncoderConfig", "LasrEncoder", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, num_key_value_heads=4, conv_kernel_size=3, subsampling_conv_kernel_size=3, layerdrop=0.0, num_mel_bins=16, subsampling_conv_channels=8)),
    "videoprism": ("custom", "VideoPrismVisionConfig", "VideoPrismVisionModel", dict(image_size=16, tubelet_size=[1, 8, 8], hidden_size=32, num_attention_heads=4, intermediate_size=64, num_spatial_layers=1, num_temporal_layers=1, num_auxiliary_layers=1, num_frames=2)),
    "sam3_vit": ("vision32", "Sam3ViTConfig", "Sam3ViTModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, image_size=32, patch_size=4, window_size=4, pretrain_image_size=16, global_attn_indexes=[1])),
    "pixio": ("vision", "PixioConfig", "PixioModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, image_size=16, patch_size=4)),
    "radio": ("vision", "RadioConfig", "RadioModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, image_size=16, patch_size=4, max_img_size=32, patch_dim=48)),
    "aria_text": ("dec", "AriaTextConfig", "AriaTextModel", _GENERIC),
    "hrm_text": ("dec", "HrmTextConfig", "HrmTextModel", _GENERIC),
    "molmo2_text": ("dec", "Molmo2TextConfig", "Molmo2TextModel", _GENERIC),
    # multimodal rotary sections over 8-wide heads (the default sections are for 128)
    "qwen2_vl_text": ("dec", "Qwen2VLTextConfig", "Qwen2VLTextModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2, pad_token_id=0, rope_parameters={"rope_type": "default", "mrope_section": [1, 1, 2], "rope_theta": 10000.0})),
    # the twenty-ninth session's batch: 2026's decoders and encoders (MoE sizes cut to a few tiny experts)
    "muse_glimmer_text": ("dec", "MuseGlimmerTextConfig", "MuseGlimmerTextModel", _GENERIC),
    "muse_spark_text": ("dec", "MuseSparkTextConfig", "MuseSparkTextModel", dict(_GENERIC, moe_intermediate_size=32, num_local_experts=4, moe_hidden_size=32, num_experts_per_tok=2, sliding_window=4)),
    # a sliding and a full layer, both with a relative bias computed from the hidden states
    "inkling_text": ("dec", "InklingTextConfig", "InklingTextModel", dict(_GENERIC, **INKLING)),
    "inkling2_text": ("dec", "Inkling2TextConfig", "Inkling2TextModel", dict(_GENERIC, **INKLING, log_scaling_n_floor=4)),
    "minimax_m3_vl_text": ("dec", "MiniMaxM3VLTextConfig", "MiniMaxM3VLTextModel", _GENERIC),
    "hy_v4_vl_text": ("dec", "HYV4VLTextConfig", "HYV4VLTextModel", _GENERIC),
    "step3p7_text": ("dec", "Step3p7TextConfig", "Step3p7TextModel", dict(_GENERIC, moe_intermediate_size=32, moe_num_experts=4, moe_top_k=2, share_expert_dim=32, sliding_window=4)),
    "dots1": ("dec", "Dots1Config", "Dots1Model", dict(_GENERIC, moe_intermediate_size=32, n_routed_experts=4, n_shared_experts=1, num_experts_per_tok=2, first_k_dense_replace=1, n_group=1, topk_group=1)),
    "evolla": ("dec", "EvollaConfig", "EvollaModel", _GENERIC),
    "glm4v_text": ("dec", "Glm4vTextConfig", "Glm4vTextModel", dict(_GENERIC, **_MROPE_8)),
    "glm_ocr_text": ("dec", "GlmOcrTextConfig", "GlmOcrTextModel", dict(_GENERIC, **_MROPE_8)),
    "cosmos3_edge_text": ("dec", "Cosmos3EdgeTextConfig", "Cosmos3EdgeTextModel", dict(_GENERIC, **_MROPE_8)),
    "openai_privacy_filter": ("enc", "OpenAIPrivacyFilterConfig", "OpenAIPrivacyFilterModel", _GENERIC),
    "esmc": ("enc", "EsmcConfig", "EsmcModel", dict(_GENERIC, num_key_value_heads=None)),  # no GQA
    "tipsv2_vision": ("vision", "Tipsv2VisionConfig", "Tipsv2VisionModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, image_size=16, patch_size=4)),
    "sapiens2": ("vision", "Sapiens2Config", "Sapiens2Model", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, image_size=16, patch_size=4)),
    "glmasr_encoder": ("custom", "GlmAsrEncoderConfig", "GlmAsrEncoder", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, num_mel_bins=16)),
    "voxtral_realtime_encoder": ("custom", "VoxtralRealtimeEncoderConfig", "VoxtralRealtimeEncoder", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, num_mel_bins=16)),
    "falcon_mamba": ("custom", "FalconMambaConfig", "FalconMambaModel", dict(hidden_size=32, state_size=8, num_hidden_layers=2, vocab_size=100)),
    # the thirtieth session's batch
    "dory": ("dec", "DoryConfig", "DoryModel", _GENERIC),
    "beam": ("dec", "BeamConfig", "BeamModel", _GENERIC),
    "iquestcoder": ("dec", "IQuestCoderConfig", "LlamaModel", _GENERIC),
    # a sliding and a full layer; the full layer rotates a quarter of its head, which must be a multiple of 4
    "neomme": ("dec", "NeoMMEConfig", "NeoMMEModel", dict(_GENERIC, head_dim=16, layer_types=["sliding_attention", "full_attention"], sliding_window=4)),
    # its default rope parameters are empty: one set for its one layer type
    "cohere_compass_text": ("dec", "CohereCompassTextConfig", "CohereCompassTextModel", dict(_GENERIC, rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 10000.0}})),
    "fun_asr_nano_encoder": ("custom", "FunAsrNanoEncoderConfig", "FunAsrNanoEncoder", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, num_mel_bins=16, num_timestamp_prediction_layers=1)),
    "audioflamingo3_encoder": ("custom", "AudioFlamingo3EncoderConfig", "AudioFlamingo3Encoder", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, num_mel_bins=16, max_source_positions=20)),
    "voxtral_encoder": ("custom", "VoxtralEncoderConfig", "VoxtralEncoder", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, num_mel_bins=16, max_source_positions=20)),
    "granite_speech5_encoder": ("custom", "GraniteSpeech5EncoderConfig", "GraniteSpeech5Encoder", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=4, num_hidden_layers=2, num_mel_bins=16, head_dim=8)),
    "timesfm2_5": ("custom", "TimesFm2_5Config", "TimesFm2_5Model", dict(hidden_size=32, intermediate_size=32, num_attention_heads=4, num_key_value_heads=4, num_hidden_layers=2, head_dim=8)),
    # packed sequences: the mel frames in chunks of 100, attention within each sequence's chunks (cu_seqlens)
    "qwen3_asr_encoder": ("custom", "Qwen3ASREncoderConfig", "Qwen3ASREncoder", dict(d_model=32, encoder_ffn_dim=64, encoder_attention_heads=4, encoder_layers=2, num_mel_bins=16, downsample_hidden_size=8, output_dim=32)),
    # speech encoder-decoders: a Parakeet (Conformer) encoder with relative positions, a decoder with cross-attention
    "cohere_asr": ("custom", "CohereAsrConfig", "CohereAsrModel", dict(encoder_config=dict(_PARAKEET_32), vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)),
    "canary": ("custom", "CanaryConfig", "CanaryModel", dict(encoder_config=dict(_PARAKEET_32), decoder_config=dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, head_dim=8, model_type="canary_decoder"), vocab_size=100)),
    "t5gemma": ("encdec", "T5GemmaConfig", "T5GemmaModel", dict(encoder=dict(_GENERIC, vocab_size=100), decoder=dict(_GENERIC, vocab_size=100))),
    # the vision-language model on text alone
    "exaone4_5": ("dec", "Exaone4_5_Config", "Exaone4_5_Model", dict(text_config=dict(_GENERIC, vocab_size=100, model_type="exaone4"), vision_config=dict(hidden_size=32, intermediate_size=64, num_heads=4, depth=1, out_hidden_size=32))),
    # the thirty-first session's batch
    # a causal Gemma 4 style encoder, always with experts: a sliding and a full layer, the full one's values its keys
    "diffusion_gemma_text": ("dec", "DiffusionGemmaTextConfig", "DiffusionGemmaEncoderTextModel", dict(_GENERIC, sliding_window=4, layer_types=["sliding_attention", "full_attention"], num_experts=2, top_k_experts=1, moe_intermediate_size=32)),
    # the decoder's self- and cross-attention are one softmax over the decoder's and the encoder's keys together
    "t5gemma2": ("encdec", "T5Gemma2Config", "T5Gemma2Model", dict(encoder=dict(text_config=dict(_GENERIC, vocab_size=100), vision_config=dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=1, image_size=16, patch_size=4), mm_tokens_per_image=4, boi_token_index=97, eoi_token_index=98, image_token_index=99), decoder=dict(_GENERIC, vocab_size=100))),
    "tipsv2_text": ("enc", "Tipsv2TextConfig", "Tipsv2TextModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2)),
    # its encoder attends within sliding windows (left, right) over its 20 positions
    "moonshine_streaming": ("custom", "MoonshineStreamingConfig", "MoonshineStreamingModel", dict(encoder_config=dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=4, num_hidden_layers=2, sample_rate=8000, sliding_windows=[[4, 1], [4, 0]]), vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)),
    # each position embeds its own codebook: 10 tokens need 10 codebooks
    "csm_depth_decoder": ("dec", "CsmDepthDecoderConfig", "CsmDepthDecoderModel", dict(_GENERIC, num_codebooks=16, backbone_hidden_size=32)),
    # one audio channel, so the zoo's decoder ids are its codes
    "dia": ("encdec", "DiaConfig", "DiaModel", dict(encoder_config=dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=4, head_dim=8, num_hidden_layers=2, vocab_size=100), decoder_config=dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=8, cross_num_attention_heads=4, cross_head_dim=8, cross_num_key_value_heads=4, cross_hidden_size=32, num_hidden_layers=2, vocab_size=100, num_channels=1), delay_pattern=[0])),
    # byte latent transformer: a local encoder and decoder over bytes with cross-attention to patches (a byte
    # each here), a global transformer over the patches
    "blt": ("dec", "BltConfig", "BltModel", dict(patch_in_forward=False, patching_mode="static", local_attention_window_len=None, cross_attn_k=2, encoder_hash_byte_group_size=[3], encoder_hash_byte_group_vocab=50, encoder_config=dict(hidden_size=32, num_attention_heads=4, num_hidden_layers=1, intermediate_size=64, hidden_size_global=64, cross_attn_k=2, vocab_size=100), global_config=dict(hidden_size=64, num_attention_heads=4, num_hidden_layers=1, intermediate_size=64), decoder_config=dict(hidden_size=32, num_attention_heads=4, num_hidden_layers=1, intermediate_size=64, hidden_size_global=64, cross_attn_k=2, vocab_size=100), patcher_config=dict(hidden_size=32, num_attention_heads=4, num_hidden_layers=1, intermediate_size=64, vocab_size=100))),
    # vision towers over packed patches: two images of 4 x 4 patches, attention within each (cu_seqlens)
    "qwen3_5_vision": ("custom", "Qwen3_5VisionConfig", "Qwen3_5VisionModel", dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=32, patch_size=2, temporal_patch_size=2, spatial_merge_size=2, num_position_embeddings=16)),
    "glm5_next_vision": ("custom", "Glm5NextVisionConfig", "Glm5NextVisionModel", dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=32, projection_intermediate_size=64, patch_size=2, temporal_patch_size=2, spatial_merge_size=2, image_size=8)),
    "cosmos3_edge_vision": ("custom", "Cosmos3EdgeVisionConfig", "Cosmos3EdgeVisionModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, num_patches=16, patch_size=2, spatial_merge_size=2)),
    # a dense layer and a mixture-of-experts layer
    "dots3_note_vision": ("custom", "Dots3NoteVisionConfig", "Dots3NoteVisionModel", dict(hidden_size=32, intermediate_size=64, moe_intermediate_size=32, num_attention_heads=4, num_hidden_layers=2, patch_size=2, spatial_merge_size=2, adapter_in_dim=32, adapter_out_dim=32, pyramid_num_routed=[-1, 4], num_experts_per_tok=2)),
    # attention across the frames of a clip (temporal merge): still one sequence an image here
    "kimi_k25_vision": ("custom", "Kimi_K25VisionConfig", "Kimi_K25VisionModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, patch_size=2, pos_emb_height=4, pos_emb_width=4, pos_emb_time=2)),
    # windows of 2 x 2 patches, then full attention (Muse Glimmer's tower)
    "muse_spark_vision": ("custom", "MuseSparkVisionConfig", "MuseSparkVisionModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, patch_size=2, pos_emb_height=2, pos_emb_width=2, patch_temporal=2, merge_size=2, layer_types=["window_attention", "full_attention"])),
    "step3p7_vision": ("vision", "Step3p7VisionConfig", "Step3p7VisionModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, image_size=16, patch_size=2, mlp_ratio=2.0)),
    # grouped-query attention in a vision tower
    "molmo2_vision": ("custom", "Molmo2VisionConfig", "Molmo2VisionModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_hidden_layers=2, image_size=[16, 16], patch_size=4, num_position_embeddings=16)),
    # hop_length 1: the sample counts are frame counts, 8 frames a token
    "dots3_note_audio": ("custom", "Dots3NoteAudioConfig", "Dots3NoteAudioModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, feature_size=16, hop_length=1, downsample_hidden_size=8, adapter_input_size=32, adapter_out_dim=32)),
    "muse_spark_audio": ("audio", "MuseSparkAudioConfig", "MuseSparkAudioModel", dict(patch_sizes=(5, 4), hidden_sizes=(16, 32), depths=(1, 1), num_hidden_layers=2, conv_kernel_size=3, out_hidden_size=32)),
    # the thirty-first session's second batch
    # patches with their (x, y) positions, padding patches at (-1, -1); 2-D rotary, q/k/v norms, unscaled scores
    "gemma4_vision": ("custom", "Gemma4VisionConfig", "Gemma4VisionModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=4, head_dim=8, num_hidden_layers=2, patch_size=4, pooling_kernel_size=2, position_embedding_size=16)),
    # chunked local attention (chunks of 4, 4 keys back and 2 ahead) with a relative bias and a tanh softcap
    "gemma4_audio": ("custom", "Gemma4AudioConfig", "Gemma4AudioModel", dict(hidden_size=32, num_attention_heads=4, num_hidden_layers=2, subsampling_conv_channels=[16, 8], conv_kernel_size=3, attention_chunk_size=4, attention_context_left=5, attention_context_right=2, output_proj_dims=32)),
    # a Conformer with a learned relative bias added to its streaming chunk mask (chunks of 4, one chunk back)
    "phi4_multimodal_audio": ("custom", "Phi4MultimodalAudioConfig", "Phi4MultimodalAudioModel", dict(hidden_size=32, intermediate_size=64, num_blocks=2, num_attention_heads=4, chunk_size=4, left_chunk=1, ext_pw_out_channel=32, depthwise_separable_out_channel=32, input_size=16, nemo_conv_channels=8, bias_max_distance=8)),
    "phi4_multimodal_vision": ("custom", "Phi4MultimodalVisionConfig", "Phi4MultimodalVisionModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, image_size=16, patch_size=4)),
    "pix2struct_vision": ("custom", "Pix2StructVisionConfig", "Pix2StructVisionModel", dict(hidden_size=32, patch_embed_hidden_size=48, d_ff=64, d_kv=8, num_hidden_layers=2, num_attention_heads=4, seq_len=16)),
    # a T5-style decoder (relative bias, no scaling) with cross-attention to 6 encoder states
    "pix2struct_text": ("custom", "Pix2StructTextConfig", "Pix2StructTextModel", dict(vocab_size=100, hidden_size=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, relative_attention_num_buckets=8, initializer_range=0.02)),
    # two tiles an image, each padded to a multiple of 8 positions; the second image's second tile masked out
    "mllama_vision": ("custom", "MllamaVisionConfig", "MllamaVisionModel", dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_global_layers=1, attention_heads=4, image_size=16, patch_size=4, max_num_tiles=2, vision_output_dim=64, intermediate_layers_indices=[0], supported_aspect_ratios=[[1, 1], [1, 2], [2, 1]])),
    # a cross-attention layer to 6 vision states under its own mask, after a self-attention layer
    "mllama_text": ("custom", "MllamaTextConfig", "MllamaTextModel", dict(_GENERIC, vocab_size=100, max_position_embeddings=64, cross_attention_layers=[1])),
    # 2-D rotary through complex multiplication
    "llama4_vision": ("vision", "Llama4VisionConfig", "Llama4VisionModel", dict(hidden_size=32, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, image_size=16, patch_size=4, vision_output_dim=32, projector_input_dim=32, projector_output_dim=32)),
    "pe_audio_encoder": ("custom", "PeAudioEncoderConfig", "PeAudioEncoder", dict(_GENERIC, dac_config=dict(encoder_hidden_size=4, downsampling_ratios=[2, 4], hidden_size=16, hop_length=8, codebook_dim=8, decoder_hidden_size=16, upsampling_ratios=[4, 2]))),
    "paddleocr_vision": ("custom", "PaddleOCRVisionConfig", "PaddleOCRVisionModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, image_size=8, patch_size=2)),
    "hunyuan_vl_vision": ("custom", "HunYuanVLVisionConfig", "HunYuanVLVisionTransformer", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=4, num_hidden_layers=2, patch_size=2, out_hidden_size=32, text_hidden_size=32)),
    "internvl_vision": ("vision", "InternVLVisionConfig", "InternVLVisionModel", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, image_size=[16, 16], patch_size=[4, 4], use_qk_norm=True)),
    # DaViT: window attention, then attention across channels (head groups of channels as the sequence)
    "florence2_vision": ("custom", "Florence2VisionConfig", "Florence2VisionBackbone", dict(depths=[1, 1], patch_size=[7, 3], patch_stride=[4, 2], patch_padding=[3, 1], patch_prenorm=[False, True], embed_dim=[16, 32], num_heads=[2, 4], num_groups=[2, 4], window_size=2, projection_dim=32, drop_path_rate=0.0)),
    # SAM 2's Hiera: windowed attention, a query-pooling stage, then a global block
    "sam2_vision": ("vision32", "Sam2VisionConfig", "Sam2VisionModel", dict(backbone_config=dict(model_type="sam2_hiera_det_model", hidden_size=16, num_attention_heads=1, image_size=[32, 32], patch_kernel_size=[7, 7], patch_stride=[4, 4], patch_padding=[3, 3], query_stride=[2, 2], window_positional_embedding_background_size=[2, 2], num_query_pool_stages=1, blocks_per_stage=[1, 2], embed_dim_per_stage=[16, 32], num_attention_heads_per_stage=[1, 2], window_size_per_stage=[4, 2], global_attention_blocks=[2], mlp_ratio=2.0), backbone_channel_list=[32, 16], backbone_feature_sizes=[[8, 8], [4, 4]], fpn_hidden_size=16, fpn_top_down_levels=[1], num_feature_levels=2)),
    # a Conformer over chunks: each position sees 4 positions back and 1 ahead (its lookahead)
    "nemotron_asr_streaming_encoder": ("custom", "NemotronAsrStreamingEncoderConfig", "NemotronAsrStreamingEncoder", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=4, num_hidden_layers=2, num_mel_bins=16, subsampling_conv_channels=8, conv_kernel_size=3, sliding_window=4, default_num_lookahead_tokens=1)),
    # causal sliding-window attention (4 positions) over the codec's frames
    "mimi_encoder": ("custom", "MimiEncoderConfig", "MimiEncoderModel", dict(hidden_size=32, num_filters=4, upsampling_ratios=[4, 4], num_hidden_layers=2, intermediate_size=64, num_attention_heads=4, num_key_value_heads=4, head_dim=8, sliding_window=4, codebook_dim=16, vector_quantization_hidden_dimension=16, upsample_groups=32)),
}

KINDS = ("enc", "dec", "encdec", "vision", "vision32", "video", "audio", "speech2text", "custom")


def _seeded(*shape, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _ids_alone(text) -> tuple:
    return ["input_ids"], text[:1]


def _boxed_text(page: float | None = None):
    """The layout models' inputs: the zoo's text with its word boxes, divided by ``page`` where a model takes them
    as fractions (UDOP's)."""
    def inputs(text):
        boxes = _word_boxes() if page is None else _word_boxes() / page
        return ["input_ids", "bbox", "attention_mask"], (text[0], boxes, text[1])
    return inputs


def _series(text) -> tuple:
    """A time-series batch for prediction length 4, context 8 and one lag: past values, time features and
    observed mask (9 steps), future values and time features (4 steps)."""
    return (["past_values", "past_time_features", "past_observed_mask", "future_values", "future_time_features"],
            (_seeded(2, 9, seed=2), _seeded(2, 9, 1, seed=3), torch.ones(2, 9), _seeded(2, 4, seed=4),
             _seeded(2, 4, 1, seed=5)))


def _features(frames: int, valid: int, width: int = 16, mask: str = "attention_mask", frames_last: bool = False):
    """An audio encoder's inputs: (2, frames, width) features, or (2, width, frames) with ``frames_last``, and
    the frames' mask under the name ``mask``, the second row padded from ``valid`` on."""
    shape = (2, width, frames) if frames_last else (2, frames, width)
    return lambda text: (["input_features", mask], (_seeded(*shape, seed=2), _padding_mask(frames, valid)))


def _speech_and_text(text) -> tuple:
    """A speech encoder-decoder's inputs: ``_features(64, 48)`` and the zoo's decoder ids."""
    names, inputs = _features(64, 48)(text)
    return [*names, "decoder_input_ids"], (*inputs, text[2])


def _features_alone(bins: int, frames: int):
    """An audio encoder's (2, bins, frames) mel features, with no mask."""
    return lambda text: (["input_features"], (_seeded(2, bins, frames, seed=2),))


def _packed_patches(*patch: int, name: str = "hidden_states"):
    """A vision tower's packed inputs: two images of 4 x 4 patches, each patch of shape ``patch``, as 32 rows
    under ``name``, and their grid_thw."""
    return lambda text: ([name, "grid_thw"], (_seeded(32, *patch, seed=2), torch.tensor([[1, 4, 4], [1, 4, 4]])))


def _patch_positions(width: int, height: int, valid: tuple[int, int] | None = None) -> torch.Tensor:
    """(2, width * height, 2) patch positions (x, y), row by row; with ``valid``, each image's positions from
    its count on are padding, (-1, -1)."""
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    positions = torch.stack([xs.flatten(), ys.flatten()], -1).repeat(2, 1, 1)
    for i, n in enumerate(valid or ()):
        positions[i, n:] = -1
    return positions


# Families with no attention at all (state-space, recurrent, Fourier, pooling and focal-modulation mixers): the
# probe checks that detect finds nothing in them.
NO_ATTENTION = {"rwkv", "mamba", "falcon_mamba", "fnet", "focalnet", "poolformer", "muse_spark_audio"}


# A family whose model output has no last_hidden_state: the field probed instead (Mask2Former's masked attention
# is in its transformer decoder; Phi-4's audio encoder returns a bare tensor, read as its ``T``: the tensor with its
# axes reversed).
OUTPUTS = {"mask2former": "transformer_decoder_last_hidden_state", "pix2struct_text": "logits", "mimi_encoder": "latents",
           "phi4_multimodal_audio": "T"}


# The "custom" kind's inputs: family -> text -> (input names, the inputs); text is the zoo's (input_ids,
# attention_mask, decoder_input_ids).
CUSTOM_INPUTS = {
    "cpmant": _ids_alone,  # it builds its own mask from the ids
    "lilt": _boxed_text(),
    "layoutlmv3": _boxed_text(),
    "udop": _boxed_text(1000.0),
    "moonshine": lambda text: (["input_values", "decoder_input_ids"], (_seeded(2, 1600, seed=3), text[2])),
    "vjepa2": lambda text: (["pixel_values_videos"], (_video(),)),
    "siglip2_vision": lambda text: (["pixel_values", "pixel_attention_mask", "spatial_shapes"],
                                    (_seeded(2, 16, 48, seed=2), _padding_mask(16, 12),
                                     torch.tensor([[4, 4], [3, 4]]))),
    "patchtst": lambda text: (["past_values"], (_seeded(2, 32, 3, seed=2),)),
    "informer": _series,
    "time_series_transformer": _series,
    "parakeet_encoder": _features(64, 48),
    "gemma3n_audio": lambda text: (["audio_mel", "audio_mel_mask"],
                                   (_seeded(2, 64, 16, seed=2), _padding_mask(64, 48) == 0)),
    "qwen2_audio_encoder": _features_alone(16, 64),
    "glmasr_encoder": _features_alone(16, 40),
    "voxtral_realtime_encoder": _features_alone(16, 40),
    "rwkv": _ids_alone,  # no attention: a model to find nothing in
    "mamba": _ids_alone,
    "falcon_mamba": _ids_alone,
    "fnet": _ids_alone,
    "vilt": lambda text: (["input_ids", "attention_mask", "pixel_values"], (*text[:2], _seeded(2, 3, 16, 16, seed=2))),
    "visual_bert": lambda text: (["input_ids", "attention_mask", "visual_embeds"],
                                 (*text[:2], _seeded(2, 5, 16, seed=2))),
    # an image and its prompt, 8 x 8 each, which the model stacks into its 16 x 8 input
    "seggpt": lambda text: (["pixel_values", "prompt_pixel_values", "prompt_masks"],
                            tuple(_seeded(2, 3, 8, 8, seed=s) for s in (2, 3, 4))),
    "clap_audio": lambda text: (["input_features"], (_seeded(2, 1, 32, 16, seed=2),)),
    # one video of 4 x 8 patches (32 patches of 3 x 2 x 2 x 2), in windows of 2 x 2 merged patches
    "qwen2_5_vl_vision": lambda text: (["hidden_states", "grid_thw"], (_seeded(32, 24, seed=2), torch.tensor([[1, 4, 8]]))),
    "timesfm": lambda text: (["past_values", "past_values_padding", "freq"],
                             (_seeded(2, 16, seed=2), torch.zeros(2, 16), torch.zeros(2, 1, dtype=torch.long))),
    "wav2vec2_bert": _features(20, 15),
    "wav2vec2_bert_rotary": _features(20, 15),
    # two codebooks a sequence, as rows of input_ids; cross-attention to 6 encoder states
    "musicgen_decoder": lambda text: (["input_ids", "attention_mask", "encoder_hidden_states"],
                                      (torch.cat([text[0], text[0].flip(0)]), text[1], _seeded(2, 6, 32, seed=3))),
    # SpeechT5 without its pre-nets: encoder and decoder states in, relative positions in the encoder
    "speecht5": lambda text: (["input_values", "attention_mask", "decoder_input_values"],
                              (_seeded(2, 10, 32, seed=2), text[1], _seeded(2, 6, 32, seed=3))),
    "bros": lambda text: (["input_ids", "bbox", "attention_mask"],  # four corners a word, 0..1
                          (text[0], torch.rand(2, 10, 8, generator=torch.Generator().manual_seed(7)), text[1])),
    "rt_detr": lambda text: (["pixel_values"], (_seeded(2, 3, 64, 64, seed=2),)),
    "xclip_vision": lambda text: (["pixel_values"], (_seeded(4, 3, 16, 16, seed=2),)),  # 2 videos of 2 frames
    "mgp_str": lambda text: (["pixel_values"], (_seeded(2, 3, 16, 32, seed=2),)),
    "mask2former": lambda text: (["pixel_values"], (_seeded(2, 3, 64, 64, seed=2),)),
    "granite_speech_encoder": lambda text: (["hidden_states"], (_seeded(2, 10, 16, seed=2),)),  # block attention
    "lasr_encoder": _features(64, 48),
    "videoprism": lambda text: (["pixel_values_videos"], (_video(frames=2),)),
    # (2, 40, 7·16) features: the encoder stacks 7 frames of 16 mel bins
    "fun_asr_nano_encoder": _features(40, 30, width=112, mask="input_features_mask"),
    "audioflamingo3_encoder": _features(40, 30, mask="input_features_mask", frames_last=True),
    "voxtral_encoder": _features_alone(16, 40),
    # (2, 40, 4·16) features: its input layer takes 4 × num_mel_bins per frame
    "granite_speech5_encoder": _features(40, 30, width=64),
    # 4 patches of 32 values, the second series padded at its start
    "timesfm2_5": lambda text: (["past_values", "past_values_padding"],
                                (_seeded(2, 128, seed=2), torch.stack([torch.zeros(128), (torch.arange(128) < 32).float()]))),
    # two chunks of 100 frames of 16 mel bins, the second sequence 150 frames long
    "qwen3_asr_encoder": _features(200, 150, mask="input_features_mask", frames_last=True),
    "cohere_asr": _speech_and_text,
    "canary": _speech_and_text,
    "decision_transformer": lambda text: (["states", "actions", "returns_to_go", "timesteps", "attention_mask"],
                                          (_seeded(2, 6, 5, seed=2), _seeded(2, 6, 3, seed=3),
                                           _seeded(2, 6, 1, seed=4), torch.arange(6).repeat(2, 1),
                                           _padding_mask(6, 4))),
    # 3200 samples, the second 2400: 80 frames of 40, 20 encoder positions after two strided convolutions
    "moonshine_streaming": lambda text: (["input_values", "attention_mask", "decoder_input_ids"],
                                         (_seeded(2, 3200, seed=3), _padding_mask(3200, 2400), text[2])),
    "qwen3_5_vision": _packed_patches(24),  # 3 channels x 2 frames x 2 x 2 pixels
    "glm5_next_vision": _packed_patches(24),
    "cosmos3_edge_vision": _packed_patches(12, name="pixel_values"),
    "dots3_note_vision": _packed_patches(12, name="pixel_values"),
    "kimi_k25_vision": _packed_patches(3, 2, 2, name="pixel_values"),
    "muse_spark_vision": _packed_patches(24, name="pixel_values"),
    "molmo2_vision": lambda text: (["pixel_values"], (_seeded(2, 16, 48, seed=2),)),  # 16 patches of 4 x 4 x 3
    # 64 frames of 16 mel bins, the second 40 long
    "dots3_note_audio": lambda text: (["input_features", "chunk_sample_lengths"],
                                      (_seeded(2, 16, 64, seed=2), torch.tensor([64, 40]))),
    # 16 patches of 4 x 4 x 3 at their (x, y); the second image 2 x 4 patches, then 8 padding patches
    "gemma4_vision": lambda text: (["pixel_values", "pixel_position_ids"],
                                   (_seeded(2, 16, 48, seed=2), _patch_positions(4, 4, valid=(16, 8)))),
    "gemma4_audio": _features(64, 48),
    "phi4_multimodal_audio": lambda text: (["hidden_states", "mask"], _features(64, 48)(text)[1]),
    # the second image 3 x 4 patches of its 4 x 4
    "phi4_multimodal_vision": lambda text: (["pixel_values", "patch_attention_mask"],
                                            (_seeded(2, 3, 16, 16, seed=2), _padding_mask(16, 12).view(2, 4, 4).bool())),
    # 16 patches of 4 x 4 x 3 after their row and column, the second image's last 4 padding
    "pix2struct_vision": lambda text: (["flattened_patches", "attention_mask"],
                                       (torch.cat([_patch_positions(4, 4).float() + 1, _seeded(2, 16, 48, seed=2)], -1),
                                        _padding_mask(16, 12))),
    "pix2struct_text": lambda text: (["input_ids", "attention_mask", "encoder_hidden_states"],
                                     (*text[:2], _seeded(2, 6, 32, seed=3))),
    # aspect ratios 1 x 2 (two tiles) and 1 x 1 (one tile and a masked one)
    "mllama_vision": lambda text: (["pixel_values", "aspect_ratio_ids", "aspect_ratio_mask"],
                                   (_seeded(2, 1, 2, 3, 16, 16, seed=2), torch.tensor([[2], [1]]),
                                    torch.tensor([[[1, 1]], [[1, 0]]]))),
    # 6 vision states, the second sequence's last 2 masked out (additive), every text row keeping some
    "mllama_text": lambda text: (["input_ids", "attention_mask", "cross_attention_states", "cross_attention_mask",
                                  "full_text_row_masked_out_mask"],
                                 (*text[:2], _seeded(2, 6, 32, seed=3),
                                  (_padding_mask(6, 4)[:, None, None, :] - 1.0) * -torch.finfo(torch.float32).min
                                  * torch.ones(2, 1, 10, 6), torch.ones(2, 1, 10, 1))),
    # 800 samples, the second 600: 100 frames (hop 8) after the class token
    "pe_audio_encoder": lambda text: (["input_values", "padding_mask"],
                                      (_seeded(2, 1, 800, seed=3), _padding_mask(800, 600))),
    "paddleocr_vision": lambda text: (["pixel_values", "grid_thw"],
                                      (_seeded(1, 32, 3, 2, 2, seed=2), torch.tensor([[1, 4, 4], [1, 4, 4]]))),
    "hunyuan_vl_vision": _packed_patches(12, name="pixel_values"),
    "florence2_vision": lambda text: (["hidden_states"], (_seeded(2, 3, 32, 32, seed=2),)),
    "nemotron_asr_streaming_encoder": _features(64, 48),
    "mimi_encoder": lambda text: (["input_values"], (_seeded(2, 1, 800, seed=3),)),
}


def build(family: str, impl: str):
    """The family's zoo.Built for one attention implementation."""
    import transformers

    from zoo import Built, HFWrapper, _dec_ids, _hf_model, _hf_quiet, _pixels, _text_inputs

    kind, config_name, model_name, kwargs = FAMILIES[family]
    config_cls, model_cls = getattr(transformers, config_name), getattr(transformers, model_name)
    _hf_quiet()
    if kind in ("enc", "dec", "encdec", "speech2text"):
        kwargs = {"vocab_size": 100, **kwargs}
    if kind in ("enc", "dec", "encdec"):
        kwargs = {"max_position_embeddings": 64, **kwargs}
    kwargs = {k: v for k, v in kwargs.items() if v is not None}  # None: a config that refuses the key
    model = _hf_model(model_cls, config_cls(**kwargs), impl)  # experts through batched_mm, which exports
    extra = {"use_cache": False} if kind in ("dec", "encdec", "speech2text") else {}
    if impl == "flex_attention":  # decoders only; transformers' flex mask stops export given an attention_mask
        if kind != "dec":
            raise ValueError("FlexAttention is probed on decoders only")
        model.requires_grad_(False)  # FlexAttention has no backward on the CPU
        names, inputs = ["input_ids"], _text_inputs()[:1]
    elif kind in ("enc", "dec"):
        names, inputs = ["input_ids", "attention_mask"], _text_inputs()
    elif kind == "encdec":
        names, inputs = ["input_ids", "attention_mask", "decoder_input_ids"], (*_text_inputs(), _dec_ids())
    elif kind in ("vision", "vision32"):
        names, inputs = ["pixel_values"], (_pixels(32 if kind == "vision32" else 16),)
    elif kind == "video":  # (batch, frames, channels, height, width)
        names, inputs = ["pixel_values"], (_video(),)
    elif kind == "custom":
        names, inputs = CUSTOM_INPUTS[family]((*_text_inputs(), _dec_ids()))
    elif kind == "audio":
        names, inputs = ["input_values"], (torch.randn(2, 800, generator=torch.Generator().manual_seed(3)),)
    else:  # speech2text: filter-bank features, padded like the text inputs
        feats = torch.randn(2, 40, model.config.input_feat_per_channel * model.config.input_channels,
                            generator=torch.Generator().manual_seed(4))
        names, inputs = ["input_features", "attention_mask", "decoder_input_ids"], (feats, _padding_mask(40, 30),
                                                                                    _dec_ids())
    output = OUTPUTS.get(family, "last_hidden_state")
    return Built(HFWrapper(model, names, extra, output), inputs, names, [output])


def _left_padded(inputs, built):
    """The inputs with the second sequence padded on the left (its first 3 tokens), in the form ``inputs``
    has (ONNX feeds or tensors); None without an ``attention_mask``."""
    names = list(built.input_names)
    if "attention_mask" not in names:
        return None
    i = names.index("attention_mask")
    mask = torch.ones_like(built.inputs[i])
    mask[1, :3] = 0
    if isinstance(inputs, dict):
        return {**inputs, "attention_mask": mask.numpy()}
    return tuple(mask if j == i else t for j, t in enumerate(inputs))


def probe(family: str, impl: str, exporter: str, built, workdir: Path, left_padding: bool = False) -> dict:
    """One export of one family through detect, rewrite and validate; the stage it reached and what it saw.
    ``left_padding``: validate a second time with the second sequence padded on the left, so that its first
    queries see no key (a decoder's batched prompts): the rewrite must give those rows what the original does."""
    import attnopt

    rec = {"family": family, "impl": impl, "exporter": exporter, "stage": "export"}
    t0 = time.time()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model, inputs = _export(exporter, built, workdir / f"{family}-{impl}-{exporter}.onnx")
        rec["stage"] = "detect"
        sites = attnopt.detect(model)
        rec["sites"], rec["unsupported"] = len(sites), sum(bool(s.unsupported) for s in sites)
        if family in NO_ATTENTION:  # finding nothing is the right answer; any site is a false positive
            rec["attention_free"] = True
            if sites:
                raise RuntimeError(f"false positive: {len(sites)} sites in a model with no attention")
            rec["stage"] = "done"
            return rec
        rec["stage"] = "rewrite"
        result = attnopt.rewrite(model, "segmented", segment_size=1 << 16, sinks=2)
        rec["rewritten"] = len(result.rewritten)
        rewritten = result.model
        if isinstance(model, Path):
            rewritten = model.with_suffix(".seg.onnx")
            result.save(rewritten)
        rec["stage"] = "validate"
        report = attnopt.validate(model, rewritten, inputs=inputs)
        rec["exact"], rec["worst_rel_l2"], rec["note"] = report.is_exact(1e-5), report.worst_rel_l2, report.note
        left = _left_padded(inputs, built) if left_padding else None
        if left is not None:  # the padded queries of a left-padded decoder see no key at all
            report = attnopt.validate(model, rewritten, inputs=left)
            rec["exact_left_padding"] = report.is_exact(1e-5)
            rec["worst_rel_l2_left_padding"] = report.worst_rel_l2
            rec["exact"] = rec["exact"] and rec["exact_left_padding"]
        rec["stage"] = "done"
    except Exception as e:  # noqa: BLE001  a probe reports every failure and goes on
        rec["error"] = f"{type(e).__name__}: {str(e)[:300]}"
    finally:  # also when an attention-free family returns early
        rec["seconds"] = round(time.time() - t0, 1)
    return rec


def _export(exporter: str, built, path: Path):
    """(the model attnopt reads, the inputs validate feeds it): an ONNX file, or for ``export`` the
    ExportedProgram (every axis but the batch AUTO, so a dynamic length stays symbolic)."""
    built.module.eval()  # a dynamo export that fails can leave the module in training mode (XLNet's did)
    if exporter in ("export", "decomposed"):
        dims = tuple({ax: torch.export.Dim.AUTO for ax in range(1, t.dim())} if t.dim() > 1 else None
                     for t in built.inputs)
        program = torch.export.export(built.module, built.inputs, dynamic_shapes=dims)
        return (program.run_decompositions() if exporter == "decomposed" else program), tuple(built.inputs)
    names = dict(input_names=list(built.input_names), output_names=list(built.output_names))
    if exporter == "dynamo":
        torch.onnx.export(built.module, built.inputs, str(path), dynamo=True, external_data=False, verbose=False,
                          **names)
    else:
        torch.onnx.export(built.module, built.inputs, str(path), dynamo=False, opset_version=17, **names)
    # an export onnxruntime cannot load is the exporter's (TorchScript's Mamba2 Transpose with a negative perm):
    # it stops here, not later as a rewrite that "fails" on an original that never ran
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    # TorchScript drops an input the graph reads only at export time (Qwen2.5-VL's grid_thw sizes its windows)
    kept = {i.name for i in session.get_inputs()}
    return path, {n: t.numpy() for n, t in zip(built.input_names, built.inputs) if n in kept}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("families", nargs="*", help="families to probe (default all): " + ", ".join(FAMILIES))
    ap.add_argument("--exporters", nargs="+", default=["torchscript", "dynamo", "export"],
                    choices=["torchscript", "dynamo", "export", "decomposed"])
    ap.add_argument("--impls", nargs="+", default=["eager", "sdpa"], choices=["eager", "sdpa", "flex_attention"],
                    help="attention implementations (flex_attention: decoders, input_ids alone, --exporters export)")
    ap.add_argument("--json", help="write every record here as a JSON list")
    args = ap.parse_args(argv)
    unknown = [f for f in args.families if f not in FAMILIES]
    if unknown:
        print(f"error: unknown family {unknown[0]!r}; see --help for the list", file=sys.stderr)
        return 2
    records = []
    with tempfile.TemporaryDirectory(prefix="attnopt-probe-") as tmp:
        for family in args.families or list(FAMILIES):
            for impl in args.impls:
                try:
                    built = build(family, impl)
                except Exception as e:  # noqa: BLE001  a family this transformers cannot build that way
                    rec = {"family": family, "impl": impl, "stage": "build", "error": f"{type(e).__name__}: {str(e)[:200]}"}
                    records.append(rec)
                    print(json.dumps(rec), flush=True)
                    continue
                for exporter in args.exporters:
                    rec = probe(family, impl, exporter, built, Path(tmp), FAMILIES[family][0] == "dec")
                    records.append(rec)
                    print(json.dumps(rec), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=1))
    free = [r for r in records if r["stage"] == "done" and r.get("attention_free")]
    done = [r for r in records if r["stage"] == "done" and not r.get("attention_free")]
    left = [r for r in done if "exact_left_padding" in r]
    print(f"\n{len(records)} probes: {sum(r['exact'] for r in done)} exact, {sum(not r['exact'] for r in done)} "
          f"inexact, {len(free)} attention-free with no site found, {sum(r['stage'] == 'build' for r in records)} "
          f"not built, "
          f"{sum(r['stage'] == 'export' for r in records)} not exported or traced (torch), "
          f"{sum(r['stage'] in ('detect', 'rewrite', 'validate') for r in records)} stopped in attnopt; "
          f"decoders also with left padding: {sum(r['exact_left_padding'] for r in left)} of {len(left)} exact")
    for r in records:
        if r["stage"] in ("detect", "rewrite", "validate") or (r["stage"] == "done" and not r.get("exact", True)):
            print(f"  {r['family']} {r['impl']} {r['exporter']}: {r.get('error') or r.get('note') or 'inexact'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
