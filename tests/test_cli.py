"""The `attnopt` command line: tables, --json, --help, and one-line errors with exit code 2.

Most tests drive the click app in-process with CliRunner; a few run
``python -m attnopt`` for real, to prove that what reaches a user's terminal
has no traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from attnopt.cli import main
from attnopt.examples import build_example, export_example

COMMANDS = ("detect", "rewrite", "validate", "bench", "passes", "demo", "example")
SEG_OK = ["-p", "segment_size=32", "-p", "sinks=2"]


# ----------------------------------------------------------------------------- models

@pytest.fixture(scope="session")
def bert(tmp_path_factory) -> Path:
    """The built-in 2-layer example (hidden 128, 4 heads), exported once per session."""
    return export_example("bert", tmp_path_factory.mktemp("cli") / "bert.onnx", seq_len=32)


@pytest.fixture(scope="session")
def bad_models(tmp_path_factory, bert) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad")
    data = bert.read_bytes()
    (d / "truncated.onnx").write_bytes(data[: len(data) // 2])
    (d / "text.onnx").write_text("this is not an ONNX model\n" * 20)
    (d / "empty.onnx").write_bytes(b"")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    custom = helper.make_model(
        helper.make_graph([helper.make_node("Frobnicate", ["x"], ["y"], domain="com.example.secret")], "g", [x], [y]),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example.secret", 1)])
    onnx.save(custom, d / "unknown_domain.onnx")
    torch.save({"w": torch.zeros(2)}, d / "model.pt")  # a zip, as torch.export.save writes too
    return {"missing file": d / "does_not_exist.onnx", "truncated ONNX": d / "truncated.onnx",
            "text file": d / "text.onnx", "empty file": d / "empty.onnx",
            "unknown opset domain": d / "unknown_domain.onnx", "a directory": d, "torch archive": d / "model.pt"}


@pytest.fixture(scope="session")
def no_attention(tmp_path_factory) -> Path:
    """A classifier head: MatMul -> Softmax over classes. A softmax, but not attention."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((16, 5)).astype(np.float32), "w")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])
    y = helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 5])
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["logits"]),
                           helper.make_node("Softmax", ["logits"], ["probs"], axis=-1)], "head", [x], [y], [w])
    path = tmp_path_factory.mktemp("noattn") / "classifier.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def run(*args, ok: bool = True):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


def assert_one_line_error(result, code: int = 2, contains: str | None = None):
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in result.output
    if contains is not None:
        assert contains in lines[0], lines[0]
    return lines[0]


def files_in(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()}


# ----------------------------------------------------------------------------- detect

def test_detect_table(bert):
    out = run("detect", bert).stdout
    assert "2 attention sites" in out
    for text in ("layer.0.attention", "layer.1.attention", "decomposed", "additive", "0.1768"):
        assert text in out


def test_detect_json(bert):
    data = json.loads(run("detect", bert, "--json").stdout)
    assert data["model"] == str(bert)
    assert [s["name"] for s in data["sites"]] == ["layer.0.attention", "layer.1.attention"]
    for s in data["sites"]:
        assert (s["num_heads"], s["kv_num_heads"], s["head_dim"]) == (4, 4, 32)
        # The padding mask: a key-padding vector once structured masks are on, else a dense term.
        assert "additive" in (s["key_padding"], s["mask_kind"]) and s["causal"] is False
        assert s["q_len"] == s["kv_len"]  # the sequence axis stays dynamic, and is the same symbol


def test_detect_shows_the_values_own_head_dim(zoo):
    path = zoo.onnx_path("hand-wide-values", "torchscript")  # values twice as wide as q and k
    assert "8 (v 16)" in run("detect", path).stdout
    (site,) = json.loads(run("detect", path, "--json").stdout)["sites"]
    assert (site["head_dim"], site["value_head_dim"]) == (8, 16)


def test_detect_shows_extra_batching_axes(zoo):
    path = zoo.onnx_path("hand-mask-units", "torchscript")  # (B, H, units, N, D), as Hiera's mask units
    assert "4 (+1 axis)" in run("detect", path).stdout
    (site,) = json.loads(run("detect", path, "--json").stdout)["sites"]
    assert (site["num_heads"], site["extra_axes"], site["q_len"]) == (4, 1, 5)
    assert "unsupported" not in site


def test_example_module_and_export_agree(bert):
    """The exported example computes what the torch module does, at a length it was not traced with."""
    module, _, names = build_example("bert", seq_len=32)
    import torch
    ids = torch.randint(0, 1000, (2, 77))
    mask = torch.ones(2, 77, dtype=torch.int64)
    mask[1, 60:] = 0
    want = module(ids, mask).detach().numpy()
    sess = ort.InferenceSession(str(bert), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    assert names == ["input_ids", "attention_mask"]
    np.testing.assert_allclose(got, want, atol=1e-4)


@pytest.mark.parametrize("case", ["missing file", "truncated ONNX", "text file", "empty file",
                                  "unknown opset domain", "a directory", "torch archive"])
@pytest.mark.parametrize("as_json", [False, True])
def test_detect_bad_input_is_one_line(bad_models, case, as_json):
    result = run("detect", bad_models[case], *(["--json"] if as_json else []), ok=False)
    line = assert_one_line_error(result)
    assert result.stdout == ""
    if case == "unknown opset domain":
        assert "com.example.secret" in line
    if case == "torch archive":  # says what it is and where torch models go, not "corrupt ONNX"
        assert "a torch archive" in line and "Python API" in line


def test_detect_no_attention(no_attention):
    result = run("detect", no_attention)
    assert result.stdout.strip() == "no attention sites found (1 softmax looked at and left; -v says why)"
    assert json.loads(run("detect", no_attention, "--json").stdout)["sites"] == []


# ----------------------------------------------------------------------------- rewrite

def test_rewrite_default_output_and_table(bert, tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(bert.read_bytes())
    result = run("rewrite", model, "--pass", "segmented", *SEG_OK)
    out = tmp_path / "m.segmented.onnx"
    assert out.exists()
    assert "wrote" in result.stdout and str(out) in result.stdout
    assert result.stdout.count("rewritten") >= 2 and "segment_size=32 sinks=2" in result.stdout
    onnx.checker.check_model(str(out))
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"input_ids": np.zeros((1, 50), np.int64), "attention_mask": np.ones((1, 50), np.int64)})[0]
    assert y.shape == (1, 50, 128) and np.isfinite(y).all()
    assert files_in(tmp_path) == {"m.onnx", "m.segmented.onnx"}  # no temp files left behind


def test_rewrite_json_layers_and_names(bert, tmp_path):
    out = tmp_path / "one.onnx"
    data = json.loads(run("rewrite", bert, "--pass", "segmented", *SEG_OK, "--layers", "1:2",
                          "-o", out, "--json").stdout)
    assert data["output"] == str(out) and out.exists()
    status = {s["site"]: s["status"] for s in data["sites"]}
    assert status == {"layer.0.attention": "skipped", "layer.1.attention": "rewritten"}
    data = json.loads(run("rewrite", bert, "--pass", "segmented", "--names", "layer.0.*",
                          "-o", tmp_path / "two.onnx", "--json").stdout)
    assert {s["site"]: s["status"] for s in data["sites"]}["layer.0.attention"] == "rewritten"
    assert {s["site"]: s["status"] for s in data["sites"]}["layer.1.attention"] == "skipped"


@pytest.mark.parametrize("params, contains", [
    (["-p", "segment_size=0"], "segment_size"),
    (["-p", "nope=1"], "nope"),
    (["-p", "segment_size=abc"], "abc"),
    (["-p", "segment_size"], "key=value"),
    (["-p", "=3"], "key=value"),
    (["-p", "segment_size=8", "-p", "segment_size=9"], "twice"),
    (["--layers", "x:y"], "--layers"),
    (["--layers", "5:2"], "--layers"),
])
def test_rewrite_invalid_params_exit_2_and_write_nothing(bert, tmp_path, params, contains):
    model = tmp_path / "m.onnx"
    model.write_bytes(bert.read_bytes())
    assert_one_line_error(run("rewrite", model, "--pass", "segmented", *params, ok=False), contains=contains)
    assert files_in(tmp_path) == {"m.onnx"}


def test_rewrite_unknown_pass(bert, tmp_path):
    assert_one_line_error(run("rewrite", bert, "--pass", "warp-drive", "-o", tmp_path / "x.onnx", ok=False),
                          contains="warp-drive")
    assert files_in(tmp_path) == set()


@pytest.mark.parametrize("case", ["missing file", "truncated ONNX", "text file", "unknown opset domain"])
def test_rewrite_bad_model_writes_nothing(bad_models, tmp_path, case):
    assert_one_line_error(run("rewrite", bad_models[case], "--pass", "segmented", "-o", tmp_path / "out.onnx",
                              ok=False))
    assert files_in(tmp_path) == set()


def test_rewrite_no_attention_exits_2(no_attention, tmp_path):
    assert_one_line_error(run("rewrite", no_attention, "--pass", "segmented", "-o", tmp_path / "o.onnx", ok=False),
                          contains="no attention")
    assert files_in(tmp_path) == set()


def test_rewrite_refuses_to_overwrite_its_input(bert, tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(bert.read_bytes())
    before = model.read_bytes()
    assert_one_line_error(run("rewrite", model, "--pass", "segmented", "-o", model, ok=False), contains="overwrite")
    assert model.read_bytes() == before


def test_rewrite_is_deterministic(bert, tmp_path):
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    run("rewrite", bert, "--pass", "segmented", *SEG_OK, "-o", a)
    run("rewrite", bert, "--pass", "segmented", *SEG_OK, "-o", b)
    assert a.read_bytes() == b.read_bytes()


# ----------------------------------------------------------------------------- validate

@pytest.fixture(scope="session")
def rewritten(bert, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rw") / "bert.segmented.onnx"
    run("rewrite", bert, "--pass", "segmented", *SEG_OK, "-o", out)
    return out


def test_validate_table_and_json(bert, rewritten, tmp_path):
    out = run("validate", bert, rewritten, "--seq-len", 64).stdout
    for text in ("last_hidden_state", "layer.0.attention", "layer.1.attention", "max abs", "rel L2", "cosine"):
        assert text in out
    data = json.loads(run("validate", bert, rewritten, "--seq-len", 64, "--json").stdout)
    assert [o["name"] for o in data["outputs"]] == ["last_hidden_state"]
    assert {s["name"] for s in data["sites"]} == {"layer.0.attention", "layer.1.attention"}
    for m in data["outputs"] + data["sites"]:
        assert set(m) >= {"name", "max_abs", "rel_l2", "cosine"}
        assert 0.0 < m["cosine"] <= 1.0


def test_validate_exact_limit_with_inputs(bert, tmp_path):
    """segment_size >= N is dense attention: the rewrite must validate as exact on given inputs."""
    exact = tmp_path / "exact.onnx"
    run("rewrite", bert, "--pass", "segmented", "-p", "segment_size=64", "-o", exact)
    npz = tmp_path / "x.npz"
    mask = np.ones((2, 40), np.int64)
    mask[1, 30:] = 0
    np.savez(npz, input_ids=np.arange(80, dtype=np.int64).reshape(2, 40), attention_mask=mask)
    data = json.loads(run("validate", bert, exact, "--inputs", npz, "--json").stdout)
    assert data["outputs"][0]["rel_l2"] < 1e-5


def test_validate_bad_inputs(bert, rewritten, tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_text("not a zip")
    assert_one_line_error(run("validate", bert, rewritten, "--inputs", bad, ok=False))
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, tokens=np.zeros((1, 8), np.int64))
    assert_one_line_error(run("validate", bert, rewritten, "--inputs", wrong, ok=False), contains="input_ids")
    assert_one_line_error(run("validate", bert, tmp_path / "nope.onnx", ok=False), contains="no such file")


# ----------------------------------------------------------------------------- bench

def test_bench_json_and_plot(bert, tmp_path):
    png = tmp_path / "bench.png"
    data = json.loads(run("bench", bert, "--pass", "segmented", "-p", "segment_size=16", "--seq-len", "32,64",
                          "--repeats", 1, "--plot", png, "--json").stdout)
    assert [r["seq_len"] for r in data["rows"]] == [32, 64]
    for r in data["rows"]:
        assert r["original_ms"] > 0 and r["rewritten_ms"] > 0 and r["speedup"] > 0
    assert png.exists() and png.stat().st_size > 0


def test_bench_table(bert):
    out = run("bench", bert, "--pass", "segmented", "-p", "segment_size=16", "--seq-len", "32",
              "--repeats", 1).stdout
    assert "speedup" in out and "32" in out


@pytest.mark.parametrize("args, contains", [
    (["--seq-len", "abc"], "--seq-len"),
    (["--seq-len", "0,64"], "--seq-len"),
    (["-p", "segment_size=-4"], "segment_size"),
    (["--provider", "tpu"], "tpu"),
])
def test_bench_bad_args(bert, args, contains):
    assert_one_line_error(run("bench", bert, "--pass", "segmented", *args, ok=False), contains=contains)


# ----------------------------------------------------------------------------- passes, example, help

def test_passes_json():
    data = json.loads(run("passes", "--json").stdout)
    by_name = {p["name"]: p for p in data}
    assert "segmented" in by_name
    assert by_name["segmented"]["params"] == {"segment_size": 512, "sinks": 0}
    assert all(p["summary"] for p in data)


def test_passes_table():
    out = run("passes").stdout
    assert "segmented" in out and "segment_size=512" in out


def test_example_command(tmp_path):
    out = tmp_path / "sub" / "ex.onnx"
    assert "wrote" in run("example", "bert", "-o", out, "--layers", 3).stdout
    assert len(json.loads(run("detect", out, "--json").stdout)["sites"]) == 3
    assert_one_line_error(run("example", "gpt-17", "-o", tmp_path / "x.onnx", ok=False), contains="gpt-17")


@pytest.mark.parametrize("command", COMMANDS)
def test_help_teaches_with_an_example(command):
    out = run(command, "--help").stdout
    assert "Example:" in out and f"attnopt {command}" in out
    assert len(out.split("\n\n")[2].split()) > 15  # a real paragraph after the summary line


def test_top_level_help_and_unknown_command():
    assert "Example:" in run("--help").stdout
    assert_one_line_error(run("frobnicate", ok=False), contains="frobnicate")
    assert_one_line_error(run("detect", ok=False), contains="MODEL")


def test_a_bug_is_one_line_with_exit_1(bert, monkeypatch):
    import attnopt.loaded

    def broken(*a, **k):
        raise RuntimeError("boom\nsecond line")
    monkeypatch.setattr(attnopt.loaded, "open_model", broken)
    line = assert_one_line_error(run("detect", bert, ok=False), code=1, contains="internal error")
    assert "boom second line" in line


def test_unwritable_output_is_one_line(bert, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_one_line_error(run("rewrite", bert, "--pass", "segmented", "-o", blocker / "out.onnx", ok=False))
    assert files_in(tmp_path) == {"file"}


# ----------------------------------------------------------------------------- demo

def test_demo_quick_json(monkeypatch):
    """Every registered pass goes through rewrite, validate and bench without an error."""
    import attnopt.demo as demo
    monkeypatch.setattr(demo, "QUICK_BENCH_SEQ_LENS", (64,))  # one length: the bench runs, fast
    monkeypatch.setattr(demo, "QUICK_REPEATS", 1)
    data = json.loads(run("demo", "--quick", "--json").stdout)
    from attnopt.passes import pass_names
    assert [r["pass"] for r in data["passes"]] == pass_names()
    assert data["model"]["sites"] == 2
    for r in data["passes"]:
        assert r["error"] is None, r
        assert r["sites_rewritten"] >= 1, r
        assert r["cosine"] is not None and r["speedup"] is not None, r


# ----------------------------------------------------------------------------- real processes

def _python_m(*args, cwd) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "ATTNOPT_DEBUG"}
    return subprocess.run([sys.executable, "-m", "attnopt", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


@pytest.mark.parametrize("case", ["missing file", "truncated ONNX", "text file", "unknown opset domain"])
def test_python_m_bad_input_has_no_traceback(bad_models, tmp_path, case):
    p = _python_m("detect", bad_models[case], cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    assert p.stdout == ""


def test_python_m_rewrite_bad_params_real_process(bert, tmp_path):
    p = _python_m("rewrite", bert, "--pass", "segmented", "-p", "segment_size=abc", "-o", tmp_path / "o.onnx",
                  cwd=tmp_path)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr
    assert files_in(tmp_path) == set()


def test_python_m_detect_json_real_process(bert, tmp_path):
    p = _python_m("detect", bert, "--json", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert len(json.loads(p.stdout)["sites"]) == 2


def test_passes_name_shows_parameters_exact_limit_and_refusals():
    from click.testing import CliRunner
    from attnopt.cli import main
    out = CliRunner().invoke(main, ["passes", "window"])
    assert out.exit_code == 0, out.output
    for text in ("window", "sinks", "must be >= 1", "exact limit: window >= N", "refuses: cross-attention",
                 "takes: learned sink logits"):
        assert text in out.output
    lowrank = CliRunner().invoke(main, ["passes", "lowrank"]).output
    assert "learned sink logits (GPT-OSS)" in lowrank.split("refuses:")[1]
    js = CliRunner().invoke(main, ["passes", "memory", "--json"])
    info = json.loads(js.output)
    assert info["takes_sink_logits"] is True
    assert info["exact_limit"].startswith("memory >= N") and [p["name"] for p in info["parameters"]] == [
        "segment_size", "memory", "sinks"]
    bad = CliRunner().invoke(main, ["passes", "nope"])
    assert bad.exit_code == 2 and "unknown pass 'nope'" in bad.output


def test_rewrite_help_teaches_verification():
    from click.testing import CliRunner
    from attnopt.cli import main
    out = CliRunner().invoke(main, ["rewrite", "--help"])
    assert "--no-verify" in out.output and "onnxruntime" in out.output


def test_detect_verbose_and_json_list_skipped_anchors(tmp_path):
    """A softmax that is not attention is listed with its reason, not silently dropped."""
    import torch
    from click.testing import CliRunner
    from attnopt.cli import main

    class SoftmaxHead(torch.nn.Module):
        def forward(self, x):
            return torch.softmax((x @ x.transpose(-1, -2)).abs(), dim=-1) @ x

    path = tmp_path / "head.onnx"
    torch.onnx.export(SoftmaxHead(), (torch.randn(2, 5, 8),), path, dynamo=True)
    out = CliRunner().invoke(main, ["detect", str(path), "--json"])
    assert out.exit_code == 0, out.output
    skipped = json.loads(out.output)["skipped"]
    assert skipped and all(k["reason"] and not k["internal_error"] for k in skipped), skipped
    verbose = CliRunner().invoke(main, ["detect", str(path), "-v"])
    assert "not attention sites" in verbose.output and skipped[0]["reason"][:20] in verbose.output.replace("\n", " ")
    # without -v, the empty result says that softmaxes were looked at, and how to see why they were left
    plain = CliRunner().invoke(main, ["detect", str(path)])
    assert plain.output.startswith("no attention sites found (1 softmax looked at and left; -v says why)"), plain.output
