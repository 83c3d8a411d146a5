"""The registry of passes: name -> class. A new variant registers itself here."""

from __future__ import annotations

import importlib

from attnopt.errors import InvalidParamsError

PASSES: dict[str, type] = {}
# Modules that define passes; imported on first use so `import attnopt` stays cheap.
PASS_MODULES = ("segmented",)


def register(cls):
    PASSES[cls.name] = cls
    return cls


def _load_all() -> None:
    for mod in PASS_MODULES:
        importlib.import_module(f"attnopt.passes.{mod}")


def pass_names() -> list[str]:
    _load_all()
    return sorted(PASSES)


def pass_class(name: str) -> type:
    _load_all()
    if name not in PASSES:
        raise InvalidParamsError(f"unknown pass '{name}'; available: {', '.join(sorted(PASSES))}")
    return PASSES[name]


def make_pass(name: str, **params):
    return pass_class(name)(**params)
