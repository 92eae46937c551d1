"""Which user owns which chat thread, and the last checkpoint of each thread that completed.

A thread belongs to the user who started it: another user's message on it is refused. The
agent resumes every turn from the thread's last good checkpoint, so a turn that failed half
way leaves no trace in the conversation.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from memory.errors import PluralError, UsageError


class ThreadOwnershipError(PluralError):
    """A thread id used by a user who does not own it."""

    def __init__(self, thread_id: str):
        super().__init__(f"thread {thread_id!r} belongs to another user; start a new thread (omit --thread)")


class ThreadRegistry:
    """SQLite table ``threads(thread_id, user_id, created_at, last_checkpoint, turns)``."""

    def __init__(self, path: str | Path):
        self._lock = threading.Lock()
        self._con = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        self._con.execute("PRAGMA journal_mode=WAL")
        self._con.execute("CREATE TABLE IF NOT EXISTS threads (thread_id TEXT PRIMARY KEY, user_id TEXT NOT NULL, "
                          "created_at REAL, last_checkpoint TEXT, turns INTEGER DEFAULT 0)")

    @staticmethod
    def check_id(thread_id: str) -> str:
        if not isinstance(thread_id, str) or not (1 <= len(thread_id) <= 64) or not all(
                c.isalnum() or c in "-_." for c in thread_id):
            raise UsageError("thread id", thread_id, "1-64 letters, digits, '-', '_' or '.'")
        return thread_id

    def claim(self, thread_id: str, user_id: str) -> str | None:
        """Register the thread for ``user_id`` (or check it is theirs); returns its last good checkpoint."""
        self.check_id(thread_id)
        with self._lock:  # the first user to write to a thread owns it
            self._con.execute("INSERT OR IGNORE INTO threads VALUES (?, ?, ?, NULL, 0)", (thread_id, user_id, time.time()))
        return self.last_checkpoint(thread_id, user_id)

    def last_checkpoint(self, thread_id: str, user_id: str) -> str | None:
        """The thread's last good checkpoint, read only: None for a thread not started yet; a
        thread of another user raises :class:`ThreadOwnershipError`."""
        self.check_id(thread_id)
        with self._lock:
            row = self._con.execute("SELECT user_id, last_checkpoint FROM threads WHERE thread_id=?",
                                    (thread_id,)).fetchone()
        if row is None:
            return None
        if row[0] != user_id:
            raise ThreadOwnershipError(thread_id)
        return row[1]

    def completed(self, thread_id: str, checkpoint_id: str) -> None:
        with self._lock:
            self._con.execute("UPDATE threads SET last_checkpoint=?, turns=turns+1 WHERE thread_id=?",
                              (checkpoint_id, thread_id))

    def close(self) -> None:
        self._con.close()
