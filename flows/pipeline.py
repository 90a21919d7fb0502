"""The ``saev`` flow: prepare (demo data + model) -> dump activations -> train SAE -> evaluate it
-> score the dataset into the feature tables -> keep the top fraction as a TRL dataset -> align
the base model on it with TRL -> evaluate base and aligned model on the held-out split."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger

from tasks.align import align_task, evaluate_model_task
from tasks.demo import prepare_demo
from tasks.dump import dump_activations
from tasks.score import filter_dataset_task, score_dataset_task, scorer_quality_task
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
    tables_dir: str = "data/tables",
    score: dict | None = None,
    scorer: str = "saev",
    top_fraction: float = 0.5,
    align: dict | None = None,
) -> dict:
    """Run the pipeline on the demo world. ``limit`` caps the rows used; ``demo``, ``dump``, ``sae``
    ``score`` and ``align`` override fields of those stages' configs; ``scorer`` and
    ``top_fraction`` pick what the filter keeps."""
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
    score_cfg = {"activations": dump_cfg["out"], "sae": sae_cfg["out"], "tables": tables_dir, "dataset_name": dataset,
                 **(score or {})}
    scored = score_dataset_task(score_cfg)
    filtered_dir = str(Path(runs_dir) / f"filtered-{dataset}-{scorer}-{round(top_fraction * 100)}")
    filtered = filter_dataset_task({"tables": tables_dir, "out": filtered_dir, "scorer": scorer,
                                    "datasets": [dataset], "sae_id": scored["sae_id"], "top_fraction": top_fraction})
    quality = scorer_quality_task(tables_dir, str(Path(demo_dir) / "labels.parquet"), dataset, scored["sae_id"])
    align_cfg = {"model": dump_cfg["model"], "data": filtered_dir, "method": "sft", **(align or {})}
    align_cfg["out"] = str(Path(runs_dir) / f"aligned-{dataset}-{scorer}-{round(top_fraction * 100)}-{align_cfg['method']}")
    aligned = align_task(align_cfg)
    heldout = str(Path(demo_dir) / world["heldout"])
    n_eval = eval_samples if limit else None
    base_eval = evaluate_model_task(dump_cfg["model"], heldout, n_eval)
    aligned_eval = evaluate_model_task(str(Path(align_cfg["out"]) / "model"), heldout, n_eval,
                                       reference=dump_cfg["model"] if align_cfg["method"] == "dpo" else None)
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
        "tables": tables_dir,
        "sae_id": scored["sae_id"],
        "cross_modal_latents": scored["n_cross_modal"],
        "scorer_auroc": {r["scorer"]: round(r["auroc"], 3) for r in quality},
        "filtered": filtered_dir,
        "filtered_kept": filtered["n_kept"],
        "aligned_model": str(Path(align_cfg["out"]) / "model"),
        "alignment": {"method": align_cfg["method"], "train_rows": aligned["n_train_rows"],
                      "base": {k: base_eval.get(k) for k in ("answer_accuracy", "nll", "preference_accuracy")},
                      "aligned": {k: aligned_eval.get(k) for k in ("answer_accuracy", "nll", "preference_accuracy")}},
        "query": f"saev query --tables {tables_dir} \"SELECT scorer, avg(score) FROM scores GROUP BY ALL\"",
    }
    logger.info(
        "demo model accuracy %.3f (chance %.3f); %d samples dumped (%d rejected) -> %s; SAE FVU %.3f at L0 %.1f, "
        "CE-loss-recovered %s -> %s",
        summary["demo_model_accuracy"], summary["chance"], summary["samples"], summary["rejected"], dump_cfg["out"],
        summary["sae_fvu"]["all"], summary["sae_l0"], summary["ce_loss_recovered"], summary["eval_report"],
    )
    logger.info("scored %s into %s (SAE %s); kept %d samples by %s -> %s; AUROC clean vs low-quality: %s",
                dataset, tables_dir, scored["sae_id"], filtered["n_kept"], scorer, filtered_dir, summary["scorer_auroc"])
    return summary


if __name__ == "__main__":
    result = saev_pipeline()
    print("\nsaev pipeline finished:")
    for key, value in result.items():
        print(f"  {key}: {value}")
