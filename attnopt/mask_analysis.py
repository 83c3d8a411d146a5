"""Structured masks: split each site's mask terms into causal, key padding and a dense remainder.

VARIANTS.md, "Structured masks". Two rules, no per-model op sequences:

1. **Shape.** A term that broadcasts as (B | 1, 1, 1, M) against the scores is
   key padding as it stands (BERT's extended mask).
2. **Probing.** Hugging Face decoders build causal-plus-padding N×M masks at run
   time from ``attention_mask`` and positions, and every exporter writes that
   construction differently. So the construction is not read, it is *run*: a
   term the View could not fold is evaluated through the frontend's probe (only
   the nodes it depends on) on a few probe inputs: random 0/1 patterns for every
   2-D integer or boolean input (left and right padding, random keys), two
   sequence lengths when the model's shapes are symbolic, and one past the
   largest one-element integer constant of the construction (a sliding window of
   4096 is plain causal at every small length). One hypothesis is accepted only
   if it holds exactly on every probe:

       allowed(b, h, i, j) == [causal: j <= i + M - N] and [padding: key_mask[b, j] != 0]
                              and [window: j > i + M - N - W]

   with ``key_mask`` one of those 2-D inputs (for a boolean one also read as
   True = padding), and W one of the construction's integer constants or one
   more (j > i − W or j ≥ i − W as written; a causal
   sliding window: Mistral's, Gemma's and GPT-OSS's local layers), or, where
   those all fail, a length the probe's values show (the dynamo exporter at
   static shapes computes the positions ahead, leaving no such constant). A window term
   stays among the site's terms, marked with W and its key padding: an op that
   sees no key W or more positions back is run causal with that key padding
   instead (``lowering.window_terms``), any other reads the term as it is.
   Rows the hypothesis leaves without any allowed key are not compared (HF
   un-masks them to avoid NaN); what the original gives them is recorded
   instead: when every blocked entry of the one structured term is the same
   finite fill of at most -1e30 (HF's eager finfo.min), such a row is uniform
   over every key, and the site says so (``AttentionSite.blocked_rows``; the
   rewrites add the mean of the values after the op). A term with one row broadcast over
   the queries is never causal. Additive terms must be exactly 0 where allowed
   and <= MASK_FILL_MAX where blocked. A term that fails every hypothesis, or
   whose evaluation fails, stays dense. A term the View did fold (an exporter
   folds the construction at static shapes) is checked the same way, without a
   probe, for plain causality or a causal window as wide as its last row. Masks
   that are graph inputs are left as they are.

All candidate terms are evaluated in one probe (one pruned model, a handful of
runs), and only when a candidate exists; sites whose term is the same value
share the verdict. Set ATTNOPT_STRUCTURED_MASKS=0 (or pass ``enabled=False``)
to leave every term dense, e.g. to measure what the structure saves.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

from .inputs import dim_roles
from .match import MASK_FILL_MAX
from .site import (BLOCKED_ROWS_GROUPS, BLOCKED_ROWS_UNIFORM, BLOCKED_ROWS_ZERO, LAYOUT_FLAT, MASK_ADDITIVE,
                   MASK_BOOLEAN, MASK_BOOLEAN_BLOCKED, MASK_NONZERO_KEEP, AttentionSite, MaskTerm, RelativeBias,
                   ValueRef)

ENV_SWITCH = "ATTNOPT_STRUCTURED_MASKS"

# Probe sizes. Batch > 1 so padding patterns differ per row; the two sequence configurations
# (used only when the model's shapes are symbolic) give every symbolic dim a size distinct from
# the other's and from the other symbols'.
_PROBE_BATCH = (3, 2)
_PROBE_SEQ = ((7, 3), (12, 2))  # (first size, step per further symbol)
_PATTERNS = ("right", "left", "random")
# Integer constants in a mask's construction may be lengths (a sliding window of 4096) that the
# small probes never reach. With symbolic shapes, a term is also probed at a length past its
# largest such constant, up to this length; beyond it the term stays dense. Larger magnitudes
# are "infinity" sentinels (Slice ends), not lengths.
_MAX_HORIZON_PROBE = 4098
_SENTINEL = 1 << 30
_MAX_WINDOWS = 8  # sliding-window lengths tried per term (a construction's smallest integer constants)
# A fill at or below this swallows any score added to it in float32 (finfo.min is -3.4e38; its spacing there
# is 2^104), so a row of nothing else softmaxes to uniform weights.
_SWALLOWING_FILL = -1e30
_POSITION_NAME = re.compile(r"position|cache_pos", re.I)


@dataclass(frozen=True)
class _Verdict:
    causal: bool
    key_padding: MaskTerm | None
    window: int = 0  # the term also holds a causal sliding window of this many keys (MaskTerm.window)
    # the one value at every entry the term blocks, None where they differ (AttentionSite.blocked_rows)
    fill: float | None = None

    @property
    def uniform_rows(self) -> bool:
        """Every blocked entry is one fill that swallows the scores: alone, the term leaves a row it blocks whole
        uniform (AttentionSite.blocked_rows)."""
        return self.key_padding is not None and _swallows(self.fill)


@dataclass(frozen=True)
class _Hypothesis:
    causal: bool
    pad: ValueRef | None = None  # the (B, M) graph input, None for causal only
    inverted: bool = False  # boolean inputs only: True marks padding (torch's key_padding_mask)
    window: int = 0  # with causal: keys j > p − window only (a sliding window); 0: none

    def verdict(self, pad_dtype) -> _Verdict:
        if self.pad is None:
            return _Verdict(self.causal, None, self.window)
        if pad_dtype == np.bool_:
            kind = MASK_BOOLEAN_BLOCKED if self.inverted else MASK_BOOLEAN
        else:
            kind = MASK_NONZERO_KEEP
        return _Verdict(self.causal, MaskTerm(self.pad, kind), self.window)


@dataclass
class _Candidate:
    """One distinct mask value to probe, with how the scores see it."""
    ref: ValueRef
    kind: str
    scores_rank: int
    num_heads: object
    hypotheses: list
    horizon: int = 0  # largest integer constant the construction reads (0: none above 1)
    value: np.ndarray | None = None  # the term's value when the View folded it: no probe needed
    fill: float = float("-inf")  # a boolean term's fill (MaskTerm.fill)


def enabled_by_default() -> bool:
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "off", "no")


def refine_structured_masks(loaded, *, enabled: bool | None = None) -> list[AttentionSite]:
    """The sites of ``loaded`` with their mask terms in structured form (VARIANTS.md, "Structured masks")."""
    sites = list(loaded.sites)
    if not (enabled_by_default() if enabled is None else enabled) or not any(s.masks for s in sites):
        return sites
    view = loaded.view
    candidates: dict[ValueRef, _Candidate] = {}
    for site in sites:
        for term in site.masks:
            # A term added to the scores viewed in another shape, or to scores with extra batching axes (whose
            # analysis here reads 4-D scores), stays a dense term.
            if term.view is not None or site.extra_axes:
                continue
            if term.value not in candidates and not _is_key_padding_shape(view, site, term):
                cand = _candidate(view, site, term)
                if cand is not None:
                    candidates[term.value] = cand
    computed = [c for c in candidates.values() if c.value is None]
    # Key padding terms need no verdict, but where causality comes from another term, what they add decides what a
    # row they block whole gets (_blocked_groups): the probe reads their fill too.
    fill_refs = list(dict.fromkeys(
        t.value for site in sites if site.causal_term is not None or any(m.value in candidates for m in site.masks)
        for t in site.masks if t.kind == MASK_ADDITIVE and t.view is None and _is_key_padding_shape(view, site, t)))
    verdicts, fills = _probe(loaded, computed, fill_refs) if computed or fill_refs else ({}, {})
    for cand in candidates.values():
        if cand.value is not None:
            hyp = next((h for h in cand.hypotheses if _holds(cand.value, cand, h, None)), None)
            if hyp is not None:
                verdicts[cand.ref] = replace(hyp.verdict(None), fill=_blocked_fill([({}, [cand.value])], 0, cand,
                                                                                   hyp, None))
    sites = [_refined(view, site, verdicts, fills) for site in sites]
    return find_relative_biases(loaded, sites)


# --------------------------------------------------------------------------- shapes

def _scores_rank(site: AttentionSite, term_rank: int | None = None) -> int:
    """The rank of the scores a term is added to: (B·H, N, M) for flat layouts, unless the term
    is 4-D (BLOOM views its flat scores as (B, H, N, M) to add the mask)."""
    return 3 if site.query_layout == LAYOUT_FLAT and term_rank != 4 else 4


def _aligned_shape(view, site: AttentionSite, ref: ValueRef):
    """The term's shape right-aligned to the scores' rank (numpy broadcasting), or None."""
    shape = view.shape(ref)
    if shape is None:
        return None
    rank = _scores_rank(site, len(shape))
    if len(shape) > rank:
        return None
    return (1,) * (rank - len(shape)) + tuple(shape)


def _is_key_padding_shape(view, site: AttentionSite, term: MaskTerm) -> bool:
    """(B | 1, 1, 1, M) against (B, H, N, M) scores: one value per key, the same for every head and query."""
    if term.kind not in (MASK_ADDITIVE, MASK_BOOLEAN, MASK_BOOLEAN_BLOCKED) or term.factor <= 0:
        return False
    shape = _aligned_shape(view, site, term.value)
    if shape is None or len(shape) != 4 or shape[1] != 1 or shape[2] != 1:
        return False
    m = shape[3]
    return not (m == 1 and site.kv_len != 1)  # a (.., 1) term is a per-row constant, not per key


# --------------------------------------------------------------------------- candidates

def _candidate(view, site: AttentionSite, term: MaskTerm) -> _Candidate | None:
    if term.factor <= 0 or term.kind not in (MASK_ADDITIVE, MASK_BOOLEAN, MASK_BOOLEAN_BLOCKED, MASK_NONZERO_KEEP):
        return None
    shape = view.shape(term.value)
    if shape is not None and not 2 <= len(shape) <= _scores_rank(site, len(shape)):
        return None
    rank, heads = _scores_rank(site), site.num_heads  # the flat rank; _holds widens it for 4-D values
    const = view.const(term.value)
    if const is not None:  # a folded constant is its own evidence: is it exactly causal, or a causal window?
        value = np.asarray(const)
        hyps = [_Hypothesis(True)] + [_Hypothesis(True, window=w) for w in _folded_window(value, term.kind)]
        return _Candidate(term.value, term.kind, rank, heads, hyps, value=value, fill=term.fill)
    if view.op(term.value.node) == "input":
        return None  # a mask the caller passes in: its values are whatever the caller gives
    inputs, lengths = _ancestry(view, term.value)
    pads = [r for r in inputs if _is_padding_input(view, r)]
    hyps = []
    for pad in pads:
        for causal in (True, False):
            hyps.append(_Hypothesis(causal, pad))
            if view.dtype(pad) == "bool":
                hyps.append(_Hypothesis(causal, pad, inverted=True))
    hyps.append(_Hypothesis(True))
    # A causal sliding window whose length is one of the construction's integer constants (after the plain
    # hypotheses: a window no probe reaches is plain causality, which is exact at every length then). HF
    # writes j > i − W; a model written as j ≥ i − W keeps W + 1 keys, so both are tried.
    windows = sorted({w + extra for w in lengths[:_MAX_WINDOWS] for extra in (0, 1)})
    hyps += [replace(h, window=w) for w in windows for h in list(hyps) if h.causal]
    return _Candidate(term.value, term.kind, rank, heads, hyps, max(lengths, default=0), fill=term.fill)


def _folded_window(value: np.ndarray, kind: str) -> list[int]:
    """The one window a folded term could hold: the keys its last query row allows, when that is a run
    short of the row (then ``_holds`` checks every row against it); else none."""
    if value.ndim < 2 or value.shape[-2] < 2:
        return []
    last = value.reshape(-1, *value.shape[-2:])[0, -1]
    allowed = (last == 0) if kind == MASK_ADDITIVE else last.astype(bool)
    if kind == MASK_BOOLEAN_BLOCKED:
        allowed = ~allowed
    w = int(allowed.sum())
    return [w] if 0 < w < allowed.size else []


def _ancestry(view, ref: ValueRef) -> tuple[list[ValueRef], list[int]]:
    """(graph inputs the value depends on, through shapes too, in graph order; its integer constants above 1,
    the lengths it may compare against, in increasing order)."""
    seen, stack, found, lengths = set(), [ref.node], [], set()
    while stack:
        nid = stack.pop()
        if nid in seen:
            continue
        seen.add(nid)
        op = view.op(nid)
        if op == "input":
            found.append(nid)
        elif op == "constant":
            lengths.add(_int_extent(view, ValueRef(nid)))
        stack.extend(view.g.predecessors(nid))
    return [ValueRef(n) for n in sorted(found, key=lambda n: view.info(n).order)], sorted(x for x in lengths if x > 1)


def _int_extent(view, ref: ValueRef) -> int:
    """|c| for a one-element integer constant c (a length such as a window), sentinels aside; else 0.

    Tables (a position-id buffer, arange(max_positions)) and shape vectors are not lengths
    the mask compares against, and are left out.
    """
    shape, dtype = view.shape(ref), view.dtype(ref)
    if shape is None or not all(isinstance(d, int) for d in shape) or int(np.prod(shape)) != 1 \
            or (dtype is not None and "int" not in str(dtype)):
        return 0  # a constant whose shape the view does not know (a ConstantOfShape) is no length either
    c = view.const(ref)
    if c is None or np.size(c) != 1 or not np.issubdtype(np.asarray(c).dtype, np.integer):
        return 0
    value = abs(int(np.asarray(c).reshape(())))
    return value if value < _SENTINEL else 0


def _is_padding_input(view, ref: ValueRef) -> bool:
    shape, dtype = view.shape(ref), view.dtype(ref)
    if shape is None or len(shape) != 2 or dtype is None or _is_float(dtype):
        return False
    return not _POSITION_NAME.search(view.info(ref.node).name or ref.node)


def _is_float(dtype) -> bool:
    return dtype is None or any(k in str(dtype) for k in ("float", "double", "half"))


# --------------------------------------------------------------------------- probing

def _probe(loaded, candidates: Sequence[_Candidate],
           fill_refs: Sequence[ValueRef] = ()) -> tuple[dict[ValueRef, _Verdict], dict[ValueRef, float | None]]:
    """The verdicts on the candidates, and the one value each of ``fill_refs`` (key padding terms) holds at the
    keys it blocks (None where it holds several)."""
    try:
        probe = loaded.frontend.value_probe(loaded, [c.ref for c in candidates] + list(fill_refs))
        symbols = _symbols(probe.inputs)
        if symbols:  # lengths are free: a construction may read lengths the small probes never reach
            candidates = [c for c in candidates if c.horizon + 2 <= _MAX_HORIZON_PROBE]
        if not candidates and not fill_refs:
            return {}, {}
        horizon = max((c.horizon for c in candidates), default=0) if symbols else 0
        runs = [(f, probe.run(f)) for f in _probe_feeds(probe.inputs, symbols, horizon)]
    except Exception:  # a construction the probe cannot run stays dense
        return {}, {}
    index = {ref: k for k, ref in enumerate(probe.refs)}
    pads = {p.ref: p for p in probe.inputs}
    fills = {ref: _one_blocked_value(out[index[ref]] for _, out in runs) for ref in fill_refs}
    verdicts = {}
    for cand in candidates:
        k = index[cand.ref]
        for hyp in [*cand.hypotheses, *_seen_window_hypotheses(runs, k, cand)]:
            if hyp.pad is not None and hyp.pad not in pads:
                continue
            name = None if hyp.pad is None else pads[hyp.pad].name
            if _holds_everywhere(runs, k, cand, hyp, name):
                verdict = hyp.verdict(pads[hyp.pad].dtype if hyp.pad is not None else None)
                verdicts[cand.ref] = replace(verdict, fill=_blocked_fill(runs, k, cand, hyp, name))
                break
    return verdicts, fills



def _holds_everywhere(runs, k: int, cand, hyp, name) -> bool:
    """Whether ``hyp`` holds for the candidate on every probe run; a term it cannot read stays dense (exact)."""
    try:
        return all(_holds(out[k], cand, hyp, None if name is None else feeds[name]) for feeds, out in runs)
    except Exception:  # noqa: BLE001
        return False


def _seen_window_hypotheses(runs, k: int, cand) -> list[_Hypothesis]:
    """Causal-window hypotheses for the window lengths the probe's values show and no integer constant of the
    construction names: the dynamo exporter at static shapes computes the positions ahead, so the length
    survives only inside folded tensors. Each batch row's last query row is read as ``_folded_window`` reads a
    folded term (padding shortens some rows' counts: those lengths fail on the other probes). Tried after the
    candidate's own hypotheses, so only for a term they all failed."""
    tried = {h.window for h in cand.hypotheses}
    seen: set[int] = set()
    for _, out in runs:
        a = np.asarray(out[k])
        for rows in a.reshape(-1, *a.shape[-2:]) if a.ndim >= 2 else ():
            seen.update(w for w in _folded_window(rows, cand.kind) if w not in tried)
    plain = [h for h in cand.hypotheses if h.causal and not h.window]
    return [replace(h, window=w) for w in sorted(seen)[:_MAX_WINDOWS] for h in plain]


def _blocked_fill(runs, k: int, cand, hyp, name) -> float | None:
    """The one value at every entry the (holding) hypothesis blocks, or None where they differ. HF's eager masks
    put finfo.min there, which swallows any score added to it (_swallows)."""
    if cand.kind != MASK_ADDITIVE:
        return cand.fill
    fills = set()
    try:
        for feeds, out in runs:
            a, expected = _aligned(out[k], cand, hyp, None if name is None else feeds[name])
            fills |= set(np.unique(a[~expected].astype(np.float64)).tolist())
    except Exception:  # noqa: BLE001  a value _holds read: any failure here only keeps the zero rows
        return None
    return fills.pop() if len(fills) == 1 else None


def _one_blocked_value(values) -> float | None:
    """The one value an additive term holds wherever it blocks (at or below MASK_FILL_MAX) across ``values``, or
    None where there are several."""
    blocked = {float(x) for a in values for x in np.unique(np.asarray(a, np.float64)) if x <= MASK_FILL_MAX}
    return blocked.pop() if len(blocked) == 1 else None


def _swallows(fill: float | None) -> bool:
    """A finite fill so large that adding it to a score leaves the fill (float32), or None (not one fill)."""
    return fill is not None and bool(np.isfinite(fill)) and fill <= _SWALLOWING_FILL


def _symbols(inputs) -> dict[str, str]:
    """Symbolic dim -> 'batch' | 'seq', over the probe's inputs (an unknown dim is its own symbol)."""
    symbols: dict[str, str] = {}
    for p in inputs:
        if p.shape is None:
            raise ValueError(f"input {p.name} has an unknown rank")
        for (axis, d), role in zip(enumerate(p.shape), dim_roles(p.shape)):
            if not isinstance(d, int):
                symbols.setdefault(_symbol(p, axis, d), role)
    return symbols


def _symbol(p, axis: int, d) -> str:
    return d if d is not None else f"{p.name}:{axis}"


def _probe_feeds(inputs, symbols: dict[str, str], horizon: int) -> list[dict[str, np.ndarray]]:
    """Seeded probe inputs: per size configuration, one feed per padding pattern.

    Static shapes get one configuration (the model runs at no other size); symbolic ones
    two, plus one past ``horizon`` (batch 1, random keys) when it exceeds the small sizes.
    """
    if not inputs:
        return [{}]  # a construction from constants alone: one run says everything
    configs: list[tuple[dict, tuple]] = []
    for c in range(2 if symbols else 1):
        configs.append((_sizes(symbols, _PROBE_BATCH[c], *_PROBE_SEQ[c]), _PATTERNS))
    if symbols and horizon + 2 > max(first for first, _ in _PROBE_SEQ):
        configs.append((_sizes(symbols, 1, horizon + 2, 1), ("random",)))
    rng = np.random.default_rng(0)
    feeds = []
    for sizes, patterns in configs:
        for pattern in patterns:
            feed = {}
            for p in inputs:
                shape = tuple(d if isinstance(d, int) else sizes[_symbol(p, a, d)] for a, d in enumerate(p.shape))
                feed[p.name] = _probe_array(p, shape, pattern, rng)
            feeds.append(feed)
    return feeds


def _sizes(symbols: dict[str, str], batch: int, first: int, step: int) -> dict[str, int]:
    sizes, k = {}, 0
    for sym, role in symbols.items():
        if role == "batch":
            sizes[sym] = batch
        else:
            sizes[sym] = first + step * k
            k += 1
    return sizes


def _probe_array(p, shape: tuple, pattern: str, rng: np.random.Generator) -> np.ndarray:
    dtype = np.dtype(p.dtype)
    if len(shape) == 2 and not np.issubdtype(dtype, np.floating) and not _POSITION_NAME.search(p.name):
        return _padding_pattern(shape, pattern, rng).astype(dtype)
    if _POSITION_NAME.search(p.name) and np.issubdtype(dtype, np.integer):
        n = shape[-1] if shape else 1
        return np.broadcast_to(np.arange(n, dtype=dtype), shape).copy()
    if np.issubdtype(dtype, np.floating):
        return rng.standard_normal(shape).astype(dtype)
    if dtype == np.bool_:
        return np.ones(shape, dtype)
    return np.zeros(shape, dtype)


def _padding_pattern(shape: tuple, pattern: str, rng: np.random.Generator) -> np.ndarray:
    """(B, M) 0/1 keys: right or left padding of a random length per row, or random keys; >= 1 key per row."""
    b, m = shape
    keep = np.ones(shape, np.int64)
    for row in range(b):
        if pattern == "random":
            keep[row] = rng.random(m) < 0.6
            keep[row, rng.integers(m)] = 1
            continue
        pad = int(rng.integers(1, m)) if row else 0
        if pad and pattern == "right":
            keep[row, m - pad:] = 0
        elif pad:
            keep[row, :pad] = 0
    return keep


def _aligned(value: np.ndarray, cand: _Candidate, hyp: _Hypothesis, pad: np.ndarray | None):
    """(the term's value, the hypothesis's allowed entries) broadcast to one (B, H, N, M) shape; None where the
    value cannot be read that way."""
    a = np.asarray(value)
    rank = 4 if a.ndim == 4 else cand.scores_rank
    if not 2 <= a.ndim <= rank:
        return None
    a = a.reshape((1,) * (rank - a.ndim) + a.shape)
    if rank == 3:  # (B·H, N, M) scores: unflatten the heads to compare per batch row
        if a.shape[0] == 1:
            a = a[None]
        elif isinstance(cand.num_heads, int) and a.shape[0] % cand.num_heads == 0:
            a = a.reshape(a.shape[0] // cand.num_heads, cand.num_heads, *a.shape[1:])
        else:
            return None
    n, m = a.shape[-2:]
    if hyp.causal and n == 1:
        return None  # one row broadcast over every query cannot be causal (at N = 1 causality is moot)
    expected = np.ones((1, 1, n, m), bool)
    if hyp.causal:
        expected &= np.tril(np.ones((n, m), bool), k=m - n)
    if hyp.window:  # j > i + M − N − W
        expected &= ~np.tril(np.ones((n, m), bool), k=m - n - hyp.window)
    if hyp.pad is not None:
        if pad.ndim != 2 or pad.shape[1] != m:
            return None
        keys = (pad == 0) if hyp.inverted else (pad != 0)
        expected = expected & keys[:, None, None, :]
    try:
        return np.broadcast_arrays(a, expected)
    except ValueError:
        return None


def _holds(value: np.ndarray, cand: _Candidate, hyp: _Hypothesis, pad: np.ndarray | None) -> bool:
    aligned = _aligned(value, cand, hyp, pad)
    if aligned is None:
        return False
    a, expected = aligned
    rows = expected.any(axis=-1)
    if not rows.any():
        return False
    a, expected = a[rows], expected[rows]
    if cand.kind == MASK_ADDITIVE:
        if a.dtype == np.bool_:
            return False
        vals = a.astype(np.float64)
        return bool(np.all(vals[expected] == 0) and np.all(vals[~expected] <= MASK_FILL_MAX))
    allowed = a.astype(bool)
    if cand.kind == MASK_BOOLEAN_BLOCKED:
        allowed = ~allowed
    return bool(np.array_equal(allowed, expected))


# --------------------------------------------------------------------------- assembly

def _refined(view, site: AttentionSite, verdicts: dict[ValueRef, _Verdict],
             fills: dict[ValueRef, float | None]) -> AttentionSite:
    causal, key_padding, kept = site.causal, site.key_padding, []
    # Rows the structured term blocks entirely are uniform where that one term swallows the scores alone; where
    # more terms block them (or the form's own causality), what they add decides (_blocked_groups).
    used = [verdicts[t.value] for t in site.masks if t.value in verdicts]
    uniform = len(used) == 1 and used[0].uniform_rows and not site.causal and site.key_padding is None
    blocked_rows, groups = (BLOCKED_ROWS_UNIFORM, ()) if uniform else (
        _blocked_groups(view, site, verdicts, fills) or (site.blocked_rows, site.blocked_groups))
    for term in site.masks:
        verdict = verdicts.get(term.value)
        if verdict is not None and verdict.window:
            # the term stays whole for the ops that reach past the window (exact, HF's un-masked empty rows
            # included); the ops that do not take causality and the padding instead (lowering.window_terms)
            kept.append(replace(term, window=verdict.window, window_padding=verdict.key_padding))
            continue
        if verdict is not None:
            if verdict.key_padding is None or key_padding in (None, verdict.key_padding):
                causal = causal or verdict.causal
                key_padding = verdict.key_padding or key_padding
                continue
        elif key_padding is None and _is_key_padding_shape(view, site, term):
            key_padding = term
            continue
        kept.append(replace(term, finite=term.kind == MASK_ADDITIVE and _never_blocks(view, term.value)))
    if (causal, key_padding, tuple(kept), blocked_rows, groups) == (site.causal, site.key_padding, site.masks,
                                                                    site.blocked_rows, site.blocked_groups):
        return site
    return replace(site, masks=tuple(kept), causal=causal, key_padding=key_padding, blocked_rows=blocked_rows,
                   blocked_groups=groups)


# Ops whose result carries no fill of their inputs as a fill: products and normalisations mix it into every
# output (a model builds no mask through them), and bounded functions clip it.
_MIXING_OPS = frozenset({"matmul", "linear", "softmax", "sdpa", "mha", "tanh", "sqrt", "reciprocal", "pow"})


def _never_blocks(view, value: ValueRef, budget: int = 4096) -> bool:
    """Whether no fill at or below MASK_FILL_MAX can reach ``value``: walking up through every op but the mixing
    ones, each constant met is above it, and no float graph input is met (a model's input may be an additive
    mask). Conditions and indices (integer or boolean operands) carry no values into the term and are not walked.
    Inkling's relative logits, ``masked_fill(gather(r @ P), far, 0.0)``, never block; HF's ``where(keep, 0,
    finfo.min)`` and T5's bias plus its padding mask do."""
    stack, seen = [value], set()
    while stack:
        v = stack.pop()
        if v in seen:
            continue
        seen.add(v)
        if len(seen) > budget:
            return False
        if not _is_float(view.dtype(v)) and view.dtype(v) is not None:
            continue
        c = view.const(v)
        if c is not None:
            c = np.asarray(c)
            if np.issubdtype(c.dtype, np.floating) and c.size and not np.nanmin(c) > MASK_FILL_MAX:
                return False
            continue
        op = view.op(v.node)
        if op == "input":
            return False
        if op in _MIXING_OPS:
            continue
        ins = view.inputs(v.node)
        if op == "where":
            ins = ins[1:3]
        elif op == "masked_fill":
            ins = ins[:1] + ins[2:3]
        stack.extend(x for x in ins if x is not None)
    return True


_SCORED = "scored"  # a key class whose value still holds the score (_blocked_groups)


def _blocked_groups(view, site: AttentionSite, verdicts: dict[ValueRef, _Verdict],
                    fills: dict[ValueRef, float | None]) -> tuple[str, tuple] | None:
    """What the original gives a query row its structured masks block whole (AttentionSite.blocked_rows), from
    what each term puts at the keys it blocks, in graph order: (BLOCKED_ROWS_*, blocked_groups), or None where a
    term is not structured or its fill is not one value.

    Each class of keys (KEY_CLASSES) gets a value: a boolean term (where, masked_fill, GPT-1's blend) replaces
    the score with its fill, an additive one adds its fill, and a fill of finfo.min swallows the score; float32
    arithmetic, so two finfo.min add to -inf. The row softmaxes to the mean over the keys of the greatest value
    that holds one; classes still holding the score are no such row.
    """
    if site.score_floor is not None or site.extra_axes or site.sink_logits is not None:
        return None  # a clamp somewhere among the terms; sink logits keep the row from being empty
    steps, windows = [], set()  # (classes blocked, fill, replaces)
    for t in site.masks:
        verdict = verdicts.get(t.value)
        if verdict is not None:
            blocked = _classes_blocked(verdict.causal, verdict.key_padding is not None, verdict.window)
            fill = verdict.fill
            windows |= {verdict.window} - {0}
        elif _is_key_padding_shape(view, site, t):
            blocked = _classes_blocked(False, True, 0)
            fill = fills.get(t.value) if t.kind == MASK_ADDITIVE else t.fill
        else:
            return None  # a dense term: which keys it blocks is not known here
        if fill is None or t.factor != 1.0:
            return None
        steps.append((blocked, fill, t.kind != MASK_ADDITIVE))
    if site.causal_term is not None:
        at, t = site.causal_term
        fill = t.fill
        if t.kind == MASK_ADDITIVE:
            fill = _one_blocked_value([np.asarray(view.const(t.value), np.float64) * t.factor])
        if fill is None:
            return None
        steps.insert(at, (_classes_blocked(True, False, 0), fill, t.kind != MASK_ADDITIVE))
    elif site.causal:
        steps.append((_classes_blocked(True, False, 0), float("-inf"), False))  # the form's own causality
    if len(windows) > 1 or not any("past" in blocked for blocked, _, _ in steps):
        return None  # no term blocks padded keys: no row is blocked whole
    causal = any("future" in blocked for blocked, _, _ in steps)
    classes = ("past",) + (("older", "older_kept") if windows else ()) + (("future", "future_kept") if causal else ())
    values = {c: None for c in classes}  # None: the score itself
    with np.errstate(over="ignore"):
        for blocked, fill, replaces in steps:
            for c in blocked & values.keys():
                before = values[c]
                if replaces or (before in (None, _SCORED) and _swallows(fill)):
                    values[c] = float(np.float32(fill))
                elif before in (None, _SCORED):
                    values[c] = _SCORED
                else:
                    values[c] = float(np.float32(before) + np.float32(fill))
    if any(v is None or v == _SCORED for v in values.values()):
        return None
    levels = sorted({v for v in values.values() if v != float("-inf")}, reverse=True)
    groups = tuple(tuple(c for c in classes if values[c] == level) for level in levels)
    if not groups:
        return BLOCKED_ROWS_ZERO, ()
    if groups == (classes,):
        return BLOCKED_ROWS_UNIFORM, ()
    return BLOCKED_ROWS_GROUPS, groups


def _classes_blocked(causal: bool, padding: bool, window: int) -> set[str]:
    """The key classes (KEY_CLASSES) a term blocks that holds causality, key padding and a window."""
    return (({"future", "future_kept"} if causal else set()) | ({"past", "older", "future"} if padding else set())
            | ({"older", "older_kept"} if window else set()))


# --------------------------------------------------------------------------- relative-position bias
#
# relbias's fuse mode (VARIANTS.md) computes a bias b_h(j − i) on the fly instead of reading the
# B×H×N×M tensor a model materialised. Which dense terms are such a bias is found by running them,
# like the rules above, never by reading their construction: T5's position_bias (a Gather over
# bucketed distances, with the padding mask added in when the model uses SDPA), ALiBi as BLOOM builds
# it (slope_h times the position of key j, counted over the kept keys), a Swin-style table. The bias
# is read off a probe without padding, as relbias's two tensors (slopes (H,), table (H, 2R + 1)),
# and accepted only if those reproduce the term on every probe, to float32 rounding, up to one
# constant per query row (softmax ignores it), on the rows and keys the site lets through.
#
#   Toeplitz:  term[b, h, i, j] = t_h(δ), δ = j − (i + M − N), t_h constant beyond ±R (table).
#   ALiBi:     term = slope_h·p(b, j), p = j − (first kept key): on a causal site p(b, j) − p(b, i) =
#              j − i = −|δ| on every key it sees, so the term is relbias's slope form plus a row
#              constant. With a hole in the padding mask p stops being j − const: that is recorded.

_MAX_BIAS_PROBE = 512  # the longest probe; a bias not constant (or linear) beyond R < half of it stays dense
_MIN_BIAS_PROBE = 24
_BIAS_PATTERNS = ("ones", "right", "left", "random")
# A term computed from the activations (DeBERTa's c2p/p2c) is not a position bias, and probing it would
# run the model up to that layer: such a term is never a candidate.
_ACTIVATION_OPS = frozenset({"matmul", "linear", "baddbmm", "einsum", "softmax", "sdpa", "mha"})
_ULPS = 16  # float32 rounding allowed per comparison, in units of the values' magnitude


@dataclass
class _BiasCandidate:
    ref: ValueRef
    factor: float
    site: AttentionSite  # a site adding the term: its heads, layout, causality and key padding
    horizon: int = 0
    value: np.ndarray | None = None  # folded constant: one "ones" run, no padding to probe


def find_relative_biases(loaded, sites: list[AttentionSite]) -> list[AttentionSite]:
    """Sites with ``relative_bias`` set where one of their dense terms is a relative-position bias."""
    view = loaded.view
    candidates: dict[tuple, _BiasCandidate | None] = {}
    for site in sites:
        for term in site.masks:
            if term.view is not None or site.extra_axes:  # as in refine_structured_masks
                continue
            key = _bias_key(site, term)
            if key not in candidates:
                candidates[key] = _bias_candidate(view, site, term)
    live = [c for c in candidates.values() if c is not None]
    if not live:
        return sites
    found = _probe_biases(loaded, live)
    out = []
    for site in sites:
        rb = next((found[id(c)] for t in site.masks if (c := candidates.get(_bias_key(site, t))) is not None
                   and found.get(id(c)) is not None and c.ref == t.value), None)
        if rb is not None:
            rb = replace(rb, term=next(t for t in site.masks if t.value == rb.term.value))
        out.append(site if rb is None else replace(site, relative_bias=rb))
    return out


def _bias_key(site: AttentionSite, term: MaskTerm) -> tuple:
    """What the verdict on a term depends on besides its value: how the site reads it and lets keys through."""
    return (term.value, term.kind, term.factor, site.causal, site.key_padding, site.num_heads, site.query_layout)


def _bias_candidate(view, site: AttentionSite, term: MaskTerm) -> _BiasCandidate | None:
    if term.kind != MASK_ADDITIVE or term.factor <= 0 or not isinstance(site.num_heads, int):
        return None
    if isinstance(site.q_len, int) and isinstance(site.kv_len, int) and site.q_len > site.kv_len:
        return None  # query i sits at i + M − N: more queries than keys has no such alignment
    shape = _aligned_shape(view, site, term.value)
    if shape is None or len(shape) < 3 or shape[-1] == 1:
        return None  # no key axis: not a function of j
    const = view.const(term.value)
    if const is not None:
        return _BiasCandidate(term.value, term.factor, site, value=np.asarray(const))
    if view.op(term.value.node) == "input" or _reads_activations(view, term.value):
        return None
    _, lengths = _ancestry(view, term.value)
    return _BiasCandidate(term.value, term.factor, site, max(lengths, default=0))


def _reads_activations(view, ref: ValueRef) -> bool:
    """Whether the value depends on a matmul-like op's result (shape queries aside: they read no data)."""
    seen, stack = set(), [ref.node]
    while stack:
        nid = stack.pop()
        if nid in seen:
            continue
        seen.add(nid)
        op = str(view.op(nid))
        if op in _ACTIVATION_OPS:
            return True
        if "shape" in op.lower() or "size" in op.lower():
            continue
        stack.extend(view.g.predecessors(nid))
    return False


def _probe_biases(loaded, candidates: list[_BiasCandidate]) -> dict[int, RelativeBias]:
    """Run every computed candidate (plus the key padding values the sites compute) and judge each."""
    found: dict[int, RelativeBias] = {}
    for c in candidates:
        if c.value is not None:
            rb = _judge_bias(c, [("ones", c.value, None, {})], static=True)
            if rb is not None:
                found[id(c)] = rb
    computed = [c for c in candidates if c.value is None]
    if not computed:
        return found
    view = loaded.view
    extra = []  # key padding a site computes (BERT's extended mask): needed to know which keys it lets through
    for c in computed:
        kp = c.site.key_padding
        if kp is not None and view.op(kp.value.node) != "input" and view.const(kp.value) is None:
            extra.append(kp.value)
    refs = list(dict.fromkeys([c.ref for c in computed] + extra))
    try:
        probe = loaded.frontend.value_probe(loaded, refs)
        symbols = _symbols(probe.inputs)
    except Exception:  # a construction the probe cannot run stays dense
        return found
    # Lengths double until every bias's table is bounded within half the probe (or the longest probe is
    # reached): a construction's distances (T5's max_distance) need not appear as integer constants.
    length = min(_MAX_BIAS_PROBE, max(_MIN_BIAS_PROBE, 2 * max(c.horizon for c in computed) + 2))
    pending = computed
    while pending:
        try:
            runs = [(pattern, feeds, probe.run(feeds))
                    for pattern, feeds in _bias_feeds(probe.inputs, symbols, length if symbols else None)]
        except Exception:
            return found
        unbounded = []
        for c in pending:
            try:
                rb = _judge_computed(loaded.view, c, probe, runs, symbols)
            except Exception:  # noqa: BLE001  a term this analysis cannot read stays dense (exact)
                rb = None
            if rb is _UNBOUNDED:
                unbounded.append(c)
            elif rb is not None:
                found[id(c)] = rb
        if not symbols or length >= _MAX_BIAS_PROBE:
            break
        pending, length = unbounded, min(_MAX_BIAS_PROBE, 2 * length)
    return found


_UNBOUNDED = object()  # a verdict: the bias's tail did not settle within half the probe length


def _judge_computed(view, c: _BiasCandidate, probe, runs, symbols):
    index = {ref: k for k, ref in enumerate(probe.refs)}
    inputs = {p.ref: p for p in probe.inputs}
    pads = [r for r in inputs if _is_padding_input(view, r)]
    site_kp = c.site.key_padding
    per_run = []
    for pattern, feeds, out in runs:
        kp = None  # a folded key padding is the same on every run; the term is checked where it blocks too
        if site_kp is not None:
            if site_kp.value in inputs:
                kp = _keys_kept(feeds[inputs[site_kp.value].name], site_kp)
            elif site_kp.value in index:
                kp = _keys_kept(out[index[site_kp.value]], site_kp)
        per_run.append((pattern, c.factor * np.asarray(out[index[c.ref]], np.float64), kp,
                        {r: feeds[inputs[r].name] for r in pads}))
    return _judge_bias(c, per_run, static=not symbols, pad_dtypes={r: inputs[r].dtype for r in pads})


def _keys_kept(value: np.ndarray, term: MaskTerm) -> np.ndarray | None:
    """(B | 1, M) bool: the keys a key padding term lets through."""
    a = np.asarray(value)
    a = a.reshape(a.shape[0], a.shape[-1]) if a.ndim >= 2 else a.reshape(1, -1)
    if term.kind == MASK_ADDITIVE:
        return a > MASK_FILL_MAX
    if term.kind == MASK_BOOLEAN_BLOCKED:
        return ~a.astype(bool)
    return a.astype(bool) if a.dtype == np.bool_ else a != 0


def _bias_feeds(inputs, symbols: dict[str, str], length: int | None):
    """(pattern, feeds): no padding first (the bias is read there), then right, left and random padding;
    at ``length`` and a shorter length when shapes are symbolic (the table must hold at both)."""
    configs = [None] if not symbols else [_sizes(symbols, 2, length, 1), _sizes(symbols, 3, max(8, length - 9), 1)]
    rng = np.random.default_rng(0)
    out = []
    for sizes in configs:
        for pattern in _BIAS_PATTERNS:
            feeds = {}
            for p in inputs:
                shape = tuple(d if isinstance(d, int) else sizes[_symbol(p, a, d)] for a, d in enumerate(p.shape))
                if pattern == "ones" and len(shape) == 2 and not np.issubdtype(np.dtype(p.dtype), np.floating) \
                        and not _POSITION_NAME.search(p.name):
                    feeds[p.name] = np.ones(shape, np.dtype(p.dtype))
                else:
                    feeds[p.name] = _probe_array(p, shape, "random" if pattern == "ones" else pattern, rng)
            out.append((pattern, feeds))
    return out


def _as_bhnm(a: np.ndarray, site: AttentionSite) -> np.ndarray | None:
    """A term's value as (B | 1, H | 1, N | 1, M), unflattening (B·H, N, M) like the scores."""
    a = np.asarray(a)
    rank = _scores_rank(site, a.ndim)
    if not 2 <= a.ndim <= rank:
        return None
    a = a.reshape((1,) * (rank - a.ndim) + a.shape)
    if rank == 3:
        if a.shape[0] == 1:
            a = a[None]
        elif a.shape[0] % site.num_heads == 0:
            a = a.reshape(a.shape[0] // site.num_heads, site.num_heads, *a.shape[1:])
        else:
            return None
    return a


def _judge_bias(c: _BiasCandidate, runs, static: bool, pad_dtypes=None) -> RelativeBias | None:
    """The relative bias ``runs`` (pattern, value, kept keys of the site, padding inputs) show, or None."""
    site, heads = c.site, c.site.num_heads
    shaped = []
    for pattern, value, kept, pads in runs:
        a = _as_bhnm(value, site)
        if a is None or a.shape[1] not in (1, heads) or not np.all(np.isfinite(a) | (a < 0)):
            return None
        shaped.append((pattern, a, kept, pads))
    ones = [r for r in shaped if r[0] == "ones"]
    if not ones:
        return None
    pattern, a, kept, _ = max(ones, key=lambda r: r[1].shape[-1])  # the longest probe reads the bias
    b, _, n_rows, m = a.shape
    b = _term_batch(b, kept)
    if b is None:
        return None
    n = n_rows if n_rows > 1 else (site.q_len if isinstance(site.q_len, int) else m)
    if not isinstance(n, int) or n > m:
        return None
    fit = _read_bias(np.broadcast_to(a, (b, heads, n, m)), _visible(site, b, n, m, kept), heads)
    if fit is None:
        return None
    slopes, table = fit
    radius = (table.shape[1] - 1) // 2
    if not static and 2 * radius >= m:
        return _UNBOUNDED  # the tail was not seen constant over as many distances as the table spans: unbounded
    hyps = [None] + [(ref, inv) for ref in (pad_dtypes or {}) for inv in
                     ((False, True) if np.dtype(pad_dtypes[ref]) == np.bool_ else (False,))]
    if site.key_padding is not None:
        hyps = [None]  # the site already has key padding: the term must be the bias alone
    for hyp in hyps:
        verdicts = [_reproduces(a, kept, pads, hyp, site, slopes, table) for _, a, kept, pads in shaped]
        holds = [v is not None for v in verdicts]
        if not all(h for (p, *_), h in zip(shaped, holds) if p != "random"):
            continue  # left and right padding (what tokenizers produce) must hold exactly; holes are noted
        key_padding = None
        if hyp is not None:
            ref, inverted = hyp
            kind = (MASK_BOOLEAN_BLOCKED if inverted else MASK_BOOLEAN) if np.dtype(pad_dtypes[ref]) == np.bool_ \
                else MASK_NONZERO_KEEP
            fills = [f for f in verdicts if f is not None and f[1] is not None]
            if not fills:
                continue  # no probe ever padded a key: the hypothesis was never tested
            key_padding = MaskTerm(ref, kind, fill=min(f[1] for f in fills))
        return RelativeBias(MaskTerm(c.ref, MASK_ADDITIVE, c.factor), tuple(map(float, slopes)),
                            tuple(tuple(map(float, row)) for row in table), key_padding,
                            contiguous_padding_only=not all(holds))
    return None


def _term_batch(b: int, kept) -> int | None:
    """The batch a term of batch ``b`` is judged over: a term shared by the batch (Switch's bias, (1, H, N, M))
    under per-row key padding is read once per row; None where the two batches disagree."""
    if kept is None:
        return b
    return kept.shape[0] if b in (1, kept.shape[0]) else None


def _visible(site: AttentionSite, b: int, n: int, m: int, kept) -> np.ndarray:
    """(B, 1, N, M) bool: the scores the site lets through besides the term (causality, its key padding)."""
    vis = np.ones((b, 1, n, m), bool)
    if site.causal:
        vis &= np.tril(np.ones((n, m), bool), k=m - n)
    if kept is not None and kept.shape[-1] == m:
        vis = vis & kept[:, None, None, :]
    return vis


def _tol(*arrays) -> float:
    scale = max((float(np.max(np.abs(x))) for x in arrays if np.size(x)), default=0.0)
    return _ULPS * float(np.finfo(np.float32).eps) * (1.0 + scale)


def _read_bias(a: np.ndarray, vis: np.ndarray, heads: int):
    """(slopes (H,), table (H, 2R + 1)) float32 with a·[vis] = bias + row constant, from one probe; else None.

    Every row sees its own key (δ = 0) on a probe without padding, so subtracting that entry removes the
    row constant; what remains must depend on δ alone (first as it stands, which keeps a T5 table's
    values exact, then shifted per row, which ALiBi needs).
    """
    b, _, n, m = a.shape
    rows = np.arange(n)
    diag = rows + m - n
    vis = np.broadcast_to(vis, a.shape)
    if not vis[:, :, rows, diag].all() or np.any(a[vis] <= MASK_FILL_MAX):
        return None
    delta = np.arange(m)[None, :] - diag[:, None]  # (N, M): j − (i + M − N), from −(M − 1) to N − 1
    for shifted in (False, True):
        u = a - a[:, :, rows, diag][..., None] if shifted else a
        per_delta = _per_delta(u, vis, delta, m)
        if per_delta is not None:
            return _slopes_and_table(*per_delta, _tol(a))
    return None


def _per_delta(u: np.ndarray, vis: np.ndarray, delta: np.ndarray, m: int):
    """(δ values seen, (H, len) value at each) when u is the same at every visible entry of each δ; else None."""
    heads = u.shape[1]
    idx = np.broadcast_to(delta + (m - 1), u.shape[2:])
    seen = np.zeros(idx.max() + 1, bool)
    lo = np.full((heads, idx.max() + 1), np.inf)
    hi = np.full((heads, idx.max() + 1), -np.inf)
    for h in range(heads):
        mask = vis[:, h] if vis.shape[1] > 1 else vis[:, 0]
        vals, keys = u[:, h][mask], np.broadcast_to(idx, mask.shape)[mask]
        np.minimum.at(lo[h], keys, vals)
        np.maximum.at(hi[h], keys, vals)
        seen[keys] = True
    if not seen.any() or np.any(hi[:, seen] - lo[:, seen] > _tol(lo[:, seen], hi[:, seen])):
        return None
    deltas = np.nonzero(seen)[0] - (m - 1)
    return deltas, lo[:, seen]


def _slopes_and_table(deltas: np.ndarray, values: np.ndarray, tol: float):
    """The (slopes, table) of smallest radius that give ``values`` at ``deltas``; δ not seen copy the nearest."""
    best = None
    for linear in (False, True):
        slopes = _tail_slopes(deltas, values) if linear else np.zeros(values.shape[0])
        if slopes is None:
            continue
        slopes = slopes.astype(np.float32).astype(np.float64)
        w = values + slopes[:, None] * np.abs(deltas)[None, :]
        radius = _constant_tail_radius(deltas, w, tol)
        if best is None or radius < best[0]:
            best = (radius, slopes, w)
    radius, slopes, w = best
    table = np.empty((values.shape[0], 2 * radius + 1))
    for k, d in enumerate(range(-radius, radius + 1)):
        nearest = int(np.argmin(np.abs(deltas - np.clip(d, deltas.min(), deltas.max()))))
        table[:, k] = w[:, nearest]
    return slopes.astype(np.float32), table.astype(np.float32)


def _tail_slopes(deltas: np.ndarray, values: np.ndarray) -> np.ndarray | None:
    """m_h such that values ≈ −m_h·|δ| + const far from δ = 0 (the side with more distances seen)."""
    neg, pos = deltas < 0, deltas > 0
    side = neg if neg.sum() >= pos.sum() else pos
    if side.sum() < 2:
        return None
    d, v = np.abs(deltas[side]), values[:, side]
    far, near = int(np.argmax(d)), int(np.argmin(d))
    if d[far] == d[near]:
        return None
    return -(v[:, far] - v[:, near]) / (d[far] - d[near])


def _constant_tail_radius(deltas: np.ndarray, w: np.ndarray, tol: float) -> int:
    """The smallest R with w constant for every seen δ >= R and for every seen δ <= −R (over all heads)."""
    radius = 0
    for sign in (1, -1):
        side = np.nonzero(sign * deltas >= 0)[0]
        order = side[np.argsort(sign * deltas[side])]  # from δ = 0 outwards
        if len(order) == 0:
            continue
        last = w[:, order[-1]]
        r = len(order) - 1
        while r > 0 and np.all(np.abs(w[:, order[r - 1]] - last) <= tol):
            r -= 1
        radius = max(radius, int(abs(deltas[order[r]])))
    return radius


def _reproduces(a: np.ndarray, kept, pads, hyp, site: AttentionSite, slopes, table):
    """Whether bias + row constants (+ the hypothesised padding) give ``a`` on the visible scores.

    None if not; else (True, the fill the term puts at the keys the padding blocks, None where it blocks none).
    """
    b, h1, n_rows, m = a.shape
    b = _term_batch(b, kept)
    n = n_rows if n_rows > 1 else (site.q_len if isinstance(site.q_len, int) else m)
    if b is None or n > m:
        return None
    a = np.broadcast_to(a, (b, site.num_heads, n, m))
    vis = np.broadcast_to(_visible(site, b, n, m, kept), a.shape)
    blocked = np.zeros_like(vis)
    if hyp is not None:
        pad = np.asarray(pads[hyp[0]])
        if pad.ndim != 2 or pad.shape[1] != m or pad.shape[0] not in (1, b):
            return None
        keep = (pad == 0) if hyp[1] else (pad != 0)
        blocked = vis & ~keep[:, None, None, :]
        vis = vis & keep[:, None, None, :]
    delta = np.arange(m)[None, :] - (np.arange(n) + m - n)[:, None]
    r = (table.shape[1] - 1) // 2
    bias = (-slopes.astype(np.float64)[:, None, None] * np.abs(delta)
            + table.astype(np.float64)[:, np.clip(delta, -r, r) + r])  # (H, N, M), as the op computes it
    rows = vis.any(-1)
    if not rows.any() or np.any(a[vis] <= MASK_FILL_MAX):
        return None  # a blocked score where the site lets one through: not the bias alone
    resid = a - bias[None]
    spread = np.where(vis, resid, -np.inf).max(-1) - np.where(vis, resid, np.inf).min(-1)
    if np.any(spread[rows] > _tol(a[vis], bias)):
        return None
    if not np.all(a[blocked] <= MASK_FILL_MAX):
        return None
    return True, (float(np.max(a[blocked])) if blocked.any() else None)
