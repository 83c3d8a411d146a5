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


def import_onnxruntime():
    """The onnxruntime module, or a one-line AttnoptError saying how to install it.

    attnopt requires no onnxruntime distribution itself: onnxruntime and onnxruntime-gpu
    both provide the module, and installing one next to the other breaks both.
    """
    try:
        import onnxruntime
    except ImportError:
        raise AttnoptError("attnopt runs ONNX models in onnxruntime, which is not installed: "
                           "pip install 'attnopt[cpu]' (CPU) or 'attnopt[cuda]' (NVIDIA GPU, onnxruntime-gpu)") from None
    return onnxruntime


def providers_for(provider: str) -> list[str]:
    """'cpu' / 'cuda' -> the onnxruntime providers list; fails clearly when CUDA is not there."""
    provider = (provider or "cpu").lower()
    if provider == "cpu":
        return ["CPUExecutionProvider"]
    if provider == "cuda":
        reason = cuda_missing()
        if reason:
            raise AttnoptError(f"--provider cuda: {reason}")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise AttnoptError(f"unknown provider {provider!r}; use cpu or cuda")


def cuda_missing() -> str | None:
    """What keeps onnxruntime's CUDA provider from loading here, in one line; None when nothing does.

    onnxruntime-gpu lists CUDAExecutionProvider as available even without a GPU or
    CUDA libraries, then falls back to the CPU with a multi-line log. Loading the
    provider library ourselves names the missing piece (libcublasLt.so.13, ...).
    """
    import ctypes

    ort = import_onnxruntime()

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return ("this onnxruntime has no CUDAExecutionProvider; install onnxruntime-gpu in place of onnxruntime "
                "(pip uninstall onnxruntime && pip install 'attnopt[cuda]')")
    library = os.path.join(os.path.dirname(ort.__file__), "capi", "libonnxruntime_providers_cuda.so")
    if os.path.exists(library):  # Linux wheels; elsewhere the session probe below decides
        try:
            ctypes.CDLL(library)
        except OSError as e:
            return f"onnxruntime's CUDA provider cannot load: {one_line(e)} (no CUDA toolkit / driver for it here?)"
    return None


def session(model_or_path, provider: str = "cpu", threads: int | None = None, profile_dir: str | None = None,
            optimized_path: str | None = None):
    """An onnxruntime session on the requested provider, refusing a silent CPU fallback.

    ``optimized_path``: where onnxruntime saves the graph it will run (after its
    rewrites, with the provider's host-device copies inserted)."""
    ort = import_onnxruntime()

    providers = providers_for(provider)
    ort.set_default_logger_severity(3)  # a provider that cannot load logs pages; the error below says it once
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if profile_dir:
        opts.enable_profiling = True
        opts.profile_file_prefix = os.path.join(profile_dir, "ort_profile")
    if optimized_path:
        opts.optimized_model_filepath = optimized_path
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

    def bound(self, feeds: Mapping) -> "BoundRun":
        """``feeds`` copied to the session's device once; runs then time the model, not host-device copies."""
        return BoundRun(self.session, feeds, "cuda" if self.label == "cuda" else "cpu")

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


class BoundRun:
    """One model's runs through onnxruntime IO binding: inputs and outputs stay on the device.

    Calling it runs the model and waits for it (``run_with_iobinding`` synchronizes),
    so a timer around the call measures the model alone; ``outputs()`` copies the last
    run's outputs to the host, outside any timing.
    """

    def __init__(self, sess, feeds: Mapping, device: str):
        import numpy as np
        import onnxruntime as ort

        self.session = sess
        self.binding = sess.io_binding()
        self._inputs = []  # the device copies must outlive the binding
        for name, value in feeds.items():
            value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value), device, 0)
            self._inputs.append(value)
            self.binding.bind_ortvalue_input(name, value)
        self.output_names = [o.name for o in sess.get_outputs()]
        for name in self.output_names:
            self.binding.bind_output(name, device)

    def __call__(self) -> None:
        try:
            self.session.run_with_iobinding(self.binding)
        except Exception as e:
            raise AttnoptError(f"onnxruntime failed to run the model: {type(e).__name__}: {one_line(e)}") from None

    def outputs(self) -> dict:
        return dict(zip(self.output_names, self.binding.copy_outputs_to_cpu()))


def placement(model_path: str, feeds: Mapping, provider: str, warmup: int = 1) -> dict:
    """Where onnxruntime ran each node of one run of ``model_path`` on ``provider``, from its profile.

    The run profiled is the last of ``warmup + 1``.

    The profile lists every kernel that ran, the nodes of inlined ai.attnopt bodies and of
    ``If`` branches included, with its execution provider. Returns ``cpu_nodes`` (how many
    nodes ran on the CPU: shape arithmetic, or an op the provider has no kernel for),
    ``cpu_ms`` (their summed kernel time), ``cpu_ops`` (op type -> count), ``memcpy_nodes``
    (host-device copies inside the model), ``nodes`` (all nodes that ran), ``run_ms`` (the
    profiled run), ``host_ms_by_op`` (the profile's time per op type, all providers, largest
    first; an If, Loop or Scan counts only its own time, its branches' nodes under their own types; on a
    GPU a kernel's entry is its launch, so a large share for ``MemcpyToHost`` is the host waiting for the
    device; under ``CUDA_LAUNCH_BLOCKING=1`` it is the kernel's) and
    ``memcpy_inputs`` ("MemcpyToHost <- Range": what each copy carries, by the op that made it,
    read off the graph onnxruntime saved after placing the nodes).
    """
    import json
    from collections import Counter, defaultdict

    with tempfile.TemporaryDirectory(prefix="attnopt-profile-") as tmp:
        optimized = os.path.join(tmp, "optimized.onnx")
        sess = session(model_path, provider, profile_dir=tmp, optimized_path=optimized)
        run = BoundRun(sess, feeds, "cuda" if provider == "cuda" else "cpu")
        for _ in range(warmup + 1):
            run()
        path = sess.end_profiling()
        with open(path) as f:
            events = json.load(f)
        del run, sess
        memcpy_inputs = _memcpy_inputs(optimized)
    # Only the last run: a first run also pays for allocations and kernel selection.
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    last = max(runs, key=lambda e: float(e.get("ts", 0)), default={})
    since = float(last.get("ts", 0))
    events = [e for e in events if float(e.get("ts", 0)) >= since]
    kernels = [e for e in events if e.get("cat") == "Node" and "provider" in (e.get("args") or {})
               and e.get("name", "").endswith("_kernel_time")]
    nodes: dict[tuple, tuple[str, str]] = {}
    cpu_us = 0.0
    host_us: dict[str, float] = defaultdict(float)
    for e, self_us in zip(kernels, _self_times(kernels)):
        args = e["args"]
        # A node is its name with its op and index: names alone collide (an If and a node of its branch can
        # share one), and a node inside a Loop or Scan reports once per iteration.
        op = args.get("op_name", "?")
        nodes[(e["name"], op, args.get("node_index"))] = (op, args["provider"])
        host_us[op] += self_us
        if args["provider"] == "CPUExecutionProvider":
            cpu_us += self_us
    cpu_ops = Counter(op for op, where in nodes.values() if where == "CPUExecutionProvider")
    by_op = sorted(host_us.items(), key=lambda kv: -kv[1])
    return {"nodes": len(nodes), "cpu_nodes": sum(cpu_ops.values()), "cpu_ms": round(cpu_us / 1e3, 3),
            "run_ms": round(float(last.get("dur", 0)) / 1e3, 3),
            "cpu_ops": dict(sorted(cpu_ops.items(), key=lambda kv: (-kv[1], kv[0]))),
            "memcpy_nodes": sum(1 for op, _ in nodes.values() if op.startswith("Memcpy")),
            "host_ms_by_op": {op: round(us / 1e3, 3) for op, us in by_op},
            "memcpy_inputs": memcpy_inputs}


def _self_times(kernels: list[dict]) -> list[float]:
    """Each profiled node's own time in µs: an If, Loop or Scan runs its branch's nodes inside its kernel, and
    those nodes are profiled too, so a control-flow node keeps only what its directly nested nodes (same
    thread, inside its interval) leave. Summed by op type, no time then counts twice."""
    own = [float(e.get("dur", 0)) for e in kernels]
    order = sorted(range(len(kernels)), key=lambda i: (kernels[i].get("tid", 0), float(kernels[i].get("ts", 0)),
                                                      -own[i]))
    open_flows: list[tuple[int, float]] = []  # (index, end) of the control-flow nodes enclosing the current one
    last_tid = None
    for i in order:  # by start within a thread, so every open flow started at or before this node
        e = kernels[i]
        dur = float(e.get("dur", 0))
        end = float(e.get("ts", 0)) + dur
        if e.get("tid", 0) != last_tid:
            open_flows, last_tid = [], e.get("tid", 0)
        while open_flows and open_flows[-1][1] < end:
            open_flows.pop()
        if open_flows:
            own[open_flows[-1][0]] -= dur
        if e["args"].get("op_name") in ("If", "Loop", "Scan"):
            open_flows.append((i, end))
    return [max(t, 0.0) for t in own]


def _memcpy_inputs(optimized_path: str) -> dict:
    """{"MemcpyToHost <- Range": count, ...} over the saved graph and its subgraphs; {} if none was saved."""
    from collections import Counter

    import onnx

    from .kernels.onnx_functions import all_nodes

    if not os.path.exists(optimized_path):
        return {}
    try:
        model = onnx.load(optimized_path, load_external_data=False)
    except Exception:  # a graph onnxruntime could not serialise is a missing detail, not a failed placement
        return {}
    nodes = list(all_nodes(model.graph.node))
    made_by = {o: n.op_type for n in nodes for o in n.output}  # names are unique across subgraphs in ONNX
    found = Counter(f"{n.op_type} <- {made_by.get(n.input[0], 'input')}" for n in nodes
                    if n.op_type.startswith("Memcpy"))
    return dict(found.most_common())
