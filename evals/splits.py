"""Train/test splits for offline evaluation, and the arrays every metric reads.

A split holds out some of each eligible user's *positive* items (rating >= threshold) as the
test set. Everything else the user did stays in train: non-positive ratings are "seen" (never
ranked, since full ranking is over items outside the user's training history) but are not
positives, so they neither feed the models' positive matrix nor count as hits.

The unit held out is a (user, item) pair, not a row: when an item occurs several times in a
user's log, all of its rows leave train together, so a test item can never also be "seen".

Example:
    >>> from memory.interactions import InteractionLog
    >>> log = InteractionLog(["u"] * 6, list("abcdef"), [5, 5, 4, 4, 5, 2], range(6))
    >>> s = split_interactions(log, SplitConfig(seed=0))
    >>> len(s.test), len(s.train), s.users
    (1, 5, ('u',))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
from pydantic import BaseModel, ConfigDict, Field

from memory.catalog import Catalog
from memory.dataset import Dataset
from memory.interactions import InteractionLog

# Independent random streams derived from one seed: the test split and the validation split
# carved out of its train part must not reuse the same random keys.
_TEST_STREAM = 0
_VALIDATION_STREAM = 1


class SplitConfig(BaseModel):
    """How to hold out test positives. The defaults are the project's ML-100K protocol."""

    model_config = ConfigDict(extra="forbid")

    positive_threshold: float | None = 4.0
    """Rows with ``rating >= positive_threshold`` are positives; None makes every row positive
    (implicit feedback)."""
    min_positives: int = Field(5, ge=2)
    """Users with fewer distinct positive items are not evaluated (all their rows stay in train)."""
    test_fraction: float = Field(0.2, gt=0, lt=1)
    """Share of each evaluated user's positive items held out: ``round(fraction * n)`` (halves
    round up), clipped so that at least one positive is held out and at least one stays in train."""
    seed: int = 0
    """Seed of the random holdout (and of tie-breaking in the temporal one)."""
    strategy: Literal["random", "temporal"] = "random"
    """``random``: a seeded random subset of each user's positives; ``temporal``: the user's
    latest positives by timestamp (ties broken by the seeded random key)."""
    leave_last: int | None = Field(None, ge=1)
    """Temporal strategy only: hold out exactly this many latest positives per user (still
    clipped to leave one in train); None uses ``test_fraction``."""


@dataclass(frozen=True)
class Split:
    """The result of a split. Logs keep external ids; :meth:`arrays` turns them into matrices."""

    train: InteractionLog
    """Every training row (positive or not): the user's history, excluded from ranking."""
    train_positives: InteractionLog
    """Training rows with a positive rating: what models are fitted on and what ``p(g|u)`` reads."""
    test: InteractionLog
    """Held-out positive rows of the evaluated users."""
    users: tuple[str, ...]
    """Evaluated users (each has at least one test item), numeric ids in numeric order."""
    config: SplitConfig
    """The configuration that produced the split."""
    predefined: bool = False
    """True when the test set came from a dataset's own test file."""

    def arrays(self, catalog: Catalog) -> "SplitArrays":
        """Item-position matrices for fitting, ranking and metrics (see :class:`SplitArrays`)."""
        train_users = self.train_positives.user_ids()
        eval_users = list(self.users)
        return SplitArrays(
            users=eval_users,
            train_users=train_users,
            train_matrix=self.train_positives.to_csr(train_users, catalog),
            seen=self.train.to_csr(eval_users, catalog),
            history=self.train_positives.to_csr(eval_users, catalog),
            test=self.test.to_csr(eval_users, catalog),
        )


@dataclass(frozen=True)
class SplitArrays:
    """A split as sparse binary matrices over catalog positions.

    ``seen``, ``history`` and ``test`` share the row order ``users``; ``train_matrix`` has one row
    per user with a training positive (evaluated or not), in the order ``train_users``.
    """

    users: list[str]
    """Evaluated users: the row order of ``seen``, ``history`` and ``test``."""
    train_users: list[str]
    """Row order of ``train_matrix``."""
    train_matrix: sp.csr_matrix
    """(train users, items) training positives: what a scorer is fitted on."""
    seen: sp.csr_matrix
    """(evaluated users, items) every training interaction: excluded from ranking."""
    history: sp.csr_matrix
    """(evaluated users, items) training positives: the input a scorer scores from, and the
    items ``p(g|u)`` is computed over."""
    test: sp.csr_matrix
    """(evaluated users, items) held-out positives."""


def _round_half_up(x: np.ndarray) -> np.ndarray:
    # np.round rounds halves to even (2.5 -> 2); a split fraction should not depend on parity
    return np.floor(x + 0.5).astype(np.int64)


def _holdout_pairs(log: InteractionLog, config: SplitConfig, stream: int) -> pd.DataFrame:
    """Distinct positive (user, item) pairs of eligible users, with a boolean ``test`` column."""
    df = log.to_frame()
    if config.positive_threshold is not None:
        df = df[df["rating"] >= config.positive_threshold]
    # sorting first makes the random keys independent of the log's row order
    pairs = (df.groupby(["user", "item"], sort=True, as_index=False)
               .agg(ts=("timestamp", "max")))
    n_pos = pairs.groupby("user")["item"].transform("size").to_numpy()
    pairs = pairs[n_pos >= config.min_positives].reset_index(drop=True)
    n = pairs.groupby("user")["item"].transform("size").to_numpy()
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, stream]))
    pairs["key"] = rng.random(len(pairs))
    if config.strategy == "random":
        order = pairs.sort_values(["user", "key"], kind="stable").index
        n_test = _round_half_up(config.test_fraction * n)
    else:
        order = pairs.assign(neg_ts=-pairs["ts"]).sort_values(["user", "neg_ts", "key"], kind="stable").index
        n_test = (np.full(len(pairs), config.leave_last, np.int64) if config.leave_last is not None
                  else _round_half_up(config.test_fraction * n))
    n_test = np.clip(n_test, 1, n - 1)
    rank = np.empty(len(pairs), np.int64)
    rank[order] = pairs.loc[order].groupby("user", sort=False).cumcount().to_numpy()
    pairs["test"] = rank < n_test
    return pairs


def _pair_keys(users: np.ndarray, items: np.ndarray) -> np.ndarray:
    return np.char.add(np.char.add(users.astype(str), "\x1f"), items.astype(str))


def split_interactions(log: InteractionLog, config: SplitConfig | None = None, *,
                       _stream: int = _TEST_STREAM) -> Split:
    """Hold out test positives from one interaction log (see :class:`SplitConfig`).

    Deterministic for a given config: the same log (in any row order) gives the same split.
    """
    config = config or SplitConfig()
    pairs = _holdout_pairs(log, config, _stream)
    held = pairs[pairs["test"]]
    held_keys = _pair_keys(held["user"].to_numpy(), held["item"].to_numpy())
    row_keys = _pair_keys(log.users, log.items)
    in_test_pair = np.isin(row_keys, held_keys)
    train = log.take(~in_test_pair)
    if config.positive_threshold is not None:
        is_pos = log.ratings >= config.positive_threshold
    else:
        is_pos = np.ones(len(log), bool)
    test = log.take(in_test_pair & is_pos)
    return Split(train=train, train_positives=train.positives(config.positive_threshold), test=test,
                 users=tuple(test.user_ids()), config=config)


def split_dataset(dataset: Dataset, config: SplitConfig | None = None) -> Split:
    """Split a dataset: its own test file when it has one, else :func:`split_interactions`.

    With a predefined split (``dataset.test`` set), the test set is the positives of the test
    file, restricted to users with training history; a test item the user already has in train
    is dropped (it is excluded from ranking, so it could never be hit). Every such user with a
    remaining test positive is evaluated; ``min_positives`` and ``test_fraction`` do not apply.
    """
    config = config or SplitConfig()
    if dataset.test is None:
        return split_interactions(dataset.interactions, config)
    train = dataset.interactions
    test = dataset.test.positives(config.positive_threshold)
    test = test.take(np.isin(test.users, np.asarray(train.user_ids(), dtype=object)))
    already_seen = np.isin(_pair_keys(test.users, test.items), _pair_keys(train.users, train.items))
    test = test.take(~already_seen)
    return Split(train=train, train_positives=train.positives(config.positive_threshold), test=test,
                 users=tuple(test.user_ids()), config=config, predefined=True)


def validation_split(split: Split) -> Split:
    """Carve a validation split out of ``split.train``, the same way the test split was made.

    Only the training rows are read, so no test item can appear in it: tune hyperparameters on
    the result, then refit on ``split.train`` and report on ``split.test``. It uses a random stream
    independent of the test split's (predefined splits use the config's strategy on train).
    """
    return split_interactions(split.train, split.config, _stream=_VALIDATION_STREAM)


def rank_unseen(scores: np.ndarray, seen: sp.csr_matrix | None, k: int) -> np.ndarray:
    """The top-``k`` item positions per row of ``scores``, skipping each row's ``seen`` items.

    Full ranking: every unseen item is a candidate. Ties are broken by the lower item position
    (exactly, also at the cut-off); NaN scores rank like ``-inf``. Rows with fewer than ``k``
    rankable items are padded with ``-1``. ``scores`` is not modified.

    Example:
        >>> import numpy as np, scipy.sparse as sp
        >>> rank_unseen(np.array([[3., 2., 1.]]), sp.csr_matrix(np.array([[1, 0, 0]])), 2)
        array([[1, 2]])
    """
    s = np.array(scores, dtype=np.float32, copy=True)
    if s.ndim != 2:
        raise ValueError(f"scores must be (users, items), got shape {s.shape}")
    n_users, n_items = s.shape
    s[np.isnan(s)] = -np.inf
    if seen is not None:
        if seen.shape != s.shape:
            raise ValueError(f"scores are {s.shape} but seen is {seen.shape}; both must be (users, items)")
        rows, cols = seen.nonzero()
        s[rows, cols] = -np.inf
    k_eff = min(k, n_items)
    if k_eff <= 0:
        return np.full((n_users, max(k, 0)), -1, np.int64)
    # O(items) per user: the k-th largest value is the cut-off; everything above it is in, and the
    # cut-off value itself fills the remaining slots by lowest position, so ties are exact.
    kth = -np.partition(-s, kth=k_eff - 1, axis=1)[:, k_eff - 1:k_eff]
    above = s > kth
    at = s == kth
    room = k_eff - above.sum(axis=1, keepdims=True)
    chosen = above | (at & (np.cumsum(at, axis=1) <= room))
    idx = np.nonzero(chosen)[1].reshape(n_users, k_eff)
    vals = np.take_along_axis(s, idx, axis=1)
    order = np.lexsort((idx, -vals), axis=1)
    top = np.take_along_axis(idx, order, axis=1)
    top = np.where(np.isneginf(np.take_along_axis(vals, order, axis=1)), -1, top).astype(np.int64)
    if k_eff < k:
        top = np.concatenate([top, np.full((n_users, k - k_eff), -1, np.int64)], axis=1)
    return top
