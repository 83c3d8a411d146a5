"""The fx frontend object: torch.fx GraphModules and ExportedPrograms, run in torch on the CPU.

Lifting lives in ``fx.py``, surgery in ``fx_rewrite.py``, running in
``attnopt.torch_runtime``; this object is what the rest of attnopt holds.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import AttnoptError, one_line
from ..graph import View
from ..inputs import check_names, load_npz, site_seq_len, torch_inputs, torch_vocab
from ..torch_runtime import TorchRunner, example_inputs_of, load_module, save_module, symbolic_axes, user_placeholders
from ..loaded import LoadedModel
from .base import ExposedValue, Frontend, Runner


class FxFrontend(Frontend):
    kind = "fx"
    description = "a torch model"
    runtime = "torch"

    def read(self, handle, example_inputs=None, *, mutable: bool = False) -> tuple[Any, str]:
        from . import fx as fx_lifter

        if isinstance(handle, torch.export.ExportedProgram):
            graph = handle
        elif isinstance(handle, torch.fx.GraphModule):
            graph = handle
            if example_inputs is not None:
                fx_lifter.propagate_shapes(handle, tuple(example_inputs))
        elif isinstance(handle, torch.nn.Module):
            if example_inputs is None:
                raise AttnoptError("an nn.Module needs example_inputs (a tuple of tensors) to be traced")
            try:
                graph = torch.export.export(handle, tuple(example_inputs))
            except Exception as e:
                raise AttnoptError(f"torch.export could not trace the module: {type(e).__name__}: "
                                   f"{one_line(e, 200)}") from None
        else:
            raise AttnoptError(f"cannot read a model of type {type(handle).__name__}")
        if mutable:  # fx surgery edits a GraphModule: an ExportedProgram's runnable one, or a copy
            graph = graph.module() if isinstance(graph, torch.export.ExportedProgram) else copy.deepcopy(graph)
        return graph, type(handle).__name__

    def lift(self, model) -> View:
        from . import fx as fx_lifter

        return fx_lifter.lift(model)

    def apply(self, loaded, call) -> None:
        from . import fx_rewrite

        fx_rewrite.apply(loaded, call)

    def finalize(self, loaded, kernels: set[str]) -> None:
        from . import fx_rewrite

        fx_rewrite.finalize(loaded, kernels)

    def save(self, loaded, path) -> Path:
        raise AttnoptError("save() writes ONNX; for fx graphs use attnopt.export_onnx")

    def value_probe(self, loaded, refs: Sequence):
        from .fx_probe import FxProbe

        return FxProbe(loaded.model, loaded.view, refs)

    def check_provider(self, provider: str) -> None:
        if (provider or "cpu").lower() != "cpu":
            raise AttnoptError(f"--provider {provider}: torch models run on the CPU only")

    def input_names(self, loaded) -> list[str]:
        model = loaded.model
        if isinstance(model, torch.export.ExportedProgram):
            return [s.arg.name for s in model.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
        return [n.target for n in model.graph.nodes if n.op == "placeholder"]

    def inputs(self, loaded, given=None, *, seq_len=None, batch=2, seed=0, example_inputs=None) -> dict:
        """Given inputs in order, or the example inputs (their batch, not ``batch``) resized to ``seq_len``."""
        names = [n.name for n in user_placeholders(loaded.model)]
        if given is not None:
            return dict(zip(names, _given_inputs(given, names)))
        examples = example_inputs_of(loaded, example_inputs)
        if seq_len is not None:
            gm = getattr(loaded.model, "graph_module", loaded.model)
            examples = torch_inputs(examples, names, seq_len, seed=seed, seq_size=_seq_size(loaded, examples),
                                    symbolic_axes=symbolic_axes(loaded.model),
                                    vocabs=[torch_vocab(gm, n) for n in names])
        return dict(zip(names, examples))

    def runner(self, model, *, expose: Sequence[ExposedValue] = (), provider: str = "cpu",
               threads: int | None = None) -> Runner:
        self.check_provider(provider)
        if isinstance(model, (str, os.PathLike)):
            model = load_module(model)
        return TorchRunner(model, expose, threads)

    def worker_file(self, model, stem: Path) -> Path | None:
        if isinstance(model, LoadedModel):
            model = model.model
        if isinstance(model, torch.export.ExportedProgram):
            model = model.module()
        return save_module(model, Path(f"{stem}.pt"))

    def prepare_process(self) -> None:
        from ..torch_runtime import define_attnopt_ops

        define_attnopt_ops()

    def runtime_versions(self) -> dict[str, str]:
        return {"torch": torch.__version__}


def _given_inputs(given, names: list[str]) -> tuple:
    if isinstance(given, (str, os.PathLike)):
        given = load_npz(given)
    if isinstance(given, dict):
        check_names(list(given), names)
        given = [given[n] for n in names]
    out = tuple(x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x)) for x in given)
    if len(out) != len(names):
        raise AttnoptError(f"the model takes {len(names)} inputs ({', '.join(names)}), got {len(out)}")
    return out


def _seq_size(loaded, examples: Sequence) -> int | None:
    """The sequence length of the example inputs, as the attention sites see it."""
    static = site_seq_len(loaded.sites)
    if static is not None:
        return static
    symbols = {s.q_len for s in loaded.sites if isinstance(s.q_len, str)}
    for n, t in zip(user_placeholders(loaded.model), examples):
        val = n.meta.get("val")
        if isinstance(val, torch.Tensor) and isinstance(t, torch.Tensor):
            for axis, d in enumerate(val.shape):
                if str(d) in symbols:
                    return int(t.shape[axis])
    return None


FX = FxFrontend()
