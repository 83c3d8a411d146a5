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


# Distributions that each install the `onnxruntime` module: two of them in one environment break both.
ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino",
                     "onnxruntime-qnn", "onnxruntime-training")
# The installs README.md tells each kind of user to run, as the extras they name.
README_INSTALLS = {"CPU": ("cpu",), "NVIDIA GPU": ("cuda",), "has an onnxruntime already": (),
                   "tests, CPU": ("cpu", "test-tools"), "tests on a GPU machine": ("cuda", "test-tools"),
                   "tests, has an onnxruntime already": ("test-tools",)}


def _requirements(extras) -> list[str]:
    """The distribution names attnopt requires with ``extras`` (self-references resolved), from pyproject.toml."""
    import re
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    optional = project.get("optional-dependencies", {})
    names, todo, seen = [], list(extras), set()
    reqs = list(project["dependencies"])
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        reqs += optional[extra]
    for req in reqs:
        name = re.match(r"[A-Za-z0-9_.\-]+", req).group(0).lower().replace("_", "-")
        inner = re.search(r"\[([^\]]+)\]", req)
        if name == "attnopt" and inner:
            names += _requirements([e.strip() for e in inner.group(1).split(",")])
        else:
            names.append(name)
    return names


def test_every_documented_install_requires_exactly_one_onnxruntime():
    for who, extras in README_INSTALLS.items():
        runtimes = [n for n in _requirements(extras) if n in ORT_DISTRIBUTIONS]
        assert len(runtimes) == (1 if {"cpu", "cuda"} & set(extras) else 0), (who, extras, runtimes)
    readme = (ROOT / "README.md").read_text()
    for extras in README_INSTALLS.values():
        if extras:
            assert f"[{','.join(extras)}]" in readme, extras


def test_this_environment_has_one_onnxruntime():
    """What `bash install.sh --test` (CI) left behind: exactly one distribution owns `onnxruntime`."""
    from importlib.metadata import distributions

    found = sorted({d.metadata["Name"].lower() for d in distributions()
                    if (d.metadata["Name"] or "").lower().replace("_", "-") in ORT_DISTRIBUTIONS})
    assert len(found) == 1, found


def _install_dry_run(*args, python=sys.executable, pythonpath=None):
    env = {**os.environ, "PYTHON": str(python)}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run(["bash", str(ROOT / "install.sh"), "--dry-run", *args], env=env,
                          capture_output=True, text=True)


def _pip_spec(res) -> str:
    (line,) = [ln for ln in res.stdout.splitlines() if ln.startswith("+ ") and " -e " in ln]
    return line.split(" -e ", 1)[1]


def test_install_script_keeps_the_installed_onnxruntime():
    """README's install command: where an onnxruntime is installed (here, the one this run uses) no extra adds another."""
    res = _install_dry_run("--test")
    assert res.returncode == 0, res.stderr
    assert _pip_spec(res) == ".[test-tools]" and "keeping the installed onnxruntime" in res.stdout
    assert "pip install torch==2.13.0" in res.stdout


def test_install_script_picks_one_onnxruntime_where_there_is_none(tmp_path):
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "venv")], check=True)
    bare = tmp_path / "venv" / "bin" / "python"
    assert _pip_spec(_install_dry_run(python=bare)) == ".[cpu]"
    assert _pip_spec(_install_dry_run("--test", "--cuda", python=bare)) == ".[cuda,cudnn,test-tools]"


def test_install_script_adds_the_cudnn_frontend_on_a_cuda_machine_that_has_an_onnxruntime():
    res = _install_dry_run("--cuda")
    assert res.returncode == 0, res.stderr
    assert _pip_spec(res) == ".[cudnn]" and "keeping the installed onnxruntime" in res.stdout


def test_install_script_refuses_an_environment_holding_two(tmp_path):
    for name in ("onnxruntime", "onnxruntime-gpu"):  # what a stray `pip install onnxruntime` leaves behind
        info = tmp_path / f"{name.replace('-', '_')}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "venv")], check=True)
    res = _install_dry_run(python=tmp_path / "venv" / "bin" / "python", pythonpath=tmp_path)
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    uninstall = res.stderr.split("pip uninstall -y ", 1)[1].split(" && ")[0]
    assert sorted(uninstall.split()) == ["onnxruntime", "onnxruntime-gpu"] and "+ " not in res.stdout
    assert _install_dry_run("--bogus").returncode == 2


def test_missing_onnxruntime_is_a_one_line_error(tmp_path):
    """Without any onnxruntime, the first command that needs it says how to install one (exit 2)."""
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\nclass _Block:\n    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'onnxruntime' or name.startswith('onnxruntime.'):\n"
        "            raise ImportError('blocked')\nsys.meta_path.insert(0, _Block())\n")
    model = tmp_path / "m.onnx"
    from attnopt.examples import export_example
    export_example("bert", model, seq_len=16, layers=1)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, "-m", "attnopt", "validate", str(model), str(model), "--seq-len", "16"],
                         env=env, capture_output=True, text=True)
    assert res.returncode == 2, res.stderr
    assert res.stderr.count("\n") == 1 and "attnopt[cpu]" in res.stderr and "attnopt[cuda]" in res.stderr
