"""Where onnxruntime spends a model's run, on the device (a diagnostic for the portable bodies).

Two views. By op type (the default): onnxruntime's profiler times each node on the host. On
the CUDA provider a kernel launch returns at once, so those times say where the host waits,
not where the GPU works. Run under ``CUDA_LAUNCH_BLOCKING=1`` (this view refuses to run without
it on CUDA), every launch waits for its kernel, and a node's time is its kernel's. The whole
run is slower that way (every node pays a synchronisation, so bodies of many small nodes look
costlier than they are); the shares by op type are what to read.

By kernel (``--kernels``, CUDA only): the launches stay asynchronous and CUPTI reads each
kernel's own device time (torch.profiler records every kernel of the process, onnxruntime's
included). It reports the wall time of a run, the summed kernel time (the GPU's work) and the
kernels that took most of it; wall well above the kernel sum means the host's launches bound
the run.

    # on the GPU machine, after benchmarks/ort_cuda.py wrote its models under OUT/models:
    CUDA_LAUNCH_BLOCKING=1 python benchmarks/ort_op_times.py OUT/models lsh.portable routed.portable --seq-len 16384
    python benchmarks/ort_op_times.py OUT/models lsh.portable routed.portable --kernels

The inputs are ort_cuda.py's for ``original.onnx`` in the same folder; the op-type profile is
``attnopt.ort_runtime.placement``'s (IO binding, two runs, the second profiled). Prints one JSON
line per model.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def op_times(path: Path, feeds: dict, provider: str, top: int) -> dict:
    """The model's profiled run (the second of two: the first also allocates) and its ``top`` op types."""
    from attnopt.ort_runtime import placement

    p = placement(str(path), feeds, provider)
    return {"model": path.stem, "run_ms": p["run_ms"], "ms_by_op": dict(list(p["host_ms_by_op"].items())[:top])}


def kernel_family(name: str) -> str:
    """A kernel's name without template arguments and parameters: one row per kind of kernel."""
    name = re.sub(r"\(.*$", "", name)
    depth, out = 0, []
    for ch in name:  # drop <...>, nested
        depth += ch == "<"
        if depth == 0:
            out.append(ch)
        depth -= ch == ">" and depth > 0
    return "".join(out).replace("void ", "").strip()[:120]


def kernel_times(path: Path, feeds: dict, runs: int, top: int) -> dict:
    """``runs`` asynchronous runs of the model on CUDA, their kernels' device times by kind and by name."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from attnopt.ort_runtime import BoundRun, session

    run = BoundRun(session(str(path), "cuda"), feeds, "cuda")
    for _ in range(3):  # allocation and onnxruntime's first-run tuning stay out of the profile
        run()
    walls = []
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(runs):
            t0 = time.perf_counter()
            run()
            walls.append((time.perf_counter() - t0) * 1e3)
        torch.cuda.synchronize()
    by_family: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    by_name: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for ev in prof.events():
        if ev.device_type != torch.autograd.DeviceType.CUDA:
            continue
        for table, key in ((by_family, kernel_family(ev.name)), (by_name, ev.name[:200])):
            table[key][0] += ev.device_time / 1e3 / runs  # µs per event -> ms per run
            table[key][1] += 1
    total = sum(v[0] for v in by_family.values())

    def ranked(table, n):
        rows = sorted(table.items(), key=lambda kv: -kv[1][0])[:n]
        return [{"kernel": k, "ms": round(v[0], 3), "calls": v[1] // runs} for k, v in rows]

    return {
        "model": path.stem, "wall_ms": round(statistics.median(walls), 2), "kernel_ms": round(total, 2),
        "kernels_per_run": sum(v[1] for v in by_family.values()) // runs,
        "by_kind": ranked(by_family, top), "by_name": ranked(by_name, top),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", type=Path, help="a folder ort_cuda.py wrote (holds original.onnx)")
    ap.add_argument("names", nargs="+", help="model files in it, without .onnx (e.g. lsh.portable)")
    ap.add_argument("--seq-len", type=int, default=16384)
    ap.add_argument("--provider", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--top", type=int, default=12, help="op types (or kernel kinds and names) to list")
    ap.add_argument("--kernels", action="store_true",
                    help="device time per kernel through CUPTI, launches asynchronous (CUDA only)")
    ap.add_argument("--runs", type=int, default=3, help="--kernels: profiled runs, after 3 unprofiled ones")
    args = ap.parse_args(argv)
    if args.kernels:
        from attnopt.ort_runtime import cuda_missing

        missing = "--kernels times CUDA kernels, not --provider cpu" if args.provider != "cuda" else cuda_missing()
        if missing:
            print(f"ort_op_times: --kernels needs onnxruntime's CUDA provider: {missing}", file=sys.stderr)
            return 2
    elif args.provider == "cuda" and os.environ.get("CUDA_LAUNCH_BLOCKING") != "1":
        print("ort_op_times: set CUDA_LAUNCH_BLOCKING=1, or the times are the host's launches (or use --kernels)",
              file=sys.stderr)
        return 2
    from ort_cuda import feeds_for

    feeds = feeds_for(args.models / "original.onnx", args.seq_len)
    for name in args.names:
        path = args.models / f"{name}.onnx"
        row = (kernel_times(path, feeds, args.runs, args.top) if args.kernels
               else op_times(path, feeds, args.provider, args.top))
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
