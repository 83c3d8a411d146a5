"""Running torch models on inputs: GraphModules, ExportedPrograms and plain modules, on the CPU.

A run that must expose inner values (site outputs, for validate) goes through an
fx Interpreter that records the named nodes; a plain run (bench's timed loop)
calls the compiled module.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Mapping, Sequence

from .errors import AttnoptError, one_line
from .frontends.base import ExposedValue, RunResult, Runner

LABEL = "torch-cpu"


def user_placeholders(model) -> list:
    """The placeholders of ``model``'s graph that take user inputs (an ExportedProgram also lifts weights)."""
    import torch

    gm = model.graph_module if isinstance(model, torch.export.ExportedProgram) else model
    if not isinstance(gm, torch.fx.GraphModule):
        return []
    phs = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if not isinstance(model, torch.export.ExportedProgram):
        return phs
    from torch.export.graph_signature import InputKind

    kinds = [s.kind for s in model.graph_signature.input_specs]
    return [n for n, k in zip(phs, kinds) if k == InputKind.USER_INPUT]


def symbolic_axes(model) -> list[tuple[int, ...]] | None:
    """Per user input, the axes the graph keeps symbolic; None when nothing constrains the shapes."""
    import torch

    exported = isinstance(model, torch.export.ExportedProgram)
    axes = []
    for n in user_placeholders(model):
        val = n.meta.get("val")
        if not isinstance(val, torch.Tensor):
            if exported:
                axes.append(())
                continue
            return None  # symbolic_trace: nothing pins the shapes
        axes.append(tuple(a for a, d in enumerate(val.shape) if isinstance(d, torch.SymInt)
                          and not d.node.is_constant()))
    return axes


def example_inputs_of(loaded, example_inputs=None) -> tuple:
    """The example inputs given, remembered at load, or stored in an ExportedProgram."""
    import torch

    if example_inputs is not None:
        return tuple(example_inputs)
    if loaded.example_inputs is not None:
        return tuple(loaded.example_inputs)
    if isinstance(loaded.model, torch.export.ExportedProgram) and loaded.model.example_inputs is not None:
        from torch.utils._pytree import tree_leaves

        return tuple(tree_leaves(loaded.model.example_inputs))
    raise AttnoptError("a torch model needs example_inputs (a tuple of tensors) to be run")


class TorchRunner(Runner):
    """Runs a GraphModule, ExportedProgram or nn.Module under no_grad; feeds are taken in order."""

    label = LABEL

    def __init__(self, model, expose: Sequence[ExposedValue] = (), threads: int | None = None):
        import torch

        if threads:
            torch.set_num_threads(int(threads))
        self.model = model
        self.exported = isinstance(model, torch.export.ExportedProgram)
        self.gm = model.graph_module if self.exported else model
        self.record = [e.name for e in expose]
        if self.record and not isinstance(self.gm, torch.fx.GraphModule):
            raise AttnoptError(f"cannot run a model of type {type(model).__name__} node by node")
        self.input_names = [n.name for n in user_placeholders(model)]
        self._module = None

    def run(self, feeds: Mapping) -> RunResult:
        user = list(feeds.values())
        try:
            flat, seen = self._interpret(user) if self.record else (self._call(user), {})
        except AttnoptError:
            raise
        except Exception as e:
            raise AttnoptError(f"the torch model failed to run: {type(e).__name__}: {one_line(e)}") from None
        return RunResult({f"output{i}": x for i, x in enumerate(flat)}, seen)

    def _call(self, user: list) -> list:
        """The compiled module on the user inputs: what a deployment runs, so what bench times."""
        import torch
        from torch.utils._pytree import tree_leaves, tree_unflatten

        if self._module is None:
            self._module = self.model.module() if self.exported else self.model
        spec = getattr(self._module, "_in_spec", None)  # an unlifted export takes (args, kwargs), not a flat list
        args, kwargs = tree_unflatten(user, spec) if spec is not None else (user, {})
        with torch.inference_mode():
            return tree_leaves(self._module(*args, **kwargs))

    def _interpret(self, user: list) -> tuple[list, dict]:
        """(flat user outputs, {recorded node name: value}), node by node."""
        import torch
        from torch.utils._pytree import tree_leaves

        want = set(self.record)
        seen: dict = {}

        class Recorder(torch.fx.Interpreter):
            def run_node(self, n):
                out = super().run_node(n)
                if n.name in want:
                    # a site's output is its node's output 0: of a tuple (FlexAttention's (out, lse, ...)), item 0
                    value = out[0] if isinstance(out, (tuple, list)) and out else out
                    seen[n.name] = value.detach().clone() if isinstance(value, torch.Tensor) else value
                return out

        with torch.no_grad():
            result = Recorder(self.gm).run(*self._graph_args(user))
        flat = tree_leaves(result)
        if self.exported:
            from torch.export.graph_signature import OutputKind

            kinds = [s.kind for s in self.model.graph_signature.output_specs]
            if len(kinds) == len(flat):
                flat = [x for x, k in zip(flat, kinds) if k == OutputKind.USER_OUTPUT]
        return flat, seen

    def _graph_args(self, user: Sequence) -> list:
        """Every placeholder's value: an ExportedProgram's graph also takes its weights."""
        if not self.exported:
            return list(user)
        from torch.export.graph_signature import InputKind

        ep = self.model
        it = iter(user)
        args = []
        for spec in ep.graph_signature.input_specs:
            if spec.kind == InputKind.USER_INPUT:
                args.append(next(it))
            elif spec.kind == InputKind.PARAMETER:
                args.append(ep.state_dict[spec.target])
            elif spec.kind == InputKind.BUFFER and spec.target in ep.state_dict:
                args.append(ep.state_dict[spec.target])
            else:
                args.append(ep.constants[spec.target])
        return args


def save_module(model, path: Path) -> Path | None:
    """Pickle ``model`` for a worker process; None when it does not survive the round trip.

    A GraphModule pickles its generated code; loading it back here means a worker never chokes.
    """
    import torch

    try:
        torch.save(model, path, pickle_protocol=pickle.HIGHEST_PROTOCOL)
        torch.load(path, weights_only=False)
    except Exception:
        Path(path).unlink(missing_ok=True)
        return None
    return Path(path)


def load_module(path):
    import torch

    return torch.load(path, weights_only=False)


def define_attnopt_ops() -> None:
    """Define torch.ops.attnopt.* in a fresh process, so an unpickled rewritten module finds them."""
    from .kernels.registry import register_torch_ops

    register_torch_ops()
