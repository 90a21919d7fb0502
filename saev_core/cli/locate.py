"""Where a command finds what it was not told: the defaults policy of the CLI and the flows.

The stand-alone commands default to what `make run` built (the newest artifact of the local
store), else to the paths the commands themselves write by default. Library functions never
search: they are handed their inputs, and only the front doors (``saev_core.cli.app``, ``flows/``)
call this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from saev_core.configs import DEFAULT_STORE
from saev_core.io import portable
from saev_core.store.artifacts import RECORD, ArtifactStore

if TYPE_CHECKING:  # the experiment pulls in TRL: not for every command's start
    from saev_core.alignment.experiment import ExperimentConfig

DEMO_DIR = "data/demo"  # `saev demo build`'s default output
DUMP_RUN = "data/runs/dump-demo-rlaif-L0"  # `saev dump`'s default output on the demo
SAE_RUN = "data/runs/sae-relu-image-text"  # `saev train`'s default output with the default config

# What the functions below fill in where a flag is not given, as `--help` states it.
FILLED_IN = {
    "dump": {"model": f"default: {DEMO_DIR}/model", "out": "default: data/runs/dump-<dataset>-L<layer>",
             "layer": "default: 0, the demo model's shared block; a real model wants a middle one, e.g. 16 of 32"},
    "train": {"activations": f"default: the newest dump `make run` made in {DEFAULT_STORE}; else {DUMP_RUN}",
              "out": "default: data/runs/sae-<architecture>-<modalities>"},
    "score": {"activations": f"default: the SAE's own dump when the SAE is the store's; else {DUMP_RUN}",
              "sae": f"default: the newest SAE `make run` trained in {DEFAULT_STORE}; else {SAE_RUN}"},
    "align": {"model": f"default: {DEMO_DIR}/model"},
}


def newest_artifact(stage: str, root: str = DEFAULT_STORE) -> dict | None:
    """The record of the newest finished ``stage`` artifact of the local store, if any."""
    store = ArtifactStore.at(root)
    return store.newest(stage) if store.root.is_dir() else None


def store_of_tables(tables: str | Path) -> ArtifactStore | None:
    """The artifact store a tables root belongs to (the pipeline keeps them in ``<store>/tables``)."""
    root = Path(tables).parent
    return ArtifactStore.at(root) if root.is_dir() and any(root.glob(f"*/*/{RECORD}")) else None


def world_of_tables(tables: str | Path) -> Path | None:
    """The newest demo world of the store the tables belong to, if any."""
    store = store_of_tables(tables)
    return store.latest_world() if store is not None else None


def labels_of_tables(tables: str | Path) -> str:
    """Evaluation labels for these tables: the store's demo world's, else `saev demo build`'s."""
    world = world_of_tables(tables)
    return str(world / "labels.parquet") if world else f"{DEMO_DIR}/labels.parquet"


def dump_inputs(data: dict) -> dict:
    """A `saev dump` config with the demo world's model, RLAIF-V set and block 0 where not given,
    and an output directory named by dataset and layer."""
    from saev_core.activations.data import DatasetSpec

    data = dict(data)
    data.setdefault("model", f"{DEMO_DIR}/model")
    if isinstance(data.get("dataset", {}), dict):  # flags may have set dataset.limit etc. without a path
        data["dataset"] = {"path": f"{DEMO_DIR}/datasets/demo-rlaif/train.parquet", **data.get("dataset", {})}
    data.setdefault("layer", 0)
    if "out" not in data:
        name = DatasetSpec.model_validate(data["dataset"]).display_name if isinstance(data["dataset"], dict) else "dataset"
        data["out"] = f"data/runs/dump-{name}-L{data['layer']}"
    return data


def train_inputs(data: dict) -> dict:
    """A `saev train` config with its dump (the pipeline's newest, else `saev dump`'s default) and
    output directory (named by architecture and modalities) filled in where not given."""
    data = dict(data)
    if "activations" not in data:
        dump = newest_artifact("dump")
        data["activations"] = dump["path"] if dump else DUMP_RUN
    data.setdefault("out", f"data/runs/sae-{data.get('architecture', 'relu')}-{data.get('modalities', 'image+text').replace('+', '-')}")
    return data


def score_inputs(data: dict) -> dict:
    """A `saev score` config with its SAE (the pipeline's newest, with that SAE's own dump, else
    `saev train`'s default run) and dump filled in where not given."""
    data = dict(data)
    if "sae" not in data:
        trained = newest_artifact("train")
        data["sae"] = trained["path"] if trained else SAE_RUN
        if trained and "activations" not in data:
            data["activations"] = trained["config"]["activations"]
    data.setdefault("activations", DUMP_RUN)
    return data


def align_inputs(data: dict) -> dict:
    """A `saev align` config with the demo world's model where not given."""
    return {"model": f"{DEMO_DIR}/model", **data}


def experiment_inputs(cfg: ExperimentConfig) -> ExperimentConfig:
    """An ExperimentConfig with model / heldout (and labels, when the oracle wants them) taken from
    the newest demo world of the store its tables belong to, where not given."""
    if cfg.model is not None and cfg.heldout is not None and (cfg.labels is not None or not cfg.oracle):
        return cfg
    world = world_of_tables(cfg.tables)
    if world is None:
        if cfg.model is not None and cfg.heldout is not None:
            return cfg.model_copy(update={"oracle": False})  # no labels anywhere: no oracle line
        raise ValueError(f"no demo world in the artifact store of {cfg.tables}; run `make run` first or set model and heldout")
    labels = cfg.labels or (str(world / "labels.parquet") if (world / "labels.parquet").exists() else None)
    return cfg.model_copy(update={"model": cfg.model or str(world / "model"),
                                  "heldout": cfg.heldout or str(world / "heldout" / "clean.parquet"),
                                  "labels": labels, "oracle": cfg.oracle and labels is not None})


def _architecture_of(config: dict) -> str:
    """A training manifest's architecture: under ``sae``, or flat in a manifest written before the SAE config nested."""
    return config.get("sae", config).get("architecture", "?")


def sae_points(store: ArtifactStore, activations: str | None = None) -> list[dict]:
    """(architecture, L0, FVU) of every SAE in an artifact store (the pipeline's and its frontier
    sweep), or only of those trained on ``activations`` (a dump path): one frontier per dump."""
    out = []
    for r in store.list():
        if r["stage"] in ("train", "frontier"):
            rec = store.record(r["stage"], r["key"])
            if activations is not None and portable(rec["config"].get("activations")) != portable(activations):
                continue
            m = rec["manifest"]
            out.append({"architecture": _architecture_of(m.get("config", {})), "l0": m["heldout"]["all"]["l0"],
                        "fvu": m["heldout"]["all"]["fvu"]})
    return out
