"""Scorer contract: EASE, sparse EASE and ItemKNN fit, score consistently, decompose exactly and
round-trip; the engine picks dense or sparse EASE by catalogue size."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from personas.scorers import EASE, ItemKNN, SparseEASE, load_scorer, make_scorer, pruned_gram
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

    def test_score_and_evidence_weights_are_entries_of_b(self, X):
        m = self.make().fit(X)
        B = m.B.toarray() if sp.issparse(m.B) else np.asarray(m.B)
        h, items = X[3].indices, np.array([5, 1, 5, 20, 0])  # a repeated candidate too
        assert np.allclose(m.item_weights(h, items), B[np.ix_(h, items)])
        assert np.allclose(m.score(h), B[h].sum(0), atol=1e-5)
        assert m.item_weights([], items).shape == (0, 5)

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


class TestSparseEASE(ScorerContract):
    def make(self):
        return SparseEASE(l2=5.0, neighbours=8, gram_neighbours=12, block=7)

    def test_b_is_sparse_with_at_most_m_sources_per_target(self, X):
        m = self.make().fit(X)
        assert sp.isspmatrix_csr(m.B) and m.B.dtype == np.float32
        assert np.diff(m.B.tocsc().indptr).max() <= 8
        assert not m.B.diagonal().any()  # an item never explains itself

    def test_equals_dense_ease_when_every_item_is_a_neighbour(self):
        rng = np.random.default_rng(1)
        Xd = sp.csr_matrix((rng.random((80, 30)) < 0.5).astype(np.float32))  # every pair co-occurs
        assert (Xd.T @ Xd).toarray().min() > 0
        dense = EASE(l2=5.0).fit(Xd)
        local = SparseEASE(l2=5.0, neighbours=29, gram_neighbours=29, block=4).fit(Xd)
        assert np.allclose(local.B.toarray(), dense.B, atol=1e-5)

    def test_columns_are_local_ridge_regressions(self, X):
        m = SparseEASE(l2=5.0, neighbours=8, gram_neighbours=29).fit(X)  # the Gram matrix kept whole
        G = (X.T @ X).toarray().astype(np.float64)
        i = 4
        col = m.B[:, i].toarray().ravel()
        N = np.flatnonzero(col)
        assert 0 < len(N) <= 8 and i not in N
        # the kept sources are the items co-occurring with i most often
        order = np.argsort(-np.where(np.arange(len(G)) == i, -1, G[:, i]), kind="stable")
        assert G[N, i].min() >= G[order[7], i]
        expected = np.linalg.solve(G[np.ix_(N, N)] + 5.0 * np.eye(len(N)), G[N, i])
        assert np.allclose(col[N], expected, atol=1e-4)

    def test_keep_bounds_the_weights_per_column(self, X):
        m = SparseEASE(l2=5.0, neighbours=8, keep=3).fit(X)
        assert np.diff(m.B.tocsc().indptr).max() <= 3

    def test_pruned_gram_is_symmetric_and_exact_where_kept(self, X):
        G = pruned_gram(X, per_column=5, block=9)
        full = (X.T @ X).toarray()
        assert abs(G - G.T).max() == 0
        r, c = G.nonzero()
        assert np.allclose(G.toarray()[r, c], full[r, c])
        assert np.allclose(G.diagonal(), np.diag(full))
        assert (np.diff(G.tocsc().indptr) <= 5 + 1 + len(full)).all() and G.nnz < full.size

    def test_settings_are_validated(self):
        with pytest.raises(ValueError):
            SparseEASE(neighbours=0)
        with pytest.raises(ValueError):
            SparseEASE(unknown=1)


def test_unknown_scorer_lists_allowed():
    with pytest.raises(UsageError, match="ease.*itemknn.*sparse_ease"):
        make_scorer("svd")


# ---- the engine's choice --------------------------------------------------------------------
def test_auto_picks_dense_ease_up_to_the_threshold_then_sparse():
    from agent.config import EngineConfig

    cfg = EngineConfig()
    assert cfg.scorer == "auto"
    assert cfg.resolve_scorer(cfg.dense_max_items) == "ease"
    assert cfg.resolve_scorer(cfg.dense_max_items + 1) == "sparse_ease"
    assert EngineConfig(scorer="ease").resolve_scorer(10**6) == "ease"
    assert EngineConfig(dense_max_items=50).resolve_scorer(51) == "sparse_ease"
    with pytest.raises(ValueError):
        EngineConfig(scorer="svd")


def test_cache_key_of_the_defaults_is_the_one_before_auto():
    """Data directories built before the auto scorer keep their names (hashes recorded from the
    previous release's EngineConfig: the defaults, and embedder hash:128)."""
    from agent.config import EngineConfig

    assert EngineConfig().cache_key() == "a4854f0e2a"
    assert EngineConfig(embedder="hash:128").cache_key() == "8d35c4da76"
    keys = {EngineConfig().cache_key(), EngineConfig(scorer="ease").cache_key(),
            EngineConfig(scorer="sparse_ease").cache_key(), EngineConfig(dense_max_items=5).cache_key(),
            EngineConfig(sparse_ease={"neighbours": 50}).cache_key()}
    assert len(keys) == 5


def test_config_round_trips():
    from agent.config import EngineConfig

    cfg = EngineConfig(scorer="sparse_ease", sparse_ease={"neighbours": 64, "keep": 32}, personas_at_build="lazy")
    again = EngineConfig.model_validate(cfg.model_dump(mode="json"))
    assert again == cfg and again.model_dump() == cfg.model_dump()


@pytest.fixture(scope="module")
def sparse_engine(tmp_path_factory):
    """A synthetic engine whose auto rule picks sparse EASE (threshold below the catalogue)."""
    from agent.config import EngineConfig
    from agent.engine import Engine
    from memory.loaders import DataSource

    cfg = EngineConfig(embedder="hash:128", dense_max_items=100, sparse_ease={"neighbours": 60})
    return Engine.open(DataSource(dataset="synthetic"), cfg, tmp_path_factory.mktemp("sparse") / "data")


def test_engine_records_the_resolved_scorer(sparse_engine):
    m = sparse_engine.manifest
    assert m["scorer"]["kind"] == "sparse_ease" and m["scorer"]["chosen_by"] == "auto"
    assert m["scorer"]["n_items"] == len(sparse_engine.catalog) > 100
    assert sparse_engine.scorer.name == "sparse_ease" and sp.issparse(sparse_engine.scorer.B)
    out = sparse_engine.recommend("1", k=5)
    assert out.provenance["scorer"]["kind"] == "sparse_ease" and out.provenance["scorer"]["neighbours"] == 60


def test_persona_attribution_is_exact_with_sparse_ease(sparse_engine):
    rec = sparse_engine.recommender
    for u in rec.history.user_ids[:20]:
        ps, pset = rec.persona_scores(u)
        base = rec.scorer.score(rec.history.positives(u))
        assert np.allclose(ps.contributions.sum(0) + ps.residual, base, atol=1e-5)
        out = rec.recommend(u, k=10, mode="relevance")
        for r in out.items:
            i = rec.catalog.index(r.item_id)
            k = pset.ids.index(r.persona.id)
            assert np.argmax(ps.contributions[:, i]) == k
            assert abs(sum(r.attention.values()) - 1.0) < 1e-4
            for e in r.evidence:  # evidence weights are B[j, i] of the responsible persona's items
                assert abs(e.weight - float(rec.scorer.B[rec.catalog.index(e.item_id), i])) < 1e-5
                assert e.item_id in pset.get(r.persona.id).evidence
