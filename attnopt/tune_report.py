"""What `attnopt tune` shows: a table per site, the whole model's cost against dense, and a plot of error
against attended fraction (one point per candidate, the chosen ones marked)."""

from __future__ import annotations

from pathlib import Path


def site_rows(result) -> list[list]:
    """[site, plan, attended fraction, rel L2, cosine, cosine in the tuned model] per site, dense ones too."""
    planned = {s.name: s for s in result.plan.sites}
    in_model = result.plan.end_to_end.get("site_cosine_in_model", {})
    rows = []
    for info in result.sites:
        s = planned.get(info.name)
        if s is None:
            why = f" ({info.skipped})" if info.skipped else ""
            rows.append([info.name, "dense" + why, info.candidates[0].attended_fraction, 0.0, 1.0, None])
        else:
            rows.append([info.name, s.text, s.attended_fraction, s.rel_l2, s.cosine, in_model.get(info.name)])
    return rows


def table(result, title: str):
    from rich.table import Table

    t = Table(title=title, title_justify="left", caption_justify="left", caption=(
        f"whole model: {result.attended_fraction:.3f} of keys attended, attention cost {result.cost_vs_dense:.3f} "
        f"of dense; end-to-end cosine {result.end_to_end:.5f} (budget {result.budget}); {result.runs} runs"))
    for c in ("site", "plan", "keys attended", "site rel L2", "site cosine", "cosine in model"):
        t.add_column(c, overflow="fold")
    for r in site_rows(result):
        t.add_row(*["-" if x is None else (f"{x:.4g}" if isinstance(x, float) else str(x)) for x in r])
    return t


def plot(result, path, title: str = "attnopt tune") -> Path:
    """Site error (1 − cosine, upstream dense) against attended fraction: every candidate measured, per site
    one colour; each site's chosen plan as a black-edged star."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .atomic import write_atomic

    planned = {s.name: s for s in result.plan.sites}
    fig, ax = plt.subplots(figsize=(8, 5.5))
    cmap = plt.get_cmap("tab10")
    errors = [1.0 - c.cosine for c in result.candidates if not c.error] + [1.0 - s.cosine for s in planned.values()]
    positive = [e for e in errors if e > 0]
    floor = min(positive) / 3 if positive else 1e-7  # exact points (error 0) are drawn on this floor, as x
    for i, info in enumerate(result.sites):
        color = cmap(i % 10)
        pts = [(c.attended_fraction, 1.0 - c.cosine) for c in info.candidates if not c.error]
        ax.scatter([x for x, e in pts if e > 0], [e for x, e in pts if e > 0], s=14, alpha=0.55, color=color,
                   label=info.name)
        ax.scatter([x for x, e in pts if e <= 0], [floor for x, e in pts if e <= 0], s=30, marker="x", color=color)
        s = planned.get(info.name)
        x, y = (s.attended_fraction, 1.0 - s.cosine) if s else (info.candidates[0].attended_fraction, 0.0)
        ax.scatter([x], [max(y, floor)], s=160, marker="*", color=color, edgecolors="black", linewidths=1.2, zorder=5)
    ax.scatter([], [], s=160, marker="*", color="white", edgecolors="black", label="chosen (per site)")
    ax.scatter([], [], s=30, marker="x", color="gray", label="exact (error 0, on the floor)")
    ax.set_yscale("log")
    ax.set_xlabel("attended fraction of keys (score entries per query / N)")
    ax.set_ylabel("site error: 1 − cosine vs dense (upstream dense)")
    ax.set_title(f"{title}\nwhole model: {result.attended_fraction:.3f} of keys, end-to-end cosine "
                 f"{result.end_to_end:.4f} (budget {result.budget})", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path = Path(path)
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return path
