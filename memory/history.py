"""Per-user histories as item positions: what a user has seen and what they liked, in time order.

Built once from an :class:`InteractionLog` and a :class:`Catalog`; saved as one ``.npz`` so a
CLI call can load a single user's history in milliseconds.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from memory.catalog import Catalog
from memory.errors import UnknownUserError
from memory.interactions import InteractionLog, _id_sort_key


class HistoryIndex:
    """Users' interactions grouped by user, sorted by time (CSR-like arrays)."""

    def __init__(self, user_ids: list[str], indptr: np.ndarray, items: np.ndarray, ratings: np.ndarray,
                 timestamps: np.ndarray, threshold: float | None):
        self.user_ids = list(user_ids)
        self._pos = {u: k for k, u in enumerate(self.user_ids)}
        self.indptr, self.items, self.ratings, self.timestamps = indptr, items, ratings, timestamps
        self.threshold = threshold
        """Ratings at or above this are positives (None: every interaction is positive)."""

    @classmethod
    def build(cls, log: InteractionLog, catalog: Catalog, threshold: float | None) -> "HistoryIndex":
        users = sorted(set(log.users), key=_id_sort_key)
        upos = {u: k for k, u in enumerate(users)}
        urow = np.fromiter((upos[u] for u in log.users), dtype=np.int64, count=len(log))
        ipos = catalog.indices(log.items)
        order = np.lexsort((ipos, log.timestamps, urow))
        counts = np.bincount(urow, minlength=len(users))
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return cls(users, indptr, ipos[order], log.ratings[order].astype(np.float32),
                   log.timestamps[order].astype(np.int64), threshold)

    def __contains__(self, user: object) -> bool:
        return str(user) in self._pos

    def _rows(self, user: str) -> slice:
        k = self._pos.get(str(user))
        if k is None:
            raise UnknownUserError(str(user), self.user_ids)
        return slice(self.indptr[k], self.indptr[k + 1])

    def seen(self, user: str) -> np.ndarray:
        """Distinct item positions the user interacted with (excluded from recommendations)."""
        return np.unique(self.items[self._rows(user)])

    def positives(self, user: str) -> np.ndarray:
        """Distinct liked item positions, in order of their last interaction."""
        r = self._rows(user)
        items, ratings = self.items[r], self.ratings[r]
        if self.threshold is not None:
            items = items[ratings >= self.threshold]
        # keep the last occurrence of a repeated item, in time order
        _, last = np.unique(items[::-1], return_index=True)
        return items[::-1][np.sort(last)][::-1]

    def events(self, user: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(item positions, ratings, timestamps) in time order."""
        r = self._rows(user)
        return self.items[r], self.ratings[r], self.timestamps[r]

    def positive_matrix(self, n_items: int) -> sp.csr_matrix:
        """(users, items) binary matrix of positives, rows in ``user_ids`` order."""
        rows = np.repeat(np.arange(len(self.user_ids)), np.diff(self.indptr))
        keep = np.ones(len(self.items), bool) if self.threshold is None else self.ratings >= self.threshold
        m = sp.csr_matrix((np.ones(keep.sum(), np.float32), (rows[keep], self.items[keep])),
                          shape=(len(self.user_ids), n_items))
        m.data[:] = 1.0
        return m

    def item_popularity(self, n_items: int) -> np.ndarray:
        """Number of users who liked each item."""
        return np.asarray(self.positive_matrix(n_items).sum(axis=0)).ravel()

    # ---- persistence -----------------------------------------------------------------
    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, user_ids=np.asarray(self.user_ids, dtype=str), indptr=self.indptr, items=self.items,
                 ratings=self.ratings, timestamps=self.timestamps,
                 threshold=np.asarray([np.nan if self.threshold is None else self.threshold]))
        return buf.getvalue()

    @classmethod
    def load(cls, path: str | Path) -> "HistoryIndex":
        z = np.load(path, allow_pickle=False)
        th = float(z["threshold"][0])
        return cls([str(u) for u in z["user_ids"]], z["indptr"], z["items"], z["ratings"], z["timestamps"],
                   None if np.isnan(th) else th)
