"""Pipeline: run passes over selected sites, apply through the frontend, report.

Several passes may run in one pipeline; each takes the sites its selector picks
that no earlier pass rewrote. The report says, per site, what happened and why.
"""

from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import InvalidParamsError, NoSitesError, RewriteVerificationError, SiteNotApplicable
from .loaded import LoadedModel, open_model, relift
from .passes.base import Refusal
from .site import AttentionSite

REWRITTEN, REFUSED, SKIPPED = "rewritten", "refused", "skipped"


@dataclass(frozen=True)
class SiteSelector:
    """Which sites a pass applies to: a layer range 'a:b' (python-style, end exclusive) and/or name globs."""
    layers: str | None = None
    names: tuple[str, ...] = ()

    def __post_init__(self):
        if self.layers is not None:
            _parse_layers(self.layers)

    def why_not(self, site: AttentionSite, index: int) -> str | None:
        if self.layers is not None:
            lo, hi = _parse_layers(self.layers)
            layer = site.layer if site.layer is not None else index
            if not (lo <= layer < hi):
                return f"layer {layer} is outside --layers {self.layers}"
        if self.names and not any(fnmatch.fnmatchcase(site.name, g) for g in self.names):
            return f"name does not match {', '.join(self.names)}"
        return None


def _parse_layers(spec: str) -> tuple[int, float]:
    try:
        if ":" in spec:
            a, b = spec.split(":", 1)
            lo, hi = int(a) if a.strip() else 0, int(b) if b.strip() else float("inf")
        else:
            lo = int(spec)
            hi = lo + 1
    except ValueError:
        raise InvalidParamsError(f"--layers {spec!r}: expected a layer index or a range like 0:6") from None
    if lo < 0 or hi <= lo:
        raise InvalidParamsError(f"--layers {spec!r}: the range is empty")
    return lo, hi


@dataclass
class GroupOutcome:
    """One head group of a rewritten site: query heads [start, stop) through ``kernel``."""
    kernel: str
    start: int = 0
    stop: int | None = None  # None: to the last head
    attrs: dict = field(default_factory=dict)
    tensors: list[str] = field(default_factory=list)  # names of the constant tensors the pass supplied

    @property
    def text(self) -> str:
        heads = f"heads {self.start}:{'' if self.stop is None else self.stop} "
        return f"{heads}{self.kernel} {_attrs_text(self.attrs)}".strip()


@dataclass
class SiteOutcome:
    site: str
    layer: int | None
    form: str
    status: str
    reason: str = ""
    pass_name: str = ""
    kernel: str = ""  # the kernels of every group, ','-joined
    attrs: dict = field(default_factory=dict)  # a one-group plan's attributes; see ``groups`` for several
    groups: list[GroupOutcome] = field(default_factory=list)
    target: str = "portable"  # what the op calls compile for (kernels.ort_cuda.TARGETS)
    fallback: str = ""  # why the target's lowering was not used for (some of) the site, '' when it was

    @classmethod
    def planned(cls, site: AttentionSite, pass_name: str, call) -> "SiteOutcome":
        groups = [GroupOutcome(g.kernel, g.start, g.stop, dict(g.attrs), sorted(g.tensors)) for g in call.groups]
        return cls(site.name, site.layer, site.form, REWRITTEN, "", pass_name, ",".join(call.kernels),
                   dict(groups[0].attrs) if len(groups) == 1 else {}, groups)

    @property
    def plan_text(self) -> str:
        """What replaced the site, for a table: its parameters, or one entry per head group."""
        if len(self.groups) > 1:
            return "; ".join(g.text for g in self.groups)
        return _attrs_text(self.attrs)

    def to_dict(self) -> dict:
        return asdict(self)


def _attrs_text(attrs: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in attrs.items())


@dataclass
class RewriteResult:
    """What a rewrite did (the idea of onnx_ir's PassResult): the model, whether it changed, and per site why."""
    loaded: LoadedModel
    report: list[SiteOutcome]  # one outcome per site of the original, in its order

    @property
    def model(self) -> Any:
        return self.loaded.model

    @property
    def kind(self) -> str:
        return self.loaded.kind

    @property
    def modified(self) -> bool:
        return bool(self.rewritten)

    @property
    def rewritten(self) -> list[SiteOutcome]:
        return [o for o in self.report if o.status == REWRITTEN]

    def save(self, path, *, verify: bool = True) -> None:
        """Write the rewritten model atomically (never a partial file).

        ``verify`` first checks that it loads and runs (for ONNX: onnx.checker and an
        onnxruntime CPU session) and raises RewriteVerificationError naming the site
        instead of writing a broken file; turn it off where that is too costly.
        """
        if verify:
            self.loaded.frontend.verify(self.loaded, [o.site for o in self.rewritten])
        self.loaded.frontend.save(self.loaded, path)

    def to_dict(self) -> dict:
        return {"model": self.loaded.source, "sites": [o.to_dict() for o in self.report]}


class Pipeline:
    """Passes with selectors, applied in order to one model."""

    def __init__(self, target: str = "portable"):
        """``target``: "portable" (ai.attnopt bodies, any execution provider) or "ort-cuda" (each variant's
        com.microsoft lowering where it is exact, see kernels.ort_cuda)."""
        from .kernels.ort_cuda import check_target
        self.steps: list[tuple[Any, SiteSelector]] = []
        self.target = check_target(target)

    def add(self, pass_, selector: SiteSelector | None = None) -> "Pipeline":
        self.steps.append((pass_, selector or SiteSelector()))
        return self

    def run(self, model, example_inputs=None, *, require_rewrite: bool = True) -> RewriteResult:
        """Rewrite ``model`` (a handle, copied first, or a LoadedModel, edited in place)."""
        loaded = model if isinstance(model, LoadedModel) else open_model(model, example_inputs, mutable=True)
        if not loaded.sites:
            raise NoSitesError("no attention sites found in the model")
        frontend = loaded.frontend
        if self.target not in getattr(frontend, "targets", ("portable",)):
            raise InvalidParamsError(f"--target {self.target}: {frontend.description} takes only the portable "
                                     "target (ort-cuda lowers ONNX models for onnxruntime)")
        target_kw = {} if self.target == "portable" else {"target": self.target}
        site_names = [s.name for s in loaded.sites]  # the report keeps the original's sites and order
        outcomes: dict[str, SiteOutcome] = {}
        calls = []
        for index, site in enumerate(loaded.sites):
            for pass_, selector in self.steps:
                if site.name in outcomes and outcomes[site.name].status == REWRITTEN:
                    break
                reason = selector.why_not(site, index)
                if reason is not None:
                    outcomes.setdefault(site.name, SiteOutcome(site.name, site.layer, site.form, SKIPPED, reason))
                    continue
                plan = pass_.plan(site)
                if isinstance(plan, Refusal):
                    outcomes[site.name] = SiteOutcome(site.name, site.layer, site.form, REFUSED, plan.reason,
                                                      pass_.name)
                    continue
                calls.append(plan)
                outcomes[site.name] = SiteOutcome.planned(site, pass_.name, plan)
                break
        if any(_stateful(c) for c in calls) and not _positions_are_inputs(loaded) and not _positions_relative(calls):
            raise NoSitesError("streaming needs the model's positions as an input (position_ids, cache_position) "
                               "or relative at every site (a recognised ALiBi / relative bias): otherwise every "
                               "segment would restart them at 0; export it with position_ids")
        if any(_stateful(c) for c in calls):
            _check_every_site_streams(outcomes)
        if require_rewrite and not calls:
            names = ", ".join(p.name for p, _ in self.steps)
            reasons = sorted({o.reason for o in outcomes.values()})
            raise NoSitesError(f"no attention site the pass ({names}) can serve: {'; '.join(reasons)}")
        applied = []
        for call in calls:
            try:
                fallbacks = frontend.apply(loaded, call, **target_kw)
                applied.append(call)
                outcomes[call.site.name].target = self.target
                outcomes[call.site.name].fallback = "; ".join(fallbacks or ())
            except SiteNotApplicable as e:
                site = call.site
                outcomes[site.name] = SiteOutcome(site.name, site.layer, site.form, REFUSED, str(e),
                                                  outcomes[site.name].pass_name)
        if require_rewrite and not applied:
            reasons = sorted({o.reason for o in outcomes.values()})
            raise NoSitesError(f"no attention site could be rewritten: {'; '.join(reasons)}")
        if any(_stateful(c) for c in applied):
            _check_every_site_streams(outcomes)
        if applied:
            frontend.finalize(loaded, {k for c in applied for k in c.kernels})
            before = len(loaded.sites)
            relift(loaded)  # the View and sites now describe the rewritten model
            _check_dense_attention_gone(loaded, [c.site.name for c in applied], before)
        return RewriteResult(loaded, [outcomes[name] for name in site_names])


def _check_dense_attention_gone(loaded, rewritten: list[str], before: int) -> None:
    """A rewritten site's dense attention must be gone from the rewritten model: found there still, it is kept
    alive by a reader the rewrite did not re-point (a Shape of an intermediate value, say), so it would still
    compute beside the new op, and the rewrite would save nothing while looking done. Counted, not named:
    sites named by position (attention.0, ...) change names once others are rewritten."""
    expected = before - len(rewritten)  # the sites left dense on purpose (refused, skipped) are found again
    if len(loaded.sites) > expected:
        raise RewriteVerificationError(
            f"the rewrite of {', '.join(rewritten)} left {len(loaded.sites) - expected} dense attention(s) still "
            f"computed (another node reads one of their values); nothing was written. Please report this model")


def _stateful(call) -> bool:
    from .kernels.registry import get_variant
    return any(get_variant(g.kernel).state for g in call.groups)


def _positions_are_inputs(loaded) -> bool:
    """Whether the caller can continue the positions across calls: the model takes them as an input."""
    return any("position" in name.lower() for name in loaded.frontend.input_names(loaded))


def _check_every_site_streams(outcomes: dict) -> None:
    """A streamed model runs one segment per call: a site left as it was would attend within its segment only,
    silently unlike the one-shot rewrite. So streaming takes every site or none (one-line error naming them)."""
    from .kernels.registry import get_variant
    left = [o for o in outcomes.values()
            if o.status != REWRITTEN or not all(get_variant(k).state for k in o.kernel.split(","))]
    if left:
        raise NoSitesError("streaming needs every attention site streamed (one left as it is would see only its "
                           "segment): " + "; ".join(f"{o.site}: {o.reason or 'rewritten by ' + o.kernel}"
                                                    for o in left))


def _positions_relative(calls) -> bool:
    """Whether every streamed site takes its positions from a relative bias its kernel computes over the stream
    (BLOOM's ALiBi): then no position restarts with a segment. A model that also adds absolute positions
    built inside the graph is not told apart here; ALiBi models add none.
    """
    from .frontends.lowering import FUSED_RELATIVE_BIAS
    streamed = [c for c in calls if _stateful(c)]
    return bool(streamed) and all(FUSED_RELATIVE_BIAS in c.fuses for c in streamed)


def rewrite(model, pass_name: str, *, layers: str | None = None, names=(), example_inputs=None,
            target: str = "portable", **params) -> RewriteResult:
    """Rewrite every selected attention site of ``model`` with pass ``pass_name``.

    >>> result = rewrite("bert.onnx", "segmented", segment_size=512, sinks=4, layers="0:6")
    >>> result.save("bert.segmented.onnx")
    """
    from .passes import make_pass
    pass_ = make_pass(pass_name, **params)
    names = (names,) if isinstance(names, str) else tuple(names or ())
    return Pipeline(target).add(pass_, SiteSelector(layers, names)).run(model, example_inputs)
