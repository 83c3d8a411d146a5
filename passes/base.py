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

    @classmethod
    def whole(cls, site: AttentionSite, kernel: str, attrs: dict, tensors: dict | None = None) -> "OpCall":
        """Every head through one kernel: the common plan."""
        return cls(site, (HeadGroup(kernel, dict(attrs), tensors=dict(tensors or {})),))

    @property
    def kernels(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(g.kernel for g in self.groups))


@dataclass(frozen=True)
class Refusal:
    site: AttentionSite
    reason: str


class AttentionPass:
    """Base class. Subclasses set ``name``, ``summary``, ``Params`` and implement ``plan_site``."""

    name: ClassVar[str]
    summary: ClassVar[str]
    Params: ClassVar[type]
    # Whether the rewrite changes the math (False only for exact reformulations).
    approximate: ClassVar[bool] = True

    def __init__(self, **params: Any):
        self.params = self.parse_params(params)

    @classmethod
    def parse_params(cls, params: dict):
        fields = {f.name: f for f in dataclasses.fields(cls.Params)}
        unknown = sorted(set(params) - set(fields))
        if unknown:
            raise InvalidParamsError(
                f"pass '{cls.name}' has no parameter {', '.join(map(repr, unknown))}; "
                f"it takes: {', '.join(fields) or 'nothing'}")
        typed = {k: _coerce(cls.name, k, v, fields[k].type) for k, v in params.items()}
        try:
            p = cls.Params(**typed)
        except TypeError as e:
            raise InvalidParamsError(f"pass '{cls.name}': {e}") from None
        p.validate()
        return p

    def plan(self, site: AttentionSite) -> OpCall | Refusal:
        if site.unsupported:
            return Refusal(site, site.unsupported)
        return self.plan_site(site)

    def plan_site(self, site: AttentionSite) -> OpCall | Refusal:  # pragma: no cover - abstract
        raise NotImplementedError


def _coerce(pass_name: str, key: str, value, annotation):
    """CLI values arrive as strings ('512'); dataclass annotations say what they should be."""
    kind = annotation if isinstance(annotation, type) else {"int": int, "float": float, "str": str,
                                                           "bool": bool}.get(str(annotation), None)
    if kind is None or isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    try:
        if kind is bool:
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        return kind(value)
    except (TypeError, ValueError):
        raise InvalidParamsError(
            f"pass '{pass_name}': {key}={value!r} is not a valid {kind.__name__}") from None


def require(condition: bool, message: str) -> None:
    """Param validation helper: one clear sentence per broken rule."""
    if not condition:
        raise InvalidParamsError(message)
