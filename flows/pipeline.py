"""The ``saev`` flow: prepare (demo data + model) -> dump activations. Later stages (train,
score, filter, align, evaluate) are appended as they land."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger

from tasks.demo import prepare_demo
from tasks.dump import dump_activations


@flow(name="saev")
def saev_pipeline(
    demo_dir: str = "data/demo",
    runs_dir: str = "data/runs",
    dataset: str = "demo-rlaif",
    layer: int = 2,
    limit: int | None = None,
    demo: dict | None = None,
    dump: dict | None = None,
) -> dict:
    """Run the pipeline on the demo world. ``limit`` caps the rows used; ``demo`` and ``dump``
    override fields of those stages' configs."""
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
    summary = {
        "demo_world": demo_dir,
        "demo_model_accuracy": world["pretrain"]["heldout_accuracy"],
        "chance": world["pretrain"]["chance"],
        "activations": dump_cfg["out"],
        "samples": manifest["n_samples"],
        "rejected": manifest["n_rejected"],
        "rows": manifest["rows"],
    }
    logger.info(
        "demo model accuracy %.3f (chance %.3f); %d samples dumped (%d rejected), %s rows -> %s",
        summary["demo_model_accuracy"], summary["chance"], summary["samples"], summary["rejected"],
        manifest["rows"], dump_cfg["out"],
    )
    return summary


if __name__ == "__main__":
    result = saev_pipeline()
    print("\nsaev pipeline finished:")
    for key, value in result.items():
        print(f"  {key}: {value}")
