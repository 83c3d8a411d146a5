"""The one protocol every backend implements; everything above the frontends talks only to it.

A ``Frontend`` reads a model (``load``), lifts it into a View, applies a pass's
``OpCall`` to it, finalizes and saves the result, and runs models on inputs.
pipeline, validate, bench and the CLI take the frontend from the loaded model
(``loaded.frontend``) or from ``attnopt.frontends.frontend_for(model)``, the only
place that tells the backends apart.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

from ..graph import View
from ..loaded import LoadedModel, relift
from ..site import AttentionSite


@dataclass(frozen=True)
class ExposedValue:
    """A site's output value, read out of a run by ``name``: the rewrite keeps that name.

    ``like`` is the original model's object for the value; a frontend that must know a
    value's type to expose it reads it there when the rewritten model does not say.
    """

    name: str
    like: Any = None


@dataclass
class RunResult:
    outputs: dict[str, Any]  # the model's outputs by name, in the model's order
    exposed: dict[str, Any] = field(default_factory=dict)  # the requested values the model could expose


class Runner:
    """One model, ready to run on feeds (input name -> array or tensor). Close it, or use ``with``."""

    input_names: list[str]
    label: str  # where it runs, for reports: "cpu", "cuda", "torch-cpu"

    def run(self, feeds: Mapping[str, Any]) -> RunResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False


class Frontend(ABC):
    """A backend (ONNX, fx). Instances hold no state, so one can be handed to a worker process."""

    kind: ClassVar[str]  # "onnx" | "fx": for reports, never for branching
    description: ClassVar[str]  # "an ONNX model": for messages
    runtime: ClassVar[str]  # what runs its models: "onnxruntime" | "torch"

    # -- reading and surgery ------------------------------------------------

    @abstractmethod
    def read(self, handle, example_inputs=None, *, mutable: bool = False) -> tuple[Any, str]:
        """(model object, a name for reports). ``mutable=True`` returns a private copy for surgery."""

    def load(self, handle, example_inputs=None, *, mutable: bool = False) -> LoadedModel:
        """Read ``handle``, lift it and detect its sites."""
        model, source = self.read(handle, example_inputs, mutable=mutable)
        examples = tuple(example_inputs) if example_inputs is not None else None
        return relift(LoadedModel(self, model, source=source, example_inputs=examples))

    @abstractmethod
    def lift(self, model) -> View:
        """The backend-neutral View of ``model``."""

    @abstractmethod
    def apply(self, loaded: LoadedModel, call) -> None:
        """Graph surgery for one ``passes.base.OpCall``; raises SiteNotApplicable to leave the site dense."""

    @abstractmethod
    def finalize(self, loaded: LoadedModel, kernels: set[str]) -> None:
        """After every apply: drop dead nodes and attach what the kernels need. The caller re-lifts."""

    @abstractmethod
    def save(self, loaded: LoadedModel, path) -> Path:
        """Write the model atomically (never a partial file)."""

    @abstractmethod
    def input_names(self, loaded: LoadedModel) -> list[str]:
        """The model's inputs, by name, in call order."""

    def verify(self, loaded: LoadedModel, sites: Sequence[str]) -> None:
        """Raise RewriteVerificationError, naming the site at fault where it can, unless the model loads and runs.

        ``sites`` are the names of the rewritten sites. The default has nothing to check.
        """

    @abstractmethod
    def value_probe(self, loaded: LoadedModel, refs: Sequence):
        """An evaluator of just these View values (and what they depend on), for mask analysis."""

    # -- running ------------------------------------------------------------

    @abstractmethod
    def check_provider(self, provider: str) -> None:
        """Fail now, with the reason, if models cannot run on ``provider`` ("cpu", "cuda")."""

    @abstractmethod
    def inputs(self, loaded: LoadedModel, given=None, *, seq_len: int | None = None, batch: int = 2,
               seed: int = 0, example_inputs=None) -> dict[str, Any]:
        """Feeds for ``loaded``, by input name: ``given`` ones checked, or seeded random ones at ``seq_len``.

        Refuses a ``seq_len`` the model cannot take, so callers can ask before any work.
        """

    def exposed_value(self, loaded: LoadedModel, site: AttentionSite, ref=None) -> ExposedValue:
        """The value ``site`` outputs in ``loaded``, to compare it between two runs; or ``ref``, another of the
        site's values (the tuner reads q, k and the key padding to measure data-dependent variants)."""
        from ..errors import AttnoptError

        obj = loaded.view.value_of.get(site.output if ref is None else ref)
        if obj is None:
            raise AttnoptError(f"site {site.name}: its {'output' if ref is None else ref} is not a value of the "
                               "original model")
        return ExposedValue(obj.name, obj)  # onnx_ir values and fx nodes both carry their name

    @abstractmethod
    def runner(self, model, *, expose: Sequence[ExposedValue] = (), provider: str = "cpu",
               threads: int | None = None) -> Runner:
        """A Runner for ``model`` (a model object or a ``worker_file``), exposing ``expose`` as extra results."""

    @abstractmethod
    def worker_file(self, model, stem: Path) -> Path | None:
        """A file a fresh process can build a Runner from (``stem`` plus a suffix, or the model's own file).

        None when the model cannot be written so; the caller then runs it in its own process.
        """

    @abstractmethod
    def prepare_process(self) -> None:
        """In a fresh worker process: import the runtime (and define attnopt's ops) before any measurement."""

    @abstractmethod
    def runtime_versions(self) -> dict[str, str]:
        """The runtime's name -> version, for reports."""
