"""Per-sample scorers (METHOD.md sec. 4) on a hand-built activation example."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from saev_core.scoring.scorers import (SCORERS, Dataset, SampleSummary, check_params, cooccurring_latents, get_scorer, reference_subset,
                                       register, score_all)
from saev_core.scoring.scorers.agreement import CoFiring, fit_cofiring
from saev_core.scoring.scorers.agreement_peers import peer_percentiles
from saev_core.scoring.scorers.baselines import L0
from saev_core.scoring.weights import empty_pool, mean_pair_cosine, merge_pools, select_balanced, select_occurrences, update_pool
from tests.reference import balanced_weights, cross_modal_weights, summary_from_acts

# 4 positions (image, image, text, text) x 3 latents
ACTS = torch.tensor([[1.0, 0.0, 2.0], [0.0, 0.0, 0.5], [0.5, 3.0, 0.0], [0.0, 0.0, 1.0]])
IMAGE = torch.tensor([True, True, False, False])
RESID = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 2.0], [1.0, 0.0]])  # image mean (1, 0), text mean (1, 1)
S = summary_from_acts("s0", ACTS, IMAGE, RESID)


def score(name: str, s: SampleSummary, dataset: list[SampleSummary] | None = None, params: dict | None = None, **data) -> float:
    """``name``'s score of ``s``, fitted as a scoring run fits it, on ``dataset`` (default: s alone)."""
    fitted = Dataset(lambda: iter(dataset or [s]), 3, check_params([name], params or {}), **data)
    return get_scorer(name).score(s, fitted.state_of(name))


def test_summary_keeps_max_per_modality_of_active_latents():
    assert (S.n_image, S.n_text, S.n_active) == (2, 2, 6)
    assert S.image_ids.tolist() == [0, 2] and S.image_max.tolist() == [1.0, 2.0]
    assert S.text_ids.tolist() == [0, 1, 2] and S.text_max.tolist() == [0.5, 3.0, 1.0]


def test_l0_is_mean_active_latents_per_position():
    assert score("l0", S) == 1.5  # (2 + 1 + 2 + 1) / 4
    empty = summary_from_acts("e", torch.zeros(0, 3), torch.zeros(0, dtype=torch.bool))
    assert score("l0", empty) == 0.0


def test_cooccurrence_counts_latents_on_both_modalities():
    # latent 0: image 1.0, text 0.5; latent 1: text only; latent 2: image 2.0/0.5, text 1.0
    assert cooccurring_latents(S).tolist() == [0, 2]
    assert score("cooccurrence", S) == 2
    assert score("cooccurrence", S, tau=0.75) == 1  # latent 0's text activation 0.5 <= tau
    all_image = summary_from_acts("a", ACTS, torch.ones(4, dtype=torch.bool))
    assert score("cooccurrence", all_image) == 0  # no text tokens


def test_saev_score_sums_weights_over_cooccurring_latents():
    w = np.array([0.2, 0.9, 0.5], np.float32)
    assert score("saev", S, weights=w) == pytest.approx(0.7)
    assert score("saev", S, weights=w, tau=0.75) == pytest.approx(0.5)


def test_model_cosine_between_mean_image_and_mean_text_residuals():
    assert score("model_cosine", S) == pytest.approx(1 / math.sqrt(2))
    assert score("model_cosine", summary_from_acts("n", ACTS, IMAGE)) == 0.0  # no residuals kept


def test_random_score_is_seeded_and_order_free():
    def r(sid, seed):
        return score("random", summary_from_acts(sid, ACTS, IMAGE), seed=seed)
    a = r("abc", 1)
    assert a == r("abc", 1) and 0 <= a < 1
    assert a != r("abc", 2) and a != r("abd", 1)


def test_cross_modal_weights_by_hand():
    # Pool of 5 positions; latent 0 fires on 2 image + 2 text tokens, latent 1 on image tokens only,
    # latent 2 on 1 image + 3 text (too few image occurrences with per_side=2).
    acts = torch.tensor([[4.0, 1.0, 0.0], [3.0, 2.0, 1.0], [2.0, 0.0, 5.0], [1.0, 0.0, 4.0], [0.0, 0.0, 3.0]])
    image = torch.tensor([True, True, False, False, False])
    resid = torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0], [0.0, 5.0], [1.0, 1.0]])
    w = cross_modal_weights(acts, image, resid, top=4, per_side=2)
    # latent 0: image (1,0),(2,0) vs text (3,0),(0,5): cosines 1, 0, 1, 0 -> 0.5
    assert w.tolist() == pytest.approx([0.5, 0.0, 0.0])
    # only the top `top` occurrences count: with top=1 no latent has both modalities
    assert cross_modal_weights(acts, image, resid, top=1, per_side=1).tolist() == [0.0, 0.0, 0.0]


def test_registry_lists_valid_scorers_on_error():
    assert set(SCORERS) == {"random", "l0", "cooccurrence", "saev", "model_cosine", "saev_balanced", "coverage", "agreement", "agreement_mean",
                            "agreement_peers", "clip_score"}
    assert isinstance(get_scorer("l0"), L0)
    with pytest.raises(ValueError, match=r"unknown scorer 'clip'; valid scorers: \['agreement', 'agreement_mean', 'agreement_peers', "
                                         r"'clip_score', 'cooccurrence', 'coverage', 'l0', "
                                         r"'model_cosine', 'random', 'saev', 'saev_balanced'\]"):
        get_scorer("clip")


def test_streamed_pool_matches_one_shot_pool():
    """Feeding positions in two batches gives the same top occurrences as one batch."""
    torch.manual_seed(0)
    acts = torch.rand(40, 6) * (torch.rand(40, 6) > 0.5)
    refs = torch.arange(40)
    one = update_pool(*empty_pool(7, 6), acts, refs)
    two = update_pool(*update_pool(*empty_pool(7, 6), acts[:25], refs[:25]), acts[25:], refs[25:])
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])


def test_select_occurrences_kinds_and_counts():
    values = torch.tensor([[3.0, 2.0, 5.0, 0.0], [2.0, 1.0, 4.0, 0.0], [1.0, 0.0, 3.0, 0.0]])
    refs = torch.tensor([[0, 1, 2, -1], [3, 4, 5, -1], [6, -1, 7, -1]])
    is_image = torch.tensor([[True, True, False, False], [False, True, False, False], [True, False, True, False]])
    occ = select_occurrences(values, refs, is_image, per_side=1)
    assert occ.kind == ["cross-modal", "image-only", "cross-modal", "rare"]
    assert occ.n_top_image.tolist() == [2, 2, 1, 0] and occ.n_top_text.tolist() == [1, 0, 2, 0]
    assert occ.cross.tolist() == [0, 2]
    assert occ.text_refs.tolist() == [[3], [2]] and occ.image_refs.tolist() == [[0], [7]]
    assert select_occurrences(values, refs, is_image, per_side=2).kind[0] == "mixed"


def test_mean_pair_cosine_by_hand():
    text = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])   # unit (1,0), (0,1)
    image = torch.tensor([[[3.0, 0.0], [1.0, 1.0]]])  # unit (1,0), (.707,.707)
    # pairs: 1, .707, 0, .707 -> mean (1 + 2 * .7071) / 4
    assert mean_pair_cosine(text, image).item() == pytest.approx((1 + 2 / math.sqrt(2)) / 4)


def test_balanced_weights_compare_each_modalitys_own_top_occurrences():
    """Latent 0 fires weakly on images (0.2, 0.1) and strongly on text (5, 4, 3): Algorithm 1's
    top 4 holds three text tokens and one image token, so it is 'mixed' with weight 0; the
    balanced pools take the top 2 of each modality on its own and compare them."""
    acts = torch.tensor([[0.2, 1.0], [0.1, 0.0], [5.0, 0.0], [4.0, 2.0], [3.0, 0.0]])
    image = torch.tensor([True, True, False, False, False])
    resid = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0], [0.0, 3.0]])
    assert cross_modal_weights(acts, image, resid, top=4, per_side=2).tolist() == [0.0, 0.0]
    w = balanced_weights(acts, image, resid, per_side=2)
    # image (1,0), (0,1) vs text (1,0), (1,1)/sqrt2: cosines 1, 1/sqrt2, 0, 1/sqrt2 -> (1 + sqrt2) / 4
    # latent 1: one image and one text occurrence, fewer than per_side=2 of each -> 0
    assert w.tolist() == pytest.approx([(1 + math.sqrt(2)) / 4, 0.0])
    assert balanced_weights(acts, image, resid, per_side=1).tolist() == pytest.approx([1.0, 1 / math.sqrt(2)])


def test_select_balanced_by_hand():
    # [2 modalities (image, text), per_side 2, 3 latents]
    values = torch.tensor([[[2.0, 1.0, 0.0], [1.0, 0.0, 0.0]], [[3.0, 0.0, 1.0], [2.0, 0.0, 0.0]]])
    refs = torch.tensor([[[10, 11, -1], [12, -1, -1]], [[20, -1, 21], [22, -1, -1]]])
    occ = select_balanced(values, refs)
    assert occ.kind == ["cross-modal", "image-only", "text-only"]
    assert occ.cross.tolist() == [0]
    assert occ.image_refs.tolist() == [[10, 12]] and occ.text_refs.tolist() == [[20, 22]]


def test_merge_pools_keeps_the_top_of_every_shard():
    v1, r1 = torch.tensor([[3.0, 1.0], [1.0, 0.0]]), torch.tensor([[0, 1], [2, -1]])
    v2, r2 = torch.tensor([[2.0, 4.0], [0.5, 2.0]]), torch.tensor([[5, 6], [7, 8]])
    v, r = merge_pools([v1, v2], [r1, r2], top=2)
    assert v.tolist() == [[3.0, 4.0], [2.0, 2.0]] and r.tolist() == [[0, 6], [5, 8]]


def test_saev_balanced_and_coverage_by_hand():
    # S: image latents {0: 1.0, 2: 2.0}, text latents {0: 0.5, 1: 3.0, 2: 1.0}; C(S) = {0, 2}
    wb = np.array([0.5, 0.3, -0.2], np.float32)
    assert score("saev_balanced", S, balanced_weights=wb) == pytest.approx(0.5 - 0.2)
    # coverage clips w' at 0: text content 0.5 + 0.3 + 0, of which on the image too 0.5 + 0
    assert score("coverage", S, balanced_weights=wb) == pytest.approx(0.5 / 0.8)
    # tau 0.75: T = {1, 2} (0.3 + 0), C = {2} (0) -> 0
    assert score("coverage", S, balanced_weights=wb, tau=0.75) == 0.0
    no_text = summary_from_acts("n", ACTS[:2], IMAGE[:2])
    assert score("coverage", no_text, balanced_weights=wb) == 0.0


def test_reference_subset_is_order_free():
    ids = [f"s{i}" for i in range(50)]
    a = reference_subset(ids, 10, seed=0)
    assert len(a) == 10 and a == reference_subset(ids[::-1], 10, seed=0)
    assert a != reference_subset(ids, 10, seed=1)


def _summary(sid, text: dict, image: dict) -> SampleSummary:
    ids = lambda d: np.array(sorted(d), np.int64)  # noqa: E731
    vals = lambda d: np.array([d[k] for k in sorted(d)], np.float32)  # noqa: E731
    return SampleSummary(sid, 1, 1, 0, ids(image), vals(image), ids(text), vals(text))


def test_agreement_by_hand():
    """Four samples, two latents, agreement_tau 0.5 (s4's 0.4 on the image does not count):
    text counts T = (3, 2), image I = (2, 1), both = (2, 0), n = 4; add-one smoothing gives
    latent 0: p = 3/6, q = 3/5 -> +log 1.2 when on the image, log 0.8 when not;
    latent 1: p = 2/6, q = 1/4 -> log 0.75 when on the image, +log 1.125 when not."""
    samples = [_summary("s1", {0: 1.0, 1: 1.0}, {0: 1.0}), _summary("s2", {0: 1.0}, {0: 1.0, 1: 1.0}),
               _summary("s3", {1: 1.0}, {}), _summary("s4", {0: 1.0}, {0: 0.4})]
    c = CoFiring.count(samples, d_sae=2, tau=0.5)
    assert (c.n, c.text.tolist(), c.image.tolist(), c.both.tolist()) == (4, [3, 2], [2, 1], [2, 0])
    got = [get_scorer("agreement").score(s, c) for s in samples]
    assert got == pytest.approx([math.log(1.2) + math.log(1.125), math.log(1.2), math.log(1.125), math.log(0.8)])
    # fitted as a scoring run fits it (no refit), at its own tau
    params = {"agreement": {"tau": 0.5, "refits": 0}}
    assert [score("agreement", s, samples, params) for s in samples] == pytest.approx(got)


def test_agreement_mean_by_hand():
    """The samples of test_agreement_by_hand: agreement divided by |T(s)| = 2, 1, 1, 1 text latents."""
    samples = [_summary("s1", {0: 1.0, 1: 1.0}, {0: 1.0}), _summary("s2", {0: 1.0}, {0: 1.0, 1: 1.0}),
               _summary("s3", {1: 1.0}, {}), _summary("s4", {0: 1.0}, {0: 0.4}), _summary("s5", {0: 0.2}, {0: 1.0})]
    c = CoFiring.count(samples[:4], d_sae=2, tau=0.5)
    got = [get_scorer("agreement_mean").score(s, c) for s in samples]
    assert got == pytest.approx([(math.log(1.2) + math.log(1.125)) / 2, math.log(1.2), math.log(1.125), math.log(0.8), 0.0])


def test_peer_percentiles_by_hand():
    """T = {0,1}, {0,1,2}, {3}, {3,4}, {0}; Jaccard peers (k = 2, ties to the lower index):
    s0: s1 (2/3), s4 (1/2); s1: s0 (2/3), s4 (1/3); s2: s3 (1/2), then s0 (0, the lowest index);
    s3: s2, s0; s4: s0 (1/2), s1 (1/3). Share of peers scoring lower, ties half:
    s0 (1.0): peers 2.0, 0.0 -> 1/2; s1 (2.0): 1.0, 0.0 -> 1; s2 (5.0): 5.0, 1.0 -> 3/4;
    s3 (5.0): 5.0, 1.0 -> 3/4; s4 (0.0): 1.0, 2.0 -> 0."""
    texts = [np.array(t) for t in ([0, 1], [0, 1, 2], [3], [3, 4], [0])]
    scores = np.array([1.0, 2.0, 5.0, 5.0, 0.0])
    assert peer_percentiles(texts, scores, k=2).tolist() == [0.5, 1.0, 0.75, 0.75, 0.0]
    assert peer_percentiles(texts, scores, k=2, chunk=2).tolist() == [0.5, 1.0, 0.75, 0.75, 0.0], "chunking changes nothing"
    # peers drawn from the pool {s0, s1, s2} only: s0's are s1 (2.0) and s2 (5.0) -> 0; s3's are s2 (5.0) and s0 (1.0) -> 3/4
    pooled = peer_percentiles(texts, scores, k=2, pool=np.array([0, 1, 2]))
    assert pooled[0] == 0.0 and pooled[3] == 0.75
    assert get_scorer("agreement_peers").score(_summary("a", {}, {}), {"a": 0.25}) == 0.25


def test_cofiring_refit_by_hand():
    """Eight samples, one latent: s1-s3 agree (text and image), s4's text names it but its image
    lacks it, s5-s8 have it nowhere. Counted once: n = 8, T = 4, I = 3, both = 3, so p = 4/10,
    q = 4/6: +log(5/3) for s1-s3, log(5/9) for s4, 0 for s5-s8. The top half (4 of 8; ties by
    order) is s1, s2, s3, s5; recounted there: n = 4, T = 3, I = 3, both = 3, p = 4/6, q = 4/5, so
    +log 1.2 and log 0.6."""
    both, text_only, nothing = ({0: 1.0}, {0: 1.0}), ({0: 1.0}, {}), ({}, {})
    samples = [_summary(f"s{i}", *kind) for i, kind in enumerate([both] * 3 + [text_only] + [nothing] * 4, 1)]
    once = fit_cofiring(lambda: iter(samples), d_sae=1, tau=0.5)
    assert (once.n, once.text.tolist(), once.image.tolist(), once.both.tolist()) == (8, [4], [3], [3])
    got = [get_scorer("agreement").score(s, once) for s in samples[:5]]
    assert got == pytest.approx([math.log(5 / 3)] * 3 + [math.log(5 / 9), 0.0])
    refit = fit_cofiring(lambda: iter(samples), d_sae=1, tau=0.5, refits=1, keep=0.5)
    assert (refit.n, refit.text.tolist(), refit.image.tolist(), refit.both.tolist()) == (4, [3], [3], [3])
    got = [get_scorer("agreement").score(s, refit) for s in samples[:5]]
    assert got == pytest.approx([math.log(1.2)] * 3 + [math.log(0.6), 0.0])
    # the scorer's own fit, with its params, is that refit; agreement_mean reads the same fitted state
    data = Dataset(lambda: iter(samples), 1, check_params(["agreement_mean"], {"agreement": {"tau": 0.5, "refits": 1, "keep": 0.5}}))
    assert [v["agreement_mean"] for _, v in score_all(["agreement_mean"], data)][:5] == pytest.approx(got)


def test_one_default_scorer_everywhere():
    """saev filter, the report's sample list, the pipeline and the experiment's grid take one default."""
    import inspect

    from flows.pipeline import PipelineConfig
    from saev_core.configs import DEFAULT_SCORER, FilterConfig
    from saev_core.scoring.report import write_report
    from saev_core.scoring.scorers import default_scorers, experiment_scorers

    assert FilterConfig.model_fields["scorer"].default == DEFAULT_SCORER
    assert PipelineConfig.model_fields["scorer"].default == DEFAULT_SCORER
    assert inspect.signature(write_report).parameters["scorer"].default == DEFAULT_SCORER
    assert DEFAULT_SCORER in default_scorers() and DEFAULT_SCORER in experiment_scorers()


def test_each_scorer_reads_only_the_summary_fields_it_declares():
    """Every other field of the summaries it is fitted on and scores is taken away (None): the scores stay."""
    from dataclasses import fields, replace

    from saev_core.scoring.scorers import default_scorers, with_used

    summaries = [summary_from_acts(f"s{i}", ACTS * (i + 1) % 3, IMAGE, RESID) for i in range(4)]
    for name in default_scorers():
        reads = {f for n in with_used([name]) for f in get_scorer(n).reads}
        bare = [replace(s, **{f.name: None for f in fields(s) if f.name not in reads}) for s in summaries]
        kw = {"weights": np.array([0.2, 0.9, 0.5], np.float32), "balanced_weights": np.array([0.5, 0.3, -0.2], np.float32)}
        full = [score(name, s, summaries, **kw) for s in summaries]
        assert [score(name, s, bare, **kw) for s in bare] == full, name
    with pytest.raises(ValueError, match="reads text_maximum, which a SampleSummary does not hold"):
        register(type("Bad", (L0,), {"name": "bad", "reads": ("text_maximum",)}))
    assert "bad" not in SCORERS
