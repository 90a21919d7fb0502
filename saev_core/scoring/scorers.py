"""Per-sample scores from SAE latent activations (METHOD.md sec. 4), and the cross-modal weights
they use (Algorithm 1 and its scale-balanced variant): the one home of both, as pure functions.

A sample is scored from its ``SampleSummary``: per modality, the maximum activation of every
latent that fired, the count of active (position, latent) pairs, token counts and the cosine
between its mean image and mean text residuals.
That is all the scorers need, it is what a streaming pass over a dump can keep per sample, and it
is exactly what the ``sample_features`` table stores, so scores can be recomputed from the table.

Scorers are a registry: adding one is one decorated function ``(summary, context) -> float``.
The weights come from pools of each latent's top occurrences, kept while a dump is encoded
(``features.encode_shard``); the residual vectors they compare are fetched through a callable,
so this module never reads files.
Unlike the reference code, nothing keeps only each token's top-50 latents: every active latent
counts (the defect METHOD.md sec. 4 asks to fix).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import torch
from torch import Tensor


@dataclass
class SampleSummary:
    """One sample's latents per modality (ids with their max activation) and residual means."""

    sample_id: str
    n_image: int
    n_text: int
    n_active: int                       # sum over positions of the number of latents > 0
    image_ids: np.ndarray               # latents with A[t, i] > 0 on some image token ...
    image_max: np.ndarray               # ... and their max over image tokens
    text_ids: np.ndarray
    text_max: np.ndarray
    resid_cosine: float | None = None   # cos(mean image residual, mean text residual); None without both



@dataclass
class ScoringContext:
    """Dataset-level inputs to the scorers."""

    seed: int = 0
    tau: float = 0.0
    weights: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # w_i per latent (Algorithm 1)
    balanced_weights: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # w'_i (balanced_weights)
    agreement_tau: float = 0.5
    cofiring: "CoFiring | None" = None  # the dataset's co-firing counts at agreement_tau (agreement scorer)
    external: dict[str, dict[str, float]] = field(default_factory=dict)  # per-sample scores of external models, by scorer
    peer_rank: dict[str, float] = field(default_factory=dict)  # agreement_peers' per-sample ranks (peer_percentiles)


Scorer = Callable[[SampleSummary, ScoringContext], float]
SCORERS: dict[str, Scorer] = {}
_DEFAULT: list[str] = []  # scorers a plain scoring run computes, in registration order
_EXPERIMENT: list[str] = []  # the experiment's default grid (each costs one SFT run per fraction and seed)


def scorer(name: str, *, default: bool = True, experiment: bool = False):
    """Register a scorer. ``default=False`` marks one that needs an extra input (an external model) the default run lacks."""
    def register(fn: Scorer) -> Scorer:
        SCORERS[name] = fn
        if default:
            _DEFAULT.append(name)
        if experiment:
            _EXPERIMENT.append(name)
        return fn
    return register


# Scorers that read the dataset's co-firing counts (``fit_cofiring``), fitted once for all of them.
USES_COFIRING = frozenset({"agreement", "agreement_mean", "agreement_peers"})


def default_scorers() -> list[str]:
    """The scorers a scoring run computes when none are named."""
    return list(_DEFAULT)


def experiment_scorers() -> list[str]:
    """The scorers the alignment experiment compares when none are named."""
    return list(_EXPERIMENT)


def get_scorer(name: str) -> Scorer:
    if name not in SCORERS:
        raise ValueError(f"unknown scorer {name!r}; valid scorers: {sorted(SCORERS)}")
    return SCORERS[name]


def check_scorers(names: list[str]) -> list[str]:
    for n in names:
        get_scorer(n)
    return list(dict.fromkeys(names))


def random_unit(seed: int, sample_id: str) -> float:
    h = hashlib.blake2b(f"{seed}:{sample_id}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2**64


@scorer("random", experiment=True)
def random_score(s: SampleSummary, ctx: ScoringContext) -> float:
    """random: a uniform number in [0, 1) from (seed, sample_id), stable across runs and orderings."""
    return random_unit(ctx.seed, s.sample_id)


@scorer("l0")
def l0_score(s: SampleSummary, ctx: ScoringContext) -> float:
    """L0: mean over positions of the number of latents with A[t, i] > 0."""
    n = s.n_image + s.n_text
    return s.n_active / n if n else 0.0


def text_latents(s: SampleSummary, tau: float) -> np.ndarray:
    """T(s): the latents above ``tau`` on some text token of the sample."""
    return s.text_ids[s.text_max > tau]


def cooccurring_latents(s: SampleSummary, tau: float = 0.0) -> np.ndarray:
    """C(s) = {i : A[t,i] > tau on some text token} intersect {i : A[t,i] > tau on some image token}."""
    return np.intersect1d(s.image_ids[s.image_max > tau], text_latents(s, tau))


@scorer("cooccurrence", experiment=True)
def cooccurrence_score(s: SampleSummary, ctx: ScoringContext) -> float:
    """co-occurrence: score = |C(s)|, the number of latents firing above tau on both modalities."""
    return float(len(cooccurring_latents(s, ctx.tau)))


@scorer("saev", experiment=True)
def saev_score(s: SampleSummary, ctx: ScoringContext) -> float:
    """SAE-V cosine score: score(s) = sum of w_i over i in C(s) (Algorithm 1, step 4)."""
    c = cooccurring_latents(s, ctx.tau)
    return float(ctx.weights[c].sum(dtype=np.float64)) if len(c) else 0.0


@scorer("saev_balanced")
def saev_balanced_score(s: SampleSummary, ctx: ScoringContext) -> float:
    """SAE-V with scale-balanced weights: score(s) = sum of w'_i over i in C(s), w' from per-modality top-k."""
    c = cooccurring_latents(s, ctx.tau)
    return float(ctx.balanced_weights[c].sum(dtype=np.float64)) if len(c) else 0.0


@scorer("coverage")
def coverage_score(s: SampleSummary, ctx: ScoringContext) -> float:
    """coverage: sum_{i in C(s)} w'_i / sum_{i in T(s)} w'_i, T(s) = {i : A[t,i] > tau on a text token},
    w' = max(balanced weight, 0): the share of the text's cross-modal content that the image also
    shows. Normalising by the text's own content makes a short question and a long description
    comparable, and a text naming something the image lacks lose that part of its share. 0 when
    the text holds no cross-modal latent."""
    w = np.clip(ctx.balanced_weights, 0.0, None)
    text = text_latents(s, ctx.tau)
    total = float(w[text].sum(dtype=np.float64)) if len(text) else 0.0
    if total <= 0.0:
        return 0.0
    c = cooccurring_latents(s, ctx.tau)
    return float(w[c].sum(dtype=np.float64)) / total


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
        p = (self.image + self.alpha) / (self.n + 2 * self.alpha)
        q = (self.both + self.alpha) / (self.text + 2 * self.alpha)
        self.pos, self.neg = np.log(q / p), np.log((1 - q) / (1 - p))

    @classmethod
    def count(cls, summaries, d_sae: int, tau: float) -> "CoFiring":
        text, image, both = (np.zeros(d_sae, np.int64) for _ in range(3))
        n = 0
        for s in summaries:
            t, i = text_latents(s, tau), s.image_ids[s.image_max > tau]
            np.add.at(text, t, 1)
            np.add.at(image, i, 1)
            np.add.at(both, np.intersect1d(t, i), 1)
            n += 1
        return cls(n, text, image, both, tau)


def fit_cofiring(summaries: Callable[[], Iterable[SampleSummary]], d_sae: int, tau: float, refits: int = 0,
                 keep: float = 0.5) -> CoFiring:
    """The agreement scorer's co-firing counts: first over every sample, then ``refits`` times over
    the ``keep`` fraction of samples that the previous counts score highest (ties by stream order).

    Low-quality rows dilute P(I | T) towards P(I); recounting on the rows that already agree
    sharpens it, the way self-training does, and reads no label. ``summaries`` re-streams the
    dataset (one pass per round), so memory holds one score per sample."""
    cof = CoFiring.count(summaries(), d_sae, tau)
    for _ in range(refits):
        ctx = ScoringContext(agreement_tau=tau, cofiring=cof)
        scores = np.fromiter((agreement_score(s, ctx) for s in summaries()), np.float64)
        top = np.zeros(len(scores), bool)
        top[np.argsort(-scores, kind="mergesort")[: max(1, int(keep * len(scores)))]] = True
        cof = CoFiring.count((s for s, t in zip(summaries(), top) if t), d_sae, tau)
    return cof


@scorer("agreement", experiment=True)
def agreement_score(s: SampleSummary, ctx: ScoringContext) -> float:
    """agreement: sum over i in T(s) of log P(I_i = o_i | T_i) / P(I_i = o_i), o_i = 1[i in I(s)]
    (T, I: latent i above agreement_tau on a text / an image token), both probabilities estimated on
    the dataset itself (``fit_cofiring``, add-one smoothed): the naive-Bayes log-likelihood ratio of
    the image's latents given the text's. A latent whose image firing the text predicts adds
    evidence when the image has it and takes it away when the image lacks it; one that fires on
    images regardless (P(I|T) = P(I)) adds nothing, so no weight step is needed and no label is read."""
    if ctx.cofiring is None:
        raise ValueError("the agreement scorer needs the dataset's co-firing counts (ScoringContext.cofiring)")
    if ctx.cofiring.tau != ctx.agreement_tau:
        raise ValueError(f"co-firing counted at tau={ctx.cofiring.tau}, scoring at agreement_tau={ctx.agreement_tau}")
    c = ctx.cofiring
    text = text_latents(s, ctx.agreement_tau)
    on_image = np.isin(text, s.image_ids[s.image_max > ctx.agreement_tau])
    return float(c.pos[text[on_image]].sum(dtype=np.float64) + c.neg[text[~on_image]].sum(dtype=np.float64))


@scorer("agreement_mean")
def agreement_mean_score(s: SampleSummary, ctx: ScoringContext) -> float:
    """agreement_mean: agreement(s) / |T(s)|, the mean log-likelihood ratio per text latent (0 when
    T(s) is empty). agreement sums one term per latent the text fires, so a text naming more things
    collects more evidence either way and long texts crowd the top; the mean weighs a short question
    and a long description alike. Same co-firing counts as agreement."""
    text = text_latents(s, ctx.agreement_tau)
    return agreement_score(s, ctx) / len(text) if len(text) else 0.0


def peer_percentiles(texts: list[np.ndarray], scores: np.ndarray, k: int, pool: np.ndarray | None = None,
                     chunk: int = 256) -> np.ndarray:
    """Per sample j: the fraction of its k peers whose score is below score_j (ties count half).

    Peers are the k samples of ``pool`` (indices; default all) other than j whose text latent sets
    are nearest by Jaccard similarity |T_j n T_m| / |T_j u T_m|, ties to the lower index. Exact, in
    row chunks: O(n * |pool| * latents) work, one matmul per chunk, so a bounded pool bounds it.
    """
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


def peer_ranks(summaries: Iterable[SampleSummary], ctx: ScoringContext, k: int, pool_size: int) -> dict[str, float]:
    """agreement_peers' rank of every sample: ``peer_percentiles`` of agreement, in sample-id order
    (so ties between equally similar peers fall the same way however the dataset is ordered),
    with peers from the seeded reference subset of ``pool_size`` samples."""
    rows = sorted(((s.sample_id, text_latents(s, ctx.agreement_tau), agreement_score(s, ctx)) for s in summaries), key=lambda r: r[0])
    ids = [r[0] for r in rows]
    chosen = reference_subset(ids, pool_size, ctx.seed)
    pool = np.array([j for j, sid in enumerate(ids) if sid in chosen], np.int64)
    ranks = peer_percentiles([r[1] for r in rows], np.array([r[2] for r in rows]), k, pool)
    return dict(zip(ids, ranks.tolist()))


@scorer("agreement_peers")
def agreement_peers_score(s: SampleSummary, ctx: ScoringContext) -> float:
    """agreement_peers: the share of the sample's ``agreement_peers`` nearest texts (Jaccard of the
    text latent sets T, ``peer_percentiles``) whose agreement is lower, ties counted half.

    agreement sums one term per latent the text fires, so how much a text says, and what kind of
    thing it says, shifts its score: ranked over the whole dataset, the texts that name more objects
    crowd the top. Ranked among texts like it, a sample is compared with samples that make the same
    kind of claim, and only how well its image supports the claim decides. Computed for the whole
    dataset before scoring (``ScoringContext.peer_rank``); reads the SAE's latents only."""
    if s.sample_id not in ctx.peer_rank:
        raise ValueError("agreement_peers needs the dataset's peer ranks (ScoringContext.peer_rank), computed before scoring")
    return ctx.peer_rank[s.sample_id]


@scorer("model_cosine")
def model_cosine_score(s: SampleSummary, ctx: ScoringContext) -> float:
    """model_cosine: cos(mean image-token residual, mean text-token residual); no SAE involved."""
    return s.resid_cosine if s.resid_cosine is not None else 0.0


@scorer("clip_score", default=False)
def clip_score(s: SampleSummary, ctx: ScoringContext) -> float:
    """clip_score: cos(E_img(image), E_txt(question + response)) of a CLIP/SigLIP model (DataComp's
    filter; ``saev_core.scoring.clip_score``), the external-model baseline; computed before scoring."""
    scores = ctx.external.get("clip_score")
    if scores is None:
        raise ValueError("clip_score needs its CLIP/SigLIP scores computed first: set clip_model in the score config")
    return scores[s.sample_id]


EXTERNAL_SCORERS = ("clip_score",)  # scorers that read a model other than the SAE's


# ---- cross-modal weights (Algorithm 1, steps 1-3, and the scale-balanced variant) ----------


def reference_subset(sample_ids: list[str], n: int, seed: int) -> frozenset[str]:
    """Algorithm 1 step 1: n samples drawn at random (by id hash, so order-free and reproducible)."""
    key = lambda s: hashlib.blake2b(f"ref:{seed}:{s}".encode(), digest_size=8).digest()  # noqa: E731
    return frozenset(sorted(sample_ids, key=key)[:n])


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
