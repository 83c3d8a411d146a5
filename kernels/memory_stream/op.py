"""torch.ops.attnopt.memory_stream_attention: the reference's math, which already has the per-call cost."""

from __future__ import annotations

from ..torch_ops import define_op
from .reference import reference


def forward(q, k, v, mask, key_padding, slopes, table, memory_k, memory_v, sink_k, sink_v, seen, memory: int,
            sinks: int, scale: float, causal: bool, softcap: float):
    # One segment against at most S + M_mem + G keys: O(S·(S+M_mem+G)·D), nothing grows with the stream
    # (the relative bias is (H, S, S + M_mem + G) too).
    return reference(q, k, v, memory_k, memory_v, sink_k, sink_v, seen, memory=memory, sinks=sinks, slopes=slopes,
                     table=table, scale=scale, mask=mask, key_padding=key_padding, causal=causal, softcap=softcap)


memory_stream_attention = define_op("memory_stream", forward)
