"""Baselines: each beats random ranking on a small structured matrix; MultVAE trains and is seeded."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from pydantic import ValidationError

from evals.baselines import ContentMean, MultVAE, MultVAEConfig, Popularity
from evals.metrics import hit_matrix, nanmean, recall_at_k
from evals.splits import rank_unseen
from memory.errors import UsageError

N_USERS, N_ITEMS, N_GROUPS = 300, 100, 10


def _world(seed: int = 0):
    """Ten taste clusters of ten items; users join clusters with skewed probability and pick six
    items of their cluster, Zipf-skewed within it. One of the six is held out.

    Returns the train matrix, the held-out item of every user, and item embeddings that encode
    each item's cluster (plus noise), so a content model can recover the structure.
    """
    rng = np.random.default_rng(seed)
    per_group = N_ITEMS // N_GROUPS
    within = 1.0 / np.arange(1, per_group + 1) ** 1.2
    within /= within.sum()
    groups = 1.0 / np.arange(1, N_GROUPS + 1)
    groups /= groups.sum()
    rows, cols, held = [], [], []
    for u in range(N_USERS):
        g = rng.choice(N_GROUPS, p=groups)
        items = g * per_group + rng.choice(per_group, size=6, replace=False, p=within)
        held.append(items[-1])
        rows += [u] * 5
        cols += items[:-1].tolist()
    X = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(N_USERS, N_ITEMS))
    E = np.zeros((N_ITEMS, 16))
    E[np.arange(N_ITEMS), np.arange(N_ITEMS) // per_group] = 1.0
    E += rng.normal(0, 0.2, E.shape)
    return X, [[h] for h in held], E


def _recall(scores: np.ndarray, X: sp.csr_matrix, test, k: int = 5) -> float:
    top = rank_unseen(scores, X, k)
    return nanmean(recall_at_k(hit_matrix(top, test, N_ITEMS), np.ones(N_USERS), k))


@pytest.fixture(scope="module")
def world():
    return _world()


@pytest.fixture(scope="module")
def random_recall(world):
    X, test, _ = world
    return _recall(np.random.default_rng(1).random((N_USERS, N_ITEMS)), X, test)


def test_popularity_scores_are_user_counts():
    X = sp.csr_matrix(np.array([[1, 1, 0], [0, 1, 0], [0, 1, 1]], dtype=np.float32))
    m = Popularity().fit(X)
    assert m.score([0]).tolist() == [1.0, 3.0, 1.0]
    assert m.score_batch(X).shape == (3, 3)


def test_popularity_beats_random(world, random_recall):
    X, test, _ = world
    assert _recall(Popularity().fit(X).score_batch(X), X, test) > random_recall + 0.1


def test_content_mean_hand_computed():
    E = np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    m = ContentMean(E).fit(sp.csr_matrix((1, 4)))
    # history {0, 1}: mean of unit vectors (1,0), (0,1) -> direction (1,1)/sqrt2
    s = m.score([0, 1])
    assert s == pytest.approx([2 ** -0.5, 2 ** -0.5, 1.0, 0.0])
    assert m.score([]).tolist() == [0.0] * 4  # no history: no signal


def test_content_mean_beats_random(world, random_recall):
    X, test, E = world
    assert _recall(ContentMean(E).fit(X).score_batch(X), X, test) > random_recall + 0.5


def test_content_mean_rejects_mismatched_embeddings():
    with pytest.raises(UsageError, match="one per item embedding row"):
        ContentMean(np.ones((3, 2))).fit(sp.csr_matrix((1, 4)))


def test_unfitted_and_mismatched_scoring_fail():
    with pytest.raises(UsageError, match="before scoring"):
        Popularity().score_batch(sp.csr_matrix((1, 3)))
    m = Popularity().fit(sp.csr_matrix((2, 3)))
    with pytest.raises(UsageError, match="3 \\(the items it was fitted on\\)"):
        m.score_batch(sp.csr_matrix((1, 4)))


@pytest.fixture(scope="module")
def vae(world):
    X, _, _ = world
    return MultVAE(epochs=50, hidden=32, latent=8, batch_size=100, seed=3).fit(X)


def test_multvae_trains_and_beats_random(world, vae, random_recall):
    X, test, _ = world
    assert len(vae.losses) == 50
    assert np.mean(vae.losses[-5:]) < np.mean(vae.losses[:5])
    scores = vae.score_batch(X)
    assert scores.shape == (N_USERS, N_ITEMS) and scores.dtype == np.float32
    assert np.isfinite(scores).all()
    assert _recall(scores, X, test) > random_recall + 0.25


def test_multvae_is_seeded_and_leaves_global_rng_alone(world, vae):
    X, _, _ = world
    state = torch.random.get_rng_state()
    again = MultVAE(epochs=50, hidden=32, latent=8, batch_size=100, seed=3).fit(X)
    assert torch.equal(state, torch.random.get_rng_state())
    np.testing.assert_allclose(again.score_batch(X[:10]), vae.score_batch(X[:10]), rtol=1e-5, atol=1e-5)
    other = MultVAE(epochs=50, hidden=32, latent=8, batch_size=100, seed=4).fit(X)
    assert not np.allclose(other.score_batch(X[:10]), vae.score_batch(X[:10]))


def test_multvae_scoring_is_deterministic_and_ignores_duplicates(vae):
    X = sp.csr_matrix(np.eye(N_ITEMS, dtype=np.float32)[:3])
    a = vae.score_batch(X)
    doubled = sp.csr_matrix((np.full(6, 2.0), (np.array([0, 0, 1, 1, 2, 2]), np.array([0, 0, 1, 1, 2, 2]))),
                            shape=(3, N_ITEMS))
    np.testing.assert_array_equal(a, vae.score_batch(X))
    np.testing.assert_allclose(a, vae.score_batch(doubled), rtol=1e-6)


def test_multvae_config_roundtrip_and_typos():
    cfg = MultVAEConfig(epochs=5, seed=2)
    assert MultVAEConfig.model_validate(cfg.model_dump()) == cfg
    assert MultVAE(cfg).config == cfg
    with pytest.raises(ValidationError):
        MultVAE(epoch=5)
    with pytest.raises(ValidationError):
        MultVAEConfig(dropout=1.0)
