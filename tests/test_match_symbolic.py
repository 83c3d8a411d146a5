"""Matcher facts proven through symbolic shapes (attnopt/match.py), on hand-built Views: fast, no export.

- GQA query packing (B, H, N, D) -> (B, Hkv, P, D) is proven by B and D kept and H, Hkv known, whatever
  N and P are (TorchScript's sdpa decode step with a dynamic query length); and only then.
- A mask term on packed queries is accepted only with one row shared by all packed rows, its dims read
  from the construction where shape inference left fresh symbols.
- An elementwise op whose output has extent 1 fixes its operands' extent there, whatever symbol they carry
  (dynamo's specialised query length); a cut (slice) to one token still proves nothing.
"""

from __future__ import annotations

import numpy as np
import pytest

from attnopt import match
from attnopt.graph import View, broadcast_dims, same_value
from attnopt.site import ValueRef


@pytest.mark.parametrize("s,p,r", [
    (("batch", 4, "seq", 16), ("batch", 2, 2, 16), 2),  # HF pack_gqa, P a constant: the reshape forces N = 1
    (("batch", 4, "seq", 16), ("batch", 2, "unk__3", 16), 2),  # P left symbolic
    (("batch", 4, "seq", 16), ("batch", 1, "unk__3", 16), 4),  # MQA
    ((2, 4, 1, 16), (2, 2, 2, 16), 2),  # static shapes, as before
    (("b", 4, 3, 16), ("b", 2, 6, 16), 2),
    (("batch", 4, "seq", 16), ("other", 2, 2, 16), None),  # the batch not proven kept
    (("batch", 4, "seq", 16), ("batch", 2, 2, 8), None),  # the head dim changes
    (("batch", 4, "seq", 16), (None, 2, 2, 16), None),
    (("batch", 4, "seq", 16), ("batch", 2, "seq", 16), None),  # contradicts H·N = Hkv·P
    (("batch", 4, "seq", 16), ("batch", 3, "unk__3", 16), None),  # 3 does not divide 4
    (("batch", "h", "seq", 16), ("batch", 2, "unk__3", 16), None),  # heads unknown
    ((2, 4, 3, 16), (2, 2, 5, 16), None),  # element counts differ
])
def test_gqa_packing_is_proven_by_kept_batch_and_head_dim(s, p, r):
    assert match._gqa_packing(s, p) == r


@pytest.mark.parametrize("q,o,ok", [
    (("batch", 4, "seq", 16), ("batch", "unk__47", "seq", 16), True),  # transformers: (B, -1, N, D)
    (("batch", 4, "seq", 16), ("batch", 4, "unk__9", 16), True),
    (("batch", 4, "seq", 16), ("batch", "unk__47", "unk__9", 16), False),
    (("batch", 4, "seq", 16), ("batch", 4, "seq", 8), False),
    ((2, 4, 1, 16), (2, 4, 1, 16), True),
    ((2, 4, 1, 16), (2, 2, 2, 16), False),
])
def test_the_output_reshape_must_undo_the_packing(q, o, ok):
    assert match._unpacks(q, o) is ok


def test_broadcast_dims():
    assert broadcast_dims([(1, 1, "seq", 1), (1, 1, 1, "m")]) == (1, 1, "seq", "m")
    assert broadcast_dims([("b", 1, "seq", "m"), ("m",)]) == ("b", 1, "seq", "m")
    assert broadcast_dims([("unk__0",), ("seq",)]) == (None,)  # two symbols: unknown
    assert broadcast_dims([(None, 1), (1, 1)]) == (None, 1)
    assert broadcast_dims([(1, 2), None]) is None
    # A frontend's best reading: 1 gives way to a symbol, never the other way round (an ONNX frontend bug
    # once read broadcast(1, "batch") as 1); ambiguous dims take the first symbol.
    assert broadcast_dims([(1,), ("batch",)], proven=False) == ("batch",)
    assert broadcast_dims([(None,), ("batch",)], proven=False) == ("batch",)
    assert broadcast_dims([("unk__0",), ("seq",)], proven=False) == ("unk__0",)
    assert broadcast_dims([(None, 1), (1, 1)], proven=False) == (None, 1)


class _Builder:
    def __init__(self):
        self.view = View("t")

    def input(self, name, shape):
        return ValueRef(self.view.add_node(f"in:{name}", "input", shapes=[shape]))

    def const(self, name, value):
        value = np.asarray(value)
        return ValueRef(self.view.add_node(name, "constant", shapes=[value.shape], consts=[value]))

    def op(self, nid, op, inputs, shape, **attrs):
        self.view.add_node(nid, op, shapes=[shape], attrs=attrs)
        for port, v in enumerate(inputs):
            if v is not None:
                self.view.connect(v, nid, port)
        return ValueRef(nid)


def _token_graph(cut: str):
    """x (b, s, 8) @ W, then to one token: by an add whose output the exporter specialised to 1 while the
    operand keeps the symbol s (dynamo), or by a slice (x[:, -1:])."""
    g = _Builder()
    x = g.input("x", ("b", "s", 8))
    y = g.op("proj", "matmul", [x, g.const("w", np.ones((8, 8), np.float32))], ("b", "s", 8))
    if cut == "add":
        rotated = g.op("rot", "neg", [y], ("b", "s", 8))
        return g.view, g.op("one", "add", [y, rotated], ("b", 1, 8))
    ends = [g.const(n, np.array([v])) for n, v in (("st", -1), ("en", 1 << 62), ("ax", 1))]
    return g.view, g.op("one", "slice", [y, *ends], ("b", 1, 8))


def test_an_elementwise_output_of_extent_one_fixes_its_operands_extent():
    view, one = _token_graph("add")
    assert match._projection_sources(view, one, 1) == {ValueRef("in:x")}


def test_a_cut_to_one_token_proves_nothing():
    view, one = _token_graph("slice")
    assert match._projection_sources(view, one, 1) is None


def test_one_mask_written_twice_is_the_same_value():
    """CPM-Ant's ``mask.view(..) == torch.tensor(False)``, written before the softmax and after it, each over a
    constant of its own (torch.export lifts one per use); a random draw is never the same as another."""
    g = _Builder()
    mask = g.input("mask", ("b", 10, 10))
    tests = []
    for i in range(2):
        viewed = g.op(f"view{i}", "reshape", [mask, g.const(f"shape{i}", np.array([-1, 1, 10, 10]))], ("b", 1, 10, 10))
        tests.append(g.op(f"eq{i}", "other:aten.eq", [viewed, g.const(f"false{i}", np.array(False))], ("b", 1, 10, 10)))
    assert same_value(g.view, *tests)
    other = g.op("eq2", "other:aten.eq", [g.op("view2", "reshape", [mask, g.const("shape2", np.array([-1, 1, 10, 10]))],
                                                ("b", 1, 10, 10)), g.const("true", np.array(True))], ("b", 1, 10, 10))
    assert not same_value(g.view, tests[0], other)  # another constant
    draws = [g.op(f"draw{i}", "other:aten.rand_like", [mask], ("b", 10, 10)) for i in range(2)]
    assert not same_value(g.view, *draws)
    flipped = [g.op(f"t{i}", "transpose", [mask], ("b", 10, 10), perm=perm) for i, perm in enumerate(([0, 2, 1], [0, 1, 2]))]
    assert not same_value(g.view, *flipped)  # the same op with other attributes


def _mask_graph(rows_from: str):
    """An HF-style boolean decode mask, expand(range-built (1, 1, s, m), where(t == -1, 1, t)) with
    t = (b, -1, s, m), under Where(mask, 0, -inf), whose shape inference left fresh symbols."""
    g = _Builder()
    seq = g.const("seq", np.array("seq", dtype=object))
    rows = g.op("range", "other:Range", [g.const("zero", np.array(0)), seq, g.const("one", np.array(1))],
                ("unk__0",))
    if rows_from == "packed":  # rows counted by the packed query axis instead
        rows = g.op("range", "other:Range", [g.const("zero", np.array(0)), g.const("two", np.array(2)),
                                             g.const("one", np.array(1))], ("unk__0",))
    r4 = g.op("u", "unsqueeze", [rows, g.const("axes", np.array([0, 1, 3]))], (1, 1, "unk__0", 1))
    keys = g.input("keys", (1, 1, 1, "m"))
    allowed = g.op("le", "other:LessOrEqual", [keys, r4], (1, 1, "unk__0", "m"))
    target = np.empty(4, dtype=object)
    target[:] = ["b", -1, "seq", "m"]
    t = g.const("t", target)
    minus = g.const("minus", np.array([-1, -1, -1, -1]))
    is_keep = g.op("eq", "other:Equal", [t, minus], (4,))
    sizes = g.op("sizes", "where", [is_keep, g.const("ones", np.array([1, 1, 1, 1])), t], (4,))
    mask = g.op("expand", "expand", [allowed, sizes], ("unk__5", "unk__6", "unk__7", "unk__8"))
    term = g.op("fill", "where", [mask, g.const("zerof", np.float32(0)), g.const("ninf", np.float32(-np.inf))],
                ("unk__5", "unk__6", "unk__7", "unk__8"))
    q = g.input("q", ("b", 4, "seq", 16))
    packed = g.op("pack", "reshape", [q, g.const("pt", np.array([0, 2, 2, 16]))], ("b", 2, 2, 16))
    return g.view, term, q, packed


def test_a_decode_mask_on_packed_queries_is_read_from_its_construction():
    view, term, q, packed = _mask_graph("seq")
    assert match._derived_shape(view, term) == ("b", 1, "seq", "m")
    match._check_packed_terms(view, [match._Term(term, "additive")], q, packed)


def test_a_mask_with_a_row_per_packed_row_is_refused():
    view, term, q, packed = _mask_graph("packed")
    assert match._derived_shape(view, term)[-2] != "seq"  # 2 rows expanded to seq: not one row
    with pytest.raises(match.Mismatch, match="per-head or per-query"):
        match._check_packed_terms(view, [match._Term(term, "additive")], q, packed)


def test_shape_only_ops_name_the_shape_readers_each_frontend_lifts():
    """SHAPE_ONLY_OPS (the readers a rewrite may re-point) must spell the View ops the frontends actually
    produce for reading a shape: torch.export's sym_size / sym_numel, symbolic_trace's size() / numel(),
    ONNX's Shape and Size."""
    import onnx_ir as ir
    import torch
    from onnx import TensorProto, helper

    from attnopt.frontends.fx import lift as lift_fx
    from attnopt.frontends.onnx import lift as lift_onnx
    from attnopt.graph import SHAPE_ONLY_OPS

    class ReadsShapes(torch.nn.Module):
        def forward(self, x):
            return x.reshape(x.size(0) * x.size(1), -1) + x.numel()

    x = torch.randn(3, 4, 5)
    dims = ({0: torch.export.Dim("b"), 1: torch.export.Dim("n")},)
    for view in (lift_fx(torch.export.export(ReadsShapes(), (x,), dynamic_shapes=dims)),
                 lift_fx(torch.fx.symbolic_trace(ReadsShapes()))):
        ops = {view.op(n) for n in view.nodes()}
        readers = {o for o in ops if o.split(".")[-1] in ("sym_size", "sym_numel", "size", "numel")}
        assert len(readers) == 2 and readers <= SHAPE_ONLY_OPS, ops

    graph = helper.make_graph([helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Size", ["x"], ["z"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4])],
                              [helper.make_tensor_value_info("s", TensorProto.INT64, [2]),
                               helper.make_tensor_value_info("z", TensorProto.INT64, [])])
    view = lift_onnx(ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])))
    assert {view.op(n) for n in view.nodes()} >= {"other:Shape", "other:Size"}
