"""Scorers that need no cross-modal weights: the random baseline and the mean number of active latents."""

from __future__ import annotations

from saev_core.scoring.scorers.base import Dataset, SampleSummary, Scorer, ScorerParams, random_unit, register


@register
class Random(Scorer):
    """random: a uniform number in [0, 1) from (seed, sample_id), stable across runs and orderings."""

    name = "random"
    experiment = True
    reads = ("sample_id",)

    def fit(self, data: Dataset, params: ScorerParams) -> int:
        return data.seed

    def score(self, s: SampleSummary, seed: int) -> float:
        return random_unit(seed, s.sample_id)


@register
class L0(Scorer):
    """L0: mean over positions of the number of latents with A[t, i] > 0."""

    name = "l0"
    reads = ("n_image", "n_text", "n_active")

    def score(self, s: SampleSummary, state) -> float:
        n = s.n_image + s.n_text
        return s.n_active / n if n else 0.0
