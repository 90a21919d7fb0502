"""Read a dump's activation shards back: shuffled training batches with bounded memory, and
ordered held-out rows for evaluation.

Layout (format 2): one row per token; the activation is one fixed-size binary cell of d_in
little-endian float16 (or float32) values, so a row group decodes as one buffer rather than
element by element; ``modality_id`` and ``row_index`` (the dataset row) give the modality and
held-out masks as integer lookups. Format-1 dumps (a ``fixed_size_list`` activation, string masks)
still read. bench/bench_reader.py measured the choice (bench/RESULTS.md, issue 31).

Shuffling works on chunks: each epoch visits the shards' row groups in a seeded random order,
groups them into chunks of about ``buffer_rows`` rows, and shuffles the rows of one chunk at a
time. A chunk is its row groups as decoded (no copy), and each batch is gathered straight from
them. Memory is two chunks (the next one is read by background workers while the current one is
served); a position (epoch, chunk, batch) is enough to resume the exact same stream without
reading anything before it. Rows stay in the stored dtype until the consumer's device.

Held-out samples (for evaluation) are chosen from the sample id alone, so the split is the same
for every SAE trained on a dataset and never depends on row order.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from saev_core.activations.background import prefetch
from saev_core.io import read_json, resolve_recorded, resolve_recorded_dataset

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
MODALITY_SETS = {"image+text": ("image", "text"), "text": ("text",), "image": ("image",)}
MODALITY_IDS = {"image": 0, "text": 1, "special": 2}
_EXPONENT = {np.dtype(np.float16): (np.uint16, 0x7C00), np.dtype(np.float32): (np.uint32, 0x7F800000)}


def activation_schema(d_model: int, act_dtype: str) -> pa.Schema:
    """A format-2 shard's columns; the activation field's metadata names its dtype."""
    width = d_model * np.dtype(act_dtype).itemsize
    return pa.schema([
        ("sample_id", pa.string()),
        ("row_index", pa.int32()),
        ("token_pos", pa.int32()),
        ("modality", pa.string()),
        ("modality_id", pa.int8()),
        ("token_id", pa.int32()),
        pa.field("activation", pa.binary(width), metadata={"saev.act_dtype": act_dtype, "saev.d_model": str(d_model)}),
    ])


def activation_table(x: np.ndarray, sample_ids: np.ndarray, row_index: np.ndarray, token_pos: np.ndarray,
                     modality: np.ndarray, token_id: np.ndarray) -> pa.Table:
    """Format-2 rows from a [rows, d_model] float16/float32 array and per-row columns."""
    x = np.ascontiguousarray(x)
    n, d = x.shape
    act = pa.FixedSizeBinaryArray.from_buffers(pa.binary(d * x.itemsize), n, [None, pa.py_buffer(x.view(np.uint8).reshape(-1))])
    names, inverse = np.unique(np.asarray(modality, str), return_inverse=True)
    ids = np.array([MODALITY_IDS[m] for m in names], np.int8)[inverse]
    return pa.Table.from_arrays([
        pa.array(sample_ids, pa.string()), pa.array(row_index, pa.int32()), pa.array(token_pos, pa.int32()),
        pa.array(modality, pa.string()), pa.array(ids, pa.int8()), pa.array(token_id, pa.int32()), act,
    ], schema=activation_schema(d, x.dtype.name))


class ActivationWriter:
    """Writes one format-2 shard. Token rows are buffered into row groups of about ``row_group_mb``
    (readers want big ones), and each is encoded in a background thread while the caller computes
    the next rows. ``close(metadata)`` finishes the file; leaving the ``with`` block on an error
    closes it unfinished (callers write to a temporary path)."""

    def __init__(self, path: str | Path, d_model: int, act_dtype: str, compression: str = "lz4", row_group_mb: int = 64):
        self.rows_per_group = max(1, row_group_mb * 2**20 // (d_model * np.dtype(act_dtype).itemsize))
        self._writer = pq.ParquetWriter(path, activation_schema(d_model, act_dtype), compression=None if compression == "none" else compression)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="saev-writer")
        self._pending: Future | None = None
        self._buffered: list[pa.Table] = []

    def write(self, table: pa.Table) -> None:
        self._buffered.append(table)
        if sum(t.num_rows for t in self._buffered) >= self.rows_per_group:
            self._flush()

    def _flush(self) -> None:
        if self._pending is not None:
            self._pending.result()
        self._pending = None
        if self._buffered:
            self._pending = self._pool.submit(self._writer.write_table, pa.concat_tables(self._buffered), row_group_size=self.rows_per_group)
        self._buffered = []

    def close(self, metadata: dict[str, str] | None = None) -> None:
        self._flush()
        if self._pending is not None:
            self._pending.result()
        if metadata:
            self._writer.add_key_value_metadata(metadata)
        self._writer.close()

    def __enter__(self) -> "ActivationWriter":
        return self

    def __exit__(self, *exc) -> None:
        self._pool.shutdown(wait=True)
        if self._writer.is_open:
            self._writer.close()


def decode(col: pa.Array | pa.ChunkedArray, dtype=None) -> np.ndarray:
    """The activation column as a [rows, d_in] array in its stored dtype: a view of the Arrow
    buffer for format 2 (read-only), a copy for format 1's list layout."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    if pa.types.is_fixed_size_binary(col.type):
        dtype = np.dtype(dtype or np.float16)
        d = col.type.byte_width // dtype.itemsize
        return np.frombuffer(col.buffers()[1], dtype, len(col) * d, col.offset * col.type.byte_width).reshape(len(col), d)
    d = col.type.list_size
    return col.flatten().to_numpy(zero_copy_only=False).reshape(-1, d)


def column_dtype(field: pa.Field) -> np.dtype:
    """A format-2 activation field's dtype (from its metadata); format 1 carries it in the list type."""
    meta = field.metadata or {}
    if b"saev.act_dtype" in meta:
        return np.dtype(meta[b"saev.act_dtype"].decode())
    return np.dtype(field.type.value_type.to_pandas_dtype()) if pa.types.is_fixed_size_list(field.type) else np.dtype(np.float16)


def all_finite(x: np.ndarray, block: int = 1 << 20) -> bool:
    """No NaN or inf: a non-finite float has every exponent bit set. Integer ops over
    cache-sized blocks: one pass over memory, about 10x numpy's isfinite on float16."""
    if x.dtype not in _EXPONENT:
        return bool(np.isfinite(x).all())
    uint, exponent = _EXPONENT[x.dtype]
    flat = np.ascontiguousarray(x).reshape(-1).view(uint)
    tmp = np.empty(min(block, len(flat)), uint)
    for i in range(0, len(flat), block):
        part = tmp[:len(flat[i:i + block])]
        np.bitwise_and(flat[i:i + block], np.iinfo(uint).max >> 1, out=part)  # |x|'s bits
        if part.max() >= exponent:
            return False
    return True


def is_heldout(sample_id: str, fraction: float) -> bool:
    """Deterministic split from the id: the same samples are held out for every run."""
    h = int.from_bytes(hashlib.blake2b(sample_id.encode(), digest_size=8).digest(), "big")
    return h / 2**64 < fraction


@dataclass(frozen=True)
class Position:
    """Where a stream is: the next batch to produce is batch ``batch`` of chunk ``chunk`` of ``epoch``."""

    epoch: int = 0
    chunk: int = 0
    batch: int = 0


@dataclass(eq=False)
class ActivationDump:
    """A dump directory: its manifest, shard files and row groups."""

    path: Path
    manifest: dict
    files: list[Path]
    row_groups: list[tuple[int, int, int]]  # (file index, row group index, rows)
    heldout: frozenset[str] = field(default_factory=frozenset)
    heldout_rows: np.ndarray | None = None  # format 2: held-out flag per dataset row
    _local: threading.local = field(default_factory=threading.local, repr=False)  # open shard files, per reading thread

    @classmethod
    def open(cls, path: str | Path, heldout_fraction: float = 0.0) -> "ActivationDump":
        path = Path(path)
        mf = path / "manifest.json"
        if not mf.exists():
            raise FileNotFoundError(f"{path} is not a finished dump (no manifest.json); run `saev dump` first or point at its output directory")
        manifest = read_json(mf)
        # the model and dataset as they are now: inside a store that moved, they moved with it
        manifest["model"] = resolve_recorded(manifest.get("model"), path)
        if "dataset" in manifest:
            manifest["dataset"] = resolve_recorded_dataset(manifest["dataset"], path)
        version = int(manifest.get("format_version", 1))
        if version > FORMAT_VERSION:
            raise ValueError(f"dump {path} has format {version}, newer than this saev reads ({FORMAT_VERSION}); upgrade saev_core")
        files = [path / s["file"] for s in manifest["shards"]]
        missing = [str(f) for f in files if not f.exists()]
        if missing:
            raise FileNotFoundError(f"dump {path} lists shards that are missing: {missing[:3]}; rerun `saev dump` with the same config to restore them")
        row_groups = []
        for i, f in enumerate(files):
            md = pq.read_metadata(f)
            row_groups += [(i, g, md.row_group(g).num_rows) for g in range(md.num_row_groups)]
        heldout: set[str] = set()
        held_rows = np.zeros(int(manifest.get("n_dataset_rows", 0)), bool) if version >= 2 else None
        if heldout_fraction > 0:
            for f in sorted((path / "samples").glob("*.parquet")):
                t = pq.read_table(f, columns=["sample_id", "row_index"] if held_rows is not None else ["sample_id"])
                ids = t.column(0).to_pylist()
                flags = np.fromiter((is_heldout(s, heldout_fraction) for s in ids), bool, len(ids))
                heldout.update(s for s, h in zip(ids, flags) if h)
                if held_rows is not None:
                    rows = t.column(1).to_numpy()[flags]
                    if len(rows) and rows.max() >= len(held_rows):
                        held_rows = np.pad(held_rows, (0, int(rows.max()) + 1 - len(held_rows)))
                    held_rows[rows] = True
        return cls(path, manifest, files, row_groups, frozenset(heldout), held_rows)

    def sample_rows(self) -> dict[str, int]:
        """Each dumped sample's source row (sample_id -> row_index), from the dump's samples files."""
        rows: dict[str, int] = {}
        for f in sorted((self.path / "samples").glob("*.parquet")):
            t = pq.read_table(f, columns=["sample_id", "row_index"])
            rows.update(zip(t.column(0).to_pylist(), t.column(1).to_pylist()))
        return rows

    def _parquet(self, index: int) -> pq.ParquetFile:
        """Open shard files once per dump and thread (re-opening per row group costs more than
        reading; a ParquetFile is not shared between threads). A thread's files close with it."""
        files = self._local.__dict__.setdefault("files", {})
        if index not in files:
            files[index] = pq.ParquetFile(self.files[index])
        return files[index]

    @functools.cached_property
    def _heldout_array(self) -> pa.Array:
        return pa.array(sorted(self.heldout), pa.string())

    @property
    def d_in(self) -> int:
        return int(self.manifest["d_model"])

    @property
    def version(self) -> int:
        return int(self.manifest.get("format_version", 1))

    @functools.cached_property
    def dtype(self) -> np.dtype:
        """The stored dtype, read from a shard's schema (format-1 manifests may not name it)."""
        return column_dtype(self._parquet(0).schema_arrow.field("activation")) if self.files else np.dtype(np.float16)

    @property
    def _mask_columns(self) -> list[str]:
        """The columns ``_mask`` reads: integer ones from format 2 on, strings before."""
        return ["modality_id", "row_index"] if self.version >= 2 else ["modality", "sample_id"]

    def _mask(self, table: pa.Table, modalities: tuple[str, ...], split: str) -> np.ndarray:
        if self.version >= 2:
            mask = np.isin(table.column("modality_id").to_numpy(), [MODALITY_IDS[m] for m in modalities])
            if split != "all" and self.heldout:
                held = self.heldout_rows[table.column("row_index").to_numpy()]
                mask &= ~held if split == "train" else held
            return mask
        mask = pc.is_in(table.column("modality"), pa.array(modalities))
        if split != "all" and self.heldout:
            held = pc.is_in(table.column("sample_id"), self._heldout_array)
            mask = pc.and_(mask, pc.invert(held) if split == "train" else held)
        return mask.to_numpy(zero_copy_only=False)

    def keep(self, rg: tuple[int, int, int], modalities: tuple[str, ...], split: str) -> np.ndarray:
        """Positions, in row group ``rg``, of its rows with the wanted modalities and split ('train',
        'heldout' or 'all'); reads the small mask columns only."""
        f, g, _ = rg
        return np.flatnonzero(self._mask(self._parquet(f).read_row_group(g, columns=self._mask_columns), modalities, split))

    def decoded(self, rg: tuple[int, int, int]) -> np.ndarray:
        """Row group ``rg``'s activations, every row, [rows, d_in] in the stored dtype (read-only)."""
        f, g, _ = rg
        return decode(self._parquet(f).read_row_group(g, columns=["activation"]).column(0), self.dtype)

    def read(self, rg: tuple[int, int, int], modalities: tuple[str, ...], split: str,
             columns: tuple[str, ...] = ()) -> tuple[np.ndarray, pa.Table, np.ndarray]:
        """One row group's rows with the wanted modalities; split is 'train', 'heldout' or 'all'.

        Returns the activations ([rows, d_in], stored dtype; read-only when every row is kept),
        the other ``columns`` of the same rows, and their positions in the row group.
        """
        f, g, _ = rg
        table = self._parquet(f).read_row_group(g, columns=list(dict.fromkeys([*self._mask_columns, *columns, "activation"])))
        keep = np.flatnonzero(self._mask(table, modalities, split))
        x = decode(table.column("activation"), self.dtype)
        if len(keep) < len(x):
            x = x[keep]
        return x, table.select(list(columns)).take(keep), keep

    def read_row_group(self, rg: tuple[int, int, int], modalities: tuple[str, ...], split: str) -> pa.Table:
        """Rows of one row group with the wanted modalities, as a table (sample_id, modality, activation)."""
        f, g, _ = rg
        columns = ["sample_id", "modality", "activation"]
        table = self._parquet(f).read_row_group(g, columns=list(dict.fromkeys([*self._mask_columns, *columns])))
        return table.filter(pa.array(self._mask(table, modalities, split))).select(columns)


def as_tensor(x: np.ndarray) -> torch.Tensor:
    """A torch view of decoded rows (copied when they are a read-only view of an Arrow buffer)."""
    return torch.from_numpy(x if x.flags.writeable else x.copy())


def to_tensor(table: pa.Table) -> torch.Tensor:
    """The activation column as a float32 [rows, d_in] tensor."""
    x = decode(table.column("activation"), column_dtype(table.schema.field("activation")))
    return torch.from_numpy(x.astype(np.float32))


_TORCH_DTYPE = {np.dtype(np.float16): torch.float16, np.dtype(np.float32): torch.float32}


@dataclass(frozen=True)
class Chunk:
    """A shuffle chunk: its row groups as decoded (read-only, every row) and the positions of the
    rows it serves in each. Batches are gathered straight from them, so the chunk is never
    copied; its rows are numbered in row-group order."""

    parts: list[np.ndarray]
    keeps: list[np.ndarray]

    @functools.cached_property
    def ends(self) -> np.ndarray:
        return np.cumsum([len(k) for k in self.keeps], dtype=np.int64)

    def __len__(self) -> int:
        return int(self.ends[-1]) if self.keeps else 0

    def gather(self, idx: np.ndarray, out: np.ndarray) -> None:
        """Rows ``idx`` (chunk row numbers) into ``out``, in ascending order: a batch is a set of
        rows, and each row group's rows read in order gather 10-15% faster than at random."""
        idx = np.sort(idx)
        bounds = np.searchsorted(idx, self.ends)
        a = 0
        for x, keep, end, b in zip(self.parts, self.keeps, self.ends, bounds):
            if b > a:
                # mode="clip" writes into out directly; "raise" would gather through a temporary
                np.take(x, keep[idx[a:b] - (end - len(keep))], axis=0, out=out[a:b], mode="clip")
            a = b


class ShuffledBatches:
    """An endless, seeded, resumable stream of [batch_size, d_in] training batches in the dump's
    stored dtype (convert on the device: ``x.to(device, non_blocking=True).float()``).

    ``workers`` threads decode row groups, and the next chunk is read while the current one is
    served; batches are gathered ahead into a bounded queue. The batches do not depend on
    ``workers`` (0 reads in the consumer's thread). ``pin_memory`` (CUDA) gathers batches into
    page-locked memory so the copy to the device can be asynchronous.

    Row groups holding non-finite values make their whole shard be reported and skipped from
    then on; the skipped set is part of the stream's state so a resumed run skips the same.
    With ``world_size`` > 1 (data-parallel training) process ``rank`` reads only the shards whose
    index is rank modulo world_size.
    """

    def __init__(self, dump: ActivationDump, modalities: tuple[str, ...], batch_size: int, seed: int = 0,
                 buffer_rows: int = 1 << 20, split: str = "train", rank: int = 0, world_size: int = 1,
                 workers: int = 1, prefetch_batches: int = 4, pin_memory: bool = False):
        self.dump, self.modalities, self.batch_size, self.seed = dump, modalities, batch_size, seed
        self.buffer_rows, self.split = buffer_rows, split
        self.workers, self.prefetch_batches, self.pin_memory = workers, prefetch_batches, pin_memory
        self.row_groups = [rg for rg in dump.row_groups if rg[0] % world_size == rank]
        if world_size > 1 and not self.row_groups:
            raise ValueError(f"the dump at {dump.path} has {len(dump.files)} shard(s), fewer than the {world_size} training processes: "
                             "each process reads its own shards; dump with a smaller samples_per_shard or train on fewer processes")
        self.bad_files: set[int] = set()
        self.position = Position()
        self._cached: tuple[frozenset, frozenset, Chunk] | None = None  # (row groups, bad files, rows)

    def state(self) -> dict:
        return {"position": vars(self.position), "bad_files": sorted(self.bad_files)}

    def load_state(self, state: dict) -> None:
        self.position = Position(**state["position"])
        self.bad_files = set(state["bad_files"])

    def _chunks(self, epoch: int) -> list[list[tuple[int, int, int]]]:
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.row_groups))
        chunks, cur, rows = [], [], 0
        for i in order:
            rg = self.row_groups[i]
            cur.append(rg)
            rows += rg[2]
            if rows >= self.buffer_rows:
                chunks.append(cur)
                cur, rows = [], 0
        if cur:
            chunks.append(cur)
        return chunks

    def _plan(self, epoch: int, chunk: int) -> Iterator[tuple[int, int, list, bool]]:
        """(epoch, chunk index, its row groups, last of its epoch) from (epoch, chunk) on, endlessly."""
        while True:
            chunks = self._chunks(epoch)
            for c in range(chunk, len(chunks)):
                yield epoch, c, chunks[c], c == len(chunks) - 1
            if chunk >= len(chunks):  # resumed past the epoch's last chunk
                yield epoch, chunk, [], True
            epoch, chunk = epoch + 1, 0

    def _load_chunk(self, rgs, bad: frozenset[int], pool: ThreadPoolExecutor | None) -> tuple[Chunk, set[int]]:
        """The chunk's rows, and the shards found non-finite while reading it. When one chunk
        holds the whole dump (it fits in buffer_rows), it is read once and only reshuffled in
        later epochs."""
        key = frozenset(rgs)
        if self._cached is not None and self._cached[:2] == (key, bad):
            return self._cached[2], set()
        chunk, newly_bad = self._read(rgs, bad, pool)
        if len(rgs) == len(self.row_groups):
            self._cached = (key, bad | newly_bad, chunk)
        return chunk, newly_bad

    def _read(self, rgs, bad: frozenset[int], pool: ThreadPoolExecutor | None) -> tuple[Chunk, set[int]]:
        """Decode the chunk's row groups (in parallel when a pool is given) and check them; returns
        the chunk without the shards newly found to hold non-finite rows, and those shards."""
        todo = [rg for rg in sorted(rgs) if rg[0] not in bad]

        def one(rg) -> tuple[np.ndarray, np.ndarray, bool]:
            keep = self.dump.keep(rg, self.modalities, self.split)
            x = self.dump.decoded(rg)
            # the whole row group is checked in one pass; only a hit looks at the kept rows alone
            return x, keep, all_finite(x) or all_finite(x[keep])
        parts = list(pool.map(one, todo) if pool is not None else map(one, todo))
        newly_bad = {rg[0] for rg, (_, _, ok) in zip(todo, parts) if not ok}
        for f in sorted(newly_bad):
            log.warning("shard %s holds NaN/inf activations: skipping it from now on", self.dump.files[f])
        # rows read from a bad shard before its bad row group go too: the chunk depends only on the bad set
        kept = [(x, keep) for rg, (x, keep, _) in zip(todo, parts) if rg[0] not in newly_bad]
        return Chunk([x for x, _ in kept], [keep for _, keep in kept]), newly_bad

    def _batches(self, pos: Position, bad: set[int], pool: ThreadPoolExecutor | None) -> Iterator[tuple[Position, frozenset, torch.Tensor | None]]:
        """(position after the batch, bad shards the batch was read with, batch), from ``pos`` on;
        a None batch marks an epoch's end. The next chunk (across epochs too) is read while this
        one's batches are served."""
        ahead = ThreadPoolExecutor(1, thread_name_prefix="saev-chunk") if pool is not None else None
        plan = self._plan(pos.epoch, pos.chunk)
        epoch, c, rgs, last = next(plan)
        loaded = self._load_chunk(rgs, frozenset(bad), pool)
        produced, epochs_without_data = False, 0
        try:
            while True:
                chunk, newly_bad = loaded
                bad |= newly_bad
                snapshot = frozenset(bad)
                following = next(plan)
                nxt = ahead.submit(self._load_chunk, following[2], snapshot, pool) if ahead is not None else None
                perm = np.random.default_rng([self.seed, epoch, c]).permutation(len(chunk))
                n_batches = len(chunk) // self.batch_size  # the tail (< one batch) of a chunk is dropped
                for b in range(pos.batch if (epoch, c) == (pos.epoch, pos.chunk) else 0, n_batches):
                    produced = True
                    out = torch.empty((self.batch_size, self.dump.d_in), dtype=_TORCH_DTYPE[self.dump.dtype], pin_memory=self.pin_memory)
                    chunk.gather(perm[b * self.batch_size:(b + 1) * self.batch_size], out.numpy())
                    yield Position(epoch, c, b + 1), snapshot, out
                if last:
                    yield Position(epoch + 1, 0, 0), snapshot, None
                    epochs_without_data, produced = (0 if produced else epochs_without_data + 1), False
                    if epochs_without_data >= 2:
                        raise ValueError(
                            f"the dump at {self.dump.path} has fewer than {self.batch_size} usable {'+'.join(self.modalities)} rows "
                            f"per shuffle chunk ({len(bad)} shard(s) skipped as non-finite); lower batch_size or dump more data"
                        )
                epoch, c, rgs, last = following
                loaded = nxt.result() if nxt is not None else self._load_chunk(rgs, snapshot, pool)
        finally:
            if ahead is not None:
                ahead.shutdown(wait=True, cancel_futures=True)

    def __iter__(self) -> Iterator[torch.Tensor]:
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="saev-reader") if self.workers > 0 else None
        items = self._batches(self.position, set(self.bad_files), pool)
        try:
            for pos, bad, x in (prefetch(items, self.prefetch_batches) if pool is not None else items):
                self.position, self.bad_files = pos, set(bad)
                if x is not None:
                    yield x
        finally:
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)


def iter_rows(dump: ActivationDump, modalities: tuple[str, ...], split: str, max_rows: int | None = None,
              columns: tuple[str, ...] = ()) -> Iterator[tuple[torch.Tensor, pa.Table]]:
    """(rows [n, d_in] in the stored dtype, their ``columns``) in file order (no shuffle), for
    evaluation and scoring; stops after ``max_rows``. The next row group is decoded while the
    consumer works. Shards with non-finite values are reported and left out, as in training."""

    def groups():
        bad = set()
        for rg in dump.row_groups:
            if rg[0] in bad:
                continue
            x, table, _ = dump.read(rg, modalities, split, columns)
            if len(x) and not all_finite(x):
                bad.add(rg[0])
                log.warning("shard %s holds NaN/inf activations: left out of the evaluation", dump.files[rg[0]])
                continue
            yield x, table

    seen = 0
    for x, table in prefetch(groups(), 1):
        if max_rows is not None:
            x, table = x[: max_rows - seen], table.slice(0, max_rows - seen)
        if len(x) == 0:
            continue
        seen += len(x)
        yield as_tensor(x), table
        if max_rows is not None and seen >= max_rows:
            return
