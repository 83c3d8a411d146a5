"""onnxruntime on CUDA: a BERT-base-shaped float16 encoder, original against every rewrite (issue 10).

One run, one process, one GPU, the same inputs for every model:

- ``original``: the exported encoder (12 layers, hidden 768, H=12, D=64, float16),
  attention as MatMul/Softmax/MatMul, as onnxruntime gets it from torch.onnx;
- ``fused``: the original after onnxscript's ``optimize_for_ort``, onnxruntime's best
  fused attention (the script checks that it fused every layer into
  ``com.microsoft.MultiHeadAttention`` and says so);
- every registered variant (its spec's default parameters, segmented S=512),
  rewritten with ``--target portable`` and, where the variant has a lowering,
  ``--target ort-cuda``;
- segmented (ort-cuda) rewritten from the fused model, which keeps
  optimize_for_ort's other fusions (SkipLayerNormalization, BiasGelu, ...);
- the bound: the fused model with every MultiHeadAttention's output replaced
  by its value input, i.e. attention at zero cost and the rest of the model
  kept. No variant can make the model faster than this row.

Each model gets one CUDA session; inputs and outputs are bound on the GPU (IO
binding), so host-device copies are not timed. Per model and N: the median of
``--repeats`` runs after ``--warmup``, the speedup against the original and the
fused original, the error against the original at the first N, and the nodes
onnxruntime ran on the CPU (from a profiled run at the first N). Results are
written after every model, as ``ort_cuda.json`` and ``ort_cuda.md`` under
``--out`` (default ``$OUT``), so a run cut short keeps what it measured.

    python benchmarks/ort_cuda.py --out results/            # on the GPU machine (onnxruntime-gpu)
    python benchmarks/ort_cuda.py --dry-run --out /tmp/x    # CPU EP, a 2-layer model, N=64,128: checks the script
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

FULL = {"example": "bert-base", "layers": 12, "seq_lens": (4096, 16384), "provider": "cuda"}
DRY = {"example": "bert", "layers": 2, "seq_lens": (64, 128), "provider": "cpu"}
SEGMENT = 512  # the segmented setting; every other variant runs its spec's defaults


def _models_dir(out: Path) -> Path:
    d = out / "models"
    d.mkdir(parents=True, exist_ok=True)
    return d


def export(out: Path, cfg: dict) -> Path:
    from attnopt.examples import export_example

    path = _models_dir(out) / "original.onnx"
    if not path.exists():
        export_example(cfg["example"], path, seq_len=128, layers=cfg["layers"], dtype="float16")
    return path


def fuse(original: Path, out: Path) -> tuple[Path, dict]:
    """onnxscript's optimize_for_ort, and what it fused."""
    import onnx_ir as ir
    from onnxscript.rewriter.ort_fusions import optimize_for_ort

    model = ir.load(original)
    model, counts = optimize_for_ort(model)
    ops = {}
    for node in model.graph.all_nodes():
        if node.domain == "com.microsoft":
            ops[node.op_type] = ops.get(node.op_type, 0) + 1
    path = _models_dir(out) / "fused.onnx"
    ir.save(model, path)
    softmaxes = sum(1 for n in model.graph.all_nodes() if n.op_type == "Softmax")
    return path, {"fusions": {k: v for k, v in counts.items() if v}, "contrib_ops": ops,
                  "softmax_left": softmaxes}


def without_attention(fused: Path, out: Path) -> Path:
    """The fused model with attention at zero cost: each MultiHeadAttention's output is its value input."""
    import onnx_ir as ir

    model = ir.load(fused)
    for node in list(model.graph.all_nodes()):
        if node.domain == "com.microsoft" and node.op_type == "MultiHeadAttention":
            ir.convenience.replace_all_uses_with(node.outputs[0], node.inputs[2])
            node.graph.remove(node, safe=True)
    path = _models_dir(out) / "no_attention.onnx"
    ir.save(model, path)
    return path


def _rewrite_one(source: str, pass_name: str, target: str, params: dict, path: str) -> dict:
    import attnopt

    t0 = time.perf_counter()
    result = attnopt.rewrite(source, pass_name, target=target, **params)
    result.save(path, verify=False)  # every model runs below: a broken one shows as an error there
    return {"sites": [o.to_dict() for o in result.report], "rewrite_s": round(time.perf_counter() - t0, 1)}


def variants(only: set[str] | None) -> list[tuple[str, str, dict, str]]:
    from attnopt.kernels.ort_cuda import lowering_module
    from attnopt.passes import pass_names

    out = []
    for name in pass_names():
        if only and name not in only:
            continue
        params = {"segment_size": SEGMENT} if name == "segmented" else {}
        out.append((name, "portable", params, ""))
        if lowering_module(name) is not None:
            out.append((name, "ort-cuda", params, ""))
        if name == "segmented":
            # From the fused model: optimize_for_ort's other fusions stay (the original has none).
            out.append((name, "ort-cuda", params, "fused"))
    # The headline first, so a run cut short still has it.
    return sorted(out, key=lambda v: (v[0] != "segmented", v[1] != "ort-cuda", v[3] != ""))


def rewrite_all(sources: dict, out: Path, todo, workers: int) -> dict:
    """Rewrites each (name, target, params, tag) of ``todo`` from ``sources[tag]`` (default: the original)."""
    import multiprocessing as mp

    jobs = {}
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
        for name, target, params, tag in todo:
            path = _models_dir(out) / f"{name}.{target}{'.' + tag if tag else ''}.onnx"
            source = str(sources.get(tag, sources[""]))
            jobs[(name, target, tag)] = (path, params, pool.submit(_rewrite_one, source, name, target, params,
                                                                    str(path)))
        done = {}
        for key, (path, params, fut) in jobs.items():
            try:
                done[key] = {"path": path, "params": params, **fut.result()}
            except Exception as e:  # a variant that cannot rewrite this model is a result, not a crash
                done[key] = {"path": None, "params": params, "error": f"{type(e).__name__}: {e}"[:300]}
    return done


def feeds_for(original: Path, seq_len: int) -> dict:
    from attnopt.frontends.onnx_frontend import ONNX
    from attnopt.loaded import open_model

    return ONNX.inputs(open_model(str(original)), seq_len=seq_len, batch=1, seed=0)


def time_model(path: Path, feeds_by_n: dict, provider: str, warmup: int, repeats: int) -> dict:
    from attnopt.ort_runtime import BoundRun, placement, session

    sess = session(str(path), provider)
    out = {}
    for n, feeds in feeds_by_n.items():
        try:
            run = BoundRun(sess, feeds, "cuda" if provider == "cuda" else "cpu")
            times = []
            for i in range(warmup + repeats):
                t0 = time.perf_counter()
                run()
                if i >= warmup:
                    times.append((time.perf_counter() - t0) * 1e3)
            out[n] = {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times),
                      "outputs": run.outputs()}
            del run
        except Exception as e:
            out[n] = {"error": f"{type(e).__name__}: {e}"[:300]}
        gc.collect()
    del sess
    gc.collect()
    first = next(iter(feeds_by_n))
    if "median_ms" in out.get(first, {}):
        try:
            out["placement"] = placement(str(path), feeds_by_n[first], provider)
        except Exception as e:
            out["placement"] = {"error": f"{type(e).__name__}: {e}"[:300]}
    return out


def _error(a: np.ndarray, b: np.ndarray) -> dict:
    from attnopt.metrics import compare

    m = compare("output", a, b)
    return {"max_abs": m.max_abs, "rel_l2": m.rel_l2}


def table(results: dict) -> str:
    rows, lens = results["rows"], results["seq_lens"]
    base = {r["label"]: r for r in rows}
    head = ["model", "target"] + [h for n in lens for h in (f"N={n} ms", "vs original", "vs fused")] + \
        [f"rel L2 vs original (N={lens[0]})", f"CPU nodes (N={lens[0]})", "notes"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["model"], r["target"]]
        for n in lens:
            t = r["times"].get(str(n), {})
            ms = t.get("median_ms")
            cells.append(f"{ms:.2f}" if ms is not None else "failed")
            for ref in ("original", "fused"):
                ref_ms = base.get(ref, {}).get("times", {}).get(str(n), {}).get("median_ms")
                cells.append(f"{ref_ms / ms:.2f}×" if ms and ref_ms else "-")
        err = r.get("error_vs_original")
        cells.append(f"{err['rel_l2']:.1e}" if err else "-")
        p = r.get("placement") or {}
        if "cpu_nodes" in p:
            ops = ", ".join(f"{k} {v}" for k, v in list(p["cpu_ops"].items())[:4])
            cells.append(f"{p['cpu_nodes']} of {p['nodes']} ({p['cpu_ms']:.2f} ms{': ' + ops if ops else ''})")
        else:
            cells.append(p.get("error", "-") if p else "-")
        cells.append(r.get("note", ""))
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    # Where the host spent a profiled run: on the GPU a kernel's entry is its launch, so time under
    # MemcpyToHost is the host waiting for the device; and what the host-device copies carry.
    lines += ["", f"| model | target | host ms by op type (profiled run, N={lens[0]}) "
              "| host-device copies: what they carry |", "|---|---|---|---|"]
    for r in rows:
        p = r.get("placement") or {}
        if "host_ms_by_op" not in p:
            continue
        ops = ", ".join(f"{k} {v:.2f}" for k, v in list(p["host_ms_by_op"].items())[:5])
        copies = ", ".join(f"{k} ×{v}" for k, v in list(p.get("memcpy_inputs", {}).items())[:5]) or "none"
        lines.append(f"| {r['model']} | {r['target']} | {ops} | {p.get('memcpy_nodes', 0)}: {copies} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "ort_cuda_results"))
    ap.add_argument("--dry-run", action="store_true", help="CPU EP, 2-layer model, N=64,128 (checks the script)")
    ap.add_argument("--seq-len", help="comma-separated N (default 4096,16384)")
    ap.add_argument("--layers", type=int)
    ap.add_argument("--only", help="comma-separated variants (default: every pass)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    args = ap.parse_args(argv)
    cfg = dict(DRY if args.dry_run else FULL)
    if args.seq_len:
        cfg["seq_lens"] = tuple(int(x) for x in args.seq_len.split(","))
    if args.layers:
        cfg["layers"] = args.layers
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    clock = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - clock:6.1f}s] {msg}", flush=True)

    import onnxruntime

    from attnopt.bench import machine_info

    original = export(out, cfg)
    log(f"exported {original}")
    fused, fusion = fuse(original, out)
    layers = cfg["layers"]
    fused_all = fusion["contrib_ops"].get("MultiHeadAttention", 0) + fusion["contrib_ops"].get("Attention", 0)
    fusion["fused_every_layer"] = fused_all == layers and fusion["softmax_left"] == 0
    log(f"optimize_for_ort: {fusion}")
    todo = variants(set(args.only.split(",")) if args.only else None)
    rewrites = rewrite_all({"": original, "fused": fused}, out, todo, args.workers)
    log(f"rewrote {len(rewrites)} models")
    feeds = {n: feeds_for(original, n) for n in cfg["seq_lens"]}
    results = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
               "command": "python benchmarks/ort_cuda.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               "model": f"{cfg['example']} example, {layers} layers, float16", "provider": cfg["provider"],
               "seq_lens": list(cfg["seq_lens"]), "warmup": args.warmup, "repeats": args.repeats,
               "onnxruntime": onnxruntime.__version__, "machine": machine_info(), "fusion": fusion, "rows": []}
    try:
        import torch

        if torch.cuda.is_available():
            results["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    entries = [("original", "original", "-", original, {}), ("fused", "original + optimize_for_ort", "-", fused,
                                                             {"note": "fused every layer into MultiHeadAttention"
                                                              if fusion["fused_every_layer"] else
                                                              f"fusion incomplete: {fusion}"}),
               ("no_attention", "fused, attention removed (bound)", "-", without_attention(fused, out),
                {"note": "each MultiHeadAttention's output replaced by its value input: attention at zero cost, "
                         "the rest of the model as fused (no variant can be faster; its error is meaningless)"})]
    for (name, target, tag), r in rewrites.items():
        note = "; ".join(sorted({s["fallback"] for s in r.get("sites", []) if s.get("fallback")}))
        if tag == "fused":
            note = "rewritten from the fused model (its other fusions kept)" + (f"; {note}" if note else "")
        refused = [s for s in r.get("sites", []) if s["status"] != "rewritten"]
        if refused:
            note = f"{len(refused)} sites not rewritten: {refused[0]['reason']}" + (f"; {note}" if note else "")
        if "error" in r:
            note = f"rewrite failed: {r['error']}"
        params = " ".join(f"{k}={v}" for k, v in r["params"].items())
        entries.append((f"{name}.{target}{'.' + tag if tag else ''}",
                        f"{name} {params}{' (from fused)' if tag == 'fused' else ''}".strip(), target, r["path"],
                        {"note": note, "sites": r.get("sites"), "rewrite_s": r.get("rewrite_s")}))
    reference = {}
    for label, model, target, path, extra in entries:
        row = {"label": label, "model": model, "target": target, **extra, "times": {}}
        if path is not None:
            timed = time_model(path, feeds, cfg["provider"], args.warmup, args.repeats)
            row["placement"] = timed.pop("placement", None)
            for n, t in timed.items():
                outputs = t.pop("outputs", None)
                if outputs is not None:
                    y = next(iter(outputs.values()))
                    if label == "original":
                        reference[n] = y
                    elif n == cfg["seq_lens"][0] and n in reference:
                        row["error_vs_original"] = _error(reference[n], y)
                row["times"][str(n)] = t
                if "error" in t:
                    row["note"] = (row.get("note", "") + f" N={n}: {t['error']}").strip()
        results["rows"].append(row)
        (out / "ort_cuda.json").write_text(json.dumps(results, indent=1, default=str))
        (out / "ort_cuda.md").write_text(table(results))
        log(f"{label}: " + ", ".join(f"N={n} {t.get('median_ms', 'failed')}" for n, t in row["times"].items()))
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
