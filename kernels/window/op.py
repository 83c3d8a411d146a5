"""torch.ops.attnopt.window_attention: the band machinery with band (1, W - 1, W - 1)."""

from __future__ import annotations

from ..band import band_attention, cuda_forward
from ..torch_ops import define_op
from . import band


def forward(q, k, v, mask, key_padding, window: int, sinks: int, scale: float, causal: bool, softcap: float,
            sink_logits=None):
    unit, before, after = band(window)
    # A causal query never sees the keys after it: the band's right half would be pure waste.
    return band_attention(q, k, v, mask, key_padding, unit=unit, before=before, after=0 if causal else after,
                          sinks=sinks, scale=scale, causal=causal, softcap=softcap, sink_logits=sink_logits)


window_attention = define_op("window", forward, cuda=cuda_forward(
    lambda window, sinks, causal: (*band(window)[:2], 0 if causal else band(window)[2], sinks)))
