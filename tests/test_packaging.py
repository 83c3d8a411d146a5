"""The package installs as a wheel with only `attnopt` at the top level, and runs from there."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_maps_passes_and_kernels_into_the_package_and_runs(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path / "dist")], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("attnopt-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.startswith("attnopt-")}
    assert top == {"attnopt"}  # no generic `passes`, `kernels` or `cli` at the top level
    assert {"attnopt/passes/segmented.py", "attnopt/kernels/reference.py", "attnopt/cli.py"} <= set(names)
    # Every variant folder ships, found rather than listed.
    folders = sorted(p.name for p in (ROOT / "kernels").iterdir() if (p / "__init__.py").exists())
    assert folders and all(f"attnopt/kernels/{f}/op.py" in names for f in folders), folders

    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                    str(wheel)], check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(target)}
    code = ("import attnopt, attnopt.passes, attnopt.kernels.registry as r; "
            "assert attnopt.__file__.startswith(%r); r.register_torch_ops(); "
            "print(attnopt.passes.pass_names(), r.variant_names())" % str(target))
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    from attnopt.kernels.registry import variant_names
    from attnopt.passes import pass_names
    assert f"{pass_names()} {variant_names()}" in out.stdout, out.stdout
    cli = subprocess.run([sys.executable, "-m", "attnopt", "passes", "--json"], env=env, cwd=tmp_path,
                         capture_output=True, text=True)
    assert cli.returncode == 0 and '"segmented"' in cli.stdout, cli.stderr
