"""What the flows share about their stages: the typed overrides each flow config accepts, and
the dump config both flows build, so the full pipeline and nightly-rescore give the same dataset
the same dump (the same stage key, one cached artifact)."""

from __future__ import annotations

from pathlib import Path

from prefect.runtime import deployment

from saev_core.alignment.align import AlignConfig
from saev_core.activations.data import DatasetSpec
from saev_core.activations.dump import DumpConfig
from saev_core.cli.overrides import overrides_of
from saev_core.scoring.run import ScoreConfig
from saev_core.sae.train import TrainConfig

DumpOverrides = overrides_of(DumpConfig, set_by_flow=("model", "dataset", "layer", "out"))
TrainOverrides = overrides_of(TrainConfig, set_by_flow=("activations", "out"))
ScoreOverrides = overrides_of(ScoreConfig, set_by_flow=("activations", "sae", "tables", "dataset_name"))
AlignOverrides = overrides_of(AlignConfig, set_by_flow=("model", "data", "out"))

# What identifies the dump of one dataset apart from its settings.
DUMP_TARGET = ("model", "dataset", "layer")


def dump_config(model: str, spec: DatasetSpec, layer: int, settings: dict) -> dict:
    """The dump stage's config: ``settings`` are every other DumpConfig field the flow sets."""
    clash = set(settings) & set(DUMP_TARGET)
    if clash:
        raise ValueError(f"dump settings may not set {sorted(clash)}: the flow sets model, dataset and layer itself")
    return {"model": model, "dataset": spec.model_dump(), "layer": layer, **settings}


def dump_settings(dump_config: dict) -> dict:
    """The settings of an existing dump config (for dumping another dataset the same way)."""
    return {k: v for k, v in dump_config.items() if k not in DUMP_TARGET}


def check_deployment_paths(**paths: str) -> None:
    """In a deployment run, each of ``paths`` (config field -> value) must be an absolute path or
    a URL: the run's working directory is the pull step's clone in a temporary directory, and
    anything written under a relative path would be gone when the run ends."""
    if deployment.id is None:
        return
    for field, value in paths.items():
        if not value:
            raise ValueError(f"config.{field} is empty: set the Prefect variable prefect.yaml reads it from (docs/pipeline.md) "
                             f"and run `prefect deploy --all` again, or pass config.{field} with --params")
        if "://" not in value and not Path(value).expanduser().is_absolute():
            raise ValueError(f"config.{field} is the relative path {value!r}: a deployment run works in a temporary clone, so "
                             f"give an absolute path or a URL (s3://bucket/saev) every worker reaches")
