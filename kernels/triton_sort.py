"""A stable counting sort of bucket ids in Triton: the sort step of lsh's and routed's CUDA form.

Each sequence (one (batch, kv head, round)) holds small integer ids in [0, NB). The
bucket kernels need, per sequence, the rows in (bucket, row) order, their ids in that
order, and each bucket's run of slots [start, end). ``torch.sort`` plus two
``searchsorted`` gave the same, but as about thirty launches a call (cub's radix passes,
memsets, the int casts): at N = 16384 the host spent longer launching them than the GPU
spent on the whole attention (BENCHMARKS, issue 9). Here it is two launches:

- ``_count_fwd``: each program counts the ids of one run of CHUNK rows per bucket;
- ``_place_fwd``: each program sums the counts of the runs before its own and of all runs
  (a bucket's first slot is the count of every smaller id), ranks its rows within their
  buckets by a prefix sum over a one-hot tile (rows keep their order: the sort is stable),
  and writes each row and id to its slot. The first run's program also writes the buckets'
  [start, end).

Every output is a pure function of the input (no atomics), so it equals torch.sort(stable=True)
bit for bit; ``sort_buckets`` falls back to that for ids too many for a one-hot tile.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .triton_launch import launch

__all__ = ["MAX_BUCKETS", "sort_buckets"]

# The one-hot tiles are (rows, buckets): past this many buckets the torch sort serves.
MAX_BUCKETS = 1024
CHUNK = 1024  # rows a program counts and places
ONE_HOT = 8192  # elements of a one-hot tile: rows per tile = ONE_HOT / buckets (register budget on 4 warps)


@triton.jit
def _count_fwd(IDS, COUNTS, ROWS, NB, PARTS, NB_P2: tl.constexpr, BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    """COUNTS (SEQ, PARTS, NB_P2): how many of rows [pid·CHUNK, (pid + 1)·CHUNK) hold each id."""
    pid = tl.program_id(0)
    seq = tl.program_id(1).to(tl.int64)
    buckets = tl.arange(0, NB_P2)
    counts = tl.zeros([NB_P2], dtype=tl.int32)
    for start in range(pid * CHUNK, tl.minimum(pid * CHUNK + CHUNK, ROWS), BLOCK):
        rows = start + tl.arange(0, BLOCK)
        ids = tl.load(IDS + seq * ROWS + rows, mask=rows < ROWS, other=-1)
        counts += tl.sum((ids[:, None] == buckets[None, :]).to(tl.int32), 0)
    tl.store(COUNTS + (seq * PARTS + pid) * NB_P2 + buckets, counts)


@triton.jit
def _place_fwd(IDS, COUNTS, PERM, SORTED, START, END, ROWS, NB, PARTS, NB_P2: tl.constexpr, BLOCK: tl.constexpr,
               CHUNK: tl.constexpr, PART_TILE: tl.constexpr):
    """PERM, SORTED (SEQ, ROWS): this program's rows at their sorted slots; START, END (SEQ, NB) from pid 0."""
    pid = tl.program_id(0)
    seq = tl.program_id(1).to(tl.int64)
    buckets = tl.arange(0, NB_P2)
    total = tl.zeros([NB_P2], dtype=tl.int32)
    before = tl.zeros([NB_P2], dtype=tl.int32)  # ids in the runs before this one
    parts = tl.arange(0, PART_TILE)
    for p0 in range(0, PARTS, PART_TILE):
        p = p0 + parts
        c = tl.load(COUNTS + (seq * PARTS + p[:, None]) * NB_P2 + buckets[None, :], mask=(p < PARTS)[:, None],
                    other=0)
        total += tl.sum(c, 0)
        before += tl.sum(tl.where((p < pid)[:, None], c, 0), 0)
    start_of = tl.cumsum(total, 0) - total  # a bucket's first slot: the count of every smaller id
    if pid == 0:
        ok = buckets < NB
        tl.store(START + seq * NB + buckets, start_of, mask=ok)
        tl.store(END + seq * NB + buckets, start_of + total, mask=ok)
    next_slot = start_of + before
    for start in range(pid * CHUNK, tl.minimum(pid * CHUNK + CHUNK, ROWS), BLOCK):
        rows = start + tl.arange(0, BLOCK)
        row_ok = rows < ROWS
        ids = tl.load(IDS + seq * ROWS + rows, mask=row_ok, other=-1)
        hot = (ids[:, None] == buckets[None, :]).to(tl.int32)  # (BLOCK, NB_P2)
        rank = tl.cumsum(hot, 0) - hot  # earlier rows of this tile with the same id
        slot = tl.sum(hot * (rank + next_slot[None, :]), 1)
        tl.store(PERM + seq * ROWS + slot, rows, mask=row_ok)
        tl.store(SORTED + seq * ROWS + slot, ids, mask=row_ok)
        next_slot += tl.sum(hot, 0)


def sort_buckets(ids: Tensor, n_buckets: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(sorted ids, perm, start, end) of ``ids`` (..., ROWS), integers in [0, n_buckets), sorted along the last
    axis: sorted (..., ROWS) and perm (..., ROWS) int32 as ``torch.sort(ids, stable=True)`` gives them, start
    and end (..., n_buckets) int32, the slots [start_c, end_c) holding id c (``searchsorted`` left and right).
    """
    lead, rows = ids.shape[:-1], ids.shape[-1]
    nb = max(int(n_buckets), 1)
    if nb > MAX_BUCKETS or ids.numel() == 0:
        ids32 = ids.to(torch.int32)
        srt, perm = torch.sort(ids32, dim=-1, stable=True)
        every = torch.arange(nb, device=ids.device, dtype=torch.int32).expand(*lead, nb).contiguous()
        return (srt, perm.to(torch.int32), torch.searchsorted(srt, every, out_int32=True),
                torch.searchsorted(srt, every, right=True, out_int32=True))
    seqs = ids.reshape(-1, rows).to(torch.int32).contiguous()
    n_seq = seqs.shape[0]
    nb_p2 = max(16, triton.next_power_of_2(nb))
    block = max(16, min(256, ONE_HOT // nb_p2))
    parts = triton.cdiv(rows, CHUNK)
    counts = torch.empty(n_seq, parts, nb_p2, dtype=torch.int32, device=ids.device)
    srt = torch.empty(n_seq, rows, dtype=torch.int32, device=ids.device)
    perm = torch.empty_like(srt)
    start = torch.empty(n_seq, nb, dtype=torch.int32, device=ids.device)
    end = torch.empty_like(start)
    grid = (parts, n_seq)
    launch(_count_fwd)[grid](seqs, counts, rows, nb, parts, NB_P2=nb_p2, BLOCK=block, CHUNK=CHUNK, num_warps=4)
    launch(_place_fwd)[grid](seqs, counts, perm, srt, start, end, rows, nb, parts, NB_P2=nb_p2, BLOCK=block,
                             CHUNK=CHUNK, PART_TILE=max(1, min(64, ONE_HOT // nb_p2)), num_warps=4)
    return (srt.view(*lead, rows), perm.view(*lead, rows), start.view(*lead, nb), end.view(*lead, nb))
