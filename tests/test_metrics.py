"""Hand-computed cases for every list metric, their NaN edge cases, and the bootstrap statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon

from evals.metrics import (
    ListEvaluation,
    catalog_coverage,
    dominant_genres,
    evaluate_lists,
    hit_matrix,
    hit_rate_at_k,
    intra_list_diversity,
    js_distance,
    label_distribution,
    list_profiles,
    minority_recall_at_k,
    miscalibration,
    nanmean,
    ndcg_at_k,
    recall_at_k,
    user_profiles,
)
from evals.stats import bootstrap_ci, paired_comparison
from memory.catalog import Catalog, Item

LOG2_3 = math.log2(3)
LOG2_5 = math.log2(5)


def _catalog(genres: list[tuple[str, ...]]) -> Catalog:
    return Catalog([Item(item_id=str(i), title=f"item {i}", categories=g) for i, g in enumerate(genres)])


# --------------------------------------------------------------------------- accuracy
TOP = np.array([[0, 1, 2, 3], [4, 5, 6, 7], [0, 1, 2, 3]])
TEST = [[1, 3], [9], []]  # user 0: hits at ranks 1 and 3; user 1: no hit; user 2: no test items


def _hits():
    return hit_matrix(TOP, TEST, n_items=10), np.array([2, 1, 0])


def test_hit_matrix_marks_test_items_only():
    hits, _ = _hits()
    assert hits.tolist() == [[False, True, False, True], [False] * 4, [False] * 4]


def test_hit_matrix_padding_never_matches_previous_users_last_item():
    # key of user 0's item 4 is 0*5+4; a naive key for user 1's padding slot is 1*5-1 = 4 too
    hits = hit_matrix(np.array([[0], [-1]]), [[4], [4]], n_items=5)
    assert hits.tolist() == [[False], [False]]


def test_recall_hand_computed():
    hits, n = _hits()
    r2 = recall_at_k(hits, n, 2)
    r4 = recall_at_k(hits, n, 4)
    assert r2[:2].tolist() == [0.5, 0.0] and np.isnan(r2[2])
    assert r4[:2].tolist() == [1.0, 0.0] and np.isnan(r4[2])


def test_recall_denominator_is_min_k_and_test_size():
    # 3 test items, both of the top 2 are hits: recall@2 is 2 / min(2, 3) = 1, not 2/3
    hits = hit_matrix(np.array([[0, 1]]), [[0, 1, 2]], n_items=3)
    assert recall_at_k(hits, np.array([3]), 2).tolist() == [1.0]


def test_ndcg_hand_computed():
    hits, n = _hits()
    nd2 = ndcg_at_k(hits, n, 2)
    nd4 = ndcg_at_k(hits, n, 4)
    # @2: one hit at rank 1 -> (1/log2 3) / (1 + 1/log2 3)
    assert nd2[0] == pytest.approx((1 / LOG2_3) / (1 + 1 / LOG2_3))
    assert nd2[0] == pytest.approx(0.386852807)
    # @4: hits at ranks 1 and 3; ideal has min(4, 2) = 2 hits at ranks 0 and 1
    assert nd4[0] == pytest.approx((1 / LOG2_3 + 1 / LOG2_5) / (1 + 1 / LOG2_3))
    assert nd4[1] == 0.0 and np.isnan(nd4[2])


def test_ndcg_perfect_list_is_one():
    hits = hit_matrix(np.array([[5, 6, 0]]), [[5, 6]], n_items=7)
    assert ndcg_at_k(hits, np.array([2]), 3) == pytest.approx([1.0])


def test_hit_rate_hand_computed():
    hits, n = _hits()
    hr = hit_rate_at_k(hits, n, 2)
    assert hr[:2].tolist() == [1.0, 0.0] and np.isnan(hr[2])
    assert hit_rate_at_k(hits, n, 1)[0] == 0.0  # the first hit is at rank 1


def test_empty_list_scores_zero_not_nan():
    hits = hit_matrix(np.array([[-1, -1]]), [[3]], n_items=4)
    n = np.array([1])
    assert recall_at_k(hits, n, 2).tolist() == [0.0]
    assert ndcg_at_k(hits, n, 2).tolist() == [0.0]
    assert hit_rate_at_k(hits, n, 2).tolist() == [0.0]


# --------------------------------------------------------------------------- distributions
def test_user_and_list_profiles():
    C = _catalog([("A",), ("A", "B"), ("B",)]).category_distribution()
    p = user_profiles([[0, 1], []], C)
    assert p[0].tolist() == [0.75, 0.25] and p[1].tolist() == [0.0, 0.0]
    q = list_profiles(np.array([[2, 1, 0], [-1, -1, -1]]), C, k=2)
    assert q[0].tolist() == [0.25, 0.75] and q[1].tolist() == [0.0, 0.0]


def test_miscalibration_hand_computed():
    p = np.array([[0.5, 0.5], [0.5, 0.5], [0.0, 0.0], [0.5, 0.5]])
    q = np.array([[1.0, 0.0], [0.5, 0.5], [1.0, 0.0], [0.0, 0.0]])
    c = miscalibration(p, q, alpha=0.01)
    # q~ = 0.99 q + 0.01 p = (0.995, 0.005)
    assert c[0] == pytest.approx(0.5 * math.log(0.5 / 0.995) + 0.5 * math.log(0.5 / 0.005))
    assert c[0] == pytest.approx(1.958517, abs=1e-6)
    assert c[1] == pytest.approx(0.0)  # a perfectly calibrated list
    assert np.isnan(c[2])  # empty truth: no profile
    assert c[3] == pytest.approx(math.log(100))  # empty list: q~ = alpha p, the worst value


def test_js_distance_hand_computed_and_against_scipy():
    p = np.array([[1.0, 0.0], [0.3, 0.7], [1.0, 0.0], [0.0, 0.0], [0.2, 0.8]])
    q = np.array([[0.0, 1.0], [0.3, 0.7], [0.5, 0.5], [0.5, 0.5], [0.0, 0.0]])
    d = js_distance(p, q)
    assert d[0] == pytest.approx(1.0)  # disjoint supports: the maximum in base 2
    assert d[1] == pytest.approx(0.0, abs=1e-7)
    # m = (0.75, 0.25): KL(p||m) = log2(4/3), KL(q||m) = 0.5 log2(2/3) + 0.5 log2 2
    js = 0.5 * (math.log2(4 / 3) + 0.5 * math.log2(2 / 3) + 0.5)
    assert d[2] == pytest.approx(math.sqrt(js))
    assert d[2] == pytest.approx(jensenshannon([1.0, 0.0], [0.5, 0.5], base=2))
    assert np.isnan(d[3])  # empty truth
    assert d[4] == 1.0  # empty list


def test_js_distance_normalises_rows():
    assert js_distance(np.array([[2.0, 2.0]]), np.array([[1.0, 3.0]]))[0] == pytest.approx(
        jensenshannon([0.5, 0.5], [0.25, 0.75], base=2))


def test_label_distribution_skips_unlabelled_slots():
    dist = label_distribution(np.array([[0, 0, 1, -1, 2]]), n_labels=3, k=4)
    assert dist[0] == pytest.approx([2 / 3, 1 / 3, 0.0])
    with pytest.raises(ValueError, match="out of range"):
        label_distribution(np.array([[3]]), n_labels=3, k=1)


# --------------------------------------------------------------------------- crowding out
def test_dominant_genre_ties_and_empty():
    assert dominant_genres(np.array([[0.2, 0.4, 0.4], [0.0, 0.0, 0.0]])).tolist() == [1, -1]


def test_minority_recall_hand_computed():
    C = _catalog([("A",), ("A", "B"), ("C",), ("B",), ("A",)]).category_distribution()
    profiles = user_profiles([[0, 1]] * 3 + [[]], C)  # p = (0.75, 0.25, 0): d(u) = A
    test = [[1, 2, 3], [1, 2, 3], [4, 0], [2]]
    top = np.array([[2, 0], [1, 4], [4, 0], [2, 3]])
    mr = minority_recall_at_k(top, test, profiles, C, k=2)
    # m(1) = 0.5, m(2) = 1, m(3) = 1: the test's minority mass is 2.5
    assert mr[0] == pytest.approx(1 / 2.5)
    assert mr[1] == pytest.approx(0.5 / 2.5)
    assert np.isnan(mr[2])  # every test item is purely the dominant genre: no minority mass
    assert np.isnan(mr[3])  # no training profile, so no dominant genre
    assert minority_recall_at_k(top[:1], test[:1], profiles[:1], C, k=1)[0] == pytest.approx(0.4)


# --------------------------------------------------------------------------- beyond accuracy
def test_intra_list_diversity_hand_computed():
    E = np.array([[1.0, 0.0], [0.0, 1.0], [3.0, 3.0], [0.0, 0.0]])  # item 2 is unnormalised
    top = np.array([[0, 1, -1], [0, 2, -1], [0, 1, 2], [0, -1, -1], [0, 3, -1]])
    ild = intra_list_diversity(top, E, k=3)
    c = 1 / math.sqrt(2)
    assert ild[0] == pytest.approx(1.0)
    assert ild[1] == pytest.approx(1 - c)
    assert ild[2] == pytest.approx(1 - (0 + c + c) / 3)
    assert np.isnan(ild[3])  # one item: no pair
    assert ild[4] == pytest.approx(1.0)  # a zero embedding has cosine 0 to everything


def test_catalog_coverage_hand_computed():
    top = np.array([[0, 1], [1, 2], [-1, -1]])
    assert catalog_coverage(top, n_items=5, k=2) == pytest.approx(0.6)
    assert catalog_coverage(top, n_items=5, k=1) == pytest.approx(0.4)
    assert catalog_coverage(np.full((2, 2), -1), n_items=5, k=2) == 0.0


# --------------------------------------------------------------------------- evaluate_lists
def _toy():
    cat = _catalog([("A",), ("A",), ("B",), ("B",), ("A", "B"), ("C",)])
    top = np.array([[0, 2, 4], [5, 1, 0], [2, 3, 4]])
    test = [[2, 4], [3], []]
    train = [[1, 3], [0], [5]]
    return cat, top, test, train


def test_evaluate_lists_names_and_values():
    cat, top, test, train = _toy()
    E = np.eye(6)
    labels = np.array([[0, 1, 1], [0, 0, 0], [1, -1, 0]])
    weights = np.array([[0.5, 0.5], [1.0, 0.0], [0.0, 0.0]])
    r = evaluate_lists(top, test, train, cat, ks=(2, 3), item_embeddings=E, persona_labels=labels,
                       persona_weights=weights)
    expected = {f"{m}@{k}" for k in (2, 3) for m in ("Recall", "NDCG", "HR", "C_KL", "TDD_genre",
                                                     "TDD_persona", "MinorityRecall", "ILD")}
    assert set(r.per_user) == expected
    assert set(r.coverage) == {"Coverage@2", "Coverage@3"}
    assert r["Recall@2"][:2].tolist() == [0.5, 0.0] and np.isnan(r["Recall@2"][2])
    assert r["Recall@3"][0] == 1.0
    assert r["Coverage@2"] == pytest.approx(5 / 6)  # items 0, 2, 5, 1, 3
    # user 0: p = (0.5, 0.5, 0) from items 1 and 3; top-2 (0, 2) is exactly calibrated
    assert r["C_KL@2"][0] == pytest.approx(0.0, abs=1e-12)
    assert r["TDD_genre@2"][0] == pytest.approx(0.0, abs=1e-7)
    # user 0's personas: top-2 labels (0, 1) match weights (0.5, 0.5); user 2 has no persona weights
    assert r["TDD_persona@2"][0] == pytest.approx(0.0, abs=1e-7)
    assert r["TDD_persona@3"][1] == pytest.approx(0.0, abs=1e-7)
    assert np.isnan(r["TDD_persona@2"][2])
    assert r["ILD@3"].tolist() == [1.0, 1.0, 1.0]
    # user 0: d(u) is A (lowest index on the A/B tie); m(2) = 1, m(4) = 0.5; top-2 hits item 2
    assert r["MinorityRecall@2"][0] == pytest.approx(1 / 1.5)
    assert r["MinorityRecall@3"][0] == pytest.approx(1.0)


def test_nan_users_are_skipped_in_means():
    cat, top, test, train = _toy()
    r = evaluate_lists(top, test, train, cat, ks=(2,))
    m = r.means()
    assert m["Recall@2"] == pytest.approx(0.25)  # (0.5 + 0.0) / 2: user 2 has no test items
    assert m["HR@2"] == pytest.approx(0.5)
    assert m["Coverage@2"] == r["Coverage@2"]
    assert np.isnan(nanmean(np.array([np.nan, np.nan])))
    assert nanmean(np.array([1.0, np.nan, 3.0])) == 2.0


def test_evaluate_lists_accepts_csr_sets():
    import scipy.sparse as sp

    cat, top, test, train = _toy()
    to_csr = lambda sets: sp.csr_matrix(  # noqa: E731
        (np.ones(sum(map(len, sets))), (np.repeat(np.arange(3), [len(s) for s in sets]),
                                        np.concatenate([np.asarray(s, int) for s in sets]))), shape=(3, 6))
    a = evaluate_lists(top, test, train, cat, ks=(2,)).means()
    b = evaluate_lists(top, to_csr(test), to_csr(train), cat, ks=(2,)).means()
    assert a.keys() == b.keys()
    np.testing.assert_allclose(list(a.values()), list(b.values()))


def test_evaluate_lists_rejects_bad_input():
    cat, top, test, train = _toy()
    with pytest.raises(ValueError, match="K=20"):
        evaluate_lists(top, test, train, cat, ks=(20,))
    with pytest.raises(ValueError, match="both or neither"):
        evaluate_lists(top, test, train, cat, ks=(2,), persona_labels=top)
    with pytest.raises(ValueError, match="outside the catalog"):
        evaluate_lists(top + 10, test, train, cat, ks=(2,))
    with pytest.raises(KeyError, match="no metric"):
        ListEvaluation({}, {})["NDCG@10"]


# --------------------------------------------------------------------------- statistics
def test_bootstrap_ci_is_seeded_nan_aware_and_sensible():
    rng = np.random.default_rng(1)
    v = rng.normal(0.3, 0.1, size=500)
    v[::10] = np.nan
    a = bootstrap_ci(v, seed=3)
    assert a == bootstrap_ci(v, seed=3)
    assert a != bootstrap_ci(v, seed=4)
    assert a.n == 450 and a.mean == pytest.approx(np.nanmean(v))
    assert a.low < a.mean < a.high
    # the half-width of a 95% interval is about 1.96 standard errors
    assert (a.high - a.low) / 2 == pytest.approx(1.96 * np.nanstd(v) / math.sqrt(450), rel=0.2)
    empty = bootstrap_ci(np.array([np.nan]))
    assert empty.n == 0 and np.isnan(empty.mean)


def test_paired_comparison():
    rng = np.random.default_rng(0)
    ref = rng.random(300)
    better = ref + 0.05 + rng.normal(0, 0.02, 300)
    better[0] = np.nan  # dropped from both sides
    ref_with_nan = ref.copy()
    ref_with_nan[1] = np.inf
    c = paired_comparison(better, ref_with_nan, seed=0)
    assert c.n == 298
    keep = np.ones(300, bool)
    keep[[0, 1]] = False
    assert c.difference == pytest.approx(better[keep].mean() - ref[keep].mean())
    assert c.ratio == pytest.approx(better[keep].mean() / ref[keep].mean())
    assert c.ci_low > 0 and c.p_value < 1e-6
    t = paired_comparison(better, ref_with_nan, test="t")
    assert t.p_value < 1e-6 and t.test == "t"
    same = paired_comparison(ref, ref)
    assert same.difference == 0 and same.p_value == 1.0 and same.ratio == 1.0
    with pytest.raises(ValueError, match="one entry per user"):
        paired_comparison(ref, ref[:-1])
