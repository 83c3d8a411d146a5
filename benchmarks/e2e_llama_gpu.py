"""End to end in torch on the GPU: a Llama-shaped decoder rewritten through the fx path (issue 9 item 7).

    PYTHONUNBUFFERED=1 python3 benchmarks/e2e_llama_gpu.py --json out.json [--n 32768] [--layers 8]

Random weights, bf16: hidden 2048, 16 heads, 4 kv heads, SwiGLU MLP, rotary
positions, causal SDPA. The model is exported with torch.export, rewritten
with attnopt (segmented S=1024, window W=1024, memory S=M=1024) and timed, in
one run, against the dense model (flash SDPA) and against the bound that
attention at zero cost would give (the same model whose attention returns v).
Times are medians of CUDA-event timings after warmup; peak memory is
torch.cuda.max_memory_allocated during one forward.
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn as nn
import torch.nn.functional as F

import attnopt

HIDDEN, HEADS, KV_HEADS, FFN = 2048, 16, 4, 5632
HEAD_DIM = HIDDEN // HEADS
REWRITES = {"segmented S=1024": ("segmented", {"segment_size": 1024}),
            "window W=1024": ("window", {"window": 1024}),
            "memory S=M=1024": ("memory", {"segment_size": 1024, "memory": 1024})}


def rotary(x, cos, sin):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class Block(nn.Module):
    def __init__(self, free_attention: bool):
        super().__init__()
        self.free_attention = free_attention
        self.norm1, self.norm2 = nn.RMSNorm(HIDDEN), nn.RMSNorm(HIDDEN)
        self.q = nn.Linear(HIDDEN, HIDDEN, bias=False)
        self.kv = nn.Linear(HIDDEN, 2 * KV_HEADS * HEAD_DIM, bias=False)
        self.o = nn.Linear(HIDDEN, HIDDEN, bias=False)
        self.up = nn.Linear(HIDDEN, 2 * FFN, bias=False)
        self.down = nn.Linear(FFN, HIDDEN, bias=False)

    def forward(self, h, cos, sin):
        b, n, _ = h.shape
        x = self.norm1(h)
        q = self.q(x).view(b, n, HEADS, HEAD_DIM).transpose(1, 2)
        k, v = self.kv(x).view(b, n, 2, KV_HEADS, HEAD_DIM).permute(2, 0, 3, 1, 4)
        q, k = rotary(q, cos, sin), rotary(k, cos, sin)
        if self.free_attention:  # the bound: attention costs nothing
            a = v.repeat_interleave(HEADS // KV_HEADS, dim=1)
        else:
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        h = h + self.o(a.transpose(1, 2).reshape(b, n, HIDDEN))
        gate, up = self.up(self.norm2(h)).chunk(2, dim=-1)
        return h + self.down(F.silu(gate) * up)


class Decoder(nn.Module):
    def __init__(self, layers: int, free_attention: bool = False):
        super().__init__()
        self.blocks = nn.ModuleList(Block(free_attention) for _ in range(layers))

    def forward(self, h, cos, sin):
        for block in self.blocks:
            h = block(h, cos, sin)
        return h


def time_ms(fn, warmup=2, repeats=5) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def peak_gib(fn) -> float:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**30


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=32768)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    dev, dt = "cuda", torch.bfloat16
    h = torch.randn(1, args.n, HIDDEN, device=dev, dtype=dt)
    pos = torch.arange(args.n, device=dev, dtype=torch.float32)[:, None]
    inv = 10000 ** (-torch.arange(0, HEAD_DIM, 2, device=dev, dtype=torch.float32) / HEAD_DIM)
    ang = torch.cat([pos * inv, pos * inv], dim=-1)
    cos, sin = ang.cos().to(dt), ang.sin().to(dt)
    inputs = (h, cos, sin)

    dense = Decoder(args.layers).to(dev, dt).eval()
    free = Decoder(args.layers, free_attention=True).to(dev, dt).eval()
    free.load_state_dict(dense.state_dict())
    rows = []
    with torch.no_grad():
        program = torch.export.export(dense, inputs)
        candidates = {"dense (flash SDPA)": dense, "attention at zero cost (bound)": free}
        for label, (name, params) in REWRITES.items():
            result = attnopt.rewrite(program, name, **params)
            assert len(result.rewritten) == args.layers, result.report
            candidates[label] = result.model
        base = None
        for label, model in candidates.items():
            ms = time_ms(lambda: model(*inputs))
            gib = peak_gib(lambda: model(*inputs))
            base = base or ms
            rows.append({"model": label, "ms": ms, "peak_gib": gib, "speedup_vs_dense": base / ms})
            print(f"{label:34s} {ms:9.2f} ms  {gib:6.2f} GiB  {base / ms:5.2f}x vs dense", flush=True)
    info = {"n": args.n, "layers": args.layers, "hidden": HIDDEN, "heads": HEADS, "kv_heads": KV_HEADS,
            "dtype": "bfloat16", "device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(info, f, indent=1)


if __name__ == "__main__":
    main()
