"""Read a dump's activation shards back: shuffled training batches with bounded memory, and
ordered held-out rows for evaluation.

Shuffling works on chunks: each epoch visits the shards' row groups in a seeded random order,
groups them into chunks of about ``buffer_rows`` rows, and shuffles the rows of one chunk at a
time. Memory is one chunk; a position (epoch, chunk, batch) is enough to resume the exact same
stream without reading anything before it.

Held-out samples (for evaluation) are chosen from the sample id alone, so the split is the same
for every SAE trained on a dataset and never depends on row order.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from saev_core.io import read_json

log = logging.getLogger(__name__)

MODALITY_SETS = {"image+text": ("image", "text"), "text": ("text",), "image": ("image",)}


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
    _open_files: dict[int, pq.ParquetFile] = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, path: str | Path, heldout_fraction: float = 0.0) -> "ActivationDump":
        path = Path(path)
        mf = path / "manifest.json"
        if not mf.exists():
            raise FileNotFoundError(f"{path} is not a finished dump (no manifest.json); run `saev dump` first or point at its output directory")
        manifest = read_json(mf)
        files = [path / s["file"] for s in manifest["shards"]]
        missing = [str(f) for f in files if not f.exists()]
        if missing:
            raise FileNotFoundError(f"dump {path} lists shards that are missing: {missing[:3]}; rerun `saev dump` with the same config to restore them")
        row_groups = []
        for i, f in enumerate(files):
            md = pq.read_metadata(f)
            row_groups += [(i, g, md.row_group(g).num_rows) for g in range(md.num_row_groups)]
        heldout: set[str] = set()
        if heldout_fraction > 0:
            for f in sorted((path / "samples").glob("*.parquet")):
                heldout.update(s for s in pq.read_table(f, columns=["sample_id"]).column(0).to_pylist() if is_heldout(s, heldout_fraction))
        return cls(path, manifest, files, row_groups, frozenset(heldout))

    def _parquet(self, index: int) -> pq.ParquetFile:
        """Open shard files once per dump (re-opening per row group costs more than reading)."""
        if index not in self._open_files:
            self._open_files[index] = pq.ParquetFile(self.files[index])
        return self._open_files[index]

    @functools.cached_property
    def _heldout_array(self) -> pa.Array:
        return pa.array(sorted(self.heldout), pa.string())

    @property
    def d_in(self) -> int:
        return int(self.manifest["d_model"])

    def read_row_group(self, rg: tuple[int, int, int], modalities: tuple[str, ...], split: str) -> pa.Table:
        """Rows of one row group with the wanted modalities; split is 'train', 'heldout' or 'all'."""
        f, g, _ = rg
        table = self._parquet(f).read_row_group(g, columns=["sample_id", "modality", "activation"])
        mask = pc.is_in(table.column("modality"), pa.array(modalities))
        if split != "all" and self.heldout:
            held = pc.is_in(table.column("sample_id"), self._heldout_array)
            mask = pc.and_(mask, pc.invert(held) if split == "train" else held)
        return table.filter(mask)


def to_tensor(table: pa.Table) -> torch.Tensor:
    """The activation column as a float32 [rows, d_in] tensor."""
    col = table.column("activation").combine_chunks()
    d = col.type.list_size
    flat = col.values.to_numpy(zero_copy_only=False)
    return torch.from_numpy(flat.astype(np.float32, copy=True).reshape(-1, d))  # Arrow buffers are read-only


class ShuffledBatches:
    """An endless, seeded, resumable stream of [batch_size, d_in] float32 training batches.

    Row groups holding non-finite values make their whole shard be reported and skipped from
    then on; the skipped set is part of the stream's state so a resumed run skips the same.
    With ``world_size`` > 1 (data-parallel training) process ``rank`` reads only the shards whose
    index is rank modulo world_size.
    """

    def __init__(self, dump: ActivationDump, modalities: tuple[str, ...], batch_size: int, seed: int = 0,
                 buffer_rows: int = 1 << 20, split: str = "train", rank: int = 0, world_size: int = 1):
        self.dump, self.modalities, self.batch_size, self.seed = dump, modalities, batch_size, seed
        self.buffer_rows, self.split = buffer_rows, split
        self.row_groups = [rg for rg in dump.row_groups if rg[0] % world_size == rank]
        if world_size > 1 and not self.row_groups:
            raise ValueError(f"the dump at {dump.path} has {len(dump.files)} shard(s), fewer than the {world_size} training processes: "
                             "each process reads its own shards; dump with a smaller samples_per_shard or train on fewer processes")
        self.bad_files: set[int] = set()
        self.position = Position()
        self._cached: tuple[frozenset, frozenset, torch.Tensor] | None = None  # (row groups, bad files, rows)

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

    def _load_chunk(self, rgs, epoch: int, chunk: int) -> torch.Tensor:
        """The chunk's rows, shuffled. When one chunk holds the whole dump (it fits in buffer_rows),
        its rows are read once and only reshuffled in later epochs."""
        key = frozenset(rgs)
        if self._cached is not None and self._cached[:2] == (key, frozenset(self.bad_files)):
            x = self._cached[2]
        else:
            x = self._read(rgs)
            if len(rgs) == len(self.row_groups):
                self._cached = (key, frozenset(self.bad_files), x)
        return x[torch.from_numpy(np.random.default_rng([self.seed, epoch, chunk]).permutation(len(x)))]

    def _read(self, rgs) -> torch.Tensor:
        parts: list[tuple[int, torch.Tensor]] = []
        for rg in sorted(rgs):
            if rg[0] in self.bad_files:
                continue
            x = to_tensor(self.dump.read_row_group(rg, self.modalities, self.split))
            if not bool(torch.isfinite(x).all()):
                self.bad_files.add(rg[0])
                log.warning("shard %s holds NaN/inf activations: skipping it from now on", self.dump.files[rg[0]])
                continue
            parts.append((rg[0], x))
        # Rows read from a shard before its bad row group was met go too, so the chunk depends only
        # on the set of bad shards (what a resumed run restores).
        kept = [x for f, x in parts if f not in self.bad_files]
        return torch.cat(kept) if kept else torch.empty(0, self.dump.d_in)

    def __iter__(self) -> Iterator[torch.Tensor]:
        pos = self.position
        epochs_without_data = 0
        while True:
            chunks = self._chunks(pos.epoch)
            produced = False
            for c in range(pos.chunk, len(chunks)):
                x = self._load_chunk(chunks[c], pos.epoch, c)
                n_batches = len(x) // self.batch_size  # the tail (< one batch) of a chunk is dropped
                for b in range(pos.batch if c == pos.chunk else 0, n_batches):
                    produced = True
                    self.position = Position(pos.epoch, c, b + 1)
                    yield x[b * self.batch_size:(b + 1) * self.batch_size]
                pos = Position(pos.epoch, c + 1, 0)
            pos = Position(pos.epoch + 1, 0, 0)
            self.position = pos
            epochs_without_data = 0 if produced else epochs_without_data + 1
            if epochs_without_data >= 2:
                raise ValueError(
                    f"the dump at {self.dump.path} has fewer than {self.batch_size} usable {'+'.join(self.modalities)} rows "
                    f"per shuffle chunk ({len(self.bad_files)} shard(s) skipped as non-finite); lower batch_size or dump more data"
                )


def iter_rows(dump: ActivationDump, modalities: tuple[str, ...], split: str, max_rows: int | None = None,
              columns_too: bool = False) -> Iterator[tuple[torch.Tensor, pa.Table] | torch.Tensor]:
    """Rows in file order (no shuffle), for evaluation; stops after ``max_rows``. Shards with
    non-finite values are reported and left out, as in training."""
    seen, bad = 0, set()
    for rg in dump.row_groups:
        if rg[0] in bad:
            continue
        table = dump.read_row_group(rg, modalities, split)
        if max_rows is not None:
            table = table.slice(0, max_rows - seen)
        if table.num_rows == 0:
            continue
        x = to_tensor(table)
        if not bool(torch.isfinite(x).all()):
            bad.add(rg[0])
            log.warning("shard %s holds NaN/inf activations: left out of the evaluation", dump.files[rg[0]])
            continue
        seen += table.num_rows
        yield (x, table) if columns_too else x
        if max_rows is not None and seen >= max_rows:
            return
