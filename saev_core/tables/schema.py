"""The feature tables: where they live under a tables root and what their columns are.

Every table is hive-partitioned by dataset (and, where its content depends on the SAE, by
sae_id), so a newly scored dataset is one new directory and every reader that globs
``<root>/<table>/**/*.parquet`` sees it with no registration step. Partition columns
(``dataset``, ``sae_id``) come from the directory names and are not stored inside the files.

    <root>/sample_features/dataset=<name>/sae_id=<id>/part-00000.parquet   sorted by feature_id
    <root>/feature_stats/dataset=<name>/sae_id=<id>/part-00000.parquet
    <root>/scores/dataset=<name>/sae_id=<id>/part-00000.parquet
    <root>/samples/dataset=<name>/part-00000.parquet
    <root>/manifests/dataset=<name>/sae_id=<id>.json                       how a partition was made
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa


@functools.cache
def _schemas() -> dict[str, pa.Schema]:
    import pyarrow as pa

    SAMPLE_FEATURES = pa.schema([
        ("sample_id", pa.string()),
        ("feature_id", pa.int32()),
        ("modality", pa.string()),          # 'image' | 'text'
        ("n_active_tokens", pa.int32()),    # positions of this modality where the latent is > 0
        ("max_act", pa.float32()),
        ("sum_act", pa.float32()),
    ])

    FEATURE_STATS = pa.schema([
        ("feature_id", pa.int32()),
        ("firing_rate", pa.float64()),        # over all scored image + text positions
        ("firing_rate_image", pa.float64()),
        ("firing_rate_text", pa.float64()),
        ("cross_modal_weight", pa.float32()),  # w_i of Algorithm 1; 0 when not cross-modal
        ("balanced_weight", pa.float32()),     # w'_i from each modality's own top occurrences (scoring.scorers.select_balanced)
        ("kind", pa.string()),                 # 'cross-modal' | 'image-only' | 'text-only' | 'mixed'
        ("n_top_image", pa.int32()),           # image occurrences among the latent's top activations
        ("n_top_text", pa.int32()),
    ])

    SCORES = pa.schema([
        ("sample_id", pa.string()),
        ("scorer", pa.string()),
        ("score", pa.float64()),
        ("rank", pa.int32()),           # 1 = highest score within (dataset, sae_id, scorer)
        ("percentile", pa.float64()),   # fraction of samples scoring <= this one: 1.0 is the top
    ])

    SAMPLES = pa.schema([
        ("sample_id", pa.string()),
        ("row_index", pa.int64()),      # row in the source dataset
        ("n_image_tokens", pa.int32()),
        ("n_text_tokens", pa.int32()),
        ("question", pa.string()),
        ("answer", pa.string()),
        ("chosen", pa.string()),
        ("rejected", pa.string()),
        ("image_ref", pa.string()),
    ])

    return {"SAMPLE_FEATURES": SAMPLE_FEATURES, "FEATURE_STATS": FEATURE_STATS, "SCORES": SCORES, "SAMPLES": SAMPLES,
            "TABLES": {"sample_features": SAMPLE_FEATURES, "feature_stats": FEATURE_STATS, "scores": SCORES, "samples": SAMPLES}}


def __getattr__(name: str):
    """SAMPLE_FEATURES, FEATURE_STATS, SCORES, SAMPLES and TABLES (name -> schema) load pyarrow
    on first use, so that the path helpers below cost the CLI's start nothing."""
    if name not in ("SAMPLE_FEATURES", "FEATURE_STATS", "SCORES", "SAMPLES", "TABLES"):  # the import system asks for __path__
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return _schemas()[name]


PARTITIONS: dict[str, tuple[str, ...]] = {
    "sample_features": ("dataset", "sae_id"),
    "feature_stats": ("dataset", "sae_id"),
    "scores": ("dataset", "sae_id"),
    "samples": ("dataset",),
}


def ranks(scores, sample_ids) -> tuple:
    """The ``rank`` and ``percentile`` columns of ``scores``: rank 1 = highest score (ties by
    sample_id), percentile = fraction of samples scoring <= this one. The filter keeps by it too."""
    import numpy as np

    scores = np.asarray(scores, np.float64)
    order = np.lexsort((np.asarray(sample_ids, object), -scores))
    rank = np.empty(len(scores), np.int32)
    rank[order] = np.arange(1, len(scores) + 1)
    pct = np.searchsorted(np.sort(scores), scores, side="right") / max(len(scores), 1)
    return rank, pct


_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def check_partition_value(kind: str, value: str) -> str:
    """Partition values become directory names: refuse anything that could escape or split them."""
    if not _SAFE.match(value) or ".." in value:
        raise ValueError(f"{kind} {value!r} cannot name a table partition: use letters, digits, '.', '_' or '-' "
                         "(pass --dataset-name to choose one)")
    return value


def partition_dir(root: str | Path, table: str, dataset: str, sae_id: str | None = None) -> Path:
    if table not in PARTITIONS:
        raise ValueError(f"unknown table {table!r}; valid tables: {sorted(PARTITIONS)}")
    path = Path(root) / table / f"dataset={check_partition_value('dataset name', dataset)}"
    if "sae_id" in PARTITIONS[table]:
        if sae_id is None:
            raise ValueError(f"table {table} is partitioned by sae_id; pass one")
        path = path / f"sae_id={check_partition_value('sae_id', sae_id)}"
    return path


def manifest_path(root: str | Path, dataset: str, sae_id: str) -> Path:
    return Path(root) / "manifests" / f"dataset={check_partition_value('dataset name', dataset)}" / f"sae_id={check_partition_value('sae_id', sae_id)}.json"


def scoring_manifest(root: str | Path, dataset: str, sae_id: str) -> dict:
    """A partition's scoring manifest, its SAE, activations and source dataset found again where
    the store that holds them now lies (``io.resolve_recorded``)."""
    from saev_core.io import read_json, resolve_recorded, resolve_recorded_dataset

    m = read_json(manifest_path(root, dataset, sae_id))
    for field in ("sae", "activations"):
        m[field] = resolve_recorded(m.get(field), root)
    if "source_dataset" in m:
        m["source_dataset"] = resolve_recorded_dataset(m["source_dataset"], root)
    return m


def partitions(root: str | Path, dataset: str | None = None, sae_id: str | None = None) -> list[tuple[str, str, Path]]:
    """(dataset, sae_id, manifest path) of every scored partition under ``root`` (sorted), or of
    those of ``dataset`` / ``sae_id``."""
    found = []
    for f in sorted(Path(root).glob("manifests/dataset=*/sae_id=*.json")):
        d, s = f.parent.name.removeprefix("dataset="), f.stem.removeprefix("sae_id=")
        if (dataset is None or d == dataset) and (sae_id is None or s == sae_id):
            found.append((d, s, f))
    return found


def lock_path(root: str | Path, dataset: str, sae_id: str) -> Path:
    """The lock a scoring of (dataset, SAE) holds while it writes or replaces the partition."""
    return Path(root) / "_locks" / f"dataset={dataset}" / f"sae_id={sae_id}.lock"


def part_name(index: int) -> str:
    return f"part-{index:05d}.parquet"
