"""Train and evaluate stages: an SAE on the dumped activations, then its evaluation report."""

from __future__ import annotations


from saev_core.sae.evaluate import evaluate_run
from saev_core.sae.train import TrainConfig, headline, train_sae, train_saes
from tasks.common import gpu_task, run_stage, run_stages


@gpu_task("train-sae", retries=1, retry_delay_seconds=5)
def train_sae_task(root: str, config: dict, upstream: list[str], stage: str = "train") -> dict:
    """Train (or resume from the last checkpoint: a retry continues where the crash left off).
    ``stage`` "frontier" keeps the report's extra sweep SAEs apart from the pipeline's SAE."""
    return run_stage(root, stage, config, upstream, lambda out: train_sae(TrainConfig.model_validate({**config, "out": str(out)})),
                     summary=headline)


@gpu_task("train-saes", retries=1, retry_delay_seconds=5)
def train_saes_task(root: str, configs: list[dict], upstream: list[str], stage: str = "frontier") -> list[dict]:
    """Several SAEs from one pass over the dump (the report's frontier), each its own artifact."""
    return run_stages(root, stage, configs, upstream,
                      lambda todo: train_saes([TrainConfig.model_validate({**c, "out": str(out)}) for c, out in todo]), summary=headline)


@gpu_task("eval-sae")
def eval_sae_task(root: str, config: dict, upstream: list[str]) -> dict:
    def run(out):
        report = evaluate_run(config["run"], n_samples=config["n_samples"], out=str(out))
        report.pop("markdown")
        return report

    return run_stage(root, "eval-sae", config, upstream, run,
                     summary=lambda r: {"ce_loss_recovered": r.get("ce_with_images", {}).get("ce_loss_recovered"),
                                        "kl_score": r.get("ce_with_images", {}).get("kl", {}).get("all", {}).get("kl_score"),
                                        "fvu": r["reconstruction"]["all"]["fvu"]})
