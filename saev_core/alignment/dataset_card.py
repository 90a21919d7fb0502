"""The filter's output folder as a Hugging Face dataset repository: a README card whose ``configs:``
name the ``sft`` and ``dpo`` parts, so ``load_dataset(<folder or repo>, "sft")`` and
``huggingface_hub.upload_folder(..., repo_type="dataset")`` work on it as it is."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
from datasets import Features
from datasets.info import DatasetInfo, DatasetInfosDict
from datasets.splits import SplitDict, SplitInfo
from datasets.utils.metadata import MetadataConfigs
from huggingface_hub import DatasetCardData

from saev_core.io import atomic_path, read_json

CARD = "README.md"
SPLITS = ("sft", "dpo")
_TRAINER = {"sft": "SFTTrainer", "dpo": "DPOTrainer"}


def configs_of(folder: str | Path) -> list[str]:
    """The parts a filter folder holds (``sft``; ``dpo`` for preference data)."""
    return [s for s in SPLITS if (Path(folder) / s / "train.parquet").exists()]


def _info(parquet: Path) -> DatasetInfo:
    """Features and row count of one written part, from its Parquet footer (no rows read)."""
    meta = pq.read_metadata(parquet)
    features = Features.from_arrow_schema(pq.read_schema(parquet))
    return DatasetInfo(features=features, splits=SplitDict({"train": SplitInfo("train", num_bytes=meta.serialized_size,
                                                                                num_examples=meta.num_rows)}))


def dataset_card(folder: str | Path, repo_id: str | None = None, title: str | None = None) -> str:
    """The card of a filter folder (its ``manifest.json`` and ``<split>/train.parquet`` files), for
    the Hub repo ``repo_id`` when given; ``title`` defaults to the repo id or the folder's name."""
    folder = Path(folder)
    m = read_json(folder / "manifest.json")
    parts = configs_of(folder)
    data = DatasetCardData(tags=["saev", "sae-v", "multimodal", "data-filtering"], task_categories=["image-text-to-text"],
                           saev={"scorer": m["scorer"], "top_fraction": m["top_fraction"], "top_k": m["top_k"],
                                 "per_dataset": m["per_dataset"], "sae_id": m["sae_id"], "n_kept": m["n_kept"],
                                 "sources": {n: s["dataset"]["path"] for n, s in m["sources"].items()}})
    MetadataConfigs({s: {"data_files": [{"split": "train", "path": f"{s}/train.parquet"}], **({"default": True} if s == parts[0] else {})}
                     for s in parts}).to_dataset_card_data(data)
    DatasetInfosDict({s: _info(folder / s / "train.parquet") for s in parts}).to_dataset_card_data(data)
    name = repo_id or "path/to/this/folder"
    kept = f"top {m['top_k']}" if m["top_k"] is not None else f"top {m['top_fraction']:.0%}"
    lines = [f"---\n{data.to_yaml()}\n---", "", f"# {title or repo_id or folder.name}", "",
             f"The {kept} of {', '.join(m['sources'])} ({m['n_kept']} samples) ranked by the `{m['scorer']}` scorer of "
             f"[saev](https://arxiv.org/abs/2502.17514) with the SAE `{m['sae_id']}`"
             f"{', per dataset' if m['per_dataset'] else ''}.", "", "| config | rows | for |", "| --- | ---: | --- |"]
    lines += [f"| `{s}` | {m['splits'][s]} | TRL's `{_TRAINER[s]}` (conversational, with images) |" for s in parts]
    lines += ["", "| source | scored | kept |", "| --- | ---: | ---: |"]
    lines += [f"| {n} (`{s['dataset']['path']}`) | {s['n_scored']} | {s['n_kept']} |" for n, s in m["sources"].items()]
    lines += ["", "```python", "from datasets import load_dataset", ""]
    lines += [f'{s} = load_dataset("{name}", "{s}", split="train")' for s in parts]
    lines += ["```", "", "`selected.parquet` lists every kept sample with its score and rank; `manifest.json` holds the "
              "filter's full configuration.", ""]
    return "\n".join(lines)


def write_card(folder: str | Path, repo_id: str | None = None) -> Path:
    """Write (or rewrite, naming ``repo_id``) the folder's card; returns its path."""
    path = Path(folder) / CARD
    with atomic_path(path) as tmp:
        tmp.write_text(dataset_card(folder, repo_id))
    return path
