"""What a pass is: params, and a plan that says what replaces a site.

Passes never touch graph objects. ``plan`` returns an ``OpCall`` naming a
kernel from ``attnopt.kernels.registry`` with its attributes, or a
``Refusal`` with a reason a person can act on. The frontend decides *how*.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from attnopt.errors import InvalidParamsError
from attnopt.site import AttentionSite


@dataclass(frozen=True)
class HeadGroup:
    """Query heads ``[start, stop)`` of a site, served by one kernel call.

    ``stop=None`` means "to the last head": a one-group plan slices nothing.
    ``kernel`` is a registered variant name; ``"dense"`` keeps the heads exact.
    ``tensors`` are constant inputs the pass supplies (lsh rotations, a relbias
    table), by the names the variant's spec declares; frontends store them as
    ONNX initializers or fx buffers.
    """
    kernel: str
    attrs: dict
    start: int = 0
    stop: int | None = None
    tensors: dict = field(default_factory=dict)


@dataclass(frozen=True)
class OpCall:
    """Replace ``site`` by one kernel call per head group, concatenated over heads."""
    site: AttentionSite
    groups: tuple[HeadGroup, ...]
    # Structured parts of the site's mask the kernels compute themselves, so the frontend leaves them
    # out of the dense remainder: "relative_bias" (relbias's fuse mode). Everything else is handed over.
    fuses: tuple[str, ...] = ()

    @classmethod
    def whole(cls, site: AttentionSite, kernel: str, attrs: dict, tensors: dict | None = None,
              fuses: tuple[str, ...] = ()) -> "OpCall":
        """Every head through one kernel: the common plan."""
        return cls(site, (HeadGroup(kernel, dict(attrs), tensors=dict(tensors or {})),), tuple(fuses))

    @classmethod
    def fusing_relative_bias(cls, site: AttentionSite, kernel: str, attrs: dict) -> "OpCall":
        """Every head through a kernel that computes the site's recognised relative bias itself (its slopes
        and table as the kernel's tensors); the frontend leaves that term out of the dense remainder."""
        from attnopt.frontends.lowering import FUSED_RELATIVE_BIAS
        slopes, table = site.relative_bias.arrays()
        return cls.whole(site, kernel, attrs, {"slopes": slopes, "table": table}, fuses=(FUSED_RELATIVE_BIAS,))

    @property
    def kernels(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(g.kernel for g in self.groups))


@dataclass(frozen=True)
class Refusal:
    site: AttentionSite
    reason: str


class AttentionPass:
    """Base class. A subclass names its ``variant`` (a folder under kernels/); its name, summary
    and parameters come from that variant's spec. ``plan_site`` may be overridden to refuse
    sites or to plan head groups; the default runs every head through the variant.
    """

    variant: ClassVar[str]
    name: ClassVar[str]
    summary: ClassVar[str]
    Params: ClassVar[type]

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "variant" in cls.__dict__:
            spec = cls.spec()
            cls.name, cls.summary = spec.name, spec.summary
            cls.Params = _params_class(cls.variant)

    def __init__(self, *, streaming: bool = False, **params: Any):
        self.params = self.parse_params(params)
        self.streaming = bool(streaming)
        if self.streaming and not self.spec().streaming_form:
            raise InvalidParamsError(f"pass '{self.name}' has no streaming form")

    @classmethod
    def spec(cls):
        from attnopt.kernels.registry import get_variant
        return get_variant(cls.variant)

    @classmethod
    def parse_params(cls, params: dict):
        return cls.Params(**cls.spec().parse_params(params))

    def plan(self, site: AttentionSite) -> OpCall | Refusal:
        if site.unsupported:
            return Refusal(site, site.unsupported)
        if self.spec().needs_self_attention:
            reason = self_attention_refusal(site, self.name, self.serves_kv_cache())
            if reason:
                return Refusal(site, reason)
        return self.plan_site(site)

    @classmethod
    def serves_kv_cache(cls) -> bool:
        """Whether KV-cache steps are planned (by default, when the variant's kernel serves them)."""
        return cls.spec().kv_cache

    def plan_site(self, site: AttentionSite) -> OpCall | Refusal:
        if self.streaming:
            return self.plan_streaming(site)
        return OpCall.whole(site, self.variant, dataclasses.asdict(self.params))

    def plan_streaming(self, site: AttentionSite) -> OpCall | Refusal:
        """The variant's streaming form: one segment per call, what it remembers carried as model state.

        A segment's own mask cannot describe the carried keys, so the only dense term that streams is a
        recognised relative-position bias (ALiBi as BLOOM adds it): the form takes its slopes and table and
        computes it over absolute stream positions, and the frontend drops the term (``fuses``).
        """
        from attnopt.kernels.registry import get_variant
        form = get_variant(self.spec().streaming_form)
        if site.past_len is not None:
            return Refusal(site, "already a KV-cache step: the streaming form carries its own cache")
        rb = site.relative_bias
        if site.masks and (rb is None or tuple(site.masks) != (rb.term,)):
            return Refusal(site, "its mask is a dense N×M term that is not a recognised relative-position bias: "
                                 "streaming carries causality, key padding and ALiBi / relative biases only")
        # The streaming form takes this pass's parameters that it shares (the segment is the call's input).
        params = dataclasses.asdict(self.params)
        attrs = {n: params[n] for n in form.param_names}
        if rb is None:
            return OpCall.whole(site, form.name, attrs, form.tensors_for(attrs, (), ()))
        return OpCall.fusing_relative_bias(site, form.name, attrs)


def self_attention_refusal(site: AttentionSite, variant: str, kv_cache: bool) -> str | None:
    """Why a variant that needs self-attention (or a KV-cache step) can't serve ``site``, or None."""
    if site.past_len is not None:  # a KV-cache step: keys are the cache followed by the queries' own tokens
        return None if kv_cache else f"a KV-cache step (past length {site.past_len}): {variant} serves none yet"
    if site.is_self_attention is False:
        return f"cross-attention (N={site.q_len}, M={site.kv_len}): {variant} needs self-attention"
    if site.is_self_attention is None:
        return "query and key lengths are unknown: cannot prove self-attention"
    return None


def _params_class(variant: str) -> type:
    """The frozen params dataclass of a variant, derived from its spec (fields in spec order)."""
    from attnopt.kernels.registry import get_variant
    spec = get_variant(variant)
    cls = dataclasses.make_dataclass(
        "".join(w.capitalize() for w in variant.split("_")) + "Params",
        [(p.name, p.type, field(default=p.default)) for p in spec.params], frozen=True)
    cls.__doc__ = f"Parameters of the {variant} pass (from kernels/{variant}/__init__.py's spec)."
    return cls
