"""lowrank: training-free Linformer / Nyströmformer. Keys (and, for nystrom, queries) are pooled into about
``rank`` group means, so every query costs O(rank·D)."""

from attnopt.kernels.spec import Param, VariantSpec, at_least

SPEC = VariantSpec(
    name="lowrank",
    summary="low-rank attention: pooled group means of the keys (pool) or a Nyström approximation (nystrom)",
    params=(
        Param("rank", int, 64, "r: the keys are pooled in consecutive groups of ceil(M / r), so about r groups",
              **at_least(1)),
        Param("method", str, "pool", "pool: softmax over the group means with a log-count term; nystrom: "
                                     "Nyström landmarks of queries and keys", choices=("pool", "nystrom")),
        Param("pinv_steps", int, 6, "Newton–Schulz iterations of nystrom's pseudo-inverse", **at_least(1)),
    ),
    exact_limit="rank >= M for pool; rank >= max(N, M) for nystrom, to the accuracy of the pseudo-inverse",
    exact_params=lambda n, m: {"rank": max(n, m), "method": "pool", "pinv_steps": 6},
    cost="O(N·r·D) (nystrom adds O(r³·pinv_steps))",
    refuses=("causal sites (a pooled group mixes future keys into every query)",
             "masks that vary per query (only key padding can be pooled)"),
    test_params=({"rank": 4, "method": "pool", "pinv_steps": 6}, {"rank": 5, "method": "nystrom", "pinv_steps": 6},
                 {"rank": 16, "method": "nystrom", "pinv_steps": 8}),
    demo_params={"rank": 32, "method": "pool", "pinv_steps": 6},
    needs_self_attention=False,
    serves_causal=False,
    serves_dense_mask=False,
)

