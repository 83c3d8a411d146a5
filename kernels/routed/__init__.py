"""routed: Routing Transformer. k-means on each (batch, kv head)'s keys; a query sees the keys of its top_k
clusters, its local chunk and G sinks, in one softmax (with GPT-OSS's learned sink logit, where given)."""

from attnopt.kernels.spec import Param, VariantSpec, at_least

SPEC = VariantSpec(
    name="routed",
    summary="clustered attention (Routing Transformer): each query sees the keys of its top_k k-means clusters, "
            "its local chunk and G sink tokens",
    params=(
        Param("n_clusters", int, 16, "c: k-means centroids per (batch, kv head), found on the site's keys at "
                                     "run time", **at_least(1)),
        Param("top_k", int, 1, "clusters each query routes to (at most n_clusters are used)", **at_least(1)),
        Param("iters", int, 2, "Lloyd iterations from the initial centroids (the keys at c evenly spaced "
                               "positions)", **at_least(0)),
        Param("seed", int, 0, "kept for VARIANTS.md's signature; the initialisation is deterministic, so every "
                              "seed gives the same model", **at_least(0)),
        Param("chunk", int, 64, "C: every query also sees the keys of its own chunk of C positions (no empty row)",
              **at_least(1)),
        Param("sinks", int, 0, "the first G keys, seen by every query (StreamingLLM's attention sinks)",
              **at_least(0)),
    ),
    exact_limit="n_clusters = 1",
    exact_params=lambda n, m: {"n_clusters": 1, "top_k": 1, "iters": 2, "seed": 0, "chunk": 64, "sinks": 0},
    cost="expected O(N·(N·top_k/c + C + G)·D) for attention, plus O(M·c·D·iters) for k-means",
    refuses=("cross-attention (the keys are another sequence)", "KV-cache steps"),
    # A few clusters; two routes per query with sinks and no iteration; many small clusters.
    test_params=({"n_clusters": 3, "top_k": 1, "iters": 2, "seed": 0, "chunk": 4, "sinks": 0},
                 {"n_clusters": 4, "top_k": 2, "iters": 0, "seed": 0, "chunk": 3, "sinks": 2},
                 {"n_clusters": 64, "top_k": 1, "iters": 3, "seed": 0, "chunk": 4, "sinks": 1}),
    # top_k = 1: a second cluster per query doubles the visited keys (N = 2048 on the CPU: 480 against 138 ms
    # for n_clusters=16, top_k=1, with the original at 69-76 ms).
    demo_params={"n_clusters": 16, "top_k": 1, "iters": 2, "seed": 0, "chunk": 16, "sinks": 2},
    serves_sink_logits=True,
)
