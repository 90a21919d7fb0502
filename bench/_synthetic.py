"""A synthetic activation dump with known sparse structure, for SAE benchmarks at sizes the demo
world does not reach (``bench/bench_train.py --case synthetic``).

Each token is a sparse non-negative combination of ground-truth directions plus a shared offset
and a little noise, the picture SAEs assume of a residual stream:

    x = mu + sum_{i in S} c_i * d_i + sigma * eps

- ``n_features`` unit directions d_i in R^d_in, drawn from a seeded Gaussian;
- a token has Poisson(``active``) features, feature i drawn with probability proportional to
  (i + 10)^-zipf (a few common, many rare features);
- magnitudes c_i ~ Exponential(1) + 0.5;
- mu = an offset of norm 2 * sqrt(active); sigma so that noise holds about 2% of the variance.

The dump has the layout ``saev dump`` writes (manifest, ``activations/`` and ``samples/``), so
``saev train`` and the held-out split by sample id work on it unchanged. Tokens come 8 to a
sample, alternately labelled image and text.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from saev_core.activations.shards import FORMAT_VERSION, activation_table
from saev_core.io import write_json

TOKENS_PER_SAMPLE = 8


def synthetic_rows(rng: np.random.Generator, n: int, dirs: np.ndarray, probs: np.ndarray, active: float) -> np.ndarray:
    """Signal only (no offset or noise): Poisson(active) features per token, drawn by ``probs``."""
    k_max = int(active + 6 * np.sqrt(active)) + 1
    counts = rng.poisson(active, n).clip(max=k_max)
    idx = rng.choice(len(probs), size=(n, k_max), p=probs)
    coef = (rng.exponential(1.0, size=(n, k_max)) + 0.5).astype(np.float32) * (np.arange(k_max) < counts[:, None])
    out = np.empty((n, dirs.shape[1]), np.float32)
    for s in range(0, n, 1024):
        out[s:s + 1024] = np.einsum("nk,nkd->nd", coef[s:s + 1024], dirs[idx[s:s + 1024]])
    return out


def write_synthetic_dump(path, n_rows: int, d_in: int = 512, n_features: int = 16384, active: float = 24.0,
                         zipf: float = 0.8, seed: int = 0, shard_rows: int = 32768) -> dict:
    """Write the dump to ``path``; returns its manifest. Same seed, same bytes."""
    rng = np.random.default_rng(seed)
    dirs = rng.standard_normal((n_features, d_in)).astype(np.float32)
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    weights = (np.arange(n_features) + 10.0) ** -zipf
    probs = weights / weights.sum()
    mu = rng.standard_normal(d_in).astype(np.float32)
    mu *= 2 * np.sqrt(active) / np.linalg.norm(mu)
    sigma = None
    (path / "activations").mkdir(parents=True, exist_ok=True)
    (path / "samples").mkdir(parents=True, exist_ok=True)
    shards, sample_ids = [], []
    for i, start in enumerate(range(0, n_rows, shard_rows)):
        n = min(shard_rows, n_rows - start)
        x = synthetic_rows(rng, n, dirs, probs, active)
        if sigma is None:  # noise at 2% of the signal's variance, measured on the first shard
            sigma = float(np.sqrt(0.02 / 0.98 * x.var(axis=0).sum() / d_in))
        x += mu + sigma * rng.standard_normal(x.shape, dtype=np.float32)
        rows = np.arange(start, start + n)
        ids = [f"syn-{r // TOKENS_PER_SAMPLE:07d}" for r in rows]
        table = activation_table(x, np.asarray(ids, object), rows // TOKENS_PER_SAMPLE, rows % TOKENS_PER_SAMPLE,
                                 np.where(rows % 2 == 1, "image", "text"), np.zeros(n, np.int32))
        name = f"activations/shard-{i:05d}.parquet"
        pq.write_table(table, path / name, row_group_size=4096)
        shards.append({"file": name, "samples": len(set(ids)), "rejected": 0, "rows": n})
        sample_ids += sorted(set(ids))
    sample_ids = sorted(set(sample_ids))
    pq.write_table(pa.table({"sample_id": sample_ids, "row_index": pa.array([int(s[4:]) for s in sample_ids], pa.int64())}),
                   path / "samples" / "samples.parquet")
    manifest = {"format_version": FORMAT_VERSION, "act_dtype": "float32", "n_dataset_rows": len(sample_ids), "d_model": d_in, "model": "synthetic", "layer": 0, "hook": "synthetic", "dataset": {"path": "synthetic"},
                "dataset_name": "synthetic", "shards": shards,
                "synthetic": {"n_rows": n_rows, "n_features": n_features, "active": active, "zipf": zipf, "seed": seed,
                              "noise_sigma": sigma}}
    write_json(path / "manifest.json", manifest)
    return manifest
