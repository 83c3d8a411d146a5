"""dense: plain attention through the op contract; head groups kept exact use it."""

from attnopt.kernels.spec import VariantSpec

SPEC = VariantSpec(
    name="dense",
    summary="plain scaled-dot-product attention (what a head group kept dense runs)",
    params=(),
    exact_limit="always exact",
    exact_params=lambda n, m: {},
    cost="O(N·M·D)",
    test_params=({},),
    needs_self_attention=False,
    kv_cache=True,
    subquadratic=False,
    serves_sink_logits=True,
)
