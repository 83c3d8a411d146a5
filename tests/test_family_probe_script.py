"""benchmarks/family_probe.py: one family probed end to end, and its records when something stops it."""

from __future__ import annotations

import json

import pytest
from bench_scripts import load


@pytest.fixture(scope="module")
def fp():
    return load("family_probe")


def test_a_family_goes_through_detect_rewrite_and_validate(fp, tmp_path, capsys):
    out = tmp_path / "probe.json"
    assert fp.main(["gpt_neox_japanese", "--exporters", "torchscript", "--impls", "eager", "sdpa",
                    "--json", str(out)]) == 0
    eager, sdpa = json.loads(out.read_text())
    assert (eager["stage"], eager["sites"], eager["rewritten"], eager["exact"]) == ("done", 2, 2, True)
    assert eager["exact_left_padding"] is True  # a decoder: validated again with its first queries keyless
    assert sdpa["stage"] == "build" and "error" in sdpa  # transformers has no sdpa form of it
    out = capsys.readouterr().out
    assert "2 probes: 1 exact, 0 inexact, 0 attention-free with no site found, 1 not built" in out
    assert "left padding: 1 of 1 exact" in out


def test_the_fx_path_is_probed_through_torch_export(fp, tmp_path):
    out = tmp_path / "probe.json"
    assert fp.main(["gpt_neox_japanese", "--exporters", "export", "--impls", "eager", "--json", str(out)]) == 0
    (rec,) = json.loads(out.read_text())
    assert (rec["exporter"], rec["stage"], rec["sites"], rec["rewritten"], rec["exact"]) == ("export", "done", 2, 2, True)


def test_a_family_with_inputs_of_its_own(fp, tmp_path):
    """Qwen2.5-VL's vision tower takes flat patches and a grid (the "custom" kind); TorchScript drops the grid,
    which only sizes its windows at export time, so validate is fed the inputs the ONNX model has."""
    out = tmp_path / "probe.json"
    assert fp.main(["qwen2_5_vl_vision", "--exporters", "torchscript", "--impls", "eager", "--json", str(out)]) == 0
    (rec,) = json.loads(out.read_text())
    assert (rec["stage"], rec["sites"], rec["rewritten"], rec["exact"]) == ("done", 3, 3, True)


def test_an_attention_free_model_must_show_no_site(fp, tmp_path, capsys, monkeypatch):
    """Mamba has no attention: no site is the right answer, and a site found in it is a false positive."""
    import attnopt

    out = tmp_path / "probe.json"
    assert fp.main(["mamba", "--exporters", "export", "--impls", "eager", "--json", str(out)]) == 0
    (rec,) = json.loads(out.read_text())
    assert (rec["stage"], rec["sites"], rec["attention_free"]) == ("done", 0, True)
    assert "1 attention-free with no site found" in capsys.readouterr().out
    from types import SimpleNamespace

    monkeypatch.setattr(attnopt, "detect", lambda model: [SimpleNamespace(unsupported=None)])
    assert fp.main(["mamba", "--exporters", "export", "--impls", "eager", "--json", str(out)]) == 0
    (rec,) = json.loads(out.read_text())
    assert rec["stage"] == "detect" and "false positive: 1 sites" in rec["error"]
    assert "0 attention-free with no site found" in capsys.readouterr().out


def test_an_inexact_left_padding_is_reported(fp, tmp_path, capsys, monkeypatch):
    """GPT-Neo applies its causal mask and its padding one after the other, each with finfo.min: the rows both
    block entirely get the mean of their causal prefix (AttentionSite.blocked_groups), and the probe finds the
    rewrite exact with left padding too; without that correction after the op, it reports the left padding
    inexact while the first validation (right padding) stays exact."""
    from attnopt.frontends import fx_rewrite

    out = tmp_path / "probe.json"
    assert fp.main(["gpt_neo", "--exporters", "export", "--impls", "eager", "--json", str(out)]) == 0
    (rec,) = json.loads(out.read_text())
    assert rec["exact_left_padding"] is True and rec["exact"] is True
    capsys.readouterr()
    monkeypatch.setattr(fx_rewrite, "blocked_rows", lambda call, masks: None)
    assert fp.main(["gpt_neo", "--exporters", "export", "--impls", "eager", "--json", str(out)]) == 0
    (rec,) = json.loads(out.read_text())
    assert rec["worst_rel_l2"] < 1e-6 and rec["exact_left_padding"] is False and rec["exact"] is False
    assert "gpt_neo eager export: inexact" in capsys.readouterr().out


def test_a_stop_in_attnopt_is_listed_with_its_error(fp, monkeypatch, tmp_path, capsys):
    import attnopt

    def broken(*a, **k):
        raise RuntimeError("planted")

    monkeypatch.setattr(attnopt, "rewrite", broken)
    assert fp.main(["gpt_neo", "--exporters", "torchscript", "--impls", "eager"]) == 0
    out = capsys.readouterr().out
    assert "1 stopped in attnopt" in out and "gpt_neo eager torchscript: RuntimeError: planted" in out


def test_an_unknown_family_is_refused(fp, capsys):
    assert fp.main(["nope"]) == 2
    assert "unknown family 'nope'" in capsys.readouterr().err
