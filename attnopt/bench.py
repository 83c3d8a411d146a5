"""bench: time the original and the rewritten model across sequence lengths.

Every (model, N) measurement runs in a fresh spawned process, so its peak
resident memory (``VmHWM``) belongs to that run alone and not to the parent or
to an earlier, larger run. Each model runs through its frontend's runner:
onnxruntime for ONNX, torch on the CPU for torch models (GraphModule,
ExportedProgram, nn.Module with example inputs).

    >>> report = bench("bert.onnx", "segmented", {"segment_size": 256}, [1024, 4096])
    >>> plot(report, "bench.png")
"""

from __future__ import annotations

import datetime as _dt
import os
import pickle
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

from .errors import AttnoptError, one_line
from .metrics import as_numpy, compare

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
        placed = any(r.get("original_cpu_nodes") is not None or r.get("rewritten_cpu_nodes") is not None
                     for r in self.rows)
        for col in ("N", "original ms", "rewritten ms", "speedup", "orig peak MB", "new peak MB", "memory ×",
                    "max abs err") + (("CPU nodes orig / new",) if placed else ()) + (("note",) if notes else ()):
            t.add_column(col, justify="right" if col != "note" else "left")
        for r in self.rows:
            cells = [str(r["seq_len"]), _fmt_time(r, ORIGINAL), _fmt_time(r, REWRITTEN),
                     _fmt(r.get("speedup"), "{:.2f}x"), _fmt(r.get("original_peak_mb"), "{:.0f}"),
                     _fmt(r.get("rewritten_peak_mb"), "{:.0f}"), _fmt(r.get("memory_ratio"), "{:.2f}x"),
                     _fmt(r.get("max_abs"), "{:.2e}")]
            if placed:
                cells.append(f"{_placed_text(r, ORIGINAL)} / {_placed_text(r, REWRITTEN)}")
            t.add_row(*cells, *((r.get("note", ""),) if notes else ()))
        return t


def _placed_text(row: dict, which: str) -> str:
    """'12 (1.3 ms: Shape 8, Gather 4)': the nodes onnxruntime ran on the CPU, their time, the commonest ops."""
    count = row.get(f"{which}_cpu_nodes")
    if count is None:
        return "-"
    p = row[which]["placement"]
    ops = ", ".join(f"{op} {n}" for op, n in list(p["cpu_ops"].items())[:3])
    return f"{count} ({p['cpu_ms']:.2f} ms{': ' + ops if ops else ''})"


def _fmt(v, spec: str) -> str:
    return "-" if v is None else spec.format(v)


def _fmt_time(row: dict, which: str) -> str:
    if row.get(f"{which}_ms") is None:
        return "failed"
    return f"{row[f'{which}_ms']:.4g} ± {row[f'{which}_spread_ms']:.2g}"


# ----------------------------------------------------------------------------- entry point

def bench(model, pass_name: str, params: dict | None, seq_lens: Sequence[int], *, provider: str = "cpu",
          repeats: int = 5, warmup: int = 2, batch: int = 1, threads: int | None = None, progress=True,
          example_inputs=None, seed: int = 0, target: str = "portable") -> BenchReport:
    """Rewrite ``model`` once with ``pass_name`` and time original vs rewritten at every N in ``seq_lens``.

    Per N: median and spread (min/max, quartiles) of ``repeats`` timed runs after ``warmup``
    runs, the speedup, each model's peak RSS (a fresh process per model and N) and the
    largest error between the two models' outputs. Sequence lengths a static-shape model
    cannot take are refused before any work is done. ``batch`` applies to generated ONNX
    inputs; torch models keep their example inputs' batch.

    Each row holds the summary (``original_ms``/``rewritten_ms`` medians, ``*_spread_ms``
    half the min-max range, ``speedup``, ``*_peak_mb``, ``memory_ratio``, ``max_abs``,
    ``rel_l2``, ``note`` when something failed) and the full stats per model under
    ``original``/``rewritten`` (min, max, quartiles, every time, baseline RSS).
    ``progress``: True draws a rich bar on stderr, a callable gets ``(done, total,
    description)``, False is silent. ``target`` is the rewrite's (portable or ort-cuda).

    On ``provider="cuda"`` inputs and outputs are bound on the GPU (IO binding), so
    host-device copies are not timed, and each model's row says which of its nodes
    onnxruntime ran on the CPU (``*_cpu_nodes``; details under ``placement``).
    """
    import attnopt

    from .frontends import frontend_for
    from .passes import pass_class

    given = dict(params or {})
    typed = pass_class(pass_name).parse_params(given)  # bad params fail here, before any work
    params = {k: getattr(typed, k) for k in given}
    seq_lens = _check_args(seq_lens, repeats, warmup, batch, threads)
    frontend = frontend_for(model)
    frontend.check_provider(provider)  # fails now, not after the rewrite, when the provider cannot run
    loaded = frontend.load(model, example_inputs)
    feeds = {n: frontend.inputs(loaded, seq_len=n, batch=batch, seed=seed, example_inputs=example_inputs)
             for n in seq_lens}  # a length the model cannot take is refused here
    with tempfile.TemporaryDirectory(prefix="attnopt-bench-") as tmp:
        tmp = Path(tmp)
        files = {ORIGINAL: frontend.worker_file(model, tmp / ORIGINAL)}
        result = attnopt.rewrite(model, pass_name, example_inputs=example_inputs, target=target, **params)
        files[REWRITTEN] = frontend.worker_file(result.loaded, tmp / REWRITTEN)
        report = BenchReport(loaded.source, pass_name, params, frontend.runtime, provider,
                             _batch_of(feeds[seq_lens[0]], batch), repeats, warmup, threads,
                             rewrite=[o.to_dict() for o in result.report],
                             machine={**machine_info(), **frontend.runtime_versions()},
                             date=_dt.datetime.now().isoformat(timespec="seconds"))
        in_process = None in files.values()  # e.g. a torch module that does not survive pickling
        if in_process:
            report.machine["note"] = "the models cannot be handed to a worker process: timed in this process, " \
                                     "peak memory not measured"
        models = {ORIGINAL: loaded.model, REWRITTEN: result.model} if in_process else {}
        del result

        def measure(n, which, inputs_path, outputs_path):
            if not in_process:
                return _in_subprocess(_worker, frontend, str(files[which]), str(inputs_path), str(outputs_path),
                                      provider, threads, warmup, repeats)
            try:
                with frontend.runner(models[which], provider=provider, threads=threads) as runner:
                    return _time(runner, feeds[n], outputs_path, warmup, repeats)
            except AttnoptError as e:
                raise _WorkerDied(str(e)) from None

        def make_inputs(n, inputs_path):
            with open(inputs_path, "wb") as f:
                pickle.dump(feeds[n], f, protocol=pickle.HIGHEST_PROTOCOL)

        _run_grid(report, seq_lens, tmp, make_inputs, measure, progress)
    return report


def _batch_of(feeds: dict, default: int) -> int:
    """The batch the inputs have: the leading dim of the first (batch, seq, ...) input."""
    for value in feeds.values():
        shape = getattr(value, "shape", ())
        if len(shape) >= 2:
            return int(shape[0])
    return default


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


def _run_grid(report: BenchReport, seq_lens, tmp: Path, make_inputs, measure, progress) -> None:
    """Per N: inputs, then each model in its own process; errors and speedups into report.rows."""
    report.machine["load_avg_start"] = _load_avg()  # other work on the machine skews the timings
    try:
        _run_rows(report, seq_lens, tmp, make_inputs, measure, progress)
    finally:
        report.machine["load_avg_end"] = _load_avg()


def _load_avg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _run_rows(report: BenchReport, seq_lens, tmp: Path, make_inputs, measure, progress) -> None:
    total = 2 * len(seq_lens)
    with _Progress(progress, total) as tick:
        done = 0
        for n in seq_lens:
            inputs_path = tmp / f"inputs_{n}.pkl"
            make_inputs(n, inputs_path)
            row: dict[str, Any] = {"seq_len": n}
            outputs = {}
            for which in (ORIGINAL, REWRITTEN):
                tick(done, f"N={n} {which}")
                out_path = tmp / f"outputs_{n}_{which}.pkl"
                try:
                    row[which] = measure(n, which, inputs_path, out_path)
                    outputs[which] = out_path
                except _WorkerDied as e:
                    row[which] = {"error": str(e)}
                done += 1
                tick(done, f"N={n} {which}")
            _summarise(row, outputs)
            for p in list(outputs.values()) + [inputs_path]:
                Path(p).unlink(missing_ok=True)
            report.rows.append(row)


def _summarise(row: dict, outputs: dict) -> None:
    """The flat per-N summary (what tables show) next to the full per-model stats."""
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
    for which, stats in ((ORIGINAL, o), (REWRITTEN, w)):
        if "placement" in stats:
            row[f"{which}_cpu_nodes"] = stats["placement"]["cpu_nodes"]
    row["original_peak_mb"], row["rewritten_peak_mb"] = o.get("peak_rss_mb"), w.get("peak_rss_mb")
    po, pw = row["original_peak_mb"], row["rewritten_peak_mb"]
    row["memory_ratio"] = po / pw if po and pw else None
    row["max_abs"] = row["rel_l2"] = None
    if ORIGINAL in outputs and REWRITTEN in outputs:
        a, b = (_read_pickle(outputs[k]) for k in (ORIGINAL, REWRITTEN))
        # Outputs line up by position: a rewrite keeps the graph's outputs in order.
        metrics = [compare(name, x, y) for (name, x), y in zip(a.items(), b.values())]
        comparable = [m for m in metrics if m.comparable]
        if comparable:
            row["max_abs"] = max(m.max_abs for m in comparable)
            row["rel_l2"] = max(m.rel_l2 for m in comparable)
        if len(comparable) < len(metrics) or len(a) != len(b):
            notes.append("outputs differ in number or shape")
    if notes:
        row["note"] = "; ".join(notes)
    row[ORIGINAL], row[REWRITTEN] = o, w


def _read_pickle(path):
    with open(path, "rb") as f:
        return pickle.load(f)


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
            raise _WorkerDied(f"{type(e).__name__}: {one_line(e, 200)}") from None


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



def _worker(frontend, model_file, inputs_path, outputs_path, provider, threads, warmup, repeats) -> dict:
    """In a fresh process: build the model's runner, time it, report the process's memory."""
    frontend.prepare_process()  # the runtime's own memory is part of the baseline, not of the model
    baseline = _status_kb("VmRSS")
    feeds = _read_pickle(inputs_path)
    with frontend.runner(model_file, provider=provider, threads=threads) as runner:
        loaded_rss = _status_kb("VmRSS")
        stats = _time(runner, feeds, outputs_path, warmup, repeats)
    stats["peak_rss_mb"] = _peak_rss_mb()
    if provider != "cpu" and hasattr(frontend, "placement"):  # which nodes left the device, never hidden
        stats["placement"] = frontend.placement(model_file, feeds, provider)
    stats["baseline_rss_mb"] = baseline / 1024 if baseline else None
    stats["loaded_rss_mb"] = loaded_rss / 1024 if loaded_rss else None
    return stats


def _time(runner, feeds: dict, outputs_path, warmup: int, repeats: int) -> dict:
    """``repeats`` timed runs after ``warmup``; the first run's outputs go to ``outputs_path``.

    A runner that can hold its inputs and outputs on the device (onnxruntime IO binding)
    gets them bound once, before any timing, so host-device copies are not timed.
    """
    bound = runner.bound(feeds) if hasattr(runner, "bound") else None
    times = []
    for i in range(max(warmup, 0) + repeats):
        t0 = time.perf_counter()
        result = bound() if bound is not None else runner.run(feeds)
        dt = time.perf_counter() - t0
        if i == 0:
            outputs = bound.outputs() if bound is not None else result.outputs
            with open(outputs_path, "wb") as f:
                pickle.dump({k: as_numpy(v) for k, v in outputs.items()}, f, protocol=pickle.HIGHEST_PROTOCOL)
            del outputs
        del result
        if i >= warmup:
            times.append(dt)
    return _timings(times)


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
