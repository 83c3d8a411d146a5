"""The ort-cuda target: a variant's optional lowering onto onnxruntime's contrib ops.

The portable ``ai.attnopt`` bodies run on any execution provider, but on the
CUDA EP a decomposed MatMul/Softmax graph cannot match onnxruntime's fused
attention kernels. A variant whose math one ``com.microsoft`` op expresses
exactly declares that form in ``kernels/<variant>/ort_cuda.py``:

- ``LOWERING``: an onnxscript function with the portable body's signature plus
  the attribute ``num_heads`` (the contrib op needs it), attached to the model
  as ``ai.attnopt::<Op>OrtCuda`` like any body;
- ``why_not(facts)``: None where the lowering equals the portable body for this
  call, else the reason, which the rewrite report shows next to the fallback;
- ``CALLS``: the functions the lowering calls (``kernels.ort_cuda_chunks``);
- ``ATTRS`` (optional): further attributes every node of the lowering carries,
  name -> value (``lowering_attrs``). Nodes set them explicitly: a function
  attribute's default value is lost by onnx's own inliner.

Found by looking, like the variants: a new lowering touches no list.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from functools import lru_cache

from onnxscript.values import Opset

PORTABLE, ORT_CUDA = "portable", "ort-cuda"
TARGETS = (PORTABLE, ORT_CUDA)
MSFT_DOMAIN = "com.microsoft"
msft_opset = Opset(MSFT_DOMAIN, 1)
LOWERING_SUFFIX = "OrtCuda"


@dataclass(frozen=True)
class LoweringFacts:
    """What a frontend knows about one kernel call, enough to decide whether a lowering is exact."""

    attrs: dict  # the op's attributes (spec.attr_names)
    num_heads: int | None
    kv_num_heads: int | None
    dense_mask: bool  # a dense remainder mask reaches the op (key padding does not count)
    self_attention: bool = True  # queries and keys are one sequence (N == M), not a KV-cache step
    q_len: int | str | None = None  # N and M where the model fixes them (int), else a symbol or None
    kv_len: int | str | None = None
    sink_logits: bool = False  # the call carries learned sink logits (GPT-OSS)

    def common_refusal(self, takes_dense_mask: bool = False) -> str | None:
        """The limits MultiHeadAttention shares across lowerings (None: none applies).

        ``takes_dense_mask``: the lowering adds a dense remainder mask to its bias itself.
        """
        if not isinstance(self.num_heads, int) or not isinstance(self.kv_num_heads, int):
            return "MultiHeadAttention needs the head counts known statically"
        if self.num_heads != self.kv_num_heads:
            return "MultiHeadAttention needs as many key heads as query heads (GQA site)"
        if self.dense_mask and not takes_dense_mask:
            return "the site's mask varies per query, which this lowering does not carry"
        if self.attrs.get("softcap"):
            return "MultiHeadAttention has no softcapping"
        if self.sink_logits:
            return "MultiHeadAttention has no learned sink logits"
        return None


def check_target(target: str) -> str:
    from attnopt.errors import InvalidParamsError

    if target not in TARGETS:
        raise InvalidParamsError(f"--target {target!r}: use one of {', '.join(TARGETS)}")
    return target


@lru_cache(maxsize=None)
def lowering_module(variant: str):
    """``kernels/<variant>/ort_cuda.py`` imported, or None where the variant has no lowering."""
    from .registry import get_variant

    spec = get_variant(variant)
    name = f"{spec.package}.ort_cuda"
    if importlib.util.find_spec(name) is None:
        return None
    return importlib.import_module(name)


def lowering_op_type(variant: str) -> str:
    from .registry import get_variant

    return get_variant(variant).onnx_op_type + LOWERING_SUFFIX


def lowering_attrs(variant: str, num_heads: int) -> dict:
    """The attributes a lowering's node carries beyond the portable body's."""
    return {"num_heads": num_heads, **getattr(lowering_module(variant), "ATTRS", {})}


def choose(variant: str, target: str, facts: LoweringFacts) -> tuple[str | None, str]:
    """(lowering op type or None for the portable body, the reason a lowering was not used: '' if none)."""
    if target == PORTABLE:
        return None, ""
    module = lowering_module(variant)
    if module is None:
        return None, f"{variant} has no ort-cuda lowering (no contrib op computes it exactly): portable body"
    reason = module.why_not(facts)
    if reason:
        return None, f"portable body: {reason}"
    return lowering_op_type(variant), ""


def lowering_bodies() -> dict:
    """op type -> onnxscript function, for every variant that declares a lowering."""
    from .registry import all_variants

    out = {}
    for spec in all_variants():
        module = lowering_module(spec.name)
        if module is not None:
            out[lowering_op_type(spec.name)] = module.LOWERING
            out.update({fn.name: fn for fn in getattr(module, "CALLS", ())})
    return out
