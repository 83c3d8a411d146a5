"""relbias: dense attention plus a relative-position bias b_h(j − i), computed on the fly, never as B×H×N×M.

O = softmax(s·QKᵀ + A + b_h(δ)) V with δ = j − p and p = i + (M − N) (the
KV-cache alignment, defined for any N and M, so cross-attention is served).
Every kind reaches the op as the same two constant tensors, so the op needs no
kind-specific code:

    b_h(δ) = bias_scale · (−slopes[h]·|δ| + table[h, clamp(δ, −R, R) + R]),  table (H, 2R + 1)

- alibi: slopes m_h from the ALiBi paper (``positions.alibi_slopes``), table 0.
  A causal site sees only δ <= 0, where −m_h·|δ| = m_h·δ.
- t5: table[h, δ + R] = T[h, bucket(δ)] for T5's log bucketing
  (``positions.t5_bucket``, HF's ``_relative_position_bucket``) with R = max_distance,
  beyond which the bucket no longer changes. T is (H, num_buckets).
- table: a bias per clipped distance: bidirectional, T[h, clamp(δ, −R, R) + R] with
  num_buckets = 2R + 1; otherwise T[h, clamp(−δ, 0, num_buckets − 1)] (future keys
  share bucket 0, as in T5).
- fuse: the model's own bias. Where mask analysis recognised one of the site's dense
  terms as a relative-position bias (T5's position_bias, BLOOM's ALiBi), the pass
  takes its slopes and table from the site and the op computes that bias in place of
  the term, exactly (the B×H×N×M tensor is never built); other sites are refused.

T (t5, table) comes from ``table_file`` (a .npy array, (H, num_buckets); one row
is shared by every head, as the op broadcasts one-row slopes and tables), or is
drawn N(0, init_std²) from the seed, or is zero. The bias is added after
softcapping, like any mask. Exact limit: bias_scale = 0, or a zero table.

On CUDA, ALiBi with nothing else on top (no table, key padding, mask or softcap)
skips the key blocks too far from every row of a tile to weigh: a key at distance
d scores at most ‖q‖·max‖k‖·s − m_h·d, and the kernel drops it once that bound is
32 + log2 M below the row's running maximum (log2 units), so all dropped keys
together weigh under 2^−32 of the row (``triton_band._band_fwd``, DECAY). Steep
heads then cost a window, not the whole sequence.
"""

from __future__ import annotations

import numpy as np

from attnopt.kernels.spec import Param, TensorInput, VariantSpec, at_least

KINDS = ("alibi", "t5", "table", "fuse")
FUSE = "fuse"  # the tensors come from the site (AttentionSite.relative_bias), not from parameters


def check_params(params: dict) -> str | None:
    """What is wrong with a combination of relbias parameters (one line), or None."""
    kind, nb, bidirectional = params["kind"], params["num_buckets"], params["bidirectional"]
    if kind == FUSE:
        if params["table_file"] or params["init_std"]:
            return "kind fuse takes the model's own bias: no table_file or init_std"
        if params["bias_scale"] != 1.0:
            return f"kind fuse reproduces the model's bias exactly: bias_scale must be 1, got {params['bias_scale']}"
        return None
    if kind == "alibi":
        if params["table_file"]:
            return "kind alibi takes no table_file (its slopes are fixed by the head count)"
        return None
    if kind == "t5":
        max_exact = (nb // 2 if bidirectional else nb) // 2  # T5's exact buckets, on each side
        if max_exact < 1:
            return f"t5 needs num_buckets >= {4 if bidirectional else 2}, got {nb}"
        if params["max_distance"] <= max_exact:
            return f"t5 needs max_distance > {max_exact} (num_buckets={nb}'s exact range), got {params['max_distance']}"
    if kind == "table" and bidirectional and nb % 2 == 0:
        return f"a bidirectional table needs an odd num_buckets (distances -R..R), got {nb}"
    return None


def load_table(path: str, num_buckets: int) -> np.ndarray:
    """The (H | 1, num_buckets) bucket table stored at ``path`` (numpy.save), as float32; ValueError if unusable."""
    try:
        table = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read table_file {path!r}: {e}") from None
    if not isinstance(table, np.ndarray) or table.ndim != 2 or table.shape[1] != num_buckets:
        shape = getattr(table, "shape", "several arrays")
        raise ValueError(f"table_file {path!r} must hold one (heads, num_buckets={num_buckets}) array, got {shape}")
    if not np.isfinite(table).all():
        raise ValueError(f"table_file {path!r} holds non-finite values")
    return table.astype(np.float32)


def make_tensors(params: dict, q_shape, k_shape, seed: int = 0) -> dict:
    """{"slopes": (H,), "table": (H, 2R + 1)} float32 for the site's H query heads."""
    from .positions import alibi_slopes, relative_table

    problem = check_params(params)
    if problem:
        raise ValueError(f"relbias: {problem}")
    heads = int(q_shape[1])
    if params["kind"] == FUSE:
        raise ValueError("relbias: kind fuse reads its slopes and table from the site's own bias, not parameters")
    if params["kind"] == "alibi":
        return {"slopes": np.asarray(alibi_slopes(heads), np.float32), "table": np.zeros((heads, 1), np.float32)}
    nb = params["num_buckets"]
    if params["table_file"]:
        buckets = load_table(params["table_file"], nb)
        if buckets.shape[0] not in (1, heads):  # one row: shared by every head
            raise ValueError(f"table_file {params['table_file']!r} has {buckets.shape[0]} heads; "
                             f"the attention has {heads}")
    else:
        buckets = (np.random.default_rng(seed).standard_normal((heads, nb)) * params["init_std"]).astype(np.float32)
    table = relative_table(params["kind"], buckets, nb, params["max_distance"], params["bidirectional"])
    return {"slopes": np.zeros(heads, np.float32), "table": table}


def _params(kind: str, **kw) -> dict:
    base = {"kind": kind, "num_buckets": 32, "max_distance": 128, "bidirectional": True, "table_file": "",
            "init_std": 0.0, "bias_scale": 1.0}
    return {**base, **kw}


SPEC = VariantSpec(
    name="relbias",
    summary="dense attention plus a relative-position bias (ALiBi, T5 buckets or a table) computed on the fly",
    params=(
        Param("kind", str, "alibi", "alibi (per-head linear slopes), t5 (T5's log buckets), table (one bias "
                                    "per clipped distance) or fuse (the model's own relative bias, recognised in "
                                    "its mask, computed on the fly instead)", choices=KINDS),
        Param("num_buckets", int, 32, "t5 / table: buckets in the table (t5: both directions together)",
              **at_least(1)),
        Param("max_distance", int, 128, "t5: distance where the log buckets end", **at_least(1)),
        Param("bidirectional", bool, True, "t5 / table: separate buckets for keys after the query"),
        Param("table_file", str, "", "t5 / table: a .npy (heads, num_buckets) table; empty: init_std"),
        Param("init_std", float, 0.0, "t5 / table without table_file: table drawn N(0, init_std^2) from the "
                                      "seed (0: the zero table)", check=lambda v: v >= 0, rule="must be >= 0"),
        Param("bias_scale", float, 1.0, "multiplies the whole bias (slopes and table); 0 is dense attention",
              check=lambda v: np.isfinite(v), rule="must be finite"),
    ),
    exact_limit="bias_scale = 0, or kind t5 / table with a zero table (no table_file, init_std 0); kind fuse "
                "equals the original everywhere (it computes the model's own bias)",
    exact_params=lambda n, m: _params("alibi", bias_scale=0.0),
    cost="O(N·M·D) compute, O(N·D + Bq·M) memory per (batch, head): the bias is never materialised",
    refuses=("sites whose head count is unknown (the slopes and table are per head)",
             "kind fuse: sites whose mask is not a relative-position bias (nothing to fuse)"),
    # The last setting's tensors must not depend on the head count: the conformance test's quadratic ONNX
    # check builds its tensors for one head and runs two (the zero table broadcasts; random ones would not).
    test_params=(_params("alibi"), _params("t5", num_buckets=8, max_distance=12, init_std=1.0),
                 _params("t5", num_buckets=6, max_distance=9, bidirectional=False, init_std=1.0),
                 _params("table", num_buckets=7, init_std=0.5, bias_scale=0.5),
                 _params("table", num_buckets=5, bidirectional=False)),
    demo_params=_params("alibi"),
    needs_self_attention=False,
    subquadratic=True,
    tensor_inputs=(
        TensorInput("slopes", "(H,) per-head slope m_h of the −m_h·|j − i| term (ALiBi; 0 for table kinds)",
                    per_head=True),
        TensorInput("table", "(H, 2R + 1) per-head bias for the distance j − i clamped to [−R, R]", per_head=True),
    ),
    make_tensors=make_tensors,
    serves_sink_logits=True,
)
