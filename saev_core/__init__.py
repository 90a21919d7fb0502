"""saev_core: the SAE-V library (no Prefect imports here; orchestration lives in tasks/ and flows/).

The public API, one config and one function per stage, each writing files plus a JSON manifest::

    import saev_core as saev

    saev.run_dump(saev.DumpConfig(...))        # residual-stream activations to Parquet
    saev.train_sae(saev.TrainConfig(...))      # an SAE on a dump
    saev.run_scoring(saev.ScoreConfig(...))    # feature tables and per-sample scores
    saev.connect("data/runs/tables")           # those tables as read-only DuckDB views
    saev.run_filter(saev.FilterConfig(...))    # the top fraction as a TRL-ready dataset
    saev.run_alignment(saev.AlignConfig(...))  # TRL SFT or DPO on it

Names load on first use, so ``import saev_core`` stays cheap for the CLI.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.3.0"

_API = {
    **dict.fromkeys(["DatasetSpec", "DemoConfig", "DumpConfig", "SAEConfig", "TrainConfig", "ScoreConfig", "FilterConfig",
                     "AlignConfig", "ExperimentConfig"], "saev_core.configs"),
    "build_world": "saev_core.demo.build",
    "run_dump": "saev_core.activations.dump",
    "ActivationDump": "saev_core.activations.shards",
    "train_sae": "saev_core.sae.train", "train_saes": "saev_core.sae.train",
    "SAE": "saev_core.sae.model",
    "load_sae": "saev_core.sae.checkpoint", "save_sae": "saev_core.sae.checkpoint",
    "evaluate_run": "saev_core.sae.evaluate",
    "run_scoring": "saev_core.scoring.run",
    "connect": "saev_core.tables.query", "run_query": "saev_core.tables.query",
    "run_filter": "saev_core.alignment.filter",
    "run_alignment": "saev_core.alignment.align",
    "evaluate_model": "saev_core.alignment.model_eval",
    "run_experiment": "saev_core.alignment.experiment",
}
__all__ = [
    "__version__", "DemoConfig", "build_world", "DatasetSpec", "DumpConfig", "run_dump", "ActivationDump",
    "TrainConfig", "train_sae", "train_saes", "SAE", "SAEConfig", "load_sae", "save_sae", "evaluate_run",
    "ScoreConfig", "run_scoring", "connect", "run_query", "FilterConfig", "run_filter", "AlignConfig", "run_alignment",
    "evaluate_model", "ExperimentConfig", "run_experiment",
]

if TYPE_CHECKING:
    from saev_core.activations.shards import ActivationDump
    from saev_core.alignment.align import run_alignment
    from saev_core.sae.checkpoint import load_sae, save_sae
    from saev_core.configs import (AlignConfig, DatasetSpec, DemoConfig, DumpConfig, ExperimentConfig, FilterConfig, SAEConfig,
                                   ScoreConfig, TrainConfig)
    from saev_core.demo.build import build_world
    from saev_core.activations.dump import run_dump
    from saev_core.alignment.experiment import run_experiment
    from saev_core.alignment.filter import run_filter
    from saev_core.alignment.model_eval import evaluate_model
    from saev_core.tables.query import connect, run_query
    from saev_core.sae.model import SAE
    from saev_core.sae.evaluate import evaluate_run
    from saev_core.scoring.run import run_scoring
    from saev_core.sae.train import train_sae, train_saes


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'saev_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
