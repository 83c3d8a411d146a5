"""How much of the keys a variant's query attends to: the attention cost the tuner minimises.

Computed from the variant's allowed pattern at the site's lengths, never guessed:
the band of the local variants (``kernels.reference.band_allowed``, with each
spec module's ``band``), their sinks (``with_sinks``), causality, and for
hierarchical one score entry per pooled group (``coarse_groups``). A query's
*entries* are the scores it computes: exact keys plus pooled groups. The
attended fraction is entries / M averaged over queries; on a causal site dense
attention itself attends to about half the keys, so cost against dense divides
by dense's entries instead.

Only variants whose pattern does not depend on the data are served (the tuner's
candidates); lsh, routed and lowrank raise ValueError.
"""

from __future__ import annotations

from functools import lru_cache

import torch

EXACT_KERNELS = ("dense", "relbias")  # every allowed key is scored (relbias only adds a bias)


def entries_per_query(kernel: str, params: dict, n: int, m: int, causal: bool) -> float:
    """Mean number of score entries (exact keys + pooled groups) per query of a self-attention site."""
    return sum(exact_and_pooled(kernel, params, n, m, causal))


def exact_and_pooled(kernel: str, params: dict, n: int, m: int, causal: bool) -> tuple[float, float]:
    """(mean exact keys, mean pooled groups) a query of a self-attention site scores."""
    return _entries(kernel, tuple(sorted(params.items())), n, m, causal)


def attended_fraction(kernel: str, params: dict, n: int, m: int, causal: bool) -> float:
    """Mean fraction of the M keys a query scores (pooled groups count one entry each)."""
    return entries_per_query(kernel, params, n, m, causal) / m


@lru_cache(maxsize=4096)
def _entries(kernel: str, items: tuple, n: int, m: int, causal: bool) -> tuple[float, float]:
    from attnopt.kernels.reference import band_allowed, positions, with_sinks

    params = dict(items)
    p, j = positions(n, m)
    visible = (j <= p) if causal else torch.ones(n, m, dtype=torch.bool)
    if kernel in EXACT_KERNELS:
        return float(visible.sum()) / n, 0.0
    pooled = 0.0
    if kernel == "segmented":
        allowed = band_allowed(n, m, params["segment_size"], 0, 0)
    elif kernel == "window":
        from attnopt.kernels.window import band
        allowed = band_allowed(n, m, *band(params["window"]))
    elif kernel == "memory":
        from attnopt.kernels.memory import band
        allowed = band_allowed(n, m, *band(params["segment_size"], params["memory"]))
    elif kernel == "hierarchical":
        from attnopt.kernels.hierarchical.reference import coarse_groups
        b = params["block"]
        allowed = band_allowed(n, m, b, b, b)
        groups = coarse_groups(n, m, b, params["levels"], causal)
        groups[:, : params["sinks"]] = -1  # sinks are exact, never pooled
        pooled = sum(int(row[row >= 0].unique().numel()) for row in groups) / n
    else:
        raise ValueError(f"the attended fraction of {kernel} depends on the data: not a tuner candidate")
    exact = with_sinks(allowed, params.get("sinks", 0)) & visible
    return float(exact.sum()) / n, pooled
