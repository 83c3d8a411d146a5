"""Variable-length attention through cuDNN: many independent entries packed as rows, in one call.

Entry e's queries are q_len[e] consecutive rows of a (T_q, P) row tensor, its keys and values k_len[e]
consecutive rows of (T_k, P) ones (``ENTRY_FIELDS`` says where); every query of an entry sees every key of it.
The first d of the P columns are the head dim (P: the row width of the callers' padded copies). The entries
live on the device, so one plan per shape serves any split of the rows: no length is read back to the host.

lsh's and routed's bucket part is exactly this once queries and keys are sorted by bucket (``triton_buckets``):
bucket c of a kv head is one entry. On the H200 (bf16, H=16, D=128, lsh's 32 buckets, N=65536) cuDNN's
padded-ragged attention ran that part in 2.05 ms, 562 useful TFLOP/s, where the Triton bucket kernel took 2.83
(BENCHMARKS.md, issue 9). Where NVIDIA's cuDNN frontend is installed (``cudnn_band.available``); plans and the
handle are ``cudnn_band``'s.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import cudnn_band
from .untraced import untraced

__all__ = ["ENTRY_FIELDS", "eligible", "lse_attention"]

# The entry table's rows, (5, E + 1) int32: per entry e < E its first query row, that row's element offset
# (row · P), its query count, its first key's element offset and its key count; column E closes the offsets
# (T_q, T_q · P, 0, T_k · P, 0), as cuDNN's ragged offsets want one more than the entries.
ENTRY_FIELDS = ("q_row", "q_offset", "q_len", "k_offset", "k_len")


def eligible(like: Tensor, rows_q: int, rows_k: int, width: int, d: int, entries: int, max_q: int, max_k: int,
             scale: float) -> bool:
    """Whether cuDNN takes this call: (rows_q, width) queries and (rows_k, width) keys and values of ``like``'s
    dtype and device, fp16/bf16 on CUDA, d a multiple of 8 up to 256 and at most width, int32 element offsets,
    and a plan cuDNN builds (from sizes alone, so the check also runs on torch.compile's fake tensors; a refusal
    is remembered)."""
    key = _key(like, rows_q, rows_k, width, d, entries, max_q, max_k, scale)
    # symbolic sizes first: the checks after them would otherwise guard on them under torch.compile
    if not (not any(isinstance(x, torch.SymInt) for x in key) and like.is_cuda
            and like.dtype in (torch.float16, torch.bfloat16) and d % 8 == 0 and 0 < d <= min(256, width)
            and max(rows_q, rows_k) * width < 2**31 and entries > 0 and cudnn_band.available()):
        return False
    return cudnn_band.supported(key, lambda: _plan(key, like.device, like.dtype))


def _key(like: Tensor, rows_q: int, rows_k: int, width: int, d: int, entries: int, max_q: int, max_k: int,
         scale: float) -> tuple:
    return ("varlen", like.device.index, like.dtype, rows_q, rows_k, width, d, entries, max_q, max_k, float(scale))


def _plan(key: tuple, device: torch.device, dtype: torch.dtype) -> dict:
    _, _, _, _, _, width, d, entries, max_q, max_k, scale = key

    def describe(cudnn, graph, io):
        i32 = cudnn.data_type.INT32

        def scalars(name):  # (E, 1, 1, 1) per entry, or (E + 1, 1, 1, 1) offsets
            n = entries + 1 if name.endswith("off") else entries
            return graph.tensor(name=name, dim=[n, 1, 1, 1], stride=[1, 1, 1, 1], data_type=i32)

        def rows(name, most):  # one head a batch entry; the ragged offsets (in elements) place each entry
            t = graph.tensor(name=name, dim=[entries, 1, most, d], stride=[most * width, width, width, 1],
                             data_type=io)
            off = scalars(name + "_off")
            t.set_ragged_offset(off)
            return t, off

        (q, q_off), (k, k_off), (v, v_off) = rows("q", max_q), rows("k", max_k), rows("v", max_k)
        q_len, k_len = scalars("q_len"), scalars("k_len")
        o, lse = graph.sdpa(name="varlen", q=q, k=k, v=v, generate_stats=True, attn_scale=scale,
                            use_padding_mask=True, seq_len_q=q_len, seq_len_kv=k_len)
        o_off, lse_off = scalars("o_off"), scalars("lse_off")
        o.set_output(True).set_dim([entries, 1, max_q, d]).set_stride([max_q * width, width, width, 1])
        o.set_ragged_offset(o_off)
        lse.set_output(True).set_data_type(cudnn.data_type.FLOAT).set_dim([entries, 1, max_q, 1]).set_stride(
            [max_q, max_q, 1, 1])
        lse.set_ragged_offset(lse_off)
        return {"q": q, "k": k, "v": v, "o": o, "stats": lse, "q_off": q_off, "k_off": k_off, "v_off": v_off,
                "o_off": o_off, "lse_off": lse_off, "q_len": q_len, "k_len": k_len}

    return cudnn_band.built_plan(key, device, dtype, describe)


def _lse_attention(q: Tensor, k: Tensor, v: Tensor, entries: Tensor, max_q: int, max_k: int, d: int,
                   scale: float) -> tuple[Tensor, Tensor]:
    """The entries' attention: the (T_q, P) output (columns past d zero) and each row's (T_q,) fp32 natural-log
    log-sum-exp. ``entries``: the (5, E + 1) int32 table of ``ENTRY_FIELDS``, each entry at most max_q queries
    and max_k keys. Rows of an entry with no key are undefined (callers mask them); rows in no entry are not
    written. Callers check ``eligible`` first."""
    width, n = q.shape[1], entries.shape[1] - 1
    run = _plan(_key(q, q.shape[0], k.shape[0], width, d, n, max_q, max_k, scale), q.device, q.dtype)
    out = torch.empty_like(q) if width == d else torch.zeros_like(q)
    lse = torch.empty(q.shape[0], dtype=torch.float32, device=q.device)
    row, q_off, q_len, k_off, k_len = (entries[i].view(-1, 1, 1, 1) for i in range(len(ENTRY_FIELDS)))
    pack = {run["q"]: q, run["k"]: k, run["v"]: v, run["o"]: out, run["stats"]: lse, run["q_off"]: q_off,
            run["o_off"]: q_off, run["k_off"]: k_off, run["v_off"]: k_off, run["lse_off"]: row,
            run["q_len"]: q_len[:n], run["k_len"]: k_len[:n]}
    cudnn_band.execute(run, pack, q.device)
    return out, lse


def _like(q: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
    return q.new_empty(q.shape), q.new_empty(q.shape[:1], dtype=torch.float32)


# A module may run twice (imported as attnopt.kernels and as kernels): torch.library defines an op once.
if not hasattr(torch.ops.attnopt, "cudnn_varlen_lse"):
    torch.library.custom_op("attnopt::cudnn_varlen_lse", _lse_attention, mutates_args=(),
                            device_types="cuda").register_fake(_like)


def lse_attention(q: Tensor, k: Tensor, v: Tensor, entries: Tensor, max_q: int, max_k: int, d: int,
                  scale: float) -> tuple[Tensor, Tensor]:
    """torch.ops.attnopt.cudnn_varlen_lse (``_lse_attention``), or its implementation where nothing traces the
    call (``untraced``)."""
    fn = _lse_attention if untraced(q, k, v) else torch.ops.attnopt.cudnn_varlen_lse
    return fn(q, k, v, entries, int(max_q), int(max_k), int(d), float(scale))
