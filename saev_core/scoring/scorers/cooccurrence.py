"""Scorers of the latents that fire on both modalities, C(s) (METHOD.md sec. 4): their count, and
their sum weighted by Algorithm 1's cross-modal weights w_i or the scale-balanced w'_i."""

from __future__ import annotations

from dataclasses import dataclass

from typing import TYPE_CHECKING

from saev_core.scoring.scorers.base import Dataset, SampleSummary, Scorer, ScorerParams, cooccurring_latents, register, text_latents

if TYPE_CHECKING:
    import numpy as np


@dataclass
class Weighted:
    tau: float
    weights: np.ndarray


@register
class Cooccurrence(Scorer):
    """co-occurrence: score = |C(s)|, the number of latents firing above tau on both modalities."""

    name = "cooccurrence"
    experiment = True

    def fit(self, data: Dataset, params: ScorerParams) -> float:
        return data.tau

    def score(self, s: SampleSummary, tau: float) -> float:
        return float(len(cooccurring_latents(s, tau)))


@register
class SAEV(Scorer):
    """SAE-V cosine score: score(s) = sum of w_i over i in C(s) (Algorithm 1, step 4)."""

    name = "saev"
    experiment = True

    def fit(self, data: Dataset, params: ScorerParams) -> Weighted:
        return Weighted(data.tau, data.weights)

    def score(self, s: SampleSummary, state: Weighted) -> float:
        c = cooccurring_latents(s, state.tau)
        return float(state.weights[c].sum(dtype="float64")) if len(c) else 0.0


@register
class SAEVBalanced(SAEV):
    """SAE-V with scale-balanced weights: score(s) = sum of w'_i over i in C(s), w' from per-modality top-k."""

    name = "saev_balanced"
    experiment = False

    def fit(self, data: Dataset, params: ScorerParams) -> Weighted:
        return Weighted(data.tau, data.balanced_weights)


@register
class Coverage(Scorer):
    """coverage: sum_{i in C(s)} w'_i / sum_{i in T(s)} w'_i, T(s) = {i : A[t,i] > tau on a text token},
    w' = max(balanced weight, 0): the share of the text's cross-modal content that the image also
    shows. Normalising by the text's own content makes a short question and a long description
    comparable, and a text naming something the image lacks lose that part of its share. 0 when
    the text holds no cross-modal latent."""

    name = "coverage"

    def fit(self, data: Dataset, params: ScorerParams) -> Weighted:
        return Weighted(data.tau, data.balanced_weights.clip(0.0, None))

    def score(self, s: SampleSummary, state: Weighted) -> float:
        text = text_latents(s, state.tau)
        total = float(state.weights[text].sum(dtype="float64")) if len(text) else 0.0
        if total <= 0.0:
            return 0.0
        c = cooccurring_latents(s, state.tau)
        return float(state.weights[c].sum(dtype="float64")) / total
