"""Splits: determinism, disjointness, the positive/seen distinction, validation, predefined splits."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from pydantic import ValidationError

from evals.splits import SplitConfig, rank_unseen, split_dataset, split_interactions, validation_split
from memory.catalog import Catalog, Item
from memory.dataset import Dataset
from memory.interactions import InteractionLog

N_ITEMS = 60


def _log(seed: int = 0, n_users: int = 40) -> InteractionLog:
    """Each user rates 4..30 distinct items with ratings 1..5 at distinct timestamps."""
    rng = np.random.default_rng(seed)
    users, items, ratings, ts = [], [], [], []
    for u in range(n_users):
        n = int(rng.integers(4, 31))
        its = rng.choice(N_ITEMS, size=n, replace=False)
        users += [str(u + 1)] * n
        items += [str(i) for i in its]
        ratings += rng.integers(1, 6, size=n).tolist()
        ts += (rng.permutation(n) + 1000 * u).tolist()
    return InteractionLog(users, items, ratings, ts)


def _catalog() -> Catalog:
    return Catalog([Item(item_id=str(i), title=f"item {i}", categories=("A",)) for i in range(N_ITEMS)])


def _pairs(log: InteractionLog) -> set[tuple[str, str]]:
    return set(zip(log.users.tolist(), log.items.tolist()))


def _n_pos(log: InteractionLog, user: str, thr: float = 4.0) -> int:
    u = log.for_user(user)
    return len(set(u.items[u.ratings >= thr].tolist()))


def test_random_split_is_deterministic_and_seed_dependent():
    log = _log()
    a, b = split_interactions(log, SplitConfig(seed=7)), split_interactions(log, SplitConfig(seed=7))
    assert _pairs(a.test) == _pairs(b.test) and a.users == b.users
    assert _pairs(split_interactions(log, SplitConfig(seed=8)).test) != _pairs(a.test)


def test_split_does_not_depend_on_row_order():
    log = _log()
    shuffled = log.take(np.random.default_rng(3).permutation(len(log)))
    assert _pairs(split_interactions(log).test) == _pairs(split_interactions(shuffled).test)


def test_train_and_test_are_disjoint_and_cover_the_log():
    log = _log()
    s = split_interactions(log)
    assert not _pairs(s.train) & _pairs(s.test)
    assert len(s.train) + len(s.test) == len(log)  # no duplicates here, so nothing is dropped
    assert (s.test.ratings >= 4).all()
    assert (s.train_positives.ratings >= 4).all()
    assert len(s.train_positives) == int((s.train.ratings >= 4).sum())
    # non-positive rows always stay in train, as seen items
    assert (log.ratings < 4).sum() == (s.train.ratings < 4).sum()


def test_test_size_and_eligibility():
    log = _log()
    cfg = SplitConfig(min_positives=5, test_fraction=0.2)
    s = split_interactions(log, cfg)
    for u in log.user_ids():
        n = _n_pos(log, u)
        n_test = len(s.test.for_user(u)) if s.test.has_user(u) else 0
        if n < 5:
            assert u not in s.users and n_test == 0
            assert len(s.train.for_user(u)) == len(log.for_user(u))  # all of it stays in train
        else:
            assert u in s.users
            assert n_test == min(max(1, int(np.floor(0.2 * n + 0.5))), n - 1)
    assert list(s.users) == sorted(s.users, key=int)


def test_half_rounds_up():
    log = InteractionLog(["u"] * 10, [str(i) for i in range(10)], [5] * 10, range(10))
    assert len(split_interactions(log, SplitConfig(test_fraction=0.25)).test) == 3  # 2.5 -> 3


def test_duplicate_rows_of_a_test_item_all_leave_train():
    # item "a" rated 2 then 5: once "a" is held out, no row of it may stay in train as "seen"
    items = ["a", "a", "b", "c", "d", "e"]
    log = InteractionLog(["u"] * 6, items, [2, 5, 5, 5, 5, 5], [1, 2, 3, 4, 5, 6])
    for seed in range(20):
        s = split_interactions(log, SplitConfig(seed=seed))
        assert not _pairs(s.train) & _pairs(s.test)
        assert len(s.test) == 1


def test_temporal_split_holds_out_the_latest_positives():
    log = _log()
    s = split_interactions(log, SplitConfig(strategy="temporal", leave_last=2))
    for u in s.users:
        pos = log.for_user(u)
        pos = pos.take(pos.ratings >= 4)
        latest = set(pos.items[np.argsort(-pos.timestamps, kind="stable")[:2]].tolist())
        assert set(s.test.for_user(u).items.tolist()) == latest
    frac = split_interactions(log, SplitConfig(strategy="temporal"))
    u = frac.users[0]
    assert len(frac.test.for_user(u)) == min(max(1, int(np.floor(0.2 * _n_pos(log, u) + 0.5))), _n_pos(log, u) - 1)


def test_validation_split_never_touches_test():
    log = _log(n_users=60)
    s = split_interactions(log)
    v = validation_split(s)
    assert not _pairs(v.test) & _pairs(s.test)
    assert not _pairs(v.train) & _pairs(s.test)
    assert _pairs(v.train) | _pairs(v.test) == _pairs(s.train)
    assert not _pairs(v.train) & _pairs(v.test)
    assert len(v.users) > 0
    assert _pairs(validation_split(s).test) == _pairs(v.test)  # deterministic too


def test_predefined_split():
    train = InteractionLog(["1", "1", "2"], ["0", "1", "2"], [5, 2, 4], [1, 2, 3])
    test = InteractionLog(["1", "1", "1", "2", "3"], ["2", "3", "1", "0", "0"], [5, 1, 4, 2, 5], [4, 5, 6, 7, 8])
    ds = Dataset("toy", _catalog(), train, test=test)
    s = split_dataset(ds)
    assert s.predefined
    # user 1: "3" is not positive, "1" was already seen in train; user 2's only test row is negative;
    # user 3 has no training history
    assert _pairs(s.test) == {("1", "2")}
    assert s.users == ("1",)
    assert len(s.train) == 3 and len(s.train_positives) == 2
    v = validation_split(s)
    assert not _pairs(v.test) & _pairs(s.test)


def test_arrays_shapes_and_seen_excludes_test():
    log = _log()
    s = split_interactions(log)
    a = s.arrays(_catalog())
    n_eval = len(s.users)
    assert a.seen.shape == a.history.shape == a.test.shape == (n_eval, N_ITEMS)
    assert a.train_matrix.shape == (len(a.train_users), N_ITEMS)
    assert a.seen.multiply(a.test).nnz == 0
    assert (a.history.multiply(a.seen) != a.history).nnz == 0  # history is a subset of seen
    assert a.test.nnz == len(s.test)


def test_config_validation_and_roundtrip():
    cfg = SplitConfig(seed=3, strategy="temporal", leave_last=1)
    assert SplitConfig.model_validate(cfg.model_dump()) == cfg
    with pytest.raises(ValidationError):
        SplitConfig(test_fraction=1.0)
    with pytest.raises(ValidationError):
        SplitConfig(strategy="by-time")
    with pytest.raises(ValidationError):
        SplitConfig(seeed=1)


def test_rank_unseen_excludes_seen_breaks_ties_and_pads():
    scores = np.array([[1.0, 5.0, 5.0, 0.0, 5.0], [1.0, 2.0, 3.0, 4.0, 5.0]], dtype=np.float32)
    seen = sp.csr_matrix(np.array([[0, 1, 0, 0, 0], [1, 1, 1, 0, 1]]))
    top = rank_unseen(scores, seen, 3)
    assert top.tolist() == [[2, 4, 0], [3, -1, -1]]
    assert scores[0, 1] == 5.0  # input left alone
    # ties across the cut-off go to the lower position
    assert rank_unseen(np.zeros((1, 6)), None, 2).tolist() == [[0, 1]]
    assert rank_unseen(np.array([[np.nan, 1.0]]), None, 2).tolist() == [[1, -1]]
    # agrees with a full stable sort on random data
    rng = np.random.default_rng(0)
    r = rng.integers(0, 5, size=(30, 40)).astype(np.float32)
    full = np.argsort(-r, axis=1, kind="stable")[:, :7]
    assert (rank_unseen(r, None, 7) == full).all()
