"""Alignment stages: TRL SFT/DPO on a filter artifact, held-out evaluation, the experiment grid."""

from __future__ import annotations

from prefect import task

from saev_core.align import AlignConfig, run_alignment
from saev_core.data import DatasetSpec
from saev_core.experiment import ExperimentConfig, evaluate_base, finish, run_one
from saev_core.model_eval import evaluate_model


@task(name="align", tags=["gpu"], retries=1, retry_delay_seconds=5)
def align_task(config: dict) -> dict:
    return run_alignment(AlignConfig.model_validate(config))


@task(name="evaluate-model", tags=["gpu"])
def evaluate_model_task(model: str, heldout: str, n_samples: int | None = None, reference: str | None = None) -> dict:
    report = evaluate_model(model, DatasetSpec(path=heldout), n_samples, reference=reference)
    report.pop("examples", None)
    return report


@task(name="experiment-base", tags=["gpu"])
def experiment_base_task(config: dict) -> dict:
    return evaluate_base(ExperimentConfig.model_validate(config))


@task(name="experiment-run", tags=["gpu"], retries=1, retry_delay_seconds=5)
def experiment_run_task(config: dict, run: dict) -> dict:
    """One grid point (filter -> align -> evaluate); finished points are read back, not redone."""
    return run_one(ExperimentConfig.model_validate(config), run)


@task(name="experiment-report")
def experiment_report_task(config: dict, rows: list[dict], base: dict) -> dict:
    return finish(ExperimentConfig.model_validate(config), rows, base)
