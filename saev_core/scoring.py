"""Per-sample scores from SAE latent activations (METHOD.md sec. 4), as pure functions.

Inputs for one sample: ``acts`` [T, d_sae] latent activations at its T positions (special
tokens such as BOS already removed), ``modality`` [T] booleans (True = image token), and for
the no-SAE baseline the residual vectors ``resid`` [T, d_in]. Scorers are a registry: adding
one is one decorated function.

Unlike the reference code, nothing here keeps only each token's top-50 latents: every active
latent counts (the defect METHOD.md sec. 4 asks to fix).
"""

from __future__ import annotations

import hashlib
from typing import Callable

import torch
from torch import Tensor

SCORERS: dict[str, Callable[..., float]] = {}


def scorer(name: str):
    def register(fn):
        SCORERS[name] = fn
        return fn
    return register


def get_scorer(name: str) -> Callable[..., float]:
    if name not in SCORERS:
        raise ValueError(f"unknown scorer {name!r}; valid scorers: {sorted(SCORERS)}")
    return SCORERS[name]


@scorer("random")
def random_score(sample_id: str, seed: int = 0, **_) -> float:
    """random: a uniform number in [0, 1) from (seed, sample_id), stable across runs and orderings."""
    h = hashlib.blake2b(f"{seed}:{sample_id}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2**64


@scorer("l0")
def l0_score(acts: Tensor, **_) -> float:
    """L0: mean over positions of the number of latents with A[t, i] > 0."""
    if acts.shape[0] == 0:
        return 0.0
    return (acts > 0).sum(dim=1).float().mean().item()


def cooccurring_latents(acts: Tensor, modality: Tensor, tau: float = 0.0) -> Tensor:
    """C(s) = {i : A[t,i] > tau on some text token} intersect {i : A[t,i] > tau on some image token}, as a [d_sae] mask."""
    on = acts > tau
    image, text = modality.bool(), ~modality.bool()
    on_image = on[image].any(dim=0) if bool(image.any()) else torch.zeros(acts.shape[1], dtype=torch.bool)
    on_text = on[text].any(dim=0) if bool(text.any()) else torch.zeros(acts.shape[1], dtype=torch.bool)
    return on_image & on_text


@scorer("cooccurrence")
def cooccurrence_score(acts: Tensor, modality: Tensor, tau: float = 0.0, **_) -> float:
    """co-occurrence: score = |C(s)|, the number of latents firing above tau on both modalities."""
    return float(cooccurring_latents(acts, modality, tau).sum())


@scorer("saev")
def saev_score(acts: Tensor, modality: Tensor, weights: Tensor, tau: float = 0.0, **_) -> float:
    """SAE-V cosine score: score(s) = sum of w_i over i in C(s) (Algorithm 1, step 4)."""
    return float(weights[cooccurring_latents(acts, modality, tau)].sum())


@scorer("model_cosine")
def model_cosine_score(resid: Tensor, modality: Tensor, **_) -> float:
    """model_cosine: cos(mean image-token residual, mean text-token residual); no SAE involved."""
    image, text = modality.bool(), ~modality.bool()
    if not bool(image.any()) or not bool(text.any()):
        return 0.0
    return torch.nn.functional.cosine_similarity(resid[image].mean(0), resid[text].mean(0), dim=0).item()


def cross_modal_weights(acts: Tensor, modality: Tensor, resid: Tensor, top: int = 30, per_side: int = 5) -> Tensor:
    """w_i of Algorithm 1 from a reference pool of token positions (all reference samples stacked).

    For each latent, take its ``top`` occurrences by activation (positions where it fires). If at
    least ``per_side`` are text and at least ``per_side`` image tokens, w_i = mean of the
    per_side x per_side cosine similarities between the residual vectors of its top text and top
    image occurrences; otherwise (unimodal, or too few of one side) w_i = 0.
    acts [N, d_sae], modality [N] (True = image), resid [N, d_in].
    """
    n, d_sae = acts.shape
    weights = torch.zeros(d_sae)
    if n == 0:
        return weights
    k = min(top, n)
    values, idx = acts.topk(k, dim=0)  # [k, d_sae], sorted by activation
    unit = torch.nn.functional.normalize(resid.float(), dim=1)
    for i in range(d_sae):
        fired = values[:, i] > 0
        rows = idx[fired, i]
        is_img = modality[rows].bool()
        img_rows, txt_rows = rows[is_img][:per_side], rows[~is_img][:per_side]
        if len(img_rows) >= per_side and len(txt_rows) >= per_side:
            weights[i] = (unit[txt_rows] @ unit[img_rows].T).mean()
    return weights
