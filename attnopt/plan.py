"""A tuning plan: which variant (and parameters) serves each site and head group. ``attnopt tune`` writes it,
``attnopt rewrite MODEL --plan plan.json`` applies it.

The file is JSON, format version 1::

    {
      "version": 1,                       # this format; other versions are refused
      "attnopt": "0.1.0",                 # the attnopt that wrote it (informative)
      "model": {
        "fingerprint": "3f2a...",         # sha256 of the sites' signature below: a plan for another
        "sites": [                        #   model (other sites, heads, head dim, causality) is refused
          {"name": "...", "num_heads": 12, "kv_num_heads": 12, "head_dim": 32, "causal": false}, ...]
      },
      "budget": 0.98,                     # the end-to-end cosine the plan was tuned to keep
      "measure": "...",                   # what that cosine is of
      "calibration": {"inputs": {...}, "lengths": [256], "site_budget": 0.98},  # input shapes, site lengths
      "end_to_end": {"measure": 0.985,    # the budget's cosine, measured for the whole tuned model
                     "attended_fraction": 0.31, "cost_vs_dense": 0.31,  # keys scored; score entries / dense's
                     "site_cosine_in_model": {"...": 0.97}},  # each site inside the tuned model (compounded)
      "sites": [
        {"name": "...",                   # a site name from `attnopt detect`
         "groups": [                      # tile the query heads in order, in whole GQA groups
           {"start": 0, "stop": 4, "kernel": "dense", "params": {},
            "attended_fraction": 1.0, "rel_l2": 0.0},
           {"start": 4, "stop": 12, "kernel": "window", "params": {"window": 32, "sinks": 4},
            "attended_fraction": 0.24, "rel_l2": 0.05}],
         "attended_fraction": 0.5,        # over the site's heads, at the calibration length
         "rel_l2": 0.04, "cosine": 0.999} # the site's output against dense, upstream sites dense
      ]
    }

``rel_l2`` of a group is its share: the L2 norm of its heads' error over the whole
site output's norm, so the squares of a site's groups add up to the site's.
Sites the plan does not name stay dense; a site whose groups are all ``dense``
is left untouched. Errors are ``PlanError``: one line, exit code 2 in the CLI.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import AttnoptError

PLAN_VERSION = 1
DENSE = "dense"


class PlanError(AttnoptError):
    """A plan file that is malformed, of another version, or made for another model."""


@dataclass(frozen=True)
class PlanGroup:
    """Query heads [start, stop) through ``kernel`` with ``params`` (``dense``: kept exact)."""
    start: int
    stop: int
    kernel: str
    params: dict = field(default_factory=dict)
    attended_fraction: float | None = None
    rel_l2: float | None = None


@dataclass(frozen=True)
class SitePlan:
    name: str
    groups: tuple[PlanGroup, ...]
    attended_fraction: float | None = None
    rel_l2: float | None = None
    cosine: float | None = None

    @property
    def is_dense(self) -> bool:
        return all(g.kernel == DENSE for g in self.groups)

    @property
    def text(self) -> str:
        """One line for a table: the variant and parameters, per head group where there are several."""
        def one(g: PlanGroup) -> str:
            return " ".join([g.kernel, *(f"{k}={v}" for k, v in g.params.items())])
        if len(self.groups) == 1:
            return one(self.groups[0])
        return "; ".join(f"heads {g.start}:{g.stop} {one(g)}" for g in self.groups)


@dataclass
class Plan:
    fingerprint: str
    model_sites: list[dict]
    sites: list[SitePlan]
    budget: float | None = None
    measure: str = ""
    calibration: dict = field(default_factory=dict)
    end_to_end: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        from . import __version__
        return {
            "version": PLAN_VERSION, "attnopt": __version__,
            "model": {"fingerprint": self.fingerprint, "sites": self.model_sites},
            "budget": self.budget, "measure": self.measure, "calibration": self.calibration,
            "end_to_end": self.end_to_end,
            "sites": [{**{k: v for k, v in asdict(s).items() if k != "groups"},
                       "groups": [asdict(g) for g in s.groups]} for s in self.sites],
        }

    def save(self, path) -> Path:
        from .atomic import write_atomic
        path = Path(path)
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        write_atomic(path, lambda tmp: Path(tmp).write_text(text))
        return path

    @classmethod
    def from_dict(cls, d) -> "Plan":
        if not isinstance(d, dict):
            raise PlanError("plan: expected a JSON object")
        version = d.get("version")
        if version != PLAN_VERSION:
            raise PlanError(f"plan: version {version!r} is not supported (this attnopt reads version {PLAN_VERSION})")
        model = _get(d, "model", dict)
        sites = [_site_plan(s) for s in _get(d, "sites", list)]
        names = [s.name for s in sites]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise PlanError(f"plan: site {twice[0]!r} is planned twice")
        return cls(_get(model, "fingerprint", str), _get(model, "sites", list), sites, d.get("budget"),
                   str(d.get("measure", "")), d.get("calibration") or {}, d.get("end_to_end") or {})

    @classmethod
    def load(cls, path) -> "Plan":
        try:
            text = Path(path).read_text()
        except FileNotFoundError:
            raise PlanError(f"{path}: no such plan file") from None
        except (OSError, UnicodeDecodeError) as e:
            raise PlanError(f"{path}: cannot read the plan: {e}") from None
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise PlanError(f"{path}: not a JSON plan: {e.msg} at line {e.lineno}") from None
        try:
            return cls.from_dict(d)
        except PlanError as e:
            raise PlanError(f"{path}: {e}") from None

    # -- applying -----------------------------------------------------------
    def check_model(self, sites) -> None:
        """Refuse, with the reason, a plan made for another model than the one whose ``sites`` these are."""
        signature = site_signature(sites)
        known = {s["name"] for s in signature}
        unknown = [s.name for s in self.sites if s.name not in known]
        if unknown:
            raise PlanError(f"plan: the model has no site {unknown[0]!r}"
                            + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else "")
                            + f"; its sites: {', '.join(sorted(known)) or 'none'}")
        if fingerprint(signature) != self.fingerprint:
            raise PlanError(f"plan: made for another model: {_first_difference(self.model_sites, signature)}")


def site_signature(sites) -> list[dict]:
    """What a plan depends on, per site: its name, head counts, head dim and causality (not its length:
    a plan's parameters hold at any N, so a model exported at another length takes the same plan)."""
    return [{"name": s.name, "num_heads": _plain(s.num_heads), "kv_num_heads": _plain(s.kv_num_heads),
             "head_dim": _plain(s.head_dim), "causal": bool(s.causal)} for s in sites]


def fingerprint(signature: list[dict]) -> str:
    return hashlib.sha256(json.dumps(signature, sort_keys=True).encode()).hexdigest()


def _plain(dim):
    return dim if isinstance(dim, int) else None


def _first_difference(planned: list[dict], actual: list[dict]) -> str:
    if len(planned) != len(actual):
        return f"it has {len(planned)} attention sites, this model {len(actual)}"
    for p, a in zip(planned, actual):
        for key in a:
            if p.get(key) != a[key]:
                return f"site {a['name']!r}: {key} is {p.get(key)!r} in the plan, {a[key]!r} in the model"
    return "the model fingerprint differs"


def _get(d: dict, key: str, kind: type):
    value = d.get(key)
    if not isinstance(value, kind):
        raise PlanError(f"plan: {key!r} must be a JSON {'object' if kind is dict else kind.__name__}"
                        + ("" if key in d else ", and it is missing"))
    return value


def _site_plan(d) -> SitePlan:
    if not isinstance(d, dict):
        raise PlanError("plan: each entry of 'sites' must be an object")
    name = _get(d, "name", str)
    raw = _get(d, "groups", list)
    if not raw:
        raise PlanError(f"plan: site {name!r} has no head groups")
    groups = []
    for g in raw:
        if not isinstance(g, dict):
            raise PlanError(f"plan: site {name!r}: each head group must be an object")
        try:
            start, stop, kernel = int(g["start"]), int(g["stop"]), str(g["kernel"])
        except (KeyError, TypeError, ValueError):
            raise PlanError(f"plan: site {name!r}: a head group needs integer 'start', 'stop' and a 'kernel'") from None
        params = g.get("params") or {}
        if not isinstance(params, dict):
            raise PlanError(f"plan: site {name!r}: 'params' must be an object")
        groups.append(PlanGroup(start, stop, kernel, dict(params), g.get("attended_fraction"), g.get("rel_l2")))
    return SitePlan(name, tuple(groups), d.get("attended_fraction"), d.get("rel_l2"), d.get("cosine"))


class PlanPass:
    """The plan as a pass for ``attnopt.pipeline.Pipeline``: each planned site gets its head groups.

    Each group's kernel call comes from that variant's own pass (its checks, refusals and constant
    tensors), restricted to the group's heads; a plan names no graph object either.
    """

    name = "plan"

    def __init__(self, plan: Plan):
        self.plan_ = plan
        self.by_site = {s.name: s for s in plan.sites if not s.is_dense}
        for s in self.by_site.values():  # bad variants or parameters fail before the model is touched
            for g in s.groups:
                if g.kernel != DENSE:
                    _make_pass(s.name, g)

    def plan(self, site):
        from .passes.base import HeadGroup, OpCall, Refusal

        planned = self.by_site.get(site.name)
        if planned is None:
            return Refusal(site, "kept dense by the plan")
        whole = len(planned.groups) == 1 and planned.groups[0].start == 0 and (
            not isinstance(site.num_heads, int) or planned.groups[0].stop == site.num_heads)
        groups = []
        for g in planned.groups:
            if g.kernel == DENSE:
                groups.append(HeadGroup(DENSE, {}, g.start, g.stop))
                continue
            call = _make_pass(site.name, g).plan(site)
            if isinstance(call, Refusal):
                raise PlanError(f"plan: site {site.name!r}: {g.kernel} refuses it: {call.reason}")
            if whole:
                return call  # the pass's own call, fused terms and all
            if call.fuses or len(call.groups) != 1:
                raise PlanError(f"plan: site {site.name!r}: {g.kernel} with these parameters takes the whole "
                                f"site, not heads {g.start}:{g.stop}")
            one = call.groups[0]
            groups.append(HeadGroup(one.kernel, dict(one.attrs), g.start, g.stop, dict(one.tensors)))
        return OpCall(site, tuple(groups))


def _make_pass(site: str, g: PlanGroup):
    from .passes import make_pass
    try:
        return make_pass(g.kernel, **g.params)
    except AttnoptError as e:
        raise PlanError(f"plan: site {site!r}: {e}") from None


def apply_plan(model, plan, *, example_inputs=None, **pipeline_options):
    """Rewrite ``model`` by ``plan`` (a Plan or a plan file); a RewriteResult. Dense sites stay untouched,
    so an all-dense plan returns the model unchanged. A planned site the frontend cannot serve is an
    error, not a silent dense fallback: the plan's measured error would no longer describe the model."""
    from .loaded import open_model
    from .pipeline import REWRITTEN, Pipeline

    if not isinstance(plan, Plan):
        plan = Plan.load(plan)
    plan_pass = PlanPass(plan)
    loaded = open_model(model, example_inputs, mutable=True)
    plan.check_model(loaded.sites)
    result = Pipeline(**pipeline_options).add(plan_pass).run(loaded, require_rewrite=False)
    failed = [o for o in result.report if o.site in plan_pass.by_site and o.status != REWRITTEN]
    if failed:
        raise PlanError(f"plan: site {failed[0].site!r} could not be rewritten: {failed[0].reason}")
    return result
