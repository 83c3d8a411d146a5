"""segmented: each query attends to its own segment of S consecutive keys, plus G sink keys."""

from attnopt.kernels.spec import Param, VariantSpec, at_least

SPEC = VariantSpec(
    name="segmented",
    summary="block-diagonal attention over consecutive segments of S tokens, plus G sink tokens",
    params=(
        Param("segment_size", int, 512, "tokens per segment (S): each query sees its own segment", **at_least(1)),
        Param("sinks", int, 0, "the first G keys, seen by every query (StreamingLLM's attention sinks)",
              **at_least(0)),
    ),
    exact_limit="segment_size >= N",
    exact_params=lambda n, m: {"segment_size": max(n, m), "sinks": 0},
    cost="O(N·(S+G)·D)",
    refuses=("cross-attention (the keys are another sequence)",),
    test_params=({"segment_size": 4, "sinks": 0}, {"segment_size": 5, "sinks": 2}, {"segment_size": 3, "sinks": 7}),
    demo_params={"segment_size": 32, "sinks": 2},
    serves_sink_logits=True,
    reach=lambda p: p["segment_size"] - 1,
)
