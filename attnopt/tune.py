"""tune: the cheapest rewrite per site (and per head group) that keeps the whole model inside a budget.

    >>> result = tune("bert.onnx", budget=0.98, inputs="calib.npz")
    >>> result.plan.save("plan.json")           # then: attnopt rewrite bert.onnx --plan plan.json

How it searches, and why so:

1. **Candidates per site**: every registered training-free variant: the fixed patterns
   (segmented, window, memory, hierarchical with one or two levels) over sizes 16 .. N/2
   with 4 sinks (StreamingLLM), routed (k-means clusters of the site's own keys, each
   query routed to some of them, 4 sinks and a chunk of 16) over a few cluster counts
   and routes, plus "keep dense"; relbias fuse where the site has a relative-position
   bias (exact, the same keys as dense, but the N×M bias is never built). A fixed
   pattern's cost follows from the lengths; routed's depends on the data, so it is
   measured per head on the site's q and k from the dense calibration run. A candidate
   that scores as many keys as dense is not run.
2. **Measure each candidate alone** (the one expensive sweep): the model with only that
   site rewritten, all heads, runs on the calibration inputs. Upstream sites are dense,
   so the site's own error is isolated; the run also gives the whole model's measure
   with that one change, which says how much the site's error matters downstream
   (its *sensitivity*). The error is kept per GQA head group: heads are independent,
   so the error of any mix (some heads dense, others through a variant, DuoAttention's
   split) is exact from these numbers, without running the mix.
3. **Choose per head group**: the cheapest choice of cost + λ·sensitivity·error, where
   cost is the attended score entries as a share of the whole model's dense ones
   (``attnopt.attended``); each site's own cosine must stay within the budget too.
4. **Check end to end**: errors compound through the layers, so each λ's plan is
   rewritten and run whole; λ is bisected on that measured end-to-end value, and the
   cheapest plan that *measured* within the budget wins (all dense always does).

The budget is a cosine: by default the mean over batch rows of each graph output's
cosine with the dense model's (the lowest over outputs); ``measure=`` takes another
(the MiniLM benchmark uses the pooled-embedding cosine).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .attended import MEASURED_KERNELS
from .errors import AttnoptError, InvalidParamsError, SiteNotApplicable
from .metrics import as_numpy
from .plan import DENSE, Plan, PlanGroup, SitePlan, apply_plan, fingerprint, site_signature

TUNABLE = ("segmented", "window", "memory", "hierarchical", "routed")
SINKS = 4
ROUTED_CHUNK = 16  # routed's local chunk: routed's default (64) would be a quarter of the keys at N = 256
# Exactness for budget 1.0: floating cosines of equal arrays can land an ulp under 1.
COSINE_SLACK = 1e-9
EXACT_REL_L2 = 1e-5  # relbias fuse replaces dense only when it measured this close


@dataclass(frozen=True)
class Candidate:
    kernel: str
    params: tuple  # sorted (name, value) pairs: hashable
    whole_site: bool = False  # it cannot serve a head group (relbias fuse rewires the site's mask)

    @property
    def param_dict(self) -> dict:
        return dict(self.params)

    @property
    def label(self) -> str:
        return " ".join([self.kernel, *(f"{k}={v}" for k, v in self.params)])


def candidate(kernel: str, whole_site: bool = False, **params) -> Candidate:
    from .passes import pass_class
    full = pass_class(kernel).spec().parse_params(params)
    return Candidate(kernel, tuple(sorted(full.items())), whole_site)


KEEP_DENSE = Candidate(DENSE, ())


def candidate_grid(site, n: int, variants=TUNABLE) -> list[Candidate]:
    """The candidates for one self-attention site of length ``n`` (dense not included).

    Sizes are powers of two from 16 up to n / 2 (below 16 only for short test models):
    at n / 2 and above a local variant already sees about as much as dense.
    """
    sizes = [s for s in (2 ** k for k in range(2, 16)) if 16 <= s <= n // 2] or \
        [s for s in (2 ** k for k in range(1, 16)) if s <= n // 2]
    # Sinks cost G keys and are what keeps a local variant close on real models (StreamingLLM); only
    # lengths too short for them go without.
    sinks = [SINKS] if n > 4 * SINKS else [0]
    out = []
    for kernel in variants:
        if kernel not in TUNABLE:
            raise InvalidParamsError(f"tune: {kernel} is not a tunable variant; choose from {', '.join(TUNABLE)}")
        for size in sizes:
            for g in sinks:
                if kernel == "segmented":
                    out.append(candidate(kernel, segment_size=size, sinks=g))
                elif kernel == "window" and size // 2 >= 1:
                    out.append(candidate(kernel, window=size // 2, sinks=g))  # |i - j| < W: about 2W keys
                elif kernel == "memory" and g:
                    out.append(candidate(kernel, segment_size=size, memory=size, sinks=g))
                elif kernel == "hierarchical":
                    out += _hierarchical(size, n, g)
        if kernel == "hierarchical" and n >= 128:  # blocks of 8: fewer exact keys, more pooled ones
            out += _hierarchical(8, n, sinks[-1])
        if kernel == "routed":
            out += _routed(n, sinks[-1])
    if site.relative_bias is not None:
        out.append(candidate("relbias", whole_site=True, kind="fuse"))
    return out


def _hierarchical(block: int, n: int, sinks: int) -> list[Candidate]:
    """One level, and two where there are blocks far enough to pool in pairs (distance >= 4 blocks):
    the second level halves the pooled entries for about the same error."""
    levels = (1, 2) if n // block > 4 else (1,)
    return [candidate("hierarchical", block=block, levels=lv, sinks=sinks) for lv in levels]


def _routed(n: int, sinks: int) -> list[Candidate]:
    """Clusters of 8 keys or more on average, each query routed to 1/8 .. 3/4 of them. Queries favour the
    smaller clusters, so the keys they score are fewer than those shares (measured, not assumed). The wide
    shares serve the sensitive heads: on MiniLM, 1/2 and 3/4 replaced most of the last layer's dense heads
    (BENCHMARKS, issue 11)."""
    out = []
    for c in (8, 16, 32):
        if n // c >= 8:
            for t in sorted({max(1, c // 8), c // 4, 3 * c // 8, c // 2, 3 * c // 4}):
                out.append(candidate("routed", n_clusters=c, top_k=t, chunk=min(ROUTED_CHUNK, n), sinks=sinks))
    return out


# ----------------------------------------------------------------------------- what is measured

def output_cosine(reference: dict, outputs: dict, feeds: dict) -> float:
    """The default end-to-end measure: per graph output, the mean over batch rows of the row's cosine
    with the dense model's; the lowest over outputs. Outputs pair by name, else by position."""
    others = list(outputs.values())
    worst = 1.0
    for i, (name, ref) in enumerate(reference.items()):
        a = np.atleast_1d(as_numpy(ref).astype(np.float64))
        b = np.atleast_1d(as_numpy(outputs[name] if name in outputs else others[i]).astype(np.float64))
        a, b = a.reshape(a.shape[0], -1), b.reshape(a.shape[0], -1)
        cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-300)
        worst = min(worst, float(cos.mean()))
    return worst


def _heads_first(array, site) -> np.ndarray:
    """A site's output as (H, everything else) float64, whatever its layout; (1, ...) if heads are unknown."""
    from .site import LAYOUT_BSD, LAYOUT_FLAT, permutes_bhsd

    a = as_numpy(array).astype(np.float64)
    h = site.num_heads
    if not isinstance(h, int):
        return a.reshape(1, -1)
    layout = site.output_layout
    if permutes_bhsd(layout) and a.ndim == 4 and a.shape[layout.index("h")] == h:
        return np.moveaxis(a, layout.index("h"), 0).reshape(h, -1)
    if site.output_layout == LAYOUT_BSD and a.shape[-1] % h == 0:
        return np.moveaxis(a.reshape(*a.shape[:-1], h, a.shape[-1] // h), -2, 0).reshape(h, -1)
    if site.output_layout == LAYOUT_FLAT and a.ndim == 3 and a.shape[0] % h == 0:
        return np.moveaxis(a.reshape(-1, h, *a.shape[1:]), 1, 0).reshape(h, -1)
    return a.reshape(1, -1)


def _tensor(array):
    """A value read out of a run as a float32 torch tensor."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(as_numpy(array), dtype=np.float32))


def _bhsd(array, layout: str, heads):
    """A site input as a (B, H, S, D) float32 tensor, by the fx rewrite's own layout rules
    (``fx_rewrite.to_bhsd``, run eagerly). None where they do not apply."""
    from .frontends.fx_rewrite import to_bhsd

    a = _tensor(array)
    if a.ndim != len(layout.replace("(bh)", "b")) or (a.ndim == 3 and not isinstance(heads, int)):
        return None
    try:
        return to_bhsd(a, layout, heads)
    except (SiteNotApplicable, RuntimeError):  # a layout no rewrite takes, or heads that do not divide the axis
        return None


def _key_padding(array, term, k):
    """A site's key padding term as the ops take it: (B | 1, M) additive float, like the rewrites build it."""
    import torch

    from .frontends.fx_rewrite import additive
    from .site import MASK_BOOLEAN, MASK_KEY_END

    t, kind = torch.from_numpy(np.ascontiguousarray(as_numpy(array))), term.kind
    if kind == MASK_KEY_END:  # (B,) counts: key j kept iff j < count
        t, kind = torch.arange(k.shape[2])[None, :] < t.reshape(-1, 1), MASK_BOOLEAN
    return torch.flatten(additive(t, k, kind, term.factor, term.fill), 1)


def _site_length(array, site) -> int | None:
    if isinstance(site.q_len, int):
        return site.q_len
    shape = np.shape(as_numpy(array))
    axes = site.output_layout.replace("(bh)", "b")  # one letter an axis: "bsd", "bhsd", "bhxsd"
    axis = axes.index("s") if "s" in axes else 1
    return int(shape[axis]) if len(shape) > axis else None


@dataclass
class SiteInfo:
    """One site as the search sees it: its GQA head units and the dense output's energy per unit."""
    site: object  # AttentionSite
    n: int | None
    units: int  # GQA groups (each a whole number of query heads); 1 where heads are unknown
    heads_per_unit: int
    energy: np.ndarray  # (units,) sum of squares of the dense output
    dense_entries: float  # score entries of dense attention over the whole site (all heads, all queries)
    candidates: list = field(default_factory=list)  # CandidateResult, KEEP_DENSE first
    skipped: str = ""  # why the site only keeps dense
    sensitivity: float = 1.0  # end-to-end loss per unit of the site's squared relative error

    @property
    def name(self) -> str:
        return self.site.name


@dataclass
class CandidateResult:
    """One candidate at one site, every head, the upstream sites dense."""
    site: str
    candidate: Candidate
    attended_fraction: float
    entries: float  # score entries over the whole site
    unit_err: np.ndarray  # (units,) sum of squared differences
    unit_dot: np.ndarray  # (units,) sum a·b
    unit_self: np.ndarray  # (units,) sum b·b
    rel_l2: float = 0.0
    cosine: float = 1.0
    end_to_end: float = 1.0  # the whole model's measure with only this change
    error: str = ""  # why it could not be measured (a refusal): then it is never chosen
    # The attended fraction per unit: equal across units for a fixed pattern (None, ``attended_fraction`` for
    # every unit); routed's differs per head. ``attended_fraction`` is its mean.
    unit_fraction: np.ndarray | None = None

    def fraction(self, u: int) -> float:
        return self.attended_fraction if self.unit_fraction is None else float(self.unit_fraction[u])

    def cost(self, u: int, units: int) -> float:
        """Unit u's score entries: its share of ``entries``, in proportion to its attended fraction."""
        share = self.entries / units
        return share if self.unit_fraction is None else share * self.fraction(u) / self.attended_fraction

    def to_dict(self) -> dict:
        return {"site": self.site, "kernel": self.candidate.kernel, "params": self.candidate.param_dict,
                "attended_fraction": self.attended_fraction, "rel_l2": self.rel_l2, "cosine": self.cosine,
                "end_to_end": self.end_to_end, **({"error": self.error} if self.error else {}),
                **({"unit_fraction": [float(x) for x in self.unit_fraction]} if self.unit_fraction is not None
                   else {})}


class _Evaluator:
    """Runs plans of one model on the calibration feeds, against the dense run kept once."""

    def __init__(self, model, example_inputs, inputs, seq_len, batch, seed, measure, read_qk=False, holdout=None):
        from .loaded import open_model

        self.model, self.example_inputs, self.measure = model, example_inputs, measure
        self.loaded = open_model(model, example_inputs)
        if not self.loaded.sites:
            raise AttnoptError("tune: no attention sites found in the model")
        self.frontend = self.loaded.frontend
        self.feeds = self.frontend.inputs(self.loaded, inputs, seq_len=seq_len, batch=batch, seed=seed,
                                          example_inputs=example_inputs)
        # Held-out feeds are read and checked before the sweep: a bad file fails in seconds, not after it.
        self.holdout = None if holdout is None else self.frontend.inputs(self.loaded, holdout,
                                                                         example_inputs=example_inputs)
        self._holdout_dense = None
        self.expose = [self.frontend.exposed_value(self.loaded, s) for s in self.loaded.sites]
        # (query, key, key padding or None) per site, read once in the dense run for the variants whose keys
        # depend on them (k-means skips padded keys, as the op does)
        self.qk = [self._qk_exposed(s) if read_qk else None for s in self.loaded.sites]
        outputs = {x.name for x in self.expose}
        extra = {e.name: e for pair in self.qk if pair for e in pair if e is not None and e.name not in outputs}
        self._qk_extra = list(extra.values())
        self.dense = self._run(self.loaded.model, self._qk_extra)
        self.runs = 0

    def _qk_exposed(self, site):
        refs = (site.query, site.key, site.key_padding.value if site.key_padding is not None else None,
                *(r for part in site.score_parts for r in (part.query, part.key)))
        try:
            return tuple(None if r is None else self.frontend.exposed_value(self.loaded, site, r) for r in refs)
        except AttnoptError:
            return None

    def _run(self, model, extra=(), feeds=None):
        with self.frontend.runner(model, expose=[*self.expose, *extra]) as r:
            return r.run(self.feeds if feeds is None else feeds)

    def site_qk(self, index: int, run=None):
        """(q (B, H, N, D), k (B, Hkv, M, D), key padding (B, M) additive or None) as float32 torch tensors of
        site ``index`` in the dense calibration run (or ``run``), or a string saying why they cannot be read."""
        site, exposed, run = self.loaded.sites[index], self.qk[index], run or self.dense
        if exposed is None or any(e is not None and e.name not in run.exposed for e in exposed):
            return "its query and key cannot be read out of a run"
        q = _bhsd(run.exposed[exposed[0].name], site.query_layout, site.num_heads)
        k = _bhsd(run.exposed[exposed[1].name], site.key_layout, site.kv_num_heads)
        if site.score_parts and q is not None and k is not None:  # the op's q and k (site.ScorePart)
            from .frontends.fx_rewrite import with_score_parts
            parts = [_tensor(run.exposed[e.name]) for e in exposed[3:]]
            q, k = with_score_parts(site, q, k, list(zip(parts[::2], parts[1::2])))
        if q is None or k is None or q.shape[0] != k.shape[0] or q.shape[-1] != k.shape[-1] \
                or q.shape[1] % k.shape[1]:
            return "its query and key have a layout the tuner cannot read"
        kp = None if exposed[2] is None else _key_padding(run.exposed[exposed[2].name], site.key_padding, k)
        if kp is not None and (kp.shape[-1] != k.shape[2] or kp.shape[0] not in (1, k.shape[0])):
            return "its key padding has a shape the tuner cannot read"
        return q, k, kp

    def check(self, plan: Plan, sites: list, feeds) -> "Check":
        """``plan`` on other feeds than the calibration ones: its end-to-end measure, and its attended fraction
        with routed's keys routed on those feeds' q and k (the dense run's, as in the sweep). Not counted in
        ``runs``, which counts calibration runs."""
        if feeds is self.holdout:  # retune checks each plan on the held-out feeds: their dense run once
            if self._holdout_dense is None:
                self._holdout_dense = self._run(self.loaded.model, self._qk_extra, feeds)
            dense = self._holdout_dense
        else:
            dense = self._run(self.loaded.model, self._qk_extra, feeds)
        keys = _plan_keys(self, sites, plan, dense)
        if all(s.is_dense for s in plan.sites):
            return Check(1.0, keys)
        with self.frontend.runner(apply_plan(self.model, plan, example_inputs=self.example_inputs).model) as r:
            return Check(float(self.measure(dense.outputs, r.run(feeds).outputs, feeds)), keys)

    def run_plan(self, plan: Plan):
        """(end-to-end measure, run result) of the model rewritten by ``plan``."""
        self.runs += 1
        if all(s.is_dense for s in plan.sites):
            return 1.0, self.dense
        result = apply_plan(self.model, plan, example_inputs=self.example_inputs)
        out = self._run(result.model)
        return float(self.measure(self.dense.outputs, out.outputs, self.feeds)), out


# ----------------------------------------------------------------------------- the result

@dataclass(frozen=True)
class Check:
    """A plan measured on inputs the tuner did not tune on."""
    end_to_end: float  # the end-to-end measure there
    attended_fraction: float  # as TuneResult's, with routed's keys routed on those inputs

    def to_dict(self) -> dict:
        return {"end_to_end": self.end_to_end, "attended_fraction": self.attended_fraction}


@dataclass
class TuneResult:
    plan: Plan
    sites: list[SiteInfo]
    end_to_end: float  # measured for the plan, whole model
    cost_vs_dense: float  # the plan's score entries over dense's, whole model
    attended_fraction: float  # mean over sites, heads and queries of the fraction of keys scored
    evaluated: list[dict]  # every whole plan the search ran: {"lambda", "cost_vs_dense", "end_to_end"}
    budget: float
    runs: int = 0  # model runs so far on the calibration inputs (the sweep's and the end-to-end checks')
    holdout: "Check | None" = None  # the plan on the held-out inputs, if tune was given them
    _evaluator: object = field(default=None, repr=False)
    _measure_name: str = ""

    def retune(self, budget: float, *, site_budget: float | None = None, progress=None,
               bisect_steps: int = 12) -> "TuneResult":
        """The search again at another budget, on the candidates this tuning already measured: only the
        end-to-end checks run (a handful of model runs instead of the whole sweep)."""
        _check_budgets(budget, site_budget)
        return _search(self._evaluator, self.sites, budget, budget if site_budget is None else site_budget,
                       self._measure_name, progress or (lambda *a, **k: None), bisect_steps)

    def check(self, inputs) -> "Check":
        """The plan on other inputs (a .npz path or name -> array, as ``tune``'s): its end-to-end measure and
        its attended fraction there (routed's keys depend on the data)."""
        ev = self._evaluator
        return ev.check(self.plan, self.sites, ev.frontend.inputs(ev.loaded, inputs, example_inputs=ev.example_inputs))

    @property
    def candidates(self) -> list[CandidateResult]:
        return [c for s in self.sites for c in s.candidates]

    def to_dict(self) -> dict:
        return {"budget": self.budget, "end_to_end": self.end_to_end, "cost_vs_dense": self.cost_vs_dense,
                "attended_fraction": self.attended_fraction, "runs": self.runs,
                "holdout": None if self.holdout is None else self.holdout.to_dict(),
                "plan": self.plan.to_dict(), "candidates": [c.to_dict() for c in self.candidates],
                "skipped": {s.name: s.skipped for s in self.sites if s.skipped},
                "evaluated": self.evaluated}


# ----------------------------------------------------------------------------- the search

def tune(model, budget: float = 0.98, *, inputs=None, seq_len: int | None = None, batch: int = 2, seed: int = 0,
         example_inputs=None, variants=TUNABLE, head_groups: bool = True,
         measure: Callable | None = None, measure_name: str = "", progress=None,
         bisect_steps: int = 12, site_budget: float | None = None, holdout=None) -> TuneResult:
    """The cheapest plan whose end-to-end measure on the calibration inputs stays >= ``budget``.

    ``model``: any model attnopt reads (ONNX path or model, GraphModule, ExportedProgram, nn.Module
    with ``example_inputs``). ``inputs``: calibration feeds (a .npz path or name -> array), else
    seeded random ones (``seq_len``, ``batch``). ``variants``: the tunable variants to try.
    ``head_groups=False`` gives each site one choice for all its heads. ``measure(dense_outputs,
    outputs, feeds) -> float``: the end-to-end cosine (default ``output_cosine``). ``progress(done,
    total, description)`` is called as the sweep goes. ``site_budget``: the cosine each site's own output
    must keep (upstream dense); default ``budget``. ``holdout``: inputs the tuner does not see (as
    ``inputs``); the plan's end-to-end measure on them is ``TuneResult.holdout``. The tuner fits its
    calibration inputs, so that is the figure to trust (on MiniLM with 8 calibration texts it was 0.003 to
    0.006 under the calibration figure; BENCHMARKS.md, issue 11).
    """
    _check_budgets(budget, site_budget)
    variants = tuple(variants)
    for v in variants:
        if v not in TUNABLE:
            raise InvalidParamsError(f"tune: {v!r} is not a tunable variant; choose from {', '.join(TUNABLE)}")
    site_budget = budget if site_budget is None else site_budget
    measure = measure or output_cosine
    report = progress or (lambda *a, **k: None)
    ev = _Evaluator(model, example_inputs, inputs, seq_len, batch, seed, measure,
                    read_qk=any(v in MEASURED_KERNELS for v in variants), holdout=holdout)
    sites = [_site_info(ev, i, head_groups, variants) for i in range(len(ev.loaded.sites))]
    _sweep(ev, sites, report)
    return _search(ev, sites, budget, site_budget, measure_name or _measure_name(measure), report, bisect_steps)


def _search(ev: _Evaluator, sites: list[SiteInfo], budget: float, site_budget: float, measure_name: str, report,
            bisect_steps: int) -> TuneResult:
    """Steps 3 and 4: choose per head group for a λ, check whole plans end to end, bisect λ."""
    signature = site_signature(ev.loaded.sites)
    total_dense = sum(s.dense_entries for s in sites)

    def plan_of(choice) -> Plan:
        return _make_plan(sites, choice, signature, budget, measure_name, ev)

    evaluated: list[dict] = []
    memo: dict = {}

    def evaluate(lam):
        choice = _assign(sites, lam, site_budget, total_dense)
        key = tuple(tuple(c) for c in choice)
        if key not in memo:
            e2e, out = ev.run_plan(plan_of(choice))
            memo[key] = (e2e, out, choice)
            evaluated.append({"lambda": lam, "cost_vs_dense": _cost(sites, choice) / total_dense, "end_to_end": e2e})
        return memo[key]

    # λ from "anything goes" to "keep everything": the cheapest plan first, then bisect on measured e2e.
    lo, hi = -6.0, 12.0
    best = None
    total = bisect_steps + 2
    for step in range(total):
        report(step, total, "end-to-end checks")
        if step == 0:
            lam_log = lo
        elif step == 1:
            lam_log = hi
        else:
            lam_log = (lo + hi) / 2
        e2e, out, choice = evaluate(10.0 ** lam_log)
        ok = e2e >= budget - COSINE_SLACK
        if ok and (best is None or _cost(sites, choice) < _cost(sites, best[2])):
            best = (e2e, out, choice)
        if step == 0 and ok:
            break
        if step >= 2:
            if ok:
                hi = lam_log
            else:
                lo = lam_log
    report(total, total, "end-to-end checks")
    if best is None:  # nothing measured within the budget: every site dense (exact by construction)
        best = evaluate(float("inf"))
    e2e, out, choice = best
    plan = plan_of(choice)
    cost = _cost(sites, choice)
    keys = _keys(sites, choice)
    plan.calibration["site_budget"] = site_budget
    plan.end_to_end = {"measure": e2e, "cost_vs_dense": cost / total_dense, "attended_fraction": keys,
                       "site_cosine_in_model": _cosines_in_model(plan, sites, out, ev)}
    holdout = None if ev.holdout is None else ev.check(plan, sites, ev.holdout)
    return TuneResult(plan, sites, e2e, cost / total_dense, keys, evaluated, budget, ev.runs, holdout, ev,
                      measure_name)


def _check_budgets(budget, site_budget) -> None:
    for what, value in (("budget", budget), ("site budget", budget if site_budget is None else site_budget)):
        if isinstance(value, bool) or not (isinstance(value, (int, float)) and 0.0 < value <= 1.0):
            raise InvalidParamsError(f"tune: the {what} is a cosine in (0, 1], got {value!r}")


def _measure_name(measure) -> str:
    return ("mean over batch rows of each output's cosine with dense (lowest output)" if measure is output_cosine
            else getattr(measure, "__doc__", None) or getattr(measure, "__name__", "custom")).strip().splitlines()[0]


def _site_info(ev: _Evaluator, index: int, head_groups: bool, variants) -> SiteInfo:
    from .attended import entries_per_query

    site = ev.loaded.sites[index]
    dense_out = ev.dense.exposed.get(ev.expose[index].name)
    n = _site_length(dense_out, site) if dense_out is not None else None
    per_head = _heads_first(dense_out, site) if dense_out is not None else None
    h, kv = site.num_heads, site.kv_num_heads
    known = isinstance(h, int) and isinstance(kv, int) and per_head is not None and per_head.shape[0] == h
    units = kv if (known and head_groups) else 1
    if per_head is None:
        energy = np.zeros(1)
    else:
        energy = (per_head ** 2).sum(1).reshape(units, -1).sum(1) if known else np.array([float((per_head ** 2).sum())])
    dense_entries = (entries_per_query(DENSE, {}, n, n, bool(site.causal)) * n * (h if isinstance(h, int) else 1)
                     if n else 1.0)
    info = SiteInfo(site, n, units, (h // units) if known else 1, energy, dense_entries)
    zero = np.zeros(units)
    info.candidates.append(CandidateResult(site.name, KEEP_DENSE, _dense_fraction(n, site), dense_entries, zero,
                                           energy.copy(), energy.copy()))
    reason = _why_dense_only(site, dense_out, n)
    if reason:
        info.skipped = reason
        return info
    qk = None
    for c in candidate_grid(site, n, variants):
        if c.kernel in MEASURED_KERNELS:
            qk = qk if qk is not None else ev.site_qk(index)
            info.candidates.append(_measured(info, c, qk, dense_entries))
            continue
        frac = _fraction(c.kernel, c.param_dict, n, site)
        if frac >= info.candidates[0].attended_fraction and not c.whole_site:
            continue  # never cheaper than dense (hierarchical with 3B >= N): not worth a run
        info.candidates.append(CandidateResult(site.name, c, frac, frac / _dense_fraction(n, site) * dense_entries,
                                               zero, zero, zero))
    return info


def _measured(info: SiteInfo, c: Candidate, qk, dense_entries: float) -> CandidateResult:
    """A data-dependent candidate with its attended fraction per unit, from the site's calibration q and k."""
    from .attended import measured_fraction

    zero = np.zeros(info.units)
    if isinstance(qk, str):
        return CandidateResult(info.name, c, 1.0, dense_entries, zero, zero, zero,
                               error=f"{c.kernel}'s keys depend on the data, and {qk}")
    q, k, key_padding = qk
    per_head = measured_fraction(c.kernel, c.param_dict, q, k, bool(info.site.causal),
                                 key_padding).double().numpy()
    unit = per_head.reshape(info.units, -1).mean(1) if per_head.size % info.units == 0 else \
        np.full(info.units, per_head.mean())
    dense = _dense_fraction(info.n, info.site)
    return CandidateResult(info.name, c, float(unit.mean()), float(unit.mean()) / dense * dense_entries, zero, zero,
                           zero, unit_fraction=unit)


def _dense_fraction(n, site) -> float:
    from .attended import attended_fraction
    return attended_fraction(DENSE, {}, n, n, bool(site.causal)) if n else 1.0


def _fraction(kernel: str, params: dict, n: int, site) -> float:
    """A fixed pattern's attended fraction at length n (relbias fuse scores every key, as dense)."""
    from .attended import attended_fraction
    return attended_fraction(DENSE if kernel == "relbias" else kernel, params, n, n, bool(site.causal))


def _why_dense_only(site, dense_out, n) -> str:
    if site.unsupported:
        return site.unsupported
    if dense_out is None:
        return "its output cannot be read out of a run"
    if site.past_len is not None:
        return "a KV-cache step: the tuner plans full sequences"
    if site.is_self_attention is False:
        return "cross-attention: the local variants need self-attention"
    if not n:
        return "its length is unknown"
    return ""


def _sweep(ev: _Evaluator, sites: list[SiteInfo], report) -> None:
    """Each candidate alone at its site, all heads: per-unit error and the end-to-end effect."""
    todo = [(s, c) for s in sites for c in s.candidates[1:] if not c.error]
    for i, (info, res) in enumerate(todo):
        report(i, len(todo), f"{info.name}: {res.candidate.label}")
        group = PlanGroup(0, info.site.num_heads if isinstance(info.site.num_heads, int) else 0,
                          res.candidate.kernel, res.candidate.param_dict)
        plan = _bare_plan(ev, {info.name: SitePlan(info.name, (group,))})
        try:
            e2e, out = ev.run_plan(plan)
        except AttnoptError as e:
            res.error = str(e)
            continue
        index = [s.name for s in ev.loaded.sites].index(info.name)
        name = ev.expose[index].name
        a = _heads_first(ev.dense.exposed[name], info.site)
        b = _heads_first(out.exposed[name], info.site) if name in out.exposed else None
        if b is None or b.shape != a.shape:
            res.error = "its output could not be read out of the rewritten model"
            continue
        fold = lambda x: x.sum(1).reshape(info.units, -1).sum(1)  # noqa: E731 - heads into GQA units
        res.unit_err, res.unit_dot, res.unit_self = fold((a - b) ** 2), fold(a * b), fold(b * b)
        res.end_to_end = e2e
        res.rel_l2, res.cosine = mix_error(info, [res] * info.units)
    report(len(todo), len(todo), "measured")
    for info in sites:  # loss per unit of squared relative error, from the candidates that changed something
        rel2 = sum(c.rel_l2 ** 2 for c in info.candidates[1:] if not c.error)
        loss = sum(max(0.0, 1.0 - c.end_to_end) for c in info.candidates[1:] if not c.error)
        info.sensitivity = loss / rel2 if rel2 > 0 and loss > 0 else 1.0


def _bare_plan(ev: _Evaluator, sites: dict) -> Plan:
    return Plan(fingerprint(site_signature(ev.loaded.sites)), site_signature(ev.loaded.sites), list(sites.values()))


def mix_error(info: SiteInfo, chosen: list[CandidateResult]) -> tuple[float, float]:
    """(relative L2, cosine) of the site's output when unit u goes through chosen[u]: exact, heads being
    independent of each other."""
    aa = float(info.energy.sum())
    err = sum(float(c.unit_err[u]) for u, c in enumerate(chosen))
    dot = sum(float(c.unit_dot[u]) for u, c in enumerate(chosen))
    bb = sum(float(c.unit_self[u]) for u, c in enumerate(chosen))
    rel = math.sqrt(err / aa) if aa > 0 else (0.0 if err == 0 else float("inf"))
    cos = dot / math.sqrt(aa * bb) if aa > 0 and bb > 0 else (1.0 if err == 0 else 0.0)
    return rel, min(1.0, cos)


def _usable(info: SiteInfo) -> list[int]:
    return [i for i, c in enumerate(info.candidates) if not c.error and not c.candidate.whole_site]


def _assign(sites: list[SiteInfo], lam: float, budget: float, total_dense: float) -> list[list[int]]:
    """Per site, per unit: the candidate index minimising cost + λ·sensitivity·error; each site's own
    cosine kept >= budget (its λ raised until it is)."""
    choice = []
    for info in sites:
        usable = _usable(info)
        aa = float(info.energy.sum()) or 1.0
        site_lam = lam
        while True:
            picks = []
            for u in range(info.units):
                def score(i, u=u):
                    c = info.candidates[i]
                    cost = c.cost(u, info.units) / total_dense
                    return cost + site_lam * info.sensitivity * float(c.unit_err[u]) / aa if math.isfinite(site_lam) \
                        else (float(c.unit_err[u]), cost)
                picks.append(min(usable, key=score))
            _, cos = mix_error(info, [info.candidates[i] for i in picks])
            if cos >= budget - COSINE_SLACK or not math.isfinite(site_lam):
                break
            site_lam = site_lam * 4 if site_lam < 1e15 else float("inf")
        if all(i == 0 for i in picks):
            fuse = [i for i, c in enumerate(info.candidates) if c.candidate.whole_site and not c.error
                    and c.rel_l2 <= EXACT_REL_L2]
            if fuse:
                picks = [fuse[0]] * info.units
        choice.append(picks)
    return choice


def _cost(sites: list[SiteInfo], choice) -> float:
    return sum(info.candidates[i].cost(u, info.units) for info, picks in zip(sites, choice)
               for u, i in enumerate(picks))


def _keys(sites: list[SiteInfo], choice) -> float:
    fr = [info.candidates[i].fraction(u) for info, picks in zip(sites, choice) for u, i in enumerate(picks)
          for _ in range(info.heads_per_unit)]
    return float(np.mean(fr)) if fr else 1.0


def _plan_keys(ev: _Evaluator, sites: list[SiteInfo], plan: Plan, run) -> float:
    """``plan``'s attended fraction as ``_keys`` counts it (mean over sites and query heads), on the inputs of
    ``run`` (a dense run exposing the sites' outputs, q and k): routed's keys measured there, the fixed
    patterns at that run's lengths."""
    from .attended import measured_fraction

    planned = {s.name: s for s in plan.sites}
    fr = []
    for index, info in enumerate(sites):
        heads = info.units * info.heads_per_unit
        out = run.exposed.get(ev.expose[index].name)
        n = _site_length(out, info.site) if out is not None else info.n
        if not n:
            fr += [info.candidates[0].fraction(0)] * heads
            continue
        groups = planned[info.name].groups if info.name in planned else (PlanGroup(0, heads, DENSE),)
        qk = None  # read once a site, for all its routed groups
        for g in groups:
            stop = g.stop if g.stop > g.start else heads  # a site of unknown heads plans [0, 0) for all
            if g.kernel in MEASURED_KERNELS:
                qk = qk or ev.site_qk(index, run)  # the sweep measured this kernel here, so they can be read
                q, k, kp = qk
                rep = q.shape[1] // k.shape[1]
                fr += measured_fraction(g.kernel, g.params, q[:, g.start:stop], k[:, g.start // rep:stop // rep],
                                        bool(info.site.causal), kp).tolist()
            else:
                fr += [_fraction(g.kernel, g.params, n, info.site)] * (stop - g.start)
    return float(np.mean(fr)) if fr else 1.0


def _make_plan(sites: list[SiteInfo], choice, signature, budget, measure_name, ev) -> Plan:
    """The plan of a choice: adjacent units with the same candidate merge into one head group."""
    planned = []
    for info, picks in zip(sites, choice):
        if all(i == 0 for i in picks):
            continue
        rep = info.heads_per_unit
        stop_all = info.site.num_heads if isinstance(info.site.num_heads, int) else 0
        aa = float(info.energy.sum())
        groups, start = [], 0
        for u in range(info.units + 1):
            if u == info.units or (u > start and picks[u] != picks[start]):
                c = info.candidates[picks[start]]
                err = float(sum(c.unit_err[start:u]))
                stop = u * rep if u < info.units else stop_all
                frac = float(np.mean([c.fraction(x) for x in range(start, u)]))
                groups.append(PlanGroup(start * rep, stop, c.candidate.kernel, c.candidate.param_dict,
                                        frac, math.sqrt(err / aa) if aa > 0 else 0.0))
                start = u
        rel, cos = mix_error(info, [info.candidates[i] for i in picks])
        frac = float(np.mean([info.candidates[i].fraction(u) for u, i in enumerate(picks)]))
        planned.append(SitePlan(info.name, tuple(groups), frac, rel, cos))
    calib = {"inputs": {k: list(np.shape(as_numpy(v))) for k, v in ev.feeds.items()},
             "lengths": sorted({s.n for s in sites if s.n})}
    return Plan(fingerprint(signature), signature, planned, budget, measure_name, calib)


def _cosines_in_model(plan: Plan, sites: list[SiteInfo], out, ev: _Evaluator) -> dict:
    """Each planned site's cosine inside the final model, upstream sites rewritten too: the compounded error
    (a plan's per-site ``cosine`` is the site's own, with dense upstream)."""
    names = [s.name for s in ev.loaded.sites]
    found = {}
    for sp in plan.sites:
        index = names.index(sp.name)
        value = ev.expose[index].name
        if value in out.exposed:
            a = _heads_first(ev.dense.exposed[value], sites[index].site).ravel()
            b = _heads_first(out.exposed[value], sites[index].site).ravel()
            found[sp.name] = float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-300))
    return found
