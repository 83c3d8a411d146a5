"""Inputs for running a model: random but meaningful, or loaded from a .npz.

Random inputs follow what each input *means*, judged by name and dtype:

- integer ``*ids*``: token ids in [0, vocab), vocab being the row count of the
  embedding table the first Gather on the input reads (else 100);
- ``token_type_ids``: zeros; ``position_ids``: arange;
- ``*mask*`` (integer, bool or float): ones, with trailing padding zeros in batch
  rows > 0 but never a fully masked row; ``*padding_mask*`` is the inverse
  (1/True marks padding, as torch's ``src_key_padding_mask``);
- float inputs: standard normal.

Symbolic dims whose name or position says "batch" get ``batch``; every other
symbolic dim is a sequence dim and gets ``seq_len``. Everything is seeded.

For torch models the example inputs are the inputs; ``seq_len`` regenerates
them with the sequence dim resized, where the graph allows it.
"""

from __future__ import annotations

import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .errors import AttnoptError, one_line

DEFAULT_SEQ_LEN = 128
DEFAULT_VOCAB = 100

_BATCH_NAME = re.compile(r"batch|^bs$|^b$|^n_?batch$", re.I)
_SEQ_NAME = re.compile(r"seq|len|token|time|^n$|^s$|^t$|^l$|^m$|^pos|sequence", re.I)
# Ops that pass token ids through unchanged on their way to the embedding Gather.
_ID_PASSTHROUGH = {"Cast", "Identity", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Expand", "Clip"}


@dataclass(frozen=True)
class InputSpec:
    """One model input: name, numpy dtype, shape (int static, str symbolic, None unknown), vocab."""

    name: str
    dtype: np.dtype
    shape: tuple | None
    vocab: int | None = None

    @property
    def kind(self) -> str:
        """What the input means: ids | token_type | position | mask | padding_mask | float | int | bool."""
        name = self.name.lower()
        if "mask" in name:
            return "padding_mask" if "padding" in name or "pad_mask" in name else "mask"
        if self.dtype == np.bool_:
            return "bool"
        if np.issubdtype(self.dtype, np.integer):
            if "token_type" in name or "segment_ids" in name:
                return "token_type"
            if "position" in name:
                return "position"
            return "ids" if "ids" in name or "token" in name or "input" in name else "int"
        return "float"


def format_shape(shape) -> str:
    if shape is None:
        return "(unknown)"
    inner = ", ".join("?" if d is None else str(d) for d in shape)
    return f"({inner},)" if len(shape) == 1 else f"({inner})"


def site_seq_len(sites) -> int | None:
    """The model's static attention length, when a site states one: which static dim is the sequence."""
    return next((s.q_len for s in sites if isinstance(s.q_len, int)), None)


def dim_roles(shape) -> list[str]:
    """Per dim: 'static', 'batch' or 'seq'."""
    roles = []
    for axis, d in enumerate(shape or ()):
        if isinstance(d, int):
            roles.append("static")
        elif isinstance(d, str) and _BATCH_NAME.search(d):
            roles.append("batch")
        elif isinstance(d, str) and _SEQ_NAME.search(d):
            roles.append("seq")
        else:  # anonymous or exporter-made ('s0', 'unk__3'): the first axis is the batch
            roles.append("batch" if axis == 0 and len(shape) > 1 else "seq")
    return roles


def has_seq_dim(specs) -> bool:
    """Whether any input has a symbolic sequence dim (one ``seq_len`` can set)."""
    return any(r == "seq" for s in specs for r in dim_roles(s.shape))


# ----------------------------------------------------------------------------- ONNX

def onnx_input_specs(model) -> list[InputSpec]:
    """The graph inputs (not initializers) of an onnx_ir model, with vocab where an embedding shows it."""
    graph = model.graph
    inits = set(graph.initializers)
    specs = []
    for value in graph.inputs:
        if value.name in inits:
            continue
        if value.dtype is None:
            raise AttnoptError(f"model input '{value.name}' has no element type")
        try:
            dtype = np.dtype(value.dtype.numpy())
        except Exception:
            raise AttnoptError(f"model input '{value.name}' has element type {value.dtype.name}, "
                               "which attnopt cannot make inputs for") from None
        shape = None
        if value.shape is not None:
            shape = tuple(d if isinstance(d, int) else (str(d.value) if d.value is not None else None)
                          for d in value.shape)
        vocab = _onnx_vocab(value) if np.issubdtype(dtype, np.integer) else None
        specs.append(InputSpec(value.name, dtype, shape, vocab))
    return specs


def _onnx_vocab(value) -> int | None:
    """Rows of the embedding table the first Gather on ``value`` indexes, following casts and reshapes."""
    frontier, seen = [value], set()
    while frontier:
        v = frontier.pop(0)
        if id(v) in seen:
            continue
        seen.add(id(v))
        for node, index in v.uses():
            if node.op_type == "Gather" and node.domain in ("", "ai.onnx") and index == 1:
                table = node.inputs[0]
                if table is not None and table.shape is not None and table.shape.rank() >= 1:
                    axis = node.attributes.get("axis")
                    axis = 0 if axis is None else int(axis.value)
                    rows = table.shape[axis]
                    if isinstance(rows, int) and rows > 0:
                        return rows
                return None
            if node.op_type in _ID_PASSTHROUGH and index == 0:
                frontier.extend(node.outputs)
    return None


def resolve_shapes(specs: Sequence[InputSpec], seq_len: int | None = None, batch: int = 2,
                   seq_hint: int | None = None) -> dict[str, tuple[int, ...]]:
    """Concrete shapes for ``specs``; refuses a seq_len a static-shape model cannot take.

    ``seq_hint`` is the model's static sequence length when known (e.g. a site's q_len);
    it says which static dim ``seq_len`` would have to change.
    """
    if seq_len is not None and (not isinstance(seq_len, (int, np.integer)) or seq_len < 1):
        raise AttnoptError(f"--seq-len must be a positive integer, got {seq_len!r}")
    if batch < 1:
        raise AttnoptError(f"batch must be >= 1, got {batch}")
    if seq_len is not None and not has_seq_dim(specs):
        check_static_seq_len(specs, seq_len, seq_hint)
    n = int(seq_len) if seq_len is not None else DEFAULT_SEQ_LEN
    shapes = {}
    for s in specs:
        if s.shape is None:
            raise AttnoptError(f"model input '{s.name}' has an unknown rank; pass the inputs with --inputs")
        roles = dim_roles(s.shape)
        shapes[s.name] = tuple(d if r == "static" else (batch if r == "batch" else n)
                               for d, r in zip(s.shape, roles))
    return shapes


def static_seq_len(specs: Sequence[InputSpec], seq_hint: int | None = None) -> tuple[InputSpec, int] | None:
    """(input, size) of the static sequence dim of a model whose inputs have no symbolic one."""
    for s in specs:
        if s.shape and any(r == "seq" for r in dim_roles(s.shape)):
            return None
    for s in specs:
        if not s.shape:
            continue
        if seq_hint is not None and seq_hint in s.shape[1:]:
            return s, seq_hint
    for s in specs:  # no hint: (B, N, ...) text/hidden inputs carry N on axis 1
        if s.shape and len(s.shape) >= 2 and isinstance(s.shape[1], int):
            return s, s.shape[1]
    return None


def check_static_seq_len(specs: Sequence[InputSpec], seq_len: int, seq_hint: int | None = None) -> None:
    """Raise if the model's sequence dim is static and differs from ``seq_len``."""
    found = static_seq_len(specs, seq_hint)
    if found is None:
        if any(s.shape for s in specs) and not has_seq_dim(specs):
            first = next(s for s in specs if s.shape is not None)
            raise AttnoptError(f"model input '{first.name}' has static shape {format_shape(first.shape)}; "
                               f"--seq-len {seq_len} is not possible")
        return
    spec, size = found
    if size != seq_len:
        raise AttnoptError(f"model input '{spec.name}' has static shape {format_shape(spec.shape)}; "
                           f"--seq-len {seq_len} is not possible")


def make_onnx_inputs(model, seq_len: int | None = None, *, batch: int = 2, seed: int = 0,
                     seq_hint: int | None = None) -> dict[str, np.ndarray]:
    """Seeded random inputs for every graph input of an onnx_ir model."""
    specs = onnx_input_specs(model)
    shapes = resolve_shapes(specs, seq_len, batch, seq_hint)
    rng = np.random.default_rng(seed)
    return {s.name: make_array(s, shapes[s.name], rng) for s in specs}


def make_array(spec: InputSpec, shape: tuple[int, ...], rng: np.random.Generator,
               vocab: int | None = None, kind: str | None = None) -> np.ndarray:
    """One input array with the semantics of ``kind`` (default ``spec.kind``)."""
    kind = kind or spec.kind
    dtype = spec.dtype
    if kind == "mask":
        return padding_mask(shape, rng).astype(dtype)
    if kind == "padding_mask":
        return (1 - padding_mask(shape, rng)).astype(dtype)
    if kind == "token_type":
        return np.zeros(shape, dtype)
    if kind == "position":
        n = shape[-1] if shape else 1
        return np.broadcast_to(np.arange(n, dtype=dtype), shape).copy()
    if kind in ("ids", "int"):
        high = vocab or spec.vocab or DEFAULT_VOCAB
        return rng.integers(0, high, size=shape).astype(dtype)
    if kind == "bool":
        return np.ones(shape, np.bool_)
    return rng.standard_normal(shape, dtype=np.float32).astype(dtype)


def padding_mask(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Ones; batch rows > 0 end in padding zeros along the last axis, always keeping one position."""
    mask = np.ones(shape, np.int64)
    if len(shape) < 2 or shape[-1] < 2:
        return mask
    n = shape[-1]
    for b in range(1, shape[0]):
        pad = int(rng.integers(1, max(1, n // 2) + 1))
        mask[b, ..., n - min(pad, n - 1):] = 0
    return mask


# ----------------------------------------------------------------------------- .npz / dicts

def load_npz(path) -> dict[str, np.ndarray]:
    path = Path(path)
    if not path.exists():
        raise AttnoptError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: np.asarray(data[k]) for k in data.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise AttnoptError(f"{path}: not a readable .npz file: {type(e).__name__}: {one_line(e)}".rstrip(": ")) \
            from None


def check_names(given: Sequence[str], expected: Sequence[str], source: str = "inputs") -> None:
    """Raise unless ``given`` names exactly the model inputs ``expected``."""
    missing = [n for n in expected if n not in given]
    extra = [n for n in given if n not in expected]
    if missing or extra:
        parts = ([f"missing {', '.join(map(repr, missing))}"] if missing else []) + \
                ([f"unknown {', '.join(map(repr, extra))}"] if extra else [])
        raise AttnoptError(f"{source} do not match the model inputs ({', '.join(expected)}): {'; '.join(parts)}")


def check_inputs(arrays: Mapping[str, Any], specs: Sequence[InputSpec],
                 source: str = "inputs") -> dict[str, np.ndarray]:
    """Match given arrays to the model inputs by name; cast within a dtype kind; clear errors otherwise."""
    check_names(list(arrays), [s.name for s in specs], source)
    out = {}
    for s in specs:
        a = _to_numpy(arrays[s.name])
        if a.dtype != s.dtype:
            if not np.can_cast(a.dtype, s.dtype, "same_kind") and not (
                    np.issubdtype(a.dtype, np.integer) and s.dtype == np.bool_):
                raise AttnoptError(f"{source}: '{s.name}' has dtype {a.dtype}, the model wants {s.dtype}")
            a = a.astype(s.dtype)
        if s.shape is not None:
            if a.ndim != len(s.shape):
                raise AttnoptError(f"{source}: '{s.name}' has shape {a.shape}, the model wants rank "
                                   f"{len(s.shape)} {format_shape(s.shape)}")
            for got, want in zip(a.shape, s.shape):
                if isinstance(want, int) and got != want:
                    raise AttnoptError(f"{source}: '{s.name}' has shape {a.shape}, the model wants "
                                       f"{format_shape(s.shape)}")
        out[s.name] = a
    return out


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def onnx_inputs(model, inputs=None, seq_len: int | None = None, *, batch: int = 2, seed: int = 0,
                seq_hint: int | None = None) -> dict[str, np.ndarray]:
    """Inputs for an onnx_ir model: from ``inputs`` (.npz path or name -> array) or random."""
    if inputs is None:
        return make_onnx_inputs(model, seq_len, batch=batch, seed=seed, seq_hint=seq_hint)
    specs = onnx_input_specs(model)
    source = "inputs"
    if isinstance(inputs, (str, os.PathLike)):
        source = str(inputs)
        inputs = load_npz(inputs)
    if not isinstance(inputs, Mapping):
        raise AttnoptError("inputs must be a .npz path or a mapping of input name -> array")
    arrays = check_inputs(inputs, specs, source)
    if seq_len is not None:
        shapes = resolve_shapes(specs, seq_len, batch, seq_hint)
        for s in specs:
            for axis, (role, want) in enumerate(zip(dim_roles(s.shape), shapes[s.name])):
                if role == "seq" and arrays[s.name].shape[axis] != want:
                    raise AttnoptError(f"{source}: '{s.name}' has shape {arrays[s.name].shape}, "
                                       f"which does not match --seq-len {seq_len}")
    return arrays


# ----------------------------------------------------------------------------- torch

def torch_vocab(gm, placeholder_name: str) -> int | None:
    """Rows of the embedding the placeholder feeds (aten.embedding, F.embedding or nn.Embedding)."""
    import torch

    node = next((n for n in gm.graph.nodes if n.op == "placeholder" and n.name == placeholder_name), None)
    frontier, seen = [node] if node is not None else [], set()
    while frontier:
        n = frontier.pop(0)
        if n in seen:
            continue
        seen.add(n)
        for user in n.users:
            target = user.target
            name = getattr(getattr(target, "overloadpacket", None), "__name__", None) or getattr(target, "__name__", "")
            if user.op == "call_module":
                mod = gm.get_submodule(user.target)
                if isinstance(mod, torch.nn.Embedding):
                    return int(mod.num_embeddings)
            elif name == "embedding":
                is_aten = getattr(target, "overloadpacket", None) is not None  # aten: (weight, indices)
                weight = user.args[0] if is_aten else user.args[1]
                rows = _node_rows(gm, weight)
                if rows:
                    return rows
            elif name in ("_to_copy", "to", "view", "reshape", "unsqueeze", "long", "int", "type", "clone"):
                frontier.append(user)
    return None


def _node_rows(gm, node) -> int | None:
    import torch

    val = getattr(node, "meta", {}).get("val")
    if isinstance(val, torch.Tensor):
        return int(val.shape[0])
    if getattr(node, "op", None) == "get_attr":
        obj = gm
        for part in node.target.split("."):
            obj = getattr(obj, part)
        return int(obj.shape[0])
    return None


def torch_inputs(example_inputs: Sequence, names: Sequence[str], seq_len: int | None, *, seed: int = 0,
                 seq_size: int | None = None, symbolic_axes: Sequence[tuple[int, ...]] | None = None,
                 vocabs: Sequence[int | None] | None = None) -> tuple:
    """The example inputs, regenerated with the sequence dim resized to ``seq_len``.

    ``seq_size`` is the sequence length of the examples (a site's q_len); every non-batch
    axis of that size is a sequence axis. ``symbolic_axes`` (per input) are the axes
    torch.export made dynamic; None means the graph does not constrain shapes
    (symbolic_trace). A static axis that would need resizing raises AttnoptError.
    """
    import torch

    examples = tuple(example_inputs)
    if seq_len is None:
        return examples
    if not isinstance(seq_len, (int, np.integer)) or seq_len < 1:
        raise AttnoptError(f"--seq-len must be a positive integer, got {seq_len!r}")
    tensors = [(i, t) for i, t in enumerate(examples) if isinstance(t, torch.Tensor)]
    if seq_size is None:
        seq_size = next((int(t.shape[1]) for _, t in tensors if t.dim() >= 2), None)
    if seq_size is None:
        raise AttnoptError("cannot tell which input dim is the sequence; pass inputs explicitly")
    if seq_size == seq_len:
        return examples
    rng = np.random.default_rng(seed)
    out = list(examples)
    for i, t in tensors:
        axes = [a for a in range(t.dim()) if t.shape[a] == seq_size and (a > 0 or t.dim() == 1)]
        if not axes:
            continue
        if symbolic_axes is not None:
            fixed = [a for a in axes if a not in symbolic_axes[i]]
            if fixed:
                raise AttnoptError(f"model input '{names[i]}' has static shape {format_shape(tuple(t.shape))}; "
                                   f"--seq-len {seq_len} is not possible")
        shape = tuple(seq_len if a in axes else int(d) for a, d in enumerate(t.shape))
        # Generated in a numpy dtype of the same kind, then cast (numpy has no bfloat16).
        np_dtype = np.float32 if t.is_floating_point() else (np.bool_ if t.dtype == torch.bool else np.int64)
        spec = InputSpec(names[i], np.dtype(np_dtype), tuple(t.shape))
        vocab = vocabs[i] if vocabs else None
        kind = _torch_kind(spec, t)
        if kind in ("ids", "int") and vocab is None:
            vocab = int(t.max()) + 1 if t.numel() else DEFAULT_VOCAB
        arr = make_array(spec, shape, rng, vocab, kind)
        out[i] = torch.from_numpy(np.ascontiguousarray(arr)).to(t.dtype)
    return tuple(out)


def _torch_kind(spec: InputSpec, t) -> str:
    """Kind by name, else by what the example holds (0/1 integers: a mask; all zeros: token types)."""
    kind = spec.kind
    if kind in ("ids", "int") and not any(k in spec.name.lower() for k in ("ids", "token", "input")):
        if t.numel() and bool(((t == 0) | (t == 1)).all()):
            return "token_type" if not bool(t.any()) else "mask"
    if kind == "int" and t.numel() and int(t.min()) >= 0:
        return "ids"
    return kind
