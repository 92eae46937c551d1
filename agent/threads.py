"""Which user owns which chat thread.

A thread belongs to the user whose first turn on it was committed: another user's message on
it is refused, by ``PluralAgent`` and by the graph the LangGraph server runs alike (the check is
the graph's first node; the claim is part of the turn's commit, in the same transaction as its
persona versions, memory events and exposure counts). A turn that fails half way leaves no
trace in the conversation because only the graph's last node writes the thread's state, after
the turn's commit.

:class:`InMemoryThreadRegistry` is the reference; :class:`SqliteThreadRegistry` keeps its table
in the persona store's SQLite file and joins its transactions.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from contextlib import contextmanager

from memory.errors import PluralError, UsageError


class ThreadOwnershipError(PluralError):
    """A thread id used by a user who does not own it."""

    def __init__(self, thread_id: str):
        super().__init__(f"thread {thread_id!r} belongs to another user; start a new thread (omit --thread)")


class ThreadRegistry(ABC):
    """Thread id -> owner, and how many turns were committed on it."""

    @staticmethod
    def check_id(thread_id: str) -> str:
        if not isinstance(thread_id, str) or not (1 <= len(thread_id) <= 64) or not all(
                c.isalnum() or c in "-_." for c in thread_id):
            raise UsageError("thread id", thread_id, "1-64 letters, digits, '-', '_' or '.'")
        return thread_id

    @abstractmethod
    def owner(self, thread_id: str) -> str | None:
        """The user who owns the thread, or None for a thread not started yet."""

    @abstractmethod
    def _record_turn(self, thread_id: str, user_id: str) -> None:
        """Insert the thread for ``user_id`` unless it exists, and count one committed turn."""

    @abstractmethod
    def turns(self, thread_id: str) -> int:
        """Turns committed on the thread (0 for an unknown thread)."""

    @abstractmethod
    def transaction(self):
        """Context manager: the claims inside are kept, or none is."""

    # ---- conveniences ------------------------------------------------------------------
    def check(self, thread_id: str, user_id: str) -> None:
        """Raise :class:`ThreadOwnershipError` when the thread belongs to another user (read only)."""
        owner = self.owner(self.check_id(thread_id))
        if owner is not None and owner != user_id:
            raise ThreadOwnershipError(thread_id)

    def claim(self, thread_id: str, user_id: str) -> None:
        """One committed turn of ``user_id`` on the thread: the first user to commit owns it; a
        thread of another user raises :class:`ThreadOwnershipError` (nothing written)."""
        self.check_id(thread_id)
        with self.transaction():
            self.check(thread_id, user_id)
            self._record_turn(thread_id, user_id)

    def close(self) -> None:
        """Release what the registry holds (nothing for these implementations: the persona store
        owns the connection)."""


class InMemoryThreadRegistry(ThreadRegistry):
    """Reference implementation: a dict, thread-safe."""

    def __init__(self):
        self._threads: dict[str, list] = {}
        self._lock = threading.RLock()

    def owner(self, thread_id: str) -> str | None:
        with self._lock:
            row = self._threads.get(thread_id)
            return row[0] if row else None

    def _record_turn(self, thread_id: str, user_id: str) -> None:
        with self._lock:
            self._threads.setdefault(thread_id, [user_id, 0])[1] += 1

    def turns(self, thread_id: str) -> int:
        with self._lock:
            row = self._threads.get(thread_id)
            return int(row[1]) if row else 0

    @contextmanager
    def transaction(self):
        with self._lock:
            saved = {k: list(v) for k, v in self._threads.items()}
            try:
                yield self
            except BaseException:
                self._threads = saved
                raise


class SqliteThreadRegistry(ThreadRegistry):
    """Table ``threads(thread_id, user_id, created_at, turns)`` in a SQLite persona store's file,
    through that store's connection and lock (so a claim joins the turn's transaction)."""

    def __init__(self, persona_store):
        self._store = persona_store
        with persona_store._lock:
            persona_store._con.execute("CREATE TABLE IF NOT EXISTS threads (thread_id TEXT PRIMARY KEY, "
                                       "user_id TEXT NOT NULL, created_at REAL, turns INTEGER DEFAULT 0)")

    def owner(self, thread_id: str) -> str | None:
        with self._store._lock:
            row = self._store._con.execute("SELECT user_id FROM threads WHERE thread_id=?", (thread_id,)).fetchone()
        return row[0] if row else None

    def _record_turn(self, thread_id: str, user_id: str) -> None:
        con = self._store._con
        con.execute("INSERT OR IGNORE INTO threads VALUES (?, ?, ?, 0)", (thread_id, user_id, time.time()))
        con.execute("UPDATE threads SET turns = turns + 1 WHERE thread_id=?", (thread_id,))

    def turns(self, thread_id: str) -> int:
        with self._store._lock:
            row = self._store._con.execute("SELECT turns FROM threads WHERE thread_id=?", (thread_id,)).fetchone()
        return int(row[0]) if row else 0

    def transaction(self):
        return self._store.transaction()


__all__ = ["InMemoryThreadRegistry", "SqliteThreadRegistry", "ThreadOwnershipError", "ThreadRegistry"]
