"""The registry of passes: name -> class. A pass module registers itself by existing in passes/."""

from __future__ import annotations

import importlib
import pkgutil

from attnopt.errors import InvalidParamsError

PASSES: dict[str, type] = {}
# Modules in passes/ that hold machinery, not passes.
_NOT_PASSES = {"base", "registry"}


def register(cls):
    PASSES[cls.name] = cls
    return cls


def _load_all() -> None:
    # Imported on first use so `import attnopt` stays cheap.
    for info in pkgutil.iter_modules(importlib.import_module(__package__).__path__):
        if info.name not in _NOT_PASSES:
            importlib.import_module(f"{__package__}.{info.name}")


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


def describe(name: str) -> dict:
    """What `attnopt passes [NAME]` shows: summary, parameters (default, help, rule), exact limit, refusals."""
    spec = pass_class(name).spec()
    return {
        "name": spec.name, "summary": spec.summary,
        "params": {p.name: p.default for p in spec.params},
        "parameters": [{"name": p.name, "type": p.type.__name__, "default": p.default, "help": p.help,
                        "rule": p.rule, **({"choices": list(p.choices)} if p.choices else {})} for p in spec.params],
        "exact_limit": spec.exact_limit, "cost": spec.cost, "refuses": list(spec.refuses),
        "needs_self_attention": spec.needs_self_attention,
        # GPT-OSS's learned sink logits: a site with them is refused by a variant that does not take them
        "takes_sink_logits": spec.serves_sink_logits,
    }
