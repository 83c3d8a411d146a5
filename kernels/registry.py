"""The variants: every folder under ``kernels/`` whose ``__init__`` declares a ``SPEC``.

Found by looking, so a new variant is registered by existing. Importing this
module is cheap: specs are plain data, and torch ops and ONNX bodies load on
first use (``VariantSpec.torch_op`` / ``onnx_function``).
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import lru_cache

from .spec import VariantSpec

__all__ = ["all_variants", "get_variant", "register_torch_ops", "variant_names"]


@lru_cache(maxsize=None)
def _discover() -> dict[str, VariantSpec]:
    from dataclasses import replace

    found = {}
    for info in sorted(pkgutil.iter_modules(_package_path()), key=lambda i: i.name):
        if not info.ispkg:
            continue
        module = importlib.import_module(f"{__package__}.{info.name}")
        spec = getattr(module, "SPEC", None)
        if isinstance(spec, VariantSpec):
            found[spec.name] = replace(spec, package=module.__name__)
    return found


def _package_path() -> list[str]:
    return list(importlib.import_module(__package__).__path__)


def all_variants() -> list[VariantSpec]:
    return list(_discover().values())


def variant_names() -> list[str]:
    return sorted(_discover())


def get_variant(name: str) -> VariantSpec:
    variants = _discover()
    try:
        return variants[name]
    except KeyError:
        raise KeyError(f"no attnopt variant named {name!r}; known: {sorted(variants)}") from None


def register_torch_ops() -> None:
    """Define every torch.ops.attnopt.* op (a fresh process unpickling a rewritten module needs them)."""
    for spec in all_variants():
        spec.torch_op
