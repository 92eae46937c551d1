"""Offline list metrics, vectorised over users (DESIGN.md section 3, implemented as written there).

Every per-user metric takes row-aligned arrays (one row per user) and returns a float64 array
with one value per user. A value is NaN when the metric is undefined for that user, i.e. when
its *truth* is empty (no test items, no genre profile, no minority mass...); means skip NaN
(:func:`nanmean`), so such users simply do not count. An *empty list* is not undefined: it is
scored as the worst list (no hits; a list profile of zeros), except for intra-list diversity,
which needs two items and is NaN below that.

Recommendation lists are ``(users, Kmax)`` int arrays of item positions, best first; ``-1``
marks an empty slot (a user with fewer than Kmax rankable items). Item sets (test, train) are
either a CSR matrix ``(users, n_items)`` or a sequence of position arrays, one per user.

Example:
    >>> import numpy as np
    >>> top = np.array([[0, 1, 2]])
    >>> hits = hit_matrix(top, [np.array([1, 5])], n_items=6)
    >>> recall_at_k(hits, np.array([2]), 2), ndcg_at_k(hits, np.array([2]), 2)
    (array([0.5]), array([0.38685281]))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from memory.catalog import Catalog

ItemSets = sp.spmatrix | Sequence[Sequence[int]] | Sequence[np.ndarray]

STECK_ALPHA = 0.01
"""Steck's (2018) smoothing of the list distribution toward the user's: ``q~ = (1-a) q + a p``."""


# --------------------------------------------------------------------------- helpers
def as_csr(sets: ItemSets, n_items: int, n_users: int | None = None) -> sp.csr_matrix:
    """Item sets as a binary ``(users, n_items)`` CSR matrix with sorted indices."""
    if sp.issparse(sets):
        m = sp.csr_matrix(sets, dtype=np.float64, copy=True)
        if m.shape[1] != n_items:
            raise ValueError(f"item-set matrix has {m.shape[1]} columns but the catalog has {n_items} items")
    else:
        lens = [len(s) for s in sets]
        cols = (np.concatenate([np.asarray(s, dtype=np.int64) for s in sets]) if sum(lens)
                else np.zeros(0, np.int64))
        if len(cols) and (cols.min() < 0 or cols.max() >= n_items):
            raise ValueError(f"item positions must lie in [0, {n_items}); got {cols.min()}..{cols.max()}")
        rows = np.repeat(np.arange(len(lens)), lens)
        m = sp.csr_matrix((np.ones(len(cols)), (rows, cols)), shape=(len(lens), n_items))
    m.sum_duplicates()
    m.data[:] = 1.0
    m.sort_indices()
    if n_users is not None and m.shape[0] != n_users:
        raise ValueError(f"item sets have {m.shape[0]} rows but the lists have {n_users} users")
    return m


def hit_matrix(top: np.ndarray, truth: ItemSets, n_items: int) -> np.ndarray:
    """Boolean ``(users, Kmax)``: whether each list slot holds one of the user's truth items.

    Membership is a binary search of ``user * n_items + item`` keys, so memory stays
    O(nnz + users*K) however large the catalog.
    """
    top = np.asarray(top, dtype=np.int64)
    T = as_csr(truth, n_items, top.shape[0])
    rows = np.repeat(np.arange(T.shape[0], dtype=np.int64), np.diff(T.indptr))
    keys = rows * n_items + T.indices  # sorted: CSR rows in order, indices sorted within rows
    probe = np.arange(top.shape[0], dtype=np.int64)[:, None] * n_items + top
    if len(keys) == 0:
        return np.zeros(top.shape, bool)
    pos = np.minimum(np.searchsorted(keys, probe), len(keys) - 1)
    return (keys[pos] == probe) & (top >= 0)


def _truth_sizes(truth: ItemSets, n_items: int, n_users: int) -> np.ndarray:
    return np.diff(as_csr(truth, n_items, n_users).indptr)


def nanmean(values: np.ndarray) -> float:
    """Mean over finite values; NaN (not a warning) when there are none."""
    v = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(v)
    return float(v[ok].mean()) if ok.any() else float("nan")


# --------------------------------------------------------------------------- accuracy
def recall_at_k(hits: np.ndarray, n_truth: np.ndarray, k: int) -> np.ndarray:
    """Recall@K = |topK ∩ test| / min(K, |test|).

    Empty truth: NaN. Empty list (or empty slots): those slots are misses, so 0.0.
    """
    n_truth = np.asarray(n_truth, dtype=np.float64)
    found = hits[:, :k].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_truth > 0, found / np.minimum(k, n_truth), np.nan)


def ndcg_at_k(hits: np.ndarray, n_truth: np.ndarray, k: int) -> np.ndarray:
    """NDCG@K with binary gains: ``sum_r hit_r / log2(r + 2)`` over ranks r < K, divided by the
    ideal DCG of ``min(K, |test|)`` hits at the top.

    Empty truth: NaN. Empty list: 0.0.
    """
    n_truth = np.asarray(n_truth, dtype=np.int64)
    discounts = 1.0 / np.log2(np.arange(k) + 2.0)
    h = hits[:, :k]
    dcg = (h * discounts[: h.shape[1]]).sum(axis=1)
    ideal_cum = np.concatenate([[0.0], np.cumsum(discounts)])
    idcg = ideal_cum[np.minimum(k, n_truth)]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_truth > 0, dcg / idcg, np.nan)


def hit_rate_at_k(hits: np.ndarray, n_truth: np.ndarray, k: int) -> np.ndarray:
    """HR@K: 1.0 when at least one of the top K is a test item, else 0.0.

    Empty truth: NaN. Empty list: 0.0.
    """
    return np.where(np.asarray(n_truth) > 0, hits[:, :k].any(axis=1).astype(np.float64), np.nan)


# --------------------------------------------------------------------------- distributions
def user_profiles(history: ItemSets, category_dist: np.ndarray) -> np.ndarray:
    """``p(g|u)``: mean of ``p(g|i)`` over each user's (training) items, ``(users, genres)``.

    A user without items gets an all-zero row (so every metric that needs a profile is NaN).
    """
    H = as_csr(history, category_dist.shape[0])
    n = np.diff(H.indptr).astype(np.float64)
    sums = np.asarray(H @ category_dist)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n[:, None] > 0, sums / n[:, None], 0.0)


def list_profiles(top: np.ndarray, category_dist: np.ndarray, k: int) -> np.ndarray:
    """``q(g|L)``: mean of ``p(g|i)`` over the first ``k`` slots of each list (empty slots skipped).

    An empty list gets an all-zero row.
    """
    t = np.asarray(top, dtype=np.int64)[:, :k]
    valid = t >= 0
    rows = category_dist[np.where(valid, t, 0)] * valid[..., None]
    n = valid.sum(axis=1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n[:, None] > 0, rows.sum(axis=1) / n[:, None], 0.0)


def miscalibration(p: np.ndarray, q: np.ndarray, alpha: float = STECK_ALPHA) -> np.ndarray:
    """Steck's C_KL = ``sum_g p(g|u) log(p(g|u) / q~(g))``, ``q~ = (1-alpha) q + alpha p``, per row.

    Genres with ``p = 0`` contribute 0. Empty truth (a zero profile ``p``): NaN. Empty list
    (``q = 0``): ``q~ = alpha p``, the worst value ``log(1/alpha) * sum(p)``.
    """
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    qt = (1.0 - alpha) * q + alpha * p
    with np.errstate(invalid="ignore", divide="ignore"):
        terms = np.where(p > 0, p * np.log(p / qt), 0.0)
    return np.where(p.sum(axis=1) > 0, terms.sum(axis=1), np.nan)


def js_distance(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Jensen-Shannon *distance* (square root of the base-2 JS divergence), in [0, 1], per row.

    Rows are normalised to sum 1 first. Empty truth (``p`` sums to 0): NaN. Empty list (``q``
    sums to 0): 1.0, the maximum, since such a list reflects none of the user's tastes.
    """
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    ps, qs = p.sum(axis=1, keepdims=True), q.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        pn, qn = p / ps, q / qs
        m = 0.5 * (pn + qn)
        kl_pm = np.where(pn > 0, pn * np.log2(pn / m), 0.0).sum(axis=1)
        kl_qm = np.where(qn > 0, qn * np.log2(qn / m), 0.0).sum(axis=1)
    # clip: rounding can leave a tiny negative divergence for identical rows
    d = np.sqrt(np.clip(0.5 * (kl_pm + kl_qm), 0.0, 1.0))
    return np.where(ps[:, 0] > 0, np.where(qs[:, 0] > 0, d, 1.0), np.nan)


def label_distribution(labels: np.ndarray, n_labels: int, k: int) -> np.ndarray:
    """Share of each label among the first ``k`` slots, ``(users, n_labels)``; ``-1`` labels
    (empty slots, or items no persona explains) are not counted. An all-unlabelled list is a
    zero row."""
    lab = np.asarray(labels, dtype=np.int64)[:, :k]
    if lab.size and lab.max(initial=-1) >= n_labels:
        raise ValueError(f"persona label {lab.max()} is out of range for {n_labels} persona weights")
    valid = lab >= 0
    rows = np.repeat(np.arange(lab.shape[0]), valid.sum(axis=1))
    counts = np.zeros((lab.shape[0], n_labels))
    np.add.at(counts, (rows, lab[valid]), 1.0)
    n = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, counts / np.where(n > 0, n, 1.0), 0.0)


def tdd(profile: np.ndarray, list_dist: np.ndarray) -> np.ndarray:
    """Taste Distribution Distance as this project defines it: :func:`js_distance` between the
    user's taste distribution over the training history and over the list (genres or personas).

    Empty truth: NaN. Empty list: 1.0.
    """
    return js_distance(profile, list_dist)


# --------------------------------------------------------------------------- crowding out
def dominant_genres(profiles: np.ndarray) -> np.ndarray:
    """``d(u)``: the genre with the largest ``p(g|u)`` (lowest genre index on ties), -1 for a zero
    profile."""
    p = np.asarray(profiles, dtype=np.float64)
    return np.where(p.sum(axis=1) > 0, p.argmax(axis=1), -1)


def minority_recall_at_k(top: np.ndarray, truth: ItemSets, profiles: np.ndarray,
                         category_dist: np.ndarray, k: int) -> np.ndarray:
    """Minority-taste recall@K: ``sum_{i in test ∩ topK} m(i) / sum_{i in test} m(i)`` with
    ``m(i) = sum_{g != d(u)} p(g|i)`` and ``d(u)`` the user's dominant training genre.

    Empty truth (no test items, a zero training profile, or test items with no minority mass):
    NaN. Empty list: 0.0.
    """
    top = np.asarray(top, dtype=np.int64)
    C = np.asarray(category_dist, dtype=np.float64)
    n_users = top.shape[0]
    T = as_csr(truth, C.shape[0], n_users)
    d = dominant_genres(profiles)
    d_safe = np.maximum(d, 0)
    total = C.sum(axis=1)
    t_rows = np.repeat(np.arange(n_users), np.diff(T.indptr))
    m_test = total[T.indices] - C[T.indices, d_safe[t_rows]]
    denom = np.bincount(t_rows, weights=m_test, minlength=n_users)
    hits = hit_matrix(top[:, :k], T, C.shape[0])
    t_safe = np.maximum(top[:, :k], 0)
    m_top = total[t_safe] - C[t_safe, d_safe[:, None]]
    num = (m_top * hits).sum(axis=1)
    # mass below float noise counts as none: an item whose every genre is d(u) leaves ~1e-17
    ok = (denom > 1e-12) & (d >= 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ok, num / np.where(ok, denom, 1.0), np.nan)


# --------------------------------------------------------------------------- beyond accuracy
def intra_list_diversity(top: np.ndarray, item_embeddings: np.ndarray, k: int,
                         chunk: int = 4096) -> np.ndarray:
    """ILD@K: mean over pairs of distinct list items of ``1 - cos(e_a, e_b)``.

    Uses ``sum_{a != b} cos = |sum_a e_a|^2 - sum_a |e_a|^2`` over L2-normalised rows, so the cost
    is O(K * dim) per user. A zero embedding has cosine 0 to everything. Lists with fewer than 2
    items (after skipping empty slots): NaN.
    """
    E = np.asarray(item_embeddings, dtype=np.float64)
    norms = np.linalg.norm(E, axis=1, keepdims=True)
    En = np.where(norms > 0, E / np.where(norms > 0, norms, 1.0), 0.0)
    top = np.asarray(top, dtype=np.int64)[:, :k]
    out = np.empty(top.shape[0])
    for s in range(0, top.shape[0], chunk):
        t = top[s:s + chunk]
        valid = t >= 0
        vecs = En[np.maximum(t, 0)] * valid[..., None]
        total = vecs.sum(axis=1)
        sq = (vecs * vecs).sum(axis=(1, 2))
        n = valid.sum(axis=1).astype(np.float64)
        pairs = n * (n - 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_cos = ((total * total).sum(axis=1) - sq) / pairs
        out[s:s + chunk] = np.where(n >= 2, 1.0 - mean_cos, np.nan)
    return out


def catalog_coverage(top: np.ndarray, n_items: int, k: int) -> float:
    """Share of the catalog's items that appear in at least one user's top ``k``.

    No users or only empty lists: 0.0.
    """
    t = np.asarray(top, dtype=np.int64)[:, :k]
    t = t[t >= 0]
    return float(len(np.unique(t)) / n_items) if n_items else float("nan")


# --------------------------------------------------------------------------- everything at once
@dataclass(frozen=True)
class ListEvaluation:
    """Per-user metric arrays plus catalog coverage, from :func:`evaluate_lists`.

    ``result["NDCG@10"]`` gives the per-user array; ``result["Coverage@10"]`` the coverage float.
    """

    per_user: dict[str, np.ndarray]
    """Metric name -> float64 array with one value per user (NaN where undefined)."""
    coverage: dict[str, float] = field(default_factory=dict)
    """``Coverage@K`` -> share of the catalog recommended to at least one user."""

    def __getitem__(self, name: str) -> np.ndarray | float:
        if name in self.per_user:
            return self.per_user[name]
        if name in self.coverage:
            return self.coverage[name]
        raise KeyError(f"no metric {name!r}; available: {', '.join([*self.per_user, *self.coverage])}")

    def names(self) -> list[str]:
        """Every metric name, per-user ones first."""
        return [*self.per_user, *self.coverage]

    def means(self) -> dict[str, float]:
        """Mean over users of every per-user metric (NaN skipped), plus the coverages."""
        return {**{k: nanmean(v) for k, v in self.per_user.items()}, **self.coverage}


def evaluate_lists(top: np.ndarray, test: ItemSets, train: ItemSets, catalog: Catalog,
                   ks: Sequence[int] = (10, 20), item_embeddings: np.ndarray | None = None,
                   persona_labels: np.ndarray | None = None, persona_weights: np.ndarray | None = None,
                   alpha: float = STECK_ALPHA) -> ListEvaluation:
    """Every list metric of DESIGN.md section 3 at each K in ``ks``.

    Args:
        top: ``(users, Kmax)`` item positions, best first, ``-1`` for empty slots; Kmax >= max(ks).
        test: each user's test items (CSR or position arrays), row-aligned with ``top``.
        train: each user's training items, from which ``p(g|u)`` and ``d(u)`` are computed.
        catalog: gives ``p(g|i)`` (:meth:`Catalog.category_distribution`) and the catalog size.
        item_embeddings: ``(n_items, dim)``; adds ``ILD@K`` when given.
        persona_labels: ``(users, Kmax)`` index of the persona responsible for each list slot
            (-1: none), with ``persona_weights`` ``(users, P)`` the user's persona shares; adds
            ``TDD_persona@K`` when both are given.

    Returns:
        :class:`ListEvaluation` with ``Recall@K, NDCG@K, HR@K, C_KL@K, TDD_genre@K,
        MinorityRecall@K`` (+ ``TDD_persona@K``, ``ILD@K``) per user and ``Coverage@K``.

    Example:
        >>> from memory.catalog import Catalog, Item
        >>> cat = Catalog([Item(item_id=str(i), title=str(i), categories=(g,)) for i, g in enumerate("ABAB")])
        >>> r = evaluate_lists(np.array([[2, 3]]), [[2]], [[0]], cat, ks=(2,))
        >>> r["Recall@2"], r["HR@2"], r["Coverage@2"]
        (array([1.]), array([1.]), 0.5)
    """
    top = np.asarray(top, dtype=np.int64)
    if top.ndim != 2:
        raise ValueError(f"top must be (users, Kmax), got shape {top.shape}")
    n_users, kmax = top.shape
    n_items = len(catalog)
    if kmax < max(ks):
        raise ValueError(f"lists have {kmax} slots but metrics at K={max(ks)} were asked for")
    if (top >= n_items).any():
        raise ValueError(f"item position {top.max()} is outside the catalog of {n_items} items")
    if (persona_labels is None) != (persona_weights is None):
        raise ValueError("persona_labels and persona_weights go together: pass both or neither")
    C = catalog.category_distribution()
    T = as_csr(test, n_items, n_users)
    n_truth = np.diff(T.indptr)
    hits = hit_matrix(top, T, n_items)
    p = user_profiles(as_csr(train, n_items, n_users), C)
    if persona_weights is not None:
        persona_weights = np.asarray(persona_weights, dtype=np.float64)
        persona_labels = np.asarray(persona_labels, dtype=np.int64)
        if persona_weights.shape[0] != n_users or persona_labels.shape != top.shape:
            raise ValueError(f"persona_labels must be {top.shape} and persona_weights ({n_users}, P); got "
                             f"{persona_labels.shape} and {persona_weights.shape}")

    per_user: dict[str, np.ndarray] = {}
    coverage: dict[str, float] = {}
    for k in ks:
        q = list_profiles(top, C, k)
        per_user[f"Recall@{k}"] = recall_at_k(hits, n_truth, k)
        per_user[f"NDCG@{k}"] = ndcg_at_k(hits, n_truth, k)
        per_user[f"HR@{k}"] = hit_rate_at_k(hits, n_truth, k)
        per_user[f"C_KL@{k}"] = miscalibration(p, q, alpha)
        per_user[f"TDD_genre@{k}"] = tdd(p, q)
        if persona_weights is not None:
            per_user[f"TDD_persona@{k}"] = tdd(
                persona_weights, label_distribution(persona_labels, persona_weights.shape[1], k))
        per_user[f"MinorityRecall@{k}"] = minority_recall_at_k(top, T, p, C, k)
        if item_embeddings is not None:
            per_user[f"ILD@{k}"] = intra_list_diversity(top, item_embeddings, k)
        coverage[f"Coverage@{k}"] = catalog_coverage(top, n_items, k)
    return ListEvaluation(per_user, coverage)
