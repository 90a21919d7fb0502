"""Keep the top-scoring samples and write them as a dataset TRL's trainers load directly.

Output directory::

    README.md            the dataset card: ``configs:`` sft and dpo, features, scorer, fraction, SAE
    manifest.json        source datasets, scorer, sae_id, k or fraction, counts
    selected.parquet     dataset, sample_id, score, rank of every kept sample
    sft/train.parquet    images, prompt, completion             (SFTTrainer, vision format)
    dpo/train.parquet    images, prompt, chosen, rejected       (DPOTrainer; preference data only)

Rows are rebuilt from the source dataset (named in each scoring manifest), images included, as
``datasets`` Parquet with an ``Image`` feature. The folder is a dataset repository
(``saev_core.alignment.dataset_card``): ``load_dataset(<folder>, "sft")`` gives PIL images back, and
``upload_folder(..., repo_type="dataset")`` pushes it as it is. Selection is one SQL query whose user values are bound parameters.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import datasets
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from saev_core import __version__
from saev_core.configs import FilterConfig
from saev_core.activations.data import DatasetSpec, Sample, find_samples
from saev_core.alignment.dataset_card import CARD, dataset_card
from saev_core.io import atomic_dir, write_json
from saev_core.activations.prompts import conversation
from saev_core.tables.query import open_views, row_indices, the_sae
from saev_core.scoring.scorers import random_unit
from saev_core.tables.schema import ranks, scoring_manifest

def _resolve(con, cfg: FilterConfig) -> tuple[str, list[str]]:
    """(SAE, datasets) the filter draws from: the configured ones, checked against the scores."""
    sae_id = the_sae(con, cfg.tables, cfg.sae_id, scorer=cfg.scorer)
    scored = sorted(r[0] for r in con.execute("SELECT DISTINCT dataset FROM scores WHERE scorer = $scorer AND sae_id = $sae_id",
                                              {"scorer": cfg.scorer, "sae_id": sae_id}).fetchall())
    wanted = cfg.datasets or scored
    unknown = sorted(set(wanted) - set(scored))
    if unknown:
        raise ValueError(f"unknown dataset(s) {unknown} for SAE {sae_id}; valid datasets: {scored}")
    return sae_id, list(wanted)


def trl_rows(sample: Sample) -> tuple[dict | None, dict | None]:
    """(SFT row, DPO row) in TRL's conversational vision format; None where the sample lacks the fields."""
    prompt = conversation(sample.question)
    answer = lambda text: [{"role": "assistant", "content": [{"type": "text", "text": text}]}]  # noqa: E731
    sft = {"images": [sample.image], "prompt": prompt, "completion": answer(sample.response)} if sample.response else None
    dpo = None
    if sample.chosen is not None and sample.rejected is not None:
        dpo = {"images": [sample.image], "prompt": prompt, "chosen": answer(sample.chosen), "rejected": answer(sample.rejected)}
    return sft, dpo


def select_top(scored: pd.DataFrame, cfg: FilterConfig) -> pa.Table:
    """The kept (dataset, sample_id, score, rank): the top_k, or the top ceil(top_fraction * n), by
    the scores' own rank order (``tables.schema.ranks``), per dataset or over all of them."""
    parts = [g for _, g in scored.groupby("dataset", sort=True)] if cfg.per_dataset else [scored]
    kept = []
    for part in parts:
        rank, _ = ranks(part["score"].to_numpy(), part["sample_id"].to_numpy())
        keep = cfg.top_k if cfg.top_k is not None else math.ceil(cfg.top_fraction * len(part))
        kept.append(part.assign(rank=rank.astype("int64"))[rank <= keep])
    out = pd.concat(kept).sort_values(["dataset", "rank"]) if kept else scored.assign(rank=[])
    return pa.table({"dataset": pa.array(out["dataset"], pa.string()), "sample_id": pa.array(out["sample_id"], pa.string()),
                     "score": pa.array(out["score"], pa.float64()), "rank": pa.array(out["rank"], pa.int64())})


def run_filter(cfg: FilterConfig, ranking: Callable[[pd.DataFrame], pd.Series] | None = None, ranking_name: str | None = None) -> dict:
    """Select, rebuild and write the kept samples; returns the artifact's manifest.

    ``ranking`` replaces the stored scores: it maps the scored samples (dataset, sample_id) to
    a score each, and the same selection runs on those (a re-drawn random seed, or the
    evaluation-only oracle of ``quality.oracle_ranking``); ``ranking_name`` names it in the manifest.
    """
    con = open_views(cfg.tables)
    sae_id, names = _resolve(con, cfg)
    drawn = con.execute("SELECT dataset, sample_id, score FROM scores WHERE scorer = $scorer AND sae_id = $sae_id "
                        "AND list_contains($datasets, dataset) ORDER BY dataset, sample_id",
                        {"scorer": cfg.scorer, "sae_id": sae_id, "datasets": names}).df()
    if cfg.random_seed is not None:
        ranking = lambda samples: samples["sample_id"].map(lambda s: random_unit(cfg.random_seed, s))  # noqa: E731
    if ranking is not None:  # rank by the given scores, then the same selection
        drawn["score"] = ranking(drawn[["dataset", "sample_id"]]).astype("float64").to_numpy()
    sel = select_top(drawn, cfg)
    if sel.num_rows == 0:
        raise ValueError(f"the filter kept no samples (scorer {cfg.scorer}, datasets {names}); raise --top-k or --top-fraction")
    sft_rows, dpo_rows, counts, sources = [], [], {}, {}
    for name in names:
        ids = [s for d, s in zip(sel.column("dataset").to_pylist(), sel.column("sample_id").to_pylist()) if d == name]
        scoring = scoring_manifest(cfg.tables, name, sae_id)
        spec = DatasetSpec.model_validate(scoring["source_dataset"])
        sources[name] = {"dataset": spec.model_dump(), "n_scored": scoring["n_samples"], "n_kept": len(ids)}
        counts[name] = len(ids)
        if not ids:
            continue
        kept = find_samples(spec, row_indices(con, name, ids))
        missing = set(ids) - set(kept)
        if missing:
            raise ValueError(f"{len(missing)} kept samples of {name} are no longer in {spec.path} (changed since scoring); re-score it")
        for sid in ids:
            sft, dpo = trl_rows(kept[sid])
            if sft:
                sft_rows.append(sft)
            if dpo:
                dpo_rows.append(dpo)

    out = Path(cfg.out)
    manifest = {
        "kind": "saev.filtered_dataset", "format_version": 1, "saev_core_version": __version__,
        "config": cfg.model_dump(), "sae_id": sae_id, "scorer": ranking_name or cfg.scorer, "top_k": cfg.top_k,
        "top_fraction": cfg.top_fraction, "per_dataset": cfg.per_dataset, "sources": sources,
        "n_kept": sel.num_rows, "kept_per_dataset": counts,
        "splits": {"sft": len(sft_rows), "dpo": len(dpo_rows)},
    }
    with atomic_dir(out) as tmp:
        pq.write_table(sel, tmp / "selected.parquet")
        for split, rows in (("sft", sft_rows), ("dpo", dpo_rows)):
            if rows:
                (tmp / split).mkdir()
                datasets.Dataset.from_list(rows).cast_column("images", datasets.Sequence(datasets.Image())) \
                    .to_parquet(str(tmp / split / "train.parquet"))
        write_json(tmp / "manifest.json", manifest)
        (tmp / CARD).write_text(dataset_card(tmp, title=out.name))
    return manifest


def load_filtered(path: str | Path, split: str = "sft") -> datasets.Dataset:
    """The ``sft`` or ``dpo`` part of a filter artifact, ready for SFTTrainer / DPOTrainer."""
    f = Path(path) / split / "train.parquet"
    if not f.exists():
        have = [p.name for p in Path(path).iterdir() if (p / "train.parquet").exists()] if Path(path).exists() else []
        raise FileNotFoundError(f"{path} has no {split!r} split (it has {have}); DPO needs preference data (chosen/rejected)")
    return datasets.load_dataset("parquet", data_files=str(f), split="train")

