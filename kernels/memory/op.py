"""torch.ops.attnopt.memory_attention: the band machinery with band (S, M_mem, 0)."""

from __future__ import annotations

from ..band import band_attention, cuda_forward
from ..torch_ops import define_op
from . import band


def forward(q, k, v, mask, key_padding, segment_size: int, memory: int, sinks: int, scale: float, causal: bool,
            softcap: float, sink_logits=None):
    unit, before, after = band(segment_size, memory)
    return band_attention(q, k, v, mask, key_padding, unit=unit, before=before, after=after, sinks=sinks,
                          scale=scale, causal=causal, softcap=softcap, sink_logits=sink_logits)


memory_attention = define_op("memory", forward, cuda=cuda_forward(
    lambda segment_size, memory, sinks, causal: (*band(segment_size, memory), sinks)))
