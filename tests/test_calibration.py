"""Steck's calibrated re-ranker: base order at lambda 0, lower C_KL above it, and equality with a
plain item-by-item implementation of the greedy objective."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from evals.calibration import CalibratedReranker, CalibrationConfig, calibrated_rerank
from evals.metrics import list_profiles, miscalibration

# six items over two genres: 0-3 are genre A, 4-5 genre B
C_TOY = np.array([[1.0, 0.0]] * 4 + [[0.0, 1.0]] * 2)


def _random_case(seed: int, n_users: int = 25, n_cand: int = 15, n_items: int = 40, n_genres: int = 5):
    rng = np.random.default_rng(seed)
    C = rng.random((n_items, n_genres)) * (rng.random((n_items, n_genres)) < 0.4)
    C[C.sum(axis=1) == 0, 0] = 1.0
    C /= C.sum(axis=1, keepdims=True)
    cand = np.array([rng.choice(n_items, n_cand, replace=False) for _ in range(n_users)])
    scores = -np.sort(-rng.normal(size=(n_users, n_cand)), axis=1)
    P = rng.random((n_users, n_genres)) * (rng.random((n_users, n_genres)) < 0.7)
    P[P.sum(axis=1) == 0, 1] = 1.0
    P /= P.sum(axis=1, keepdims=True)
    return cand, scores, P, C


def _naive_greedy(cand, scores, P, C, cfg: CalibrationConfig) -> np.ndarray:
    """Steck's objective evaluated literally, one user and one candidate at a time."""
    out = np.full((len(cand), cfg.k), -1)
    for u in range(len(cand)):
        if cfg.relevance == "rank":
            rel = 1.0 / np.log2(np.arange(cand.shape[1]) + 2)
        else:
            rel = (scores[u] - scores[u].min()) / (scores[u].max() - scores[u].min())
        chosen: list[int] = []
        for _ in range(cfg.k):
            best, best_obj = None, -np.inf
            for j in range(cand.shape[1]):
                if j in chosen:
                    continue
                lst = chosen + [j]
                q = C[cand[u, lst]].mean(axis=0)
                kl = miscalibration(P[u:u + 1], q[None], cfg.alpha)[0]
                obj = (1 - cfg.lam) * rel[lst].sum() - cfg.lam * kl
                if obj > best_obj:
                    best, best_obj = j, obj
            chosen.append(best)
        out[u] = cand[u, chosen]
    return out


@pytest.mark.parametrize("relevance", ["rank", "minmax"])
def test_lambda_zero_returns_base_order(relevance):
    cand, scores, P, C = _random_case(0)
    cand[3, 2:] = -1  # a user with only two candidates
    top = calibrated_rerank(cand, scores, P, C, CalibrationConfig(k=6, lam=0.0, relevance=relevance))
    expected = cand[:, :6].copy()
    assert (top == expected).all()


@pytest.mark.parametrize("relevance", ["rank", "minmax"])
@pytest.mark.parametrize("lam", [0.1, 0.5, 0.9])
def test_matches_naive_greedy(relevance, lam):
    cand, scores, P, C = _random_case(int(lam * 10))
    cfg = CalibrationConfig(k=5, lam=lam, relevance=relevance)
    assert (calibrated_rerank(cand, scores, P, C, cfg) == _naive_greedy(cand, scores, P, C, cfg)).all()


def test_lambda_positive_lowers_miscalibration_on_toy_case():
    # the user likes A and B equally; the base ranking puts all of A first
    cand = np.array([[0, 1, 2, 3, 4, 5]])
    scores = np.array([[6.0, 5.0, 4.0, 3.0, 2.0, 1.0]])
    P = np.array([[0.5, 0.5]])
    base = calibrated_rerank(cand, scores, P, C_TOY, CalibrationConfig(k=4, lam=0.0))
    cal = calibrated_rerank(cand, scores, P, C_TOY, CalibrationConfig(k=4, lam=0.6))
    assert base.tolist() == [[0, 1, 2, 3]]
    assert cal.tolist() == [[0, 4, 1, 5]]
    kl = lambda top: miscalibration(P, list_profiles(top, C_TOY, 4))[0]  # noqa: E731
    assert kl(base) == pytest.approx(np.log(0.5 / 0.995) * 0.5 + np.log(100) * 0.5)
    assert kl(cal) == pytest.approx(0.0, abs=1e-9)


def test_miscalibration_falls_as_lambda_grows():
    cand, scores, P, C = _random_case(5, n_users=60, n_cand=30)
    kls = []
    for lam in (0.0, 0.3, 0.6, 0.99):
        top = calibrated_rerank(cand, scores, P, C, CalibrationConfig(k=8, lam=lam))
        kls.append(miscalibration(P, list_profiles(top, C, 8)).mean())
    assert all(a > b for a, b in zip(kls, kls[1:]))


def test_user_without_profile_keeps_base_order_and_short_lists_are_padded():
    cand = np.array([[5, 4, 3, 2], [0, 4, -1, -1]])
    P = np.array([[0.0, 0.0], [0.9, 0.1]])
    top = calibrated_rerank(cand, np.zeros((2, 4)), P, C_TOY, CalibrationConfig(k=3, lam=0.9, relevance="minmax"))
    assert top.tolist() == [[5, 4, 3], [0, 4, -1]]


def test_reranker_skips_seen_items():
    import scipy.sparse as sp

    scores = np.array([[6.0, 5.0, 4.0, 3.0, 2.0, 1.0]])
    seen = sp.csr_matrix(np.array([[1, 0, 0, 0, 1, 0]]))
    r = CalibratedReranker(k=3, lam=0.5, n_candidates=6)
    cand, cand_scores = r.candidates(scores, seen)
    assert cand.tolist() == [[1, 2, 3, 5, -1, -1]]
    assert cand_scores[0, :4].tolist() == [5.0, 4.0, 3.0, 1.0] and np.isneginf(cand_scores[0, 4:]).all()
    assert r.rerank(scores, seen, np.array([[0.5, 0.5]]), C_TOY).tolist() == [[1, 5, 2]]


def test_chunking_does_not_change_the_result():
    cand, scores, P, C = _random_case(9, n_users=50)
    a = calibrated_rerank(cand, scores, P, C, CalibrationConfig(k=5, lam=0.4))
    b = calibrated_rerank(cand, scores, P, C, CalibrationConfig(k=5, lam=0.4, chunk=7))
    assert (a == b).all()


@pytest.mark.parametrize("novelty", ["unseen", "inverse"])
@pytest.mark.parametrize("mu", [0.0, 0.3])
def test_exposure_after_every_user_equals_one_user_at_a_time(novelty, mu):
    """``exposure_chunk = 1`` (batched, checked user by user) is the product's path: each user
    re-ranked alone on the counts left by everyone before them."""
    cand, scores, P, C = _random_case(4, n_users=70, n_cand=12, n_items=30)
    rng = np.random.default_rng(1)
    kw = {"cand_persona": rng.integers(0, 3, cand.shape), "persona_weights": np.tile([0.6, 0.3, 0.1], (70, 1)),
          "cand_persona_rank": rng.integers(0, 20, cand.shape)}
    cfg = CalibrationConfig(k=4, lam=0.3, mu=mu, gamma=0.2, beta=0.3, novelty=novelty, resort=True, exposure_chunk=1)
    e_ref = np.zeros(len(C))
    ref = np.vstack([calibrated_rerank(cand[u:u + 1], scores[u:u + 1], P[u:u + 1], C, cfg, exposure=e_ref,
                                       **{k: v[u:u + 1] for k, v in kw.items()}) for u in range(len(cand))])
    e = np.zeros(len(C))
    assert (calibrated_rerank(cand, scores, P, C, cfg, exposure=e, **kw) == ref).all()
    assert (e == e_ref).all() and e.sum() == ref.size
    # counted per block of users instead, later users of a block miss what earlier ones were shown
    blocky = calibrated_rerank(cand, scores, P, C, cfg.model_copy(update={"exposure_chunk": 35}),
                               exposure=np.zeros(len(C)), **kw)
    assert not (blocky == ref).all()


def test_config_validation():
    with pytest.raises(ValidationError):
        CalibrationConfig(lam=1.5)
    with pytest.raises(ValidationError):
        CalibrationConfig(relevance="score")
    with pytest.raises(ValidationError):
        CalibratedReranker(lamda=0.3)
    cfg = CalibrationConfig(lam=0.3, relevance="minmax")
    assert CalibrationConfig.model_validate(cfg.model_dump()) == cfg


@pytest.mark.slow
def test_ml100k_ease_calibration_keeps_accuracy_and_cuts_miscalibration():
    """The DESIGN.md claim: rank relevance, lambda 0.25 keeps ~98% NDCG@10, cuts C_KL@10 ~1/3."""
    from evals.metrics import evaluate_lists, user_profiles
    from evals.splits import SplitConfig, rank_unseen, split_dataset
    from memory.errors import DataFormatError
    from memory.loaders import load_packaged_ml100k
    from personas.scorers import EASE

    try:
        ds = load_packaged_ml100k()
    except DataFormatError:
        pytest.skip("packaged ML-100K is not installed")
    a = split_dataset(ds, SplitConfig(seed=0)).arrays(ds.catalog)
    scores = EASE(l2=200.0).fit(a.train_matrix).score_batch(a.history)
    C = ds.catalog.category_distribution()
    base = evaluate_lists(rank_unseen(scores, a.seen, 10), a.test, a.history, ds.catalog, ks=(10,)).means()
    cal_top = CalibratedReranker(k=10, lam=0.25).rerank(scores, a.seen, user_profiles(a.history, C), C)
    cal = evaluate_lists(cal_top, a.test, a.history, ds.catalog, ks=(10,)).means()
    assert 0.3 < base["Recall@10"] < 0.5 and 0.3 < base["NDCG@10"] < 0.5
    assert cal["NDCG@10"] > 0.95 * base["NDCG@10"]
    assert cal["C_KL@10"] < 0.75 * base["C_KL@10"]
