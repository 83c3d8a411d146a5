"""View: a backend-neutral dataflow graph that the matcher reads.

Nodes are ops; every value is one output port of one node, so graph inputs and
constants are nodes too (ops ``input`` and ``constant``). Edges run producer ->
consumer and carry ``(src_port, dst_port)``. Each node keeps a ``ref`` back to
the frontend object it was lifted from; only the frontend ever looks at it.

Op names come from one small vocabulary (``CANONICAL_OPS``). Frontends map
their own op zoo into it and everything else becomes ``other:<name>`` so the
matcher can see that *something* is there without understanding it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import networkx as nx
import numpy as np

from .site import ValueRef

CANONICAL_OPS = frozenset({
    "input", "constant", "output",
    "matmul", "transpose", "reshape", "expand", "unsqueeze", "squeeze", "slice", "concat",
    "mul", "div", "add", "sub", "neg", "sqrt", "reciprocal", "pow", "tanh",
    "softmax", "where", "masked_fill", "cast", "identity", "dropout", "isnan", "not",
    # x @ W (+ b) with the weight an operand after x: ONNX Gemm, aten.linear/addmm, nn.Linear.
    "linear",
    "sdpa", "mha",
})


# View ops that read nothing of their tensor input but its shape: ONNX Shape / Size; in fx, aten.sym_size /
# sym_numel (torch.export; the View names aten ops by their overload packet) and Tensor.size / numel
# (symbolic_trace). A rewrite can point such a reader at any value of the same shape.
SHAPE_ONLY_OPS = frozenset({"other:Shape", "other:Size", "other:aten.sym_size", "other:aten.sym_numel",
                            "other:Tensor.size", "other:Tensor.numel"})


# Ops that read only their input's shape and dtype to make a new tensor (a dropout's draw of the same shape,
# torch.empty_like), by the name a frontend gives them after "other:" and an "aten." / "Tensor." prefix.
LIKE_OPS = frozenset({"RandomUniformLike", "RandomNormalLike", "rand_like", "randn_like", "randint_like",
                      "empty_like", "zeros_like", "ones_like", "full_like"})


def reads_shape_only(view: "View", nid: str) -> bool:
    """Whether the node reads nothing of its input but the shape (and dtype)."""
    op = view.op(nid)
    return op in SHAPE_ONLY_OPS or (op.startswith("other:") and plain_op_name(op) in LIKE_OPS)


# Ops that draw random numbers (ONNX op types, aten overload packets, torch functions and methods), by the
# name a frontend gives them after "other:" and an "aten." / "Tensor." prefix.
RANDOM_OPS = frozenset({"RandomUniformLike", "RandomNormalLike", "RandomUniform", "RandomNormal", "Bernoulli",
                        "Multinomial", "rand", "rand_like", "randn", "randn_like", "randint", "randint_like",
                        "bernoulli", "bernoulli_", "multinomial", "normal", "normal_", "uniform_", "native_dropout"})


def random_ops(view: "View") -> dict[str, int]:
    """The view's random ops: name -> count (a model holding them answers differently from run to run)."""
    found: dict[str, int] = {}
    for nid in view.nodes():
        op = view.op(nid)
        if op == "dropout" and len(view.inputs(nid)) > 2 and _true(view.const(view.input(nid, 2))):
            name = "Dropout in training mode"  # ONNX Dropout's training_mode input (a dynamo export's native_dropout)
        elif draws_random(view, nid):
            name = plain_op_name(op)
        else:
            continue
        found[name] = found.get(name, 0) + 1
    return found


def plain_op_name(op: str) -> str:
    """A View op's name without the frontend's "other:" and an "aten." / "Tensor." prefix (ONNX op types,
    aten overload packets, torch functions and methods all come out as their bare names)."""
    return op.removeprefix("other:").removeprefix("aten.").removeprefix("Tensor.")


def draws_random(view: "View", nid: str) -> bool:
    """Whether the node draws random numbers (``RANDOM_OPS``)."""
    op = view.op(nid)
    return op.startswith("other:") and plain_op_name(op) in RANDOM_OPS


def _true(c) -> bool:
    return c is not None and np.size(c) == 1 and bool(np.asarray(c).reshape(()))


@dataclass
class NodeInfo:
    op: str
    attrs: dict = field(default_factory=dict)
    # One entry per output port.
    shapes: list = field(default_factory=list)  # tuple of (int | str | None) or None if unknown
    dtypes: list = field(default_factory=list)  # numpy-style dtype string or None
    consts: list = field(default_factory=list)  # np.ndarray for folded constants, else None
    ref: Any = None
    name: str = ""  # human-readable path, used for site names
    order: int = 0  # topological position in the source graph


class View:
    """A MultiDiGraph of ops with typed ports; built by a frontend."""

    def __init__(self, source: str = ""):
        self.g = nx.MultiDiGraph()
        self.source = source
        self._order = 0
        # Per value: whether it depends on any graph input (vs. weights/constants only).
        self._dynamic: dict[ValueRef, bool] = {}

    # -- building ---------------------------------------------------------
    def add_node(self, nid: str, op: str, *, attrs: dict | None = None, ref: Any = None,
                 outputs: int = 1, shapes=None, dtypes=None, consts=None, name: str = "") -> str:
        info = NodeInfo(op=op, attrs=dict(attrs or {}), ref=ref, name=name, order=self._order,
                        shapes=list(shapes) if shapes is not None else [None] * outputs,
                        dtypes=list(dtypes) if dtypes is not None else [None] * outputs,
                        consts=list(consts) if consts is not None else [None] * outputs)
        self._order += 1
        self.g.add_node(nid, info=info)
        return nid

    def connect(self, src: ValueRef, dst: str, dst_port: int) -> None:
        self.g.add_edge(src.node, dst, src_port=src.port, dst_port=dst_port)

    # -- reading ----------------------------------------------------------
    def info(self, nid: str) -> NodeInfo:
        return self.g.nodes[nid]["info"]

    def view_only(self, nid: str) -> bool:
        """A node a frontend made for the matcher with no source node behind it (an einsum's transposes,
        baddbmm's product): a rewrite cannot name its output."""
        return self.info(nid).ref is None and self.info(nid).op not in ("input", "constant")

    def op(self, nid: str) -> str:
        return self.info(nid).op

    def attrs(self, nid: str) -> dict:
        return self.info(nid).attrs

    def nodes(self, op: str | None = None) -> Iterator[str]:
        for nid, data in self.g.nodes(data=True):
            if op is None or data["info"].op == op:
                yield nid

    def inputs(self, nid: str) -> list[ValueRef | None]:
        """Input values ordered by port; missing optional inputs are None."""
        edges = [(d["dst_port"], ValueRef(src, d["src_port"])) for src, _, d in self.g.in_edges(nid, data=True)]
        if not edges:
            return []
        out: list[ValueRef | None] = [None] * (max(p for p, _ in edges) + 1)
        for port, value in edges:
            out[port] = value
        return out

    def input(self, nid: str, port: int) -> ValueRef | None:
        ins = self.inputs(nid)
        return ins[port] if port < len(ins) else None

    def users(self, value: ValueRef) -> list[tuple[str, int]]:
        return [(dst, d["dst_port"]) for _, dst, d in self.g.out_edges(value.node, data=True)
                if d["src_port"] == value.port]

    def only_user(self, value: ValueRef) -> tuple[str, int] | None:
        users = self.users(value)
        return users[0] if len(users) == 1 else None

    def shape(self, value: ValueRef | None):
        if value is None:
            return None
        shapes = self.info(value.node).shapes
        return shapes[value.port] if value.port < len(shapes) else None

    def rank(self, value: ValueRef | None) -> int | None:
        s = self.shape(value)
        return None if s is None else len(s)

    def dtype(self, value: ValueRef | None):
        if value is None:
            return None
        dtypes = self.info(value.node).dtypes
        return dtypes[value.port] if value.port < len(dtypes) else None

    def const(self, value: ValueRef | None) -> np.ndarray | None:
        """The folded constant of a value, or None.

        Frontends may store a zero-argument callable instead of an array, so large
        weights and masks are only materialised when the matcher asks for them.
        """
        if value is None:
            return None
        consts = self.info(value.node).consts
        if value.port >= len(consts):
            return None
        c = consts[value.port]
        if callable(c):
            try:
                c = c()
            except Exception:  # a fold we cannot do is simply "not constant"
                c = None
            consts[value.port] = c
        return c

    def scalar(self, value: ValueRef | None) -> float | None:
        """The value as a Python float if it is a folded constant with one element."""
        c = self.const(value)
        if c is None or np.size(c) != 1:
            return None
        try:
            return float(np.asarray(c, dtype=np.float64).reshape(()))
        except (TypeError, ValueError):
            return None

    def is_dynamic(self, value: ValueRef) -> bool:
        """True if the value depends on a graph input, False for weights and constants."""
        if value not in self._dynamic:
            self._compute_dynamic()
        return self._dynamic.get(value, True)

    def _compute_dynamic(self) -> None:
        # Frontends add nodes in a topological order (the source graph's), except View-only
        # helper nodes, which come right before their consumer; `order` is that order.
        for nid in sorted(self.g.nodes, key=lambda n: self.info(n).order):
            info = self.info(nid)
            if info.op == "input":
                dyn = True
            elif info.op == "constant":
                dyn = False
            else:
                dyn = any(self._dynamic.get(v, True) for v in self.inputs(nid) if v is not None)
            for port in range(max(1, len(info.shapes))):
                self._dynamic[ValueRef(nid, port)] = dyn

    def __len__(self) -> int:
        return self.g.number_of_nodes()

    def __repr__(self) -> str:
        return f"View({self.source!r}, {len(self)} nodes)"


def same_value(view: View, a: ValueRef | None, b: ValueRef | None, depth: int = 8) -> bool:
    """Whether two values are the same computation: one value, equal constants, or the same deterministic op
    with the same attributes over values that are the same in turn (``depth`` ops deep). An exporter that
    does not merge common subexpressions writes one mask twice (CPM-Ant's ``mask == torch.tensor(False)``
    before the softmax and after it, each over its own lifted constant, under torch.export)."""
    if a is None or b is None:
        return a is b
    if a == b:
        return True
    ca, cb = view.const(a), view.const(b)
    if ca is not None or cb is not None:
        return ca is not None and cb is not None and np.shape(ca) == np.shape(cb) and np.array_equal(ca, cb)
    if depth <= 0 or a.port != b.port or view.op(a.node) != view.op(b.node) or view.op(a.node) == "input" \
            or draws_random(view, a.node) or view.shape(a) != view.shape(b):
        return False
    try:
        if view.attrs(a.node) != view.attrs(b.node):
            return False
    except (TypeError, ValueError):  # attributes that do not compare (arrays)
        return False
    ia, ib = view.inputs(a.node), view.inputs(b.node)
    return len(ia) == len(ib) and all(same_value(view, x, y, depth - 1) for x, y in zip(ia, ib))


def broadcast_dims(shapes, *, proven: bool = True) -> tuple | None:
    """numpy broadcasting of partly symbolic shapes (ints, symbol strings, None for unknown), dim by dim.

    A size other than 1 wins; 1 gives way to anything ((1, "batch") is "batch"); one symbol, or several
    equal ones, is that symbol. Two different symbols, or an unknown dim beside a symbol, are equal for the
    graph to run unless one of them is 1 at run time: ``proven`` (what the matcher's proofs need) shows
    such a dim as None; ``proven=False`` (a frontend's best reading of its shapes) takes the first symbol.
    None if any shape is unknown.
    """
    if any(s is None for s in shapes):
        return None
    rank = max((len(s) for s in shapes), default=0)
    out = []
    for i in range(rank):
        dims = [s[i - rank + len(s)] for s in shapes if i - rank + len(s) >= 0]
        ints = [d for d in dims if isinstance(d, int) and d != 1]
        symbols = [d for d in dims if d != 1 and d is not None]
        if ints:
            out.append(ints[0])
        elif not symbols:
            out.append(None if None in dims else 1)
        elif not proven or (len(set(symbols)) == 1 and None not in dims):
            out.append(symbols[0])
        else:
            out.append(None)
    return tuple(out)


@dataclass(frozen=True)
class EinsumMatmul:
    """A two-operand einsum that is one batched matmul, as permutations around it.

    A and B are permuted to (batch…, i, k) and (batch…, k, j), multiplied, and the (batch…, i, j)
    product permuted to the output's order; a perm is None where that tensor is in order already.
    The batch axes take the output's order.
    """
    perm_a: tuple[int, ...] | None
    perm_b: tuple[int, ...] | None
    perm_out: tuple[int, ...] | None


def einsum_as_matmul(equation: str) -> EinsumMatmul | None:
    """'bhqd,bhkd->bhqk' -> B permuted (A @ Bᵀ); 'bnij,bjnd->bind' (Funnel) -> B and the product
    permuted; None for anything that is not one batched matmul (sums over an operand's own axis,
    repeated or several contracted letters, ellipses, a letter in only one operand)."""
    eq = equation.replace(" ", "")
    if "->" not in eq or "..." in eq:
        return None
    lhs, out = eq.split("->")
    ops = lhs.split(",")
    if len(ops) != 2:
        return None
    a, b = ops
    if any(len(set(t)) != len(t) for t in (a, b, out)):
        return None
    batch = [c for c in out if c in a and c in b]
    i, j, k = ([c for c in a if c in out and c not in b], [c for c in b if c in out and c not in a],
               [c for c in a if c in b and c not in out])
    if len(i) != 1 or len(j) != 1 or len(k) != 1 or len(a) != len(batch) + 2 or len(b) != len(batch) + 2 \
            or len(out) != len(batch) + 2:
        return None

    def perm(src: str, dst: list[str]) -> tuple[int, ...] | None:
        p = tuple(src.index(c) for c in dst)
        return None if p == tuple(range(len(p))) else p

    product = batch + i + j
    return EinsumMatmul(perm(a, batch + i + k), perm(b, batch + k + j), perm("".join(product), list(out)))


def virtual_transpose(view: View, ref: ValueRef, nid: str, perm: tuple[int, ...]) -> ValueRef:
    """A View-only transpose: no frontend node behind it (see View.view_only)."""
    shape = view.shape(ref)
    view.add_node(nid, "transpose", attrs={"perm": list(perm)},
                  shapes=[None if shape is None else tuple(shape[p] for p in perm)], dtypes=[view.dtype(ref)])
    view.connect(ref, nid, 0)
    return ValueRef(nid)


def lift_einsum(view: View, nid: str, form: EinsumMatmul, a: ValueRef, b: ValueRef, out_shape,
                dtype, name: str = "") -> list[ValueRef]:
    """The View-only nodes in front of an einsum's own node; returns that node's inputs.

    The operands are permuted as ``form`` says. Where the product is permuted too, the matmul is a
    View-only node and the einsum's own node is the ``transpose`` after it (its op, from
    ``einsum_op``), so the einsum's output stays the value the source graph holds.
    """
    if form.perm_a is not None:
        a = virtual_transpose(view, a, f"{nid}.a", form.perm_a)
    if form.perm_b is not None:
        b = virtual_transpose(view, b, f"{nid}.b", form.perm_b)
    if form.perm_out is None:
        return [a, b]
    shape = None
    if out_shape is not None:
        shape = [None] * len(out_shape)
        for axis, p in enumerate(form.perm_out):
            shape[p] = out_shape[axis]
        shape = tuple(shape)
    view.add_node(f"{nid}.mm", "matmul", shapes=[shape], dtypes=[dtype], name=name)
    view.connect(a, f"{nid}.mm", 0)
    view.connect(b, f"{nid}.mm", 1)
    return [ValueRef(f"{nid}.mm")]


def einsum_op(form: EinsumMatmul) -> tuple[str, dict]:
    """The op of an einsum's own node in the View (see lift_einsum)."""
    return ("matmul", {}) if form.perm_out is None else ("transpose", {"perm": list(form.perm_out)})
