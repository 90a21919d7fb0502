"""Score one dumped dataset with one SAE and write its partitions of the feature tables.

Steps (each resumable; the manifest is written last and marks the partition complete):

1. encode every dump shard into its ``sample_features`` part (``features.encode_shard``),
   keeping per-shard summaries in ``<tables>/_work/...`` so a crashed run redoes one shard;
2. merge the reference pools and compute the cross-modal weights (``scoring``: Algorithm 1's w_i
   and the scale-balanced w'_i), fetching only the residuals of each cross-modal latent's
   compared occurrences, in blocks of latents so memory stays bounded for any d_sae;
3. fit every scorer on the dataset (``scoring.scorers``: its own parameters, a fit over the
   summaries, an external model over the source rows), score every sample from its summary, with
   rank and percentile, and write ``feature_stats``, ``scores`` and ``samples``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from saev_core import __version__
from saev_core.activations.shards import ActivationDump
from saev_core.sae.checkpoint import load_sae, resolve_sae_dir, sae_id_of
from saev_core.configs import ScoreConfig
from saev_core.activations.data import DatasetSpec, Sample, find_samples
from saev_core.scoring.features import SHARD_SAMPLES, encode_shard, fetch_residuals
from saev_core.io import atomic_path, claim_output_dir, file_lock, read_json, write_json
from saev_core.activations.modeling import resolve_device
from saev_core.scoring.scorers import Dataset, SampleSummary, flat_names, reference_subset, score_all, with_used
from saev_core.scoring.weights import Occurrences, merge_pools, select_balanced, select_occurrences, weights_from_occurrences
from saev_core.tables.schema import (FEATURE_STATS, SAMPLES, SCORES, TABLES, check_partition_value, lock_path, manifest_path, part_name, ranks,
                              partition_dir)

log = logging.getLogger(__name__)


def summaries(part: Path, shard_samples: pa.Table) -> list[SampleSummary]:
    """Rebuild each sample's summary from its sample_features rows (what the scorers read)."""
    t = pq.read_table(part, columns=["sample_id", "feature_id", "modality", "max_act"]).sort_by("sample_id")
    sid = t.column("sample_id").to_numpy(zero_copy_only=False)
    feat = t.column("feature_id").to_numpy()
    img = t.column("modality").to_numpy(zero_copy_only=False) == "image"
    mx = t.column("max_act").to_numpy()
    bounds = np.flatnonzero(sid[1:] != sid[:-1]) + 1 if len(sid) else np.zeros(0, int)
    starts, ends = np.r_[0, bounds], np.r_[bounds, len(sid)]
    where = {sid[s]: (s, e) for s, e in zip(starts, ends)} if len(sid) else {}
    out = []
    for row in shard_samples.to_pylist():
        s, e = where.get(row["sample_id"], (0, 0))
        im, f, m = img[s:e], feat[s:e], mx[s:e]
        cos = row["resid_cosine"]
        out.append(SampleSummary(row["sample_id"], row["n_image"], row["n_text"], row["n_active"],
                                 f[im].astype(np.int64), m[im], f[~im].astype(np.int64), m[~im],
                                 None if cos is None else float(cos)))
    return out


def _write(table: pa.Table, path: Path) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def _remove_partitions(root: Path, dataset: str, sae_id: str) -> None:
    """Un-commit first (the views show a partition only while its manifest exists), then delete."""
    manifest_path(root, dataset, sae_id).unlink(missing_ok=True)
    for table in TABLES:
        if table != "samples":
            shutil.rmtree(partition_dir(root, table, dataset, sae_id), ignore_errors=True)
    manifest_path(root, dataset, sae_id).unlink(missing_ok=True)


def samples_table(spec: DatasetSpec, scored: dict[str, dict], found: dict[str, Sample]) -> pa.Table:
    """The fields needed to rebuild each scored sample: the dump's own samples (``scored``), in
    its order, as ``find_samples`` found them in the source (at the rows the dump recorded, or by
    sample_id where the source changed since). Duplicate rows, and rows re-ordered or appended
    since the dump, change nothing; a sample the source no longer holds fails the run before any
    table is written."""
    missing = [sid for sid in scored if sid not in found]
    if missing:
        raise ValueError(f"the source dataset {spec.path} no longer holds {len(missing)} of the {len(scored)} dumped samples "
                         f"(by sample_id, e.g. {missing[0]}); it changed since the dump: re-dump it")
    rows = [{"sample_id": sid, "row_index": s.row_index, "n_image_tokens": info["n_image"], "n_text_tokens": info["n_text"],
             "question": s.question, "answer": s.answer, "chosen": s.chosen, "rejected": s.rejected, "image_ref": s.image_ref}
            for sid, info in scored.items() for s in (found[sid],)]
    return pa.Table.from_pylist(rows, schema=SAMPLES)


def run_scoring(cfg: ScoreConfig, overwrite: bool = False, stop_after_shards: int | None = None,
                shards: list[int] | None = None) -> dict:
    """Score ``cfg.activations`` with ``cfg.sae`` into the tables; returns the scoring manifest.

    Phases: encode each dump shard into its ``sample_features`` part (resumable per shard), then
    the dataset-level cross-modal weights and ``feature_stats``, then every scorer's ``scores``.
    A partition already scored with the same config is returned as is. ``shards`` encodes only
    those dump shards and returns (one task per shard on a cluster; a final call without
    ``shards`` reuses them and finishes); ``stop_after_shards`` stops early (tests of resumption).
    """
    dump = ActivationDump.open(cfg.activations)
    sae_dir, device = resolve_sae_dir(cfg.sae), resolve_device(cfg.device)
    sae = load_sae(sae_dir, device=str(device)).eval()
    if sae.cfg.d_in != dump.d_in:
        raise ValueError(f"the SAE in {sae_dir} has d_in={sae.cfg.d_in} but the activations in {cfg.activations} have "
                         f"d_model={dump.d_in}: they come from a different model or layer; score with an SAE trained on this dump's layer")
    dataset = check_partition_value("dataset name", cfg.dataset_name or dump.manifest["dataset_name"])
    sae_id = sae_id_of(sae_dir)
    root = Path(cfg.tables)
    identity = {**cfg.identity(), **dict(zip(_PARTITION_KEYS, (dataset, sae_id, __version__)))}
    # The whole partition is one writer's at a time; shard-only calls write separate parts and run side by side.
    with file_lock(lock_path(root, dataset, sae_id)) if shards is None else contextlib.nullcontext():
        done = _scored_before(root, dataset, sae_id, identity, overwrite)
        if done is not None:
            return done
        work = _claim_work(root, dataset, sae_id, identity, overwrite)
        rows = dump.sample_rows()
        if not rows:
            raise ValueError(f"the dump {cfg.activations} holds no samples; nothing to score")
        reference = reference_subset(list(rows), cfg.reference_samples, cfg.seed)
        feat_dir = partition_dir(root, "sample_features", dataset, sae_id)

        t0 = time.perf_counter()
        encoded = _encode_shards(cfg, dump, sae, reference, work, feat_dir, shards, stop_after_shards, dataset)
        encode_s = time.perf_counter() - t0
        if "stopped_after_shards" in encoded or shards is not None:
            return encoded

        ds = _dataset_stats(cfg, dump, work, sae.cfg.d_sae)

        def all_summaries():
            for shard in range(len(dump.files)):
                shard_samples = pq.read_table(work / f"shard-{shard:05d}.samples.parquet", schema=SHARD_SAMPLES)
                yield from summaries(feat_dir / part_name(shard), shard_samples)

        spec = _source_spec(dump)
        data = Dataset(all_summaries, sae.cfg.d_sae, cfg.params, cfg.seed, cfg.tau, ds.weights, ds.balanced,
                       functools.cache(lambda: find_samples(spec, rows)), str(device), cfg.progress)
        scores, summary, scored = _score_samples(cfg.scorers, data)
        found = data.samples()

        _write(samples_table(spec, scored, found), partition_dir(root, "samples", dataset) / part_name(0))
        _write(ds.stats, partition_dir(root, "feature_stats", dataset, sae_id) / part_name(0))
        _write(scores, partition_dir(root, "scores", dataset, sae_id) / part_name(0))
        manifest = {"identity": identity, "dataset": dataset, "sae_id": sae_id, "sae": str(sae_dir), "source_dataset": spec.model_dump(),
                    "n_samples": len(scored), "n_reference_samples": len(reference), "d_sae": sae.cfg.d_sae,
                    **_figures(cfg, dump, ds, summary, encoded, encode_s, device)}
        write_json(manifest_path(root, dataset, sae_id), manifest)
        return manifest


_PARTITION_KEYS = ("dataset", "sae_id", "saev_core_version")  # what run_scoring adds to the config's identity


def current_identity(identity: dict) -> dict:
    """A partition's identity in today's shape: one scored before the scorers carried their own
    parameters held them flat (``agreement_tau``, ``clip_model``) and is read through ScoreConfig."""
    if "params" in identity or "scorers" not in identity:
        return identity
    used, names = with_used(identity["scorers"]), flat_names()
    fields = {k: v for k, v in identity.items() if k in ScoreConfig.model_fields or (k in names and names[k][0] in used)}
    return {**ScoreConfig.model_validate(fields).identity(), **{k: v for k, v in identity.items() if k in _PARTITION_KEYS}}


def _scored_before(root: Path, dataset: str, sae_id: str, identity: dict, overwrite: bool) -> dict | None:
    """The partition's manifest when it was scored with this identity; otherwise None, after
    clearing a partition scored under another config (``overwrite``) or refusing to."""
    mpath = manifest_path(root, dataset, sae_id)
    if not mpath.exists():
        return None
    done = read_json(mpath)
    if current_identity(done.get("identity") or {}) == identity:
        log.info("dataset %s is already scored with SAE %s; nothing to do", dataset, sae_id)
        return done
    if not overwrite:
        raise ValueError(f"dataset {dataset} is already scored with SAE {sae_id} under another config "
                         f"(see {mpath}); pass --overwrite to replace it or --dataset-name to score it under another name")
    _remove_partitions(root, dataset, sae_id)
    return None


def _claim_work(root: Path, dataset: str, sae_id: str, identity: dict, overwrite: bool) -> Path:
    """The partition's work directory (per-shard parts and pools, kept across a resume), for this identity."""
    work = root / "_work" / f"dataset={dataset}" / f"sae_id={sae_id}"
    if overwrite and work.exists():
        shutil.rmtree(work)
    claim_output_dir(work, identity, overwrite, "scoring work directory")
    return work


def _source_spec(dump: ActivationDump) -> DatasetSpec:
    """The dump's source dataset, a local path made absolute (later stages may run from another directory)."""
    spec = DatasetSpec.model_validate(dump.manifest["dataset"])
    if Path(spec.path).expanduser().exists():
        spec = spec.model_copy(update={"path": str(Path(spec.path).expanduser().resolve())})
    return spec


def _figures(cfg: ScoreConfig, dump: ActivationDump, ds, summary: dict, encoded: dict, encode_s: float, device) -> dict:
    """The scoring manifest's description of the dump and its figures (token counts, feature kinds, throughput)."""
    kinds = {str(k): int(n) for k, n in zip(*np.unique(np.asarray(ds.occ.kind, dtype=object)[ds.alive].astype(str), return_counts=True))}
    return {
        "kind": "saev.scores", "format_version": 1, "saev_core_version": __version__,
        "activations": str(cfg.activations), "model": dump.manifest["model"], "layer": dump.manifest["layer"],
        "include_response": dump.manifest.get("include_response", False),
        "n_tokens": {"image": int(ds.tokens[0]), "text": int(ds.tokens[1])},
        "n_features_active": int(len(ds.alive)), "feature_kinds": kinds,
        "n_cross_modal": int(len(ds.occ.cross)), "n_cross_modal_balanced": int((ds.balanced != 0).sum()),
        "scorers": list(summary), "score_summary": summary,
        "throughput": {"encode_s": encode_s, "samples_per_s": encoded["samples"] / encode_s if encoded["samples"] else None,
                       "tokens_per_s": encoded["tokens"] / encode_s if encoded["tokens"] else None, "device": str(device)},
        "tables": str(Path(cfg.tables)),
    }


def _encode_shards(cfg: ScoreConfig, dump: ActivationDump, sae, reference: frozenset[str], work: Path, feat_dir: Path,
                   shards: list[int] | None, stop_after_shards: int | None, dataset: str) -> dict:
    """Phase 1: each dump shard's sample_features part and its pooled top occurrences; finished shards are kept."""
    total = int(dump.manifest["rows"]["image"] + dump.manifest["rows"]["text"])
    encoded_tokens, encoded_samples = 0, 0
    with tqdm(total=total, desc=f"score {dataset}", unit="tok", disable=not cfg.progress) as pbar:
        for shard in range(len(dump.files)) if shards is None else shards:
            state, samples_file = work / f"shard-{shard:05d}.safetensors", work / f"shard-{shard:05d}.samples.parquet"
            if state.exists() and (feat_dir / part_name(shard)).exists():
                pbar.update(int(load_file(str(state))["tokens"].sum()))
                continue
            if stop_after_shards is not None and shard >= stop_after_shards:
                return {"stopped_after_shards": shard}
            res = encode_shard(dump, shard, sae, reference, feat_dir / part_name(shard), cfg.top, cfg.per_side, cfg.batch_rows, pbar)
            _write(res.samples, samples_file)
            with atomic_path(state) as tmp:
                save_file(res.tensors(), str(tmp))
            encoded_tokens += int(res.tokens.sum())
            encoded_samples += res.samples.num_rows
    return {**({"shards": list(shards)} if shards is not None else {}), "tokens": encoded_tokens, "samples": encoded_samples}


@dataclass
class DatasetStats:
    """Phase 2's output: the dataset-level occurrences, cross-modal weights and feature_stats table."""

    stats: pa.Table
    occ: Occurrences
    weights: np.ndarray
    balanced: np.ndarray
    alive: np.ndarray
    tokens: torch.Tensor  # [image, text] positions encoded


def _dataset_stats(cfg: ScoreConfig, dump: ActivationDump, work: Path, d_sae: int) -> DatasetStats:
    """Phase 2: merge the shards' pools, then the cross-modal weights (Algorithm 1) and feature_stats."""
    states = [load_file(str(work / f"shard-{i:05d}.safetensors")) for i in range(len(dump.files))]
    values, refs = merge_pools([s["pool_values"] for s in states], [s["pool_refs"] for s in states], cfg.top)
    side_values, side_refs = merge_pools([s["side_values"] for s in states], [s["side_refs"] for s in states], cfg.per_side, dim=1)
    fires = sum(s["fires"] for s in states)
    tokens = sum(s["tokens"] for s in states)
    occ = select_occurrences(values, refs, (refs >= 0) & (refs & 1 == 1), cfg.per_side)
    fetch = functools.partial(fetch_residuals, dump)
    weights = weights_from_occurrences(occ, d_sae, fetch, dump.d_in, cfg.weights_memory_mb)
    balanced = weights_from_occurrences(select_balanced(side_values, side_refs), d_sae, fetch, dump.d_in, cfg.weights_memory_mb)
    alive = np.flatnonzero(fires.sum(0).numpy() > 0)
    rates = fires.double() / tokens.clamp(min=1).double().unsqueeze(1)
    stats = pa.table({
        "feature_id": pa.array(alive.astype(np.int32)),
        "firing_rate": pa.array((fires.sum(0).double() / max(int(tokens.sum()), 1)).numpy()[alive]),
        "firing_rate_image": pa.array(rates[0].numpy()[alive]),
        "firing_rate_text": pa.array(rates[1].numpy()[alive]),
        "cross_modal_weight": pa.array(weights[alive]),
        "balanced_weight": pa.array(balanced[alive]),
        "kind": pa.array(np.asarray(occ.kind, dtype=object)[alive], pa.string()),
        "n_top_image": pa.array(occ.n_top_image[alive].astype(np.int32)),
        "n_top_text": pa.array(occ.n_top_text[alive].astype(np.int32)),
    }, schema=FEATURE_STATS)
    return DatasetStats(stats, occ, weights, balanced, alive, tokens)


def _score_samples(names: list[str], data: Dataset) -> tuple[pa.Table, dict, dict[str, dict]]:
    """Phase 3: every scorer on every sample (each fitted on the dataset first); returns the scores
    table, each scorer's summary and the token counts per sample."""
    sids, per_scorer, scored = [], {n: [] for n in names}, {}
    for s, values in score_all(names, data):
        sids.append(s.sample_id)
        scored[s.sample_id] = {"n_image": s.n_image, "n_text": s.n_text}
        for name, value in values.items():
            per_scorer[name].append(value)
    sid_arr = np.asarray(sids, dtype=object)
    tables, summary = [], {}
    for name, vals in per_scorer.items():
        v = np.asarray(vals, np.float64)
        rank, pct = ranks(v, sid_arr)
        order = np.argsort(rank)
        tables.append(pa.table({"sample_id": pa.array(sid_arr[order], pa.string()), "scorer": pa.array([name] * len(v), pa.string()),
                                "score": pa.array(v[order]), "rank": pa.array(rank[order]), "percentile": pa.array(pct[order])},
                               schema=SCORES))
        summary[name] = {"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()), "max": float(v.max())}
    return pa.concat_tables(tables), summary, scored
