"""Folding of small ONNX constant subgraphs with numpy.

Exporters compute the attention scale and causal masks from shapes at run time
(TorchScript: Sqrt(Cast(Shape(q)[-1]))). The matcher needs those as numbers, so
this folds the ops that such subgraphs use. ``Shape`` (folded by the frontend
from the View's shapes) of a partly symbolic tensor is an object array holding
symbol names or None; only structural ops (Gather, Slice, Concat, ...) may carry
those, arithmetic on them yields None.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

MAX_FOLD_ELEMENTS = 1 << 22


def dims_array(dims: list) -> np.ndarray:
    """Shape dims as an array: int64 when all known, else objects (ints, symbol names, None)."""
    if all(isinstance(d, int) for d in dims):
        return np.array(dims, dtype=np.int64)
    arr = np.empty(len(dims), dtype=object)
    arr[:] = dims
    return arr


def _known(a) -> bool:
    """Fully numeric: no unknown (None) or symbolic (str) entries from a partly known Shape."""
    return a is not None and (a.dtype != object or all(isinstance(x, (int, np.integer)) for x in a.flat))


def _num(a):
    return a.astype(np.int64) if a.dtype == object else a


def _attr(node: ir.Node, name: str, default=None):
    a = node.attributes.get(name)
    return default if a is None else a.value


def _slice(node, data, starts, ends, axes=None, steps=None):
    axes = list(range(len(starts))) if axes is None else [int(a) for a in axes]
    steps = [1] * len(starts) if steps is None else [int(s) for s in steps]
    idx = [slice(None)] * data.ndim
    for a, s, e, st in zip(axes, starts, ends, steps):
        idx[a] = slice(int(s), int(e), st)
    return data[tuple(idx)]


def _gather(node, data, idx):
    return np.take(data, _num(idx), axis=_attr(node, "axis", 0))


def _unsqueeze(node, x, axes=None):
    axes = _attr(node, "axes") if axes is None else _num(axes)
    out = x
    for a in sorted(int(a) % (x.ndim + len(axes)) for a in axes):
        out = np.expand_dims(out, a)
    return out


def _squeeze(node, x, axes=None):
    axes = _attr(node, "axes") if axes is None else _num(axes)
    return np.squeeze(x, axis=None if axes is None else tuple(int(a) for a in axes))


def _cast(node, x):
    to = ir.DataType(_attr(node, "to"))
    return x if not _known(x) else np.asarray(_num(x)).astype(to.numpy())


def _concat(node, *xs):
    if all(_known(x) for x in xs):
        return np.concatenate([_num(x) for x in xs], axis=_attr(node, "axis"))
    return np.concatenate([x.astype(object) for x in xs], axis=_attr(node, "axis"))


def _reshape(node, x, shape):
    shape = [int(s) for s in _num(shape)]
    shape = [x.shape[i] if s == 0 and not _attr(node, "allowzero", 0) else s for i, s in enumerate(shape)]
    return x.reshape(shape)


def _const_of_shape(node, shape):
    value = _attr(node, "value")
    fill = value.numpy().reshape(-1)[0] if value is not None else np.float32(0)
    shape = [int(s) for s in _num(shape)]
    if int(np.prod(shape)) > MAX_FOLD_ELEMENTS:
        return None
    return np.full(shape, fill)


def _trilu(node, x, k=None):
    k = 0 if k is None else int(_num(k).reshape(-1)[0])
    return np.triu(x, k) if _attr(node, "upper", 1) else np.tril(x, k)


def _range(node, start, limit, delta):
    return np.arange(start.reshape(()), limit.reshape(()), delta.reshape(()))


STRUCTURAL = {
    "Identity": lambda n, x: x,
    "Gather": _gather,
    "Slice": _slice,
    "Concat": _concat,
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Cast": _cast,
}

ARITHMETIC = {
    "Add": lambda n, a, b: a + b,
    "Sub": lambda n, a, b: a - b,
    "Mul": lambda n, a, b: a * b,
    "Div": lambda n, a, b: (a // b) if np.issubdtype(a.dtype, np.integer) else a / b,
    "Neg": lambda n, a: -a,
    "Sqrt": lambda n, a: np.sqrt(a),
    "Reciprocal": lambda n, a: 1 / a,
    "Pow": lambda n, a, b: np.power(a, b),
    "Not": lambda n, a: np.logical_not(a),
    "Equal": lambda n, a, b: a == b,
    "Less": lambda n, a, b: a < b,
    "Greater": lambda n, a, b: a > b,
    "LessOrEqual": lambda n, a, b: a <= b,
    "GreaterOrEqual": lambda n, a, b: a >= b,
    "And": lambda n, a, b: np.logical_and(a, b),
    "Or": lambda n, a, b: np.logical_or(a, b),
    "Where": lambda n, c, a, b: np.where(c, a, b),
    "Reshape": _reshape,
    "Transpose": lambda n, x: np.transpose(x, _attr(n, "perm")),
    "Expand": lambda n, x, s: x * np.ones([int(d) for d in s], dtype=x.dtype),
    "ConstantOfShape": _const_of_shape,
    "Trilu": _trilu,
    "Range": _range,
    "Sum": lambda n, *xs: sum(xs),
    "Mod": lambda n, a, b: np.fmod(a, b) if _attr(n, "fmod", 0) else np.mod(a, b),
    "Max": lambda n, *xs: np.maximum.reduce(xs),
    "Min": lambda n, *xs: np.minimum.reduce(xs),
    "Floor": lambda n, a: np.floor(a),
    "Ceil": lambda n, a: np.ceil(a),
    "Abs": lambda n, a: np.abs(a),
}


def fold(node: ir.Node, args: list):
    """Fold one node given its inputs' constants (arrays or None); returns an array or None."""
    op = node.op_type if node.domain in ("", "ai.onnx") else None
    if op in STRUCTURAL:
        if any(a is None for a, v in zip(args, node.inputs) if v is not None):
            return None
        out = STRUCTURAL[op](node, *args)
        if isinstance(out, np.ndarray):
            return out
        arr = np.empty((), dtype=object)  # a 0-d pick from a partly symbolic shape
        arr[()] = out
        return arr if not isinstance(out, (int, np.integer, float)) else np.asarray(out)
    if op in ARITHMETIC:
        if not all(_known(a) for a, v in zip(args, node.inputs) if v is not None):
            return None
        args = [None if v is None else _num(a) for a, v in zip(args, node.inputs)]
        while args and args[-1] is None:
            args.pop()
        out = ARITHMETIC[op](node, *args)
        return None if out is None or np.size(out) > MAX_FOLD_ELEMENTS else np.asarray(out)
    return None
