"""The ``saev-experiment`` flow: performance vs data kept for every scorer (issue 5's experiment).

Each grid point is one task, so a Prefect run shows every (scorer, fraction, seed) and a rerun
skips the finished ones. Run the default grid on the demo world with ``python -m flows.experiment``
after the ``saev`` flow (or `saev score`) has written the feature tables.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from saev_core.alignment.experiment import ExperimentConfig, claim_out
from flows.stages import check_deployment_paths
from saev_core.cli.locate import experiment_inputs
from tasks.align import experiment_base_task, experiment_report_task, experiment_run_task


@flow(name="saev-experiment")
def saev_experiment(config: dict | None = None, overwrite: bool = False) -> dict:
    """``config``: ExperimentConfig fields (defaults: the demo world, five scorers, 10/25/50/75/100%);
    ``overwrite`` replaces runs in ``out`` made from another model, scores or training config."""
    cfg = experiment_inputs(ExperimentConfig.model_validate({"progress": False, **(config or {})}))
    check_deployment_paths(tables=cfg.tables, out=cfg.out)
    claim_out(cfg, overwrite)
    data = cfg.model_dump()
    base = experiment_base_task(data)
    rows = [experiment_run_task(data, r) for r in cfg.runs()]
    summary = experiment_report_task(data, rows, base)
    get_run_logger().info("experiment finished: %d runs -> %s\n%s", summary["n_runs"], summary["plot"], summary["markdown"])
    return summary


if __name__ == "__main__":
    result = saev_experiment()
    print(result["markdown"])
    print(f"\nplot: {result['plot']}")
