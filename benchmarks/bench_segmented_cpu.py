"""Segmented attention on onnxruntime CPU: end to end and a single attention block.

(a) A 4-layer BERT-base-shaped encoder (hidden 768, 12 heads, D=64), exported to
    ONNX with a dynamic sequence axis, rewritten with segmented (S=512), timed at
    N = 2048, 4096, 8192.
(b) One dense attention (H=16, D=64), q/k/v in, exported from torch as the
    decomposed MatMul -> Mul -> Softmax -> MatMul, rewritten with S=1024, timed at
    N = 4096.

Each (model, N) runs in a fresh process (see attnopt.bench), so the peak RSS is
that run's alone. Targets (issue 3): at N=8192 end to end >= 2.5x faster and >= 4x
lower peak memory; the single block >= 3.5x faster.

    python benchmarks/bench_segmented_cpu.py --json out/bench_segmented_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

TARGETS = {"e2e_speedup": 2.5, "e2e_memory_ratio": 4.0, "block_speedup": 3.5}


def export_block(path: Path, heads: int = 16, head_dim: int = 64, seq_len: int = 256) -> Path:
    """One dense attention over q, k, v (1, H, N, D), N dynamic, as torch exports it."""
    import math

    import torch

    class Attention(torch.nn.Module):
        def forward(self, q, k, v):
            scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
            return torch.matmul(torch.softmax(scores, dim=-1), v)

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, heads, seq_len, head_dim, generator=g) for _ in range(3))
    names = ["q", "k", "v"]
    axes = {n: {2: "seq"} for n in names + ["out"]}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(Attention().eval(), (q, k, v), str(path), input_names=names, output_names=["out"],
                          dynamic_axes=axes, opset_version=17, dynamo=False)
    return path


def export_bert_base(path: Path) -> Path:
    from attnopt.examples import export_example

    return export_example("bert-base", path, seq_len=128)


def run(args) -> dict:
    import attnopt
    from attnopt.bench import machine_info
    from rich.console import Console

    console = Console(width=max(Console().width, 140))
    out: dict = {"command": " ".join([Path(sys.executable).name, *sys.argv]),
                 "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": machine_info(), "targets": TARGETS}
    common = dict(repeats=args.repeats, warmup=args.warmup, threads=args.threads, progress=not args.quiet)
    with tempfile.TemporaryDirectory(prefix="bench-segmented-") as tmp:
        tmp = Path(tmp)
        if args.only in ("all", "e2e"):
            model = export_bert_base(tmp / "bert-base-4l.onnx")
            sites = attnopt.detect(str(model))
            console.print(f"[bold]end to end[/]: bert-base shaped, 4 layers, {len(sites)} attention sites, "
                          f"segment_size={args.segment_size}")
            t0 = time.perf_counter()
            report = attnopt.bench(str(model), "segmented", {"segment_size": args.segment_size},
                                   args.seq_lens, batch=1, **common)
            out["e2e"] = {**report.to_dict(), "model": "bert-base shaped, 4 layers (attnopt.examples 'bert-base')",
                          "seconds": round(time.perf_counter() - t0, 1)}
            console.print(report.table())
        if args.only in ("all", "block"):
            model = export_block(tmp / "attention-block.onnx")
            console.print(f"[bold]single block[/]: H=16, D=64, N={args.block_seq_len}, "
                          f"segment_size={args.block_segment_size}")
            t0 = time.perf_counter()
            report = attnopt.bench(str(model), "segmented", {"segment_size": args.block_segment_size},
                                   [args.block_seq_len], batch=1, **common)
            out["block"] = {**report.to_dict(), "model": "one dense attention, q/k/v (1, 16, N, 64)",
                            "seconds": round(time.perf_counter() - t0, 1)}
            console.print(report.table())
    out["verdict"] = verdict(out, max(args.seq_lens), args.block_seq_len)
    for name, v in out["verdict"].items():
        mark = "[green]met[/]" if v["met"] else "[red]missed[/]"
        console.print(f"{name}: {v['value']:.2f}x (target >= {v['target']}x at N={v['seq_len']}) {mark}"
                      if v["value"] is not None else f"{name}: not measured")
    return out


def verdict(out: dict, e2e_n: int, block_n: int) -> dict:
    def row(section: str, n: int) -> dict:
        rows = out.get(section, {}).get("rows", [])
        return next((r for r in rows if r["seq_len"] == n), {})

    result = {}
    for name, section, n, key in (("e2e_speedup", "e2e", e2e_n, "speedup"),
                                  ("e2e_memory_ratio", "e2e", e2e_n, "memory_ratio"),
                                  ("block_speedup", "block", block_n, "speedup")):
        if section not in out:
            continue
        value = row(section, n).get(key)
        result[name] = {"value": value, "target": TARGETS[name], "seq_len": n,
                        "met": value is not None and value >= TARGETS[name]}
    return result


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    os.replace(tmp, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", type=Path, help="Also write the results as JSON here.")
    p.add_argument("--seq-lens", type=lambda s: [int(x) for x in s.split(",")], default=[2048, 4096, 8192],
                   help="End-to-end sequence lengths (default 2048,4096,8192).")
    p.add_argument("--segment-size", type=int, default=512)
    p.add_argument("--block-seq-len", type=int, default=4096)
    p.add_argument("--block-segment-size", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=3, help="Timed runs per (model, N), after warm-up.")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: its own).")
    p.add_argument("--only", choices=("all", "e2e", "block"), default="all")
    p.add_argument("--quiet", action="store_true", help="No progress bar.")
    args = p.parse_args(argv)
    from attnopt.errors import AttnoptError

    try:
        out = run(args)
    except AttnoptError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        write_json(args.json, out)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":  # the guard matters: bench spawns worker processes that re-import this file
    sys.exit(main())
