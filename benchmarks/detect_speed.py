"""How long View building + detection take on deep BERT-large-shaped ONNX models.

Targets (issue 2): a 48-layer model (hidden 1024, 16 heads) under 1 s, and
linear scaling: 96 layers under 2.2x the 48-layer time. File load is excluded;
each stage is timed on its own, median of --repeats fresh loads:

    infer_shapes  attnopt.frontends.onnx.infer_shapes (ONNX shape inference)
    lift          attnopt.frontends.onnx.lift (the View)
    detect        attnopt.match.detect_sites

The models are written with onnx.helper, node for node as TorchScript
(opset 17, dynamic batch/seq) exports attnopt.examples.BertEncoder: dynamic
Shape→Gather→Unsqueeze→Concat→Reshape head splits, q/k/v MatMul+Add,
Transpose, MatMul, Mul(scale), Add(mask), Softmax, MatMul, out projection,
LayerNorm, erf-GELU FFN. Exporting the torch model itself takes 20-60 s at
these depths; writing the graph takes well under a second. All layers share
one set of weights (as tied weights do after export), so the file stays ~50 MB:
detection reads structure, not weight values.

    python benchmarks/detect_speed.py            # table
    python benchmarks/detect_speed.py --json     # for scripts

It asserts nothing: it is a benchmark.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HIDDEN, HEADS, FFN, VOCAB = 1024, 16, 4096, 100
HEAD_DIM = HIDDEN // HEADS
TARGET_48_S, TARGET_RATIO = 1.0, 2.2


class _Graph:
    """Collects nodes with TorchScript-style names (/scope/Op_k_output_0)."""

    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.counts: dict[tuple[str, str], int] = {}

    def op(self, scope: str, op_type: str, inputs, n_out: int = 1, **attrs):
        k = self.counts.get((scope, op_type), 0)
        self.counts[(scope, op_type)] = k + 1
        base = f"{scope}/{op_type}" + (f"_{k}" if k else "")
        outs = [f"{base}_output_{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=base, **attrs))
        return outs[0] if n_out == 1 else outs

    def const(self, scope: str, value, dtype=np.int64):
        arr = np.asarray(value, dtype=dtype)
        return self.op(scope, "Constant", [], value=numpy_helper.from_array(arr))

    def init(self, name: str, arr: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(arr.astype(np.float32), name))
        return name


def _dim(g: _Graph, scope: str, x: str, axis: int) -> str:
    return g.op(scope, "Gather", [g.op(scope, "Shape", [x]), g.const(scope, axis)], axis=0)


def _unsq(g: _Graph, scope: str, x: str) -> str:
    return g.op(scope, "Unsqueeze", [x, g.const(scope, [0])])


def _split_heads(g: _Graph, scope: str, x: str) -> str:
    """x (B, N, C) -> Reshape(B, N, H, D), with B and N read from x at run time."""
    b, n = _dim(g, scope, x, 0), _dim(g, scope, x, 1)
    target = g.op(scope, "Concat", [_unsq(g, scope, b), _unsq(g, scope, n),
                                    g.const(scope, [HEADS]), g.const(scope, [HEAD_DIM])], axis=0)
    return g.op(scope, "Reshape", [x, target], allowzero=0)


def _linear(g: _Graph, scope: str, x: str, w: str, b: str) -> str:
    return g.op(scope, "Add", [b, g.op(scope, "MatMul", [x, w])])


def build_model(layers: int, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    g = _Graph()
    w = {name: g.init(name, rng.standard_normal(shape) * 0.02) for name, shape in {
        "q.w": (HIDDEN, HIDDEN), "k.w": (HIDDEN, HIDDEN), "v.w": (HIDDEN, HIDDEN), "o.w": (HIDDEN, HIDDEN),
        "ffn1.w": (HIDDEN, FFN), "ffn2.w": (FFN, HIDDEN), "embed.weight": (VOCAB, HIDDEN)}.items()}
    for name, size in {"q.b": HIDDEN, "k.b": HIDDEN, "v.b": HIDDEN, "o.b": HIDDEN, "ffn1.b": FFN,
                       "ffn2.b": HIDDEN, "norm.bias": HIDDEN}.items():
        w[name] = g.init(name, np.zeros(size))
    w["norm.weight"] = g.init("norm.weight", np.ones(HIDDEN))

    # Embeddings + sinusoidal positions from the sequence length, as BertEncoder.positions.
    emb = g.op("/embed", "Gather", ["embed.weight", "input_ids"])
    row = g.op("", "Gather", ["input_ids", g.const("", 0)], axis=0)
    ones = g.op("", "ConstantOfShape", [g.op("", "Shape", [row])],
                value=numpy_helper.from_array(np.ones(1, np.float32)))
    pos = g.op("", "Sub", [g.op("", "CumSum", [ones, g.const("", 0)]), g.const("", 1.0, np.float32)])
    inv_freq = np.exp(np.arange(HIDDEN // 2) * (-np.log(10000.0) / (HIDDEN // 2)))
    ang = g.op("", "Mul", [g.op("", "Unsqueeze", [pos, g.const("", [1])]),
                           g.const("", inv_freq[None, :], np.float32)])
    pe = g.op("", "Concat", [g.op("", "Sin", [ang]), g.op("", "Cos", [ang])], axis=-1)
    x = g.op("/norm", "LayerNormalization", [g.op("", "Add", [emb, pe]), "norm.weight", "norm.bias"],
             axis=-1, epsilon=1e-5)
    # Additive key-padding mask (B, 1, 1, N): (1 - mask) * -1e4.
    m = g.op("", "Unsqueeze", [g.op("", "Unsqueeze", ["attention_mask", g.const("", [1])]), g.const("", [2])])
    mask = g.op("", "Mul", [g.op("", "Sub", [g.const("", 1.0, np.float32), g.op("", "Cast", [m], to=1)]),
                            g.const("", -1e4, np.float32)])

    for i in range(layers):
        s = f"/layer.{i}/attention"
        b, n, c = (_dim(g, s, x, a) for a in range(3))
        q = g.op(s, "Transpose", [_split_heads(g, s, _linear(g, s + "/query", x, "q.w", "q.b"))], perm=[0, 2, 1, 3])
        k = _split_heads(g, s, _linear(g, s + "/key", x, "k.w", "k.b"))
        v = g.op(s, "Transpose", [_split_heads(g, s, _linear(g, s + "/value", x, "v.w", "v.b"))], perm=[0, 2, 1, 3])
        kt = g.op(s, "Transpose", [k], perm=[0, 2, 3, 1])
        scores = g.op(s, "Mul", [g.op(s, "MatMul", [q, kt]), g.const(s, 1.0 / np.sqrt(HEAD_DIM), np.float32)])
        probs = g.op(s, "Softmax", [g.op(s, "Add", [scores, mask])], axis=-1)
        ctx = g.op(s, "Transpose", [g.op(s, "MatMul", [probs, v])], perm=[0, 2, 1, 3])
        shape = g.op(s, "Concat", [_unsq(g, s, b), _unsq(g, s, n), _unsq(g, s, c)], axis=0)
        attn = _linear(g, s + "/out", g.op(s, "Reshape", [ctx, shape], allowzero=0), "o.w", "o.b")
        L = f"/layer.{i}"
        x = g.op(L + "/norm1", "LayerNormalization", [g.op(L, "Add", [x, attn]), "norm.weight", "norm.bias"],
                 axis=-1, epsilon=1e-5)
        h = _linear(g, L + "/ffn/ffn.0", x, "ffn1.w", "ffn1.b")
        f = L + "/ffn/ffn.1"  # exact GELU: 0.5 * h * (1 + erf(h / sqrt 2))
        gelu = g.op(f, "Mul", [g.op(f, "Mul", [h, g.op(f, "Add", [
            g.op(f, "Erf", [g.op(f, "Div", [h, g.const(f, np.sqrt(2.0), np.float32)])]),
            g.const(f, 1.0, np.float32)])]), g.const(f, 0.5, np.float32)])
        y = _linear(g, L + "/ffn/ffn.2", gelu, "ffn2.w", "ffn2.b")
        x = g.op(L + "/norm2", "LayerNormalization", [g.op(L, "Add", [x, y]), "norm.weight", "norm.bias"],
                 axis=-1, epsilon=1e-5)

    g.nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"], name="output"))
    inputs = [helper.make_tensor_value_info(nm, TensorProto.INT64, ["batch", "seq"])
              for nm in ("input_ids", "attention_mask")]
    outputs = [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "seq", HIDDEN])]
    graph = helper.make_graph(g.nodes, f"bert_large_{layers}", inputs, outputs, g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="detect_speed")
    model.ir_version = 8
    return model


def time_detection(path: Path, repeats: int) -> dict:
    from attnopt.frontends import onnx as onnx_frontend
    from attnopt.match import detect_sites

    stages = {"load": [], "infer_shapes": [], "lift": [], "detect": []}
    sites = nodes = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        model = onnx_frontend.load(path)
        t1 = time.perf_counter()
        model = onnx_frontend.infer_shapes(model)
        t2 = time.perf_counter()
        view = onnx_frontend.lift(model)
        t3 = time.perf_counter()
        found = detect_sites(view)
        t4 = time.perf_counter()
        for k, dt in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            stages[k].append(dt)
        sites, nodes = len(found), len(model.graph)
    med = {k: statistics.median(v) for k, v in stages.items()}
    total = [a + b + c for a, b, c in zip(stages["infer_shapes"], stages["lift"], stages["detect"])]
    return {"nodes": nodes, "sites": sites, **{f"{k}_s": v for k, v in med.items()},
            "view_and_detect_s": statistics.median(total),
            "view_and_detect_min_s": min(total)}  # the least disturbed run, for a busy machine


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", default="48,96", help="comma-separated depths (default 48,96)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    depths = [int(d) for d in args.layers.split(",")]

    results = []
    with tempfile.TemporaryDirectory(prefix="detect-speed-") as tmp:
        for layers in depths:
            path = Path(tmp) / f"bert-large-{layers}.onnx"
            t0 = time.perf_counter()
            onnx.save(build_model(layers), path)
            built = time.perf_counter() - t0
            r = {"layers": layers, "build_s": built, **time_detection(path, args.repeats)}
            results.append(r)
            if not args.json:
                print(f"  {layers} layers: {r['view_and_detect_s']:.3f} s", file=sys.stderr)

    by = {r["layers"]: r for r in results}
    summary = {"hidden": HIDDEN, "heads": HEADS, "repeats": args.repeats, "results": results}
    if 48 in by and 96 in by:
        summary["ratio_96_48"] = by[96]["view_and_detect_s"] / by[48]["view_and_detect_s"]
        summary["target_48_s"], summary["target_ratio"] = TARGET_48_S, TARGET_RATIO
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0

    from rich.console import Console
    from rich.table import Table
    t = Table(title=f"View + detection, BERT-large-shaped (hidden {HIDDEN}, {HEADS} heads), "
                    f"median of {args.repeats}; file load excluded", title_justify="left")
    for col in ("layers", "nodes", "sites", "load s (excl.)", "infer_shapes s", "lift s", "detect s",
                "view+detect s", "min"):
        t.add_column(col, justify="right")
    for r in results:
        t.add_row(str(r["layers"]), str(r["nodes"]), str(r["sites"]), f"{r['load_s']:.3f}",
                  f"{r['infer_shapes_s']:.3f}", f"{r['lift_s']:.3f}", f"{r['detect_s']:.3f}",
                  f"{r['view_and_detect_s']:.3f}", f"{r['view_and_detect_min_s']:.3f}")
    con = Console(width=140)
    con.print(t)
    if "ratio_96_48" in summary:
        con.print(f"48 layers: {by[48]['view_and_detect_s']:.3f} s (target < {TARGET_48_S} s); "
                  f"96/48 ratio: {summary['ratio_96_48']:.2f} (target < {TARGET_RATIO})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
