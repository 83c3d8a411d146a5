"""hierarchical: exact keys near each query, pooled blocks further away (H-Transformer-1D style), plus G sinks.

Blocks are the aligned key ranges [b·B, (b + 1)·B); query i, at position
p = i + (M − N), is in block ⌊p / B⌋. By block distance d = b − ⌊p / B⌋:

- fine level, |d| <= 1: exact keys (causal: d ∈ {−1, 0}, with causality inside);
- coarse levels, every other block (causal: d <= −2 only), pooled into groups,
  one pooled key and value per group (``kernels.pooling``): the mean over the
  group's unmasked keys, scored s·q·k̄ + log n; a group with no unmasked key is
  masked. With L levels, coarse level ℓ = 0 .. L − 1 pools 2^ℓ consecutive
  blocks: level ℓ < L − 1 serves |d| ∈ [2^(ℓ+1), 2^(ℓ+2)) (two groups on each
  side), the last level every |d| >= 2^L (groups counted outwards from the fine
  window). L = 1 pools every block on its own.
- sinks: the first G keys are always exact and never pooled, so no key counts twice.

One softmax covers fine, sink and pooled entries (and GPT-OSS's learned sink logit, where given).

A dense remainder mask (``mask``) is per query and key, so it cannot be pooled:
it applies to the exact entries (fine and sinks) only, and the pass refuses
sites that have one. Key padding is per key and is pooled exactly.
"""

from attnopt.kernels.spec import Param, VariantSpec, at_least

SPEC = VariantSpec(
    name="hierarchical",
    summary="exact keys in a query's block and its neighbours, one pooled key per farther block, plus G sinks",
    params=(
        Param("block", int, 64, "B: tokens per block; a query sees its own and the adjacent blocks exactly",
              **at_least(1)),
        Param("levels", int, 1, "L: coarse levels; level l pools 2^l blocks (1: every farther block on its own)",
              **at_least(1)),
        Param("sinks", int, 0, "the first G keys, seen exactly by every query (StreamingLLM's attention sinks)",
              **at_least(0)),
    ),
    exact_limit="block >= N (block >= M on a KV-cache step): every key is in the fine level",
    exact_params=lambda n, m: {"block": max(n, m), "levels": 1, "sinks": 0},
    cost="O(N·(3B + N/B + G)·D) for L = 1",
    refuses=("cross-attention (the keys are another sequence)",
             "a dense mask that is neither causal nor key padding (it cannot be pooled)"),
    test_params=({"block": 4, "levels": 1, "sinks": 0}, {"block": 2, "levels": 2, "sinks": 2},
                 {"block": 1, "levels": 3, "sinks": 1}, {"block": 8, "levels": 2, "sinks": 2}),
    demo_params={"block": 16, "levels": 1, "sinks": 2},
    kv_cache=True,
    serves_sink_logits=True,
)

