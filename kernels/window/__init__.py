"""window: each query attends to the keys within W positions of it, plus G sink keys (Longformer, Mistral)."""

from attnopt.kernels.spec import Param, VariantSpec, at_least

SPEC = VariantSpec(
    name="window",
    summary="sliding window: each query sees the keys less than W positions away, plus G sink tokens",
    params=(
        Param("window", int, 512, "W: query i sees keys j with |i - j| < W (i - W < j <= i when causal)",
              **at_least(1)),
        Param("sinks", int, 0, "the first G keys, seen by every query (StreamingLLM's attention sinks)",
              **at_least(0)),
    ),
    exact_limit="window >= N (with a causal site: exactly causal attention)",
    exact_params=lambda n, m: {"window": max(n, m), "sinks": 0},
    cost="O(N·(2W+G)·D); O(N·(W+G)·D) causal",
    refuses=("cross-attention (the keys are another sequence)",),
    test_params=({"window": 3, "sinks": 0}, {"window": 4, "sinks": 2}, {"window": 1, "sinks": 5}),
    demo_params={"window": 16, "sinks": 2},
    kv_cache=True,
    serves_sink_logits=True,
    reach=lambda p: p["window"] - 1,
)


def band(window: int) -> tuple[int, int, int]:
    """window W as a band (unit, before, after): |p - j| < W."""
    return 1, window - 1, window - 1
