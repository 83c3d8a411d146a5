"""memory_stream: memory's streaming form. One call attends one segment; the memory and sink keys are state.

Driving it segment by segment (S tokens a call) equals the one-shot memory
variant with segment_size S: a segment sees its own keys, the M_mem keys
before it (the memory state) and the first G keys of the stream (the sink
state) where the memory does not already hold them.
"""

from attnopt.kernels.spec import Param, StateIO, VariantSpec, at_least

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
    refuses=("cross-attention", "a dense mask that varies by query (only causality and key padding stream)"),
    state=(
        StateIO("memory_k", "the last M_mem keys before this segment, (B, Hkv, <= M_mem, D); empty at the start"),
        StateIO("memory_v", "their values"),
        StateIO("sink_k", "the stream's first keys, (B, Hkv, <= G, D); empty at the start"),
        StateIO("sink_v", "their values"),
        StateIO("seen", "tokens of the stream before this segment, (1,)", shape=("1",), dtype="int64"),
    ),
)
