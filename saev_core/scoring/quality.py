"""How well each scorer separates clean from low-quality samples, given evaluation-only labels.

This is the one place that reads ``is_clean``: scoring never does. Labels are a Parquet table
with ``sample_id``, ``is_clean`` and ``corruption`` (and optionally ``dataset``), like the demo
world's ``labels.parquet``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from saev_core.scoring.scorers import random_unit


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """AUROC = P(score of a random positive > score of a random negative), ties counted half.

    Mann-Whitney form: (sum of positives' ranks - n_pos (n_pos + 1) / 2) / (n_pos n_neg), with
    average ranks for ties. NaN when either class is empty.
    """
    scores, positive = np.asarray(scores, np.float64), np.asarray(positive, bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), np.float64)
    sorted_scores = scores[order]
    start = 0
    for end in np.r_[np.flatnonzero(np.diff(sorted_scores)) + 1, len(scores)]:
        ranks[order[start:end]] = (start + end + 1) / 2  # average of ranks start+1 .. end
        start = end
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def top_fraction_clean(scores: np.ndarray, clean: np.ndarray, fraction: float = 0.5) -> float:
    """Fraction of clean samples among the top ``fraction`` by score (ties broken by position)."""
    k = max(1, int(round(len(scores) * fraction)))
    top = np.argsort(-np.asarray(scores, np.float64), kind="mergesort")[:k]
    return float(np.asarray(clean, bool)[top].mean())


def _labels(labels: str | Path, dataset: str | None = None) -> pd.DataFrame:
    lab = pq.read_table(labels).to_pandas()
    if dataset is not None and "dataset" in lab.columns:
        lab = lab[lab["dataset"] == dataset].drop(columns="dataset")
    return lab


def clean_share(labels: str | Path, dataset: str | None = None) -> float:
    """The fraction of clean rows: the oracle filter's natural kept fraction."""
    return float(_labels(labels, dataset)["is_clean"].mean())


def oracle_ranking(labels: str | Path, seed: int = 0):
    """The headroom oracle: rank every clean sample above every low-quality one (random order within
    each, from ``seed``). For ``filter.run_filter(ranking=...)``; evaluation only, like the AUROC:
    it reads the labels no scorer may see. Unlabelled samples rank last."""
    def rank(samples: pd.DataFrame) -> pd.Series:
        parts = []
        for dataset, g in samples.groupby("dataset", sort=False):
            clean = g["sample_id"].map(_labels(labels, dataset).set_index("sample_id")["is_clean"]).fillna(False).astype(float)
            parts.append(clean + g["sample_id"].map(lambda s: random_unit(seed, s)) * 0.5)
        return pd.concat(parts).loc[samples.index]
    return rank


def scorer_quality(con, labels: str | Path, dataset: str, sae_id: str) -> list[dict]:
    """One row per scorer: AUROC clean vs all low-quality, vs each corruption kind, clean in top 50%.

    ``con`` is a DuckDB connection with the feature-table views (``saev_core.tables.query.open_views``).
    """
    lab = _labels(labels, dataset)
    scores = con.execute("SELECT sample_id, scorer, score FROM scores WHERE dataset = $dataset AND sae_id = $sae_id",
                         {"dataset": dataset, "sae_id": sae_id}).df()
    if scores.empty:
        raise ValueError(f"no scores for dataset {dataset!r} and SAE {sae_id!r}; run `saev score` first")
    joined = scores.merge(lab[["sample_id", "is_clean", "corruption"]], on="sample_id", how="inner")
    if joined.empty:
        raise ValueError(f"the labels in {labels} share no sample_id with the scores of {dataset!r}")
    rows = []
    kinds = sorted(k for k in joined["corruption"].unique() if k != "none")
    for name, g in joined.groupby("scorer", sort=False):
        clean = g["is_clean"].to_numpy(bool)
        row = {"scorer": name, "n": len(g), "auroc": auroc(g["score"].to_numpy(), clean),
               "clean_in_top_50": top_fraction_clean(g["score"].to_numpy(), clean, 0.5), "clean_overall": float(clean.mean())}
        for kind in kinds:
            sel = clean | (g["corruption"].to_numpy() == kind)
            row[f"auroc_{kind}"] = auroc(g["score"].to_numpy()[sel], clean[sel])
        rows.append(row)
    return rows


def render_quality(rows: list[dict]) -> str:
    """A Markdown table of ``scorer_quality`` rows."""
    if not rows:
        return ""
    cols = [c for c in rows[0] if c not in {"scorer", "n", "clean_overall"}]
    head = "| scorer | " + " | ".join(c.replace("_", " ") for c in cols) + " |"
    lines = [head, "| --- |" + " ---: |" * len(cols)]
    lines += ["| " + r["scorer"] + " | " + " | ".join(f"{r[c]:.3f}" for c in cols) + " |" for r in rows]
    lines.append(f"\n{rows[0]['n']} samples, {rows[0]['clean_overall']:.1%} clean overall.")
    return "\n".join(lines)
