"""DuckDB latency over a generated feature-table root of >= 50M rows (issue point 7).

Generates ``sample_features`` and ``scores`` in the saev_core.tables.schema layout (hive partitions,
zstd, row groups of 1Mi rows; sample_features in one part per dump shard, each sorted by
feature_id then sample_id, as saev_core.scoring.features writes them), then times through
``saev_core.tables.query`` (the same path as ``saev query``: parser check, sandboxed views):

  (a) top-k by score:   SELECT sample_id, score FROM scores WHERE dataset = $dataset
                        AND scorer = 'saev' ORDER BY score DESC LIMIT 1000
  (b) group-by-feature: SELECT feature_id, modality, count(*), avg(max_act), sum(n_active_tokens)
                        FROM sample_features GROUP BY ALL

Median of --repeats runs after one warm-up. Generation runs in a child process, so this
process's peak RSS (ru_maxrss) is the queries' (plus imports). Goals: (a) < 1 s, (b) < 5 s.

    python bench/bench_duckdb.py --rows 50000000 --memory-limit 4GB
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import shutil
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from saev_core.io import write_json  # noqa: E402
from saev_core.tables.schema import SAMPLE_FEATURES, SCORES, manifest_path, part_name, partition_dir  # noqa: E402

SAE_ID = "bench"
SCORERS = ("saev", "cooccurrence", "l0", "model_cosine", "random")
ROWS_PER_SAMPLE = 100      # mean (feature, modality) rows per sample in sample_features
SCORE_SAMPLES_FACTOR = 20  # scores covers 20x more samples than sample_features (10M vs 500k at 50M rows)
ROW_GROUP = 1 << 20

TOPK = "SELECT sample_id, score FROM scores WHERE dataset = $dataset AND scorer = 'saev' ORDER BY score DESC LIMIT 1000"
GROUPBY = "SELECT feature_id, modality, count(*), avg(max_act), sum(n_active_tokens) FROM sample_features GROUP BY ALL"


def sample_ids(dataset: str, n: int) -> pa.Array:
    return pa.array([f"{dataset}-{i:09d}" for i in range(n)], pa.string())


def write_features(root: str, dataset: str, n_samples: int, samples_per_part: int, d_sae: int, seed: int) -> int:
    """One dataset's sample_features, one part per ``samples_per_part`` samples (a dump shard)."""
    rng = np.random.default_rng(seed)
    ids = sample_ids(dataset, n_samples)
    # Power-law feature frequencies (a few dense latents, a long tail), ids shuffled.
    weights = 1.0 / np.arange(1, d_sae + 1) ** 0.8
    cdf = np.cumsum(weights) / weights.sum()
    perm = rng.permutation(d_sae).astype(np.int32)
    modality = pa.array(["text", "image"], pa.string())
    out = partition_dir(root, "sample_features", dataset, SAE_ID)
    out.mkdir(parents=True, exist_ok=True)
    rows = 0
    for part, first in enumerate(range(0, n_samples, samples_per_part)):
        sample = np.arange(first, min(first + samples_per_part, n_samples))
        k = np.maximum(rng.poisson(ROWS_PER_SAMPLE, sample.size), 1)
        sample = np.repeat(sample, k)
        n = sample.size
        feat = perm[np.minimum(np.searchsorted(cdf, rng.random(n)), d_sae - 1)]
        image = rng.random(n) < 0.55
        n_active = np.where(image, 1 + rng.geometric(0.08, n), 1 + rng.geometric(0.35, n)).clip(max=576).astype(np.int32)
        max_act = rng.lognormal(0.0, 0.9, n).astype(np.float32)
        sum_act = (max_act * n_active * rng.uniform(0.3, 1.0, n)).astype(np.float32)
        order = np.lexsort((sample, feat))
        table = pa.table({
            "sample_id": ids.take(pa.array(sample[order])),
            "feature_id": feat[order],
            "modality": modality.take(pa.array(image[order].astype(np.int8))),
            "n_active_tokens": n_active[order],
            "max_act": max_act[order],
            "sum_act": sum_act[order],
        }, schema=SAMPLE_FEATURES)
        pq.write_table(table, out / part_name(part), compression="zstd", row_group_size=ROW_GROUP)
        rows += n
    return rows


def scorer_values(rng: np.random.Generator, scorer: str, n: int) -> np.ndarray:
    if scorer == "saev":
        return np.where(rng.random(n) < 0.2, 0.0, rng.gamma(2.0, 1.5, n))  # sum of w_i; 0 without cross-modal latents
    if scorer == "cooccurrence":
        return rng.poisson(20, n).astype(np.float64)
    if scorer == "l0":
        return rng.normal(60.0, 15.0, n).clip(0)
    if scorer == "model_cosine":
        return rng.normal(0.1, 0.15, n).clip(-1, 1)
    return rng.random(n)


def write_scores(root: str, dataset: str, n_samples: int, order: str, seed: int) -> int:
    """One dataset's scores file: 5 scorers appended one at a time (bounded memory)."""
    rng = np.random.default_rng(seed)
    ids = sample_ids(dataset, n_samples)
    out = partition_dir(root, "scores", dataset, SAE_ID)
    out.mkdir(parents=True, exist_ok=True)
    with pq.ParquetWriter(out / part_name(0), SCORES, compression="zstd") as writer:
        for scorer in SCORERS:
            score = scorer_values(rng, scorer, n_samples)
            by_rank = np.argsort(-score, kind="stable")
            rank = np.empty(n_samples, np.int32)
            rank[by_rank] = np.arange(1, n_samples + 1, dtype=np.int32)
            percentile = np.searchsorted(np.sort(score), score, side="right") / n_samples
            rows = by_rank if order == "rank" else np.arange(n_samples)
            writer.write_table(pa.table({
                "sample_id": ids.take(pa.array(rows)), "scorer": pa.array([scorer] * n_samples, pa.string()),
                "score": score[rows], "rank": rank[rows], "percentile": percentile[rows]}, schema=SCORES),
                row_group_size=ROW_GROUP)
    return n_samples * len(SCORERS)


def generate(root: Path, args: argparse.Namespace) -> dict:
    datasets = [f"bench{i}" for i in range(args.datasets)]
    feature_samples = -(-args.rows // (ROWS_PER_SAMPLE * args.datasets))
    score_samples = -(-args.rows // (len(SCORERS) * args.datasets))
    if args.score_samples:
        score_samples = args.score_samples // args.datasets
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(args.gen_workers, mp_context=ctx) as pool:
        feats = [pool.submit(write_features, str(root), d, feature_samples, args.samples_per_part, args.d_sae, 1000 + i)
                 for i, d in enumerate(datasets)]
        scores = [pool.submit(write_scores, str(root), d, score_samples, args.scores_order, 2000 + i)
                  for i, d in enumerate(datasets)]
        counts = {"sample_features_rows": sum(f.result() for f in feats), "scores_rows": sum(f.result() for f in scores)}
    for d in datasets:  # the commit marker the views require, as `saev score` writes it last
        write_json(manifest_path(root, d, SAE_ID), {"kind": "saev.scores", "dataset": d, "sae_id": SAE_ID, "bench": True})
    return {"datasets": datasets, **counts,
            "sample_features_samples": feature_samples * args.datasets, "scores_samples": score_samples * args.datasets}


def table_files(root: Path, table: str) -> dict:
    files = list((root / table).rglob("*.parquet"))
    return {"files": len(files), "bytes": sum(f.stat().st_size for f in files)}


def time_query(con, sql: str, params: dict | None, repeats: int) -> dict:
    from saev_core.tables.query import run_query

    times, rows = [], 0
    for i in range(repeats + 1):  # the first run is the warm-up
        t0 = time.perf_counter()
        rows = run_query(con, sql, params).read_all().num_rows
        if i:
            times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "rows": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=50_000_000, help="rows in sample_features and in scores (each)")
    p.add_argument("--out-dir", type=Path, default=Path("/tmp/saev-bench-duckdb"), help="generated tables root (deleted after unless --keep)")
    p.add_argument("--datasets", type=int, default=4)
    p.add_argument("--d-sae", type=int, default=16384, help="SAE latents (feature_id range)")
    p.add_argument("--samples-per-part", type=int, default=512, help="samples per sample_features part (the dump's shard size)")
    p.add_argument("--score-samples", type=int, default=None, help="samples in scores over all datasets (default rows / 5 scorers)")
    p.add_argument("--scores-order", choices=("rank", "sample"), default="rank",
                   help="row order inside scores files: by scorer then rank (score descending), or by sample")
    p.add_argument("--memory-limit", default="4GB", help="DuckDB memory_limit")
    p.add_argument("--threads", type=int, default=None, help="DuckDB threads (default: all cores)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--gen-workers", type=int, default=2)
    p.add_argument("--keep", action="store_true", help="keep the generated root, and reuse one made with the same arguments")
    args = p.parse_args()

    import duckdb

    from saev_core.tables.query import connect, datasets

    root = args.out_dir
    identity = {k: v for k, v in vars(args).items() if k in ("rows", "datasets", "d_sae", "samples_per_part", "score_samples", "scores_order")}
    marker = root / "bench.json"
    if marker.exists() and json.loads(marker.read_text())["identity"] == identity:
        gen = json.loads(marker.read_text())["generated"]
        gen_s = None
    else:
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        t0 = time.perf_counter()
        gen = generate(root, args)
        gen_s = time.perf_counter() - t0
        marker.write_text(json.dumps({"identity": identity, "generated": gen}))
    try:
        con = connect(root, memory_limit=args.memory_limit, threads=args.threads)
        result = {
            "duckdb": duckdb.__version__, "rows": args.rows, "generate_s": gen_s, **gen,
            "sample_features": table_files(root, "sample_features"), "scores": table_files(root, "scores"),
            "memory_limit": args.memory_limit, "threads": con.sql("SELECT current_setting('threads')").fetchall()[0][0],
            "scores_order": args.scores_order, "samples_per_part": args.samples_per_part,
            "topk": time_query(con, TOPK, {"dataset": gen["datasets"][-1]}, args.repeats),
            "groupby": time_query(con, GROUPBY, None, args.repeats),
        }
        t0 = time.perf_counter()
        assert datasets(con) == gen["datasets"]
        result["datasets_helper_s"] = time.perf_counter() - t0
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        con.close()
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    mb = lambda b: f"{b / 1e6:,.0f} MB"  # noqa: E731
    print("| query | rows scanned | files | on disk | median (s) | min-max (s) | goal |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for key, table, goal in (("topk", "scores", 1.0), ("groupby", "sample_features", 5.0)):
        t = result[key]
        n = result["scores_rows"] if key == "topk" else result["sample_features_rows"]
        ok = "met" if t["median_s"] < goal else "MISSED"
        print(f"| {key} | {n:,} ({table}) | {result[table]['files']} | {mb(result[table]['bytes'])} | "
              f"{t['median_s']:.3f} | {t['min_s']:.3f}-{t['max_s']:.3f} | < {goal:g} s {ok} |")
    print(f"\npeak RSS of the query process: {result['peak_rss_mb']:,.0f} MB (DuckDB memory_limit {args.memory_limit}, "
          f"threads {result['threads']}); duckdb {result['duckdb']}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
