"""lsh: Reformer-style angular LSH. A query sees the keys that share its hash bucket in some round, its local chunk
and G sinks, in one softmax (with GPT-OSS's learned sink logit, where given); the rotations are drawn from
``seed`` and stored in the model."""

import numpy as np

from attnopt.kernels.spec import Param, TensorInput, VariantSpec, at_least


def _rotations(params: dict, q_shape, k_shape, seed: int = 0) -> dict:
    """R_r ∈ R^{D × b/2}, N(0, 1) from the variant's own ``seed`` parameter (the harness's seed is not lsh's)."""
    half = max(params["n_buckets"] // 2, 1)  # b = 1 needs no direction: every vector lands in bucket 0
    rng = np.random.default_rng(params["seed"])
    return {"rotations": rng.standard_normal((params["n_rounds"], q_shape[-1], half)).astype(np.float32)}


SPEC = VariantSpec(
    name="lsh",
    summary="angular LSH (Reformer): each query sees the keys in its hash bucket in any round, its local chunk "
            "and G sink tokens",
    params=(
        Param("n_buckets", int, 32, "b: hash buckets per round, argmax over ±b/2 random directions",
              check=lambda v: v == 1 or (v >= 2 and v % 2 == 0),
              rule="must be 1 or even (a vector hashes to one of ±b/2 directions)"),
        Param("n_rounds", int, 1, "R: independent hash rounds; a query sees the union of its buckets",
              **at_least(1)),
        Param("chunk", int, 64, "C: every query also sees the keys of its own chunk of C positions (no empty row)",
              **at_least(1)),
        Param("seed", int, 0, "seed of the random rotations stored in the model (same seed, same model)",
              **at_least(0)),
        Param("sinks", int, 0, "the first G keys, seen by every query (StreamingLLM's attention sinks)",
              **at_least(0)),
    ),
    exact_limit="n_buckets = 1",
    exact_params=lambda n, m: {"n_buckets": 1, "n_rounds": 1, "chunk": 64, "seed": 0, "sinks": 0},
    cost="expected O(N·(N/b + C + G)·D·R), plus the sorts",
    refuses=("cross-attention (the keys are another sequence)", "KV-cache steps"),
    # Few buckets with heavy overlap; several rounds (one softmax over the union); many small buckets.
    test_params=({"n_buckets": 4, "n_rounds": 1, "chunk": 4, "seed": 0, "sinks": 0},
                 {"n_buckets": 2, "n_rounds": 3, "chunk": 3, "seed": 1, "sinks": 2},
                 {"n_buckets": 128, "n_rounds": 1, "chunk": 4, "seed": 2, "sinks": 1}),
    # One round: a second one doubles the visited keys and adds the cross-round dedup (N = 2048 on the CPU:
    # 663 against 145 ms for n_buckets=16, n_rounds=1, with the original at 67-85 ms).
    demo_params={"n_buckets": 16, "n_rounds": 1, "chunk": 16, "seed": 0, "sinks": 2},
    tensor_inputs=(TensorInput("rotations", "(n_rounds, head_dim, max(n_buckets / 2, 1)) float32 N(0, 1) "
                                            "random rotations drawn from seed"),),
    make_tensors=_rotations,
    serves_sink_logits=True,
)
