"""torch.ops.attnopt.dense_attention: the reference math (dense attention costs N×M by definition)."""

from __future__ import annotations

from ..reference import restricted_attention
from ..band import cuda_forward
from ..torch_ops import define_op


def forward(q, k, v, mask, key_padding, scale: float, causal: bool, softcap: float, sink_logits=None):
    return restricted_attention(q, k, v, None, scale=scale, mask=mask, key_padding=key_padding, causal=causal,
                                softcap=softcap, sink_logits=sink_logits)


# One unit wider than any sequence: every key is in the band.
dense_attention = define_op("dense", forward, cuda=cuda_forward(lambda causal: (1 << 30, 0, 0, 0)))
