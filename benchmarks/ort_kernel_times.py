"""Where a model's run spends the GPU's time in onnxruntime's CUDA provider, kernel by kernel.

``ort_op_times.py`` times nodes on the host under ``CUDA_LAUNCH_BLOCKING=1``, so every node also
pays a synchronisation and a body of many small nodes looks costlier than it is on the device.
This script leaves the launches asynchronous and reads the kernels' own device times through
CUPTI (torch.profiler records every kernel of the process, onnxruntime's included). It reports,
per model: the wall time of a run, the summed kernel time (the GPU's work), and the kernels that
took most of it. Wall well above the kernel sum means the host's launches bound the run.

    # on the GPU machine, after benchmarks/ort_cuda.py wrote its models under OUT/models:
    python benchmarks/ort_kernel_times.py OUT/models lsh.portable routed.portable --seq-len 16384

The inputs are ort_cuda.py's for ``original.onnx`` in the same folder. Prints one JSON line per model.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


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
    ap.add_argument("--runs", type=int, default=3, help="profiled runs (after 3 unprofiled ones)")
    ap.add_argument("--top", type=int, default=25, help="kernel kinds to list")
    args = ap.parse_args(argv)
    from attnopt.ort_runtime import cuda_missing

    missing = cuda_missing()
    if missing:
        print(f"ort_kernel_times: needs onnxruntime's CUDA provider: {missing}", file=sys.stderr)
        return 2
    from ort_cuda import feeds_for

    feeds = feeds_for(args.models / "original.onnx", args.seq_len)
    for name in args.names:
        print(json.dumps(kernel_times(args.models / f"{name}.onnx", feeds, args.runs, args.top)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
