"""memory: each segment of S queries sees itself plus the M_mem keys before it (Transformer-XL), plus G sinks."""

from attnopt.kernels.spec import Param, VariantSpec, at_least

SPEC = VariantSpec(
    name="memory",
    summary="segments of S tokens that also see the M_mem keys before their segment, plus G sink tokens",
    params=(
        Param("segment_size", int, 512, "tokens per segment (S)", **at_least(1)),
        Param("memory", int, 512, "M_mem: keys before its segment that a query also sees (the recurrence memory)",
              **at_least(0)),
        Param("sinks", int, 0, "the first G keys, seen by every query (StreamingLLM's attention sinks)",
              **at_least(0)),
    ),
    # Keys after a query's segment stay hidden, so a bidirectional site also needs one segment.
    exact_limit="memory >= N on a causal site; memory >= N and segment_size >= N on a bidirectional one",
    exact_params=lambda n, m: {"segment_size": max(n, m), "memory": max(n, m), "sinks": 0},
    cost="O(N·(S+M_mem+G)·D)",
    refuses=("cross-attention (the keys are another sequence)",),
    test_params=({"segment_size": 4, "memory": 4, "sinks": 0}, {"segment_size": 5, "memory": 3, "sinks": 2},
                 {"segment_size": 3, "memory": 0, "sinks": 4}),
    demo_params={"segment_size": 32, "memory": 32, "sinks": 2},
    kv_cache=True,
    streaming_form="memory_stream",
    serves_sink_logits=True,
    reach=lambda p: p["segment_size"] - 1 + p["memory"],
)


def band(segment_size: int, memory: int) -> tuple[int, int, int]:
    """memory as a band (unit, before, after): seg(p)·S − M_mem <= j < (seg(p) + 1)·S."""
    return segment_size, memory, 0
