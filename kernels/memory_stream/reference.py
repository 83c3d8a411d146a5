"""memory_stream, the spec: one segment against [unseen sinks; memory; itself], then the state moves on."""

from __future__ import annotations

import torch
from torch import Tensor

from ..reference import check_qkv, restricted_attention


def reference(q: Tensor, k: Tensor, v: Tensor, memory_k: Tensor, memory_v: Tensor, sink_k: Tensor, sink_v: Tensor,
              seen: Tensor, *, memory: int, sinks: int, scale: float | None = None, mask: Tensor | None = None,
              key_padding: Tensor | None = None, causal: bool = False, softcap: float = 0.0):
    """-> (Y, memory_k, memory_v, sink_k, sink_v, seen) for the next call.

    Sink position j is seen only while the memory does not hold it (j < seen − len(memory)),
    as the one-shot variant counts no key twice. ``key_padding`` covers this segment's keys.
    """
    check_qkv(q, k, v)
    if mask is not None:
        raise ValueError("memory_stream streams causality and key padding only, not a dense mask")
    n_sinks = max(0, min(int(seen.reshape(-1)[0]) - memory_k.shape[2], sink_k.shape[2]))
    keys = torch.cat([sink_k[:, :, :n_sinks], memory_k, k], dim=2)
    values = torch.cat([sink_v[:, :, :n_sinks], memory_v, v], dim=2)
    if key_padding is not None:  # the carried keys were visible when they were stored
        prefix = key_padding.new_zeros(key_padding.shape[0], keys.shape[2] - k.shape[2])
        key_padding = torch.cat([prefix, key_padding.expand(key_padding.shape[0], k.shape[2])], dim=1)
    y = restricted_attention(q, keys, values, None, scale=scale, key_padding=key_padding, causal=causal,
                             softcap=softcap)
    stream_k, stream_v = torch.cat([memory_k, k], dim=2), torch.cat([memory_v, v], dim=2)
    keep = max(0, stream_k.shape[2] - memory)
    return (y, stream_k[:, :, keep:].contiguous(), stream_v[:, :, keep:].contiguous(),
            torch.cat([sink_k, k], dim=2)[:, :, :sinks].contiguous(), torch.cat([sink_v, v], dim=2)[:, :, :sinks].contiguous(),
            seen + k.shape[2])
