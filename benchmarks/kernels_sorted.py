"""lsh, routed and lowrank on the GPU (their Triton forms) against dense SDPA, in one run.

    PYTHONUNBUFFERED=1 python3 benchmarks/kernels_sorted.py [--n 4096 16384 65536] [--json out.json] [--sweep]
        [--rows NAME ...]

bf16, B=1, H=16, D=128, random inputs. Every row calls ``torch.ops.attnopt.<variant>_attention``, as a
rewritten model does, so lsh's and routed's times include hashing / routing and the sorts. For each row: time
(median of triton.testing.do_bench), useful TFLOP/s (4·D·H·attended pairs, counted from the bucket ids on
4096 sampled query rows: pairs sharing a bucket in some round, or in the local chunk, or sinks; lowrank: the
pooled keys), peak memory above the inputs, and dense F.scaled_dot_product_attention in the same run.
Target (issue 9): >= 50% of dense SDPA's TFLOP/s on the useful FLOPs.

``--sweep`` also times lsh's attention alone (bucket ids given) under a few tile configurations, with and
without pre-sorted keys, and the share of the time spent hashing and sorting.

``--local-stages`` times the bucket ops' local kernel (``_local_fwd``: each query's chunk, then the softmax's
finish) under 1 and 2 pipeline stages, each twice in one process, for the lsh and routed rows: its device time
(``kernel_times``), the whole call, and whether the outputs are bit-equal.

``--kmeans`` times routed's k-means alone (c = 16 and 64, 2 Lloyd iterations) with the torch step and the
Triton step (``kernels/triton_kmeans.py``): time, peak extra memory, and how many keys the two put in the
same cluster.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
# benchmarks/kernels.py: one setting, one timing rule and one baseline for both tables
from kernel_times import kernel_times  # noqa: E402
from kernels import D, H, bench, dense_sdpa, op_args, peak_extra_mib, random_qkv  # noqa: E402

# name: (variant, params, causal)
ROWS = {
    "lsh b=32": ("lsh", {"n_buckets": 32, "n_rounds": 1, "chunk": 64, "seed": 0, "sinks": 0}, False),
    "lsh b=32 causal": ("lsh", {"n_buckets": 32, "n_rounds": 1, "chunk": 64, "seed": 0, "sinks": 0}, True),
    "lsh b=16 R=2 + 4 sinks": ("lsh", {"n_buckets": 16, "n_rounds": 2, "chunk": 64, "seed": 0, "sinks": 4}, False),
    "routed c=16": ("routed", {"n_clusters": 16, "top_k": 1, "iters": 2, "seed": 0, "chunk": 64, "sinks": 0}, False),
    "routed c=16 causal": ("routed", {"n_clusters": 16, "top_k": 1, "iters": 2, "seed": 0, "chunk": 64, "sinks": 0},
                           True),
    "routed c=32 top2": ("routed", {"n_clusters": 32, "top_k": 2, "iters": 2, "seed": 0, "chunk": 64, "sinks": 0},
                         False),
    "lowrank pool r=64": ("lowrank", {"rank": 64, "method": "pool", "pinv_steps": 6}, False),
    "lowrank pool r=256": ("lowrank", {"rank": 256, "method": "pool", "pinv_steps": 6}, False),
    "lowrank pool r=256 + key padding": ("lowrank", {"rank": 256, "method": "pool", "pinv_steps": 6}, False),
    "lowrank nystrom r=64": ("lowrank", {"rank": 64, "method": "nystrom", "pinv_steps": 6}, False),
}


def bucket_ids(variant: str, params: dict, q, k, key_padding=None):
    """(q_buckets (B, H, R, N), k_buckets (B, Hkv, R, M)) as the op computes them."""
    from attnopt.kernels import triton_buckets

    if variant == "lsh":
        from attnopt.kernels.lsh import SPEC

        rot = torch.from_numpy(SPEC.make_tensors(params, q.shape, k.shape)["rotations"]).to(q.device)
        w = rot[None, None]
        return (triton_buckets.project_top(q, w, mod=params["n_buckets"], signed=True),
                triton_buckets.project_top(k, w, mod=params["n_buckets"], signed=True))
    from attnopt.kernels.routed.op import cuda_buckets

    return cuda_buckets(q, k, key_padding, params["n_clusters"], params["top_k"], params["iters"])


def attended_pairs(qb, kb, chunk: int, sinks: int, causal: bool, sample: int = 4096) -> float:
    """Allowed (query, key) pairs over all heads: shared bucket in some round, or local chunk, or sink, with
    causality. Counted exactly on ``sample`` random query rows and scaled to N (an unbiased estimate)."""
    B, Hq, R, N = qb.shape
    M = kb.shape[-1]
    rep = Hq // kb.shape[1]
    kbh = kb.repeat_interleave(rep, dim=1).long()
    rows = torch.randperm(N, generator=torch.Generator().manual_seed(0))[:sample].to(qb.device)
    j = torch.arange(M, device=qb.device)
    total = 0.0
    for part in rows.split(256):
        same = (qb[..., part].long()[..., :, None] == kbh[..., None, :]).any(dim=2)  # (B, H, n, M)
        p = part[:, None] + (M - N)
        ok = same | (torch.div(p, chunk, rounding_mode="floor") == torch.div(j, chunk, rounding_mode="floor"))
        ok = ok | (j < sinks)
        if causal:
            ok = ok & (j <= p)
        total += float(ok.sum())
    return total * N / len(rows)


def run(ns, rep_ms: float, log, sweep: bool, names=tuple(ROWS)) -> list[dict]:
    from attnopt.kernels.registry import get_variant

    rows = []
    scale = 1.0 / math.sqrt(D)
    for n in ns:
        q, k, v = random_qkv(n)
        sdpa = dense_sdpa(q, k, v, scale, rep_ms, log)
        for name in names:
            variant, params, causal = ROWS[name]
            spec = get_variant(variant)
            kp = None
            if "key padding" in name:
                kp = torch.zeros(1, n, device="cuda")
                kp[0, n - n // 10:] = float("-inf")
            args = op_args(spec, params, q, k, scale, causal)
            call = lambda args=args, kp=kp, spec=spec: spec.torch_op(q, k, v, None, kp, *args)
            try:
                call()
                torch.cuda.synchronize()
                ms = bench(call, rep_ms)
                mem = peak_extra_mib(call)
            except Exception as exc:  # report, keep going
                log(f"N={n} {name}: {type(exc).__name__}: {exc}")
                continue
            if variant == "lowrank":
                r = params["rank"]
                groups = -(-n // -(-n // r))
                pairs = H * n * groups * (2 if params["method"] == "nystrom" else 1)  # nystrom: Q·K̃ and Q̃·K
            else:
                qb, kb = bucket_ids(variant, params, q, k, kp)
                pairs = attended_pairs(qb, kb, params["chunk"], params["sinks"], causal)
            tf = 4 * D * pairs / ms / 1e9
            row = dict(variant=name, n=n, keys_per_query=pairs / (H * n), ms=ms, tflops=tf, peak_mib=mem,
                       sdpa_ms=sdpa[causal]["ms"], sdpa_tflops=sdpa[causal]["tflops"],
                       speedup_vs_sdpa=sdpa[causal]["ms"] / ms, frac_sdpa_tflops=tf / sdpa[causal]["tflops"])
            row["meets_tflops_target"] = bool(row["frac_sdpa_tflops"] >= 0.5)
            rows.append(row)
            log(f"N={n} {name}: {ms:.3f} ms, {row['keys_per_query']:.0f} keys/query, {tf:.0f} TFLOP/s "
                f"({row['frac_sdpa_tflops'] * 100:.0f}% of SDPA's), x{row['speedup_vs_sdpa']:.2f} vs dense SDPA, "
                f"peak extra {mem:.0f} MiB")
        if sweep and n == max(ns):
            rows.extend(lsh_sweep(q, k, v, scale, rep_ms, log))
        del q, k, v
        torch.cuda.empty_cache()
    return rows


def lsh_sweep(q, k, v, scale, rep_ms, log) -> list[dict]:
    """lsh b=32: hashing + sorting alone, and the attention kernels alone under a few configurations."""
    from attnopt.kernels import triton_buckets as tb
    from attnopt.kernels.triton_sort import sort_buckets

    n = q.shape[2]
    params = {"n_buckets": 32, "n_rounds": 1, "chunk": 64, "seed": 0, "sinks": 0}
    qb, kb = bucket_ids("lsh", params, q, k)

    def ids_and_sorts():
        a, b = bucket_ids("lsh", params, q, k)
        return sort_buckets(a, 32), sort_buckets(b, 32)

    out = []
    ms = bench(ids_and_sorts, rep_ms)
    log(f"N={n} sweep lsh b=32 hashing + sorts: {ms:.3f} ms")
    out.append(dict(variant="sweep lsh b=32 hashing + sorts", n=n, ms=ms))
    # pre-sorting k and v: sort_keys (one Triton copy) against what torch offers, on lsh's own permutation
    k_perm = sort_buckets(kb, 32)[1]
    B, Hkv, R = k_perm.shape[:3]
    bi = torch.arange(B, device=k.device).view(B, 1, 1, 1)
    hi = torch.arange(Hkv, device=k.device).view(1, Hkv, 1, 1)
    sorts = {
        "sort_keys (Triton copy of k and v)": lambda: tb.sort_keys(k, v, k_perm, D),
        "torch.gather, index expanded over D (k and v)": lambda: [
            torch.gather(t[:, :, None].expand(B, Hkv, R, n, D), 3, k_perm.long()[..., None].expand(B, Hkv, R, n, D))
            for t in (k, v)],
        "advanced indexing (k and v)": lambda: [t[bi, hi, k_perm.long()] for t in (k, v)],
        "index_select on rows (k and v)": lambda: [
            t.reshape(-1, D).index_select(0, (k_perm.long() + (bi * Hkv + hi) * n).reshape(-1)) for t in (k, v)],
        "plain copy of k and v (the floor)": lambda: (k.clone(), v.clone()),
    }
    for label, fn in sorts.items():
        ms = bench(fn, rep_ms)
        log(f"N={n} sweep pre-sorting: {label}: {ms:.3f} ms")
        out.append(dict(variant=f"sweep pre-sorting: {label}", n=n, ms=ms))
    C = tb.BucketConfig
    configs = [C(), C(presorted=True), C(presorted=True, use_tma=True), C(num_stages=2, presorted=True, use_tma=True),
               C(block_n=128, presorted=True, use_tma=True), C(block_n=128), C(num_warps=8, num_stages=2),
               C(block_m=128, block_n=64, num_warps=8, num_stages=3, presorted=True, use_tma=True),
               C(block_m=128, block_n=128, num_warps=8, num_stages=3, presorted=True, use_tma=True)]
    for cfg in configs:
        fn = lambda cfg=cfg: tb.bucket_attention(q, k, v, None, None, qb, kb, n_buckets=32, chunk=64, sinks=0,
                                                  scale=scale, causal=False, config=cfg)
        try:
            fn()
            torch.cuda.synchronize()
            ms = bench(fn, rep_ms)
        except Exception as exc:
            log(f"N={n} sweep {cfg}: {type(exc).__name__}: {exc}")
            continue
        times = kernel_times(fn, calls=3, top=4)  # the bucket kernel's own share, apart from the sorts and copies
        log(f"N={n} sweep lsh b=32 attention only {cfg}: {ms:.3f} ms; device: "
            + ", ".join(f"{name[:24]} {t:.3f}" for name, t, _ in times["kernels"]))
        out.append(dict(variant=f"sweep lsh b=32 attention only {cfg}", n=n, ms=ms, kernels=times["kernels"]))
    return out


def local_stage_rows(ns, rep_ms: float, log, names) -> list[dict]:
    """The local kernel's device time and the whole call's under ``BucketConfig.local_stages`` 1 and 2."""
    import dataclasses

    from attnopt.kernels import triton_buckets
    from attnopt.kernels.registry import get_variant

    chosen = triton_buckets.default_config
    scale = 1.0 / math.sqrt(D)
    out = []
    try:
        for n in ns:
            q, k, v = random_qkv(n)
            for name in [r for r in names if ROWS[r][0] in ("lsh", "routed")]:
                variant, params, causal = ROWS[name]
                spec = get_variant(variant)
                args = op_args(spec, params, q, k, scale, causal)
                first = None
                for stages in (2, 1, 2, 1):
                    triton_buckets.default_config = (
                        lambda *a, stages=stages: dataclasses.replace(chosen(*a), local_stages=stages))
                    call = lambda spec=spec, args=args: spec.torch_op(q, k, v, None, None, *args)
                    o = call()
                    first = o if first is None else first
                    ms = bench(call, rep_ms)
                    local = sum(t for kernel, t, _ in kernel_times(call, calls=3, top=20)["kernels"]
                                if "_local_fwd" in kernel)
                    same = bool(torch.equal(o, first))
                    out.append(dict(variant=name, n=n, local_stages=stages, ms=ms, local_ms=local, bit_equal=same))
                    log(f"N={n} {name} local_stages={stages}: call {ms:.3f} ms, _local_fwd {local:.3f} ms, "
                        f"bit-equal to the first: {same}")
            del q, k, v
            torch.cuda.empty_cache()
    finally:
        triton_buckets.default_config = chosen
    return out


def kmeans_rows(ns, rep_ms: float, log) -> list[dict]:
    """routed's centroids with the torch step against the Triton step, per N and c."""
    from attnopt.kernels import triton_kmeans
    from attnopt.kernels.routed import clusters

    out = []
    for n in ns:
        _, k, _ = random_qkv(n)
        w = clusters.key_weights(None, n, k.device)
        for c in (16, 64):
            mus = {}
            for label, step in (("torch step", clusters.lloyd_sums), ("Triton step", triton_kmeans.lloyd_sums)):
                call = lambda step=step, k=k, w=w, c=c: clusters.centroids(k, w, c, 2, step)
                mus[label] = call()
                ms, mem = bench(call, rep_ms), peak_extra_mib(call)
                out.append(dict(variant=f"k-means c={c}, 2 iterations, {label}", n=n, ms=ms, peak_mib=mem))
                log(f"N={n} k-means c={c}, 2 iterations, {label}: {ms:.3f} ms, peak extra {mem:.1f} MiB")
            a, b = (clusters.nearest(k, mu, clusters.distinct(mu)) for mu in mus.values())
            same = float((a == b).float().mean())
            out[-1]["same_cluster"] = same
            log(f"N={n} k-means c={c}: the two steps' centroids put {same:.5f} of the keys in the same cluster")
        del k
        torch.cuda.empty_cache()
    return out


def profile(n: int, log) -> None:
    """Where lsh's and lowrank's time goes at length n: the op, its CUDA function called directly, the same with
    Triton launched without torch.library.wrap_triton, host time per call, and the GPU kernels' own times."""
    import time

    from attnopt.kernels.registry import get_variant

    q, k, v = random_qkv(n)
    scale = 1.0 / math.sqrt(D)
    kp = torch.zeros(1, n, device="cuda")
    kp[0, -7:] = float("-inf")
    for name in ("lsh b=32", "routed c=16", "lowrank pool r=256 + key padding"):
        variant, params, causal = ROWS[name]
        spec = get_variant(variant)
        args = op_args(spec, params, q, k, scale, causal)
        pad = kp if "key padding" in name else None
        direct = spec._module("op").cuda_forward
        fns = {"op": lambda: spec.torch_op(q, k, v, None, pad, *args),
               "cuda_forward": lambda: direct(q, k, v, None, pad, *args)}
        for label, fn in fns.items():
            fn()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(5):
                fn()
            host = (time.perf_counter() - t0) / 5 * 1e3
            torch.cuda.synchronize()
            wall = (time.perf_counter() - t0) / 5 * 1e3
            log(f"profile N={n} {name} {label}: do_bench {bench(fn, 50):.3f} ms, host {host:.3f} ms/call, "
                f"wall {wall:.3f} ms/call")
        original = torch.library.wrap_triton
        torch.library.wrap_triton = lambda kernel: kernel
        try:
            log(f"profile N={n} {name} cuda_forward, plain Triton launches: {bench(fns['cuda_forward'], 50):.3f} ms")
        finally:
            torch.library.wrap_triton = original
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(3):
                fns["op"]()
            torch.cuda.synchronize()
        log(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=60))


def markdown(rows: list[dict]) -> str:
    lines = ["| variant | N | keys/query | ms | useful TFLOP/s | % dense SDPA TFLOP/s | peak extra MiB | "
             "dense SDPA ms | × vs dense SDPA |", "|" + "---|" * 9]
    for r in rows:
        if "tflops" not in r:
            continue
        lines.append(f"| {r['variant']} | {r['n']} | {r['keys_per_query']:.0f} | {r['ms']:.3f} | {r['tflops']:.0f} | "
                     f"{r['frac_sdpa_tflops'] * 100:.0f}%{'' if r['meets_tflops_target'] else ' (target 50%)'} | "
                     f"{r['peak_mib']:.0f} | {r['sdpa_ms']:.3f} | {r['speedup_vs_sdpa']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[4096, 16384, 65536])
    ap.add_argument("--rep-ms", type=float, default=100.0)
    ap.add_argument("--json", help="write the rows here")
    ap.add_argument("--md", help="write the markdown table here")
    ap.add_argument("--sweep", action="store_true", help="also time lsh's parts and tile configurations")
    ap.add_argument("--profile", action="store_true", help="only show where the time goes, at each --n")
    ap.add_argument("--kmeans", action="store_true", help="only time routed's k-means, torch and Triton steps")
    ap.add_argument("--local-stages", action="store_true",
                    help="only time the bucket ops' local kernel under 1 and 2 pipeline stages (lsh and routed rows)")
    ap.add_argument("--rows", nargs="*", default=None,
                    help="rows whose name contains any of these (default: all; none with --sweep: the sweep alone): "
                    + ", ".join(ROWS))
    args = ap.parse_args(argv)
    names = list(ROWS) if args.rows is None else [r for r in ROWS if any(w in r for w in args.rows)]
    if not names and not args.sweep:
        print(f"kernels_sorted: --rows {' '.join(args.rows)} matches no row; rows: {', '.join(ROWS)}",
              file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("kernels_sorted: needs a CUDA GPU", file=sys.stderr)
        return 2
    import attnopt.kernels.lowrank.op  # noqa: F401  (registers the ops)
    import attnopt.kernels.lsh.op  # noqa: F401
    import attnopt.kernels.routed.op  # noqa: F401

    if args.profile:
        for n in args.n:
            profile(n, lambda s: print(s, flush=True))
        return 0
    if args.kmeans or args.local_stages:
        log = lambda s: print(s, flush=True)  # noqa: E731
        rows = (kmeans_rows(args.n, args.rep_ms, log) if args.kmeans
                else local_stage_rows(args.n, args.rep_ms, log, names))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)
        return 0
    rows = run(args.n, args.rep_ms, lambda s: print(s, flush=True), args.sweep, names)
    table = markdown(rows)
    print(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    if args.md:
        with open(args.md, "w") as f:
            f.write(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
