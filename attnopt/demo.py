"""`attnopt demo`: the whole flow on a small BERT-style encoder, in a couple of minutes on CPU.

build → export (ONNX, dynamic N) → detect → for every registered pass:
rewrite → validate against the original → bench on CPU → one summary table.

A pass that fails does not stop the demo: its row says what went wrong, so the
demo doubles as a smoke test of every variant.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Callable

from .errors import AttnoptError

EXAMPLE = "bert"
VALIDATE_SEQ_LEN = 128
BENCH_SEQ_LENS = (512, 1024, 2048)
QUICK_BENCH_SEQ_LENS = (256, 1024)
REPEATS, QUICK_REPEATS = 3, 2

Progress = Callable[..., None]


def demo_params(pass_name: str) -> dict:
    """The variant's own demo setting (its spec's ``demo_params``): real work at N = 128, still paying off later."""
    from .passes import pass_class
    spec = pass_class(pass_name).spec()
    # Only what differs from the defaults: the summary table stays readable for wide specs.
    return {k: v for k, v in spec.demo_params.items() if spec.defaults.get(k) != v}


def run_demo(quick: bool = False, progress: Progress | None = None, workdir=None) -> dict:
    """Run the demo and return a JSON-able summary (see ``print_summary``)."""
    import attnopt
    from .examples import PRESETS, export_example
    from .passes import pass_names

    say = progress or (lambda *a, **k: None)
    seq_lens = QUICK_BENCH_SEQ_LENS if quick else BENCH_SEQ_LENS
    repeats = QUICK_REPEATS if quick else REPEATS
    names = pass_names()
    total, step = 2 + 3 * len(names), 0
    t0 = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="attnopt-demo-", dir=workdir) as tmp:
        model = Path(tmp) / f"{EXAMPLE}.onnx"
        say(f"exporting the {EXAMPLE} example to ONNX", step, total)
        export_example(EXAMPLE, model, seq_len=VALIDATE_SEQ_LEN)
        step += 1
        say("detecting attention", step, total)
        sites = attnopt.detect(str(model))
        step += 1
        if not sites:
            raise AttnoptError("demo: the example model shows no attention sites; the matcher is broken")

        rows = []
        for name in names:
            params = demo_params(name)
            row = {"pass": name, "params": params, "sites": len(sites), "sites_rewritten": 0,
                   "refused": [], "max_abs": None, "rel_l2": None, "cosine": None,
                   "seq_len": None, "original_ms": None, "rewritten_ms": None, "speedup": None, "error": None}
            rows.append(row)
            out = Path(tmp) / f"{EXAMPLE}.{name}.onnx"
            try:
                say(f"{name}: rewriting {len(sites)} sites", step, total)
                result = attnopt.rewrite(str(model), name, **params)
                result.save(out)
                row["sites_rewritten"] = len(result.rewritten)
                row["refused"] = sorted({o.reason for o in result.report if o.status != "rewritten"})
                step += 1
                say(f"{name}: validating at N={VALIDATE_SEQ_LEN}", step, total)
                row.update(_worst(attnopt.validate(str(model), str(out), seq_len=VALIDATE_SEQ_LEN).to_dict()))
                step += 1
                say(f"{name}: benchmarking at N={','.join(map(str, seq_lens))}", step, total)
                at = step

                def bench_progress(done, of, desc, name=name, at=at):
                    say(f"{name}: benchmarking, {desc} ({done}/{of})", at, total)

                report = attnopt.bench(str(model), name, params, list(seq_lens), provider="cpu", repeats=repeats,
                                       progress=bench_progress)
                row.update(_largest(report.to_dict()))
                step += 1
            except Exception as e:  # noqa: BLE001 - one broken variant must not hide the others
                row["error"] = f"{type(e).__name__}: {' '.join(str(e).split())}" if not isinstance(e, AttnoptError) \
                    else " ".join(str(e).split())
                step = 2 + 3 * (names.index(name) + 1)
        say("done", total, total)

    cfg = PRESETS[EXAMPLE]
    return {
        "model": {"example": EXAMPLE, "layers": cfg.layers, "hidden": cfg.hidden, "heads": cfg.heads,
                  "head_dim": cfg.head_dim, "sites": len(sites)},
        "validate_seq_len": VALIDATE_SEQ_LEN,
        "bench_seq_lens": list(seq_lens),
        "repeats": repeats,
        "passes": rows,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def _worst(validation: dict) -> dict:
    """Worst error over the graph outputs."""
    outs = validation.get("outputs") or []
    if not outs:
        return {}
    return {"max_abs": max(o["max_abs"] for o in outs), "rel_l2": max(o["rel_l2"] for o in outs),
            "cosine": min(o["cosine"] for o in outs)}


def _largest(bench: dict) -> dict:
    """Latency and speedup at the largest sequence length the benchmark ran."""
    rows = [r for r in bench.get("rows", []) if r.get("seq_len") is not None]
    if not rows:
        return {}
    r = max(rows, key=lambda r: r["seq_len"])
    orig, new = _ms(r, "original"), _ms(r, "rewritten")
    speedup = r.get("speedup")
    if speedup is None and orig and new:
        speedup = orig / new
    return {"seq_len": r["seq_len"], "original_ms": orig, "rewritten_ms": new, "speedup": speedup}


def _ms(row: dict, which: str):
    for key in (f"{which}_ms", f"{which}_median_ms", f"{which}_latency_ms"):
        if row.get(key) is not None:
            return row[key]
    inner = row.get(which)
    if isinstance(inner, dict):
        for key in ("median_ms", "ms", "latency_ms"):
            if inner.get(key) is not None:
                return inner[key]
    return None


def print_summary(summary: dict, console) -> None:
    from rich.table import Table
    m = summary["model"]
    n = max(summary["bench_seq_lens"])
    t = Table(title=f"attnopt demo: {m['example']} ({m['layers']} layers, hidden {m['hidden']}, "
                    f"{m['heads']} heads), {m['sites']} attention sites",
              caption=f"error vs the original at N={summary['validate_seq_len']} (worst output); "
                      f"latency on onnxruntime CPU, median of {summary['repeats']}. "
                      f"{summary['seconds']} s in all.",
              title_justify="left", caption_justify="left")
    for col in ("pass", "params", "sites rewritten", "max abs err", "rel L2", "cosine",
                f"orig ms @{n}", f"new ms @{n}", f"speedup @{n}", "note"):
        t.add_column(col, overflow="fold", no_wrap=col in ("pass", "params"))
    for r in summary["passes"]:
        note = r["error"] or "; ".join(r["refused"])
        t.add_row(r["pass"], " ".join(f"{k}={v}" for k, v in r["params"].items()) or "defaults",
                  f"{r['sites_rewritten']}/{r['sites']}", _g(r["max_abs"]), _g(r["rel_l2"]), _g(r["cosine"], 5),
                  _g(r["original_ms"], 4), _g(r["rewritten_ms"], 4),
                  f"{r['speedup']:.2f}×" if r["speedup"] else "-", _esc(note))
    console.print(t)


def _g(x, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}g}"


def _esc(s: str):
    from rich.text import Text
    return Text(s or "")  # plain text: reasons may hold '[' that rich would read as markup
