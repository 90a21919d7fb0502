"""Encode one dump shard through an SAE, streaming, into its ``sample_features`` part.

Rows are read in record batches of ``batch_rows`` positions, encoded on the SAE's device, and
reduced at once to sparse per-(sample, modality, latent) aggregates (count, sum, max): memory is
one batch of latents plus the shard's aggregates, never the shard's dense codes. Alongside, the
pass keeps what the later steps need and nothing more:

- per sample: token counts, active (position, latent) pairs, and the cosine of its mean image
  and mean text residuals (the ``model_cosine`` baseline);
- per latent: firing counts per modality, its top occurrences among the reference samples
  (Algorithm 1 step 2) and its top ``per_side`` occurrences in each modality on its own (the
  scale-balanced weights), as references ``(shard, row, is_image)`` packed in one int64 so the
  residuals can be fetched afterwards (``fetch_residuals``) instead of held.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from saev_core.activations.shards import ActivationDump, as_tensor, decode
from saev_core.activations.background import prefetch
from saev_core.io import atomic_path
from saev_core.sae.model import SAE
from saev_core.scoring.weights import empty_pool, pack_ref, unpack_ref, update_pool
from saev_core.tables.schema import SAMPLE_FEATURES

Tensor = torch.Tensor

SHARD_SAMPLES = pa.schema([
    ("sample_id", pa.string()),
    ("n_image", pa.int32()),
    ("n_text", pa.int32()),
    ("n_active", pa.int64()),
    ("resid_cosine", pa.float64()),
])


def fetch_residuals(dump: ActivationDump, refs: np.ndarray) -> dict[int, Tensor]:
    """Residual vectors of packed refs, reading only the row groups that hold them."""
    out: dict[int, Tensor] = {}
    uniq = np.unique(refs[refs >= 0])
    shards, rows, _ = unpack_ref(uniq)
    for shard in np.unique(shards):
        sel = shards == shard
        pf = pq.ParquetFile(dump.files[int(shard)])
        starts = np.cumsum([0] + [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)])
        groups = np.searchsorted(starts, rows[sel], side="right") - 1
        for g in np.unique(groups):
            in_g = groups == g
            col = pf.read_row_group(int(g), columns=["activation"]).column(0)
            vecs = decode(col, dump.dtype)[rows[sel][in_g] - starts[g]].astype(np.float32)
            for ref, vec in zip(uniq[sel][in_g], vecs):
                out[int(ref)] = torch.from_numpy(vec)
    return out


@dataclass
class ShardPass:
    """What encoding one shard leaves for the dataset-level steps."""

    pool_values: Tensor   # [top, d_sae] top activations among reference positions
    pool_refs: Tensor     # [top, d_sae] packed refs
    side_values: Tensor   # [2, per_side, d_sae] top activations among reference positions, per modality (image, text)
    side_refs: Tensor     # [2, per_side, d_sae]
    fires: Tensor         # [2, d_sae] int64: positions where each latent is > 0 (image, text)
    tokens: Tensor        # [2] int64: image and text positions seen
    samples: pa.Table     # SHARD_SAMPLES

    def tensors(self) -> dict[str, Tensor]:
        return {"pool_values": self.pool_values, "pool_refs": self.pool_refs, "side_values": self.side_values,
                "side_refs": self.side_refs, "fires": self.fires, "tokens": self.tokens}


def _reduce(key: Tensor, cnt: Tensor, sm: Tensor, mx: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Unique keys with their counts and sums added and the max of their maxima."""
    uk, inv = torch.unique(key, return_inverse=True)

    def zeros(dtype):
        return torch.zeros(len(uk), dtype=dtype, device=key.device)
    return (uk, zeros(torch.int64).index_add_(0, inv, cnt), zeros(torch.float64).index_add_(0, inv, sm),
            zeros(mx.dtype).scatter_reduce_(0, inv, mx, "amax", include_self=False))


def _aggregate(key: Tensor, values: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Unique keys with count, sum and max of their values."""
    return _reduce(key, torch.ones_like(key), values.double(), values)


def _merge(parts: list[tuple[Tensor, Tensor, Tensor, Tensor]]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Combine per-batch aggregates whose keys may repeat (a sample spanning two batches)."""
    return _reduce(*(torch.cat([p[i] for p in parts]) for i in range(4)))


def _shard_batches(dump: ActivationDump, shard: int, batch_rows: int):
    """(activations, sample_id and modality, positions in the shard file) of the shard's image and
    text rows, ``batch_rows`` at a time; the next row group is decoded while this one is encoded."""
    def groups():
        start = 0
        for rg in (rg for rg in dump.row_groups if rg[0] == shard):
            x, table, keep = dump.read(rg, ("image", "text"), "all", ("sample_id", "modality"))
            yield x, table, keep + start
            start += rg[2]
    for x, table, rows in prefetch(groups(), 1):
        for i in range(0, len(x), batch_rows):
            yield x[i:i + batch_rows], table.slice(i, batch_rows), rows[i:i + batch_rows]


@torch.no_grad()
def _features_table(parts: list, names: np.ndarray, d_sae: int) -> pa.Table:
    """A shard's sample_features rows from its batches' aggregates, sorted by feature_id, then sample_id."""
    if not parts:
        return SAMPLE_FEATURES.empty_table()
    key, cnt, sm, mx = _merge(parts)
    seg, feat = key // d_sae, (key % d_sae).to(torch.int32)
    order = np.lexsort((names[(seg // 2).numpy()], feat.numpy()))
    return pa.table({
        "sample_id": pa.array(names[(seg // 2).numpy()][order], pa.string()),
        "feature_id": pa.array(feat.numpy()[order]),
        "modality": pa.array(np.where((seg % 2).numpy() == 1, "text", "image")[order], pa.string()),
        "n_active_tokens": pa.array(cnt.numpy().astype(np.int32)[order]),
        "max_act": pa.array(mx.numpy().astype(np.float32)[order]),
        "sum_act": pa.array(sm.numpy().astype(np.float32)[order]),
    }, schema=SAMPLE_FEATURES)


def _shard_samples(counts: torch.Tensor, resid: torch.Tensor, names: np.ndarray) -> pa.Table:
    """Per sample of a shard: image, text and active-latent token counts, and the cosine of its
    image and text residual sums (the same direction as their means; null without both)."""
    both = (counts[:, 0] > 0) & (counts[:, 1] > 0)
    cos = torch.nn.functional.cosine_similarity(resid[:, 0], resid[:, 1], dim=-1)
    return pa.table({
        "sample_id": pa.array(names, pa.string()),
        "n_image": pa.array(counts[:, 0].numpy().astype(np.int32)),
        "n_text": pa.array(counts[:, 1].numpy().astype(np.int32)),
        "n_active": pa.array(counts[:, 2].numpy()),
        "resid_cosine": pa.array(np.where(both.numpy(), cos.numpy(), np.nan), mask=~both.numpy()),
    }, schema=SHARD_SAMPLES)


def encode_shard(dump: ActivationDump, shard: int, sae: SAE, reference_ids: frozenset[str], out_part: Path,
                 top: int = 30, per_side: int = 5, batch_rows: int = 4096, pbar=None) -> ShardPass:
    """Encode shard ``shard`` of ``dump``; write its sample_features part to ``out_part`` (atomically)."""
    device = sae.W_enc.device
    d_sae, d_in = sae.cfg.d_sae, sae.cfg.d_in
    ids: dict[str, int] = {}
    parts = []
    fires = torch.zeros(2 * d_sae, dtype=torch.int64, device=device)
    resid = torch.zeros(0, 2, d_in, dtype=torch.float64, device=device)
    counts = torch.zeros(0, 3, dtype=torch.int64, device=device)  # n_image, n_text, n_active
    pool_values, pool_refs = empty_pool(top, d_sae, device)
    sides = [empty_pool(per_side, d_sae, device) for _ in range(2)]  # image, text
    reference = pa.array(sorted(reference_ids), pa.string())
    for x, batch, rows in _shard_batches(dump, shard, batch_rows):
        sids = batch.column("sample_id").to_numpy(zero_copy_only=False)
        uniq, first, inv = np.unique(sids, return_index=True, return_inverse=True)
        for s in uniq[np.argsort(first)]:
            ids.setdefault(s, len(ids))
        local = torch.from_numpy(np.array([ids[s] for s in uniq])[inv]).to(device)
        is_text = torch.from_numpy(batch.column("modality").to_numpy(zero_copy_only=False) != "image").to(device)
        x = as_tensor(x).to(device).float()
        f = sae.encode(x)
        r, c = f.nonzero(as_tuple=True)
        v = f[r, c].float()
        seg = local[r] * 2 + is_text[r].long()
        parts.append(tuple(t.cpu() for t in _aggregate(seg * d_sae + c, v)))
        fires += torch.bincount(c + d_sae * is_text[r].long(), minlength=2 * d_sae)
        n_local = len(ids)
        if n_local > counts.shape[0]:
            grow = n_local - counts.shape[0]
            counts = torch.cat([counts, torch.zeros(grow, 3, dtype=torch.int64, device=device)])
            resid = torch.cat([resid, torch.zeros(grow, 2, d_in, dtype=torch.float64, device=device)])
        counts[:, 0] += torch.bincount(local[~is_text], minlength=n_local)
        counts[:, 1] += torch.bincount(local[is_text], minlength=n_local)
        counts[:, 2] += torch.bincount(local[r], minlength=n_local)
        resid.view(-1, d_in).index_add_(0, local * 2 + is_text.long(), x.double())
        in_ref = pc.is_in(batch.column("sample_id"), reference).to_numpy(zero_copy_only=False)
        if in_ref.any():
            sel = torch.from_numpy(in_ref).to(device)
            refs = pack_ref(shard, torch.from_numpy(rows[in_ref]), ~is_text[sel].cpu()).to(device)
            pool_values, pool_refs = update_pool(pool_values, pool_refs, f[sel], refs)
            ref_text = is_text[sel]
            for side, mask in enumerate((~ref_text, ref_text)):
                if mask.any():
                    sides[side] = update_pool(*sides[side], f[sel][mask], refs[mask])
        if pbar is not None:
            pbar.update(len(rows))

    names = np.array(list(ids), dtype=object)
    with atomic_path(out_part) as tmp:
        pq.write_table(_features_table(parts, names, d_sae), tmp, compression="zstd", row_group_size=1 << 20)
    counts, resid = counts.cpu(), resid.cpu()
    samples = _shard_samples(counts, resid, names)
    fires = fires.view(2, d_sae).cpu()
    tokens = torch.stack([counts[:, 0].sum(), counts[:, 1].sum()])
    return ShardPass(pool_values.cpu(), pool_refs.cpu(), torch.stack([v for v, _ in sides]).cpu(),
                     torch.stack([r for _, r in sides]).cpu(), fires, tokens, samples)
