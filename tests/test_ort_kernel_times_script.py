"""benchmarks/ort_kernel_times.py: kernel names grouped by kind, and a one-line refusal without CUDA."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_kernel_kinds_drop_template_arguments_and_parameters():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from ort_kernel_times import kernel_family
    finally:
        sys.path.remove(str(BENCHMARKS))
    name = ("void onnxruntime::cuda::_BinaryElementWise<float, float, float, onnxruntime::cuda::OP_Sub<float, float, "
            "float>, false, true, 256, 4, int>(int, onnxruntime::cuda::TArray<long, 8>, float const*)")
    assert kernel_family(name) == "onnxruntime::cuda::_BinaryElementWise"
    assert kernel_family("Memcpy DtoD (Device -> Device)") == "Memcpy DtoD"
    plain = "sm90_xmma_gemm_f32f32_tf32f32_f32_nn_n_tilesize128x128x32_kernel__5x_cublas"
    assert kernel_family(plain) == plain


def test_refuses_in_one_line_without_the_cuda_provider(tmp_path):
    from attnopt.ort_runtime import cuda_missing

    if cuda_missing() is None:
        pytest.skip("onnxruntime's CUDA provider loads here: the script would run, not refuse")
    done = subprocess.run([sys.executable, str(BENCHMARKS / "ort_kernel_times.py"), str(tmp_path), "x"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "CUDA provider" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
