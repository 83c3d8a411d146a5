"""torch.ops.attnopt.dense_attention: the reference math (dense attention costs N×M by definition)."""

from __future__ import annotations

from ..reference import restricted_attention
from ..torch_ops import define_op


def forward(q, k, v, mask, key_padding, scale: float, causal: bool, softcap: float):
    return restricted_attention(q, k, v, None, scale=scale, mask=mask, key_padding=key_padding, causal=causal,
                                softcap=softcap)


dense_attention = define_op("dense", forward)
