"""benchmarks/ort_op_times.py: the per-op-type breakdown on the CPU provider with a 1-layer example, and the
per-kernel view's names and refusals."""

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


def test_kernel_kinds_drop_template_arguments_and_parameters():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        from ort_op_times import kernel_family
    finally:
        sys.path.remove(str(SCRIPT.parent))
    name = ("void onnxruntime::cuda::_BinaryElementWise<float, float, float, onnxruntime::cuda::OP_Sub<float, float, "
            "float>, false, true, 256, 4, int>(int, onnxruntime::cuda::TArray<long, 8>, float const*)")
    assert kernel_family(name) == "onnxruntime::cuda::_BinaryElementWise"
    assert kernel_family("Memcpy DtoD (Device -> Device)") == "Memcpy DtoD"
    plain = "sm90_xmma_gemm_f32f32_tf32f32_f32_nn_n_tilesize128x128x32_kernel__5x_cublas"
    assert kernel_family(plain) == plain


def test_kernel_times_refuse_in_one_line_without_cuda(tmp_path):
    from attnopt.ort_runtime import cuda_missing

    done = _run(str(tmp_path), "x", "--kernels", "--provider", "cpu")
    assert done.returncode == 2 and "CUDA provider" in done.stderr and "Traceback" not in done.stderr
    if cuda_missing() is None:
        return  # the CUDA provider loads here: the default provider would run, not refuse
    done = _run(str(tmp_path), "x", "--kernels")
    assert done.returncode == 2 and "CUDA provider" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
