"""Score and filter stages: feature tables + per-sample scores, then the top-k TRL dataset."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact

from saev_core.activations.shards import ActivationDump
from saev_core.sae.checkpoint import resolve_sae_dir, sae_id_of
from saev_core.alignment.filter import FilterConfig, run_filter
from saev_core.io import portable, read_json, write_json
from saev_core.scoring.quality import oracle_ranking, scorer_quality
from saev_core.tables.query import open_views
from saev_core.scoring.run import ScoreConfig, run_scoring
from saev_core.store.artifacts import ArtifactStore
from saev_core.tables.schema import manifest_path
from tasks.common import gpu_task, run_stage, with_smaller_batches


def partition_is_current(root: str):
    """The shared tables hold one scoring per (dataset, SAE): a score artifact is current only while
    the partition still holds its config (another config scored since then makes it rerun)."""
    tables = ArtifactStore.at(root).tables

    def valid(rec: dict) -> bool:
        m = rec["manifest"]
        path = manifest_path(tables, m["dataset"], m["sae_id"])
        return path.exists() and portable(read_json(path).get("identity")) == portable(m["identity"])
    return valid


def partition_taken(root: str, config: dict) -> bool:
    """True if the (dataset, SAE) partition this config writes already holds a finished scoring
    (the finishing task then returns it, or replaces it when the config differs)."""
    store = ArtifactStore.at(root)
    store.pull_tables()
    store.pull_inputs(config, [])
    cfg = ScoreConfig.model_validate({**config, "tables": str(store.tables)})
    dataset = cfg.dataset_name or ActivationDump.open(cfg.activations).manifest["dataset_name"]
    path = manifest_path(cfg.tables, dataset, sae_id_of(resolve_sae_dir(cfg.sae)))
    return path.exists()


@gpu_task("score-dataset", retries=1, retry_delay_seconds=5)
def score_dataset_task(root: str, config: dict, upstream: list[str]) -> dict:
    """Score into the store's shared tables; finished shards are kept, a finished partition returned as is."""
    store = ArtifactStore.at(root)

    def score(out):
        m = with_smaller_batches(lambda c: run_scoring(ScoreConfig.model_validate({**c, "tables": str(store.tables)}),
                                                       overwrite=True), config, "batch_rows")
        write_json(out / "manifest.json", m)
        return m

    return run_stage(root, "score", config, upstream, score, valid=partition_is_current(root),
                     summary=lambda m: {"dataset": m["dataset"], "sae_id": m["sae_id"], "samples": m["n_samples"],
                                        "cross_modal_latents": m["n_cross_modal"]})


@gpu_task("score-shard", retries=1, retry_delay_seconds=5)
def score_shard_task(root: str, config: dict, shard: int) -> dict:
    """Encode one dump shard into its sample_features part (mapped over shards on a cluster);
    ``score_dataset_task`` then reuses every finished shard and computes weights and scores."""
    store = ArtifactStore.at(root)
    store.pull_inputs(config, [])
    m = with_smaller_batches(lambda c: run_scoring(ScoreConfig.model_validate({**c, "tables": str(store.tables)}), shards=[shard]),
                             config, "batch_rows")
    store.push_tables()
    return m


@task(name="filter-dataset")
def filter_dataset_task(root: str, config: dict, upstream: list[str]) -> dict:
    """The top fraction by ``scorer``; with ``oracle_labels`` (evaluation only) the clean rows first instead."""
    store = ArtifactStore.at(root)
    conf = {k: v for k, v in config.items() if k != "oracle_labels"}
    if config.get("oracle_labels"):
        store.pull_inputs({"labels": config["oracle_labels"]}, [])

    def run(out):
        fcfg = FilterConfig.model_validate({**conf, "tables": str(store.tables), "out": str(out / "data")})
        if config.get("oracle_labels"):
            return run_filter(fcfg, ranking=oracle_ranking(config["oracle_labels"]), ranking_name="oracle")
        return run_filter(fcfg)

    return run_stage(root, "filter", config, upstream, run,
                     summary=lambda m: {"kept": m["n_kept"], **{f"{k}_rows": v for k, v in m["splits"].items()}})


@task(name="scorer-quality")
def scorer_quality_task(root: str, labels: str, dataset: str, sae_id: str) -> list[dict]:
    """AUROC per scorer against evaluation-only labels (the demo world's labels.parquet)."""
    store = ArtifactStore.at(root)
    store.pull_tables()
    store.pull_inputs({"labels": labels}, [])
    return scorer_quality(open_views(store.tables), labels, dataset, sae_id)


@task(name="report")
def report_task(root: str, config: dict, upstream: list[str]) -> dict:
    """The HTML feature browser as a pipeline stage (linked from its Prefect artifact)."""
    from saev_core.cli.locate import sae_points
    from saev_core.scoring.report import png_data_uri, write_report

    store = ArtifactStore.at(root)
    args = {k: v for k, v in config.items() if k != "frontier_of"}
    rec = run_stage(root, "report", config, upstream,
                    lambda out: write_report(store.tables, out / "html", points=sae_points(store, config.get("frontier_of")), **args),
                    summary=lambda m: {"index": m["index"], "latent_pages": m["latent_pages"], "sample_pages": m["sample_pages"]})
    # the plots as a Markdown artifact, inline PNGs: the UI cannot reach local files
    plots = {title: Path(path) for title, path in rec["manifest"].get("plots", {}).items()}
    md = "".join(f"#### {title}\n\n![{title}]({png_data_uri(p.read_bytes())})\n\n" for title, p in plots.items() if p.is_file())
    if md:
        create_markdown_artifact(markdown=md, key="saev-report-plots", description=f"saev report plots {rec['key']}")
    return rec
