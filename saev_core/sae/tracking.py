"""Experiment tracking for SAE training: the same ``report_to`` names TRL and transformers use
(``wandb``, ``tensorboard``, ``mlflow``, ``none``), each through its own library.

Every backend writes beside the run unless its own environment says otherwise: W&B to
``<out>/wandb`` (``WANDB_MODE=offline`` works with no network; ``wandb sync`` uploads later),
TensorBoard event files to ``<out>/tensorboard``, MLflow to ``MLFLOW_TRACKING_URI`` or else a
SQLite store at ``<out>/mlflow.db``. ``train_log.jsonl`` is written whatever the choice.
"""

from __future__ import annotations

import os
from pathlib import Path

from saev_core.configs import check_report_to


class Tracker:
    """Scalars of one run to one backend; ``log`` takes a flat dict of numbers at a step."""

    def __init__(self, report_to: str, out: Path, name: str, config: dict):
        self.report_to, self._run = check_report_to(report_to), None
        if report_to == "wandb":
            import wandb

            (out / "wandb").mkdir(parents=True, exist_ok=True)
            self._run = wandb.init(project="saev", name=name, dir=str(out), config=config, reinit="create_new")
        elif report_to == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            self._run = SummaryWriter(log_dir=str(out / "tensorboard"))
        elif report_to == "mlflow":
            import mlflow

            if "MLFLOW_TRACKING_URI" not in os.environ:
                mlflow.set_tracking_uri(f"sqlite:///{(out / 'mlflow.db').absolute()}")  # MLflow 3's file store is retired
            mlflow.set_experiment("saev")
            self._run = mlflow.start_run(run_name=name)
            mlflow.log_params({k: v for k, v in config.items() if isinstance(v, (str, int, float, bool))})

    def log(self, row: dict, step: int) -> None:
        """Numbers of ``row`` at ``step``; nested dicts (the held-out evaluation, per modality) as "heldout/image/fvu"."""
        scalars = {k: float(v) for k, v in _flat(row).items() if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"}
        if self.report_to == "wandb":
            self._run.log(scalars, step=step)
        elif self.report_to == "tensorboard":
            for k, v in scalars.items():
                self._run.add_scalar(f"train/{k}", v, step)
        elif self.report_to == "mlflow":
            import mlflow

            mlflow.log_metrics(scalars, step=step)

    def finish(self) -> None:
        if self.report_to == "wandb":
            self._run.finish()
        elif self.report_to == "tensorboard":
            self._run.close()
        elif self.report_to == "mlflow":
            import mlflow

            mlflow.end_run()


def _flat(row: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in row.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out
