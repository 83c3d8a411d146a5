"""Running Triton kernel cases under TRITON_INTERPRET=1 (how CI tests the kernels without a GPU).

The interpreter must be on before triton.jit decorates a kernel, so a test module runs its cases in one
subprocess of itself (``run_cases_in_subprocess``), whose ``__main__`` calls ``report``; each case is then
checked as its own test from the JSON it prints.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Callable

import pytest
import torch

TOLERANCE = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}


def tolerance(dtype: torch.dtype) -> float:
    return TOLERANCE[dtype]


def run_cases_in_subprocess(test_file: str) -> dict:
    """``python test_file --interpret`` with the interpreter on; its per-case results."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, test_file, "--interpret"], env=env, capture_output=True, text=True,
                          timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"interpreted run failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def report(cases, run_case: Callable[[str], dict]) -> None:
    """In the subprocess: every case's result (or its error, so one failure loses no other case), as JSON."""
    assert os.environ.get("TRITON_INTERPRET") == "1"
    torch.set_num_threads(1)
    results = {}
    for case in cases:
        try:
            results[case] = run_case(case)
        except Exception as exc:  # report per case instead of losing the whole run
            results[case] = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(results))


def check_result(r: dict) -> None:
    """The checks every case shares: no error, finite, q's shape and dtype, within the dtype's tolerance."""
    assert "error" not in r, r.get("error")
    assert r["finite"] and r["shape_ok"], r
    assert r["max_err"] <= tolerance(getattr(torch, r["dtype"].removeprefix("torch."))), r
