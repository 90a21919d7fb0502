"""The ``nightly-rescore`` flow: score every registered dataset that has no scores for the current SAE.

The registry is a directory of YAML files, one per dataset: ``name`` (the table partition) and
``dataset`` (a DatasetSpec: path, format, columns, split, ...). The current SAE is the newest
``train`` artifact in the store unless ``sae`` names one, with the model and layer of the dump it
was trained on. A dataset already scored with that SAE is left alone; a new one is dumped and
scored through the same cached stages as the full pipeline, and its partitions are added to the
shared tables.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from prefect import flow, get_run_logger
from pydantic import BaseModel, ConfigDict, Field

from flows.stages import DumpOverrides, ScoreOverrides, check_deployment_paths, dump_config, dump_settings
from saev_core.sae.checkpoint import resolve_sae_dir, sae_id_of
from saev_core.activations.data import DatasetSpec
from saev_core.cli.overrides import set_fields
from saev_core.configs import DEFAULT_STORE
from saev_core.store.artifacts import ArtifactStore, built_here
from saev_core.tables.schema import check_partition_value, manifest_path
from tasks.common import run_cached
from tasks.dump import dump_activations
from tasks.score import partition_is_current, score_dataset_task


class RescoreConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    artifacts: str = Field(DEFAULT_STORE, description="artifact store root (the same as the full pipeline's)")
    registry: str = Field("data/registry", description="directory of dataset YAML files (name + dataset spec)")
    sae: str | None = Field(None, description="SAE directory; default: the newest train artifact in the store")
    model: str | None = Field(None, description="default: the model of the SAE's dump")
    layer: int | None = Field(None, description="default: the layer of the SAE's dump")
    dump: DumpOverrides = Field(default_factory=DumpOverrides, description="DumpConfig overrides (on top of the SAE's own dump)")
    score: ScoreOverrides = Field(default_factory=ScoreOverrides, description="ScoreConfig overrides")


def read_registry(path: str | Path) -> list[tuple[str, DatasetSpec]]:
    """(name, spec) for every *.yaml / *.yml file; a bad file fails with its name."""
    out = []
    for f in sorted(Path(path).glob("*.y*ml")):
        try:
            entry = yaml.safe_load(f.read_text()) or {}
            name = check_partition_value("dataset name", str(entry.get("name", f.stem)))
            out.append((name, DatasetSpec.model_validate(entry["dataset"])))
        except Exception as e:  # yaml, pydantic and key errors all mean the same to the user
            raise ValueError(f"registry file {f} is invalid ({e}); expected `name: <partition>` and `dataset: {{path: ...}}`") from None
    return out


def current_sae(store: ArtifactStore, cfg: RescoreConfig) -> tuple[str, str, int, list[str], dict]:
    """(SAE dir, model, layer, upstream keys, dump settings) of the SAE to score with: new datasets
    are dumped the way the SAE's own training data was (prompt + response or not, dtypes, ...)."""
    if cfg.sae is not None:
        if cfg.model is None or cfg.layer is None:
            raise ValueError("with an explicit sae, also give model and layer (the ones its activations came from)")
        return str(resolve_sae_dir(cfg.sae)), cfg.model, cfg.layer, [], {}
    train = store.newest("train")
    if train is None:
        raise ValueError(f"no trained SAE in {store.location}; run the full pipeline first or pass sae/model/layer")
    store.fetch("train", train["key"])
    dump = store.record("dump", train["upstream"][0])
    return (train["path"], cfg.model or dump["config"]["model"], cfg.layer if cfg.layer is not None else dump["config"]["layer"],
            [train["key"]], dump_settings(dump["config"]))


@flow(name="nightly-rescore")
def nightly_rescore(config: RescoreConfig = RescoreConfig()) -> dict:  # noqa: B008 (Prefect parameter default)
    logger = get_run_logger()
    check_deployment_paths(artifacts=config.artifacts, registry=config.registry)
    store = ArtifactStore.at(config.artifacts)
    store.pull_tables()
    sae_dir, model, layer, upstream, settings = current_sae(store, config)
    sae_id = sae_id_of(resolve_sae_dir(sae_dir))
    done, scored = [], []
    for name, spec in read_registry(config.registry):
        if manifest_path(store.tables, name, sae_id).exists():
            done.append(name)
            continue
        dump_conf = dump_config(model, spec, layer, {**settings, **set_fields(config.dump)})
        dump = run_cached(dump_activations, store, "dump", dump_conf, [])
        score_conf = {"activations": dump["path"], "sae": sae_dir, "dataset_name": name, **set_fields(config.score)}
        rec = run_cached(score_dataset_task, store, "score", score_conf, [dump["key"], *upstream],
                         valid=partition_is_current(store.location))
        (scored if built_here(rec) else done).append(name)  # a concurrent run may have scored it while this one waited
    logger.info("nightly re-scoring with SAE %s: scored %s, already scored %s", sae_id, scored or "none", done or "none")
    return {"sae_id": sae_id, "scored": scored, "already_scored": done, "tables": str(store.tables)}


if __name__ == "__main__":
    print(nightly_rescore())
