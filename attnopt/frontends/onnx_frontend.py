"""The ONNX frontend object: onnx_ir models, run in onnxruntime.

Reading and lifting live in ``onnx.py``, surgery in ``onnx_rewrite.py``, sessions in
``attnopt.ort_runtime``; this object is what the rest of attnopt holds.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from ..graph import View
from ..loaded import LoadedModel
from .base import ExposedValue, Frontend, Runner


class OnnxFrontend(Frontend):
    kind = "onnx"
    description = "an ONNX model"
    runtime = "onnxruntime"
    targets = ("portable", "ort-cuda")  # what the rewrite can compile op calls for (kernels.ort_cuda)

    def read(self, handle, example_inputs=None, *, mutable: bool = False) -> tuple[Any, str]:
        import onnx_ir as ir

        from . import onnx as onnx_reader

        if mutable and isinstance(handle, ir.Model):
            handle = ir.from_proto(ir.to_proto(handle))  # paths and protos are read into new objects anyway
        model = onnx_reader.infer_shapes(onnx_reader.load(handle))
        source = str(handle) if isinstance(handle, (str, os.PathLike)) else (model.graph.name or "model")
        return model, source

    def lift(self, model) -> View:
        from . import onnx as onnx_reader

        return onnx_reader.lift(model)

    def apply(self, loaded, call, target: str = "portable") -> list[str]:
        from . import onnx_rewrite

        return onnx_rewrite.apply(loaded, call, target)

    def finalize(self, loaded, kernels: set[str]) -> None:
        from . import onnx_rewrite

        onnx_rewrite.finalize(loaded, kernels)

    def save(self, loaded, path) -> Path:
        from .onnx_rewrite import save_atomic

        save_atomic(loaded.model, path)
        return Path(path)

    def input_names(self, loaded) -> list[str]:
        initializers = set(loaded.model.graph.initializers)
        return [v.name for v in loaded.model.graph.inputs if v.name not in initializers]

    def verify(self, loaded, sites: Sequence[str]) -> None:
        """onnx.checker, an onnxruntime CPU session, and one run on made-up inputs: what every user of the file
        will do first. A run that fails where the original runs on the same inputs refuses the rewrite."""
        import tempfile

        import onnx
        import onnx_ir as ir

        from ..ort_runtime import import_onnxruntime

        ort = import_onnxruntime()

        from ..errors import RewriteVerificationError, one_line

        model = loaded.model
        from .onnx_rewrite import has_external_data

        external = has_external_data(model)
        stage, feeds = "onnx.checker", None

        def open_and_run(source) -> None:
            nonlocal stage, feeds
            stage = "onnxruntime"
            session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
            feeds = _verify_feeds(model)
            if feeds is not None:
                stage = "onnxruntime (a run)"
                session.run(None, feeds)

        try:
            options = ort.SessionOptions()
            options.log_severity_level = 3
            if external:  # weights stay on disk: check a copy written the way the user's file will be
                with tempfile.TemporaryDirectory(prefix="attnopt-verify-") as tmp:
                    path = f"{tmp}/model.onnx"
                    ir.save(model, path, external_data="model.onnx.data")
                    onnx.checker.check_model(path)
                    open_and_run(path)
            else:
                proto = ir.serde.serialize_model(model)
                onnx.checker.check_model(proto)
                open_and_run(proto.SerializeToString())
        except Exception as e:
            culprit = next((name for name in sites if name and f"{name}/" in str(e)), None)
            where = f"site {culprit}: " if culprit else ""
            if stage == "onnxruntime (a run)" and not _original_works(ort, loaded.source, options, feeds):
                return  # the original cannot take these made-up inputs either: the run proves nothing
            if stage == "onnxruntime":
                why: list[str] = []
                loads = _original_works(ort, loaded.source, options, why=why)
                if loads is False:
                    raise RewriteVerificationError(
                        f"the original model fails onnxruntime too, so the rewrite could not be checked and was not "
                        f"written (the export is broken outside attnopt's sites; try the other exporter). The "
                        f"original: {why[0]} | the rewritten model: {one_line(e)}") from None
                # A broken export can load and fail only when run (a MatMul of mismatched widths), while the
                # rewritten body's shape inference meets the same shapes at load.
                if loads and _original_works(ort, loaded.source, options, _verify_feeds(model), why=why) is False:
                    raise RewriteVerificationError(
                        f"{where}the rewritten model fails onnxruntime, so it was not written; the original loads "
                        f"but fails its first run on made-up inputs, so the export may be broken outside attnopt's "
                        f"sites (try the other exporter). The original: {why[0]} | the rewritten model: "
                        f"{one_line(e)}") from None
            raise RewriteVerificationError(f"{where}the rewritten model fails {stage}, so it was not written: "
                                           f"{one_line(e)}") from None

    def value_probe(self, loaded, refs: Sequence):
        from .onnx_probe import OnnxProbe

        return OnnxProbe(loaded.model, loaded.view, refs)

    def check_provider(self, provider: str) -> None:
        from .. import ort_runtime

        ort_runtime.check_provider(provider)

    def inputs(self, loaded, given=None, *, seq_len=None, batch=2, seed=0, example_inputs=None) -> dict:
        from ..inputs import onnx_inputs, site_seq_len

        return onnx_inputs(loaded.model, given, seq_len, batch=batch, seed=seed, seq_hint=site_seq_len(loaded.sites))

    def runner(self, model, *, expose: Sequence[ExposedValue] = (), provider: str = "cpu",
               threads: int | None = None) -> Runner:
        from ..ort_runtime import OrtRunner

        if not isinstance(model, (str, os.PathLike)):  # a file goes to onnxruntime as it is
            from . import onnx as onnx_reader

            model = onnx_reader.load(model)
        return OrtRunner(model, expose, provider, threads)

    def worker_file(self, model, stem: Path) -> Path | None:
        if isinstance(model, (str, os.PathLike)):
            return Path(model)  # its own file: no copy of a model that may be large
        import onnx_ir as ir

        from . import onnx as onnx_reader

        model = onnx_reader.load(model.model if isinstance(model, LoadedModel) else model)
        path = Path(f"{stem}.onnx")
        ir.save(model, path, external_data=f"{path.name}.data")  # external: models over 2 GB save too
        return path

    def placement(self, model_file, feeds: dict, provider: str) -> dict:
        """Which nodes onnxruntime ran on the CPU in one run on ``provider`` (ort_runtime.placement)."""
        from ..ort_runtime import placement

        return placement(str(model_file), feeds, provider)

    def prepare_process(self) -> None:
        from ..ort_runtime import import_onnxruntime

        import_onnxruntime()  # its memory is the runtime's, not the model's

    def runtime_versions(self) -> dict[str, str]:
        from ..ort_runtime import import_onnxruntime

        onnxruntime = import_onnxruntime()

        return {"onnxruntime": onnxruntime.__version__}


ONNX = OnnxFrontend()


# The run that verification makes: a short sequence of made-up inputs (attnopt.inputs). Loading alone passed a
# rewrite whose op received pooled queries as self-attention and failed on its first run.
VERIFY_SEQ_LEN = 16


def _verify_feeds(model) -> dict | None:
    """Inputs for one verification run, or None where the model's inputs cannot be made up."""
    from ..errors import AttnoptError
    from ..inputs import has_seq_dim, make_onnx_inputs, onnx_input_specs

    try:
        return make_onnx_inputs(model, VERIFY_SEQ_LEN if has_seq_dim(onnx_input_specs(model)) else None)
    except AttnoptError:
        return None


def _original_works(ort, source: str, options, feeds: dict | None = None, why: list | None = None) -> bool | None:
    """Whether the model file the rewrite read opens in onnxruntime and, given ``feeds``, runs on them; None
    where there is no file to try. Some exports fail on their own: a TorchScript export of CANINE fails ORT's
    shape inference in a layer no rewrite touches. ``why`` collects onnxruntime's words for a failure."""
    if not source or not os.path.isfile(source):
        return None
    try:
        session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        if feeds is not None:  # the rewritten model's inputs: the original's, and any state the rewrite added
            session.run(None, {i.name: feeds[i.name] for i in session.get_inputs() if i.name in feeds})
    except Exception as e:  # noqa: BLE001  any failure is the answer
        if why is not None:
            from ..errors import one_line

            why.append(one_line(e))
        return False
    return True
