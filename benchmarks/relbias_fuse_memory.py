"""Peak memory of a T5-encoder-shaped model at long N on CPU, original vs relbias fuse mode (ONNX Runtime).

Random weights (the bias is T5's relative_attention_bias Gather over log buckets, shared by every
layer); exported with the TorchScript exporter and a symbolic sequence length, so the position bias is
built at run time, as in a real export. Each measurement runs in a fresh process and reports VmHWM
(peak resident set) after building the session and running one batch.

    python benchmarks/relbias_fuse_memory.py --seq 4096 --layers 2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path


def _peak_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def measure(path: str, seq: int, threads: int) -> dict:
    """Run in a fresh process: session + one forward at ``seq`` tokens; peak RSS and wall time."""
    import time

    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    ids = np.random.default_rng(0).integers(1, 100, (1, seq)).astype(np.int64)
    mask = np.ones((1, seq), np.int64)
    mask[:, seq - seq // 8:] = 0  # right padding
    t0 = time.perf_counter()
    out = sess.run(None, {"input_ids": ids, "attention_mask": mask})[0]
    return {"peak_mib": _peak_kib() / 1024, "seconds": time.perf_counter() - t0,
            "checksum": float(np.abs(out).sum())}


def build(folder: Path, layers: int, d_model: int, heads: int) -> tuple[str, str, int]:
    import torch
    from transformers import T5Config, T5EncoderModel

    import attnopt

    torch.manual_seed(0)
    cfg = T5Config(vocab_size=128, d_model=d_model, d_kv=d_model // heads, num_heads=heads, d_ff=2 * d_model,
                   num_layers=layers, relative_attention_num_buckets=32, relative_attention_max_distance=128)
    model = T5EncoderModel(cfg).eval()
    model.config.use_cache = False

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return (self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state,)

    original = str(folder / "t5_encoder.onnx")
    ids = torch.randint(1, 100, (1, 16))
    axes = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}}
    torch.onnx.export(Wrapper(), (ids, torch.ones_like(ids)), original, dynamo=False, opset_version=17,
                      input_names=["input_ids", "attention_mask"], output_names=["last_hidden_state"],
                      dynamic_axes=axes)
    result = attnopt.rewrite(original, "relbias", kind="fuse")
    fused = str(folder / "t5_encoder_fused.onnx")
    result.save(fused)
    return original, fused, len(result.rewritten)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--d-model", type=int, default=512)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--measure", help=argparse.SUPPRESS)  # internal: the fresh process
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.seq, args.threads)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        original, fused, sites = build(Path(tmp), args.layers, args.d_model, args.heads)
        rows = {}
        for label, path in (("original", original), ("relbias fuse", fused)):
            out = subprocess.run([sys.executable, __file__, "--measure", path, "--seq", str(args.seq),
                                  "--threads", str(args.threads)], capture_output=True, text=True, check=True)
            rows[label] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"T5 encoder, {args.layers} layers, d_model {args.d_model}, {args.heads} heads, N={args.seq}, batch 1, "
          f"CPU (onnxruntime), {sites} sites fused")
    for label, r in rows.items():
        print(f"  {label:13s} peak RSS {r['peak_mib']:8.0f} MiB   forward {r['seconds']:6.2f} s   |y| {r['checksum']:.6g}")


if __name__ == "__main__":
    main()
