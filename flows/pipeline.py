"""The ``saev`` flow: prepare (demo data + model) -> dump activations -> train SAE -> evaluate it.
Later stages (score, filter, align) are appended as they land."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger

from tasks.demo import prepare_demo
from tasks.dump import dump_activations
from tasks.train import eval_sae_task, train_sae_task

# Sized for the demo world on 2 CPU cores (about a minute); real runs pass their own `sae` config.
DEMO_SAE = {"architecture": "topk", "k": 16, "expansion_factor": 8, "batch_size": 1024, "total_tokens": 1_000_000}


@flow(name="saev")
def saev_pipeline(
    demo_dir: str = "data/demo",
    runs_dir: str = "data/runs",
    dataset: str = "demo-rlaif",
    layer: int = 2,
    limit: int | None = None,
    demo: dict | None = None,
    dump: dict | None = None,
    sae: dict | None = None,
    eval_samples: int = 100,
) -> dict:
    """Run the pipeline on the demo world. ``limit`` caps the rows used; ``demo``, ``dump`` and
    ``sae`` override fields of those stages' configs."""
    logger = get_run_logger()
    world = prepare_demo(demo or {}, demo_dir)
    spec = world["datasets"][dataset]
    dump_cfg = {
        "model": str(Path(demo_dir) / world["model"]),
        "dataset": {"path": str(Path(demo_dir) / spec["path"]), "name": dataset, "format": spec["format"],
                    "limit": limit},
        "layer": layer,
        "out": str(Path(runs_dir) / f"dump-{dataset}-L{layer}"),
        **(dump or {}),
    }
    manifest = dump_activations(dump_cfg)
    sae_cfg = {**DEMO_SAE, **(sae or {})}
    sae_cfg.update(activations=dump_cfg["out"], out=str(Path(runs_dir) / f"sae-{dataset}-L{layer}-{sae_cfg['architecture']}"))
    run = train_sae_task(sae_cfg)
    report = eval_sae_task(sae_cfg["out"], eval_samples)
    summary = {
        "demo_world": demo_dir,
        "demo_model_accuracy": world["pretrain"]["heldout_accuracy"],
        "chance": world["pretrain"]["chance"],
        "activations": dump_cfg["out"],
        "samples": manifest["n_samples"],
        "rejected": manifest["n_rejected"],
        "rows": manifest["rows"],
        "sae": str(Path(sae_cfg["out"]) / "sae"),
        "sae_fvu": {g: run["heldout"][g]["fvu"] for g in ("all", "image", "text")},
        "sae_l0": run["heldout"]["all"]["l0"],
        "ce_loss_recovered": report.get("ce_with_images", {}).get("ce_loss_recovered"),
        "eval_report": str(Path(sae_cfg["out"]) / "eval.md"),
    }
    logger.info(
        "demo model accuracy %.3f (chance %.3f); %d samples dumped (%d rejected) -> %s; SAE FVU %.3f at L0 %.1f, "
        "CE-loss-recovered %s -> %s",
        summary["demo_model_accuracy"], summary["chance"], summary["samples"], summary["rejected"], dump_cfg["out"],
        summary["sae_fvu"]["all"], summary["sae_l0"], summary["ce_loss_recovered"], summary["eval_report"],
    )
    return summary


if __name__ == "__main__":
    result = saev_pipeline()
    print("\nsaev pipeline finished:")
    for key, value in result.items():
        print(f"  {key}: {value}")
