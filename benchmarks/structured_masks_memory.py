"""Peak memory of a segmented Llama at long N on onnxruntime CPU, with structured masks off and on.

A Llama-shaped decoder with random weights (default 2 layers, hidden 512, 8 heads,
2 kv heads) is exported to ONNX with dynamic batch and sequence axes, then
rewritten with segmented twice:

    off  ATTNOPT_STRUCTURED_MASKS=0: the run-time causal-plus-padding mask stays an
         N×M tensor that the model builds and the op reads;
    on   the default: the site is causal with attention_mask as key padding, and
         the N×M mask construction is dead code, removed from the graph.

Each model then runs once at batch 1, N = --seq-len (right padding on the last 5%
of keys) in a fresh process, which reports its peak RSS (VmHWM; ru_maxrss too),
its RSS once the session is built, and the run time. The parent never imports
torch (the export runs in a child too), so ru_maxrss, which Linux carries across
fork and exec, stays close to VmHWM. --with-original also runs the dense export.

    python benchmarks/structured_masks_memory.py                     # N=8192, table
    python benchmarks/structured_masks_memory.py --json out/sm.json  # also JSON

It asserts nothing: it is a benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HIDDEN, HEADS, KV_HEADS, FFN, VOCAB = 512, 8, 2, 1024, 1000


def export_llama(path: Path, layers: int, max_positions: int, exporter: str, sliding_window: int = 0) -> Path:
    """The Llama-shaped decoder; with ``sliding_window`` W, Mistral's (every layer attends to the last W keys)."""
    import warnings

    import torch
    from transformers import LlamaConfig, LlamaModel, MistralConfig, MistralModel

    class Wrapper(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state

    shape = dict(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=layers,
                 num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=max_positions)
    if sliding_window:
        cfg, make = MistralConfig(**shape, sliding_window=sliding_window), MistralModel
    else:
        cfg, make = LlamaConfig(**shape), LlamaModel
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = Wrapper(make(cfg).eval()).eval()
    ids = torch.randint(0, VOCAB, (2, 16))
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[1, 12:] = 0
    names = ["input_ids", "attention_mask"]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            dims = {0: torch.export.Dim.AUTO, 1: torch.export.Dim.AUTO}
            torch.onnx.export(model, (ids, mask), str(path), dynamo=True, input_names=names,
                              output_names=["last_hidden_state"], dynamic_shapes=(dims, dims),
                              external_data=False)
        else:
            axes = {n: {0: "batch", 1: "seq"} for n in names}
            torch.onnx.export(model, (ids, mask), str(path), dynamo=False, opset_version=17, input_names=names,
                              output_names=["last_hidden_state"], dynamic_axes=axes)
    return path


def rewrite(src: Path, dst: Path, structured: bool, segment_size: int) -> dict:
    """Rewrite in a child process with the switch set, so detection reads it fresh."""
    env = dict(os.environ, ATTNOPT_STRUCTURED_MASKS="1" if structured else "0")
    code = ("import json, sys\n"
            "from attnopt.loaded import open_model\n"
            "from attnopt.mask_analysis import refine_structured_masks\n"
            "from attnopt.passes import make_pass\n"
            "from attnopt.pipeline import Pipeline\n"
            "loaded = open_model(sys.argv[1], mutable=True)\n"
            "loaded.sites = refine_structured_masks(loaded)  # reads ATTNOPT_STRUCTURED_MASKS\n"
            "sites = [s.summary() for s in loaded.sites]\n"
            "r = Pipeline().add(make_pass('segmented', segment_size=int(sys.argv[3]))).run(loaded)\n"
            "r.save(sys.argv[2])\n"
            "print(json.dumps(sites))\n")
    out = _child([sys.executable, "-c", code, str(src), str(dst), str(segment_size)], env)
    sites = json.loads(out.stdout.strip().splitlines()[-1])
    return {"causal": [s["causal"] for s in sites], "key_padding": [s["key_padding"] for s in sites],
            "mask_kind": [s["mask_kind"] for s in sites], "window": [s.get("window") for s in sites]}


def measure(model: Path, seq_len: int, threads: int | None) -> dict:
    """One run in a fresh interpreter (see worker())."""
    out = _child([sys.executable, __file__, "--worker", str(model), str(seq_len), str(threads or 0)])
    return json.loads(out.stdout.strip().splitlines()[-1])


def _child(cmd: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:2])} ... failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return out


def worker(model: str, seq_len: int, threads: int) -> None:
    import resource

    import numpy as np
    import onnxruntime as ort

    def status_mb(field: str) -> float:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    loaded = status_mb("VmRSS")
    rng = np.random.default_rng(0)
    ids = rng.integers(0, VOCAB, (1, seq_len)).astype(np.int64)
    mask = np.ones((1, seq_len), np.int64)
    mask[:, seq_len - seq_len // 20:] = 0
    t0 = time.perf_counter()
    (y,) = sess.run(None, {"input_ids": ids, "attention_mask": mask})
    seconds = time.perf_counter() - t0
    # VmHWM is this process image's own high-water mark; ru_maxrss also counts what the parent
    # held when it forked (Linux keeps it across exec), which is why the parent imports no torch.
    peak = status_mb("VmHWM")
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_rss_mb": round(peak, 1), "ru_maxrss_mb": round(maxrss, 1),
                      "session_rss_mb": round(loaded, 1),
                      "run_s": round(seconds, 2), "finite": bool(np.isfinite(y).all())}))


def run(args) -> dict:
    out: dict = {"command": " ".join([Path(sys.executable).name, *sys.argv]),
                 "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                 "model": f"{'Mistral' if args.sliding_window else 'Llama'}-shaped, {args.layers} layers, hidden "
                          f"{HIDDEN}, {HEADS} heads, {KV_HEADS} kv heads, ffn {FFN}, random weights, {args.exporter} "
                          f"export" + (f", sliding window {args.sliding_window}" if args.sliding_window else ""),
                 "seq_len": args.seq_len, "segment_size": args.segment_size, "threads": args.threads, "rows": {}}
    with tempfile.TemporaryDirectory(prefix="bench-structured-masks-") as tmp:
        tmp = Path(tmp) if args.keep is None else args.keep
        tmp.mkdir(parents=True, exist_ok=True)
        src = tmp / "llama.onnx"
        _child([sys.executable, __file__, "--export", str(src), str(args.layers), str(max(args.seq_len, 64)),
                args.exporter, str(args.sliding_window)])
        models = {"original": src} if args.with_original else {}
        for label, structured in (("off", False), ("on", True)):
            dst = tmp / f"llama.segmented.{label}.onnx"
            out.setdefault("sites", {})[label] = rewrite(src, dst, structured, args.segment_size)
            models[f"segmented, structured masks {label}"] = dst
        for label, path in models.items():
            row = measure(path, args.seq_len, args.threads)
            row["file_mb"] = round(path.stat().st_size / 2**20, 1)
            out["rows"][label] = row
            print(f"{label:34s} peak {row['peak_rss_mb']:9.1f} MB (ru_maxrss {row['ru_maxrss_mb']:.0f})   "
                  f"session {row['session_rss_mb']:8.1f} MB   "
                  f"run {row['run_s']:7.2f} s   finite {row['finite']}", flush=True)
    off, on = (out["rows"][f"segmented, structured masks {k}"]["peak_rss_mb"] for k in ("off", "on"))
    out["peak_ratio_off_over_on"] = round(off / on, 2)
    print(f"peak RSS, structured masks off / on: {off:.0f} / {on:.0f} MB = {off / on:.2f}x")
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--worker":
        worker(argv[1], int(argv[2]), int(argv[3]))
        return 0
    if argv and argv[0] == "--export":
        export_llama(Path(argv[1]), int(argv[2]), int(argv[3]), argv[4], int(argv[5]))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seq-len", type=int, default=8192)
    p.add_argument("--segment-size", type=int, default=1024)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--exporter", choices=("dynamo", "torchscript"), default="dynamo")
    p.add_argument("--sliding-window", type=int, default=0, metavar="W",
                   help="Mistral's sliding window of W keys in every layer (0: Llama, none). Segments of W or fewer "
                        "keys see nothing past it, so with structured masks on the op reads no N×M mask.")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: its own).")
    p.add_argument("--with-original", action="store_true", help="Also run the dense export (several GB at 8192).")
    p.add_argument("--json", type=Path, help="Also write the results as JSON here.")
    p.add_argument("--keep", type=Path, help="Write the exported and rewritten models here (default: a temp dir).")
    args = p.parse_args(argv)
    out = run(args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
