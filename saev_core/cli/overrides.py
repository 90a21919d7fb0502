"""Typed stage overrides for the flows: each stage's own config class, every field optional.

A pipeline config names only the fields it changes (``sae: {k: 8}``); as a typed model a typo
or a wrong type fails when the flow starts, naming the field, instead of inside a task after
the stages before it have run. The flow merges ``set_fields(overrides)`` into the stage's config
dict, so the stage keys (and the cache) are what they were with plain dicts.
"""

from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, ConfigDict, Field, create_model

from saev_core.configs import flat_fields


def overrides_of(model: type[BaseModel], *, set_by_flow: tuple[str, ...]) -> type[BaseModel]:
    """A model of optional overrides of ``model``'s fields, minus those the flow sets itself."""
    fields = {name: (Optional[f.annotation], Field(None, description=f.description))
              for name, f in flat_fields(model).items() if name not in set_by_flow}
    return create_model(f"{model.__name__}Overrides", __config__=ConfigDict(extra="forbid"), **fields)


def set_fields(overrides: BaseModel) -> dict:
    """The fields a user set, as JSON-ready values (what the stage config dict gets)."""
    return overrides.model_dump(mode="json", exclude_unset=True)
