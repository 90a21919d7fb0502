"""How fast the activation store feeds training: MB/s of float16 activations delivered as training
batches, for a dump-shaped store written by saev's own shard writer.

    python bench/bench_reader.py --d-in 4096 --rows 65536 --workers 1 --json
    python bench/bench_reader.py --d-in 4096 --rows 65536 --workers 1 2 --layouts fsb:lz4 fsb:none fsb:zstd list:zstd

Each ``--layouts`` entry is ``kind:codec[:row_group_mb]``: ``fsb`` is the format-2 layout (one
fixed-size binary cell per token, ``saev_core.activations.shards.ActivationWriter``), ``list`` the format-1
layout saev wrote before (``fixed_size_list<float16>``). Per layout it reports:
- ``stream_mb_per_s``: ``ShuffledBatches`` (what ``saev train`` reads), batches of ``--batch-size``
  image and text rows of the train split, over ``--epochs`` epochs (2) of chunks a quarter of the
  store each (so every chunk is read and decoded, none is served from the one-chunk cache), after
  ``--warmup-epochs`` untimed ones (1; 0 times the cold start as well), per worker count;
- ``decode_floor_mb_per_s``: each row group read and decoded to a [rows, d_in] array, one thread,
  nothing else: what the format costs;
- ``memmap_mb_per_s``: the same rows as an uncompressed float16 memory map, random batches gathered
  (the no-format reference);
- ``disk_mb`` and ``disk_mb_per_mtok`` (per million tokens), and ``duckdb_type``: what DuckDB shows
  for the activation column.
The data is Gaussian float16 (activations compress about as badly). The files are read straight
after they are written, so they come from the page cache: the figures are decode, not disk.

``--train`` instead trains the synthetic case (``bench/_synthetic.py``: d_in 512, d_sae 8192, k 32,
batch 1024) twice per seed with ``train_sae``: once reading its dump through the stream, once on
the same batches from memory (``bench_train.saev_reads_memory``), and reports both tokens/s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from saev_core.activations.cpu import parallel_decode_pool, reuse_freed_memory  # noqa: E402
from saev_core.activations.shards import ActivationDump, ActivationWriter, ShuffledBatches, activation_table, decode  # noqa: E402
from saev_core.io import write_json  # noqa: E402

TOKENS_PER_SAMPLE = 64
SAMPLES_PER_SHARD = 256


def write_store(path: Path, x: np.ndarray, kind: str, codec: str, row_group_mb: int) -> None:
    """A dump directory (manifest, samples, activation shards) holding ``x``, one sample per 64 rows."""
    n, d = x.shape
    sample = np.arange(n) // TOKENS_PER_SAMPLE
    ids = np.array([f"bench-{s:07d}" for s in range(sample[-1] + 1)], object)
    modality = np.where(np.arange(n) % TOKENS_PER_SAMPLE < 16, "image", "text").astype(object)
    modality[np.arange(n) % TOKENS_PER_SAMPLE == 16] = "special"
    shards, step = [], TOKENS_PER_SAMPLE * SAMPLES_PER_SHARD
    for i, start in enumerate(range(0, n, step)):
        sl = slice(start, min(n, start + step))
        name = f"activations/shard-{i:05d}.parquet"
        (path / "activations").mkdir(parents=True, exist_ok=True)
        if kind == "fsb":
            with ActivationWriter(path / name, d, "float16", codec, row_group_mb) as w:
                w.write(activation_table(x[sl], ids[sample[sl]], sample[sl], np.arange(sl.stop - sl.start) % TOKENS_PER_SAMPLE,
                                         modality[sl], np.zeros(sl.stop - sl.start, np.int32)))
                w.close()
        else:  # format 1, as saev wrote it before
            table = pa.table({"sample_id": ids[sample[sl]], "token_pos": pa.array(np.arange(sl.stop - sl.start) % TOKENS_PER_SAMPLE, pa.int32()),
                              "modality": modality[sl], "token_id": pa.array(np.zeros(sl.stop - sl.start), pa.int32()),
                              "activation": pa.FixedSizeListArray.from_arrays(pa.array(x[sl].reshape(-1)), d)})
            pq.write_table(table, path / name, compression=None if codec == "none" else codec,
                           row_group_size=max(1, row_group_mb * 2**20 // (2 * d)))
        shards.append({"file": name, "rows": sl.stop - sl.start})
    (path / "samples").mkdir(exist_ok=True)
    pq.write_table(pa.table({"sample_id": ids, "row_index": pa.array(np.arange(len(ids)), pa.int64())}), path / "samples" / "shard-00000.parquet")
    write_json(path / "manifest.json", {"format_version": 2 if kind == "fsb" else 1, "act_dtype": "float16", "d_model": d,
                                        "n_dataset_rows": len(ids), "shards": shards})


def stream_rate(dump: ActivationDump, batch_size: int, workers: int, epochs: int = 2, warmup_epochs: int = 1) -> float:
    """MB/s of float16 rows delivered by the training stream over ``epochs`` epochs of four chunks,
    timed after ``warmup_epochs`` untimed ones (a fresh process first pays the page faults of the
    memory its decoded row groups land in; a training run pays them once)."""
    rows = sum(rg[2] for rg in dump.row_groups)
    stream = ShuffledBatches(dump, ("image", "text"), batch_size, seed=0, buffer_rows=max(batch_size, rows // 4),
                             split="train", workers=workers)
    t0, rows = None, 0
    for x in stream:
        epoch = stream.position.epoch
        if epoch >= warmup_epochs + epochs:
            break
        if epoch < warmup_epochs:
            continue
        if t0 is None:
            t0 = time.perf_counter()  # the first timed batch is the one after this
        else:
            rows += len(x)
    return rows * dump.d_in * 2 / (time.perf_counter() - t0) / 1e6


def decode_floor(dump: ActivationDump) -> float:
    t0, nbytes = time.perf_counter(), 0
    for f, g, _ in dump.row_groups:
        x = decode(dump._parquet(f).read_row_group(g, columns=["activation"]).column(0), np.float16)
        nbytes += x.nbytes
    return nbytes / (time.perf_counter() - t0) / 1e6


def memmap_rate(x: np.ndarray, path: Path, batch_size: int) -> float:
    np.save(path, x)
    mm = np.load(path, mmap_mode="r")
    order = np.random.default_rng(0).permutation(len(mm))
    t0, nbytes = time.perf_counter(), 0
    for b in range(len(mm) // batch_size):
        batch = torch.from_numpy(mm[np.sort(order[b * batch_size:(b + 1) * batch_size])])
        nbytes += batch.numel() * 2
    return nbytes / (time.perf_counter() - t0) / 1e6


def duckdb_type(shard: Path) -> str | None:
    try:
        import duckdb
    except ImportError:
        return None
    rows = duckdb.sql(f"DESCRIBE SELECT activation FROM read_parquet('{shard}')").fetchall()
    return rows[0][1]


def measure(args, x: np.ndarray, layout: str, tmp: Path) -> dict:
    kind, codec, *rg = layout.split(":")
    row_group_mb = int(rg[0]) if rg else args.row_group_mb
    path = tmp / layout.replace(":", "-")
    t0 = time.perf_counter()
    write_store(path, x, kind, codec, row_group_mb)
    write_s = time.perf_counter() - t0
    dump = ActivationDump.open(path, heldout_fraction=0.05)
    disk = sum(f.stat().st_size for f in (path / "activations").iterdir()) / 1e6
    streams = {w: statistics.median(stream_rate(dump, args.batch_size, w, args.epochs, args.warmup_epochs) for _ in range(args.repeats))
               for w in args.workers}
    floor = statistics.median(decode_floor(dump) for _ in range(args.repeats))
    return {"layout": kind, "codec": codec, "row_group_mb": row_group_mb, "d_in": x.shape[1], "rows": len(x),
            "batch_size": args.batch_size, "workers": args.workers[0], "stream_mb_per_s": round(streams[args.workers[0]], 1),
            "stream_mb_per_s_by_workers": {str(w): round(v, 1) for w, v in streams.items()},
            "decode_floor_mb_per_s": round(floor, 1), "stream_over_floor": round(streams[args.workers[0]] / floor, 3),
            "disk_mb": round(disk, 1), "disk_mb_per_mtok": round(disk / len(x) * 1e6, 1), "write_s": round(write_s, 2),
            "duckdb_type": duckdb_type(path / "activations" / "shard-00000.parquet"), "arrow_pool": pa.default_memory_pool().backend_name}


def train_rates(args, tmp: Path) -> dict:
    """Training tokens/s of the synthetic case, reading the dump against the same batches in memory."""
    from _synthetic import write_synthetic_dump
    from bench_train import saev_reads_memory

    from saev_core.sae.train import TrainConfig, train_sae

    dump_dir = tmp / "synthetic"
    write_synthetic_dump(dump_dir, args.train_rows, d_in=512)
    base = {"activations": str(dump_dir), "architecture": "topk", "k": 32, "d_sae": 8192, "batch_size": 1024,
            "total_tokens": args.train_steps * 1024, "eval_rows": 0, "checkpoint_every": 10**9, "device": args.device,
            "progress": False, "reader_workers": args.workers[0]}
    cfg = TrainConfig.model_validate({**base, "out": str(tmp / "probe")})
    dump = ActivationDump.open(dump_dir, cfg.heldout_fraction)

    def batches(seed: int, n: int) -> np.ndarray:
        it = iter(ShuffledBatches(dump, ("image", "text"), 1024, seed=seed, buffer_rows=cfg.buffer_rows, workers=0))
        return np.concatenate([next(it).float().numpy() for _ in range(n)])
    train, probe = batches(0, args.train_steps), batches(1, cfg.scale_batches)
    rates: dict[str, list[float]] = {"stream": [], "memory": []}
    for seed in range(args.repeats):  # interleaved: the machine's load drifts
        for mode in ("stream", "memory"):
            run = TrainConfig.model_validate({**base, "out": str(tmp / f"{mode}-{seed}"), "seed": 0})
            if mode == "memory":
                with saev_reads_memory(train, probe, 0):
                    rates[mode].append(train_sae(run, overwrite=True)["tokens_per_s"])
            else:
                rates[mode].append(train_sae(run, overwrite=True)["tokens_per_s"])
    stream, memory = statistics.median(rates["stream"]), statistics.median(rates["memory"])
    return {"case": "synthetic", "device": args.device, "steps": args.train_steps, "reader_workers": args.workers[0], "torch_threads": torch.get_num_threads(),
            "stream_tokens_per_s": round(stream), "memory_tokens_per_s": round(memory), "stream_over_memory": round(stream / memory, 3),
            "runs": rates}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--d-in", type=int, default=4096)
    ap.add_argument("--rows", type=int, default=65536)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="reader worker counts; the first one is stream_mb_per_s")
    ap.add_argument("--layouts", nargs="+", default=["fsb:lz4"], help="kind:codec[:row_group_mb], kind fsb (format 2) or list (format 1)")
    ap.add_argument("--row-group-mb", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3, help="median of this many timings")
    ap.add_argument("--epochs", type=int, default=2, help="timed epochs of the stream (four chunks each)")
    ap.add_argument("--warmup-epochs", type=int, default=1, help="untimed epochs first (0: time the cold start too)")
    ap.add_argument("--torch-threads", type=int, default=1, help="torch intra-op threads (the issue's figures: 1)")
    ap.add_argument("--json", action="store_true", help="print one JSON object (the first layout) instead of the table")
    ap.add_argument("--no-jemalloc", action="store_true", help="keep pyarrow's default memory pool (mimalloc)")
    ap.add_argument("--train", action="store_true", help="training tok/s of the synthetic case, stream against memory")
    ap.add_argument("--train-steps", type=int, default=150)
    ap.add_argument("--train-rows", type=int, default=200_000)
    ap.add_argument("--device", default="cpu", help="--train: the training device (cpu, cuda)")
    args = ap.parse_args()
    torch.set_num_threads(args.torch_threads)
    if args.device == "cpu":
        reuse_freed_memory()  # as `saev train` on a CPU does: batch tensors reuse freed heap pages
    if not args.no_jemalloc:
        parallel_decode_pool()  # as `saev train` does with reader_workers > 1
    if args.train:
        with tempfile.TemporaryDirectory(prefix="saev-bench-reader-") as tmp:
            print(json.dumps(train_rates(args, Path(tmp))))
        return
    x = np.random.default_rng(0).standard_normal((args.rows, args.d_in), np.float32).astype(np.float16)
    with tempfile.TemporaryDirectory(prefix="saev-bench-reader-") as tmp:
        results = [measure(args, x, layout, Path(tmp)) for layout in args.layouts]
        mm = statistics.median(memmap_rate(x, Path(tmp) / "x.npy", args.batch_size) for _ in range(args.repeats))
    for r in results:
        r["memmap_mb_per_s"] = round(mm, 1)
    if args.json:
        print(json.dumps(results[0] if len(results) == 1 else results))
        return
    ws = [str(w) for w in args.workers]
    print(f"d_in {args.d_in}, {args.rows} rows, batch {args.batch_size}; float16 memory map, random batches: {mm:.0f} MB/s")
    print("| layout | codec | row group MB | " + " | ".join(f"stream, {w} worker(s)" for w in ws)
          + " | decode floor | stream / floor | disk MB per M tokens | DuckDB type |")
    print("| --- | --- | ---: |" + " ---: |" * (len(ws) + 4))
    for r in results:
        print(f"| {r['layout']} | {r['codec']} | {r['row_group_mb']} | " + " | ".join(f"{r['stream_mb_per_s_by_workers'][w]:.0f}" for w in ws)
              + f" | {r['decode_floor_mb_per_s']:.0f} | {r['stream_over_floor']:.2f} | {r['disk_mb_per_mtok']:.0f} | {r['duckdb_type']} |")


if __name__ == "__main__":
    main()
