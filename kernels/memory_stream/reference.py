"""memory_stream, the spec: one segment against [unseen sinks; memory; itself], then the state moves on."""

from __future__ import annotations

import torch
from torch import Tensor

from ..reference import check_qkv, restricted_attention
from ..relbias.reference import bias_at


def stream_positions(seen: int, n_sinks: int, t_mem: int, s: int, device=None) -> tuple[Tensor, Tensor]:
    """(query positions (S,), key positions (n_sinks + t_mem + S,)) in the stream: the bias's δ = j − i."""
    queries = torch.arange(seen, seen + s, device=device)
    keys = torch.cat([torch.arange(n_sinks, device=device), torch.arange(seen - t_mem, seen + s, device=device)])
    return queries, keys


def stream_bias(slopes: Tensor, table: Tensor, queries: Tensor, keys: Tensor) -> Tensor:
    """(H | 1, S, K): relbias's bias at δ = key − query over stream positions."""
    return bias_at(slopes, table, keys[None, :] - queries[:, None])


def reference(q: Tensor, k: Tensor, v: Tensor, memory_k: Tensor, memory_v: Tensor, sink_k: Tensor, sink_v: Tensor,
              seen: Tensor, *, memory: int, sinks: int, slopes: Tensor | None = None, table: Tensor | None = None,
              scale: float | None = None, mask: Tensor | None = None, key_padding: Tensor | None = None,
              causal: bool = False, softcap: float = 0.0):
    """-> (Y, memory_k, memory_v, sink_k, sink_v, seen) for the next call.

    Sink position j is seen only while the memory does not hold it (j < seen − len(memory)),
    as the one-shot variant counts no key twice. ``key_padding`` covers this segment's keys.
    ``slopes`` and ``table`` (None or zero: no bias) give the relative bias over stream positions.
    """
    check_qkv(q, k, v)
    if mask is not None:
        raise ValueError("memory_stream streams causality, key padding and a relative bias only, not a dense mask")
    start = int(seen.reshape(-1)[0])
    n_sinks = max(0, min(start - memory_k.shape[2], sink_k.shape[2]))
    keys = torch.cat([sink_k[:, :, :n_sinks], memory_k, k], dim=2)
    values = torch.cat([sink_v[:, :, :n_sinks], memory_v, v], dim=2)
    if key_padding is not None:  # the carried keys were visible when they were stored
        prefix = key_padding.new_zeros(key_padding.shape[0], keys.shape[2] - k.shape[2])
        key_padding = torch.cat([prefix, key_padding.expand(key_padding.shape[0], k.shape[2])], dim=1)
    bias = None
    if slopes is not None and table is not None and (slopes.any() or table.any()):
        bias = stream_bias(slopes, table, *stream_positions(start, n_sinks, memory_k.shape[2], q.shape[2],
                                                            q.device))[None]
    y = restricted_attention(q, keys, values, None, scale=scale, mask=bias, key_padding=key_padding, causal=causal,
                             softcap=softcap)
    stream_k, stream_v = torch.cat([memory_k, k], dim=2), torch.cat([memory_v, v], dim=2)
    keep = max(0, stream_k.shape[2] - memory)
    return (y, stream_k[:, :, keep:].contiguous(), stream_v[:, :, keep:].contiguous(),
            torch.cat([sink_k, k], dim=2)[:, :, :sinks].contiguous(), torch.cat([sink_v, v], dim=2)[:, :, :sinks].contiguous(),
            seen + k.shape[2])
