"""Where personas live: the current set per user plus every version, for audit and rollback.

``PersonaStore`` has an in-memory reference implementation and a SQLite one (WAL, one
transaction per write, so a write is all there or absent). Embeddings are stored as float32
blobs beside the JSON, which keeps one user's load fast.
"""

from __future__ import annotations

import copy
import json
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from memory.errors import PluralError, UnknownUserError, UsageError
from personas.model import Persona, PersonaSet, PersonaVersion, utcnow

_CONTENT_FIELDS = ("name", "description", "weight", "evidence", "categories", "text_source")


def _changed(old: Persona | None, new: Persona) -> bool:
    if old is None or any(getattr(old, f) != getattr(new, f) for f in _CONTENT_FIELDS):
        return True
    # embeddings are stored as float32: compare at that precision
    a, b = np.asarray(old.embedding, np.float32), np.asarray(new.embedding, np.float32)
    return a.shape != b.shape or not np.array_equal(a, b)


class PersonaConflictError(PluralError):
    """A write prepared against a persona version that changed meanwhile; nothing was written."""

    def __init__(self, user_id: str, persona_id: str, expected: int, found: int | None):
        super().__init__(f"persona {persona_id!r} of user {user_id!r} changed meanwhile (version {found}, "
                         f"expected {expected}); nothing was written")
        self.user_id, self.persona_id, self.expected, self.found = user_id, persona_id, expected, found


class PersonaStore(ABC):
    """Current personas per user and their version history."""

    @abstractmethod
    def get(self, user_id: str) -> PersonaSet | None:
        """The user's current personas, or None if never induced."""

    @abstractmethod
    def _write(self, items: list[tuple[PersonaSet, list[PersonaVersion]]]) -> None:
        """Atomically replace the current sets and append the given versions."""

    @abstractmethod
    def versions(self, user_id: str, persona_id: str | None = None) -> list[PersonaVersion]:
        """Every recorded version, oldest first (of one persona, or of all the user's personas)."""

    @abstractmethod
    def users(self) -> list[str]:
        """Users with personas."""

    @abstractmethod
    def transaction(self):
        """Context manager: every write inside is kept, or none is (an exception escaping undoes them)."""

    # ---- concrete conveniences ---------------------------------------------------------
    def put_many(self, sets: Iterable[PersonaSet], reason: str = "induction", feedback: dict | None = None,
                 expected_versions: Mapping[str, Mapping[str, int]] | None = None) -> None:
        """Store several users' sets in one transaction. Changed or new personas get a version
        entry (version numbers are bumped when content changed since the stored version).

        ``expected_versions`` (user id -> persona id -> version) makes the write a compare-and-set:
        when a listed persona is no longer at that version (someone else changed it since it was
        read), :class:`PersonaConflictError` is raised and nothing is written."""
        with self.transaction():
            batch = []
            for pset in sets:
                old = self.get(pset.user_id)
                old_by_id = {p.persona_id: p for p in old.personas} if old else {}
                for pid, version in ((expected_versions or {}).get(pset.user_id) or {}).items():
                    found = old_by_id[pid].version if pid in old_by_id else None
                    if found != version:
                        raise PersonaConflictError(pset.user_id, pid, version, found)
                versions = []
                fixed = []
                for p in pset.personas:
                    prev = old_by_id.get(p.persona_id)
                    if _changed(prev, p):
                        if prev is not None and p.version <= prev.version:
                            p = p.model_copy(update={"version": prev.version + 1, "updated_at": utcnow()})
                        versions.append(PersonaVersion(persona=p, reason=reason, feedback=feedback))
                    fixed.append(p)
                batch.append((pset.model_copy(update={"personas": fixed}), versions))
            self._write(batch)

    def put(self, pset: PersonaSet, reason: str = "induction", feedback: dict | None = None,
            expected_versions: Mapping[str, int] | None = None) -> PersonaSet:
        """Store one user's set (a compare-and-set with ``expected_versions``: persona id ->
        the version it was read at); returns the set as stored."""
        with self.transaction():
            self.put_many([pset], reason, feedback,
                          {pset.user_id: dict(expected_versions)} if expected_versions else None)
            return self.get(pset.user_id)  # type: ignore[return-value]

    @staticmethod
    def versions_of(pset: PersonaSet | None) -> dict[str, int]:
        """Persona id -> version: what a write prepared from ``pset`` expects to find."""
        return {p.persona_id: p.version for p in pset.personas} if pset else {}

    def require(self, user_id: str) -> PersonaSet:
        pset = self.get(user_id)
        if pset is None:
            raise UnknownUserError(user_id, self.users())
        return pset

    def rollback(self, user_id: str, persona_id: str, version: int) -> Persona:
        """Make an earlier version current again (recorded as a new version, reason ``rollback``)."""
        with self.transaction():  # read and write as one: a concurrent change cannot slip between
            pset = self.require(user_id)
            current = pset.get(persona_id)
            olds = [v for v in self.versions(user_id, persona_id) if v.persona.version == version]
            if not olds:
                have = [v.persona.version for v in self.versions(user_id, persona_id)]
                raise UsageError("version", version, have)
            restored = olds[-1].persona.model_copy(update={"version": current.version + 1, "updated_at": utcnow()})
            personas = [restored if p.persona_id == persona_id else p for p in pset.personas]
            total = sum(p.weight for p in personas) or 1.0
            personas = [p.model_copy(update={"weight": round(p.weight / total, 6)}) for p in personas]
            new = pset.model_copy(update={"personas": personas})
            self._write([(new, [PersonaVersion(persona=next(p for p in personas if p.persona_id == persona_id),
                                               reason=f"rollback to v{version}")])])
            return next(p for p in personas if p.persona_id == persona_id)


class InMemoryPersonaStore(PersonaStore):
    """Reference implementation: dicts, deep copies in and out."""

    def __init__(self):
        self._current: dict[str, PersonaSet] = {}
        self._versions: dict[str, list[PersonaVersion]] = {}
        self._lock = threading.RLock()  # a transaction is one writer at a time, as in SQLite

    def get(self, user_id: str) -> PersonaSet | None:
        with self._lock:
            p = self._current.get(str(user_id))
            return p.model_copy(deep=True) if p else None

    def _write(self, items):
        for pset, versions in items:
            self._current[pset.user_id] = pset.model_copy(deep=True)
            self._versions.setdefault(pset.user_id, []).extend(v.model_copy(deep=True) for v in versions)

    def versions(self, user_id: str, persona_id: str | None = None) -> list[PersonaVersion]:
        vs = self._versions.get(str(user_id), [])
        return [v.model_copy(deep=True) for v in vs if persona_id is None or v.persona.persona_id == persona_id]

    def users(self) -> list[str]:
        return list(self._current)

    @contextmanager
    def transaction(self):
        with self._lock:
            saved = (copy.deepcopy(self._current), copy.deepcopy(self._versions))
            try:
                yield self
            except BaseException:
                self._current, self._versions = saved
                raise


def _dump_set(pset: PersonaSet) -> tuple[str, list[tuple[str, bytes]]]:
    d = pset.model_dump(mode="json")
    vecs = []
    for p in d["personas"]:
        vecs.append((p["persona_id"], np.asarray(p.pop("embedding"), dtype=np.float32).tobytes()))
    return json.dumps(d), vecs


def load_version(body: str, blob: bytes | None) -> PersonaVersion:
    """A stored persona version: its JSON body and its embedding's float32 bytes (SQL stores)."""
    d = json.loads(body)
    d["persona"]["embedding"] = np.frombuffer(blob, dtype=np.float32).tolist() if blob else []
    return PersonaVersion.model_validate(d)


class SqlitePersonaStore(PersonaStore):
    """Personas in a SQLite file (WAL mode, synchronous FULL)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._in_txn = False
        self._con = sqlite3.connect(self.path, check_same_thread=False, timeout=30, isolation_level=None)
        self._con.execute("PRAGMA journal_mode=WAL")
        self._con.execute("PRAGMA synchronous=FULL")
        self._con.executescript("""
            CREATE TABLE IF NOT EXISTS persona_sets (user_id TEXT PRIMARY KEY, body TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS persona_vectors (user_id TEXT, persona_id TEXT, v BLOB,
                PRIMARY KEY (user_id, persona_id));
            CREATE TABLE IF NOT EXISTS persona_versions (seq INTEGER PRIMARY KEY AUTOINCREMENT,
                user_id TEXT, persona_id TEXT, version INT, body TEXT NOT NULL, v BLOB);
            CREATE INDEX IF NOT EXISTS persona_versions_user ON persona_versions (user_id, persona_id);
        """)

    def get(self, user_id: str) -> PersonaSet | None:
        with self._lock:
            row = self._con.execute("SELECT body FROM persona_sets WHERE user_id=?", (str(user_id),)).fetchone()
            if row is None:
                return None
            vecs = dict(self._con.execute("SELECT persona_id, v FROM persona_vectors WHERE user_id=?",
                                          (str(user_id),)).fetchall())
        d = json.loads(row[0])
        for p in d["personas"]:
            blob = vecs.get(p["persona_id"])
            p["embedding"] = np.frombuffer(blob, dtype=np.float32).tolist() if blob else []
        return PersonaSet.model_validate(d)

    @contextmanager
    def transaction(self):
        with self._lock:
            if self._in_txn:  # nested: the outermost block decides
                yield self
                return
            self._con.execute("BEGIN IMMEDIATE")
            self._in_txn = True
            try:
                yield self
            except BaseException:
                self._in_txn = False
                self._con.execute("ROLLBACK")
                raise
            self._in_txn = False
            self._con.execute("COMMIT")

    def _write(self, items):
        with self._lock:
            cur = self._con.cursor()
            own = not self._in_txn
            if own:
                cur.execute("BEGIN IMMEDIATE")
            try:
                for pset, versions in items:
                    body, vecs = _dump_set(pset)
                    cur.execute("INSERT OR REPLACE INTO persona_sets VALUES (?, ?)", (pset.user_id, body))
                    cur.execute("DELETE FROM persona_vectors WHERE user_id=?", (pset.user_id,))
                    cur.executemany("INSERT INTO persona_vectors VALUES (?, ?, ?)",
                                    [(pset.user_id, pid, v) for pid, v in vecs])
                    cur.executemany("INSERT INTO persona_versions (user_id, persona_id, version, body, v) "
                                    "VALUES (?, ?, ?, ?, ?)",
                                    [(pset.user_id, v.persona.persona_id, v.persona.version,
                                      v.model_dump_json(exclude={"persona": {"embedding"}}),
                                      np.asarray(v.persona.embedding, np.float32).tobytes()) for v in versions])
                if own:
                    cur.execute("COMMIT")
            except BaseException:
                if own:
                    cur.execute("ROLLBACK")
                raise

    def versions(self, user_id: str, persona_id: str | None = None) -> list[PersonaVersion]:
        q = "SELECT body, v FROM persona_versions WHERE user_id=?"
        args: list = [str(user_id)]
        if persona_id is not None:
            q += " AND persona_id=?"
            args.append(persona_id)
        with self._lock:
            rows = self._con.execute(q + " ORDER BY seq", args).fetchall()
        return [load_version(body, blob) for body, blob in rows]

    def users(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._con.execute("SELECT user_id FROM persona_sets ORDER BY rowid")]

    def close(self) -> None:
        self._con.close()
