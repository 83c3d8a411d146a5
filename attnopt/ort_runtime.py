"""onnxruntime sessions: the provider asked for or a clear error, and runs that can expose inner values.

Used by the ONNX frontend for validate (original and rewritten, with each site's
output exposed as an extra graph output) and bench (a plain session per worker).
"""

from __future__ import annotations

import os
import tempfile
from typing import Mapping, Sequence

from .errors import AttnoptError, one_line
from .frontends.base import ExposedValue, RunResult, Runner
from .onnx_compat import IR_VERSION

# Models whose initializers exceed this many bytes reach onnxruntime as a file, not as bytes.
IN_MEMORY_LIMIT = 1 << 30


def providers_for(provider: str) -> list[str]:
    """'cpu' / 'cuda' -> the onnxruntime providers list; fails clearly when CUDA is not there."""
    import onnxruntime as ort

    provider = (provider or "cpu").lower()
    if provider == "cpu":
        return ["CPUExecutionProvider"]
    if provider == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise AttnoptError("--provider cuda: this onnxruntime has no CUDAExecutionProvider "
                               "(install onnxruntime-gpu)")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise AttnoptError(f"unknown provider {provider!r}; use cpu or cuda")


def session(model_or_path, provider: str = "cpu", threads: int | None = None):
    """An onnxruntime session on the requested provider, refusing a silent CPU fallback."""
    import onnxruntime as ort

    providers = providers_for(provider)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    try:
        sess = ort.InferenceSession(model_or_path, sess_options=opts, providers=providers)
    except Exception as e:
        raise AttnoptError(f"onnxruntime cannot load the model: {type(e).__name__}: {one_line(e)}") from None
    if providers[0] not in sess.get_providers()[:1]:
        raise AttnoptError(f"onnxruntime fell back from {providers[0]} to {sess.get_providers()[0]} "
                           "(no usable GPU / CUDA libraries?)")
    return sess


def check_provider(provider: str) -> None:
    """Fail now, with the reason, if onnxruntime cannot run on ``provider`` (tried on a one-node model)."""
    if providers_for(provider)[0] == "CPUExecutionProvider":
        return
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    model = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)], ir_version=IR_VERSION)
    session(model.SerializeToString(), provider)


class OrtRunner(Runner):
    """A session over an onnx_ir model (a copy with the exposed values as extra outputs) or an .onnx file.

    Temporary files (for models too large to hand over as bytes) live while the runner does.
    """

    def __init__(self, model, expose: Sequence[ExposedValue] = (), provider: str = "cpu",
                 threads: int | None = None):
        self.label = provider
        self.exposed: list[str] = []  # the requested values this model has
        self._added: set[str] = set()  # exposed values that are not graph outputs of their own
        self._tmp = None
        if isinstance(model, (str, os.PathLike)) and not expose:
            self.session = session(str(model), provider, threads)
        else:
            if isinstance(model, (str, os.PathLike)):
                from .frontends.onnx import load

                model = load(model)
            self.session = session(self._serialized(self._with_outputs(model, expose)), provider, threads)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def _with_outputs(self, model, expose: Sequence[ExposedValue]):
        """A copy of ``model`` whose graph also outputs every exposed value it has (a value needs its dtype)."""
        copy = model.clone()
        wanted = {e.name: e for e in expose}
        by_name = _top_level_values(copy)
        if any(by_name[n].dtype is None for n in wanted if n in by_name):
            from .frontends.onnx import infer_shapes

            copy = infer_shapes(copy)
        present = {v.name for v in copy.graph.outputs}
        for name, e in wanted.items():
            v = by_name.get(name)
            if v is None:
                continue
            if v.dtype is None and getattr(e.like, "dtype", None) is not None:
                v.dtype = e.like.dtype  # the original's type: the rewrite keeps the value's meaning
            if v.dtype is None:
                continue
            if name not in present:
                copy.graph.outputs.append(v)
                present.add(name)
                self._added.add(name)
            self.exposed.append(name)
        return copy

    def _serialized(self, model):
        import onnx_ir as ir

        inits = [v.const_value for v in model.graph.initializers.values() if v.const_value is not None]
        external = any(isinstance(t, ir.ExternalTensor) for t in inits)
        size = sum(getattr(t, "nbytes", 0) for t in inits)
        if not external and size < IN_MEMORY_LIMIT:
            return ir.to_proto(model).SerializeToString()
        self._tmp = tempfile.TemporaryDirectory(prefix="attnopt-ort-")
        path = os.path.join(self._tmp.name, "model.onnx")
        ir.save(model, path, external_data="model.onnx.data")
        return path

    def run(self, feeds: Mapping) -> RunResult:
        try:
            results = self.session.run(None, dict(feeds))
        except Exception as e:
            raise AttnoptError(f"onnxruntime failed to run the model: {type(e).__name__}: {one_line(e)}") from None
        by_name = dict(zip(self.output_names, results))
        outputs = {n: by_name[n] for n in self.output_names if n not in self._added}
        return RunResult(outputs, {n: by_name[n] for n in self.exposed})

    def close(self) -> None:
        self.session = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def _top_level_values(model) -> dict:
    """Graph inputs and node outputs by name; values inside subgraphs cannot be graph outputs."""
    out = {v.name: v for v in model.graph.inputs}
    for node in model.graph:
        for v in node.outputs:
            if v.name:
                out.setdefault(v.name, v)
    return out
