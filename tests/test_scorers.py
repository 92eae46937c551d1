"""Scorer contract: EASE and ItemKNN fit, score consistently, decompose exactly and round-trip."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from personas.scorers import EASE, ItemKNN, load_scorer, make_scorer
from memory.errors import UsageError


@pytest.fixture(scope="module")
def X():
    rng = np.random.default_rng(0)
    dense = (rng.random((60, 30)) < 0.2).astype(np.float32)
    return sp.csr_matrix(dense)


class ScorerContract:
    def make(self):
        raise NotImplementedError

    def test_score_matches_batch(self, X):
        m = self.make().fit(X)
        batch = m.score_batch(X[:5])
        for r in range(5):
            assert np.allclose(m.score(X[r].indices), batch[r], atol=1e-5)

    def test_contributions_sum_to_score(self, X):
        m = self.make().fit(X)
        h = X[3].indices
        groups = [h[::2], h[1::2]]
        assert np.allclose(m.contributions(groups).sum(0), m.score(h), atol=1e-5)

    def test_save_and_load_round_trip(self, X, tmp_path):
        m = self.make().fit(X)
        m.save(tmp_path / "s")
        back = load_scorer(tmp_path / "s")
        assert type(back) is type(m) and back.config_dict() == m.config_dict()
        assert np.allclose(back.score(X[7].indices), m.score(X[7].indices))

    def test_empty_history_scores_zero(self, X):
        m = self.make().fit(X)
        assert not m.score([]).any()


class TestEASE(ScorerContract):
    def make(self):
        return EASE(l2=5.0)

    def test_closed_form(self, X):
        m = self.make().fit(X)
        G = (X.T @ X).toarray().astype(np.float64) + 5.0 * np.eye(X.shape[1])
        P = np.linalg.inv(G)
        B = np.eye(X.shape[1]) - P / np.diag(P)
        np.fill_diagonal(B, 0.0)
        assert np.allclose(m.B, B, atol=1e-5)
        assert np.allclose(np.diag(m.B), 0.0)

    def test_lambda_must_be_positive(self):
        with pytest.raises(ValueError):
            EASE(l2=0)


class TestItemKNN(ScorerContract):
    def make(self):
        return ItemKNN(k=5, shrink=1.0)

    def test_at_most_k_neighbours_per_item(self, X):
        m = self.make().fit(X)
        per_target = np.diff(m.B.tocsc().indptr)
        assert per_target.max() <= 5 and np.all(m.B.data > 0)


def test_unknown_scorer_lists_allowed():
    with pytest.raises(UsageError, match="ease.*itemknn"):
        make_scorer("svd")
