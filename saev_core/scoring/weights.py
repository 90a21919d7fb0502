"""Algorithm 1's cross-modal weights (METHOD.md sec. 4, steps 1-3) and their scale-balanced variant,
as pure functions.

The weights come from pools of each latent's top occurrences, kept while a dump is encoded
(``features.encode_shard``); the residual vectors they compare are fetched through a callable,
so this module never reads files. Unlike the reference code, nothing keeps only each token's
top-50 latents: every active latent counts (the defect METHOD.md sec. 4 asks to fix).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


def pack_ref(shard: int, row: Tensor | np.ndarray, is_image) -> Tensor:
    """(shard, row in shard file, is_image) -> one int64 >= 0; -1 marks an empty pool slot."""
    row = torch.as_tensor(row, dtype=torch.int64)
    return (shard << 41) | (row << 1) | torch.as_tensor(is_image, dtype=torch.int64)


def unpack_ref(ref: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ref = np.asarray(ref, dtype=np.int64)
    return ref >> 41, (ref >> 1) & ((1 << 40) - 1), (ref & 1).astype(bool)


def update_pool(values: Tensor, refs: Tensor, acts: Tensor, row_refs: Tensor) -> tuple[Tensor, Tensor]:
    """Keep each latent's top occurrences: merge a pool ([top, d_sae] values and int64 refs) with
    new positions (acts [N, d_sae], row_refs [N]). Positions where a latent is 0 never enter."""
    top = values.shape[0]
    all_vals = torch.cat([values, acts.to(values.dtype)], dim=0)
    all_refs = torch.cat([refs, row_refs.unsqueeze(1).expand(-1, acts.shape[1]).to(refs.dtype)], dim=0)
    v, i = all_vals.topk(min(top, all_vals.shape[0]), dim=0)
    return v, all_refs.gather(0, i)


def empty_pool(top: int, d_sae: int, device=None) -> tuple[Tensor, Tensor]:
    return torch.zeros(top, d_sae, device=device), torch.full((top, d_sae), -1, dtype=torch.int64, device=device)


def merge_pools(values: list[Tensor], refs: list[Tensor], top: int, dim: int = 0) -> tuple[Tensor, Tensor]:
    """The top ``top`` occurrences of several pools (one per shard) along ``dim``."""
    v, r = torch.cat(values, dim=dim), torch.cat(refs, dim=dim)
    v, idx = v.topk(min(top, v.shape[dim]), dim=dim)
    return v, r.gather(dim, idx)


@dataclass
class Occurrences:
    """Which pooled occurrences Algorithm 1 compares, per latent."""

    kind: list[str]          # 'cross-modal' | 'image-only' | 'text-only' | 'mixed' | 'rare' (none among the reference samples)
    n_top_image: np.ndarray
    n_top_text: np.ndarray
    cross: np.ndarray        # latent ids with >= per_side occurrences of each modality
    text_refs: np.ndarray    # [len(cross), per_side] refs of their top text occurrences
    image_refs: np.ndarray   # [len(cross), per_side]


def _kinds(img: Tensor, txt: Tensor, per_side: int) -> tuple[np.ndarray, Tensor]:
    """Each latent's kind from its image and text occurrence counts, and the cross-modal ones
    (>= per_side of each)."""
    kind = np.where((img == 0) & (txt == 0), "rare", np.where(txt == 0, "image-only", np.where(img == 0, "text-only", "mixed"))).astype(object)
    cross = ((img >= per_side) & (txt >= per_side)).nonzero().flatten()
    kind[cross.numpy()] = "cross-modal"
    return kind, cross


def select_occurrences(values: Tensor, refs: Tensor, is_image: Tensor, per_side: int = 5) -> Occurrences:
    """Step 3: latents whose top occurrences hold >= per_side text and >= per_side image tokens.

    values/refs/is_image are [top, d_sae], sorted by value within each column; only values > 0
    are occurrences. A pool with both modalities but too few of one is 'mixed' and gets no weight.
    """
    fired = values > 0
    img = (fired & is_image.bool()).sum(0)
    txt = (fired & ~is_image.bool()).sum(0)
    kind, cross = _kinds(img, txt, per_side)
    text_refs, image_refs = [], []
    for i in cross.tolist():
        col_img = is_image[:, i].bool() & fired[:, i]
        col_txt = ~is_image[:, i].bool() & fired[:, i]
        text_refs.append(refs[col_txt, i][:per_side])
        image_refs.append(refs[col_img, i][:per_side])
    stack = lambda xs: torch.stack(xs).numpy() if xs else np.zeros((0, per_side), np.int64)  # noqa: E731
    return Occurrences(kind.tolist(), img.numpy(), txt.numpy(), cross.numpy(), stack(text_refs), stack(image_refs))


def select_balanced(side_values: Tensor, side_refs: Tensor) -> Occurrences:
    """The scale-balanced step 3: each modality's own top ``per_side`` occurrences, so a latent
    whose image activations are weaker (or stronger) than its text ones still gets compared.

    side_values/side_refs are [2, per_side, d_sae] (image pool, text pool), sorted within each
    column. A latent fired ``per_side`` times in both is 'cross-modal'.
    """
    per_side = side_values.shape[1]
    fired = side_values > 0
    img, txt = fired[0].sum(0), fired[1].sum(0)
    kind, cross = _kinds(img, txt, per_side)
    return Occurrences(kind.tolist(), img.numpy(), txt.numpy(), cross.numpy(),
                       side_refs[1][:, cross].T.numpy(), side_refs[0][:, cross].T.numpy())


def weights_from_occurrences(occ: Occurrences, d_sae: int, fetch, d_in: int, memory_mb: int = 256) -> np.ndarray:
    """w_i = ``mean_pair_cosine`` of each cross-modal latent's compared occurrences, 0 elsewhere.

    ``fetch(refs) -> {ref: residual}`` supplies the vectors (``features.fetch_residuals`` reads a
    dump); latents go in blocks whose residuals fit in ``memory_mb``, so any d_sae fits.
    """
    weights = np.zeros(d_sae, np.float32)
    per_latent = 2 * max(occ.text_refs.shape[1], 1) * d_in * 4
    block = max(1, memory_mb * 2**20 // per_latent)
    for start in range(0, len(occ.cross), block):
        tr, ir = occ.text_refs[start:start + block], occ.image_refs[start:start + block]
        vec = fetch(np.concatenate([tr.ravel(), ir.ravel()]))
        stack = lambda refs: torch.stack([vec[int(r)] for r in refs.ravel()]).view(*refs.shape, -1)  # noqa: E731
        weights[occ.cross[start:start + block]] = mean_pair_cosine(stack(tr), stack(ir)).numpy()
    return weights


def mean_pair_cosine(text_vecs: Tensor, image_vecs: Tensor) -> Tensor:
    """w_i = mean over the per_side x per_side (text, image) pairs of cos(residual_t, residual_m).

    text_vecs, image_vecs [n, per_side, d_in]. Since the mean of u_t . u_m over all pairs equals
    (sum_t u_t) . (sum_m u_m) / per_side^2 for unit vectors u, no pair matrix is built.
    """
    ut = torch.nn.functional.normalize(text_vecs.float(), dim=-1)
    um = torch.nn.functional.normalize(image_vecs.float(), dim=-1)
    return (ut.sum(1) * um.sum(1)).sum(-1) / (ut.shape[1] * um.shape[1])
