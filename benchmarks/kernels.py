"""Band kernels on the GPU against dense SDPA and compiled FlexAttention, in one run.

    PYTHONUNBUFFERED=1 python3 benchmarks/kernels.py --json out.json [--md table.md] [--n 4096 16384 65536]

bf16, B=1, H=16, D=128. For each variant and N: time (median of
triton.testing.do_bench), useful TFLOP/s (4·N·keys_per_query·D·H, counting only
allowed keys), peak extra memory (max_memory_allocated above the inputs), and in
the same run dense F.scaled_dot_product_attention and torch.compile'd
flex_attention with a create_block_mask expressing the same sparsity; and, where
it can express the rows' keys (dense, the sliding window, ALiBi), FlashAttention-2
as torch builds it (``aten._flash_attention_forward`` with its window sizes and
ALiBi slopes): the same math in a hand-written CUDA kernel.

Beyond the bands: relbias ALiBi (vs dense SDPA and Flex with an ALiBi
score_mod), the hierarchical fine window (vs Flex with the same window) and
full hierarchical (fine + pooled coarse level; Flex cannot express pooling),
and lsh / routed / lowrank through ``torch.ops.attnopt`` where their CUDA
kernels are registered (time includes hashing / routing / sorting; useful
FLOPs from the expected attended keys). Every row but the band ones marked
"(kernel, no fast path)" calls the op, as a rewritten model does. Where NVIDIA's
cuDNN frontend is installed (the ``[cudnn]`` extra), the window and memory rows
run cuDNN (``kernels/cudnn_band.py``); the JSON's meta records its version, or
null where the band kernel served them.

Targets (issue 9): segmented, segmented + 4 sinks and memory >= 1.5x faster than
FlexAttention; window >= 1.3x; relbias ALiBi (N=16384) within 1.15x of dense
SDPA's time and >= 1.3x faster than Flex; every variant >= 50% of dense SDPA's
TFLOP/s.

Parts can be run cheaply: ``--variants`` takes names or substrings
(``--variants relbias hierarchical``), ``--n`` the sequence lengths.

``--sweep N [N ...]`` times a few tile configurations of the kernel itself (no fast path) for the rows
in ``--sweep-rows``; ``--sweep-tiles 64x64w4s1 64x64w4s3`` picks the configurations and ``--sweep-repeats 3``
times each of them three times, in turn, where one pass cannot tell them apart.

``--fold-sweep N`` times the folded-segment fast path (cuDNN over segments folded into the batch, parts
merged by log-sum-exp) against the band kernel for segments of 64 .. 1024, plain, with 4 sinks and with
the previous segment: the measurements behind ``triton_band._fold_pays``.

``--window-sink-sweep N`` times a window with 4 sink keys both ways, cuDNN's window and the log-sum-exp merge
against the band kernel, for W = 128 .. 1024, plain and causal (needs the ``[cudnn]`` extra): the measurements
behind ``triton_band.WINDOW_MERGE_FROM``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import torch
import torch.nn.functional as F

BIG = 2**30
H, D = 16, 128

# name: (unit, before, after, sinks, causal, flex target ratio)
VARIANTS = {
    "segmented S=1024": (1024, 0, 0, 0, False, 1.5),
    "segmented S=1024 (kernel, no fast path)": (1024, 0, 0, 0, False, 1.5),
    "segmented S=1024 + 4 sinks": (1024, 0, 0, 4, False, 1.5),
    "segmented S=1024 + 4 sinks (kernel, no fast path)": (1024, 0, 0, 4, False, 1.5),
    "window W=1024": (1, 1023, 1023, 0, False, 1.3),
    "window W=1024 causal": (1, 1023, 1023, 0, True, 1.3),
    "window W=1024 (kernel, no fast path)": (1, 1023, 1023, 0, False, 1.3),
    "window W=1024 causal (kernel, no fast path)": (1, 1023, 1023, 0, True, 1.3),
    "window W=1024 + 4 sinks": (1, 1023, 1023, 4, False, None),  # StreamingLLM's shape; issue 9 sets no target
    "window W=1024 + 4 sinks causal": (1, 1023, 1023, 4, True, None),
    "window W=1024 + 4 sinks causal (kernel, no fast path)": (1, 1023, 1023, 4, True, None),
    "memory S=M=1024": (1024, 1024, 0, 0, False, 1.5),
    "memory S=M=1024 causal": (1024, 1024, 0, 0, True, 1.5),
    "memory S=M=1024 (kernel, no fast path)": (1024, 1024, 0, 0, False, 1.5),
    "memory S=M=1024 causal (kernel, no fast path)": (1024, 1024, 0, 0, True, 1.5),
    "dense": (BIG, 0, 0, 0, False, None),
    "dense causal": (BIG, 0, 0, 0, True, None),
    "hierarchical fine window B=64": (64, 64, 64, 0, False, None),
    "hierarchical fine window B=64 causal": (64, 64, 0, 0, True, None),
}

# Rows that call an op with other than a band: name -> (variant, params, causal, Flex target, SDPA time target)
OP_ROWS = {
    "relbias ALiBi": ("relbias", {"kind": "alibi"}, False, 1.3, 1.15),
    "relbias ALiBi causal": ("relbias", {"kind": "alibi"}, True, 1.3, 1.15),
    # an all-zero key padding turns the kernel's skipping of too-far key blocks off: every block, as before
    "relbias ALiBi (no block skipping)": ("relbias", {"kind": "alibi"}, False, 1.3, 1.15),
    "hierarchical B=64 L=1": ("hierarchical", {"block": 64, "levels": 1, "sinks": 0}, False, None, None),
    "hierarchical B=64 L=2 causal + 4 sinks": ("hierarchical", {"block": 64, "levels": 2, "sinks": 4}, True, None,
                                               None),
    "lsh": ("lsh", {}, False, None, None),
    "lsh causal": ("lsh", {}, True, None, None),
    "routed": ("routed", {}, False, None, None),
    "routed causal": ("routed", {}, True, None, None),
    "lowrank": ("lowrank", {}, False, None, None),
}
ALL_ROWS = [*VARIANTS, *OP_ROWS]


def keys_per_query(n: int, m: int, unit: int, before: int, after: int, sinks: int, causal: bool) -> float:
    """Mean number of allowed keys per query, from the band formula in O(N)."""
    p = torch.arange(n, dtype=torch.int64) + (m - n)
    base = torch.div(p, unit, rounding_mode="floor") * unit
    c = torch.minimum(p + 1, torch.tensor(m)) if causal else torch.full_like(p, m)
    lo = (base - before).clamp(min=0)
    hi = torch.minimum(base + unit + after, c)
    band = (hi - lo).clamp(min=0)
    g = torch.minimum(torch.tensor(sinks), c).clamp(min=0)
    sink_outside = g - (torch.minimum(g, hi) - torch.minimum(g, lo)).clamp(min=0)  # sinks not inside [lo, hi)
    return float((band + sink_outside).double().mean())


def bench(fn, rep_ms: float) -> float:
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=max(25, rep_ms / 4), rep=rep_ms, return_mode="median"))


def peak_extra_mib(fn) -> float:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    del out
    return peak / 2**20


def random_qkv(n: int):
    """The table's inputs at length n: bf16 (1, H, n, D) q, k, v from seed 0."""
    torch.manual_seed(0)
    return tuple(torch.randn(1, H, n, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))


def dense_sdpa(q, k, v, scale: float, rep_ms: float, log) -> dict:
    """{causal: {ms, tflops}} of dense F.scaled_dot_product_attention: every row's baseline, in the same run."""
    n = q.shape[2]
    sdpa = {}
    for causal in (False, True):
        ms = bench(lambda c=causal: F.scaled_dot_product_attention(q, k, v, is_causal=c, scale=scale), rep_ms)
        sdpa[causal] = dict(ms=ms, tflops=4 * n * keys_per_query(n, n, BIG, 0, 0, 0, causal) * D * H / ms / 1e9)
        log(f"N={n} dense SDPA causal={causal}: {ms:.3f} ms {sdpa[causal]['tflops']:.0f} TFLOP/s")
    return sdpa


def op_args(spec, params: dict, q, k, scale: float, causal: bool) -> list:
    """The op's arguments after (q, k, v, mask, key_padding): its tensors made for these shapes, ``params``
    (complete), scale, causal and softcap 0."""
    import numpy as np

    made = spec.tensors_for(params, tuple(q.shape), tuple(k.shape), 0)
    extra = [torch.from_numpy(np.asarray(made[t.name])).to(q.device) for t in spec.tensor_inputs]
    return [*extra, *[params[p] for p in spec.param_names], scale, causal, 0.0]


def flex_fns(q, k, v, unit, before, after, sinks, causal, scale, slopes=None):
    """Compiled flex_attention with the band's block mask; ``slopes``: plus ALiBi's −m_h·|i − j| score_mod."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    n, m = q.shape[2], k.shape[2]
    off = m - n

    def mask_mod(b, h, q_idx, kv_idx):
        p = q_idx + off
        base = (p // unit) * unit
        ok = ((kv_idx >= base - before) & (kv_idx < base + unit + after)) | (kv_idx < sinks)
        if causal:
            ok = ok & (kv_idx <= p)
        return ok

    if unit >= BIG and not causal:
        block_mask = None  # dense: flex with no block mask
    else:
        block_mask = create_block_mask(mask_mod, 1, 1, n, m, device=q.device, _compile=True)
    flex = torch.compile(flex_attention, dynamic=False)
    if slopes is None:
        return lambda: flex(q, k, v, block_mask=block_mask, scale=scale)

    def alibi(score, b, h, q_idx, kv_idx):
        return score - slopes[h] * (q_idx + off - kv_idx).abs()

    return lambda: flex(q, k, v, score_mod=alibi, block_mask=block_mask, scale=scale)


def flash_fn(q, k, v, unit, before, after, sinks, causal, scale, slopes=None):
    """FlashAttention-2 (torch's own build, ``aten._flash_attention_forward``) on the same keys where it can say
    which: dense, a sliding window |i − j| <= before (and <= after), ALiBi through its ``alibi_slopes``; None
    for segments, memory bands and sinks, which it has no way to express."""
    n, m = q.shape[2], k.shape[2]
    window = unit == 1 and sinks == 0 and n == m
    if not (unit >= BIG or window):
        return None
    kw = dict(scale=scale)
    if window:
        kw.update(window_size_left=before, window_size_right=0 if causal else after)
    if slopes is not None:
        kw.update(alibi_slopes=slopes.float().contiguous())
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))  # FlashAttention's (B, N, H, D), a view
    flash = torch.ops.aten._flash_attention_forward
    return lambda: flash(qt, kt, vt, None, None, n, m, 0.0, causal, False, **kw)[0].transpose(1, 2)


def band_call(name: str, q, k, v, scale: float, sink_logits: bool = False):
    """A VARIANTS row's call: the band launcher, its fast path off for rows marked "no fast path";
    ``sink_logits``: with GPT-OSS's learned sinks, one logit a head."""
    from attnopt.kernels import triton_band

    unit, before, after, sinks, causal, _ = VARIANTS[name]
    kw = dict(unit=unit, before=before, after=after, sinks=sinks, scale=scale, causal=causal)
    if sink_logits:
        kw["sink_logits"] = sink_logit_values(q)
    return lambda: triton_band._band_attention(q, k, v, **kw, fast_path="no fast path" not in name)


def sink_logit_values(q):
    """GPT-OSS's learned sinks for the ``--sink-logits`` rows: one logit a head, from well under to well over a
    row's scores."""
    return torch.linspace(-2.0, 6.0, q.shape[1], device=q.device)


def op_row(name: str, q, k, v, scale: float, sink_logits: bool = False):
    """(the op call, useful keys per query, Flex's arguments or None) for an OP_ROWS entry; None without a CUDA
    kernel for the variant (its torch code on the GPU is not what this table measures). ``sink_logits``: the
    call passes GPT-OSS's sinks where the variant takes them."""
    variant, params, causal, _, _ = OP_ROWS[name]
    n = q.shape[2]
    kp = torch.zeros(1, n, device=q.device) if "no block skipping" in name else None
    made = op_call(variant, params, causal, q, k, v, scale, key_padding=kp, sink_logits=sink_logits)
    if made is None:
        return None
    call, spec, params, extra = made
    flex = None
    if variant == "relbias":
        kpq = keys_per_query(n, n, BIG, 0, 0, 0, causal)
        flex = dict(unit=BIG, before=0, after=0, sinks=0, causal=causal, slopes=extra[0] * params["bias_scale"])
    elif variant == "hierarchical":
        kpq = hierarchical_keys_per_query(n, params["block"], params["levels"], params["sinks"], causal)
    elif variant in ("lsh", "routed"):
        # expected: a bucket's share of the keys per round (lsh) or route (routed), plus the local chunk; causal, the
        # keys at or before the query: half the bucket's on average, (C + 1) / 2 of the chunk's
        rounds, share = ((params["n_rounds"], n / params["n_buckets"]) if variant == "lsh"
                         else (params["top_k"], n / params["n_clusters"]))
        chunk = (params["chunk"] + 1) / 2 if causal else params["chunk"]
        kpq = rounds * (share / 2 if causal else share) + chunk + params["sinks"]
    else:  # lowrank: rank pooled keys
        kpq = params["rank"]
    return call, kpq, flex


def op_call(variant: str, params: dict, causal: bool, q, k, v, scale: float, key_padding=None,
            sink_logits: bool = False):
    """(the call of ``variant``'s torch op, its spec, its complete params, its tensor inputs); None where the
    variant has no CUDA kernel. ``sink_logits``: GPT-OSS's sinks as the last argument, where the op takes them."""
    from attnopt.kernels.registry import get_variant

    spec = get_variant(variant)
    if not torch._C._dispatch_has_kernel_for_dispatch_key(spec.torch_op.default.name(), "CUDA"):
        return None
    params = {**{p.name: p.default for p in spec.params}, **params}
    args = op_args(spec, params, q, k, scale, causal)
    if sink_logits and spec.serves_sink_logits:
        args.append(sink_logit_values(q))
    op = spec.torch_op  # resolved once: the property imports the op's module on every access
    return (lambda: op(q, k, v, None, key_padding, *args)), spec, params, args[:len(spec.tensor_inputs)]


def hierarchical_keys_per_query(n: int, block: int, levels: int, sinks: int, causal: bool) -> float:
    """Mean entries per query: the fine band and sinks, plus the pooled groups that hold a key."""
    from attnopt.kernels.hierarchical.op import coarse_columns

    fine = keys_per_query(n, n, block, block, 0 if causal else block, sinks, causal)
    nb = -(-n // block)
    qb = torch.arange(nb)
    start, end = coarse_columns(qb, nb, levels, causal)
    groups = (end.clamp(0, nb) > start.clamp(0, nb)).sum(1).double()  # per query block
    return fine + float(groups.mean())


def takes_sinks(name: str) -> bool:
    """Whether a row's call takes GPT-OSS's sink logits: every band row, and the ops whose spec serves them."""
    from attnopt.kernels.registry import get_variant

    return name in VARIANTS or get_variant(OP_ROWS[name][0]).serves_sink_logits


def run(ns, rep_ms, variants, log, no_flex=False, on_row=None, sink_logits=False) -> list[dict]:
    """Every row; ``on_row(rows)`` after each, so a run cut short keeps what it measured. ``sink_logits``: the
    rows whose variant takes GPT-OSS's sink logits, with them (the others as they are)."""
    rows = []
    scale = 1.0 / math.sqrt(D)
    for n in ns:
        q, k, v = random_qkv(n)
        sdpa = dense_sdpa(q, k, v, scale, rep_ms, log)
        for name in variants:
            t0 = time.time()
            sdpa_target = None
            if name in VARIANTS:
                unit, before, after, sinks, causal, target = VARIANTS[name]
                ours = band_call(name, q, k, v, scale, sink_logits)
                kpq = keys_per_query(n, n, unit, before, after, sinks, causal)
                flex_kw = dict(unit=unit, before=before, after=after, sinks=sinks, causal=causal)
            else:
                made = op_row(name, q, k, v, scale, sink_logits)
                if made is None:
                    log(f"N={n} {name}: no CUDA kernel registered for the op; skipped")
                    continue
                ours, kpq, flex_kw = made
                causal, target, sdpa_target = OP_ROWS[name][2], OP_ROWS[name][3], OP_ROWS[name][4]
            ours()
            torch.cuda.synchronize()
            ms = bench(ours, rep_ms)
            mem = peak_extra_mib(ours)
            flops = 4 * n * kpq * D * H
            tf = flops / ms / 1e9
            try:
                if no_flex or flex_kw is None:
                    raise RuntimeError("--no-flex" if no_flex else "not expressible in FlexAttention")
                t1 = time.time()
                flex = flex_fns(q, k, v, scale=scale, **flex_kw)
                flex()
                torch.cuda.synchronize()
                flex_compile_s = time.time() - t1
                flex_ms = bench(flex, rep_ms)
                flex_mem = peak_extra_mib(flex)
                # the same function, so the speed comparison is not between two different answers
                err = (ours().float() - flex().float()).abs().max().item()
            except Exception as exc:  # report, keep going
                log(f"  flex: {type(exc).__name__}: {exc}")
                flex_ms, flex_mem, err, flex_compile_s = float("nan"), float("nan"), float("nan"), 0.0
            flash_ms, flash_err = float("nan"), float("nan")
            fa = None if flex_kw is None or sink_logits else flash_fn(q, k, v, scale=scale, **flex_kw)
            if fa is not None:
                try:
                    flash_err = (ours().float() - fa().float()).abs().max().item()
                    flash_ms = bench(fa, rep_ms)
                except RuntimeError as exc:  # report, keep going
                    log(f"  flash: {type(exc).__name__}: {exc}")
            row = dict(
                variant=name + (" + sink logits" if sink_logits and takes_sinks(name) else ""), n=n,
                keys_per_query=kpq, ms=ms, tflops=tf, peak_mib=mem,
                flash_ms=flash_ms, speedup_vs_flash=flash_ms / ms, max_abs_diff_vs_flash=flash_err,
                sdpa_ms=sdpa[False]["ms"], sdpa_tflops=sdpa[False]["tflops"], sdpa_causal_ms=sdpa[True]["ms"],
                flex_ms=flex_ms, flex_peak_mib=flex_mem, max_abs_diff_vs_flex=err,
                speedup_vs_flex=flex_ms / ms, speedup_vs_sdpa=sdpa[causal]["ms"] / ms,
                frac_sdpa_tflops=tf / sdpa[False]["tflops"], flex_target=target, sdpa_time_target=sdpa_target,
            )
            row["meets_flex_target"] = None if target is None else bool(row["speedup_vs_flex"] >= target)
            row["meets_sdpa_time_target"] = None if sdpa_target is None else \
                bool(ms <= sdpa_target * sdpa[causal]["ms"])
            row["meets_tflops_target"] = bool(row["frac_sdpa_tflops"] >= 0.5)
            rows.append(row)
            if on_row:
                on_row(rows)
            log(f"N={n} {name}: {ms:.3f} ms {tf:.0f} TFLOP/s peak {mem:.0f} MiB | flex {flex_ms:.3f} ms "
                f"(x{row['speedup_vs_flex']:.2f}, compile {flex_compile_s:.0f}s) | "
                f"x{row['speedup_vs_sdpa']:.2f} vs SDPA | "
                f"{row['frac_sdpa_tflops'] * 100:.0f}% of SDPA TFLOP/s | diff {err:.3g} | "
                f"FA2 {flash_ms:.3f} ms (x{row['speedup_vs_flash']:.2f}, diff {flash_err:.3g}) | {time.time() - t0:.0f}s")
        del q, k, v
        torch.cuda.empty_cache()
    return rows


def markdown(rows: list[dict]) -> str:
    head = ("| variant | N | keys/query | ms | useful TFLOP/s | % dense SDPA TFLOP/s | peak extra MiB | "
            "FlexAttention ms | × vs Flex (target) | dense SDPA ms | × vs dense SDPA | FlashAttention-2 ms | "
            "× vs FA2 |")
    lines = [head, "|" + "---|" * 13]
    for r in rows:
        tgt = "" if r["flex_target"] is None else f" (≥{r['flex_target']}: {'ok' if r['meets_flex_target'] else 'MISS'})"
        frac = f"{r['frac_sdpa_tflops'] * 100:.0f}%" + ("" if r["meets_tflops_target"] else " MISS")
        sdpa_ms = r["sdpa_causal_ms"] if "causal" in r["variant"] else r["sdpa_ms"]
        st = r.get("sdpa_time_target")
        vs_sdpa = f"{r['speedup_vs_sdpa']:.2f}" if st is None else \
            f"{r['speedup_vs_sdpa']:.2f} (time ≤{st}×: {'ok' if r['meets_sdpa_time_target'] else 'MISS'})"
        lines.append(
            f"| {r['variant']} | {r['n']} | {r['keys_per_query']:.0f} | {r['ms']:.3f} | {r['tflops']:.0f} | {frac} | "
            f"{r['peak_mib']:.0f} | {r['flex_ms']:.3f} | {r['speedup_vs_flex']:.2f}{tgt} | {sdpa_ms:.3f} | "
            f"{vs_sdpa} | {_opt(r.get('flash_ms'))} | {_opt(r.get('speedup_vs_flash'), 2)} |")
    return "\n".join(lines)


def _opt(x, digits: int = 3) -> str:
    """A number for the table, a dash where the row has none (NaN or missing)."""
    return "-" if x is None or x != x else f"{x:.{digits}f}"


SWEEP_ROWS = ("segmented S=1024 + 4 sinks", "window W=1024", "memory S=M=1024 causal")


def parse_tile(text: str):
    """A tile configuration written ``MxNwWsS`` (tile rows, key columns, warps, pipeline stages), ``+ws`` at the end
    for warp specialisation: ``64x64w4s1`` is BandConfig(64, 64, 4, 1, TMA)."""
    import re

    from attnopt.kernels import triton_band

    m = re.fullmatch(r"(\d+)x(\d+)w(\d+)s(\d+)(\+ws)?", text)
    if m is None:
        raise argparse.ArgumentTypeError(f"{text!r}: a tile is written MxNwWsS, e.g. 64x64w4s1 (or 128x128w8s3+ws)")
    rows, cols, warps, stages = (int(g) for g in m.groups()[:4])
    return triton_band.BandConfig(rows, cols, warps, stages, True, bool(m.group(5)))


def parse_band(text: str) -> tuple:
    """A band to sweep that the table has no row for, ``band:UNIT,BEFORE,AFTER,SINKS`` with ``,causal`` at the end
    for a causal one (``band:512,512,0,0`` is memory with S = M = 512), as a VARIANTS entry."""
    parts = text.removeprefix("band:").split(",")
    causal = parts[-1] == "causal"
    try:
        unit, before, after, sinks = (int(p) for p in parts[:4])
        if len(parts) != 4 + causal or unit < 1 or min(before, after, sinks) < 0:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a band is written band:UNIT,BEFORE,AFTER,SINKS[,causal], "
                                         "e.g. band:1,511,511,0,causal") from None
    return unit, before, after, sinks, causal, None


def sweep(n: int, rep_ms: float, log, names=SWEEP_ROWS, tiles=None, repeats: int = 1) -> list[dict]:
    """Kernel-only timings of a few tile configurations (fast path off) for band rows and hierarchical rows.

    ``tiles`` replaces the lists below; ``repeats`` > 1 times every configuration of a row that many times, in
    turn (one round over the configurations, then the next), so that a drift of the GPU's clocks or of its
    neighbours falls on all of them alike."""
    from attnopt.kernels import triton_band, triton_hierarchical

    q, k, v = random_qkv(n)
    C = triton_band.BandConfig
    band_configs = [
        C(128, 128, 8, 3, True), C(128, 64, 8, 3, True), C(128, 64, 8, 2, True), C(64, 128, 4, 3, True),
        C(256, 64, 16, 3, True), C(256, 128, 16, 2, True), C(128, 128, 8, 3, True, True),
        C(128, 64, 8, 3, True, True), C(64, 64, 4, 1, True), C(64, 64, 4, 2, True), C(64, 64, 4, 3, True),
        C(128, 64, 8, 1, True), C(128, 128, 8, 1, True), C(64, 128, 4, 1, True), C(64, 32, 4, 1, True),
    ]
    # with more than one level the launcher caps the tile height at the block (64 here)
    pooled_configs = [C(128, 64, 8, 2, True), C(128, 128, 8, 2, True), C(128, 64, 8, 3, True), C(64, 64, 4, 2, True),
                      C(64, 64, 4, 3, True), C(128, 64, 4, 2, True), C(256, 64, 16, 2, True), C(64, 64, 4, 1, True)]
    out = []
    for name in names:
        if name in VARIANTS or name.startswith("band:"):
            unit, before, after, sinks, causal, _ = VARIANTS.get(name) or parse_band(name)
            kw = dict(unit=unit, before=before, after=after, sinks=sinks, scale=D ** -0.5, causal=causal)
            flops = 4 * n * keys_per_query(n, n, unit, before, after, sinks, causal) * D * H
            configs = band_configs

            def call(cfg, kw=kw):
                return triton_band._band_attention(q, k, v, **kw, config=cfg, fast_path=False)
        else:
            variant, params, causal, _, _ = OP_ROWS[name]
            if variant != "hierarchical":
                raise SystemExit(f"--sweep-rows: {name!r} has no tile configuration to sweep")
            flops = 4 * n * hierarchical_keys_per_query(n, params["block"], params["levels"], params["sinks"],
                                                        causal) * D * H
            configs = pooled_configs

            def call(cfg, params=params, causal=causal):
                return triton_hierarchical.hierarchical_attention(q, k, v, **params, scale=D ** -0.5, causal=causal,
                                                                 config=cfg)
        configs = tiles or configs
        ref, failed = None, set()
        for repeat in range(repeats):
            for i, cfg in enumerate(configs):
                if i in failed:
                    continue
                try:
                    o = call(cfg)
                    ref = o if ref is None else ref
                    diff = (o.float() - ref.float()).abs().max().item()
                    ms = bench(lambda cfg=cfg: call(cfg), rep_ms)
                    out.append(dict(variant=name, n=n, config=cfg.__dict__, ms=ms, tflops=flops / ms / 1e9,
                                    diff=diff, repeat=repeat))
                    log(f"sweep {name} N={n} {cfg}: {ms:.3f} ms {flops / ms / 1e9:.0f} TFLOP/s diff {diff:.3g}")
                except Exception as exc:
                    failed.add(i)
                    log(f"sweep {name} {cfg}: failed {type(exc).__name__}: {str(exc)[:200]}")
    return out


def fold_sweep(n: int, rep_ms: float, log) -> list[dict]:
    """Fast path / kernel time for whole-segment bands (``triton_band._fold_pays`` decides from these)."""
    from attnopt.kernels import triton_band

    q, k, v = random_qkv(n)
    out = []
    for seg in (64, 128, 256, 512, 1024):
        for prev, sinks in ((False, 0), (False, 4), (True, 0)):
            for causal in (False, True):
                kw = dict(unit=seg, before=seg if prev else 0, after=0, sinks=sinks, scale=D ** -0.5, causal=causal)
                # forced: timed even where _fold_pays declines it
                ms_fast = bench(lambda kw=kw: triton_band._segment_fast_path(
                    q, k, v, **kw, softcap=0.0, key_padding=None, mask=None, force=True), rep_ms)
                ms_kernel = bench(lambda kw=kw: triton_band._band_attention(q, k, v, **kw, fast_path=False), rep_ms)
                row = dict(n=n, segment=seg, prev=prev, sinks=sinks, causal=causal, fast_ms=ms_fast,
                           kernel_ms=ms_kernel, ratio=ms_fast / ms_kernel,
                           rule_takes_fast_path=triton_band._fold_pays(seg, prev, sinks > 0))
                out.append(row)
                log(f"fold sweep N={n} S={seg} prev={prev} sinks={sinks} causal={causal}: fast path {ms_fast:.3f} ms, "
                    f"kernel {ms_kernel:.3f} ms, ratio {row['ratio']:.2f}, rule takes the fast path: "
                    f"{row['rule_takes_fast_path']}")
    return out


def window_sink_sweep(n: int, rep_ms: float, log) -> list[dict]:
    """Band kernel / (cuDNN window + merge) time for windows with 4 sink keys (``triton_band._window_merge_pays``
    decides from these)."""
    from attnopt.kernels import cudnn_band, triton_band

    if not cudnn_band.available():
        log("window sink sweep: skipped, NVIDIA's cuDNN frontend is not installed (the [cudnn] extra)")
        return []
    q, k, v = random_qkv(n)
    out = []
    for w in (128, 256, 512, 1024):
        for causal in (False, True):
            kw = dict(before=w - 1, after=w - 1, sinks=4, scale=D ** -0.5, causal=causal)
            bounds = cudnn_band.diagonal_bounds(1, w - 1, w - 1, causal, n, n)
            # forced: timed even where _window_merge_pays declines it
            ms_merge = bench(lambda kw=kw, bounds=bounds: triton_band.window_sinks(
                q, k, v, **kw, sink_logits=None,
                window_lse=lambda: cudnn_band.window_lse_attention(q, k, v, *bounds, kw["scale"])), rep_ms)
            ms_kernel = bench(lambda kw=kw: triton_band._band_attention(q, k, v, unit=1, **kw, fast_path=False),
                              rep_ms)
            row = dict(n=n, window=w, causal=causal, merge_ms=ms_merge, kernel_ms=ms_kernel,
                       ratio=ms_kernel / ms_merge,
                       rule_takes_merge=triton_band._window_merge_pays(w - 1, w - 1, causal))
            out.append(row)
            log(f"window sink sweep N={n} W={w} causal={causal}: cuDNN + merge {ms_merge:.3f} ms, kernel "
                f"{ms_kernel:.3f} ms, kernel / merge {row['ratio']:.2f}, rule takes the merge: {row['rule_takes_merge']}")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[4096, 16384, 65536])
    ap.add_argument("--json", help="write all rows here")
    ap.add_argument("--md", help="also write the markdown table here")
    ap.add_argument("--rep-ms", type=float, default=200.0, help="do_bench repetition time per measurement")
    ap.add_argument("--variants", nargs="*", default=None,
                    help="rows whose name contains any of these (default: all; none with a sweep: the sweep "
                    "alone): " + ", ".join(ALL_ROWS))
    ap.add_argument("--no-flex", action="store_true", help="skip FlexAttention (its compiles take time)")
    ap.add_argument("--sink-logits", action="store_true",
                    help="every row whose variant takes GPT-OSS's learned sink logits (the band rows, hierarchical, "
                         "relbias, lsh, routed), with one a head (needs --no-flex: Flex and "
                         "FlashAttention have no sink column, so their rows would compute another function)")
    ap.add_argument("--head-dim", type=int, default=128,
                    help="D of q, k and v (default %(default)s); 192 is DeepSeek MLA's q·k width, to which the "
                         "rewrites pad its 128-wide values")
    ap.add_argument("--sweep", type=int, nargs="+", default=[], help="N for a tile-configuration sweep first")
    ap.add_argument("--fold-sweep", type=int, nargs="+", default=[],
                    help="N for a fast path / kernel comparison of whole-segment bands first")
    ap.add_argument("--window-sink-sweep", type=int, nargs="+", default=[],
                    help="N for a cuDNN-window-and-merge / band-kernel comparison of windows with 4 sinks first")
    ap.add_argument("--sweep-rows", nargs="+", default=list(SWEEP_ROWS),
                    help="rows the sweep times (band rows and hierarchical ones), or bands of no row written "
                         "band:UNIT,BEFORE,AFTER,SINKS[,causal]")
    ap.add_argument("--sweep-tiles", nargs="+", type=parse_tile, default=None, metavar="MxNwWsS",
                    help="the sweep's tile configurations instead of its own lists, e.g. 64x64w4s1 64x64w4s3")
    ap.add_argument("--sweep-repeats", type=int, default=1,
                    help="time each configuration this many times, in turn with the others (default 1)")
    args = ap.parse_args(argv)
    if args.sink_logits and not args.no_flex:
        ap.error("--sink-logits needs --no-flex")
    if not torch.cuda.is_available():
        print("benchmarks/kernels.py needs a CUDA GPU", file=sys.stderr)
        return 2
    globals()["D"] = args.head_dim  # every row, FLOP count and reference here reads the module's D
    import torch._dynamo as dynamo

    dynamo.config.cache_size_limit = 256
    dynamo.config.accumulated_cache_size_limit = 4096

    def log(msg):
        print(msg, flush=True)

    import triton

    from attnopt.kernels import cudnn_band, triton_band

    # The window rows take cuDNN's diagonal band only where its frontend is installed: say which ran.
    meta = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
                dtype="bfloat16", B=1, H=H, D=D, sdpa_lse_setting=triton_band.SDPA_LSE,
                cudnn_frontend=cudnn_band.frontend_version(), cudnn=torch.backends.cudnn.version())
    log(json.dumps(meta))
    result = dict(meta=meta)
    for bad in [r for r in args.sweep_rows if r not in ALL_ROWS]:
        if bad.startswith("band:"):
            try:
                parse_band(bad)
                continue
            except argparse.ArgumentTypeError as exc:
                print(f"--sweep-rows: {exc}", file=sys.stderr)
                return 2
        print(f"--sweep-rows: no row {bad!r}; rows: {', '.join(ALL_ROWS)}, or band:UNIT,BEFORE,AFTER,SINKS[,causal]",
              file=sys.stderr)
        return 2
    result["sweep"] = [r for n in args.sweep
                       for r in sweep(n, args.rep_ms, log, args.sweep_rows, args.sweep_tiles, args.sweep_repeats)]
    result["fold_sweep"] = [r for n in args.fold_sweep for r in fold_sweep(n, args.rep_ms, log)]
    result["window_sink_sweep"] = [r for n in args.window_sink_sweep for r in window_sink_sweep(n, args.rep_ms, log)]
    variants = ALL_ROWS if args.variants is None else [r for r in ALL_ROWS if any(w in r for w in args.variants)]
    sweeps_only = args.variants == [] and (args.sweep or args.fold_sweep or args.window_sink_sweep)
    if not variants and not sweeps_only:
        print(f"--variants {' '.join(args.variants)}: no row matches; rows: {', '.join(ALL_ROWS)}", file=sys.stderr)
        return 2

    def write(rows):
        result["rows"] = rows
        result["meta"]["cudnn_lse_parts_ran"] = triton_band._cudnn_runs
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=1)
        if args.md:
            with open(args.md, "w") as f:
                f.write(markdown(rows) + "\n")

    rows = [] if sweeps_only else run(args.n, args.rep_ms, variants, log, args.no_flex, on_row=write,
                                      sink_logits=args.sink_logits)
    write(rows)
    table = markdown(rows)
    print()
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
