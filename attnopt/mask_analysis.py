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

   with ``key_mask`` one of those 2-D inputs (for a boolean one also read as
   True = padding). Rows the hypothesis leaves without any allowed key are not
   compared (HF un-masks them to avoid NaN); a term with one row broadcast over
   the queries is never causal. Additive terms must be exactly 0 where allowed
   and <= MASK_FILL_MAX where blocked. A term that fails every hypothesis, or
   whose evaluation fails, stays dense. A term the View did fold is checked the
   same way for plain causality, without a probe. Masks that are graph inputs
   are left as they are.

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
from .site import (LAYOUT_FLAT, MASK_ADDITIVE, MASK_BOOLEAN, MASK_BOOLEAN_BLOCKED, MASK_NONZERO_KEEP,
                   AttentionSite, MaskTerm, ValueRef)

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
_POSITION_NAME = re.compile(r"position|cache_pos", re.I)


@dataclass(frozen=True)
class _Verdict:
    causal: bool
    key_padding: MaskTerm | None


@dataclass(frozen=True)
class _Hypothesis:
    causal: bool
    pad: ValueRef | None = None  # the (B, M) graph input, None for causal only
    inverted: bool = False  # boolean inputs only: True marks padding (torch's key_padding_mask)

    def verdict(self, pad_dtype) -> _Verdict:
        if self.pad is None:
            return _Verdict(self.causal, None)
        if pad_dtype == np.bool_:
            kind = MASK_BOOLEAN_BLOCKED if self.inverted else MASK_BOOLEAN
        else:
            kind = MASK_NONZERO_KEEP
        return _Verdict(self.causal, MaskTerm(self.pad, kind))


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
            if term.value not in candidates and not _is_key_padding_shape(view, site, term):
                cand = _candidate(view, site, term)
                if cand is not None:
                    candidates[term.value] = cand
    computed = [c for c in candidates.values() if c.value is None]
    verdicts = _probe(loaded, computed) if computed else {}
    for cand in candidates.values():
        if cand.value is not None:
            hyp = next((h for h in cand.hypotheses if _holds(cand.value, cand, h, None)), None)
            if hyp is not None:
                verdicts[cand.ref] = hyp.verdict(None)
    return [_refined(view, site, verdicts) for site in sites]


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
    if term.factor <= 0 or term.kind not in (MASK_ADDITIVE, MASK_BOOLEAN, MASK_BOOLEAN_BLOCKED):
        return None
    shape = view.shape(term.value)
    if shape is not None and not 2 <= len(shape) <= _scores_rank(site, len(shape)):
        return None
    rank, heads = _scores_rank(site), site.num_heads  # the flat rank; _holds widens it for 4-D values
    const = view.const(term.value)
    if const is not None:  # a folded constant is its own evidence: is it exactly causal?
        return _Candidate(term.value, term.kind, rank, heads, [_Hypothesis(True)], value=np.asarray(const))
    if view.op(term.value.node) == "input":
        return None  # a mask the caller passes in: its values are whatever the caller gives
    inputs, horizon = _ancestry(view, term.value)
    pads = [r for r in inputs if _is_padding_input(view, r)]
    hyps = []
    for pad in pads:
        for causal in (True, False):
            hyps.append(_Hypothesis(causal, pad))
            if view.dtype(pad) == "bool":
                hyps.append(_Hypothesis(causal, pad, inverted=True))
    hyps.append(_Hypothesis(True))
    return _Candidate(term.value, term.kind, rank, heads, hyps, horizon)


def _ancestry(view, ref: ValueRef) -> tuple[list[ValueRef], int]:
    """(graph inputs the value depends on, through shapes too, in graph order; largest integer constant)."""
    seen, stack, found, horizon = set(), [ref.node], [], 0
    while stack:
        nid = stack.pop()
        if nid in seen:
            continue
        seen.add(nid)
        op = view.op(nid)
        if op == "input":
            found.append(nid)
        elif op == "constant":
            horizon = max(horizon, _int_extent(view, ValueRef(nid)))
        stack.extend(view.g.predecessors(nid))
    return [ValueRef(n) for n in sorted(found, key=lambda n: view.info(n).order)], horizon


def _int_extent(view, ref: ValueRef) -> int:
    """|c| for a one-element integer constant c (a length such as a window), sentinels aside; else 0.

    Tables (a position-id buffer, arange(max_positions)) and shape vectors are not lengths
    the mask compares against, and are left out.
    """
    shape, dtype = view.shape(ref), view.dtype(ref)
    if shape is None or int(np.prod(shape)) != 1 or (dtype is not None and "int" not in str(dtype)):
        return 0
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

def _probe(loaded, candidates: Sequence[_Candidate]) -> dict[ValueRef, _Verdict]:
    try:
        probe = loaded.frontend.value_probe(loaded, [c.ref for c in candidates])
        symbols = _symbols(probe.inputs)
        if symbols:  # lengths are free: a construction may read lengths the small probes never reach
            candidates = [c for c in candidates if c.horizon + 2 <= _MAX_HORIZON_PROBE]
        if not candidates:
            return {}
        horizon = max(c.horizon for c in candidates) if symbols else 0
        runs = [(f, probe.run(f)) for f in _probe_feeds(probe.inputs, symbols, horizon)]
    except Exception:  # a construction the probe cannot run stays dense
        return {}
    index = {ref: k for k, ref in enumerate(probe.refs)}
    pads = {p.ref: p for p in probe.inputs}
    verdicts = {}
    for cand in candidates:
        k = index[cand.ref]
        for hyp in cand.hypotheses:
            if hyp.pad is not None and hyp.pad not in pads:
                continue
            name = None if hyp.pad is None else pads[hyp.pad].name
            if all(_holds(out[k], cand, hyp, None if name is None else feeds[name]) for feeds, out in runs):
                verdicts[cand.ref] = hyp.verdict(pads[hyp.pad].dtype if hyp.pad is not None else None)
                break
    return verdicts



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


def _holds(value: np.ndarray, cand: _Candidate, hyp: _Hypothesis, pad: np.ndarray | None) -> bool:
    a = np.asarray(value)
    rank = 4 if a.ndim == 4 else cand.scores_rank
    if not 2 <= a.ndim <= rank:
        return False
    a = a.reshape((1,) * (rank - a.ndim) + a.shape)
    if rank == 3:  # (B·H, N, M) scores: unflatten the heads to compare per batch row
        if a.shape[0] == 1:
            a = a[None]
        elif isinstance(cand.num_heads, int) and a.shape[0] % cand.num_heads == 0:
            a = a.reshape(a.shape[0] // cand.num_heads, cand.num_heads, *a.shape[1:])
        else:
            return False
    n, m = a.shape[-2:]
    if hyp.causal and n == 1:
        return False  # one row broadcast over every query cannot be causal (at N = 1 causality is moot)
    expected = np.ones((1, 1, n, m), bool)
    if hyp.causal:
        expected &= np.tril(np.ones((n, m), bool), k=m - n)
    if hyp.pad is not None:
        if pad.ndim != 2 or pad.shape[1] != m:
            return False
        keys = (pad == 0) if hyp.inverted else (pad != 0)
        expected = expected & keys[:, None, None, :]
    try:
        a, expected = np.broadcast_arrays(a, expected)
    except ValueError:
        return False
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

def _refined(view, site: AttentionSite, verdicts: dict[ValueRef, _Verdict]) -> AttentionSite:
    causal, key_padding, kept = site.causal, site.key_padding, []
    for term in site.masks:
        verdict = verdicts.get(term.value)
        if verdict is not None:
            if verdict.key_padding is None or key_padding in (None, verdict.key_padding):
                causal = causal or verdict.causal
                key_padding = verdict.key_padding or key_padding
                continue
        elif key_padding is None and _is_key_padding_shape(view, site, term):
            key_padding = term
            continue
        kept.append(term)
    if (causal, key_padding, tuple(kept)) == (site.causal, site.key_padding, site.masks):
        return site
    return replace(site, masks=tuple(kept), causal=causal, key_padding=key_padding)
