"""Built-in example models: a small BERT-style encoder in plain torch.

The attention is written out as q·kᵀ·scale + mask → softmax → ·v on purpose,
so the exported graph shows the decomposed form the matcher is built for. No
``transformers`` import: that is a test-only dependency.

    >>> module, inputs, names = build_example("bert", layers=2)
    >>> export_example("bert", "bert.onnx", seq_len=128)
    >>> export_example("bert-base", "bert-base.fp16.onnx", dtype="float16")

Positions are sinusoidal and computed from the input length at run time, so one
exported model takes any sequence length (the benchmark varies N).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn as nn

from .atomic import write_atomic
from .errors import AttnoptError

# Additive value for padded keys. Large enough to zero their weight, small
# enough that adding it to a score never overflows fp32 (unlike finfo.min).
MASK_NEG = -1.0e4


@dataclass(frozen=True)
class BertConfig:
    layers: int = 2
    hidden: int = 128
    heads: int = 4
    ffn: int | None = None  # 4 * hidden when None
    vocab: int = 1000

    def __post_init__(self):
        if self.layers < 1 or self.hidden < 1 or self.heads < 1 or self.vocab < 2:
            raise AttnoptError("example: layers, hidden, heads must be >= 1 and vocab >= 2")
        if self.hidden % self.heads:
            raise AttnoptError(f"example: hidden ({self.hidden}) must be a multiple of heads ({self.heads})")

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


PRESETS: dict[str, BertConfig] = {
    "bert": BertConfig(layers=2, hidden=128, heads=4, vocab=1000),
    # Shaped like BERT-base (hidden 768, 12 heads, D=64), 4 layers: the benchmark model.
    "bert-base": BertConfig(layers=4, hidden=768, heads=12, vocab=1000),
    # Shaped like BERT-large (hidden 1024, 16 heads): for the detection-speed benchmark.
    "bert-large": BertConfig(layers=24, hidden=1024, heads=16, vocab=100),
}


def example_names() -> list[str]:
    return list(PRESETS)


class SelfAttention(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.heads, self.head_dim = cfg.heads, cfg.head_dim
        self.scale = 1.0 / math.sqrt(cfg.head_dim)
        self.query = nn.Linear(cfg.hidden, cfg.hidden)
        self.key = nn.Linear(cfg.hidden, cfg.hidden)
        self.value = nn.Linear(cfg.hidden, cfg.hidden)
        self.out = nn.Linear(cfg.hidden, cfg.hidden)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self._split(self.query(x)), self._split(self.key(x)), self._split(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) * self.scale + mask
        probs = torch.softmax(scores, dim=-1)
        ctx = torch.matmul(probs, v).transpose(1, 2).reshape(b, n, c)
        return self.out(ctx)


class EncoderLayer(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        ffn = cfg.ffn or 4 * cfg.hidden
        self.attention = SelfAttention(cfg)
        self.norm1 = nn.LayerNorm(cfg.hidden)
        self.ffn = nn.Sequential(nn.Linear(cfg.hidden, ffn), nn.GELU(), nn.Linear(ffn, cfg.hidden))
        self.norm2 = nn.LayerNorm(cfg.hidden)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.attention(x, mask))
        return self.norm2(x + self.ffn(x))


class BertEncoder(nn.Module):
    """input_ids (B, N) int64, attention_mask (B, N) int64 (1 = real token) -> hidden states (B, N, C)."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab, cfg.hidden)
        self.norm = nn.LayerNorm(cfg.hidden)
        self.layer = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.layers))
        half = cfg.hidden // 2
        # Frequencies are a buffer; positions come from the input length, so any N works.
        self.register_buffer("inv_freq", torch.exp(torch.arange(half, dtype=torch.float32)
                                                   * (-math.log(10000.0) / max(half, 1))), persistent=False)

    def positions(self, n_like: torch.Tensor) -> torch.Tensor:
        # cumsum of ones, not arange(N): both exporters keep it symbolic in N.
        pos = torch.cumsum(torch.ones_like(n_like[0], dtype=torch.float32), dim=0) - 1.0
        angles = pos[:, None] * self.inv_freq.float()[None, :]  # float32 even in a float16 model (N > 2048)
        pe = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
        if pe.shape[-1] < self.cfg.hidden:  # odd hidden size
            pe = torch.nn.functional.pad(pe, (0, self.cfg.hidden - pe.shape[-1]))
        return pe

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x, pe = self.embed(input_ids), self.positions(input_ids)
        if pe.dtype != x.dtype:  # a float16 model (a Cast in its graph only there)
            pe = pe.to(x.dtype)
        x = self.norm(x + pe)
        mask = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * MASK_NEG
        for layer in self.layer:
            x = layer(x, mask)
        return x


INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAMES = ("last_hidden_state",)


def _config(name: str, **overrides) -> BertConfig:
    if name not in PRESETS:
        raise AttnoptError(f"unknown example '{name}'; available: {', '.join(PRESETS)}")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    try:
        return replace(PRESETS[name], **overrides)
    except TypeError as e:
        raise AttnoptError(f"example '{name}': {e}") from None


def example_inputs(cfg: BertConfig, batch: int = 1, seq_len: int = 128, seed: int = 0):
    g = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(0, cfg.vocab, (batch, seq_len), generator=g, dtype=torch.int64)
    mask = torch.ones(batch, seq_len, dtype=torch.int64)
    if seq_len > 4:
        mask[:, -max(1, seq_len // 8):] = 0  # some padding, so the mask matters
    return ids, mask


def build_example(name: str = "bert", *, layers: int | None = None, hidden: int | None = None,
                  heads: int | None = None, vocab: int | None = None, seed: int = 0,
                  seq_len: int = 128, batch: int = 1):
    """(module in eval mode, example_inputs tuple, input_names) for a built-in example."""
    cfg = _config(name, layers=layers, hidden=hidden, heads=heads, vocab=vocab)
    if seq_len < 2:
        raise AttnoptError(f"example: seq_len must be >= 2, got {seq_len}")
    torch.manual_seed(seed)
    module = BertEncoder(cfg).eval()
    return module, example_inputs(cfg, batch, seq_len, seed), list(INPUT_NAMES)


DTYPES = {"float32": torch.float32, "float16": torch.float16}


def export_example(name: str, path, seq_len: int = 128, *, opset: int = 17, dtype: str = "float32", **kw) -> Path:
    """Build example ``name`` and export it to ONNX at ``path`` with dynamic batch and sequence axes.

    Exporter choice: TorchScript (``dynamo=False``) with ``dynamic_axes``.
    Measured on torch 2.13 (2 CPU cores) for the 2-layer example: 0.8 s,
    against 12 s for ``dynamo=True`` with ``dynamic_shapes``, which also logs
    registry chatter to stderr. Both produce the decomposed MatMul → Mul →
    Add(mask) → Softmax → MatMul that attnopt detects, keep N symbolic, and
    match the torch module to 1e-6 at lengths other than the traced one; the
    faster one keeps `attnopt demo` and the tests quick.
    """
    if dtype not in DTYPES:
        raise AttnoptError(f"example: dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    module, inputs, names = build_example(name, seq_len=seq_len, **kw)
    # float16 weights and activations (the inputs stay int64 ids and mask), as a GPU user would deploy it:
    # the exported graph then computes in float16 throughout, softmax included.
    module = module.to(DTYPES[dtype])
    axes = {n: {0: "batch", 1: "seq"} for n in [*names, *OUTPUT_NAMES]}

    def write(tmp: str) -> None:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, inputs, tmp, input_names=names, output_names=list(OUTPUT_NAMES),
                              dynamic_axes=axes, opset_version=opset, dynamo=False, do_constant_folding=True)

    return write_atomic(path, write)
