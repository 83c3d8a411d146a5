"""A variant, declared once: everything else about it is derived from its ``VariantSpec``.

From one spec come the pass parameters (parsed from Python or CLI strings and
checked with one-line errors), the torch op schema, the ONNX function
signature and its attribute order, `attnopt passes NAME` help and the demo's
settings. A variant's folder under ``kernels/`` holds the spec (in its
``__init__``), ``reference.py``, ``op.py`` and ``onnx_body.py``; the registry
finds it by looking, so adding one touches no list.

The op contract, common to every variant:

- inputs ``q`` (B, H, N, D), ``k`` and ``v`` (B, Hkv, M, D), H a multiple of Hkv;
- ``mask``: the dense remainder of the site's mask, additive, 4-D and
  broadcastable to (B, H, N, M), or None (in ONNX a (1, 1, 1, 1) zero);
- ``key_padding``: additive (B | 1, M), or None (in ONNX a (1, 1) zero);
- ``sink_logits``, only where the spec ``serves_sink_logits``: one learned
  logit per query head, (H,) float, or None. In ONNX it is the input after
  ``KeyPadding`` (an empty (0,) tensor for none); in torch the last argument,
  None by default. Each row's softmax then also spans a column of that score
  whose value is zero (GPT-OSS's attention sinks):
  out_i = Σ_j e^{s_ij} v_j / (Σ_j e^{s_ij} + e^{σ_h});
- the variant's constant tensor inputs (``TensorInput``), in declared order;
- the variant's parameters (``Param``), in declared order, then the common
  attributes ``scale`` (float), ``causal`` (query i sits at i + M − N and sees
  keys j ≤ i + M − N) and ``softcap`` (float, 0 = none: scores become
  softcap·tanh(scores / softcap) before any mask is added);
- output (B, H, N, D) in q's dtype; softmax runs in float32; a row with no
  allowed key outputs 0.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from attnopt.errors import InvalidParamsError

# Attributes every op takes after the variant's own parameters, with their torch and ONNX types.
COMMON_ATTRS: tuple[tuple[str, str], ...] = (("scale", "float"), ("causal", "bool"), ("softcap", "float"))

_TORCH_TYPES = {int: "int", float: "float", bool: "bool", str: "str"}


@dataclass(frozen=True)
class Param:
    """One parameter of a variant: its type, default, rule and one-line meaning."""

    name: str
    type: type
    default: Any
    help: str
    check: Callable[[Any], bool] | None = None
    rule: str = ""  # what ``check`` demands, as the end of a sentence: "must be >= 1"
    choices: tuple = ()

    def parse(self, variant: str, value: Any) -> Any:
        """A value from Python or a CLI string, typed and checked, or a one-line InvalidParamsError."""
        value = _coerce(variant, self.name, value, self.type)
        if self.choices and value not in self.choices:
            raise InvalidParamsError(f"{variant}: {self.name} must be one of {', '.join(map(str, self.choices))}, "
                                     f"got {value!r}")
        if self.check is not None and not self.check(value):
            raise InvalidParamsError(f"{variant}: {self.name} {self.rule or 'is invalid'}, got {value!r}")
        return value


@dataclass(frozen=True)
class TensorInput:
    """A constant tensor the pass supplies (lsh rotations, a relbias table), stored in the model.

    ``per_head``: its rows are the query heads (or one row every head shares), so a head group takes the rows
    of its own heads (``frontends.lowering``).
    """

    name: str
    help: str
    per_head: bool = False


@dataclass(frozen=True)
class StateIO:
    """A state the op reads and returns updated (memory's streaming form): a model input and output per site.

    ``shape`` names the dims, (B, Hkv, T, D) for cached keys; dims not among
    B, Hkv, D are free (T grows from 0). ``dtype`` is "query" (the query's
    type) or "int64".
    """

    name: str
    help: str
    shape: tuple[str, ...] = ("B", "Hkv", "T", "D")
    dtype: str = "query"


@dataclass(frozen=True)
class VariantSpec:
    name: str  # the variant and pass name: "segmented"
    summary: str  # one line: what each query attends to
    params: tuple[Param, ...]
    exact_limit: str  # where it must equal dense attention, for people: "segment_size >= N"
    # Parameters at the exact limit for query length n and key length m (the conformance test uses them).
    exact_params: Callable[[int, int], dict]
    cost: str = ""
    refuses: tuple[str, ...] = ()  # what the pass refuses, for people
    # Small settings that make the variant do real work on a few dozen tokens (conformance tests).
    test_params: tuple[dict, ...] = ()
    demo_params: dict = field(default_factory=dict)  # `attnopt demo`'s setting (N = 128 validation)
    needs_self_attention: bool = True  # N == M (or a KV-cache step, where kv_cache says so)
    kv_cache: bool = False  # serves KV-cache steps: M > N with query i at position i + M − N
    subquadratic: bool = True  # no N×M tensor anywhere (False only for dense)
    serves_causal: bool = True  # lowrank pools future keys into the past: it refuses causal sites
    serves_dense_mask: bool = True  # a mask that varies per query (not key padding) can be applied
    # takes learned per-head sink logits (GPT-OSS) as the input after the key padding (``sink_logits``)
    serves_sink_logits: bool = False
    # params -> how far back from its query position a key may be and still be seen, sinks aside (W − 1 for a
    # window of W); None where some key at any distance may be (dense, pooled or hashed keys). A site's
    # sliding-window mask term is left out of an op that reaches no farther (``lowering.mask_terms``).
    reach: Callable[[dict], int | None] | None = None
    tensor_inputs: tuple[TensorInput, ...] = ()
    # (params, q shape, k shape, seed) -> {tensor input name: array}; required when tensor_inputs is set.
    make_tensors: Callable[..., dict] | None = None
    # States read and returned updated; the op then returns (Y, *next states) (ONNX outputs Y, <name>_next...).
    state: tuple[StateIO, ...] = ()
    # The variant that runs this one a segment per call with its state carried by the model (`--streaming`).
    streaming_form: str | None = None
    package: str = ""  # the kernels subpackage holding reference/op/onnx_body (set by the registry)

    # -- derived names ----------------------------------------------------------
    @property
    def op_name(self) -> str:
        """torch.ops.attnopt.<op_name>."""
        return f"{self.name}_attention"

    @property
    def onnx_op_type(self) -> str:
        """ai.attnopt::<onnx_op_type>: 'segmented' -> 'SegmentedAttention'."""
        return "".join(part.capitalize() for part in re.split(r"[_\W]+", self.name)) + "Attention"

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    @property
    def attr_names(self) -> tuple[str, ...]:
        """The ONNX node's attributes (and the torch op's trailing scalars), in order."""
        return self.param_names + tuple(name for name, _ in COMMON_ATTRS)

    @property
    def defaults(self) -> dict:
        return {p.name: p.default for p in self.params}

    # -- parameters ---------------------------------------------------------------
    def parse_params(self, given: dict) -> dict:
        """Defaults overridden by ``given`` (Python values or CLI strings), every value checked."""
        known = {p.name: p for p in self.params}
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise InvalidParamsError(f"pass '{self.name}' has no parameter {', '.join(map(repr, unknown))}; "
                                     f"it takes: {', '.join(known) or 'nothing'}")
        return {name: p.parse(self.name, given[name]) if name in given else p.default for name, p in known.items()}

    # -- derived signatures -----------------------------------------------------
    @property
    def torch_schema(self) -> str:
        tensors = "".join(f", Tensor {t.name}" for t in self.tensor_inputs + self.state)
        scalars = "".join(f", {_TORCH_TYPES[p.type]} {p.name}" for p in self.params)
        common = "".join(f", {kind} {name}" for name, kind in COMMON_ATTRS)
        # last, with a default, so that a call without sinks reads as before
        sinks = ", Tensor? sink_logits=None" if self.serves_sink_logits else ""
        out = "Tensor" if not self.state else "(" + ", ".join(["Tensor"] * (1 + len(self.state))) + ")"
        return (f"(Tensor q, Tensor k, Tensor v, Tensor? mask, Tensor? key_padding{tensors}{scalars}{common}{sinks}) "
                f"-> {out}")

    @property
    def onnx_inputs(self) -> tuple[str, ...]:
        sinks = ("SinkLogits",) if self.serves_sink_logits else ()
        return ("Q", "K", "V", "Mask", "KeyPadding") + sinks + tuple(t.name for t in self.tensor_inputs + self.state)

    @property
    def onnx_outputs(self) -> tuple[str, ...]:
        return ("Y",) + tuple(f"{s.name}_next" for s in self.state)

    def onnx_attr_type(self, name: str) -> str:
        """'int' | 'float' | 'string' for an ONNX attribute (bools are ints)."""
        kind = dict(COMMON_ATTRS).get(name) or _TORCH_TYPES[next(p.type for p in self.params if p.name == name)]
        return {"bool": "int", "int": "int", "float": "float", "str": "string"}[kind]

    # -- implementations (imported on first use, so reading specs stays cheap) ----
    def _module(self, leaf: str):
        return importlib.import_module(f"{self.package}.{leaf}")

    @property
    def reference(self) -> Callable:
        """The executable spec: reference(q, k, v, *, <params>, scale, mask, key_padding, causal, softcap, <tensors>)."""
        return self._module("reference").reference

    @property
    def torch_op(self):
        """torch.ops.attnopt.<op_name> (imports torch and registers the op)."""
        self._module("op")
        import torch

        return getattr(torch.ops.attnopt, self.op_name)

    @property
    def onnx_function(self):
        """The onnxscript function that is the ONNX body, plus the bodies it calls (``onnx_body.CALLS``)."""
        return self._module("onnx_body").BODY

    @property
    def onnx_helpers(self) -> tuple:
        """onnxscript functions the body calls, which a model must carry too."""
        return tuple(getattr(self._module("onnx_body"), "CALLS", ()))

    def tensors_for(self, params: dict, q_shape, k_shape, seed: int = 0) -> dict[str, np.ndarray]:
        if not self.tensor_inputs:
            return {}
        return self.make_tensors(params, q_shape, k_shape, seed)


def _coerce(variant: str, key: str, value, kind: type):
    """CLI values arrive as strings ('512'); the spec says what they should be."""
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    try:
        if kind is bool:
            text = str(value).lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        if kind is int and isinstance(value, str):
            return int(value, 10)
        return kind(value)
    except (TypeError, ValueError):
        raise InvalidParamsError(f"{variant}: {key}={value!r} is not a valid {kind.__name__}") from None


def at_least(n: int) -> dict:
    """check/rule pair for ``Param``: value >= n."""
    return {"check": lambda v: v >= n, "rule": f"must be >= {n}"}
