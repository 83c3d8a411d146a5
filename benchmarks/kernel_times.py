"""Where one ``torch.ops.attnopt`` call spends its GPU time, kernel by kernel (a diagnostic for issue 9).

``benchmarks/kernels.py`` times a whole call; this script runs one of its rows under
``torch.profiler`` and prints the device time of each kernel the call launched (the
attention kernel, and for lsh / routed / hierarchical the hashing, k-means, sorting and
pooling around it), summed over the profiled calls and divided by their count. The
total is the GPU's busy time; a call's wall time above it is the host's.

    python3 benchmarks/kernel_times.py "routed" "hierarchical B=64 L=1" --n 16384 65536 --json $OUT/times.json

``--host`` adds the host side: its time per call with nothing waiting on the GPU, and under cProfile the
Python functions a call spends it in. ``--compiled`` times the call under torch.compile beside the eager one; a band row is
timed there as its variant's op (``BAND_OPS``), which is what a compiled model traces.

Rows are ``kernels.py``'s (``--help`` lists them); bf16, B=1, H=16, D=128 as there (``--head-dim`` another D).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def kernel_times(call, calls: int = 5, top: int = 12) -> dict:
    """{"device_ms": busy time per call, "wall_ms": per call, "kernels": [(name, ms per call, launches per call)]}."""
    from torch.profiler import ProfilerActivity, profile

    call()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            call()
        end.record()
        torch.cuda.synchronize()
    rows = [(e.key, e.device_time_total / 1e3 / calls, e.count / calls)
            for e in prof.key_averages() if e.device_time_total > 0]
    rows.sort(key=lambda r: -r[1])
    return {"device_ms": sum(r[1] for r in rows), "wall_ms": start.elapsed_time(end) / calls,
            "kernels": [(name[:90], round(ms, 4), count) for name, ms, count in rows[:top]]}


def host_profile(call, calls: int = 20, top: int = 12) -> dict:
    """Where the host spends a call: {"enqueue_ms": host time per call, timed with nothing waiting on the GPU;
    "own": [(function, ms per call)] by own time under cProfile; "cumulative": the same by time inside}."""
    import cProfile
    import pstats
    import time

    call()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):  # a few calls fill no launch queue: this is the host's own time
        call()
    enqueue_ms = (time.perf_counter() - t0) * 1e3 / calls
    torch.cuda.synchronize()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        call()
    prof.disable()
    torch.cuda.synchronize()
    stats = pstats.Stats(prof).stats

    def ranked(field: int) -> list:
        rows = sorted(((f"{Path(fn).name}:{line}({name})", entry[field] * 1e3 / calls)
                       for (fn, line, name), entry in stats.items()), key=lambda r: -r[1])
        return [(name, round(ms, 4)) for name, ms in rows[:top]]

    return {"enqueue_ms": round(enqueue_ms, 4), "own": ranked(2), "cumulative": ranked(3)}


# The band rows a model reaches through an op of their own: under --compiled they are timed as that op, which is
# what torch.compile traces (the eager column then includes the op's dispatch, as a model's eager call does).
BAND_OPS = {
    "segmented S=1024": ("segmented", {"segment_size": 1024}),
    "segmented S=1024 + 4 sinks": ("segmented", {"segment_size": 1024, "sinks": 4}),
    "window W=1024": ("window", {"window": 1024}),
    "window W=1024 causal": ("window", {"window": 1024}),
    "memory S=M=1024": ("memory", {"segment_size": 1024, "memory": 1024}),
    "memory S=M=1024 causal": ("memory", {"segment_size": 1024, "memory": 1024}),
}


def band_op_call(name: str, q, k, v, scale: float):
    from kernels import VARIANTS, op_call

    variant, params = BAND_OPS[name]
    return op_call(variant, params, VARIANTS[name][4], q, k, v, scale)[0]


def compiled_times(call, rep_ms: float = 60.0) -> dict:
    """{"eager_ms", "compiled_ms", "compile_s", "max_abs_diff"}: the call as it is and under torch.compile
    (Inductor traces the op's Python into its graph and launches the Triton kernels from generated code)."""
    import time

    from kernels import bench

    torch._dynamo.reset()  # every row's call shares one code object: without a reset the rows count as recompiles
    t0 = time.time()
    compiled = torch.compile(call, fullgraph=True)
    got = compiled()
    torch.cuda.synchronize()
    compile_s = time.time() - t0
    diff = (got.float() - call().float()).abs().max().item()
    # alternated, medians of three each: the GPU's clock drifts by up to 10% over a row's first seconds, enough to
    # read the same cuDNN kernel 11% slower in the second of two back-to-back timings
    eager, comp = [], []
    for _ in range(3):
        eager.append(bench(call, rep_ms))
        comp.append(bench(compiled, rep_ms))
    return {"eager_ms": round(statistics.median(eager), 4), "compiled_ms": round(statistics.median(comp), 4),
            "compile_s": round(compile_s, 1), "max_abs_diff": diff, "compiled_kernels": kernel_times(compiled)}


def main(argv=None) -> int:
    import kernels
    from kernels import ALL_ROWS, OP_ROWS, VARIANTS, band_call, op_row, random_qkv

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rows", nargs="+", help="kernels.py rows: " + ", ".join(ALL_ROWS))
    ap.add_argument("--n", type=int, nargs="+", default=[16384])
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--head-dim", type=int, default=kernels.D, help="D of q, k and v (default %(default)s)")
    ap.add_argument("--host", action="store_true", help="also profile the host side of a call (cProfile)")
    ap.add_argument("--compiled", action="store_true",
                    help="also time the call under torch.compile (fullgraph), as a compiled model runs it, "
                         "against the eager call, both with do_bench")
    args = ap.parse_args(argv)
    unknown = [r for r in args.rows if r not in ALL_ROWS]
    if unknown:
        print(f"unknown row {unknown[0]!r}; rows: {', '.join(ALL_ROWS)}", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("benchmarks/kernel_times.py needs a CUDA GPU", file=sys.stderr)
        return 2
    kernels.D = args.head_dim  # kernels.py's rows read its module's D, as its own --head-dim sets it
    out = []
    for n in args.n:
        q, k, v = random_qkv(n)
        scale = q.shape[-1] ** -0.5
        for name in args.rows:
            if name in VARIANTS:
                call = band_call(name, q, k, v, scale)
            else:
                made = op_row(name, q, k, v, scale)
                if made is None:
                    print(f"{name}: no CUDA kernel registered for {OP_ROWS[name][0]}; skipped", flush=True)
                    continue
                call = made[0]
            r = {"row": name, "n": n, "head_dim": args.head_dim, **kernel_times(call)}
            if args.host:
                r["host"] = host_profile(call)
            if args.compiled and name in VARIANTS and name not in BAND_OPS:
                r["compiled"] = {"error": "no op of its own (a model compiles the op, not the launcher)"}
            elif args.compiled:
                try:
                    r["compiled"] = compiled_times(call if name not in VARIANTS else band_op_call(name, q, k, v, scale))
                except Exception as exc:  # noqa: BLE001  report it, keep timing the other rows
                    r["compiled"] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            out.append(r)
            print(json.dumps(r), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
