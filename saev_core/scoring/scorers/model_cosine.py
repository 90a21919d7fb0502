"""The model's own cross-modal cosine, with no SAE: the baseline the SAE's scorers must beat."""

from __future__ import annotations

from saev_core.scoring.scorers.base import SampleSummary, Scorer, register


@register
class ModelCosine(Scorer):
    """model_cosine: cos(mean image-token residual, mean text-token residual); no SAE involved."""

    name = "model_cosine"
    reads = ("resid_cosine",)

    def score(self, s: SampleSummary, state) -> float:
        return s.resid_cosine if s.resid_cosine is not None else 0.0
