"""Typer options generated from a config class, so that a new config field needs no second
declaration in the CLI.

Every flat field (a number, text, flag, choice, or a list of those) becomes ``--field-name``
with its pydantic description as the help and its default shown; a field left out of the
command line stays out of the config, so the config file, ``--set`` and the class's own
default decide it. Nested or mapping fields are reached with ``--set``.
"""

from __future__ import annotations

import inspect
import types
import typing
from typing import Any, Callable, Literal, Optional, Union

import typer
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from saev_core.configs import flat_fields

_SCALARS = (int, float, str, bool)


def _optional_inner(annotation: Any) -> Any:
    """``X | None`` -> X; anything else as it is."""
    if typing.get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


def flag_type(annotation: Any) -> Any | None:
    """The typer type of a field's flag, or None when the field has no flat flag (--set reaches it)."""
    inner = _optional_inner(annotation)
    if inner in _SCALARS or typing.get_origin(inner) is Literal:
        return Optional[inner]
    if typing.get_origin(inner) is list and typing.get_args(inner)[0] in _SCALARS:
        return Optional[inner]
    return None


def _help(field, extra: str | None) -> str | None:
    text = (field.description or "").rstrip(".")
    if extra is not None:
        return f"{text} ({extra})" if text else extra
    if field.default is not PydanticUndefined and field.default is not None and field.default != []:
        default = field.default if not isinstance(field.default, bool) else str(field.default).lower()
        return f"{text} (default: {default})" if text else f"default: {default}"
    return text or None


def config_options(model: type[BaseModel], *, skip: tuple[str, ...] = (), names: dict[str, str] | None = None,
                   help: dict[str, str] | None = None, short: dict[str, str] | None = None) -> Callable:
    """Decorate a typer command so it also takes one option per flat field of ``model``, handed to
    it as ``flags``: a dict of the fields given on the command line (keyed by field name).

    ``names`` renames a flag (``{"scorers": "scorer"}`` gives a repeatable ``--scorer``), ``help``
    replaces a field's default in its help (for defaults the CLI fills in, see saev_core.cli.locate),
    and ``short`` adds a short form (``{"out": "-o"}``)."""
    names, help, short = names or {}, help or {}, {"out": "-o", **(short or {})}

    def decorate(fn: Callable) -> Callable:
        hints = typing.get_type_hints(fn)
        hints.pop("flags", None)
        own = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in inspect.signature(fn).parameters.values() if p.name != "flags"]
        taken = {p.name for p in own}
        generated: dict[str, str] = {}  # parameter name -> field name
        params = list(own)
        for field_name, field in flat_fields(model).items():
            kind = flag_type(field.annotation)
            if field_name in skip or kind is None:
                continue
            flag = names.get(field_name, field_name)
            param = f"flag_{flag}"
            if flag in taken:
                raise TypeError(f"{fn.__name__} declares --{flag} and {model.__name__} generates it: skip the field")
            decl = f"--{flag.replace('_', '-')}"
            if _optional_inner(field.annotation) is bool:
                decl = f"{decl}/--no-{flag.replace('_', '-')}"
            decls = [decl, *([short[field_name]] if field_name in short else [])]
            params.append(inspect.Parameter(param, inspect.Parameter.KEYWORD_ONLY, annotation=kind,
                                            default=typer.Option(None, *decls, help=_help(field, help.get(field_name)))))
            hints[param] = kind
            generated[param] = field_name

        def command(**kwargs):
            given = {generated[p]: kwargs.pop(p) for p in list(kwargs) if p in generated}
            return fn(**kwargs, flags={k: v for k, v in given.items() if v is not None and v != []})

        command.__name__, command.__doc__, command.__module__ = fn.__name__, fn.__doc__, fn.__module__
        command.__signature__ = inspect.Signature(params)
        command.__annotations__ = hints
        return command

    return decorate
