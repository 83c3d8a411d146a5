"""validate: run original and rewritten on identical inputs and compare, per output and per site.

ONNX models run in onnxruntime. Each attention site's output value is exposed
as an extra graph output in copies of both models: the rewrite keeps that
value's name, so the two runs can be lined up site by site. Torch models
(GraphModule, ExportedProgram, nn.Module) run under ``torch.no_grad`` in an fx
Interpreter that records the site nodes by name.

    >>> report = validate("bert.onnx", "bert.segmented.onnx", seq_len=1024)
    >>> report.worst_rel_l2, report.is_exact()
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np

from .errors import AttnoptError

# Tensors above this many bytes of initializers are handed to onnxruntime as a file.
_IN_MEMORY_LIMIT = 1 << 30

NOT_FOUND = "not comparable: no value of that name in the rewritten model"


@dataclass
class Metric:
    """How far ``b`` (rewritten) is from ``a`` (original) for one tensor."""

    name: str
    max_abs: float | None
    rel_l2: float | None  # ||a - b|| / ||a||
    cosine: float | None
    shape: tuple | None
    value: str = ""  # the tensor's name in the graph
    note: str = ""  # why it is not comparable, when it is not

    @property
    def comparable(self) -> bool:
        return self.rel_l2 is not None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape) if self.shape is not None else None
        for k in ("max_abs", "rel_l2", "cosine"):
            if d[k] is not None and not np.isfinite(d[k]):
                d[k] = str(d[k])  # JSON has no inf/nan
        return d


@dataclass
class ValidationReport:
    kind: str  # "onnx" | "fx"
    original: str
    rewritten: str
    outputs: list[Metric]
    sites: list[Metric]
    inputs: dict = field(default_factory=dict)  # name -> {"shape": [...], "dtype": str}
    provider: str | None = None

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
        }


# ----------------------------------------------------------------------------- metrics

def compare(name: str, a, b, value: str = "") -> Metric:
    """Metric of ``b`` against the reference ``a``. NaNs in the same places in both are ignored."""
    a, b = _as_array(a), _as_array(b)
    if a.shape != b.shape:
        return Metric(name, None, None, None, tuple(a.shape), value,
                      f"not comparable: shape {tuple(a.shape)} vs {tuple(b.shape)}")
    a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    nan_a, nan_b = np.isnan(a64), np.isnan(b64)
    if (nan_a != nan_b).any():
        return Metric(name, float("nan"), float("nan"), float("nan"), tuple(a.shape), value,
                      "NaN in one model and not the other")
    if nan_a.any():
        a64, b64 = a64[~nan_a], b64[~nan_a]
    inf = np.isinf(a64) | np.isinf(b64)
    if inf.any():  # equal infinities agree; anything else is an infinite error
        if (a64[inf] != b64[inf]).any():
            return Metric(name, float("inf"), float("inf"), float("nan"), tuple(a.shape), value)
        a64, b64 = a64[~inf], b64[~inf]
    diff = a64 - b64
    max_abs = float(np.abs(diff).max()) if diff.size else 0.0
    na, nb, nd = (float(np.linalg.norm(x)) for x in (a64, b64, diff))
    rel = nd / na if na > 0 else (0.0 if nd == 0 else float("inf"))
    if na > 0 and nb > 0:
        cosine = float(np.clip(np.dot(a64, b64) / (na * nb), -1.0, 1.0))
    else:
        cosine = 1.0 if na == nb else 0.0
    return Metric(name, max_abs, rel, cosine, tuple(a.shape), value)


def _as_array(x) -> np.ndarray:
    if hasattr(x, "detach"):
        import torch

        x = x.detach().cpu()
        if x.dtype in (torch.bfloat16, torch.float16):
            x = x.float()
        return x.numpy()
    return np.asarray(x)


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
    orig = _loaded(original, example_inputs)
    rew_kind = _kind(rewritten)
    if orig.kind != rew_kind:
        raise AttnoptError(f"cannot compare {_KIND_WORDS[orig.kind]} with {_KIND_WORDS[rew_kind]}")
    chosen = _select_sites(orig, sites)
    if orig.kind == "onnx":
        return _validate_onnx(orig, rewritten, chosen, inputs, seq_len, provider, batch, seed)
    return _validate_fx(orig, rewritten, chosen, inputs, seq_len, example_inputs, seed)


_KIND_WORDS = {"onnx": "an ONNX model", "fx": "a torch model"}


def _unwrap(model):
    """A RewriteResult -> its LoadedModel; anything else as it is."""
    from .loaded import LoadedModel

    loaded = getattr(model, "loaded", None)
    return loaded if isinstance(loaded, LoadedModel) else model


def _loaded(model, example_inputs=None):
    from .loaded import LoadedModel, open_model

    model = _unwrap(model)
    return model if isinstance(model, LoadedModel) else open_model(model, example_inputs)


def _kind(model) -> str:
    from .loaded import LoadedModel, is_onnx_handle

    model = _unwrap(model)
    if isinstance(model, LoadedModel):
        return model.kind
    return "onnx" if is_onnx_handle(model) else "fx"


def _underlying(model):
    from .loaded import LoadedModel

    model = _unwrap(model)
    return model.model if isinstance(model, LoadedModel) else model


def _source(model) -> str:
    from .loaded import LoadedModel

    model = _unwrap(model)
    if isinstance(model, LoadedModel):
        return model.source
    if isinstance(model, (str, os.PathLike)):
        return str(model)
    return type(model).__name__


def _select_sites(loaded, sites) -> list:
    """(site name, the site's output object in the original) for the sites to compare."""
    import fnmatch

    from .site import AttentionSite

    if sites is None:
        chosen = list(loaded.sites)
    else:
        chosen = []
        for s in sites:
            if isinstance(s, AttentionSite):
                chosen.append(s)
            else:
                hits = [x for x in loaded.sites if fnmatch.fnmatchcase(x.name, str(s))]
                if not hits:
                    raise AttnoptError(f"no attention site named {s!r}; sites: "
                                       f"{', '.join(x.name for x in loaded.sites) or 'none'}")
                chosen.extend(h for h in hits if h not in chosen)
    value_of = getattr(loaded.view, "value_of", {})
    out = []
    for s in chosen:
        obj = value_of.get(s.output)
        if obj is None:
            raise AttnoptError(f"site {s.name}: its output is not a value of the original model")
        out.append((s.name, obj))
    return out


def seq_hint(loaded) -> int | None:
    """The model's static attention length, when a site states one."""
    for s in loaded.sites:
        if isinstance(s.q_len, int):
            return s.q_len
    return None


# ----------------------------------------------------------------------------- ONNX

def ort_providers(provider: str) -> list[str]:
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


def ort_session(model_or_path, provider: str = "cpu", threads: int | None = None):
    """An onnxruntime session on the requested provider, refusing a silent CPU fallback."""
    import onnxruntime as ort

    providers = ort_providers(provider)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    try:
        sess = ort.InferenceSession(model_or_path, sess_options=opts, providers=providers)
    except Exception as e:
        raise AttnoptError(f"onnxruntime cannot load the model: {type(e).__name__}: "
                           f"{_one_line(e)}") from None
    if providers[0] not in sess.get_providers()[:1]:
        raise AttnoptError(f"onnxruntime fell back from {providers[0]} to {sess.get_providers()[0]} "
                           "(no usable GPU / CUDA libraries?)")
    return sess


def probe_provider(provider: str) -> None:
    """Fail now, with the reason, if onnxruntime cannot run on ``provider`` (a one-node model)."""
    if ort_providers(provider)[0] == "CPUExecutionProvider":
        return
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    model = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    ort_session(model.SerializeToString(), provider)


def _one_line(e: BaseException) -> str:
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    return lines[0][:300] if lines else ""


class _OrtModel:
    """A session over a copy of an onnx_ir model with extra outputs; files live while it does."""

    def __init__(self, model, extra_outputs: Sequence[str], provider: str, dtype_hints: dict | None = None,
                 threads: int | None = None):
        from .frontends import onnx as onnx_frontend

        copy = model.clone()
        copy = onnx_frontend.infer_shapes(copy)
        by_name = _values_by_name(copy)
        self.exposed: list[str] = []
        present = {v.name for v in copy.graph.outputs}
        for name in extra_outputs:
            v = by_name.get(name)
            if v is None:
                continue
            if v.dtype is None and dtype_hints and dtype_hints.get(name) is not None:
                v.dtype = dtype_hints[name]
            if v.dtype is None:
                continue
            if name not in present:
                copy.graph.outputs.append(v)
                present.add(name)
            self.exposed.append(name)
        self.output_names = [v.name for v in copy.graph.outputs]
        self._tmp = None
        self.session = ort_session(self._serialized(copy), provider, threads)
        self.input_names = [i.name for i in self.session.get_inputs()]

    def _serialized(self, model):
        import onnx_ir as ir

        external = any(isinstance(v.const_value, ir.ExternalTensor) for v in model.graph.initializers.values()
                       if v.const_value is not None)
        size = sum(v.const_value.nbytes for v in model.graph.initializers.values()
                   if v.const_value is not None and hasattr(v.const_value, "nbytes"))
        if not external and size < _IN_MEMORY_LIMIT:
            return ir.to_proto(model).SerializeToString()
        self._tmp = tempfile.TemporaryDirectory(prefix="attnopt-validate-")
        path = os.path.join(self._tmp.name, "model.onnx")
        ir.save(model, path, external_data="model.onnx.data")
        return path

    def run(self, feeds: dict) -> dict[str, np.ndarray]:
        try:
            results = self.session.run(None, feeds)
        except Exception as e:
            raise AttnoptError(f"onnxruntime failed to run the model: {type(e).__name__}: {_one_line(e)}") from None
        names = [o.name for o in self.session.get_outputs()]
        return dict(zip(names, results))

    def close(self):
        self.session = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def _values_by_name(model) -> dict:
    out = {}
    for v in model.graph.inputs:
        out[v.name] = v
    for node in model.graph:  # top level only: values inside subgraphs cannot be graph outputs
        for v in node.outputs:
            if v.name:
                out.setdefault(v.name, v)
    return out


def _validate_onnx(orig, rewritten, chosen, inputs, seq_len, provider, batch, seed) -> ValidationReport:
    from .frontends import onnx as onnx_frontend
    from .inputs import onnx_input_specs, onnx_inputs

    orig_model = orig.model
    rew_model = onnx_frontend.load(_underlying(rewritten))
    feeds = onnx_inputs(orig_model, inputs, seq_len, batch=batch, seed=seed, seq_hint=seq_hint(orig))
    orig_in = [s.name for s in onnx_input_specs(orig_model)]
    rew_in = [s.name for s in onnx_input_specs(rew_model)]
    if sorted(orig_in) != sorted(rew_in):
        raise AttnoptError(f"the rewritten model's inputs ({', '.join(rew_in)}) differ from the original's "
                           f"({', '.join(orig_in)})")
    site_values = [(name, v.name) for name, v in chosen]
    hints = {v.name: v.dtype for _, v in chosen}
    wanted = [value for _, value in site_values]
    a = _OrtModel(orig_model, wanted, provider, hints)
    try:
        out_a = a.run(feeds)
    finally:
        a.close()
    b = _OrtModel(rew_model, wanted, provider, hints)
    try:
        out_b = b.run(feeds)
    finally:
        b.close()

    orig_outputs = [v.name for v in orig_model.graph.outputs]
    rew_outputs = [v.name for v in rew_model.graph.outputs]
    outputs = []
    for i, name in enumerate(orig_outputs):
        other = name if name in rew_outputs else (rew_outputs[i] if i < len(rew_outputs) else None)
        if other is None:
            outputs.append(Metric(name, None, None, None, tuple(out_a[name].shape), name,
                                  "not comparable: the rewritten model has no such output"))
        else:
            outputs.append(compare(name, out_a[name], out_b[other], name))

    metrics = []
    for site_name, value in site_values:
        if value not in a.exposed:
            metrics.append(Metric(site_name, None, None, None, None, value,
                                  "not comparable: the original model cannot expose this value"))
        elif value not in b.exposed:
            metrics.append(Metric(site_name, None, None, None, tuple(out_a[value].shape), value, NOT_FOUND))
        else:
            metrics.append(compare(site_name, out_a[value], out_b[value], value))
    return ValidationReport("onnx", orig.source, _source(rewritten), outputs, metrics, _describe(feeds), provider)


def _describe(feeds) -> dict:
    return {k: {"shape": list(_as_array(v).shape), "dtype": str(_as_array(v).dtype)} for k, v in feeds.items()}


# ----------------------------------------------------------------------------- torch

class TorchRunner:
    """Runs a GraphModule or ExportedProgram graph in an Interpreter, recording named nodes."""

    def __init__(self, model):
        import torch

        self.model = model
        self.exported = isinstance(model, torch.export.ExportedProgram)
        self.gm = model.graph_module if self.exported else model
        if not isinstance(self.gm, torch.fx.GraphModule):
            raise AttnoptError(f"cannot run a model of type {type(model).__name__} node by node")

    def user_placeholders(self) -> list:
        phs = [n for n in self.gm.graph.nodes if n.op == "placeholder"]
        if not self.exported:
            return phs
        from torch.export.graph_signature import InputKind

        kinds = [s.kind for s in self.model.graph_signature.input_specs]
        return [n for n, k in zip(phs, kinds) if k == InputKind.USER_INPUT]

    def input_names(self) -> list[str]:
        return [n.name for n in self.user_placeholders()]

    def symbolic_axes(self) -> list[tuple[int, ...]] | None:
        """Per user input, the axes the graph keeps symbolic; None when shapes are unconstrained."""
        import torch

        axes = []
        for n in self.user_placeholders():
            val = n.meta.get("val")
            if not isinstance(val, torch.Tensor):
                if self.exported:
                    axes.append(())
                    continue
                return None  # symbolic_trace: nothing pins the shapes
            axes.append(tuple(a for a, d in enumerate(val.shape) if isinstance(d, torch.SymInt)
                              and not d.node.is_constant()))
        return axes

    def _args(self, user_inputs: Sequence) -> list:
        if not self.exported:
            return list(user_inputs)
        from torch.export.graph_signature import InputKind

        ep = self.model
        user = iter(user_inputs)
        args = []
        for spec in ep.graph_signature.input_specs:
            if spec.kind == InputKind.USER_INPUT:
                args.append(next(user))
            elif spec.kind == InputKind.PARAMETER:
                args.append(ep.state_dict[spec.target])
            elif spec.kind == InputKind.BUFFER:
                args.append(ep.state_dict[spec.target] if spec.target in ep.state_dict else ep.constants[spec.target])
            else:
                args.append(ep.constants[spec.target])
        return args

    def run(self, user_inputs: Sequence, record: Sequence[str] = ()) -> tuple[list, dict]:
        """(flat user outputs, {node name: value}) under no_grad."""
        import torch
        from torch.utils._pytree import tree_leaves

        want = set(record)
        seen: dict = {}

        class Recorder(torch.fx.Interpreter):
            def run_node(self, n):
                out = super().run_node(n)
                if n.name in want:
                    seen[n.name] = out.detach().clone() if isinstance(out, torch.Tensor) else out
                return out

        with torch.no_grad():
            try:
                result = Recorder(self.gm).run(*self._args(user_inputs))
            except AttnoptError:
                raise
            except Exception as e:
                raise AttnoptError(f"the torch model failed to run: {type(e).__name__}: {_one_line(e)}") from None
        flat = tree_leaves(result)
        if self.exported:
            from torch.export.graph_signature import OutputKind

            kinds = [s.kind for s in self.model.graph_signature.output_specs]
            if len(kinds) == len(flat):
                flat = [x for x, k in zip(flat, kinds) if k == OutputKind.USER_OUTPUT]
        return flat, seen


def example_inputs_of(loaded, example_inputs=None) -> tuple:
    import torch

    if example_inputs is not None:
        return tuple(example_inputs)
    if loaded.example_inputs is not None:
        return tuple(loaded.example_inputs)
    if isinstance(loaded.model, torch.export.ExportedProgram) and loaded.model.example_inputs is not None:
        from torch.utils._pytree import tree_leaves

        args, kwargs = loaded.model.example_inputs
        return tuple(tree_leaves((args, kwargs)))
    raise AttnoptError("a torch model needs example_inputs (a tuple of tensors) to be run")


def fx_seq_size(loaded, runner: TorchRunner, examples: Sequence) -> int | None:
    """The sequence length of the example inputs, as the attention sites see it."""
    import torch

    for s in loaded.sites:
        if isinstance(s.q_len, int):
            return s.q_len
    symbols = {s.q_len for s in loaded.sites if isinstance(s.q_len, str)}
    for n, t in zip(runner.user_placeholders(), examples):
        val = n.meta.get("val")
        if isinstance(val, torch.Tensor) and isinstance(t, torch.Tensor):
            for a, d in enumerate(val.shape):
                if str(d) in symbols:
                    return int(t.shape[a])
    return None


def fx_inputs(loaded, runner: TorchRunner, inputs, seq_len, example_inputs, seed) -> tuple:
    """User inputs for a torch model: given ones, or the examples resized to ``seq_len``."""
    import torch

    from .inputs import check_names, load_npz, torch_inputs, torch_vocab

    names = runner.input_names()
    if inputs is not None:
        if isinstance(inputs, (str, os.PathLike)):
            inputs = load_npz(inputs)
        if isinstance(inputs, dict):
            check_names(list(inputs), names)
            inputs = [inputs[n] for n in names]
        out = tuple(torch.as_tensor(np.asarray(x)) if not isinstance(x, torch.Tensor) else x for x in inputs)
        if len(out) != len(names):
            raise AttnoptError(f"the model takes {len(names)} inputs ({', '.join(names)}), got {len(out)}")
        return out
    examples = example_inputs_of(loaded, example_inputs)
    if seq_len is None:
        return examples
    vocabs = [torch_vocab(runner.gm, n) for n in names]
    return torch_inputs(examples, names, seq_len, seed=seed, seq_size=fx_seq_size(loaded, runner, examples),
                        symbolic_axes=runner.symbolic_axes(), vocabs=vocabs)


def _validate_fx(orig, rewritten, chosen, inputs, seq_len, example_inputs, seed) -> ValidationReport:
    rew_model = _underlying(rewritten)
    if not hasattr(rew_model, "graph_module") and not hasattr(rew_model, "graph"):
        from .loaded import open_model

        rew_model = open_model(rew_model, example_inputs_of(orig, example_inputs)).model
    ra, rb = TorchRunner(orig.model), TorchRunner(rew_model)
    user = fx_inputs(orig, ra, inputs, seq_len, example_inputs, seed)
    names = [node.name for _, node in chosen]
    out_a, seen_a = ra.run(user, names)
    out_b, seen_b = rb.run(user, names)
    outputs = []
    for i, a in enumerate(out_a):
        name = f"output{i}"
        if i >= len(out_b):
            outputs.append(Metric(name, None, None, None, tuple(_as_array(a).shape), "",
                                  "not comparable: the rewritten model has fewer outputs"))
        else:
            outputs.append(compare(name, a, out_b[i]))
    metrics = []
    for (site_name, node), name in zip(chosen, names):
        if name not in seen_a:
            metrics.append(Metric(site_name, None, None, None, None, name,
                                  "not comparable: the original model did not compute this node"))
        elif name not in seen_b:
            metrics.append(Metric(site_name, None, None, None, tuple(_as_array(seen_a[name]).shape), name,
                                  "not comparable: no node of that name in the rewritten model"))
        else:
            metrics.append(compare(site_name, seen_a[name], seen_b[name], name))
    feeds = dict(zip(ra.input_names(), user))
    return ValidationReport("fx", orig.source, _source(rewritten), outputs, metrics, _describe(feeds), "torch-cpu")
