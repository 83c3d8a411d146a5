"""The band ops on the CPU in torch (the fx path): whole segments folded into fused attention, against the
blocked torch code and dense SDPA, in one run.

    python benchmarks/band_cpu.py --n 4096 8192 --threads 2 [--json out.json]

fp32, B=1, H=12, D=64. For segmented and memory (with and without sinks, causal and not) the row
times ``torch.ops.attnopt.<variant>_attention`` as a rewritten model calls it, with whole segments
folded (``band.fold_on_cpu``) and with the fold off (``band.FOLD_ON_CPU = False``: the blocked torch
code each op ran before), against dense ``F.scaled_dot_product_attention``. Medians of
``--repeats`` calls after one warm-up. It asserts nothing: it is a benchmark.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time

import torch
import torch.nn.functional as F

H, D = 12, 64
# name: (variant, params); S = 512 as the ONNX benchmarks use
ROWS = {
    "segmented S=512": ("segmented", {"segment_size": 512, "sinks": 0}),
    "segmented S=512 + 4 sinks": ("segmented", {"segment_size": 512, "sinks": 4}),
    "memory S=M=512": ("memory", {"segment_size": 512, "memory": 512, "sinks": 0}),
}


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[4096, 8192])
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (CI has 2 cores)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args(argv)
    from attnopt.kernels import band
    from attnopt.kernels.registry import get_variant

    torch.set_num_threads(args.threads)
    rows = []
    for n in args.n:
        torch.manual_seed(0)
        q, k, v = (torch.randn(1, H, n, D) for _ in range(3))
        scale = 1 / math.sqrt(D)
        for causal in (False, True):
            dense = median_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal), args.repeats)
            for name, (variant, params) in ROWS.items():
                spec = get_variant(variant)
                args_ = [params[p] for p in spec.param_names]
                call = lambda: spec.torch_op(q, k, v, None, None, *args_, scale, causal, 0.0)  # noqa: E731
                op = median_ms(call, args.repeats)
                band.FOLD_ON_CPU = False
                try:
                    blocked = median_ms(call, args.repeats)
                finally:
                    band.FOLD_ON_CPU = True
                row = dict(row=name + (" causal" if causal else ""), n=n, op_ms=round(op, 2),
                           blocked_ms=round(blocked, 2), dense_sdpa_ms=round(dense, 2),
                           op_vs_blocked=round(blocked / op, 2), op_vs_dense=round(dense / op, 2))
                rows.append(row)
                print(json.dumps(row), flush=True)
    print()
    print("| row | N | op ms | blocked ms | dense SDPA ms | op vs blocked | op vs dense |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['row']} | {r['n']} | {r['op_ms']} | {r['blocked_ms']} | {r['dense_sdpa_ms']} | "
              f"{r['op_vs_blocked']}× | {r['op_vs_dense']}× |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
