"""How much of the keys a variant's query attends to: the attention cost the tuner minimises.

Computed from the variant's allowed pattern at the site's lengths, never guessed:
the band of the local variants (``kernels.reference.band_allowed``, with each
spec module's ``band``), their sinks (``with_sinks``), causality, and for
hierarchical one score entry per pooled group (``coarse_groups``). A query's
*entries* are the scores it computes: exact keys plus pooled groups. The
attended fraction is entries / M averaged over queries; on a causal site dense
attention itself attends to about half the keys, so cost against dense divides
by dense's entries instead.

Those are the variants whose pattern does not depend on the data. routed's
does: its keys follow k-means clusters of the site's own keys, so its fraction
is measured on given q and k (``measured_fraction``, per query head; the tuner
reads q and k off its calibration run). lsh and lowrank raise ValueError.
"""

from __future__ import annotations

from functools import lru_cache

import torch

EXACT_KERNELS = ("dense", "relbias")  # every allowed key is scored (relbias only adds a bias)
MEASURED_KERNELS = ("routed",)  # the keys depend on q and k: measured, never computed from the lengths


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
        raise ValueError(f"the attended fraction of {kernel} depends on the data"
                         + (": use measured_fraction" if kernel in MEASURED_KERNELS else ": not a tuner candidate"))
    exact = with_sinks(allowed, params.get("sinks", 0)) & visible
    return float(exact.sum()) / n, pooled


def measured_fraction(kernel: str, params: dict, q: torch.Tensor, k: torch.Tensor, causal: bool,
                      key_padding: torch.Tensor | None = None) -> torch.Tensor:
    """(H,) the mean fraction of the M keys each query head scores, for a variant whose keys depend on the data.

    q (B, H, N, D), k (B, Hkv, M, D) and the additive (B | 1, M) key padding are the site's own (from a
    calibration run). The padding steers routed's k-means as in the op; a padded key that a route selects
    counts as scored, as dense's padded keys do. One batch row at a time, so the (H, N, M) allowed set is the
    largest tensor.
    """
    if kernel not in MEASURED_KERNELS:
        raise ValueError(f"the attended fraction of {kernel} does not depend on the data: use attended_fraction")
    from attnopt.kernels.reference import positions
    from attnopt.kernels.routed.reference import allowed_keys

    n, m = q.shape[2], k.shape[2]
    p, j = positions(n, m)
    visible = (j <= p) if causal else torch.ones(n, m, dtype=torch.bool)
    counts = torch.zeros(q.shape[1], dtype=torch.float64)
    for b in range(q.shape[0]):
        kp = key_padding if key_padding is None or key_padding.shape[0] == 1 else key_padding[b:b + 1]
        allowed = allowed_keys(q[b:b + 1], k[b:b + 1], kp, **params)[0]  # (H, N, M)
        counts += (allowed & visible).sum(dim=(1, 2), dtype=torch.float64)
    return (counts / (q.shape[0] * n * m)).float()
