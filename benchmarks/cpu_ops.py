"""The ops on the CPU in torch (the fx path), with and without their fused-attention paths, against dense
SDPA, in one run.

    python benchmarks/cpu_ops.py --n 4096 8192 --threads 2 [--rows segmented lsh] [--json out.json]

fp32, B=1, H=12, D=64. Each row times ``torch.ops.attnopt.<variant>_attention`` as a rewritten model
calls it, then with its fused path switched off (the torch code it ran before), against dense
``F.scaled_dot_product_attention``:
- segmented and memory: whole segments folded into fused attention (``band.fold_on_cpu``; off:
  ``band.FOLD_ON_CPU = False``, the blocked torch code);
- lsh and routed: each bucket block's softmax in the fused kernel (``buckets._fused_part``; off:
  ``buckets.FUSE_ON_CPU = False``).
Medians of ``--repeats`` calls after one warm-up. It asserts nothing: it is a benchmark.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time

from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

H, D = 12, 64
# name: (variant, params, the module and flag of its fused path); S = 512 as the ONNX benchmarks use
ROWS = {
    "segmented S=512": ("segmented", {"segment_size": 512, "sinks": 0}, ("band", "FOLD_ON_CPU")),
    "segmented S=512 + 4 sinks": ("segmented", {"segment_size": 512, "sinks": 4}, ("band", "FOLD_ON_CPU")),
    "memory S=M=512": ("memory", {"segment_size": 512, "memory": 512, "sinks": 0}, ("band", "FOLD_ON_CPU")),
    "lsh (defaults)": ("lsh", {}, ("buckets", "FUSE_ON_CPU")),
    "routed (defaults)": ("routed", {}, ("buckets", "FUSE_ON_CPU")),
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
    ap.add_argument("--rows", nargs="+", default=None, help="rows whose name contains any of these: "
                    + ", ".join(ROWS))
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args(argv)
    import importlib

    from kernels import op_args

    from attnopt.kernels.registry import get_variant

    chosen = {name: row for name, row in ROWS.items() if not args.rows or any(w in name for w in args.rows)}
    if not chosen:
        print(f"--rows {' '.join(args.rows)}: no row matches; rows: {', '.join(ROWS)}", file=sys.stderr)
        return 2

    torch.set_num_threads(args.threads)
    rows = []
    for n in args.n:
        torch.manual_seed(0)
        q, k, v = (torch.randn(1, H, n, D) for _ in range(3))
        scale = 1 / math.sqrt(D)
        for causal in (False, True):
            dense = median_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal), args.repeats)
            for name, (variant, params, (module, flag)) in chosen.items():
                spec = get_variant(variant)
                args_ = op_args(spec, {**{p.name: p.default for p in spec.params}, **params}, q, k, scale, causal)
                call = lambda: spec.torch_op(q, k, v, None, None, *args_)  # noqa: E731
                op = median_ms(call, args.repeats)
                switch = importlib.import_module(f"attnopt.kernels.{module}")
                setattr(switch, flag, False)
                try:
                    blocked = median_ms(call, args.repeats)
                finally:
                    setattr(switch, flag, True)
                row = dict(row=name + (" causal" if causal else ""), n=n, op_ms=round(op, 2),
                           blocked_ms=round(blocked, 2), dense_sdpa_ms=round(dense, 2),
                           op_vs_blocked=round(blocked / op, 2), op_vs_dense=round(dense / op, 2))
                rows.append(row)
                print(json.dumps(row), flush=True)
    print()
    print("| row | N | op ms | fused path off ms | dense SDPA ms | op vs off | op vs dense |")
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
