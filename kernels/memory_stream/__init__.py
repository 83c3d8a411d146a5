"""memory_stream: memory's streaming form. One call attends one segment; the memory and sink keys are state.

Driving it segment by segment (S tokens a call) equals the one-shot memory
variant with segment_size S: a segment sees its own keys, the M_mem keys
before it (the memory state) and the first G keys of the stream (the sink
state) where the memory does not already hold them.

A relative-position bias (ALiBi as BLOOM adds it, or any relbias (slopes,
table) pair) cannot stay a dense term: a segment's mask knows nothing of the
carried keys. The op computes it instead, relbias's formula over ABSOLUTE
stream positions: the segment's queries and keys sit at seen .. seen + S − 1,
the memory right before them, the sinks at 0 .. G − 1. Zero slopes and table
(what a site without such a bias gets) add nothing.
"""

import numpy as np

from attnopt.kernels.spec import Param, StateIO, TensorInput, VariantSpec, at_least


def no_bias(params: dict, q_shape, k_shape, seed: int = 0) -> dict:
    """The tensors of a site without a relative bias: one zero slope and a zero one-entry table."""
    return {"slopes": np.zeros(1, np.float32), "table": np.zeros((1, 1), np.float32)}


SPEC = VariantSpec(
    name="memory_stream",
    summary="memory, one segment per call: the memory and sink keys/values are model state",
    params=(
        Param("memory", int, 512, "M_mem: keys before the segment that it also sees (kept as state)", **at_least(0)),
        Param("sinks", int, 0, "the first G keys of the stream, seen by every segment (kept as state)",
              **at_least(0)),
    ),
    exact_limit="memory >= the stream's length",
    exact_params=lambda n, m: {"memory": max(n, m), "sinks": 0},
    cost="O(S·(S+M_mem+G)·D) per call, memory bounded by S, M_mem and G",
    refuses=("cross-attention", "a dense mask that varies by query, other than a recognised relative-position "
                                "bias (causality, key padding and ALiBi / relbias-form biases stream)"),
    tensor_inputs=(
        TensorInput("slopes", "(H | 1,) relative bias −slopes[h]·|j − i| over stream positions (0: none)"),
        TensorInput("table", "(H | 1, 2R + 1) relative bias table[h, clamp(j − i, −R, R) + R] (zeros: none)"),
    ),
    make_tensors=no_bias,
    state=(
        StateIO("memory_k", "the last M_mem keys before this segment, (B, Hkv, <= M_mem, D); empty at the start"),
        StateIO("memory_v", "their values"),
        StateIO("sink_k", "the stream's first keys, (B, Hkv, <= G, D); empty at the start"),
        StateIO("sink_v", "their values"),
        StateIO("seen", "tokens of the stream before this segment, (1,)", shape=("1",), dtype="int64"),
    ),
)
