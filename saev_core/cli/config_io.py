"""A command's config: a YAML/JSON file, then flags, then ``--set a.b=value``, validated once.

The CLI's only config logic, kept out of it so that every command reads configs the same way;
errors are ValueErrors with one line naming the field and what to write instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError


def load_config_file(path: str | Path | None) -> dict:
    if path is None:
        return {}
    path = Path(path)
    if not path.exists():
        raise ValueError(f"config file {path} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping, got {type(data).__name__}")
    return data


def apply_set(cfg: dict, assignments: list[str]) -> dict:
    """Apply ``a.b=value`` overrides; values are parsed as YAML (numbers, booleans, lists)."""
    for item in assignments:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set: expected key=value, got {item!r}")
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {key}: {p} is not a mapping")
        node[leaf] = yaml.safe_load(raw)
    return cfg


def merge(cfg: dict, overrides: dict[str, Any]) -> dict:
    """Set dotted keys whose flag was given (value not None)."""
    for key, value in overrides.items():
        if value is None:
            continue
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return cfg


def read_config(path: str | Path | None, assignments: list[str] = (), overrides: dict[str, Any] | None = None) -> dict:
    """The config file, then the flags given (``overrides``), then the ``--set`` assignments."""
    return apply_set(merge(load_config_file(path), overrides or {}), list(assignments))


def parse_pairs(items: list[str], flag: str, what: str = "name=value") -> dict[str, str]:
    """``["a=1", "b=x"]`` -> {"a": "1", "b": "x"}, the values as given."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"{flag}: expected {what}, got {item!r}")
        out[name] = value
    return out


def parse_sweep(items: list[str]) -> dict[str, list]:
    """``k=16,32`` -> {"k": [16, 32]}; values parsed as YAML, as for --set."""
    axes = parse_pairs(items, "--sweep", "FIELD=V1,V2,...")
    if any(not raw for raw in axes.values()):
        raise ValueError(f"--sweep: expected FIELD=V1,V2,..., got {items!r}")
    return {f: [yaml.safe_load(v) for v in raw.split(",")] for f, raw in axes.items()}


def describe_errors(e: ValidationError) -> list[str]:
    """One ``field.sub: message`` line per pydantic error; a check across fields (a model
    validator, which has no field) gives its message alone, without pydantic's "Value error, "."""
    lines = []
    for err in e.errors():
        msg = err["msg"].removeprefix("Value error, ") if err["type"] == "value_error" else err["msg"]
        lines.append(f"{'.'.join(str(x) for x in err['loc'])}: {msg}" if err["loc"] else msg)
    return lines


def validate(model: type[BaseModel], data: dict) -> BaseModel:
    """``model`` from ``data``, or a ValueError listing every invalid field."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ValueError("invalid config:\n" + "\n".join(f"  {line}" for line in describe_errors(e))) from None
