"""The agreement scorers: how well a sample's image latents are predicted by its text latents,
with probabilities estimated on the dataset itself (no label read)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable

from pydantic import Field

from saev_core.scoring.scorers.base import Dataset, SampleSummary, Scorer, ScorerParams, image_latents, register, text_latents

if TYPE_CHECKING:
    import numpy as np


class AgreementParams(ScorerParams):
    prefix = "agreement"

    tau: float = Field(0.5, ge=0, description="the agreement scorer's firing threshold (chosen on the demo's validation world; "
                                              "the activation scale is the SAE's, so choose it on a validation split for another SAE)")
    refits: int = Field(2, ge=0, description="rounds of recounting the agreement scorer's co-firing on its own top "
                                             "`agreement_keep` fraction (0: count once over every sample)")
    keep: float = Field(0.5, gt=0, le=1, description="fraction of samples each recount keeps")


@dataclass
class CoFiring:
    """Per latent, over one dataset's samples: in how many it fires above ``tau`` on the text
    (T_i), on the image (I_i), and on both."""

    n: int
    text: np.ndarray
    image: np.ndarray
    both: np.ndarray
    tau: float
    alpha: float = 1.0  # add-alpha smoothing of both probabilities
    pos: np.ndarray = field(init=False)  # log q/p, p = P(I_i), q = P(I_i | T_i)
    neg: np.ndarray = field(init=False)  # log (1-q)/(1-p)

    def __post_init__(self):
        import numpy as np

        p = (self.image + self.alpha) / (self.n + 2 * self.alpha)
        q = (self.both + self.alpha) / (self.text + 2 * self.alpha)
        self.pos, self.neg = np.log(q / p), np.log((1 - q) / (1 - p))

    @classmethod
    def count(cls, summaries: Iterable[SampleSummary], d_sae: int, tau: float) -> CoFiring:
        import numpy as np

        text, image, both = (np.zeros(d_sae, np.int64) for _ in range(3))
        n = 0
        for s in summaries:
            t, i = text_latents(s, tau), image_latents(s, tau)
            np.add.at(text, t, 1)
            np.add.at(image, i, 1)
            np.add.at(both, np.intersect1d(t, i), 1)
            n += 1
        return cls(n, text, image, both, tau)


def agreement(s: SampleSummary, c: CoFiring) -> float:
    """sum over i in T(s) of log P(I_i = o_i | T_i) / P(I_i = o_i), o_i = 1[i in I(s)], at c's tau."""
    import numpy as np

    text = text_latents(s, c.tau)
    on_image = np.isin(text, image_latents(s, c.tau))
    return float(c.pos[text[on_image]].sum(dtype=np.float64) + c.neg[text[~on_image]].sum(dtype=np.float64))


def fit_cofiring(summaries: Callable[[], Iterable[SampleSummary]], d_sae: int, tau: float, refits: int = 0,
                 keep: float = 0.5) -> CoFiring:
    """The agreement scorer's co-firing counts: first over every sample, then ``refits`` times over
    the ``keep`` fraction of samples that the previous counts score highest (ties by stream order).

    Low-quality rows dilute P(I | T) towards P(I); recounting on the rows that already agree
    sharpens it, the way self-training does, and reads no label. ``summaries`` re-streams the
    dataset (one pass per round), so memory holds one score per sample."""
    import numpy as np

    cof = CoFiring.count(summaries(), d_sae, tau)
    for _ in range(refits):
        scores = np.fromiter((agreement(s, cof) for s in summaries()), np.float64)
        top = np.zeros(len(scores), bool)
        top[np.argsort(-scores, kind="mergesort")[: max(1, int(keep * len(scores)))]] = True
        cof = CoFiring.count((s for s, t in zip(summaries(), top) if t), d_sae, tau)
    return cof


@register
class Agreement(Scorer):
    """agreement: sum over i in T(s) of log P(I_i = o_i | T_i) / P(I_i = o_i), o_i = 1[i in I(s)]
    (T, I: latent i above agreement_tau on a text / an image token), both probabilities estimated on
    the dataset itself (``fit_cofiring``, add-one smoothed): the naive-Bayes log-likelihood ratio of
    the image's latents given the text's. A latent whose image firing the text predicts adds
    evidence when the image has it and takes it away when the image lacks it; one that fires on
    images regardless (P(I|T) = P(I)) adds nothing, so no weight step is needed and no label is read."""

    name = "agreement"
    experiment = True
    Params = AgreementParams

    def fit(self, data: Dataset, params: AgreementParams) -> CoFiring:
        return fit_cofiring(data.summaries, data.d_sae, params.tau, params.refits, params.keep)

    def score(self, s: SampleSummary, cofiring: CoFiring) -> float:
        return agreement(s, cofiring)


@register
class AgreementMean(Scorer):
    """agreement_mean: agreement(s) / |T(s)|, the mean log-likelihood ratio per text latent (0 when
    T(s) is empty). agreement sums one term per latent the text fires, so a text naming more things
    collects more evidence either way and long texts crowd the top; the mean weighs a short question
    and a long description alike. Same co-firing counts as agreement."""

    name = "agreement_mean"
    uses = ("agreement",)

    def fit(self, data: Dataset, params: ScorerParams) -> CoFiring:
        return data.state_of("agreement")

    def score(self, s: SampleSummary, cofiring: CoFiring) -> float:
        text = text_latents(s, cofiring.tau)
        return agreement(s, cofiring) / len(text) if len(text) else 0.0
