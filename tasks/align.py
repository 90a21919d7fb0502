"""Alignment stages: TRL SFT/DPO on a filter artifact, held-out evaluation, the experiment grid."""

from __future__ import annotations

from prefect import task

from saev_core.alignment.align import AlignConfig, run_alignment
from saev_core.activations.data import DatasetSpec
from saev_core.alignment.experiment import ExperimentConfig, evaluate_base, finish, run_one
from saev_core.alignment.model_eval import evaluate_model
from tasks.common import gpu_task, run_stage


@gpu_task("align", retries=1, retry_delay_seconds=5)
def align_task(root: str, config: dict, upstream: list[str]) -> dict:
    return run_stage(
        root, "align", config, upstream, lambda out: run_alignment(AlignConfig.model_validate({**config, "out": str(out / "aligned")})),
        summary=lambda m: {"method": m["method"], "rows": m["n_train_rows"], "steps": m["steps"], "last_loss": m["last_loss"]})


@gpu_task("evaluate-model")
def evaluate_model_task(root: str, config: dict, upstream: list[str]) -> dict:
    """Held-out metrics of one model (config: model, heldout, n_samples, reference, chat_template)."""
    def run(out):
        report = evaluate_model(config["model"], DatasetSpec(path=config["heldout"]), config.get("n_samples"),
                                reference=config.get("reference"), chat_template=config.get("chat_template"))
        report.pop("examples", None)
        return report

    return run_stage(root, "evaluate", config, upstream, run,
                     summary=lambda r: {k: r[k] for k in ("answer_accuracy", "nll", "preference_accuracy") if k in r})


@gpu_task("experiment-base")
def experiment_base_task(config: dict) -> dict:
    return evaluate_base(ExperimentConfig.model_validate(config))


@gpu_task("experiment-run", retries=1, retry_delay_seconds=5)
def experiment_run_task(config: dict, run: dict) -> dict:
    """One grid point (filter -> align -> evaluate); finished points are read back, not redone."""
    return run_one(ExperimentConfig.model_validate(config), run)


@task(name="experiment-report")
def experiment_report_task(config: dict, rows: list[dict], base: dict) -> dict:
    return finish(ExperimentConfig.model_validate(config), rows, base)
