"""bench: report structure, refusals and the plot. Never asserts speed."""

from __future__ import annotations

import copy

import onnx_ir as ir
import pytest
import torch

import attnopt
import attnopt.bench as bench_module
from attnopt.bench import BenchReport, bench, plot
from attnopt.errors import AttnoptError
from attnopt.loaded import open_model
from test_validate import TinyTorchAttention, tiny_bert_onnx, torch_example

SUMMARY_KEYS = {"seq_len", "original_ms", "original_spread_ms", "rewritten_ms", "rewritten_spread_ms", "speedup",
                "original_peak_mb", "rewritten_peak_mb", "memory_ratio", "max_abs", "rel_l2"}
STATS_KEYS = {"median_ms", "min_ms", "max_ms", "p25_ms", "p75_ms", "times_ms", "peak_rss_mb", "baseline_rss_mb"}


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return tiny_bert_onnx(tmp_path_factory.mktemp("m") / "tiny.onnx")


class _CopyResult:
    """What attnopt.rewrite returns, for a "rewrite" that changes nothing."""

    def __init__(self, model):
        self.loaded = open_model(model)
        self.report = []

    def save(self, path):
        ir.save(self.loaded.model, str(path))


def check_rows(report: BenchReport, seq_lens, repeats, memory=True):
    assert [r["seq_len"] for r in report.rows] == list(seq_lens)
    for row in report.rows:
        assert SUMMARY_KEYS <= set(row) and "note" not in row, row
        for which in ("original", "rewritten"):
            stats = row[which]
            assert STATS_KEYS - ({"peak_rss_mb", "baseline_rss_mb"} if not memory else set()) <= set(stats)
            assert len(stats["times_ms"]) == repeats and all(t > 0 for t in stats["times_ms"])
            assert stats["min_ms"] <= stats["p25_ms"] <= stats["median_ms"] <= stats["p75_ms"] <= stats["max_ms"]
            assert row[f"{which}_ms"] == stats["median_ms"] > 0
            if memory:
                assert stats["peak_rss_mb"] >= stats["baseline_rss_mb"] > 0
        assert row["speedup"] > 0 and (row["memory_ratio"] > 0 if memory else True)


def test_bench_rows_on_a_copy_have_positive_timings_and_no_error(bert, monkeypatch):
    monkeypatch.setattr(attnopt, "rewrite", lambda model, pass_name, **params: _CopyResult(model))
    report = bench(bert, "segmented", {"segment_size": 8}, [16, 32], repeats=2, warmup=1, progress=False,
                   threads=1)
    check_rows(report, [16, 32], 2)
    assert all(r["max_abs"] == 0 and r["rel_l2"] == 0 for r in report.rows)
    d = report.to_dict()
    assert d["runtime"] == "onnxruntime" and d["provider"] == "cpu" and d["threads"] == 1
    assert d["machine"]["cpu_count"] >= 1 and d["date"]
    report.table()  # renders without error


def test_bench_with_the_real_rewrite(bert):
    calls = []
    report = bench(bert, "segmented", {"segment_size": 8}, [8, 24], repeats=1, warmup=0,
                   progress=lambda done, total, desc: calls.append((done, total)))
    check_rows(report, [8, 24], 1)
    assert [o["status"] for o in report.rewrite] == ["rewritten", "rewritten"]
    small, large = report.rows
    assert small["rel_l2"] < 1e-5  # N <= segment_size: exact
    assert large["rel_l2"] > 1e-3  # N > segment_size: segmented differs
    assert calls[-1] == (4, 4)


def test_bench_torch_graph_module():
    gm = torch.fx.symbolic_trace(TinyTorchAttention())
    report = bench(gm, "segmented", {"segment_size": 16}, [10, 20], repeats=1, warmup=0, progress=False,
                   example_inputs=torch_example())
    assert report.runtime == "torch"
    check_rows(report, [10, 20], 1)
    assert report.rows[0]["rel_l2"] < 1e-5


def test_static_seq_len_is_refused_before_any_work(tmp_path, monkeypatch):
    path = tiny_bert_onnx(tmp_path / "static.onnx", seq=16, batch=1)

    def no_rewrite(*a, **k):
        raise AssertionError("rewrite must not run")

    monkeypatch.setattr(attnopt, "rewrite", no_rewrite)
    with pytest.raises(AttnoptError) as e:
        bench(path, "segmented", {"segment_size": 8}, [16, 512], progress=False)
    assert str(e.value) == "model input 'input_ids' has static shape (1, 16); --seq-len 512 is not possible"


@pytest.mark.parametrize("kwargs, message", [
    (dict(seq_lens=[]), "at least one"), (dict(seq_lens=[0]), "not a positive integer"),
    (dict(repeats=0), "--repeats"), (dict(provider="tpu"), "unknown provider"),
])
def test_bad_arguments_are_refused(bert, kwargs, message):
    args = dict(seq_lens=[16], progress=False) | kwargs
    with pytest.raises(AttnoptError, match=message):
        bench(bert, "segmented", {"segment_size": 8}, **args)


def test_plot_writes_a_png_and_refuses_without_matplotlib(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    rows = []
    for n, o, w in ((512, 10.0, 5.0), (1024, 40.0, 10.0)):
        row = {"seq_len": n, "speedup": o / w}
        for which, ms in (("original", o), ("rewritten", w)):
            row[which] = {"median_ms": ms, "min_ms": ms * 0.9, "max_ms": ms * 1.1}
        rows.append(row)
    report = BenchReport("m.onnx", "segmented", {"segment_size": 256}, "onnxruntime", "cpu", 1, 3, 1, None, rows)
    out = tmp_path / "b.png"
    plot(report, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(AttnoptError, match=r"pip install attnopt\[plot\]"):
        plot(report, tmp_path / "c.png")


def test_cuda_runs_or_fails_with_a_clear_message(bert):
    try:
        report = bench(bert, "segmented", {"segment_size": 8}, [16], provider="cuda", repeats=1, warmup=0,
                       progress=False)
    except AttnoptError as e:  # no GPU, or no CUDA libraries: say so, never fall back to the CPU silently
        assert "CUDAExecutionProvider" in str(e) or "cuda" in str(e)
    else:
        assert report.provider == "cuda" and report.rows


def test_attnopt_bench_stays_callable_after_the_module_is_imported():
    assert callable(bench_module) and attnopt.bench is not None and callable(attnopt.bench)


def test_a_graph_module_is_not_modified_by_bench():
    gm = torch.fx.symbolic_trace(TinyTorchAttention())
    before = copy.deepcopy(gm).code
    bench(gm, "segmented", {"segment_size": 4}, [10], repeats=1, warmup=0, progress=False,
          example_inputs=torch_example())
    assert gm.code == before
