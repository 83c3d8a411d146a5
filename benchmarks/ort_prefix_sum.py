"""onnxruntime's CumSum against ai.attnopt::PrefixSum along a long axis, on one provider.

Why it exists: onnxruntime's CUDA CumSum adds up each element's whole prefix afresh, O(L²) along its axis,
and two callers run a running sum over every key: the blocked-row correction of GPT-Neo- and GPT-1-style sites
(two sums over (B, Hkv, M, D + 1) float32 and one over (B, M) key counts) and lsh's and routed's counting sort
(over a (B, H, R, S, b) int32 one-hot). ``kernels.prefix_sum_onnx`` sums in two levels instead. This times both
as one-node models through IO binding (inputs and outputs on the device) and checks that they agree.

    python benchmarks/ort_prefix_sum.py --provider cuda --n 4096 16384 65536 --json out.json

Needs onnxruntime-gpu for ``--provider cuda`` (GPU.md says how to get it onto the GPU machine).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
from onnx import TensorProto, helper

from attnopt.kernels.onnx_functions import attach_functions
from attnopt.onnx_compat import DOMAIN
from attnopt.ort_runtime import BoundRun, session

# name: (shape with N for the summed axis, dtype); the summed axis is −2 in both
SHAPES = {
    "correction (1, 12, N, 65) f32": (lambda n: (1, 12, n, 65), np.float32),
    "bucket one-hot (1, 12, 1, N, 16) i32": (lambda n: (1, 12, 1, n, 16), np.int32),
}
_ELEM = {np.float32: TensorProto.FLOAT, np.int32: TensorProto.INT32}


def _model(kind: str, rank: int, elem: int) -> bytes:
    dims = [f"d{i}" for i in range(rank)]
    if kind == "CumSum":
        axis = helper.make_tensor("axis", TensorProto.INT64, [], [-2])
        nodes, inits = [helper.make_node("CumSum", ["X", "axis"], ["Y"])], [axis]
    else:
        nodes, inits = [helper.make_node("PrefixSum", ["X"], ["Y"], domain=DOMAIN)], []
    graph = helper.make_graph(nodes, kind, [helper.make_tensor_value_info("X", elem, dims)],
                              [helper.make_tensor_value_info("Y", elem, dims)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    if kind != "CumSum":
        attach_functions(model, ["PrefixSum"])
    return model.SerializeToString()


def _time(run: BoundRun, budget_s: float, most: int = 50) -> tuple[float, int]:
    """Median ms of up to ``most`` runs within about ``budget_s`` (after one warm-up), and the count."""
    run()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < most and (len(times) < 3 or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        run()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), len(times)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--provider", default="cuda", choices=["cpu", "cuda"])
    ap.add_argument("--n", type=int, nargs="+", default=[4096, 16384, 65536], help="lengths of the summed axis")
    ap.add_argument("--budget-s", type=float, default=3.0, help="timing budget per case (at least 3 runs)")
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args(argv)

    rows = []
    print(f"| shape | N | CumSum ms | PrefixSum ms | ratio | equal |\n|---|---|---|---|---|---|", flush=True)
    for name, (shape_of, dtype) in SHAPES.items():
        for n in args.n:
            shape = shape_of(n)
            rng = np.random.default_rng(n)
            x = (rng.random(shape) < 0.5).astype(dtype)  # 0/1 values: float sums stay exact to 2^24
            got, ms = {}, {}
            for kind in ("CumSum", "PrefixSum"):
                run = BoundRun(session(_model(kind, len(shape), _ELEM[dtype]), args.provider), {"X": x},
                               args.provider)
                ms[kind], _ = _time(run, args.budget_s)
                got[kind] = run.outputs()["Y"]
            equal = bool(np.array_equal(got["CumSum"], got["PrefixSum"]))
            row = {"shape": name, "n": n, "cumsum_ms": ms["CumSum"], "prefix_sum_ms": ms["PrefixSum"],
                   "ratio": ms["CumSum"] / ms["PrefixSum"], "equal": equal, "provider": args.provider}
            rows.append(row)
            print(f"| {name} | {n} | {row['cumsum_ms']:.3f} | {row['prefix_sum_ms']:.3f} | {row['ratio']:.1f}× "
                  f"| {equal} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
