"""SAE architectures, one module each, registered by name: an architecture is its config class and
the behaviour ``SAE`` dispatches to (saev_core.sae.architectures.base). Adding one is a module
here plus its name on the registry line below."""

from __future__ import annotations

import importlib
from typing import Iterable, Literal

from pydantic.fields import FieldInfo

from saev_core.configs import DEFAULT_ARCHITECTURE
from saev_core.sae.architectures.base import ARCHITECTURES, Architecture, Encoded, get, register

# the registry line: each module registers its architecture when imported
MODULES = ("relu", "topk", "batchtopk", "matryoshka_batchtopk", "jumprelu", "gated")
for _module in MODULES:
    importlib.import_module(f"{__name__}.{_module}")

# set from the dump and the trainer, not by hand
_DERIVED = ("d_in", "input_scale", "seed")


def own_fields(data: dict, keep: Iterable[str] = ()) -> dict:
    """A config as saev wrote it when an SAE config held every architecture's fields (before saev
    format 2), with only its architecture's own and ``keep`` left (all of them for an unknown
    architecture, which then fails by name)."""
    arch = ARCHITECTURES.get(data.get("architecture", DEFAULT_ARCHITECTURE))
    keep = set(keep)
    return {k: v for k, v in data.items() if arch is None or k in arch.config.model_fields or k in keep}


def field_names() -> set[str]:
    """Every field some architecture's config declares."""
    return {name for arch in ARCHITECTURES.values() for name in arch.config.model_fields}


def flat_fields() -> dict[str, FieldInfo]:
    """The SAE fields a training config takes flat (``k=32``, the CLI's ``--k``), over every
    architecture: ``architecture`` as a choice of the registered names, the others as the first
    architecture that declares them does (its default named only where all agree)."""
    out: dict[str, FieldInfo] = {}
    defaults: dict[str, set] = {}
    for arch in ARCHITECTURES.values():
        for name, field in arch.config.model_fields.items():
            if name in _DERIVED:
                continue
            defaults.setdefault(name, set()).add(repr(field.default))
            out.setdefault(name, field)
    out["architecture"] = FieldInfo(annotation=Literal[tuple(ARCHITECTURES)], default=out["architecture"].default,
                                    description=out["architecture"].description)
    for name, seen in defaults.items():
        if len(seen) > 1 and name != "architecture":
            out[name] = FieldInfo(annotation=out[name].annotation | None, default=None,
                                  description=f"{out[name].description} (default: per architecture)")
    return out


__all__ = ["ARCHITECTURES", "Architecture", "Encoded", "field_names", "flat_fields", "get", "own_fields", "register"]
