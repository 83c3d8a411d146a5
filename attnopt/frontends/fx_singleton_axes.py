"""Reshapes read through the axes of one that torch's einsum decomposition moves around.

``ExportedProgram.run_decompositions()`` writes a 4-D einsum as a bmm over 3-D operands, reaching them
through 5-D detours: an axis of one is unsqueezed, permuted about (with or without the real transpose the
equation asks for), and reshaped away again::

    q (B, H, N, D) -> unsqueeze(4) -> permute(0, 1, 2, 4, 3) -> permute(0, 1, 2, 4, 3) -> clone -> view(B·H, N, D)

Axes of one hold no order of their own, so a reshape reads its input in the same element order as it
would read the 4-D tensor the detour starts from, permuted by the detour's net permutation of the real
axes. ``fold_singleton_detours`` rewires each such reshape in the View to read that tensor directly (the
net permutation keeps the real axes' order) or through one View-only transpose (it does not: kᵀ), so
the matcher sees the bmm's operands, scores and output as the plain matmul layouts it reads everywhere
else. Only the View changes; the source graph is rewritten as usual around the site.
"""

from __future__ import annotations

from ..graph import View, virtual_transpose
from ..site import ValueRef

_RESHAPES = ("reshape", "unsqueeze", "squeeze")


def fold_singleton_detours(view: View) -> set[str]:
    """Rewire every reshape whose input is a singleton-axis detour (above); returns the View nodes dropped
    because nothing reads them any more."""
    dropped: set[str] = set()
    for nid in list(view.nodes("reshape")):
        if nid in dropped or view.view_only(nid):
            continue
        src = view.input(nid, 0)
        if src is None:
            continue
        chain, cur = [], src
        while _in_detour(view, cur):
            chain.append(cur.node)
            cur = view.input(cur.node, 0)
        if not any(view.op(n) == "transpose" for n in chain):
            continue  # no permutation in the detour: the matcher's own reshape handling reads it
        labels = _labels(view, cur, reversed(chain))
        if labels is None:
            continue
        order = [a for a in labels if a is not None]  # x's real axes, as the reshape reads them
        x_shape = view.shape(cur)
        if order == [a for a, d in enumerate(x_shape) if d != 1]:
            new_src = cur  # in their own order: the reshape reads x as it is
        else:  # x's own axes of one go anywhere (they order nothing): each at its own index
            perm = list(order)
            for a in (a for a, d in enumerate(x_shape) if d == 1):
                perm.insert(a, a)
            new_src = virtual_transpose(view, cur, f"{nid}.detour", tuple(perm))
        _rewire(view, nid, src, new_src)
        dropped |= _drop_unread(view, chain)
    return dropped


def _in_detour(view: View, v: ValueRef) -> bool:
    """A layout op into or out of the detour's 5-D tensors (attention's are 4-D; a batch or head axis of one
    is a real one), whose semantics ``_labels`` follows."""
    if view.view_only(v.node) or view.op(v.node) not in ("identity", "cast", "transpose", *_RESHAPES):
        return False
    src = view.input(v.node, 0)
    shape_in, shape_out = view.shape(src), view.shape(v)
    if shape_in is None or shape_out is None or None in shape_in or None in shape_out:
        return False
    if len(shape_in) <= 4 and len(shape_out) <= 4:
        return False
    if view.op(v.node) in _RESHAPES:
        return _real(shape_in) == _real(shape_out)
    return True


def _real(shape) -> list:
    return [d for d in shape if d != 1]


def _labels(view: View, x: ValueRef, chain) -> list[int | None] | None:
    """Per axis of the detour's end, the axis of ``x`` it holds (None: an axis of one made on the way)."""
    shape = view.shape(x)
    labels: list[int | None] = [a if d != 1 else None for a, d in enumerate(shape)]  # its axes of one: none
    for nid in chain:
        op, attrs = view.op(nid), view.attrs(nid)
        out = view.shape(ValueRef(nid))
        if op == "transpose":
            perm = attrs.get("perm")
            if perm is None:
                d0, d1 = (d % len(labels) for d in attrs["dims"])
                perm = list(range(len(labels)))
                perm[d0], perm[d1] = perm[d1], perm[d0]
            if sorted(perm) != list(range(len(labels))):
                return None
            labels = [labels[p] for p in perm]
        elif op in _RESHAPES:  # the real axes keep their order; every axis of one is a fresh one
            real = iter(a for a in labels if a is not None)
            labels = [None if d == 1 else next(real) for d in out]
        if len(labels) != len(out):
            return None
    return labels


def _rewire(view: View, nid: str, old: ValueRef, new: ValueRef) -> None:
    key = next(k for k, d in view.g.get_edge_data(old.node, nid).items()
               if d["dst_port"] == 0 and d["src_port"] == old.port)
    view.g.remove_edge(old.node, nid, key)
    view.connect(new, nid, 0)


def _drop_unread(view: View, chain: list[str]) -> set[str]:
    """The detour's nodes nothing reads any more, from the reshape's side back, taken out of the View: a
    reader left behind would make the values before it look read twice (escaped)."""
    dropped = set()
    for nid in chain:
        if any(True for _ in view.g.out_edges(nid)):
            break
        view.g.remove_node(nid)
        dropped.add(nid)
    return dropped
