"""benchmarks/ort_op_times.py: the per-op-type breakdown, on the CPU provider with a 1-layer example."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import attnopt
from attnopt.examples import export_example

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "ort_op_times.py"


def _run(*args, env=None):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env)


def test_lists_each_models_time_by_op_type(tmp_path):
    export_example("bert", tmp_path / "original.onnx", seq_len=32, layers=1)
    attnopt.rewrite(tmp_path / "original.onnx", "segmented", segment_size=16).save(tmp_path / "seg.onnx")
    done = _run(str(tmp_path), "original", "seg", "--seq-len", "64", "--provider", "cpu", "--top", "3")
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["model"] for r in rows] == ["original", "seg"]
    for r in rows:
        assert r["run_ms"] > 0 and 0 < len(r["ms_by_op"]) <= 3
        assert sum(r["ms_by_op"].values()) <= r["run_ms"]


def test_cuda_times_need_blocking_launches(tmp_path):
    import os

    env = {k: v for k, v in os.environ.items() if k != "CUDA_LAUNCH_BLOCKING"}
    done = _run(str(tmp_path), "x", env=env)
    assert done.returncode == 2 and "CUDA_LAUNCH_BLOCKING=1" in done.stderr
