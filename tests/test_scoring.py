"""Per-sample scorers (METHOD.md sec. 4) on a hand-built activation example."""

from __future__ import annotations

import math

import pytest
import torch

from saev_core.scoring import (SCORERS, cooccurrence_score, cooccurring_latents, cross_modal_weights, get_scorer,
                               l0_score, model_cosine_score, random_score, saev_score)

# 4 positions (image, image, text, text) x 3 latents
ACTS = torch.tensor([[1.0, 0.0, 2.0], [0.0, 0.0, 0.5], [0.5, 3.0, 0.0], [0.0, 0.0, 1.0]])
IMAGE = torch.tensor([True, True, False, False])


def test_l0_is_mean_active_latents_per_position():
    assert l0_score(ACTS) == 1.5  # (2 + 1 + 2 + 1) / 4
    assert l0_score(torch.zeros(0, 3)) == 0.0


def test_cooccurrence_counts_latents_on_both_modalities():
    # latent 0: image 1.0, text 0.5; latent 1: text only; latent 2: image 2.0/0.5, text 1.0
    assert cooccurring_latents(ACTS, IMAGE).tolist() == [True, False, True]
    assert cooccurrence_score(ACTS, IMAGE) == 2
    assert cooccurrence_score(ACTS, IMAGE, tau=0.75) == 1  # latent 0's text activation 0.5 <= tau
    assert cooccurrence_score(ACTS, torch.ones(4, dtype=torch.bool)) == 0  # no text tokens


def test_saev_score_sums_weights_over_cooccurring_latents():
    w = torch.tensor([0.2, 0.9, 0.5])
    assert saev_score(ACTS, IMAGE, w) == pytest.approx(0.7)
    assert saev_score(ACTS, IMAGE, w, tau=0.75) == pytest.approx(0.5)


def test_model_cosine_between_mean_image_and_mean_text_residuals():
    resid = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 2.0], [1.0, 0.0]])  # text mean (1, 1)
    assert model_cosine_score(resid, IMAGE) == pytest.approx(1 / math.sqrt(2))


def test_random_score_is_seeded_and_order_free():
    a = random_score("abc", seed=1)
    assert a == random_score("abc", seed=1) and 0 <= a < 1
    assert a != random_score("abc", seed=2) and a != random_score("abd", seed=1)


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
    assert set(SCORERS) == {"random", "l0", "cooccurrence", "saev", "model_cosine"}
    assert get_scorer("l0") is l0_score
    with pytest.raises(ValueError, match=r"unknown scorer 'clip'; valid scorers: \['cooccurrence', 'l0', 'model_cosine', 'random', 'saev'\]"):
        get_scorer("clip")
