"""Per-sample scorers (METHOD.md sec. 4), a registry: each scorer is a class in one of these
modules that declares its parameters, its dataset-level fit and its score (``base.Scorer``).
Adding one is a module here plus its name on the registry line below."""

from __future__ import annotations

import importlib
from typing import Any, Iterable, Iterator

from pydantic import ValidationError
from pydantic.fields import FieldInfo

from saev_core.scoring.scorers.base import (SCORERS, Dataset, NoParams, SampleSummary, Scorer, ScorerParams, cooccurring_latents,
                                            get_scorer, image_latents, random_unit, reference_subset, register, text_latents)

# the registry line: each module registers its scorers when imported, in this order
MODULES = ("baselines", "cooccurrence", "agreement", "agreement_peers", "model_cosine", "clip")
for _module in MODULES:
    importlib.import_module(f"{__name__}.{_module}")


def default_scorers() -> list[str]:
    """The scorers a scoring run computes when none are named."""
    return [name for name, s in SCORERS.items() if s.default]


def experiment_scorers() -> list[str]:
    """The scorers the alignment experiment compares when none are named."""
    return [name for name, s in SCORERS.items() if s.experiment]


def check_scorers(names: list[str]) -> list[str]:
    for n in names:
        get_scorer(n)
    return list(dict.fromkeys(names))


def with_used(names: Iterable[str]) -> list[str]:
    """``names`` and the scorers they read the params and state of."""
    out: list[str] = []
    for name in names:
        for n in (*get_scorer(name).uses, name):
            if n not in out:
                out.append(n)
    return out


def flat_names() -> dict[str, tuple[str, str]]:
    """Each scorer parameter's flat spelling, ``<prefix>_<field>`` -> (scorer, field)."""
    out: dict[str, tuple[str, str]] = {}
    for name, scorer in SCORERS.items():
        for f in scorer.Params.model_fields:
            flat = f"{scorer.Params.prefix}_{f}"
            if flat in out:
                raise ValueError(f"{name}'s parameter {flat} is already {out[flat][0]}'s: give its Params another prefix")
            out[flat] = (name, f)
    return out


def flat_fields() -> dict[str, FieldInfo]:
    """The scorer parameters a score config takes flat (the CLI's ``--agreement-tau``), all optional."""
    return {flat: FieldInfo(annotation=SCORERS[name].Params.model_fields[f].annotation | None, default=None,
                            description=SCORERS[name].Params.model_fields[f].description)
            for flat, (name, f) in flat_names().items()}


def check_params(scorers: list[str], params: dict[str, Any]) -> dict[str, ScorerParams]:
    """Every listed scorer's (and those it uses) params, validated by its own model; params for a
    scorer that is not scored fail, so a typo'd or forgotten scorer is named."""
    needed = with_used(scorers)
    if stray := [name for name in params if name not in needed]:
        raise ValueError(f"params given for {', '.join(stray)}, which is not among the scorers: add it to the scorers or drop its params")
    out = {}
    for name in needed:
        given = params.get(name) or {}
        try:
            out[name] = get_scorer(name).Params.model_validate(given.model_dump() if isinstance(given, ScorerParams) else given)
        except ValidationError as e:
            if missing := [err["loc"][0] for err in e.errors() if err["type"] == "missing"]:
                prefix = get_scorer(name).Params.prefix
                raise ValueError(f"the {name} scorer needs {', '.join(f'{prefix}_{m}' for m in missing)} "
                                 f"(params.{name}.{missing[0]})") from None
            raise
    return out


def score_all(names: list[str], data: Dataset) -> Iterator[tuple[SampleSummary, dict[str, float]]]:
    """Every named scorer on every sample of ``data``, each fitted once first."""
    states = {name: data.state_of(name) for name in names}
    for s in data.summaries():
        yield s, {name: SCORERS[name].score(s, states[name]) for name in names}


__all__ = ["SCORERS", "Dataset", "NoParams", "SampleSummary", "Scorer", "ScorerParams", "check_params", "check_scorers",
           "cooccurring_latents", "default_scorers", "experiment_scorers", "flat_fields", "flat_names", "get_scorer", "image_latents",
           "random_unit", "reference_subset", "register", "score_all", "text_latents", "with_used"]
