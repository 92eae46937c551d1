"""Per-user histories as item positions: what a user has seen and what they liked, in time order.

Built once from an :class:`InteractionLog` and a :class:`Catalog`; saved as one ``.npz`` so a
CLI call can load a single user's history in milliseconds. Interactions that arrive later are
appended (:meth:`HistoryIndex.append`) on top of the built arrays, and persisted by an
:class:`InteractionOverlay` (a SQLite file beside the ``.npz``), so no rebuild is needed.
"""

from __future__ import annotations

import io
import sqlite3
import threading
import time
from collections.abc import Sequence
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
        self._extra: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        # users appended after the build have no rows in the built arrays
        self._n_built = len(indptr) - 1

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

    def _arrays(self, user: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(items, ratings, timestamps) of the user, built rows then appended ones."""
        u = str(user)
        k = self._pos.get(u)
        if k is None:
            raise UnknownUserError(u, self.user_ids)
        if k < self._n_built:
            r = slice(self.indptr[k], self.indptr[k + 1])
            base = self.items[r], self.ratings[r], self.timestamps[r]
        else:
            base = (np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.int64))
        extra = self._extra.get(u)
        if extra is None:
            return base
        return tuple(np.concatenate([a, b]) for a, b in zip(base, extra))  # type: ignore[return-value]

    def seen(self, user: str) -> np.ndarray:
        """Distinct item positions the user interacted with (excluded from recommendations)."""
        return np.unique(self._arrays(user)[0])

    def positives(self, user: str) -> np.ndarray:
        """Distinct liked item positions, in order of their last interaction."""
        items, ratings, _ = self._arrays(user)
        if self.threshold is not None:
            items = items[ratings >= self.threshold]
        # keep the last occurrence of a repeated item, in time order
        _, last = np.unique(items[::-1], return_index=True)
        return items[::-1][np.sort(last)][::-1]

    def events(self, user: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(item positions, ratings, timestamps) in time order."""
        return self._arrays(user)

    def append(self, user: str, items: Sequence[int], ratings: Sequence[float], timestamps: Sequence[int]) -> None:
        """Add interactions (item positions) after the build; a new user id becomes known.

        They count in :meth:`seen`, :meth:`positives` and :meth:`events`; :meth:`positive_matrix`
        and :meth:`item_popularity` stay what the scorer was fitted on (the build's rows).
        """
        u = str(user)
        if u not in self._pos:
            self._pos[u] = len(self.user_ids)
            self.user_ids.append(u)
        new = (np.asarray(items, np.int64), np.asarray(ratings, np.float32), np.asarray(timestamps, np.int64))
        old = self._extra.get(u)
        merged = new if old is None else tuple(np.concatenate([a, b]) for a, b in zip(old, new))
        order = np.argsort(merged[2], kind="stable")  # time order, arrival order among equal stamps
        self._extra[u] = tuple(a[order] for a in merged)  # type: ignore[assignment]

    def appended_users(self) -> list[str]:
        """Users with interactions appended since the build."""
        return list(self._extra)

    def positive_matrix(self, n_items: int) -> sp.csr_matrix:
        """(users, items) binary matrix of the build's positives, rows in ``user_ids`` order (users
        appended later have empty rows)."""
        rows = np.repeat(np.arange(self._n_built), np.diff(self.indptr))
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
        """The build's arrays as ``.npz`` bytes (appended interactions live in the overlay)."""
        buf = io.BytesIO()
        np.savez(buf, user_ids=np.asarray(self.user_ids[:self._n_built], dtype=str), indptr=self.indptr, items=self.items,
                 ratings=self.ratings, timestamps=self.timestamps,
                 threshold=np.asarray([np.nan if self.threshold is None else self.threshold]))
        return buf.getvalue()

    @classmethod
    def load(cls, path: str | Path) -> "HistoryIndex":
        z = np.load(path, allow_pickle=False)
        th = float(z["threshold"][0])
        return cls([str(u) for u in z["user_ids"]], z["indptr"], z["items"], z["ratings"], z["timestamps"],
                   None if np.isnan(th) else th)


class InteractionOverlay:
    """Interactions added after a build, in a SQLite file (WAL; one transaction per batch).

    Item ids are stored (not positions), so the file reads the same whatever the catalog order.

    Example:
        >>> overlay = InteractionOverlay(data_dir / "interactions.sqlite")     # doctest: +SKIP
        >>> overlay.add("42", ["50", "181"], [5.0, 4.0])                          # doctest: +SKIP
        >>> overlay.apply(history, catalog)                                       # doctest: +SKIP
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.RLock()
        self._con = sqlite3.connect(self.path, check_same_thread=False, timeout=30, isolation_level=None)
        self._con.execute("PRAGMA journal_mode=WAL")
        self._con.execute("CREATE TABLE IF NOT EXISTS interactions (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
                          "user_id TEXT NOT NULL, item_id TEXT NOT NULL, rating REAL NOT NULL, ts INTEGER NOT NULL)")
        self._con.execute("CREATE INDEX IF NOT EXISTS interactions_user ON interactions (user_id, seq)")

    def add(self, user_id: str, item_ids: Sequence[str], ratings: Sequence[float],
            timestamps: Sequence[int] | None = None) -> list[int]:
        """Append interactions (one transaction); returns the timestamps stored."""
        stamps = list(timestamps) if timestamps is not None else [int(time.time())] * len(item_ids)
        rows = [(str(user_id), str(i), float(r), int(t)) for i, r, t in zip(item_ids, ratings, stamps)]
        with self._lock:
            self._con.execute("BEGIN IMMEDIATE")
            try:
                self._con.executemany("INSERT INTO interactions (user_id, item_id, rating, ts) VALUES (?, ?, ?, ?)",
                                      rows)
            except BaseException:
                self._con.execute("ROLLBACK")
                raise
            self._con.execute("COMMIT")
        return stamps

    def rows(self, user_id: str | None = None) -> list[tuple[str, str, float, int]]:
        """(user, item id, rating, timestamp) in arrival order (of one user, or of everyone)."""
        q, args = "SELECT user_id, item_id, rating, ts FROM interactions", []
        if user_id is not None:
            q, args = q + " WHERE user_id=?", [str(user_id)]
        with self._lock:
            return self._con.execute(q + " ORDER BY seq", args).fetchall()

    def apply(self, history: HistoryIndex, catalog: Catalog) -> int:
        """Append every stored interaction to ``history``; returns how many."""
        by_user: dict[str, list[tuple[str, float, int]]] = {}
        for u, i, r, t in self.rows():
            by_user.setdefault(u, []).append((i, r, t))
        for u, evs in by_user.items():
            history.append(u, catalog.indices([e[0] for e in evs]), [e[1] for e in evs], [e[2] for e in evs])
        return sum(len(v) for v in by_user.values())

    def close(self) -> None:
        self._con.close()
