"""dense, the spec: every key (the site's own mask and causality still apply)."""

from ..reference import dense_attention as reference  # noqa: F401
