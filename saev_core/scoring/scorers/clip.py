"""clip_score: the external-model baseline (DataComp's filter), a scorer with a model of its own."""

from __future__ import annotations

from pydantic import Field

from saev_core.scoring.scorers.base import Dataset, SampleSummary, Scorer, ScorerParams, register


class ClipParams(ScorerParams):
    prefix = "clip"
    runtime = frozenset({"batch_size"})

    model: str = Field(description="CLIP/SigLIP model (hub id or path) of the clip_score scorer")
    batch_size: int = Field(64, ge=1, description="samples per clip_score batch")


@register
class ClipScore(Scorer):
    """clip_score: cos(E_img(image), E_txt(question + response)) of a CLIP/SigLIP model (DataComp's
    filter; ``saev_core.scoring.clip_score``), fitted by embedding every source row once."""

    name = "clip_score"
    Params = ClipParams
    default = False  # it needs a model
    reads = ("sample_id",)  # and the source rows

    def fit(self, data: Dataset, params: ClipParams) -> dict[str, float]:
        from saev_core.scoring.clip_score import clip_scores

        if data.samples is None:
            raise ValueError("clip_score reads the source rows: score through run_scoring, which supplies them")
        return clip_scores(params.model, data.samples().values(), params.batch_size, data.device, data.progress)

    def score(self, s: SampleSummary, scores: dict[str, float]) -> float:
        return scores[s.sample_id]
