"""The interaction log: (user, item, rating, timestamp) rows, held column-wise.

Ids are strings everywhere outside matrices. ``InteractionLog`` is immutable: filters return
new logs.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import scipy.sparse as sp

from memory.catalog import Catalog
from memory.errors import UnknownItemError, UnknownUserError


def _id_sort_key(x: str):
    # numeric ids sort numerically ("2" before "10"), others lexically after them
    return (0, int(x), "") if x.isdigit() else (1, 0, x)


class InteractionLog:
    """Column-wise interaction rows.

    Example:
        >>> log = InteractionLog(users=["1", "1"], items=["10", "20"], ratings=[5, 3], timestamps=[1, 2])
        >>> len(log.positives(4))
        1
    """

    __slots__ = ("users", "items", "ratings", "timestamps", "_user_rows")

    def __init__(self, users, items, ratings=None, timestamps=None):
        self.users = np.asarray(users, dtype=object).astype(str).astype(object)
        self.items = np.asarray(items, dtype=object).astype(str).astype(object)
        n = len(self.users)
        if len(self.items) != n:
            raise ValueError(f"users has {n} rows but items has {len(self.items)}")
        self.ratings = (np.ones(n, dtype=np.float32) if ratings is None
                        else np.asarray(ratings, dtype=np.float32))
        self.timestamps = (np.zeros(n, dtype=np.int64) if timestamps is None
                           else np.asarray(timestamps, dtype=np.int64))
        if len(self.ratings) != n or len(self.timestamps) != n:
            raise ValueError("ratings and timestamps must have one value per row")
        self._user_rows: dict[str, np.ndarray] | None = None

    # ---- construction / export -------------------------------------------------------
    @classmethod
    def from_frame(cls, df) -> "InteractionLog":
        """From a frame with columns ``user, item`` and optionally ``rating, timestamp``."""
        return cls(df["user"].to_numpy(), df["item"].to_numpy(),
                   df["rating"].to_numpy() if "rating" in df else None,
                   df["timestamp"].to_numpy() if "timestamp" in df else None)

    def to_frame(self):
        """A pandas frame with columns ``user, item, rating, timestamp``."""
        import pandas as pd  # deferred: the CLI's fast path never needs pandas

        return pd.DataFrame({"user": self.users.astype(str), "item": self.items.astype(str),
                             "rating": self.ratings, "timestamp": self.timestamps})

    def __len__(self) -> int:
        return len(self.users)

    def __repr__(self) -> str:
        return f"InteractionLog({len(self)} rows, {len(self.user_ids())} users)"

    def take(self, mask_or_rows) -> "InteractionLog":
        """Rows selected by a boolean mask or an index array."""
        return InteractionLog(self.users[mask_or_rows], self.items[mask_or_rows],
                              self.ratings[mask_or_rows], self.timestamps[mask_or_rows])

    def concat(self, other: "InteractionLog") -> "InteractionLog":
        return InteractionLog(np.concatenate([self.users, other.users]), np.concatenate([self.items, other.items]),
                              np.concatenate([self.ratings, other.ratings]),
                              np.concatenate([self.timestamps, other.timestamps]))

    # ---- queries ---------------------------------------------------------------------
    def user_ids(self) -> list[str]:
        """Distinct users, numeric ids in numeric order."""
        return sorted(self._rows_by_user(), key=_id_sort_key)

    def _rows_by_user(self) -> dict[str, np.ndarray]:
        if self._user_rows is None:
            order = np.argsort(self.users, kind="stable")
            us = self.users[order]
            if len(us) == 0:
                self._user_rows = {}
            else:
                cuts = np.flatnonzero(us[1:] != us[:-1]) + 1
                starts = np.concatenate([[0], cuts])
                ends = np.concatenate([cuts, [len(us)]])
                self._user_rows = {us[s]: order[s:e] for s, e in zip(starts, ends)}
        return self._user_rows

    def has_user(self, user: str) -> bool:
        return str(user) in self._rows_by_user()

    def rows_of(self, user: str) -> np.ndarray:
        """Row indices of ``user`` in timestamp order; raises :class:`UnknownUserError`."""
        rows = self._rows_by_user().get(str(user))
        if rows is None:
            raise UnknownUserError(str(user), self.user_ids())
        return rows[np.argsort(self.timestamps[rows], kind="stable")]

    def for_user(self, user: str) -> "InteractionLog":
        return self.take(self.rows_of(user))

    def positives(self, threshold: float | None) -> "InteractionLog":
        """Rows with ``rating >= threshold`` (all rows when ``threshold`` is None)."""
        if threshold is None:
            return self
        return self.take(self.ratings >= threshold)

    def restrict_users(self, users: Iterable[str]) -> "InteractionLog":
        keep = np.isin(self.users, np.asarray(list(users), dtype=object))
        return self.take(keep)

    def check_items(self, catalog: Catalog, source: str = "interactions") -> None:
        """Fail on the first item id that is not in ``catalog``, naming the source and the row."""
        known = set(catalog.item_ids)
        bad = [k for k, i in enumerate(self.items) if i not in known]
        if bad:
            raise UnknownItemError(self.items[bad[0]], catalog.item_ids,
                                   where=f"catalog (first of {len(bad)} unknown in {source}, row {bad[0] + 1})")

    def to_csr(self, user_ids: list[str], catalog: Catalog, *, binary: bool = True) -> sp.csr_matrix:
        """A (len(user_ids), n_items) matrix; rows for users absent from the log are empty.

        Duplicated (user, item) pairs collapse to one entry (the last rating when ``binary`` is False).
        """
        upos = {u: k for k, u in enumerate(user_ids)}
        rows = np.fromiter((upos.get(u, -1) for u in self.users), dtype=np.int64, count=len(self))
        cols = catalog.indices(self.items, where="catalog")
        keep = rows >= 0
        vals = np.ones(keep.sum(), np.float32) if binary else self.ratings[keep]
        m = sp.coo_matrix((vals, (rows[keep], cols[keep])), shape=(len(user_ids), len(catalog))).tocsr()
        if binary:
            m.data[:] = 1.0  # duplicates were summed
        else:
            m.sum_duplicates()
        return m
