"""Score and filter stages: feature tables + per-sample scores, then the top-k TRL dataset."""

from __future__ import annotations

from prefect import task

from saev_core.filter import FilterConfig, run_filter
from saev_core.quality import scorer_quality
from saev_core.query import connect
from saev_core.score_dataset import ScoreConfig, run_scoring


@task(name="score-dataset", tags=["gpu"], retries=1, retry_delay_seconds=5)
def score_dataset_task(config: dict) -> dict:
    """Score (or resume: finished shards are kept, a finished partition is returned as is)."""
    return run_scoring(ScoreConfig.model_validate(config))


@task(name="filter-dataset")
def filter_dataset_task(config: dict) -> dict:
    return run_filter(FilterConfig.model_validate(config))


@task(name="scorer-quality")
def scorer_quality_task(tables: str, labels: str, dataset: str, sae_id: str) -> list[dict]:
    """AUROC per scorer against evaluation-only labels (the demo world's labels.parquet)."""
    return scorer_quality(connect(tables), labels, dataset, sae_id)
