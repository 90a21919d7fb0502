"""agreement_peers: agreement ranked among the samples whose texts are most alike."""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

from pydantic import Field

from saev_core.scoring.scorers.agreement import CoFiring, agreement
from saev_core.scoring.scorers.base import LATENTS, Dataset, SampleSummary, Scorer, ScorerParams, reference_subset, register, text_latents

if TYPE_CHECKING:
    import numpy as np


class PeerParams(ScorerParams):
    prefix = "agreement"

    peers: int = Field(100, ge=1, description="agreement_peers: the nearest texts (Jaccard of their latents) each sample is ranked among")
    peer_pool: int = Field(5000, ge=2, description="agreement_peers: the seeded reference subset the peers are drawn from "
                                                   "(the whole dataset when smaller), which bounds the work at n x pool")


def peer_percentiles(texts: list[np.ndarray], scores: np.ndarray, k: int, pool: np.ndarray | None = None,
                     chunk: int = 256) -> np.ndarray:
    """Per sample j: the fraction of its k peers whose score is below score_j (ties count half).

    Peers are the k samples of ``pool`` (indices; default all) other than j whose text latent sets
    are nearest by Jaccard similarity |T_j n T_m| / |T_j u T_m|, ties to the lower index. Exact, in
    row chunks: O(n * |pool| * latents) work, one matmul per chunk, so a bounded pool bounds it.
    """
    import numpy as np
    import torch

    n = len(texts)
    pool = np.arange(n) if pool is None else np.asarray(pool, np.int64)
    k = min(k, len(pool) - 1)
    if n == 0 or k <= 0:
        return np.full(n, 0.5)
    cols = np.unique(np.concatenate([texts[m] for m in pool]))

    def members(rows) -> torch.Tensor:
        out = torch.zeros(len(rows), max(len(cols), 1))
        for r, j in enumerate(rows):
            t = texts[j]
            out[r, np.searchsorted(cols, t[np.isin(t, cols)])] = 1.0
        return out

    ref, ref_sizes = members(pool), torch.tensor([len(texts[m]) for m in pool], dtype=torch.float32)
    scores = torch.from_numpy(np.asarray(scores, np.float64))
    pool_scores = scores[torch.from_numpy(pool)]
    out = np.empty(n)
    for lo in range(0, n, chunk):
        rows = np.arange(lo, min(n, lo + chunk))
        inter = members(rows) @ ref.T
        sizes = torch.tensor([len(texts[j]) for j in rows], dtype=torch.float32)
        jac = inter / (sizes[:, None] + ref_sizes[None, :] - inter).clamp_min(1.0)
        jac[torch.from_numpy(rows[:, None] == pool[None, :])] = -1.0  # not one's own peer
        order = np.argsort(-jac.numpy(), axis=1, kind="stable")[:, :k]
        peer = pool_scores[torch.from_numpy(order)]
        own = scores[lo:lo + len(rows), None]
        out[rows] = ((peer < own).double().mean(1) + 0.5 * (peer == own).double().mean(1)).numpy()
    return out


def peer_ranks(summaries: Iterable[SampleSummary], cofiring: CoFiring, seed: int, k: int, pool_size: int) -> dict[str, float]:
    """agreement_peers' rank of every sample: ``peer_percentiles`` of agreement, in sample-id order
    (so ties between equally similar peers fall the same way however the dataset is ordered),
    with peers from the seeded reference subset of ``pool_size`` samples."""
    import numpy as np

    rows = sorted(((s.sample_id, text_latents(s, cofiring.tau), agreement(s, cofiring)) for s in summaries), key=lambda r: r[0])
    ids = [r[0] for r in rows]
    chosen = reference_subset(ids, pool_size, seed)
    pool = np.array([j for j, sid in enumerate(ids) if sid in chosen], np.int64)
    ranks = peer_percentiles([r[1] for r in rows], np.array([r[2] for r in rows]), k, pool)
    return dict(zip(ids, ranks.tolist()))


@register
class AgreementPeers(Scorer):
    """agreement_peers: the share of the sample's ``agreement_peers`` nearest texts (Jaccard of the
    text latent sets T, ``peer_percentiles``) whose agreement is lower, ties counted half.

    agreement sums one term per latent the text fires, so how much a text says, and what kind of
    thing it says, shifts its score: ranked over the whole dataset, the texts that name more objects
    crowd the top. Ranked among texts like it, a sample is compared with samples that make the same
    kind of claim, and only how well its image supports the claim decides. A rank among the other
    samples, so fitted on the whole dataset first; reads the SAE's latents only."""

    name = "agreement_peers"
    Params = PeerParams
    uses = ("agreement",)
    reads = ("sample_id", *LATENTS)

    def fit(self, data: Dataset, params: PeerParams) -> dict[str, float]:
        return peer_ranks(data.summaries(), data.state_of("agreement"), data.seed, params.peers, params.peer_pool)

    def score(self, s: SampleSummary, ranks: dict[str, float]) -> float:
        return ranks[s.sample_id]
