"""Train and evaluate stages: an SAE on the dumped activations, then its evaluation report."""

from __future__ import annotations

from prefect import task

from saev_core.evaluate import evaluate_run
from saev_core.train import TrainConfig, train_sae


@task(name="train-sae", tags=["gpu"], retries=1, retry_delay_seconds=5)
def train_sae_task(config: dict) -> dict:
    """Train (or resume from the last checkpoint: a retry continues where the crash left off)."""
    return train_sae(TrainConfig.model_validate(config))


@task(name="eval-sae", tags=["gpu"])
def eval_sae_task(run_dir: str, n_samples: int = 100) -> dict:
    report = evaluate_run(run_dir, n_samples=n_samples)
    report.pop("markdown")
    return report
