"""Where onnxruntime spends a model's run, by op type, on the device (a diagnostic for the portable bodies).

onnxruntime's profiler times each node on the host. On the CUDA provider a kernel launch
returns at once, so those times say where the host waits, not where the GPU works. Run under
``CUDA_LAUNCH_BLOCKING=1`` (this script refuses to run without it on CUDA), every launch waits
for its kernel, and a node's time is its kernel's. The whole run is slower that way (every node
pays a synchronisation); the shares by op type are what to read.

    # on the GPU machine, after benchmarks/ort_cuda.py wrote its models under OUT/models:
    CUDA_LAUNCH_BLOCKING=1 python benchmarks/ort_op_times.py OUT/models lsh.portable routed.portable --seq-len 16384

The inputs are ort_cuda.py's for ``original.onnx`` in the same folder; the profile is
``attnopt.ort_runtime.placement``'s (IO binding, two runs, the second profiled). Prints one JSON
line per model.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def op_times(path: Path, feeds: dict, provider: str, top: int) -> dict:
    """The model's profiled run (the second of two: the first also allocates) and its ``top`` op types."""
    from attnopt.ort_runtime import placement

    p = placement(str(path), feeds, provider)
    return {"model": path.stem, "run_ms": p["run_ms"], "ms_by_op": dict(list(p["host_ms_by_op"].items())[:top])}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", type=Path, help="a folder ort_cuda.py wrote (holds original.onnx)")
    ap.add_argument("names", nargs="+", help="model files in it, without .onnx (e.g. lsh.portable)")
    ap.add_argument("--seq-len", type=int, default=16384)
    ap.add_argument("--provider", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--top", type=int, default=12, help="op types to list")
    args = ap.parse_args(argv)
    if args.provider == "cuda" and os.environ.get("CUDA_LAUNCH_BLOCKING") != "1":
        print("ort_op_times: set CUDA_LAUNCH_BLOCKING=1, or the times are the host's launches", file=sys.stderr)
        return 2
    from ort_cuda import feeds_for

    feeds = feeds_for(args.models / "original.onnx", args.seq_len)
    for name in args.names:
        print(json.dumps(op_times(args.models / f"{name}.onnx", feeds, args.provider, args.top)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
