"""benchmarks/cpu_ops.py: one row per op, N and causality, with both paths timed, at a small size."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "cpu_ops.py"


def _run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True)


def test_times_each_row_with_and_without_its_fused_path(tmp_path):
    done = _run("--n", "1024", "--threads", "1", "--repeats", "1", "--rows", "memory", "lsh",
                "--json", str(tmp_path / "rows.json"))
    assert done.returncode == 0, done.stderr
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert [r["row"] for r in rows] == ["memory S=M=512", "lsh (defaults)", "memory S=M=512 causal",
                                       "lsh (defaults) causal"]
    for r in rows:
        assert r["n"] == 1024 and min(r["op_ms"], r["blocked_ms"], r["dense_sdpa_ms"]) > 0
    assert "| memory S=M=512 | 1024 |" in done.stdout


def test_unknown_rows_are_refused():
    done = _run("--rows", "nothing-like-this")
    assert done.returncode == 2 and "no row matches" in done.stderr
