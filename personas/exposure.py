"""How often each item was shown to anyone: the state behind the exposure bonus of
``persona_calibrated`` (items few people were shown yet get a bonus, which widens catalog
coverage).

It is real, shared state: every list a person is shown (a chat turn, an API or CLI
``recommend``) adds its items, in the same transaction as the rest of that turn's writes, and
every ranking reads the current counts. ``plural eval rec`` replays its users through the same
counts, starting empty, so the coverage it reports is what the product does.

:class:`InMemoryExposureStore` is the reference; :class:`SqliteExposureStore` lives in the
persona store's SQLite file and joins its transactions (a turn's persona versions, memory
events and exposure are written together or not at all).

Example:
    >>> store = InMemoryExposureStore()
    >>> store.add(["10", "11", "10"])
    >>> store.counts(["10", "11", "12"]).tolist()
    [2, 1, 0]
"""

from __future__ import annotations

import copy
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Mapping, Sequence
from contextlib import contextmanager

import numpy as np


class ExposureStore(ABC):
    """Times each item id was shown to anyone."""

    @abstractmethod
    def counts(self, item_ids: Sequence[str]) -> np.ndarray:
        """(len(item_ids),) int64: the count of each id (0 for ids never shown)."""

    @abstractmethod
    def add(self, item_ids: Sequence[str]) -> None:
        """Count one showing of each id (an id listed twice counts twice)."""

    @abstractmethod
    def transaction(self):
        """Context manager: every ``add`` inside is kept, or none is."""

    @abstractmethod
    def reset(self) -> None:
        """Forget every count (a fresh exposure state, e.g. for an evaluation replay)."""

    @abstractmethod
    def total(self) -> int:
        """Showings counted so far (``sum`` of every count)."""


class _Positions:
    """Where each id stands in the id sequence last asked about. The recommender asks with the
    catalog's id tuple on every call, so the map is built once and the counts are scattered into
    place: the cost follows the items ever shown, not the catalog."""

    def __init__(self):
        self._ids: Sequence[str] | None = None
        self._pos: dict[str, int] = {}
        self._unique = True

    def gather(self, item_ids: Sequence[str], have: Mapping[str, int]) -> np.ndarray:
        """(len(item_ids),) int64: ``have[id]`` (0 when absent) for each id, in order."""
        if item_ids is not self._ids or not isinstance(item_ids, tuple):  # a list may change in place
            ids = [str(i) for i in item_ids]
            self._pos = {i: k for k, i in enumerate(ids)}
            self._unique, self._ids = len(self._pos) == len(ids), item_ids
        if not self._unique or len(have) > len(self._pos):  # an id listed twice, or few ids asked about
            return np.fromiter((have.get(str(i), 0) for i in item_ids), dtype=np.int64, count=len(item_ids))
        out = np.zeros(len(item_ids), dtype=np.int64)
        pos = self._pos
        for i, n in have.items():
            k = pos.get(i)
            if k is not None:
                out[k] = n
        return out


class InMemoryExposureStore(ExposureStore):
    """Reference implementation: a counter, thread-safe."""

    def __init__(self):
        self._counts: Counter[str] = Counter()
        self._lock = threading.RLock()
        self._positions = _Positions()

    def counts(self, item_ids: Sequence[str]) -> np.ndarray:
        with self._lock:
            return self._positions.gather(item_ids, self._counts)

    def add(self, item_ids: Sequence[str]) -> None:
        with self._lock:
            self._counts.update(str(i) for i in item_ids)

    @contextmanager
    def transaction(self):
        with self._lock:
            saved = copy.copy(self._counts)
            try:
                yield self
            except BaseException:
                self._counts = saved
                raise

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()

    def total(self) -> int:
        with self._lock:
            return int(sum(self._counts.values()))


class SqliteExposureStore(ExposureStore):
    """Counts in a table of a SQLite persona store's file, through that store's connection and
    lock: inside ``persona_store.transaction()`` the counts are part of the same transaction."""

    def __init__(self, persona_store):
        self._store = persona_store
        with persona_store._lock:
            persona_store._con.execute(
                "CREATE TABLE IF NOT EXISTS exposure (item_id TEXT PRIMARY KEY, n INTEGER NOT NULL)")
        self._positions = _Positions()
        self._cached: tuple[tuple[int, int], dict[str, int]] | None = None
        self._gathered: tuple[dict, Sequence[str], np.ndarray] | None = None

    @property
    def _con(self) -> sqlite3.Connection:
        return self._store._con

    def counts(self, item_ids: Sequence[str]) -> np.ndarray:
        with self._store._lock:
            table = self._table()
            last = self._gathered
            if last is not None and last[0] is table and last[1] is item_ids and isinstance(item_ids, tuple):
                return last[2].copy()  # the same table, the same catalogue tuple: the same answer
            out = self._positions.gather(item_ids, table)
            self._gathered = (table, item_ids, out) if self._cached is not None else None
            return out.copy() if self._gathered is not None else out

    def _table(self) -> dict[str, int]:
        """Every stored count. Re-read only when the file changed since the last read: another
        connection committed (``PRAGMA data_version``) or this one wrote (``total_changes``);
        inside an open transaction always read, never kept (a rollback would leave it stale).
        A table of 25,000 shown items costs ~38 ms to read, so repeated recommends of a
        catalogue that big must not read it each time."""
        con = self._con
        stamp = (con.execute("PRAGMA data_version").fetchone()[0], con.total_changes)
        if con.in_transaction or self._cached is None or self._cached[0] != stamp:
            table = dict(con.execute("SELECT item_id, n FROM exposure").fetchall())
            self._cached = None if con.in_transaction else (stamp, table)
            return table
        return self._cached[1]

    def add(self, item_ids: Sequence[str]) -> None:
        rows = list(Counter(str(i) for i in item_ids).items())
        if not rows:
            return
        with self._store.transaction():
            self._con.executemany("INSERT INTO exposure VALUES (?, ?) ON CONFLICT(item_id) DO UPDATE SET n = n + ?",
                                  [(i, n, n) for i, n in rows])

    def transaction(self):
        return self._store.transaction()

    def reset(self) -> None:
        with self._store.transaction():
            self._con.execute("DELETE FROM exposure")

    def total(self) -> int:
        with self._store._lock:
            (n,) = self._con.execute("SELECT COALESCE(SUM(n), 0) FROM exposure").fetchone()
        return int(n)


__all__ = ["ExposureStore", "InMemoryExposureStore", "SqliteExposureStore"]
