"""bench: time the original and the rewritten model across sequence lengths.

Every (model, N) measurement runs in a fresh spawned process, so its peak
resident memory (``VmHWM``) belongs to that run alone and not to the parent or
to an earlier, larger run. ONNX models run in onnxruntime; torch models
(GraphModule, ExportedProgram, nn.Module with example inputs) run in torch on
the CPU.

    >>> report = bench("bert.onnx", "segmented", {"segment_size": 256}, [1024, 4096])
    >>> plot(report, "bench.png")
"""

from __future__ import annotations

import copy
import datetime as _dt
import os
import platform
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import AttnoptError

ORIGINAL, REWRITTEN = "original", "rewritten"


@dataclass
class BenchReport:
    model: str
    pass_name: str
    params: dict
    runtime: str  # "onnxruntime" | "torch"
    provider: str
    batch: int
    repeats: int
    warmup: int
    threads: int | None
    rows: list[dict] = field(default_factory=list)
    rewrite: list[dict] = field(default_factory=list)  # what happened to each site
    machine: dict = field(default_factory=dict)
    date: str = ""

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("model", "pass_name", "params", "runtime", "provider", "batch",
                                              "repeats", "warmup", "threads", "date", "machine", "rewrite",
                                              "rows")}

    def table(self):
        """A rich Table, one row per sequence length."""
        from rich.table import Table

        t = Table(title=f"{self.pass_name} {_params_text(self.params)} on {self.runtime} ({self.provider}): "
                        f"{self.model}")
        notes = any(r.get("note") for r in self.rows)
        for col in ("N", "original ms", "rewritten ms", "speedup", "orig peak MB", "new peak MB", "memory ×",
                    "max abs err") + (("note",) if notes else ()):
            t.add_column(col, justify="right" if col != "note" else "left")
        for r in self.rows:
            cells = [str(r["seq_len"]), _fmt_time(r, ORIGINAL), _fmt_time(r, REWRITTEN),
                     _fmt(r.get("speedup"), "{:.2f}x"), _fmt(r.get("original_peak_mb"), "{:.0f}"),
                     _fmt(r.get("rewritten_peak_mb"), "{:.0f}"), _fmt(r.get("memory_ratio"), "{:.2f}x"),
                     _fmt(r.get("max_abs"), "{:.2e}")]
            t.add_row(*cells, *((r.get("note", ""),) if notes else ()))
        return t


def _fmt(v, spec: str) -> str:
    return "-" if v is None else spec.format(v)


def _fmt_time(row: dict, which: str) -> str:
    if row.get(f"{which}_ms") is None:
        return "failed"
    return f"{row[f'{which}_ms']:.4g} ± {row[f'{which}_spread_ms']:.2g}"


# ----------------------------------------------------------------------------- entry point

def bench(model, pass_name: str, params: dict | None, seq_lens: Sequence[int], *, provider: str = "cpu",
          repeats: int = 5, warmup: int = 2, batch: int = 1, threads: int | None = None, progress=True,
          example_inputs=None, seed: int = 0) -> BenchReport:
    """Rewrite ``model`` once with ``pass_name`` and time original vs rewritten at every N in ``seq_lens``.

    Per N: median and spread (min/max, quartiles) of ``repeats`` timed runs after ``warmup``
    runs, the speedup, each model's peak RSS (a fresh process per model and N) and the
    largest error between the two models' outputs. Sequence lengths a static-shape model
    cannot take are refused before any work is done.

    Each row holds the summary (``original_ms``/``rewritten_ms`` medians, ``*_spread_ms``
    half the min-max range, ``speedup``, ``*_peak_mb``, ``memory_ratio``, ``max_abs``,
    ``rel_l2``, ``note`` when something failed) and the full stats per model under
    ``original``/``rewritten`` (min, max, quartiles, every time, baseline RSS).
    ``progress``: True draws a rich bar on stderr, a callable gets ``(done, total,
    description)``, False is silent.
    """
    from .passes import pass_class

    given = dict(params or {})
    typed = pass_class(pass_name).parse_params(given)  # bad params fail here, before any work
    params = {k: getattr(typed, k) for k in given}
    seq_lens = _check_args(seq_lens, repeats, warmup, batch, threads)
    from .loaded import is_onnx_handle

    if is_onnx_handle(model):
        return _bench_onnx(model, pass_name, params, seq_lens, provider, repeats, warmup, batch, threads,
                           progress, seed)
    if (provider or "cpu").lower() != "cpu":
        raise AttnoptError(f"--provider {provider}: torch models are benchmarked on the CPU only")
    return _bench_torch(model, pass_name, params, seq_lens, repeats, warmup, threads, progress,
                        example_inputs, seed)


def _check_args(seq_lens, repeats, warmup, batch, threads) -> list[int]:
    if isinstance(seq_lens, (int, np.integer)):
        seq_lens = [seq_lens]
    out = []
    for n in seq_lens:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise AttnoptError(f"--seq-len: {n!r} is not a positive integer")
        out.append(int(n))
    if not out:
        raise AttnoptError("--seq-len: give at least one sequence length")
    if repeats < 1:
        raise AttnoptError(f"--repeats must be >= 1, got {repeats}")
    if warmup < 0:
        raise AttnoptError(f"--warmup must be >= 0, got {warmup}")
    if batch < 1:
        raise AttnoptError(f"--batch must be >= 1, got {batch}")
    if threads is not None and threads < 1:
        raise AttnoptError(f"--threads must be >= 1, got {threads}")
    return out


def machine_info() -> dict:
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "python": platform.python_version()}
    try:
        info["cpus_usable"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    try:
        with open("/proc/meminfo") as f:
            total = next(line for line in f if line.startswith("MemTotal"))
        info["memory_gib"] = round(int(total.split()[1]) / 2**20, 1)
    except (OSError, StopIteration):
        pass
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
        if name:
            info["cpu_model"] = name
    except OSError:
        pass
    return info


# ----------------------------------------------------------------------------- ONNX

def _bench_onnx(model, pass_name, params, seq_lens, provider, repeats, warmup, batch, threads, progress,
                seed) -> BenchReport:
    import onnx_ir as ir
    import onnxruntime as ort

    from .inputs import make_onnx_inputs, onnx_input_specs, resolve_shapes
    from .loaded import open_model
    from .validate import probe_provider, seq_hint

    probe_provider(provider)  # fails now, not after the rewrite, when the provider cannot run
    loaded = open_model(model)
    specs = onnx_input_specs(loaded.model)
    hint = seq_hint(loaded)
    for n in seq_lens:
        resolve_shapes(specs, n, batch, hint)

    import attnopt

    with tempfile.TemporaryDirectory(prefix="attnopt-bench-") as tmp:
        tmp = Path(tmp)
        if isinstance(model, (str, os.PathLike)):
            original_path = Path(model)
        else:  # save first: the rewrite may work on the very object we were given
            original_path = tmp / "original.onnx"
            ir.save(loaded.model, original_path, external_data="original.onnx.data")
        result = attnopt.rewrite(original_path, pass_name, **params)
        rewritten_path = tmp / "rewritten.onnx"
        result.save(rewritten_path)
        outcomes = [o.to_dict() for o in result.report]
        del result

        report = BenchReport(loaded.source, pass_name, params, "onnxruntime", provider, batch, repeats, warmup,
                             threads, rewrite=outcomes, machine={**machine_info(), "onnxruntime": ort.__version__},
                             date=_dt.datetime.now().isoformat(timespec="seconds"))
        paths = {ORIGINAL: str(original_path), REWRITTEN: str(rewritten_path)}
        output_names = [v.name for v in loaded.model.graph.outputs]
        del loaded

        def measure(n, which, inputs_path, outputs_path):
            return _in_subprocess(_ort_worker, paths[which], str(inputs_path), str(outputs_path), provider,
                                  threads, warmup, repeats)

        def make_inputs(n, inputs_path):
            from .frontends import onnx as onnx_frontend

            feeds = make_onnx_inputs(onnx_frontend.load(paths[ORIGINAL]), n, batch=batch, seed=seed,
                                     seq_hint=hint)
            np.savez(inputs_path, **feeds)

        _run_grid(report, seq_lens, tmp, make_inputs, measure, progress, output_names)
    return report


def _run_grid(report: BenchReport, seq_lens, tmp: Path, make_inputs, measure, progress,
              output_names=None) -> None:
    """Per N: inputs, then each model in its own process; errors and speedups into report.rows."""
    report.machine["load_avg_start"] = _load_avg()  # other work on the machine skews the timings
    try:
        _run_rows(report, seq_lens, tmp, make_inputs, measure, progress, output_names)
    finally:
        report.machine["load_avg_end"] = _load_avg()


def _load_avg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _run_rows(report: BenchReport, seq_lens, tmp: Path, make_inputs, measure, progress, output_names) -> None:
    total = 2 * len(seq_lens)
    with _Progress(progress, total) as tick:
        done = 0
        for n in seq_lens:
            inputs_path = tmp / f"inputs_{n}.npz"
            make_inputs(n, inputs_path)
            row: dict[str, Any] = {"seq_len": n}
            outputs = {}
            for which in (ORIGINAL, REWRITTEN):
                tick(done, f"N={n} {which}")
                out_path = tmp / f"outputs_{n}_{which}.npz"
                try:
                    row[which] = measure(n, which, inputs_path, out_path)
                    outputs[which] = out_path
                except _WorkerDied as e:
                    row[which] = {"error": str(e)}
                done += 1
                tick(done, f"N={n} {which}")
            _summarise(row, outputs, output_names)
            for p in list(outputs.values()) + [inputs_path]:
                Path(p).unlink(missing_ok=True)
            report.rows.append(row)


def _summarise(row: dict, outputs: dict, output_names) -> None:
    """The flat per-N summary (what tables show) next to the full per-model stats."""
    from .validate import compare

    o, w = row.pop(ORIGINAL), row.pop(REWRITTEN)
    notes = []
    for which, stats in ((ORIGINAL, o), (REWRITTEN, w)):
        if "median_ms" in stats:
            row[f"{which}_ms"] = stats["median_ms"]
            row[f"{which}_spread_ms"] = (stats["max_ms"] - stats["min_ms"]) / 2
        else:
            row[f"{which}_ms"] = row[f"{which}_spread_ms"] = None
            notes.append(f"{which} failed: {stats.get('error')}")
    row["speedup"] = o["median_ms"] / w["median_ms"] if "median_ms" in o and "median_ms" in w else None
    row["original_peak_mb"], row["rewritten_peak_mb"] = o.get("peak_rss_mb"), w.get("peak_rss_mb")
    po, pw = row["original_peak_mb"], row["rewritten_peak_mb"]
    row["memory_ratio"] = po / pw if po and pw else None
    row["max_abs"] = row["rel_l2"] = None
    if ORIGINAL in outputs and REWRITTEN in outputs:
        with np.load(outputs[ORIGINAL]) as a, np.load(outputs[REWRITTEN]) as b:
            keys = sorted(a.files, key=lambda k: int(k.split("_")[1]))
            names = list(output_names or []) + keys[len(output_names or []):]
            metrics = [compare(names[i], a[k], b[k]) for i, k in enumerate(keys) if k in b.files]
        comparable = [m for m in metrics if m.comparable]
        if comparable:
            row["max_abs"] = max(m.max_abs for m in comparable)
            row["rel_l2"] = max(m.rel_l2 for m in comparable)
        if len(comparable) < len(metrics) or len(a.files) != len(b.files):
            notes.append("outputs differ in number or shape")
    if notes:
        row["note"] = "; ".join(notes)
    row[ORIGINAL], row[REWRITTEN] = o, w


class _Progress:
    """``progress``: True for a rich bar on stderr, a callable ``(done, total, description)``, or off."""

    def __init__(self, progress, total: int):
        self.progress, self.total = progress, total
        self.bar = self.task = None

    def __enter__(self):
        if callable(self.progress):
            return lambda done, desc: self.progress(done, self.total, desc)
        if not self.progress:
            return lambda done, desc: None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), console=Console(stderr=True), transient=True)
        self.bar.__enter__()
        self.task = self.bar.add_task("bench", total=self.total)
        return lambda done, desc: self.bar.update(self.task, completed=done, description=desc)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)
        return False


# ----------------------------------------------------------------------------- workers

class _WorkerDied(Exception):
    pass


def _in_subprocess(fn, *args):
    """Run ``fn(*args)`` in a fresh spawned process (its own peak RSS); AttnoptError passes through."""
    import multiprocessing as mp

    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        try:
            return pool.submit(fn, *args).result()
        except BrokenProcessPool:
            raise _WorkerDied("the worker process died (killed for memory?)") from None
        except AttnoptError:
            raise
        except Exception as e:
            raise _WorkerDied(f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}") \
                from None


def _status_kb(field_name: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _peak_rss_mb() -> float:
    kb = _status_kb("VmHWM")
    if kb is None:
        import resource

        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024


def _timings(times_s: list[float]) -> dict:
    ms = [t * 1e3 for t in times_s]
    q = np.percentile(ms, [25, 75]) if len(ms) > 1 else (ms[0], ms[0])
    return {"median_ms": statistics.median(ms), "min_ms": min(ms), "max_ms": max(ms), "p25_ms": float(q[0]),
            "p75_ms": float(q[1]), "times_ms": ms}


def _ort_worker(model_path, inputs_path, outputs_path, provider, threads, warmup, repeats) -> dict:
    import onnxruntime  # noqa: F401  (imported before the baseline so it is not counted as the model's)

    from .validate import ort_session

    baseline = _status_kb("VmRSS")
    with np.load(inputs_path) as data:
        feeds = {k: data[k] for k in data.files}
    sess = ort_session(model_path, provider, threads)
    load_rss = _status_kb("VmRSS")
    times = []
    for i in range(max(warmup, 0) + repeats):
        t0 = time.perf_counter()
        outs = sess.run(None, feeds)
        dt = time.perf_counter() - t0
        if i == 0:
            np.savez(outputs_path, *outs)
        del outs
        if i >= warmup:
            times.append(dt)
    stats = _timings(times)
    stats["peak_rss_mb"] = _peak_rss_mb()
    stats["baseline_rss_mb"] = baseline / 1024 if baseline else None
    stats["loaded_rss_mb"] = load_rss / 1024 if load_rss else None
    return stats


def _torch_worker(module_path, inputs_path, outputs_path, threads, warmup, repeats) -> dict:
    import torch

    _register_torch_ops()
    if threads:
        torch.set_num_threads(int(threads))
    baseline = _status_kb("VmRSS")
    module = torch.load(module_path, weights_only=False)
    inputs = torch.load(inputs_path, weights_only=False)
    stats = _time_torch(module, inputs, outputs_path, warmup, repeats)
    stats["peak_rss_mb"] = _peak_rss_mb()
    stats["baseline_rss_mb"] = baseline / 1024 if baseline else None
    return stats


def _register_torch_ops() -> None:
    """Import every kernel module so torch.ops.attnopt.* exist in a fresh process."""
    import importlib

    from .kernels.registry import KERNELS

    for spec in KERNELS.values():
        importlib.import_module(f"attnopt.kernels.{spec.module}")


def _time_torch(module, inputs, outputs_path, warmup, repeats) -> dict:
    import torch
    from torch.utils._pytree import tree_leaves

    times = []
    with torch.inference_mode():
        for i in range(max(warmup, 0) + repeats):
            t0 = time.perf_counter()
            out = module(*inputs)
            dt = time.perf_counter() - t0
            if i == 0:
                leaves = [x.detach().float().numpy() for x in tree_leaves(out) if isinstance(x, torch.Tensor)]
                np.savez(outputs_path, *leaves)
            del out
            if i >= warmup:
                times.append(dt)
    return _timings(times)


# ----------------------------------------------------------------------------- torch

def _bench_torch(model, pass_name, params, seq_lens, repeats, warmup, threads, progress, example_inputs,
                 seed) -> BenchReport:
    import pickle

    import torch

    import attnopt

    from .loaded import open_model
    from .validate import TorchRunner, example_inputs_of, fx_inputs

    loaded = open_model(model, example_inputs)
    runner = TorchRunner(loaded.model)
    examples = example_inputs_of(loaded, example_inputs)
    per_n = {n: fx_inputs(loaded, runner, None, n, examples, seed) for n in seq_lens}  # refuses before work

    to_rewrite = copy.deepcopy(model) if isinstance(model, (torch.fx.GraphModule, torch.export.ExportedProgram)) \
        else model
    result = attnopt.rewrite(to_rewrite, pass_name, example_inputs=examples, **params)
    modules = {ORIGINAL: _callable(model), REWRITTEN: _callable(result.model)}
    first = examples[0] if examples else None
    batch = int(first.shape[0]) if isinstance(first, torch.Tensor) and first.dim() else 1
    report = BenchReport(loaded.source, pass_name, params, "torch", "cpu", batch,
                         repeats, warmup, threads, rewrite=[o.to_dict() for o in result.report],
                         machine={**machine_info(), "torch": torch.__version__},
                         date=_dt.datetime.now().isoformat(timespec="seconds"))

    with tempfile.TemporaryDirectory(prefix="attnopt-bench-") as tmp:
        tmp = Path(tmp)
        in_process = False
        module_paths = {}
        for which, mod in modules.items():
            try:  # a GraphModule pickles its generated code; round-trip it here so a child never chokes
                module_paths[which] = tmp / f"{which}.pt"
                torch.save(mod, module_paths[which], pickle_protocol=pickle.HIGHEST_PROTOCOL)
                torch.load(module_paths[which], weights_only=False)
            except Exception:  # not picklable: time in this process, without a clean peak RSS
                in_process = True
        if in_process:
            report.machine["note"] = "the torch modules do not survive pickling: timed in this process, " \
                                     "peak memory not measured"

        def make_inputs(n, inputs_path):
            torch.save(per_n[n], inputs_path)

        def measure(n, which, inputs_path, outputs_path):
            if in_process:
                if threads:
                    torch.set_num_threads(int(threads))
                try:
                    return _time_torch(modules[which], per_n[n], outputs_path, warmup, repeats)
                except Exception as e:
                    raise _WorkerDied(f"{type(e).__name__}: {str(e).strip()[:200]}") from None
            return _in_subprocess(_torch_worker, str(module_paths[which]), str(inputs_path), str(outputs_path),
                                  threads, warmup, repeats)

        _run_grid(report, seq_lens, tmp, make_inputs, measure, progress)
    return report


def _callable(model):
    import torch

    if isinstance(model, torch.export.ExportedProgram):
        return model.module()
    return model


# ----------------------------------------------------------------------------- plot

def plot(report: BenchReport, path) -> None:
    """Latency vs N (log-log, min-max bars) for original and rewritten, and the speedup; written atomically."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise AttnoptError("plotting needs matplotlib: pip install attnopt[plot]") from None
    path = Path(path)
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    lat, spd = fig.subplots(1, 2)
    for which, marker in ((ORIGINAL, "o"), (REWRITTEN, "s")):
        rows = [r for r in report.rows if "median_ms" in r[which]]
        if not rows:
            continue
        n = [r["seq_len"] for r in rows]
        med = np.array([r[which]["median_ms"] for r in rows])
        lo = med - np.array([r[which]["min_ms"] for r in rows])
        hi = np.array([r[which]["max_ms"] for r in rows]) - med
        lat.errorbar(n, med, yerr=[lo, hi], marker=marker, capsize=3, label=which)
    ticks = sorted({r["seq_len"] for r in report.rows})
    lat.set_xscale("log", base=2)
    lat.set_yscale("log")
    lat.set_xticks(ticks, [str(t) for t in ticks])
    lat.set_xlabel("sequence length N")
    lat.set_ylabel("latency (ms, median; bars min-max)")
    lat.set_title(f"{Path(str(report.model)).name}: {report.pass_name} {_params_text(report.params)}")
    lat.grid(True, which="both", alpha=0.3)
    lat.legend()
    rows = [r for r in report.rows if r.get("speedup")]
    spd.plot([r["seq_len"] for r in rows], [r["speedup"] for r in rows], marker="o", color="C2")
    spd.axhline(1.0, color="grey", lw=0.8, ls="--")
    spd.set_xscale("log", base=2)
    spd.set_xticks(ticks, [str(t) for t in ticks])
    spd.set_xlabel("sequence length N")
    spd.set_ylabel("speedup (original / rewritten)")
    spd.set_title(f"{report.runtime} ({report.provider})")
    spd.grid(True, which="both", alpha=0.3)
    fmt = path.suffix.lstrip(".").lower() or "png"
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fig.savefig(tmp, format=fmt)
        os.replace(tmp, path)
    except ValueError as e:
        raise AttnoptError(f"{path}: cannot write a plot in format '{fmt}': {e}") from None
    finally:
        if tmp.exists():
            tmp.unlink()


def _params_text(params: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in params.items())
