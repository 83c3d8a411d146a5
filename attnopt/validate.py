"""validate: run original and rewritten on identical inputs and compare, per output and per site.

Both models run through their frontend's runner (onnxruntime for ONNX, torch for
fx graphs). Each attention site's output value is exposed in both runs: the
rewrite keeps that value's name, so the two runs line up site by site.

    >>> report = validate("bert.onnx", "bert.segmented.onnx", seq_len=1024)
    >>> report.worst_rel_l2, report.is_exact()
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field

import numpy as np

from .errors import AttnoptError
from .graph import random_ops
from .metrics import Metric, compare, describe, not_comparable

__all__ = ["Metric", "ValidationReport", "compare", "validate"]

NOT_FOUND = "not comparable: no value of that name in the rewritten model"


@dataclass
class ValidationReport:
    kind: str  # "onnx" | "fx"
    original: str
    rewritten: str
    outputs: list[Metric]
    sites: list[Metric]
    inputs: dict = field(default_factory=dict)  # name -> {"shape": [...], "dtype": str}
    provider: str | None = None
    # Set when the comparison was not exact: the original's outputs on a second run against its first (the
    # worst rel L2). Above 0 the original is not deterministic (random ops, dropout left in training mode)
    # and the errors above mix its noise with the rewrite's.
    original_rerun_rel_l2: float | None = None
    # Set with it: the original's random ops by name and count. A session can replay its draws on a rerun
    # (onnxruntime seeds each node once), so these show noise the rerun misses: the rewritten model draws anew.
    random_ops: dict = field(default_factory=dict)

    @property
    def original_is_random(self) -> bool:
        return bool(self.original_rerun_rel_l2) or bool(self.random_ops)

    @property
    def not_comparable(self) -> list[Metric]:
        return [m for m in self.sites if not m.comparable]

    @property
    def worst_rel_l2(self) -> float:
        """The largest relative L2 error over outputs and comparable sites (NaN counts as inf)."""
        values = [m.rel_l2 for m in self.outputs + self.sites if m.comparable]
        if not values:
            return float("nan")
        return max(float("inf") if np.isnan(v) else v for v in values)

    def is_exact(self, tol: float = 1e-5) -> bool:
        """Every output and every comparable site within relative L2 ``tol``."""
        metrics = [m for m in self.outputs + self.sites if m.comparable]
        return bool(self.outputs) and all(m.comparable for m in self.outputs) and all(
            np.isfinite(m.rel_l2) and m.rel_l2 <= tol for m in metrics)

    def to_dict(self) -> dict:
        worst = self.worst_rel_l2
        return {
            "kind": self.kind, "original": self.original, "rewritten": self.rewritten,
            "provider": self.provider, "inputs": self.inputs,
            "outputs": [m.to_dict() for m in self.outputs], "sites": [m.to_dict() for m in self.sites],
            "worst_rel_l2": worst if np.isfinite(worst) else str(worst), "exact": self.is_exact(),
            "original_rerun_rel_l2": self.original_rerun_rel_l2, "random_ops": self.random_ops, "note": self.note,
        }

    @property
    def note(self) -> str:
        if not self.original_is_random:
            return ""
        ops = ", ".join(f"{name} ×{count}" for name, count in sorted(self.random_ops.items()))
        if self.original_rerun_rel_l2:
            return (f"the original is not deterministic: a second run of it differs from the first by rel L2 "
                    f"{self.original_rerun_rel_l2:.3g} ({ops or 'random ops, or dropout in training mode?'}); "
                    f"the errors above include that noise")
        return (f"the original holds random ops ({ops}; dropout or stochastic depth exported in training mode?) "
                f"that draw other numbers in the rewritten model: the errors above include that noise")


# ----------------------------------------------------------------------------- entry point

def validate(original, rewritten, inputs=None, seq_len: int | None = None, *, sites=None,
             example_inputs=None, provider: str = "cpu", batch: int = 2, seed: int = 0) -> ValidationReport:
    """Run both models on identical inputs; compare every graph output and every attention site.

    ``original``/``rewritten``: ONNX path, ModelProto, onnx_ir.Model, GraphModule,
    ExportedProgram, nn.Module (with ``example_inputs``), LoadedModel or RewriteResult.
    ``inputs``: a .npz path or a mapping name -> array (ONNX), or for torch also a
    tuple of tensors; default random (see attnopt.inputs). ``sites``: the sites to
    compare (AttentionSite objects or site names); default every site detected in
    ``original``; ``[]`` compares outputs only.
    """
    from .frontends import frontend_for
    from .loaded import open_model

    frontend = frontend_for(original)
    other = frontend_for(rewritten)
    if other is not frontend:
        raise AttnoptError(f"cannot compare {frontend.description} with {other.description}")
    frontend.check_provider(provider)
    orig = _loaded(original) or open_model(original, example_inputs)
    expose = [(name, frontend.exposed_value(orig, site)) for name, site in _chosen_sites(orig, sites)]
    feeds = frontend.inputs(orig, inputs, seq_len=seq_len, batch=batch, seed=seed, example_inputs=example_inputs)
    rew_loaded = _loaded(rewritten)
    if rew_loaded is not None:
        rew_model = rew_loaded.model
    else:  # read, not loaded: the rewritten model's sites are not needed
        examples = tuple(feeds.values()) if example_inputs is None else example_inputs
        rew_model, _ = frontend.read(rewritten, examples)
    values = [e for _, e in expose]
    # The original's runner stays open: an inexact comparison runs it once more, in the same session (a new
    # onnxruntime session replays the same random numbers), to tell the original's own noise from the rewrite's.
    with frontend.runner(orig.model, expose=values, provider=provider) as a:
        out_a = a.run(feeds)
        with frontend.runner(rew_model, expose=values, provider=provider) as b:
            if sorted(b.input_names) != sorted(a.input_names):
                raise AttnoptError(f"the rewritten model's inputs ({', '.join(b.input_names)}) differ from the "
                                   f"original's ({', '.join(a.input_names)})")
            out_b = b.run(feeds)
        outputs = _compare_outputs(out_a.outputs, out_b.outputs)
        metrics = [_compare_site(name, e.name, out_a.exposed, out_b.exposed) for name, e in expose]
        report = ValidationReport(frontend.kind, orig.source, _source(rewritten), outputs, metrics,
                                  describe(feeds), a.label)
        if not report.is_exact():
            again = _compare_outputs(out_a.outputs, a.run(feeds).outputs)
            report.original_rerun_rel_l2 = max((m.rel_l2 for m in again if m.comparable), default=0.0)
            report.random_ops = random_ops(orig.view) if orig.view is not None else {}
    return report


def _loaded(model):
    """The LoadedModel of a LoadedModel or RewriteResult; None for any other handle."""
    from .loaded import LoadedModel
    from .pipeline import RewriteResult

    if isinstance(model, RewriteResult):
        return model.loaded
    return model if isinstance(model, LoadedModel) else None


def _source(model) -> str:
    loaded = _loaded(model)
    if loaded is not None:
        return loaded.source
    if isinstance(model, (str, os.PathLike)):
        return str(model)
    return type(model).__name__


def _chosen_sites(loaded, sites) -> list:
    """(site name, site) for the sites to compare: all by default, else the objects or name globs given."""
    from .site import AttentionSite

    if sites is None:
        return [(s.name, s) for s in loaded.sites]
    chosen = []
    for s in sites:
        if isinstance(s, AttentionSite):
            hits = [s]
        else:
            hits = [x for x in loaded.sites if fnmatch.fnmatchcase(x.name, str(s))]
            if not hits:
                raise AttnoptError(f"no attention site named {s!r}; sites: "
                                   f"{', '.join(x.name for x in loaded.sites) or 'none'}")
        chosen.extend(h for h in hits if h not in chosen)
    return [(s.name, s) for s in chosen]


def _compare_outputs(a: dict, b: dict) -> list[Metric]:
    """Per output of the original: against the rewritten output of the same name, else the same position."""
    others = list(b)
    metrics = []
    for i, (name, value) in enumerate(a.items()):
        other = name if name in b else (others[i] if i < len(others) else None)
        if other is None:
            metrics.append(not_comparable(name, "not comparable: the rewritten model has no such output",
                                          tuple(np.shape(value)), name))
        else:
            metrics.append(compare(name, value, b[other], name))
    return metrics


def _compare_site(site_name: str, value: str, a: dict, b: dict) -> Metric:
    if value not in a:
        return not_comparable(site_name, "not comparable: the original model cannot expose this value", None, value)
    if value not in b:
        return not_comparable(site_name, NOT_FOUND, tuple(np.shape(a[value])), value)
    return compare(site_name, a[value], b[value], value)
