"""The Triton forms of lsh, routed (``kernels.triton_buckets``) and lowrank (``kernels.triton_lowrank``) against
each variant's reference.

- Interpreted (CI): small sizes under TRITON_INTERPRET=1 on the CPU. The interpreter must be on before
  triton.jit decorates the kernels, so every case runs in one subprocess started with the variable set (this
  file, run as a script) and is then checked as its own test. The cases call each variant's
  ``op.cuda_forward`` (the function registered for CUDA) with the op's arguments, on CPU tensors.
- CUDA: full sizes (N up to 65536), skipped without a GPU. lsh's and routed's references would be N×M there,
  so they are computed for a sample of query rows from the same bucket ids; lowrank's reference is O(N·r) and
  runs whole.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from triton_interpreter import report, run_cases_in_subprocess

# --- the cases -------------------------------------------------------------------------------------

# name: (variant, params, shape (B, H, Hkv, N, M, D), dtype, extras)
CASES = {
    "lsh_rounds_sinks_gqa_causal_masks_bf16": (
        "lsh", {"n_buckets": 2, "n_rounds": 3, "chunk": 3, "seed": 1, "sinks": 5}, (1, 2, 1, 20, 20, 16),
        torch.bfloat16, {"causal": True, "kp": True, "mask": True, "softcap": 3.0}),
    "lsh_ragged_head_dim_fp32": (
        "lsh", {"n_buckets": 4, "n_rounds": 1, "chunk": 4, "seed": 0, "sinks": 0}, (2, 2, 2, 21, 21, 24),
        torch.float32, {}),
    "lsh_many_buckets_fp16_presorted": (
        "lsh", {"n_buckets": 128, "n_rounds": 1, "chunk": 4, "seed": 2, "sinks": 1}, (1, 2, 1, 24, 24, 16),
        torch.float16, {"causal": True, "presorted": True}),
    "lsh_exact_limit": (
        "lsh", {"n_buckets": 1, "n_rounds": 2, "chunk": 3, "seed": 5, "sinks": 2}, (1, 2, 1, 18, 18, 16),
        torch.float32, {"causal": True, "kp": True, "dense": True}),
    # causal with nothing else on top: single-bucket blocks run the keys before their earliest query unmasked
    "lsh_causal_plain_gqa_fp32": (
        "lsh", {"n_buckets": 2, "n_rounds": 1, "chunk": 3, "seed": 3, "sinks": 2}, (1, 4, 2, 70, 70, 16),
        torch.float32, {"causal": True}),
    "lsh_causal_plain_presorted_bf16": (
        "lsh", {"n_buckets": 2, "n_rounds": 1, "chunk": 5, "seed": 6, "sinks": 0}, (1, 2, 2, 90, 90, 16),
        torch.bfloat16, {"causal": True, "presorted": True}),
    "routed_top2_gqa_causal_padding_bf16": (
        "routed", {"n_clusters": 4, "top_k": 2, "iters": 0, "seed": 0, "chunk": 3, "sinks": 2}, (1, 2, 1, 20, 20, 16),
        torch.bfloat16, {"causal": True, "kp": True}),
    "routed_many_clusters_fp32": (
        "routed", {"n_clusters": 64, "top_k": 1, "iters": 3, "seed": 0, "chunk": 4, "sinks": 1}, (1, 2, 2, 20, 20, 16),
        torch.float32, {"mask": True}),
    "routed_exact_limit": (
        "routed", {"n_clusters": 1, "top_k": 3, "iters": 1, "seed": 0, "chunk": 3, "sinks": 1}, (1, 2, 1, 18, 18, 16),
        torch.float32, {"kp": True, "dense": True}),
    # GPT-OSS's learned sink logits: one more denominator term per head where the local kernel ends the softmax;
    # a batch whose every key is padded (rows with no key: 0 with or without a sink), rounds carried in the state
    "lsh_sink_logits_rounds_gqa_causal_padding_fp32": (
        "lsh", {"n_buckets": 4, "n_rounds": 2, "chunk": 3, "seed": 1, "sinks": 2}, (2, 4, 2, 20, 20, 16),
        torch.float32, {"causal": True, "kp": True, "no_keys": True, "sinkl": True}),
    "routed_sink_logits_top2_gqa_causal_mask_bf16": (
        "routed", {"n_clusters": 4, "top_k": 2, "iters": 1, "seed": 0, "chunk": 3, "sinks": 1}, (1, 4, 2, 20, 20, 16),
        torch.bfloat16, {"causal": True, "mask": True, "sinkl": True}),
    "routed_sink_logits_softcap_fp32": (
        "routed", {"n_clusters": 3, "top_k": 1, "iters": 2, "seed": 0, "chunk": 4, "sinks": 0}, (1, 2, 2, 21, 21, 24),
        torch.float32, {"softcap": 2.0, "sinkl": True}),
    # one round with nothing on top: on CUDA the buckets go through cuDNN's variable-length attention
    # (``cudnn_varlen``); here a torch stand-in of its contract serves them, rows of a bucket with no key NaN,
    # so the local kernel's reading of that sorted state (and its masking of empty buckets) is what is checked
    "lsh_varlen_state_gqa_sinks_bf16": (
        "lsh", {"n_buckets": 4, "n_rounds": 1, "chunk": 3, "seed": 1, "sinks": 2}, (1, 4, 2, 40, 40, 16),
        torch.bfloat16, {"varlen": True}),
    "lsh_varlen_state_empty_buckets_fp16": (
        "lsh", {"n_buckets": 32, "n_rounds": 1, "chunk": 4, "seed": 2, "sinks": 0}, (2, 2, 1, 30, 30, 24),
        torch.float16, {"varlen": True, "sinkl": True}),
    "routed_varlen_state_bf16": (
        "routed", {"n_clusters": 3, "top_k": 1, "iters": 2, "seed": 0, "chunk": 4, "sinks": 1}, (1, 2, 2, 21, 21, 16),
        torch.bfloat16, {"varlen": True}),
    "pool_gqa_padding_cross_bf16": (
        "lowrank", {"rank": 4, "method": "pool", "pinv_steps": 6}, (2, 2, 1, 20, 19, 16), torch.bfloat16,
        {"kp": True, "softcap": 2.0}),
    "pool_equal_groups_sdpa": (
        "lowrank", {"rank": 5, "method": "pool", "pinv_steps": 6}, (1, 2, 2, 16, 20, 16), torch.float32, {}),
    "pool_exact_limit": (
        "lowrank", {"rank": 40, "method": "pool", "pinv_steps": 6}, (1, 2, 1, 16, 17, 16), torch.float32,
        {"kp": True, "dense": True}),
    "nystrom_padding_fp32": (
        "lowrank", {"rank": 5, "method": "nystrom", "pinv_steps": 6}, (1, 2, 1, 20, 17, 16), torch.float32,
        {"kp": True, "softcap": 2.0}),
    "nystrom_bf16": (
        "lowrank", {"rank": 4, "method": "nystrom", "pinv_steps": 6}, (1, 2, 2, 16, 16, 16), torch.bfloat16, {}),
}


def tolerance(dtype: torch.dtype, variant: str, params: dict) -> float:
    """Bound on ‖out − ref‖ / ‖ref‖: fp32 far under 1e-4; half precision to its rounding. nystrom's final
    values (pinv · landmarks' attention) are rounded to the query dtype once more."""
    if dtype == torch.float32:
        return 1e-4
    return 2e-2 if params.get("method") == "nystrom" else 1.2e-2


def make_inputs(shape, dtype, extras, seed=0, device="cpu"):
    B, H, Hkv, N, M, D = shape
    gen = torch.Generator(device=device).manual_seed(seed)
    q, k, v = (torch.randn(s, generator=gen, device=device).to(dtype)
               for s in ((B, H, N, D), (B, Hkv, M, D), (B, Hkv, M, D)))
    kw = dict(scale=1.0 / math.sqrt(D), causal=extras.get("causal", False), softcap=extras.get("softcap", 0.0),
              mask=None, key_padding=None)
    if extras.get("kp"):
        kp = torch.zeros(B, M, device=device)
        kp[0, M - 3:] = float("-inf")
        kp[-1, M // 3] = torch.finfo(torch.float32).min
        if extras.get("no_keys"):
            kp[-1] = float("-inf")
        kw["key_padding"] = kp
    if extras.get("mask"):
        kw["mask"] = torch.randn(1, H, N, M, generator=gen, device=device)
    if extras.get("sinkl"):  # one a head: −inf among them (no sink) and one large enough to take most of a row
        kw["sink_logits"] = torch.tensor([2.5, -1.0, float("-inf"), 4.0], device=device).repeat(-(-H // 4))[:H]
    return q, k, v, kw


def run_triton(variant, params, q, k, v, kw, config=None):
    """The function registered for CUDA, called as the op calls it (spec order)."""
    from attnopt.kernels.registry import get_variant

    spec = get_variant(variant)
    extra = spec.tensors_for(params, tuple(q.shape), tuple(k.shape))
    args = [torch.as_tensor(extra[t.name]).to(q.device) for t in spec.tensor_inputs] + \
        [params[p] for p in spec.param_names]
    args += [kw["scale"], kw["causal"], kw["softcap"]] + ([kw["sink_logits"]] if "sink_logits" in kw else [])
    forward = spec._module("op").cuda_forward
    if config is None:
        return forward(q, k, v, kw["mask"], kw["key_padding"], *args)
    from attnopt.kernels import triton_buckets

    original = triton_buckets.default_config
    triton_buckets.default_config = lambda *a: config
    try:
        return forward(q, k, v, kw["mask"], kw["key_padding"], *args)
    finally:
        triton_buckets.default_config = original


def torch_varlen_lse(q, k, v, entries, max_q, max_k, d, scale):
    """``cudnn_varlen.lse_attention``'s contract in torch, for the interpreter. Rows of an entry with no key are
    undefined there: NaN here, so that a caller which read them would fail."""
    out, lse = torch.zeros_like(q), torch.zeros(q.shape[0])
    width = q.shape[1]
    row, q_off, q_len, k_off, k_len = entries.tolist()
    assert row[-1] == q.shape[0] and q_off[-1] == q.shape[0] * width and k_off[-1] == k.shape[0] * width
    for a, off, n, c, m in zip(row[:-1], q_off, q_len, k_off, k_len):
        assert off == a * width and c % width == 0 and n <= max_q and m <= max_k
        c //= width
        if n and not m:
            out[a:a + n], lse[a:a + n] = float("nan"), float("nan")
        elif n:
            s = q[a:a + n, :d].float() @ k[c:c + m, :d].float().T * scale
            lse[a:a + n] = torch.logsumexp(s, -1)
            out[a:a + n, :d] = (torch.softmax(s, -1) @ v[c:c + m, :d].float()).to(q.dtype)
    return out, lse


def run_case(name: str) -> dict:
    from attnopt.kernels import cudnn_varlen, triton_buckets
    from attnopt.kernels.reference import dense_attention
    from kernel_harness import run_reference

    variant, params, shape, dtype, extras = CASES[name]
    q, k, v, kw = make_inputs(shape, dtype, extras)
    config = None
    if extras.get("presorted"):
        config = triton_buckets.BucketConfig(**{**triton_buckets.default_config(16, dtype, q.device).__dict__,
                                                "presorted": True})
    calls = []
    saved = cudnn_varlen.eligible, cudnn_varlen.lse_attention, triton_buckets.VARLEN_FROM_PAIRS
    if extras.get("varlen"):  # at any size: the pair threshold is the host's concern on CUDA
        cudnn_varlen.eligible = lambda *a: True
        cudnn_varlen.lse_attention = lambda *a: calls.append(1) or torch_varlen_lse(*a)
        triton_buckets.VARLEN_FROM_PAIRS = 0
    try:
        out = run_triton(variant, params, q, k, v, kw, config)
    finally:
        cudnn_varlen.eligible, cudnn_varlen.lse_attention, triton_buckets.VARLEN_FROM_PAIRS = saved
    ref = run_reference(variant, q.float(), k.float(), v.float(), params, **kw)
    result = dict(rel=_rel(out, ref), finite=bool(torch.isfinite(out).all()), dtype=str(dtype), varlen_calls=len(calls),
                  shape_ok=tuple(out.shape) == tuple(q.shape) and out.dtype == q.dtype)
    if extras.get("dense"):  # the exact limit: dense attention itself
        result["rel_dense"] = _rel(out, dense_attention(q.float(), k.float(), v.float(), **kw))
    return result


def bucket_ids_match() -> dict:
    """The Triton projections give the torch bucket ids exactly (lsh hash; routed clusters and routes)."""
    from attnopt.kernels import triton_buckets
    from attnopt.kernels.lsh import SPEC as LSH
    from attnopt.kernels.lsh.hashing import hash_buckets
    from attnopt.kernels.routed.clusters import centroids, distinct, key_weights, route

    out = {}
    # bf16 rows take the split products (two bf16 terms of the fp32 side), fp32 rows three tf32 products
    for dtype in (torch.float32, torch.bfloat16):
        q, k, _, kw = make_inputs((2, 2, 1, 24, 24, 24), dtype, {"kp": True}, seed=3)
        for b in (1, 6, 32):
            p = {"n_buckets": b, "n_rounds": 2, "chunk": 4, "seed": 4, "sinks": 0}
            rot = torch.from_numpy(LSH.make_tensors(p, q.shape, k.shape)["rotations"])
            got = triton_buckets.project_top(q, rot[None, None], mod=b, signed=True)
            out[f"lsh_b{b}_{dtype}"] = bool(torch.equal(got.long(), hash_buckets(q, rot, b)))
        for c, t in ((5, 2), (3, 3), (30, 1)):  # 30 > M: repeated centroids take nothing
            mu = centroids(k, key_weights(kw["key_padding"], k.shape[2], k.device), c, 2)
            bias = torch.where(distinct(mu), 0.0, float("-inf"))
            w = mu.transpose(-1, -2)[:, :, None]
            qb = triton_buckets.project_top(q, w, top=min(t, c), signed=False, col_bias=bias)
            kb = triton_buckets.project_top(k, w, top=1, signed=False, normalize=True, col_bias=bias)
            ref_q, ref_k = route(q, k, kw["key_padding"], n_clusters=c, top_k=t, iters=2)
            out[f"routed_c{c}_t{t}_{dtype}"] = bool(torch.equal(qb.long(), ref_q)
                                                    and torch.equal(kb.long(), ref_k[:, :, :1]))
    return out


def kmeans_match() -> dict:
    """One Lloyd step in Triton (``triton_kmeans.lloyd_sums``) gives the torch step's sums and masses: key
    padding weights, GQA-shaped batches, a ragged head dim, several programs per head, repeated centroids (c > M)
    and bf16 keys; then whole k-means runs reach the same centroids."""
    from attnopt.kernels import triton_kmeans
    from attnopt.kernels.routed.clusters import centroids, distinct, key_weights, lloyd_sums

    out = {}
    for name, (shape, dtype, c) in {"kp_ragged": ((2, 2, 1, 150, 150, 24), torch.float32, 5),
                                    "repeated": ((1, 2, 2, 20, 20, 16), torch.float32, 30),
                                    "bf16": ((1, 2, 2, 70, 70, 32), torch.bfloat16, 9),
                                    "wide": ((1, 1, 1, 40, 40, 160), torch.float32, 6)}.items():
        _, k, _, kw = make_inputs(shape, dtype, {"kp": True}, seed=7)
        w = key_weights(kw["key_padding"], k.shape[2], k.device)
        mu = centroids(k, w, c, 1)
        keep = distinct(mu)
        want, got = lloyd_sums(k, w, mu, keep), triton_kmeans.lloyd_sums(k, w, mu, keep)
        out[f"{name}_sums"] = bool(torch.allclose(got[0], want[0], atol=1e-4, rtol=1e-5))
        out[f"{name}_mass"] = bool(torch.allclose(got[1], want[1], atol=1e-5, rtol=1e-6))
        out[f"{name}_centroids"] = bool(torch.allclose(centroids(k, w, c, 3, triton_kmeans.lloyd_sums),
                                                       centroids(k, w, c, 3), atol=1e-5))
        # the CUDA path's whole k-means (the step and the update launches), with distinct() of its result
        for iters in (0, 2):
            mu_t, bias_t = triton_kmeans.centroids(k, w, c, iters)
            mu = centroids(k, w, c, iters)
            out[f"{name}_fused_{iters}_centroids"] = bool(torch.allclose(mu_t, mu, atol=1e-5))
            out[f"{name}_fused_{iters}_repeated"] = bool(torch.equal(bias_t, torch.where(distinct(mu), 0.0,
                                                                                         float("-inf"))))
    return out


def causal_cuts_match() -> dict:
    """``triton_buckets.causal_cuts`` against its definition, by brute force over every key: skewed and empty
    buckets, several query heads per kv head, a KV-cache offset (M > N), ragged last tiles, several rounds."""
    from attnopt.kernels import triton_buckets
    from attnopt.kernels.triton_sort import sort_buckets

    gen = torch.Generator().manual_seed(8)
    out = {}
    for name, (B, Hkv, rep, R, N, M, nb, block_m) in {"plain": (1, 2, 1, 1, 70, 70, 4, 16),
                                                      "gqa_cache_rounds": (2, 1, 3, 2, 45, 61, 6, 16),
                                                      "skewed_one_tile": (1, 1, 1, 1, 20, 20, 3, 64),
                                                      "one_bucket": (1, 1, 1, 1, 200, 200, 2, 16)}.items():
        qb = torch.randint(0, nb, (B, Hkv, R, rep * N), generator=gen, dtype=torch.int32)
        kb = torch.randint(0, nb, (B, Hkv, R, M), generator=gen, dtype=torch.int32)
        if name.startswith("skewed"):
            qb[..., : rep * N // 2], kb[..., 1::2] = 0, 2  # bucket 1 may be empty
        if name == "one_bucket":  # the binary search spans every key
            qb[:], kb[:] = 1, 1
        q_sorted, q_perm, _, _ = sort_buckets(qb, nb)
        k_sorted, k_perm, k_start, k_end = sort_buckets(kb, nb)
        full, ends = triton_buckets.causal_cuts(q_sorted, q_perm, k_perm, k_start, k_end, block_m, N, M)
        pos = (q_perm.long() % N) + (M - N)
        key = k_sorted.long() * M + k_perm.long()  # (bucket, position) ascends along the sorted keys
        ok = True
        for t in range(-(-rep * N // block_m)):
            block = slice(t * block_m, min((t + 1) * block_m, rep * N))
            first = q_sorted[..., block.start].long() * M + pos[..., block].amin(-1)
            last = q_sorted[..., block.stop - 1].long() * M + pos[..., block].amax(-1)
            ok &= torch.equal(full[..., t].long(), (key <= first[..., None]).sum(-1))
            ok &= torch.equal(ends[..., t].long(), (key <= last[..., None]).sum(-1))
        out[name] = bool(ok)
    return out


def bucket_sort_match() -> dict:
    """``triton_sort.sort_buckets`` equals torch.sort(stable=True) and searchsorted exactly: several programs per
    sequence (rows past one CHUNK), a bucket holding every row, empty buckets, one bucket, int64 ids, and ids
    too many for a one-hot tile (the torch fallback)."""
    from attnopt.kernels import triton_sort

    gen = torch.Generator().manual_seed(6)
    out = {}
    chunk = triton_sort.CHUNK
    for name, (lead, rows, nb, ids) in {
        "ragged": ((2, 3, 2), 37, 5, None),
        "programs": ((1, 2, 1), 2 * chunk + 300, 32, None),
        "one_bucket_full": ((1, 1, 1), chunk + 5, 8, "same"),
        "single": ((2, 1, 1), 50, 1, None),
        "many": ((1, 1, 2), 700, 300, None),
        "fallback": ((1, 1, 1), 400, triton_sort.MAX_BUCKETS + 1, None),
    }.items():
        x = torch.randint(0, nb, (*lead, rows), generator=gen)
        if ids == "same":
            x = torch.full_like(x, nb - 2)
        x = x if name == "ragged" else x.to(torch.int32)  # int64 ids in one case
        srt, perm, start, end = triton_sort.sort_buckets(x, nb)
        want, want_perm = torch.sort(x.to(torch.int32), dim=-1, stable=True)
        every = torch.arange(nb, dtype=torch.int32).expand(*lead, nb).contiguous()
        out[name] = bool(torch.equal(srt, want) and torch.equal(perm, want_perm.to(torch.int32))
                         and torch.equal(start, torch.searchsorted(want, every, out_int32=True))
                         and torch.equal(end, torch.searchsorted(want, every, right=True, out_int32=True))
                         and perm.dtype == start.dtype == torch.int32)
    return out


def sort_keys_match() -> dict:
    """``sort_keys`` gives each round's rows in the permutation's order, the head dim padded with zeros; strided
    inputs (a transposed (B, M, Hkv, D) layout) and more than one round."""
    from attnopt.kernels import triton_buckets

    gen = torch.Generator().manual_seed(5)
    B, Hkv, R, M, D = 2, 3, 2, 37, 24
    k = torch.randn(B, M, Hkv, D, generator=gen, dtype=torch.float16).transpose(1, 2)
    v = torch.randn(B, M, Hkv, D, generator=gen, dtype=torch.float16).transpose(1, 2)
    perm = torch.stack([torch.randperm(M, generator=gen) for _ in range(B * Hkv * R)]).view(B, Hkv, R, M)
    ks, vs = triton_buckets.sort_keys(k, v, perm.to(torch.int32), 32)
    idx = perm[..., None].expand(B, Hkv, R, M, D)
    want = [torch.nn.functional.pad(torch.gather(t[:, :, None].expand(B, Hkv, R, M, D), 3, idx), (0, 32 - D))
            for t in (k, v)]
    # queries: rows h·N + i of a kv head's rep query heads, round 0's order, from a transposed layout
    rep, N = 2, 19
    q = torch.randn(B, N, Hkv * rep, D, generator=gen, dtype=torch.float16).transpose(1, 2)
    q_perm = torch.stack([torch.randperm(rep * N, generator=gen) for _ in range(B * Hkv * R)]).view(B, Hkv, R, -1)
    qs, inv = triton_buckets.sort_queries(q, q_perm.to(torch.int32), 32)
    rows = q.reshape(B, Hkv, rep * N, D)  # heads hk·rep + j hold rows j·N + i
    want_q = torch.nn.functional.pad(torch.gather(rows, 2, q_perm[:, :, 0, :, None].expand(-1, -1, -1, D)),
                                     (0, 32 - D))
    want_inv = torch.argsort(q_perm[:, :, :1], dim=-1)  # the row's slot
    return {"keys": bool(torch.equal(ks, want[0])), "values": bool(torch.equal(vs, want[1])),
            "contiguous": ks.is_contiguous() and tuple(ks.shape) == (B, Hkv, R, M, 32),
            "queries": bool(torch.equal(qs, want_q)) and tuple(qs.shape) == (B, Hkv, rep * N, 32),
            "inverse": bool(torch.equal(inv.long(), want_inv)) and inv.dtype == torch.int32}


def bucket_entries_match() -> dict:
    """``bucket_entries``: cuDNN's entry table for round 0 from the sort's slots, against its definition: empty
    buckets, several (batch, kv head) groups and rounds, more buckets than a one-program tile of 16."""
    from attnopt.kernels import triton_buckets
    from attnopt.kernels.triton_sort import sort_buckets

    gen = torch.Generator().manual_seed(9)
    out = {}
    for name, (B, Hkv, R, rows, m, nb, width) in {"plain": (1, 1, 1, 40, 40, 4, 16),
                                                  "groups_rounds_empty": (2, 3, 2, 30, 25, 20, 24)}.items():
        _, _, q_start, q_end = sort_buckets(torch.randint(0, nb // 2 + 1, (B, Hkv, R, rows), generator=gen), nb)
        _, _, k_start, k_end = sort_buckets(torch.randint(0, nb, (B, Hkv, R, m), generator=gen), nb)
        table = triton_buckets.bucket_entries(q_start, q_end, k_start, k_end, rows, m, width)
        g = torch.arange(B * Hkv)[:, None]
        q_row = (q_start[:, :, 0].reshape(-1, nb) + g * rows).flatten()
        k_row = (k_start[:, :, 0].reshape(-1, nb) + g * m).flatten()
        want = torch.stack([torch.cat([q_row, torch.tensor([B * Hkv * rows])]),
                            torch.cat([q_row, torch.tensor([B * Hkv * rows])]) * width,
                            torch.cat([(q_end - q_start)[:, :, 0].flatten(), torch.tensor([0])]),
                            torch.cat([k_row, torch.tensor([B * Hkv * m])]) * width,
                            torch.cat([(k_end - k_start)[:, :, 0].flatten(), torch.tensor([0])])])
        out[name] = bool(torch.equal(table.long(), want)) and table.dtype == torch.int32
    return out


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-30))


# --- interpreted (CI) ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def interpreted_results() -> dict:
    return run_cases_in_subprocess(str(Path(__file__).resolve()))


@pytest.mark.parametrize("name", sorted(CASES))
def test_interpreted(interpreted_results, name):
    r = interpreted_results[name]
    assert "error" not in r, r.get("error")
    assert r["finite"] and r["shape_ok"], r
    variant, params, _, dtype, extras = CASES[name]
    assert r["varlen_calls"] == (1 if extras.get("varlen") else 0), r  # the stand-in served exactly those cases
    assert r["rel"] <= tolerance(dtype, variant, params), r
    if "rel_dense" in r:
        assert r["rel_dense"] <= tolerance(dtype, variant, params), r


# Checks that are not attention cases: each function above returns {what: passed}.
CHECKS = {"bucket_ids": bucket_ids_match, "sort_keys": sort_keys_match, "bucket_entries": bucket_entries_match,
          "kmeans": kmeans_match,
          "bucket_sort": bucket_sort_match, "causal_cuts": causal_cuts_match}


@pytest.mark.parametrize("check", sorted(CHECKS))
def test_interpreted_check(interpreted_results, check):
    """The Triton bucket ids, key and query sort, cuDNN's entry table, k-means, counting sort and causal cuts against
    their torch forms."""
    r = interpreted_results[check]
    assert "error" not in r, r.get("error")
    assert r and all(r.values()), r


def test_triton_forms_are_registered_for_cuda():
    """Each op has a CUDA kernel (its Triton form, given to define_op as ``cuda=``); the CPU keeps the torch form."""
    from attnopt.kernels.registry import get_variant

    for name in ("lsh", "routed", "lowrank"):
        op = get_variant(name).torch_op
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op.default.name(), "CUDA"), name
        assert "cuda=cuda_forward" in Path(get_variant(name)._module("op").__file__).read_text(), name


# --- CUDA, full sizes -------------------------------------------------------------------------------


def sampled_bucket_reference(q, k, v, q_buckets, k_buckets, rows, *, chunk, sinks, scale, causal, softcap=0.0,
                             key_padding=None, mask=None, sink_logits=None):
    """lsh/routed attention for query rows ``rows`` from the bucket ids, in fp32 (the spec's rule)."""
    from attnopt.kernels.reference import softmax_with_sink

    B, H, N, D = q.shape
    Hkv, M = k.shape[1], k.shape[2]
    rep = H // Hkv
    kb = k_buckets.repeat_interleave(rep, dim=1)  # (B, H, R, M)
    qb = q_buckets[..., rows]  # (B, H, R, n)
    same = (qb[..., :, None] == kb[..., None, :]).any(dim=2)  # (B, H, n, M)
    p = (rows + (M - N))[:, None]
    j = torch.arange(M, device=q.device)[None, :]
    allowed = same | (torch.div(p, chunk, rounding_mode="floor") == torch.div(j, chunk, rounding_mode="floor"))
    allowed = allowed | (j < sinks)
    if causal:
        allowed = allowed & (j <= p)
    s = (q[:, :, rows].float() @ k.float().repeat_interleave(rep, 1).transpose(-1, -2)) * scale
    if softcap:
        s = softcap * torch.tanh(s / softcap)
    s = s.masked_fill(~allowed, float("-inf"))
    if key_padding is not None:
        s = s + key_padding.float()[:, None, None, :]
    if mask is not None:
        s = s + mask[:, :, rows].float()
    probs = softmax_with_sink(s, sink_logits)
    return torch.where(torch.isnan(probs), 0.0, probs) @ v.float().repeat_interleave(rep, 1)


GPU_CASES = {
    # name: (variant, params, N, extras). One round with nothing on top takes cuDNN's variable-length attention
    # for the buckets where the frontend is installed (``cudnn_varlen``); "cudnn": False keeps the bucket kernel.
    "lsh_b32": ("lsh", {"n_buckets": 32, "n_rounds": 1, "chunk": 64, "seed": 0, "sinks": 0}, 65536, {}),
    "lsh_b32_kernel": ("lsh", {"n_buckets": 32, "n_rounds": 1, "chunk": 64, "seed": 0, "sinks": 0}, 65536,
                       {"cudnn": False}),
    # every key in one bucket: 31 buckets hold queries and no key (cuDNN entries with no key, masked after)
    "lsh_keys_one_bucket_sinks": ("lsh", {"n_buckets": 32, "n_rounds": 1, "chunk": 64, "seed": 0, "sinks": 4},
                                  16384, {"keys_alike": True}),
    "lsh_gqa_fp16_d64_sink_logits": ("lsh", {"n_buckets": 16, "n_rounds": 1, "chunk": 64, "seed": 0, "sinks": 4},
                                     16384, {"Hkv": 4, "dtype": torch.float16, "D": 64, "sinkl": True}),
    "lsh_b64_r2_causal_sinks": ("lsh", {"n_buckets": 64, "n_rounds": 2, "chunk": 64, "seed": 1, "sinks": 4}, 16384,
                                {"causal": True}),
    "lsh_gqa_kp_fp16_d64": ("lsh", {"n_buckets": 16, "n_rounds": 1, "chunk": 64, "seed": 0, "sinks": 4}, 16384,
                            {"Hkv": 4, "kp": True, "dtype": torch.float16, "D": 64}),
    # the CUDA default pre-sorts the keys and loads round 0's unmasked blocks through TMA; these two take the
    # other load paths: keys gathered by index in the kernel, and pre-sorted keys loaded by pointer
    "lsh_gathered": ("lsh", {"n_buckets": 32, "n_rounds": 1, "chunk": 64, "seed": 0, "sinks": 0}, 65536,
                     {"presorted": False, "cudnn": False}),
    "lsh_presorted_pointer_r2_sinks": ("lsh", {"n_buckets": 32, "n_rounds": 2, "chunk": 64, "seed": 0, "sinks": 4},
                                       16384, {"presorted": True, "use_tma": False}),
    "lsh_r2_sinks": ("lsh", {"n_buckets": 32, "n_rounds": 2, "chunk": 64, "seed": 0, "sinks": 4}, 16384, {}),
    "routed_c16": ("routed", {"n_clusters": 16, "top_k": 1, "iters": 2, "seed": 0, "chunk": 64, "sinks": 0}, 65536,
                   {}),
    "lsh_causal": ("lsh", {"n_buckets": 32, "n_rounds": 1, "chunk": 64, "seed": 0, "sinks": 0}, 65536,
                   {"causal": True}),
    "routed_causal_gqa": ("routed", {"n_clusters": 16, "top_k": 1, "iters": 2, "seed": 0, "chunk": 64, "sinks": 0},
                          16384, {"causal": True, "Hkv": 4}),
    # GPT-OSS's learned sink logits, a denominator term in the local kernel's epilogue
    "lsh_r2_gqa_causal_sink_logits": ("lsh", {"n_buckets": 32, "n_rounds": 2, "chunk": 64, "seed": 0, "sinks": 4},
                                      16384, {"causal": True, "Hkv": 4, "sinkl": True}),
    "routed_gqa_causal_kp_sink_logits": ("routed", {"n_clusters": 16, "top_k": 1, "iters": 2, "seed": 0, "chunk": 64,
                                                    "sinks": 0}, 16384, {"causal": True, "Hkv": 4, "kp": True,
                                                                         "sinkl": True}),
    "routed_c32_top2_causal_softcap": ("routed", {"n_clusters": 32, "top_k": 2, "iters": 2, "seed": 0, "chunk": 64,
                                                  "sinks": 4}, 16384, {"causal": True, "softcap": 30.0}),
    "pool_r256": ("lowrank", {"rank": 256, "method": "pool", "pinv_steps": 6}, 65536, {}),
    "pool_r64_kp_gqa": ("lowrank", {"rank": 64, "method": "pool", "pinv_steps": 6}, 16384, {"kp": True, "Hkv": 4}),
    "nystrom_r64": ("lowrank", {"rank": 64, "method": "nystrom", "pinv_steps": 6}, 16384, {}),
    # DeepSeek MLA's head dim: its own tiles, pre-sorted keys padded to 256 columns and loaded through TMA, and
    # (routed) the Triton k-means on 8 warps
    "lsh_d192": ("lsh", {"n_buckets": 32, "n_rounds": 1, "chunk": 64, "seed": 0, "sinks": 0}, 65536, {"D": 192}),
    "routed_c16_d192_causal_sinks": ("routed", {"n_clusters": 16, "top_k": 1, "iters": 2, "seed": 0, "chunk": 64,
                                                "sinks": 4}, 16384, {"D": 192, "causal": True}),
}


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
class TestCuda:
    @pytest.mark.parametrize("name", sorted(GPU_CASES))
    def test_full_size(self, name):
        from attnopt.kernels import cudnn_band, cudnn_varlen, triton_buckets
        from attnopt.kernels.lsh import SPEC as LSH
        from attnopt.kernels.lowrank.reference import reference as lowrank_reference
        from attnopt.kernels.routed.op import cuda_buckets

        variant, params, N, ex = GPU_CASES[name]
        H, D, dtype = 16, ex.get("D", 128), ex.get("dtype", torch.bfloat16)
        shape = (1, H, ex.get("Hkv", H), N, N, D)
        q, k, v, kw = make_inputs(shape, dtype, ex, seed=0, device="cuda")
        if ex.get("keys_alike"):  # one direction with a little noise: every key hashes alike
            k = (k[:, :, :1] + 0.01 * k).to(dtype)
        config = triton_buckets.default_config(D, dtype, q.device)
        for field in ("presorted", "use_tma", "cudnn"):
            if field in ex or (field == "use_tma" and "presorted" in ex):
                config = triton_buckets.BucketConfig(**{**config.__dict__, field: ex.get(field, False)})
        # 65536 keeps the size rule (VARLEN_FROM_PAIRS); shorter cases drop it, so that cuDNN serves them too
        calls, threshold = [], triton_buckets.VARLEN_FROM_PAIRS if N >= 65536 else 0
        saved = cudnn_varlen.lse_attention, triton_buckets.VARLEN_FROM_PAIRS
        cudnn_varlen.lse_attention = lambda *a: calls.append(1) or saved[0](*a)
        triton_buckets.VARLEN_FROM_PAIRS = threshold
        try:
            out = run_triton(variant, params, q, k, v, kw, config)
        finally:
            cudnn_varlen.lse_attention, triton_buckets.VARLEN_FROM_PAIRS = saved
        torch.cuda.synchronize()
        assert out.shape == q.shape and out.dtype == q.dtype and torch.isfinite(out).all()
        rounds = params.get("n_rounds", params.get("top_k"))
        pairs = H * (N * N) // params.get("n_buckets", params.get("n_clusters", 1))  # B·Hkv·rows·M / nb
        takes = (cudnn_band.available() and rounds == 1 and config.cudnn and not (kw["causal"] or kw["softcap"])
                 and kw["key_padding"] is None and variant != "lowrank" and pairs >= threshold)
        assert len(calls) == (1 if takes else 0), (takes, calls)  # cuDNN served exactly the cases it should
        if variant == "lowrank":
            ref = lowrank_reference(q, k, v, **params, **kw)
            assert _rel(out, ref) < tolerance(dtype, variant, params)
            return
        # bucket ids as the op computes them; the attention is checked on a sample of rows against the spec
        if variant == "lsh":
            rot = torch.from_numpy(LSH.make_tensors(params, q.shape, k.shape)["rotations"]).cuda()
            w = rot[None, None]
            qb = triton_buckets.project_top(q, w, mod=params["n_buckets"], signed=True).long()
            kb = triton_buckets.project_top(k, w, mod=params["n_buckets"], signed=True).long()
        else:
            qb, kb = (b.long() for b in cuda_buckets(q, k, kw["key_padding"], params["n_clusters"], params["top_k"],
                                                      params["iters"]))
        rows = torch.cat([torch.arange(0, 130), torch.arange(N - 130, N),
                          torch.randint(0, N, (300,), generator=torch.Generator().manual_seed(1))]).unique().cuda()
        ref = sampled_bucket_reference(q, k, v, qb, kb, rows, chunk=params["chunk"], sinks=params["sinks"],
                                       scale=kw["scale"], causal=kw["causal"], softcap=kw["softcap"],
                                       key_padding=kw["key_padding"], sink_logits=kw.get("sink_logits"))
        assert _rel(out[:, :, rows], ref) < tolerance(dtype, variant, params)

    @pytest.mark.parametrize("c, kp, d", [(16, False, 128), (64, True, 128), (32, False, 192)])
    def test_kmeans_step_at_full_size(self, c, kp, d):
        """The Triton Lloyd step against the torch one at N = 65536 (bf16, 16 kv heads; head dim 128, and MLA's 192).

        Keys drawn around c well-separated centres (the initial centroids fall one in each), so no key is near
        a tie: the same clusters, masses equal exactly, sums to near-fp32 accuracy. Then on plain random keys,
        where near-ties abound and the steps' different rounding (16 significant bits on the fp32 side) may
        put a key in the other cluster: rarely, and the centroids stay close.
        """
        from attnopt.kernels import triton_kmeans
        from attnopt.kernels.routed.clusters import centroids, distinct, key_weights, lloyd_sums, nearest

        n, hkv = 65536, 16
        _, k, _, kw = make_inputs((1, hkv, hkv, n, n, d), torch.bfloat16, {"kp": kp}, device="cuda")
        w = key_weights(kw["key_padding"], n, k.device)
        gen = torch.Generator(device="cuda").manual_seed(2)
        centres = torch.randn(1, hkv, c, d, generator=gen, device="cuda")
        label = torch.arange(n, device="cuda") * c // n  # position ⌊t·n/c⌋, an initial centroid, has label t
        apart = (centres[:, :, label] + 0.3 * torch.randn(1, hkv, n, d, generator=gen, device="cuda")).bfloat16()
        mu0 = centroids(apart, w, c, 0)
        got, want = triton_kmeans.lloyd_sums(apart, w, mu0, distinct(mu0)), lloyd_sums(apart, w, mu0, distinct(mu0))
        assert torch.equal(got[1], want[1])
        assert (got[0] - want[0]).abs().max() <= 1e-5 * want[0].abs().max()

        (mu_t, bias_t), mu = triton_kmeans.centroids(k, w, c, 2), centroids(k, w, c, 2)  # as the op runs it
        keep_t = bias_t == 0
        assert torch.equal(keep_t, distinct(mu_t))
        same = (nearest(k, mu_t, keep_t) == nearest(k, mu, distinct(mu))).float().mean()
        assert same > 0.999, float(same)
        assert (mu_t - mu).abs().max() < 1e-2

    @pytest.mark.parametrize("nb", [32, 1000])
    def test_bucket_sort_at_full_size(self, nb):
        """The counting sort against torch.sort at lsh's full size (16 heads, 65536 rows; 4 query heads per kv
        head: 262144 rows), skewed buckets included."""
        from attnopt.kernels import triton_sort

        gen = torch.Generator(device="cuda").manual_seed(3)
        for lead, rows in (((1, 16, 1), 65536), ((1, 4, 1), 4 * 65536)):
            x = (torch.randn(*lead, rows, generator=gen, device="cuda").abs() * nb / 3).long().clamp(max=nb - 1)
            srt, perm, start, end = triton_sort.sort_buckets(x.to(torch.int32), nb)
            want, want_perm = torch.sort(x.to(torch.int32), dim=-1, stable=True)
            every = torch.arange(nb, device="cuda", dtype=torch.int32).expand(*lead, nb).contiguous()
            assert torch.equal(srt, want) and torch.equal(perm, want_perm.to(torch.int32))
            assert torch.equal(start, torch.searchsorted(want, every, out_int32=True))
            assert torch.equal(end, torch.searchsorted(want, every, right=True, out_int32=True))

    def test_compiles_without_graph_break(self):
        from attnopt.kernels.lsh import SPEC as LSH
        from attnopt.kernels.lsh import op  # noqa: F401  (registers the op)

        params = {"n_buckets": 8, "n_rounds": 1, "chunk": 64, "seed": 0, "sinks": 0}
        q, k, v, kw = make_inputs((1, 4, 4, 1024, 1024, 64), torch.bfloat16, {}, device="cuda")
        rot = torch.from_numpy(LSH.make_tensors(params, q.shape, k.shape)["rotations"]).cuda()

        def f(q, k, v):
            return torch.ops.attnopt.lsh_attention(q * 1.0, k, v, None, None, rot, 8, 1, 64, 0, 0, kw["scale"],
                                                   False, 0.0) + 1.0

        got = torch.compile(f, fullgraph=True)(q, k, v)
        torch.testing.assert_close(got, f(q, k, v), atol=2e-2, rtol=2e-2)


# --- the interpreter subprocess ---------------------------------------------------------------------

if __name__ == "__main__" and "--interpret" in sys.argv:
    report([*CASES, *CHECKS], lambda case: CHECKS[case]() if case in CHECKS else run_case(case))
