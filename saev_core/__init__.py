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
    "run_dump": "saev_core.dump",
    "ActivationDump": "saev_core.activations",
    "train_sae": "saev_core.train", "train_saes": "saev_core.train",
    "SAE": "saev_core.sae",
    "load_sae": "saev_core.checkpoint", "save_sae": "saev_core.checkpoint",
    "evaluate_run": "saev_core.sae_eval",
    "run_scoring": "saev_core.score_dataset",
    "connect": "saev_core.query", "run_query": "saev_core.query",
    "run_filter": "saev_core.filter",
    "run_alignment": "saev_core.align",
    "evaluate_model": "saev_core.model_eval",
    "run_experiment": "saev_core.experiment",
}
__all__ = [
    "__version__", "DemoConfig", "build_world", "DatasetSpec", "DumpConfig", "run_dump", "ActivationDump",
    "TrainConfig", "train_sae", "train_saes", "SAE", "SAEConfig", "load_sae", "save_sae", "evaluate_run",
    "ScoreConfig", "run_scoring", "connect", "run_query", "FilterConfig", "run_filter", "AlignConfig", "run_alignment",
    "evaluate_model", "ExperimentConfig", "run_experiment",
]

if TYPE_CHECKING:
    from saev_core.activations import ActivationDump
    from saev_core.align import run_alignment
    from saev_core.checkpoint import load_sae, save_sae
    from saev_core.configs import (AlignConfig, DatasetSpec, DemoConfig, DumpConfig, ExperimentConfig, FilterConfig, SAEConfig,
                                   ScoreConfig, TrainConfig)
    from saev_core.demo.build import build_world
    from saev_core.dump import run_dump
    from saev_core.experiment import run_experiment
    from saev_core.filter import run_filter
    from saev_core.model_eval import evaluate_model
    from saev_core.query import connect, run_query
    from saev_core.sae import SAE
    from saev_core.sae_eval import evaluate_run
    from saev_core.score_dataset import run_scoring
    from saev_core.train import train_sae, train_saes


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'saev_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
