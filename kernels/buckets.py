"""The sorted-bucket machinery, torch: shared by lsh and routed.

Both variants let query i see key j when they share a bucket in at least one of
R rounds (lsh: one hash per round; routed: the query's top_k clusters against
the key's cluster), or the same local chunk ⌊p/C⌋ = ⌊j/C⌋ (p = i + M − N), or
j < G (sinks). One softmax covers that union and nothing is counted twice
(VARIANTS.md). ``buckets_allowed`` is that rule as an explicit mask for the
references; ``bucket_attention`` is the fast form, cost O(N·(N/b + C + G)·D·R)
expected, with no N×M tensor:

- hash rounds: per (batch, kv head, round), queries and keys are sorted by
  (bucket, position). Queries go in blocks of ``block`` consecutive sorted rows;
  the keys of the buckets one block holds are one contiguous range of the
  sorted keys, [start of its first bucket, end of its last), read with one
  gather and padded to the longest range.
- the local part: position blocks of C queries against their chunk's C keys
  plus the G sinks.

Each part yields, per query, its row max, row sum and unnormalised output, and
the parts are merged the way flash attention merges key blocks: that is
exactly one softmax over the union. A pair several parts allow is kept in one:
round r owns the pairs its buckets match and no earlier round's do, and the
local part the chunk and sink pairs that no round matched (as in the Triton
kernels). The bucket part, the large one, then masks only its padding, causality
and earlier rounds; the pairwise bucket test runs on the local part's C + G
keys. The rep = H/Hkv query heads of one kv head are sorted together, as rows
h·N + i: they read the same keys. GPT-OSS's learned sink logit σ_h, where given,
is one more part: max σ_h, sum 1 and output zero in every row of head h.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .reference import check_additive_mask, check_qkv, check_self_attention, positions, softcapped

MAX_BLOCK = 128
_NEG_INF = float("-inf")
FUSE_ON_CPU = True  # False keeps the unfused softmax for every block (benchmarks/cpu_ops.py compares)


def block_rows(head_dim: int) -> int:
    """Sorted query rows per block: about D, clamped to [16, MAX_BLOCK].

    Every block gathers its bucket's keys (L·D values) and computes bq·L scores; with bq ≈ D
    the two cost the same, and smaller blocks waste fewer rows padding each bucket to whole blocks.
    """
    return min(max(head_dim, 16), MAX_BLOCK)


def buckets_allowed(q_buckets: Tensor, k_buckets: Tensor, chunk: int) -> Tensor:
    """(B, H, N, M) bool, the spec: (∃ r: q_buckets[r, i] = k_buckets[r, j]) ∨ ⌊p/C⌋ = ⌊j/C⌋.

    ``q_buckets`` is (B, H, R, N) and ``k_buckets`` (B, Hkv, R, M); kv head h // (H/Hkv)
    serves query head h. Sinks are added by the caller (``reference.with_sinks``).
    """
    rep = q_buckets.shape[1] // k_buckets.shape[1]
    kb = k_buckets.repeat_interleave(rep, dim=1)
    same = (q_buckets[..., :, None] == kb[..., None, :]).any(dim=2)  # (B, H, N, M)
    p, j = positions(q_buckets.shape[-1], k_buckets.shape[-1], q_buckets.device)
    return same | (torch.div(p, chunk, rounding_mode="floor") == torch.div(j, chunk, rounding_mode="floor"))


def bucket_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, key_padding: Tensor | None,
                     q_buckets: Tensor, k_buckets: Tensor, *, n_buckets: int, chunk: int, sinks: int, scale: float,
                     causal: bool, softcap: float = 0.0, block: int | None = None,
                     sink_logits: Tensor | None = None) -> Tensor:
    """Attention over ``buckets_allowed`` ∪ sinks, with the op contract of ``kernels.spec``.

    ``q_buckets`` (B, H, R, N) and ``k_buckets`` (B, Hkv, R, M) are int64 in [0, n_buckets);
    ``sink_logits`` (H,) or None.
    """
    check_qkv(q, k, v)
    B, H, N, D = q.shape
    Hkv, M = k.shape[1], k.shape[2]
    check_self_attention("bucket", N, M)
    check_additive_mask(mask)
    R = q_buckets.shape[2]
    if tuple(q_buckets.shape) != (B, H, R, N) or tuple(k_buckets.shape) != (B, Hkv, R, M):
        raise ValueError(f"buckets must be (B, H, R, N) and (B, Hkv, R, M); got {tuple(q_buckets.shape)} and "
                         f"{tuple(k_buckets.shape)} for q {tuple(q.shape)} and k {tuple(k.shape)}")
    if N == 0:
        return q.new_zeros(q.shape)
    compute = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    rep = H // Hkv
    site = _Site(q.to(compute).reshape(B, Hkv, rep * N, D), k.to(compute), v.to(compute), mask, key_padding,
                 n=N, rep=rep, chunk=chunk, sinks=min(sinks, M), scale=scale, causal=causal, softcap=softcap)
    # Rows h·N + i: the rep query heads of a kv head, one after the other.
    qb = q_buckets.reshape(B, Hkv, rep, R, N).transpose(2, 3).reshape(B, Hkv, R, rep * N)
    parts = [_local_part(site, qb, k_buckets)]
    if R:
        parts.append(_bucket_part(site, qb, k_buckets, n_buckets, block or block_rows(D)))
    if sink_logits is not None:  # the learned sinks' part; row h·N + i of kv head g is query head g·rep + h
        top = sink_logits.to(site.q.dtype).view(1, Hkv, 1, rep, 1).expand(B, Hkv, 1, rep, N).reshape(B, Hkv, 1, -1)
        parts.append((top, torch.ones_like(top), top.new_zeros(*top.shape, D)))
    return merge_parts(parts).reshape(B, H, N, D).to(q.dtype)


class _Site:
    """The tensors and settings both parts read; q is (B, Hkv, rep·N, D), rows h·N + i."""

    def __init__(self, q, k, v, mask, key_padding, *, n, rep, chunk, sinks, scale, causal, softcap):
        self.q, self.k, self.v = q, k, v
        self.mask, self.key_padding = mask, key_padding
        self.n, self.m, self.rep = n, k.shape[2], rep
        self.off = self.m - n  # query i sits at position i + off
        self.chunk, self.sinks = chunk, sinks
        self.scale, self.causal, self.softcap = scale, causal, softcap

    def scores(self, q: Tensor, k: Tensor) -> Tensor:
        s = (q @ k.transpose(-1, -2)) * self.scale
        return softcapped(s, self.softcap)

    def add_masks(self, scores: Tensor, row: Tensor, col: Tensor) -> Tensor:
        """scores + key padding + dense remainder, read at query rows ``row`` (h·N + i) and keys ``col``.

        ``row`` and ``col`` broadcast against ``scores``, whose dims 0 and 1 are batch and kv head;
        a size-1 mask dim is read at index 0, so nothing is expanded to N×M.
        """
        lead = (1,) * (scores.dim() - 2)
        b = torch.arange(scores.shape[0], device=scores.device).view(-1, 1, *lead)
        if self.key_padding is not None:
            kp = self.key_padding
            scores = scores + kp[b * (kp.shape[0] > 1), col * (kp.shape[-1] > 1)].to(scores.dtype)
        if self.mask is not None:
            mk = self.mask
            kv_head = torch.arange(scores.shape[1], device=scores.device).view(1, -1, *lead)
            head = kv_head * self.rep + torch.div(row, self.n, rounding_mode="floor")
            i = row % self.n
            scores = scores + mk[b * (mk.shape[0] > 1), head * (mk.shape[1] > 1), i * (mk.shape[2] > 1),
                                 col * (mk.shape[3] > 1)].to(scores.dtype)
        return scores


def _local_part(site: _Site, qb: Tensor, kb: Tensor):
    """Each query against its chunk's keys and the sinks, but for the pairs a round's buckets match (the bucket
    part owns those). qb (B, Hkv, R, rep·N) and kb (B, Hkv, R, M): the bucket ids."""
    B, Hkv, _, D = site.q.shape
    C, G, n, m, rep, off = site.chunk, site.sinks, site.n, site.m, site.rep, site.off
    dev = site.q.device
    # Blocks of C positions aligned to the chunks, so block c is chunk c and reads its C keys.
    first = (off // C) * C
    front = off - first
    nc = -(-(front + n) // C)
    pos = first + torch.arange(nc * C, device=dev).view(nc, C)  # query positions = the chunk's key positions
    kpos = pos.clamp(max=m - 1)
    j = torch.arange(G, device=dev)
    cols = torch.cat([kpos, j.expand(nc, G)], dim=1)  # (nc, C + G) key indices
    pad = (0, 0, front, nc * C - front - n)
    qp = F.pad(site.q.view(B, Hkv, rep, n, D), pad).view(B, Hkv, rep, nc, C, D)
    k_chunk, v_chunk = site.k[:, :, kpos].unsqueeze(2), site.v[:, :, kpos].unsqueeze(2)  # (B, Hkv, 1, nc, C, D)
    k_sink, v_sink = site.k[:, :, None, None, :G], site.v[:, :, None, None, :G]
    scores = torch.cat([site.scores(qp, k_chunk), site.scores(qp, k_sink)], dim=-1)  # (B, Hkv, rep, nc, C, C+G)

    in_chunk = (pos < m)[:, None, :]  # (nc, 1, C)
    sink_ok = j[None, None, :] < pos[:, :1, None]  # a sink inside the chunk is a chunk key already
    allowed = torch.cat([in_chunk.expand(nc, C, C), sink_ok.expand(nc, C, G)], dim=-1)
    if site.causal:
        allowed = allowed & (torch.cat([pos, j.expand(nc, G)], dim=1)[:, None, :] <= pos[:, :, None])
    if qb.shape[2]:  # (B, Hkv, R, rep, nc, C, 1) against (B, Hkv, R, 1, nc, 1, C + G)
        q_ids = F.pad(qb.view(*qb.shape[:3], rep, n), (front, nc * C - front - n), value=-1)
        q_ids = q_ids.view(*qb.shape[:3], rep, nc, C, 1)
        k_ids = kb[..., cols].view(*kb.shape[:3], 1, nc, 1, C + G)
        allowed = allowed & ~(q_ids == k_ids).any(dim=2)
    row = (torch.arange(rep, device=dev).view(rep, 1, 1, 1) * n + (pos - off).clamp(0, n - 1)[:, :, None])
    scores = site.add_masks(scores, row, cols[:, None, :]).masked_fill(~allowed, _NEG_INF)

    top, p, total = _partial(scores)
    out = p[..., :C] @ v_chunk + p[..., C:] @ v_sink
    keep = slice(front, front + n)
    return (top.reshape(B, Hkv, rep, nc * C)[..., keep].reshape(B, Hkv, 1, rep * n),
            total.reshape(B, Hkv, rep, nc * C)[..., keep].reshape(B, Hkv, 1, rep * n),
            out.reshape(B, Hkv, rep, nc * C, D)[..., keep, :].reshape(B, Hkv, 1, rep * n, D))


def _bucket_part(site: _Site, qb: Tensor, kb: Tensor, n_buckets: int, block: int):
    """Round r: blocks of one bucket's sorted queries against that bucket's key range, minus what an earlier
    round owns. Returns (max, sum, output) per round, rows in h·N + i order."""
    B, Hkv, rows, D = site.q.shape
    R, n, m, off = qb.shape[2], site.n, site.m, site.off
    dev = site.q.device
    # Sort by (bucket, row): the sort keys are unique, so the order is total and the same everywhere.
    q_perm = torch.argsort(qb * rows + torch.arange(rows, device=dev), dim=-1)
    k_perm = torch.argsort(kb * m + torch.arange(m, device=dev), dim=-1)
    q_start, q_end = _bucket_ranges(qb, n_buckets)  # bucket b's rows are sorted slots [start, end)
    k_start, k_end = _bucket_ranges(kb, n_buckets)

    # Each bucket's queries fill ceil(count / bq) blocks, so a block reads exactly one bucket's keys.
    bq = min(block, rows)
    blocks = torch.div(q_end - q_start + bq - 1, bq, rounding_mode="floor")
    g_end = blocks.cumsum(-1)
    nblk = int(g_end[..., -1].max())
    g = torch.arange(nblk, device=dev).expand(B, Hkv, R, nblk).contiguous()
    bucket = torch.searchsorted(g_end, g, right=True)  # block g's bucket; n_buckets past the last block
    real = bucket < n_buckets
    bucket = bucket.clamp(max=n_buckets - 1)
    first = q_start.gather(-1, bucket) + (g - (g_end - blocks).gather(-1, bucket)) * bq
    slot = first[..., None] + torch.arange(bq, device=dev)  # (B, Hkv, R, nblk, bq) sorted query slots
    row_ok = real[..., None] & (slot < q_end.gather(-1, bucket)[..., None])
    row_idx = q_perm.gather(-1, slot.clamp(max=rows - 1).view(B, Hkv, R, -1)).view(B, Hkv, R, nblk, bq)
    lo, hi = k_start.gather(-1, bucket), k_end.gather(-1, bucket)
    span = max(int(torch.where(real, hi - lo, 0).max()), 1)
    at = lo[..., None] + torch.arange(span, device=dev)  # (B, Hkv, R, nblk, L) sorted key slots
    key_ok = at < hi[..., None]
    col = k_perm.gather(-1, at.clamp(max=m - 1).view(B, Hkv, R, -1)).view(B, Hkv, R, nblk, span)

    qs = take_rows(site.q, row_idx.view(B, Hkv, -1)).view(B, Hkv, R, nblk, bq, D)
    ks = take_rows(site.k, col.view(B, Hkv, -1)).view(B, Hkv, R, nblk, span, D)
    vs = take_rows(site.v, col.view(B, Hkv, -1)).view(B, Hkv, R, nblk, span, D)

    qpos = (row_idx % n + off)[..., :, None]
    c = col[..., None, :]
    # Every key of a block's range shares its bucket: only the padding past the range is masked, a mask per
    # key (padding rows are dropped below). Pairs pile up only for causality and later rounds.
    allowed = key_ok[..., None, :]
    # Round r owns a pair only if no earlier round matches it.
    rounds = torch.arange(R, device=dev).view(1, 1, R, 1, 1, 1)
    for r in range(R - 1):
        q_r = qb[:, :, r].gather(-1, row_idx.view(B, Hkv, -1)).view(B, Hkv, R, nblk, bq, 1)
        k_r = kb[:, :, r].gather(-1, col.view(B, Hkv, -1)).view(B, Hkv, R, nblk, 1, span)
        allowed = allowed & ~((rounds > r) & (q_r == k_r))
    if site.causal:
        allowed = allowed & (c <= qpos)
    # The fused kernel is torch's CPU one (CUDA has the Triton op); finfo.min padding must stay finite (a row
    # of it is uniform), which that kernel's mask does not keep.
    if (not FUSE_ON_CPU or qs.device.type != "cpu" or site.softcap or qs.dtype != torch.float32
            or site.key_padding is not None or site.mask is not None):
        scores = site.add_masks(site.scores(qs, ks), row_idx[..., :, None], c).masked_fill(~allowed, _NEG_INF)
        top, p, total = _partial(scores)
        out = p @ vs
    else:
        top, total, out = _fused_part(qs, ks, vs, allowed, site.scale)
    # Back to rows h·N + i; padding slots go to a spare row that is dropped.
    dest = torch.where(row_ok, row_idx, rows).view(B * Hkv * R, -1)
    slots = (dest + torch.arange(B * Hkv * R, device=dev)[:, None] * (rows + 1)).reshape(-1)

    def unsort(x: Tensor) -> Tensor:
        tail = x.shape[5:]  # () for the row statistics, (D,) for the output
        into = x.new_zeros(B * Hkv * R * (rows + 1), *tail).index_copy_(0, slots, x.reshape(-1, *tail))
        return into.view(B, Hkv, R, rows + 1, *tail)[:, :, :, :rows]

    return unsort(top), unsort(total), unsort(out)


def take_rows(x: Tensor, idx: Tensor) -> Tensor:
    """x[b, h, idx[b, h, j]] for x (B, Hkv, L, D) and idx (B, Hkv, J): (B, Hkv, J, D).

    Whole rows through index_select: ``gather`` with the index expanded over D reads an index per element.
    """
    B, Hkv, L, D = x.shape
    base = torch.arange(B * Hkv, device=x.device).view(B, Hkv, 1) * L
    return x.reshape(B * Hkv * L, D).index_select(0, (idx + base).reshape(-1)).view(B, Hkv, -1, D)


def _bucket_ranges(buckets: Tensor, n_buckets: int) -> tuple[Tensor, Tensor]:
    """(start, end) of each bucket in the (bucket, position) sorted order: (..., n_buckets) each."""
    counts = torch.zeros(*buckets.shape[:-1], n_buckets, dtype=buckets.dtype, device=buckets.device)
    end = counts.scatter_add_(-1, buckets, torch.ones_like(buckets)).cumsum(-1)
    return end - counts, end


def _fused_part(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor, scale: float):
    """``_partial``'s (max, sum, output) of the (…, bq, L) blocks from torch's fused CPU attention, for
    blocks with nothing on top of ``allowed`` (no padding, mask or softcap).

    The fused kernel makes no score-sized exp, max or product passes (the ops ran 1.4–1.75× faster
    at N = 4096 and 8192, fp32, 2 threads: benchmarks/cpu_ops.py). It returns each row's normalised
    output and log-sum-exp, which ``merge_parts`` weighs the same as a max with an unnormalised output
    when the sum is 1. Rows with no allowed key get −inf and a sum of 0 (the kernel reports a
    log-sum-exp of 0 for them). A mask of one row per block (…, 1, L) goes in as it is, broadcast by
    the kernel over the block's rows.
    """
    bias = torch.where(allowed, torch.zeros((), dtype=q.dtype), torch.full((), _NEG_INF, dtype=q.dtype))
    flat = [t.reshape(-1, 1, *t.shape[-2:]) for t in (q, k, v, bias)]
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        *flat[:3], 0.0, False, attn_mask=flat[3], scale=scale)[:2]
    has = allowed.any(dim=-1).expand(q.shape[:-1])  # ``allowed`` may be one row per block, for every row
    lse = torch.where(has, lse.view(has.shape), _NEG_INF)
    return lse, has.to(q.dtype), out.view(*q.shape[:-1], v.shape[-1])


def _partial(scores: Tensor):
    """(row max, exp(scores − max), row sum): one part's softmax before normalising; -inf rows give 0."""
    top = scores.amax(dim=-1)
    p = torch.exp(scores - torch.where(torch.isneginf(top), 0.0, top)[..., None])
    return top, p, p.sum(dim=-1)


def merge_parts(parts) -> Tensor:
    """One softmax over the union of disjoint parts, from each part's (max, sum, output); empty rows give 0."""
    top = torch.cat([p[0] for p in parts], dim=2)  # (B, Hkv, parts, rows)
    total = torch.cat([p[1] for p in parts], dim=2)
    out = torch.cat([p[2] for p in parts], dim=2)
    best = top.amax(dim=2, keepdim=True)
    weight = torch.exp(top - torch.where(torch.isneginf(best), 0.0, best))  # a part with no key weighs 0
    total = (weight * total).sum(dim=2)
    out = (weight[..., None] * out).sum(dim=2)
    return torch.where(total[..., None] > 0, out / total.clamp_min(torch.finfo(total.dtype).tiny)[..., None], 0.0)
