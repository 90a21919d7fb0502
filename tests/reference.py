"""Reference implementations the tests check the library against: the dense, in-memory forms
of what saev_core computes streaming or sparse (a sample's summary from its activation matrix,
Algorithm 1's weights from one stacked pool, the AuxK selection). Tests only."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from saev_core.scoring.scorers import SampleSummary
from saev_core.scoring.weights import (Occurrences, empty_pool, select_balanced, select_occurrences, update_pool,
                                       weights_from_occurrences)


def summary_from_acts(sample_id: str, acts: Tensor, modality: Tensor, resid: Tensor | None = None) -> SampleSummary:
    """A sample's SampleSummary from A [T, d_sae] over its positions (special tokens removed), modality [T] (True = image)."""
    image = modality.bool()

    def side(mask: Tensor) -> tuple[np.ndarray, np.ndarray]:
        if not bool(mask.any()):
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        mx = acts[mask].max(dim=0).values
        ids = (mx > 0).nonzero().flatten()
        return ids.numpy(), mx[ids].float().numpy()

    cos = None
    if resid is not None and bool(image.any()) and bool((~image).any()):
        cos = torch.nn.functional.cosine_similarity(resid[image].float().mean(0), resid[~image].float().mean(0), dim=-1).item()
    return SampleSummary(sample_id, int(image.sum()), int((~image).sum()), int((acts > 0).sum()), *side(image), *side(~image), cos)


def cross_modal_weights(acts: Tensor, modality: Tensor, resid: Tensor, top: int = 30, per_side: int = 5) -> Tensor:
    """w_i of Algorithm 1 from an in-memory reference pool (all reference positions stacked).

    For each latent, take its ``top`` occurrences by activation. If at least ``per_side`` are
    text and at least ``per_side`` image tokens, w_i = mean of the per_side x per_side cosine
    similarities between the residual vectors of its top text and top image occurrences;
    otherwise (unimodal, or too few of one side) w_i = 0.
    acts [N, d_sae], modality [N] (True = image), resid [N, d_in].
    """
    n, d_sae = acts.shape
    values, refs = update_pool(*empty_pool(top, d_sae), acts, torch.arange(n))
    is_image = torch.where(refs >= 0, modality.bool()[refs.clamp(min=0)], False)
    return _dense_weights(select_occurrences(values, refs, is_image, per_side), resid, d_sae)


def balanced_weights(acts: Tensor, modality: Tensor, resid: Tensor, per_side: int = 5) -> Tensor:
    """w'_i, the scale-balanced weights, from an in-memory pool: the mean of the per_side x per_side
    cosines between the residuals of latent i's top ``per_side`` text and top ``per_side`` image
    occurrences, each modality ranked on its own; 0 for a latent with fewer than per_side of either.
    """
    n, d_sae = acts.shape
    image = modality.bool()
    pools = [update_pool(*empty_pool(per_side, d_sae), acts[side], torch.arange(n)[side]) for side in (image, ~image)]
    return _dense_weights(select_balanced(torch.stack([p[0] for p in pools]), torch.stack([p[1] for p in pools])), resid, d_sae)


def _dense_weights(occ: Occurrences, resid: Tensor, d_sae: int) -> Tensor:
    return torch.from_numpy(weights_from_occurrences(occ, d_sae, lambda refs: {int(r): resid[int(r)] for r in refs}, resid.shape[1]))


def select_aux_latents(pre: Tensor, dead: Tensor, aux_k: int) -> Tensor:
    """AuxK selection (OpenAI 2024, App. A.2): per token, ReLU of the aux_k largest dead pre-activations.

    Returns a [batch, d_sae] tensor that is zero outside the selection; all zeros when no latent is
    dead. At most as many latents as are dead are selected.
    """
    k = min(aux_k, int(dead.sum()))
    if k == 0:
        return torch.zeros_like(pre)
    values, idx = pre.masked_fill(~dead, float("-inf")).topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, idx, values.relu())
