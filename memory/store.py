"""The record store under every memory: namespaced records, each with a vector, searchable.

A namespace is a tuple of strings: ``("catalog",)``, ``("user", "42", "episodic")``. Each
namespace has its own vector index and its own id counter, so a search in one namespace can
never return a record of another: isolation is structural, not a filter. Record ids are
assigned by the store, count up from 0 per namespace and are never reused.

:class:`InMemoryMemoryStore` is the reference implementation. :class:`FaissMemoryStore`
persists to a folder: SQLite (WAL, ``synchronous=FULL``) holds the records and their vectors
and is the source of truth; each namespace's FAISS index is a derived cache, written
atomically to ``index/<sha256 of namespace>.faiss`` together with the SQLite *generation*
it reflects. An index file whose generation differs from SQLite's (a crash between the two
writes, another process's write) or that does not load is rebuilt from SQLite's vectors.

Example:
    >>> import numpy as np
    >>> store = InMemoryMemoryStore(dim=2)
    >>> ns = ("user", "42", "episodic")
    >>> store.put(ns, [MemoryRecord(kind="interaction", text="watched Alien", timestamp=1.0)],
    ...           np.array([[1.0, 0.0]], np.float32))
    [0]
    >>> [(r.text, round(s, 2)) for r, s in store.search(ns, np.array([1.0, 0.0]), k=1)]
    [('watched Alien', 1.0)]
"""

from __future__ import annotations

import contextlib
import hashlib
from collections import OrderedDict
import json
import math
import sqlite3
import struct
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from memory.errors import UsageError
from memory.persistence import atomic_write_bytes
from memory.vector_index import ExactVectorIndex, FaissVectorIndex, VectorIndexConfig

Namespace = tuple[str, ...]


class MemoryRecord(BaseModel):
    """One remembered thing: an event, a fact, a summary, a catalog item.

    Build records without ``record_id`` and ``namespace``; the store fills both in
    :meth:`MemoryStore.put` and returns records that carry them.

    Example:
        >>> MemoryRecord(kind="fact", text="likes slow sci-fi", timestamp=0.0, source_ids=[3, 8]).kind
        'fact'
    """

    model_config = ConfigDict(extra="forbid")

    record_id: int | None = None
    """Stable id within the namespace, assigned by the store; None before the record is stored."""
    namespace: Namespace = ()
    """Where the record lives, e.g. ``("user", "42", "episodic")``; filled in by the store."""
    kind: str
    """What the record is: ``interaction``, ``feedback``, ``chat_turn``, ``recommendation``,
    ``fact``, ``summary``, ``item``..."""
    text: str
    """The text that was embedded; what a search matches against."""
    timestamp: float = Field(default_factory=time.time)
    """When it happened, in unix seconds (defaults to now)."""
    payload: dict[str, Any] = Field(default_factory=dict)
    """Structured details (item id, rating, ...); must be JSON-serialisable."""
    source_ids: list[int] = Field(default_factory=list)
    """Ids of records this one derives from, e.g. the episodic events a semantic fact cites."""

    @field_validator("kind")
    @classmethod
    def _kind_non_empty(cls, v: str) -> str:
        if not v:
            raise ValueError("kind must be a non-empty string such as 'interaction' or 'fact'")
        return v

    @field_validator("timestamp")
    @classmethod
    def _finite_time(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError(f"timestamp must be finite unix seconds, got {v!r}")
        return v


def validate_namespace(namespace: Any) -> Namespace:
    """Return ``namespace`` as a tuple, or raise :class:`UsageError` saying what is wrong.

    A namespace is a non-empty tuple (or list) of non-empty strings without ``/`` or NUL.

    Example:
        >>> validate_namespace(["user", "42", "episodic"])
        ('user', '42', 'episodic')
    """
    allowed = "a non-empty tuple of non-empty strings without '/' or NUL, e.g. ('user', '42', 'episodic')"
    if isinstance(namespace, str) or not isinstance(namespace, (tuple, list)) or not namespace:
        # ("catalog") is a str, not a tuple: the most common slip
        raise UsageError("namespace", namespace, allowed)
    for part in namespace:
        if not isinstance(part, str) or not part or "/" in part or "\x00" in part:
            raise UsageError("namespace part", part, allowed)
    return tuple(namespace)


def _key(ns: Namespace) -> str:
    return "/".join(ns)  # unambiguous: parts may not contain "/"


def _check_payload(record: MemoryRecord) -> str:
    try:
        return json.dumps(record.payload, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise UsageError("payload", record.payload, f"JSON-serialisable values ({e})") from None


def _validate_search_args(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise UsageError("k", k, "an integer >= 1")
    return int(k)


class MemoryStore(ABC):
    """Namespaced records with vectors. Implementations: :class:`InMemoryMemoryStore`
    (reference) and :class:`FaissMemoryStore` (persistent).

    Writes (:meth:`put`, :meth:`delete`) are atomic one call at a time; group several in
    :meth:`transaction` to make them atomic together.
    """

    dim: int
    """Length of every vector in the store."""

    # -- the abstract surface -------------------------------------------------------------
    @abstractmethod
    def put(self, namespace: Sequence[str], records: Sequence[MemoryRecord], vectors: Any) -> list[int]:
        """Store new records with their vectors (n, dim); returns their ids, in order.

        Records must not carry a ``record_id`` (ids are the store's); a ``namespace`` on a
        record must equal ``namespace``.
        """

    @abstractmethod
    def delete(self, namespace: Sequence[str], ids: Sequence[int]) -> int:
        """Delete these records; absent ids are ignored. Returns how many were deleted."""

    @abstractmethod
    def get(self, namespace: Sequence[str], ids: Sequence[int]) -> list[MemoryRecord]:
        """The records with these ids, in the order asked; absent ids are skipped."""

    @abstractmethod
    def list(self, namespace: Sequence[str], kind: str | None = None, since: float | None = None,
             limit: int | None = None, newest_first: bool = True) -> list[MemoryRecord]:
        """Records by time (ties by id), optionally only one ``kind`` and ``timestamp >= since``."""

    @abstractmethod
    def search(self, namespace: Sequence[str], query_vector: Any, k: int, kind: str | None = None,
               ids: Sequence[int] | None = None) -> list[tuple[MemoryRecord, float]]:
        """The ``k`` records of ``namespace`` with the highest inner product with ``query_vector``.

        ``kind`` keeps only records of that kind; ``ids`` only those record ids (a candidate
        set; absent ids are ignored). Returns ``(record, score)`` pairs, best first.
        """

    @abstractmethod
    def namespaces(self, prefix: Sequence[str] = ()) -> list[Namespace]:
        """Every namespace holding at least one record and starting with ``prefix``, sorted."""

    @abstractmethod
    def transaction(self) -> contextlib.AbstractContextManager[None]:
        """Group writes: all of them are applied, or (if an exception escapes) none.

        Blocks nest: an exception escaping an inner block undoes that block only (the outer
        one may catch it and go on); nothing is durable before the outermost block ends.

        Example:
            >>> import numpy as np
            >>> store = InMemoryMemoryStore(dim=1)
            >>> try:
            ...     with store.transaction():
            ...         _ = store.put(("a",), [MemoryRecord(kind="fact", text="x", timestamp=0)], [[1.0]])
            ...         raise RuntimeError("boom")
            ... except RuntimeError:
            ...     pass
            >>> store.count(("a",))
            0
        """

    # -- conveniences ---------------------------------------------------------------------
    def count(self, namespace: Sequence[str], kind: str | None = None) -> int:
        """Number of records in ``namespace`` (of ``kind`` if given)."""
        return len(self.list(namespace, kind=kind))

    def put_one(self, namespace: Sequence[str], record: MemoryRecord, vector: Any) -> MemoryRecord:
        """Store one record; returns it with its id and namespace filled in."""
        (rid,) = self.put(namespace, [record], np.asarray(vector, np.float32).reshape(1, -1))
        return record.model_copy(update={"record_id": rid, "namespace": validate_namespace(namespace)})

    def get_one(self, namespace: Sequence[str], record_id: int) -> MemoryRecord | None:
        """The record with this id, or None."""
        found = self.get(namespace, [record_id])
        return found[0] if found else None

    def delete_namespace(self, namespace: Sequence[str]) -> int:
        """Delete every record of ``namespace``; returns how many."""
        ids = [r.record_id for r in self.list(namespace) if r.record_id is not None]
        return self.delete(namespace, ids)

    def close(self) -> None:
        """Release files and connections. The in-memory store has none."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- validation shared by every implementation ------------------------------------------
    def _check_put(self, namespace: Any, records: Sequence[MemoryRecord], vectors: Any
                   ) -> tuple[Namespace, list[MemoryRecord], np.ndarray, list[str]]:
        ns = validate_namespace(namespace)
        records = list(records)
        for r in records:
            if not isinstance(r, MemoryRecord):
                raise UsageError("record", r, "MemoryRecord instances")
            if r.record_id is not None:
                raise UsageError("record_id", r.record_id,
                                 "None on records passed to put(); the store assigns ids "
                                 "(delete and put again to replace a record)")
            if r.namespace and r.namespace != ns:
                raise UsageError("record namespace", r.namespace, f"() or {ns!r} (the namespace put into)")
        payloads = [_check_payload(r) for r in records]
        vecs = np.asarray(vectors, dtype=np.float32)
        if not records and vecs.size == 0:
            return ns, records, np.zeros((0, self.dim), np.float32), payloads
        if vecs.ndim != 2 or vecs.shape[1] != self.dim:
            raise UsageError("vectors shape", tuple(vecs.shape),
                             f"(n, {self.dim}): this store has dim {self.dim}")
        if vecs.shape[0] != len(records):
            raise UsageError("vectors", f"{vecs.shape[0]} rows for {len(records)} records",
                             "one vector per record")
        if not np.isfinite(vecs).all():
            raise UsageError("vectors", "a NaN or infinite value", "finite floats")
        return ns, records, np.ascontiguousarray(vecs), payloads

    def _check_query(self, query_vector: Any) -> np.ndarray:
        q = np.asarray(query_vector, dtype=np.float32)
        if q.ndim == 2 and q.shape[0] == 1:
            q = q[0]
        if q.shape != (self.dim,):
            raise UsageError("query_vector shape", tuple(q.shape),
                             f"({self.dim},): this store has dim {self.dim}")
        if not np.isfinite(q).all():
            raise UsageError("query_vector", "a NaN or infinite value", "finite floats")
        return q

    @staticmethod
    def _check_ids(ids: Any) -> list[int]:
        out = []
        for i in ids:
            if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
                raise UsageError("record id", i, "integers (ids returned by put)")
            out.append(int(i))
        return out

    @staticmethod
    def _check_list_args(limit: Any) -> None:
        bad = isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 0
        if limit is not None and bad:
            raise UsageError("limit", limit, "None or an integer >= 0")


def _check_dim(dim: Any) -> int:
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
        raise UsageError("dim", dim, "a positive integer")
    return int(dim)


def _hits(records: dict[int, MemoryRecord], scores: np.ndarray,
          ids: np.ndarray) -> list[tuple[MemoryRecord, float]]:
    return [(records[int(i)], float(s)) for s, i in zip(scores, ids) if i >= 0]


# ----------------------------------------------------------------------------------------
# In-memory reference
# ----------------------------------------------------------------------------------------
@dataclass
class _Space:
    dim: int
    records: dict[int, MemoryRecord] = field(default_factory=dict)
    index: ExactVectorIndex = None  # type: ignore[assignment]
    next_id: int = 0

    def __post_init__(self) -> None:
        if self.index is None:
            self.index = ExactVectorIndex(self.dim)

    def snapshot(self) -> _Space:
        return _Space(self.dim, dict(self.records), self.index.copy(), self.next_id)


class InMemoryMemoryStore(MemoryStore):
    """Dicts and an :class:`ExactVectorIndex` per namespace: the reference implementation.

    Nothing survives the process. Records handed out are copies, so editing one does not
    change the store.

    Example:
        >>> import numpy as np
        >>> s = InMemoryMemoryStore(dim=3)
        >>> s.put(("catalog",), [MemoryRecord(kind="item", text="Alien", timestamp=0)], np.eye(3)[:1])
        [0]
        >>> s.count(("catalog",))
        1
    """

    def __init__(self, dim: int):
        self.dim = _check_dim(dim)
        self._spaces: dict[Namespace, _Space] = {}
        self._lock = threading.RLock()
        # one dict per open transaction block: the state of each namespace it touched, as it
        # was when the block began (None: the namespace did not exist)
        self._saved: list[dict[Namespace, _Space | None]] = []

    def _space(self, ns: Namespace, create: bool = False) -> _Space | None:
        if self._saved and ns not in self._saved[-1] and (create or ns in self._spaces):
            # first write to this namespace in the innermost block: keep what to roll back to
            old = self._spaces.get(ns)
            self._saved[-1][ns] = old.snapshot() if old is not None else None
        if create and ns not in self._spaces:
            self._spaces[ns] = _Space(self.dim)
        return self._spaces.get(ns)

    @staticmethod
    def _out(r: MemoryRecord) -> MemoryRecord:
        return r.model_copy(deep=True)

    def put(self, namespace, records, vectors) -> list[int]:
        ns, records, vecs, _ = self._check_put(namespace, records, vectors)
        if not records:
            return []
        with self._lock:
            space = self._space(ns, create=True)
            assert space is not None
            ids = list(range(space.next_id, space.next_id + len(records)))
            space.index.add(np.array(ids, np.int64), vecs)
            for rid, r in zip(ids, records):
                space.records[rid] = r.model_copy(deep=True, update={"record_id": rid, "namespace": ns})
            space.next_id += len(records)
            return ids

    def delete(self, namespace, ids) -> int:
        ns = validate_namespace(namespace)
        ids = self._check_ids(ids)
        with self._lock:
            if ns not in self._spaces:
                return 0
            space = self._space(ns)
            assert space is not None
            present = [i for i in dict.fromkeys(ids) if i in space.records]
            for i in present:
                del space.records[i]
            space.index.remove(np.array(present, np.int64))
            return len(present)

    def get(self, namespace, ids) -> list[MemoryRecord]:
        ns = validate_namespace(namespace)
        ids = self._check_ids(ids)
        with self._lock:
            space = self._spaces.get(ns)
            if space is None:
                return []
            return [self._out(space.records[i]) for i in ids if i in space.records]

    def list(self, namespace, kind=None, since=None, limit=None, newest_first=True) -> list[MemoryRecord]:
        ns = validate_namespace(namespace)
        self._check_list_args(limit)
        with self._lock:
            space = self._spaces.get(ns)
            rows = [] if space is None else [
                r for r in space.records.values()
                if (kind is None or r.kind == kind) and (since is None or r.timestamp >= since)]
            rows.sort(key=lambda r: (r.timestamp, r.record_id), reverse=newest_first)
            if limit is not None:
                rows = rows[:limit]
            return [self._out(r) for r in rows]

    def search(self, namespace, query_vector, k, kind=None, ids=None) -> list[tuple[MemoryRecord, float]]:
        ns = validate_namespace(namespace)
        q = self._check_query(query_vector)
        k = _validate_search_args(k)
        wanted = None if ids is None else self._check_ids(ids)
        with self._lock:
            space = self._spaces.get(ns)
            if space is None or not space.records:
                return []
            allowed = None
            if kind is not None or wanted is not None:
                pool = space.records.keys() if wanted is None else [i for i in wanted if i in space.records]
                allowed = np.array([i for i in pool if kind is None or space.records[i].kind == kind],
                                   np.int64)
            scores, hit_ids = space.index.search(q, k, allowed_ids=allowed)
            return [(self._out(r), s) for r, s in _hits(space.records, scores[0], hit_ids[0])]

    def namespaces(self, prefix=()) -> list[Namespace]:
        prefix = tuple(prefix)
        if prefix:
            validate_namespace(prefix)
        with self._lock:
            return sorted(ns for ns, sp in self._spaces.items() if sp.records and ns[:len(prefix)] == prefix)

    def count(self, namespace, kind=None) -> int:
        ns = validate_namespace(namespace)
        with self._lock:
            space = self._spaces.get(ns)
            if space is None:
                return 0
            return sum(1 for r in space.records.values() if kind is None or r.kind == kind)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        with self._lock:
            self._saved.append({})
            try:
                yield
            except BaseException:
                for ns, old in self._saved.pop().items():
                    if old is None:
                        self._spaces.pop(ns, None)
                    else:
                        self._spaces[ns] = old
                raise
            done = self._saved.pop()
            if self._saved:
                # the enclosing block must be able to undo this one too: hand it the
                # snapshots it does not have yet (its own, older ones win)
                for ns, old in done.items():
                    self._saved[-1].setdefault(ns, old)


# ----------------------------------------------------------------------------------------
# SQLite + FAISS
# ----------------------------------------------------------------------------------------
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS namespaces (
    ns TEXT PRIMARY KEY,
    next_id INTEGER NOT NULL,
    generation INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS records (
    ns TEXT NOT NULL,
    record_id INTEGER NOT NULL,
    kind TEXT NOT NULL,
    text TEXT NOT NULL,
    timestamp REAL NOT NULL,
    payload TEXT NOT NULL,
    source_ids TEXT NOT NULL,
    vector BLOB NOT NULL,
    PRIMARY KEY (ns, record_id)
);
CREATE INDEX IF NOT EXISTS records_by_time ON records (ns, timestamp, record_id);
CREATE INDEX IF NOT EXISTS records_by_kind ON records (ns, kind, timestamp, record_id);
"""
_SCHEMA_VERSION = "1"
_FILE_MAGIC = b"PLIX"  # index file: magic, u32 header length, JSON header, FaissVectorIndex bytes
_COLUMNS = "record_id, kind, text, timestamp, payload, source_ids"


@dataclass
class _Cached:
    index: FaissVectorIndex
    generation: int
    dirty: bool = False  # in memory but not yet written to its file


class FaissMemoryStore(MemoryStore):
    """Records in SQLite, one FAISS index per namespace, all under the folder ``path``.

    Layout: ``path/memory.sqlite`` (records, vectors, per-namespace id counters and
    generations) and ``path/index/<sha256 of namespace>.faiss``. Every committed write bumps
    its namespace's generation; index files record the generation they reflect and are
    rebuilt from SQLite when it does not match, so reopening restores exactly what was
    committed even after a crash between the SQLite commit and the index write. Indexes load
    lazily, on a namespace's first search or write.

    ``save_on_commit=False`` defers index files to :meth:`flush` / :meth:`close` (faster bulk
    writes; a crash then costs only a rebuild on the next open).

    At scale (millions of events over many users): at most ``max_cached_indexes`` namespace
    indexes stay in memory, least recently used out first (written to their files first when
    they have unsaved changes), so memory follows the users being served, not every user ever
    seen; the default ``index_config=VectorIndexConfig(kind="auto")`` keeps small namespaces exact
    and turns a namespace approximate (IVF) past ``approximate_above`` vectors. Filtered searches (``kind``,
    ``ids``) never come back short: an approximate pass that misses is redone exactly over the
    allowed records. Figures: ``benchmarks/scale_memory.py``.

    Example:
        >>> import numpy as np, tempfile
        >>> with tempfile.TemporaryDirectory() as folder, FaissMemoryStore(folder, dim=2) as store:
        ...     store.put(("catalog",), [MemoryRecord(kind="item", text="Alien", timestamp=0)],
        ...               np.array([[0.6, 0.8]], np.float32))
        [0]
    """

    def __init__(self, path: str | Path, dim: int, index_config: VectorIndexConfig | None = None, *,
                 save_on_commit: bool = True, max_cached_indexes: int | None = 1024):
        self.dim = _check_dim(dim)
        if max_cached_indexes is not None and (isinstance(max_cached_indexes, bool)
                                               or not isinstance(max_cached_indexes, int) or max_cached_indexes < 1):
            raise UsageError("max_cached_indexes", max_cached_indexes, "None (no limit) or an integer >= 1")
        self.max_cached_indexes = max_cached_indexes
        """Namespace indexes kept in memory at most (least recently used evicted); None: all."""
        self.path = Path(path)
        self.index_config = index_config or VectorIndexConfig(kind="auto")
        """Default ``auto``: a namespace's index is exact until it holds ``approximate_above``
        vectors (50,000: far more than a person's turns), then IVF."""
        self.save_on_commit = save_on_commit
        self.index_rebuilds = 0
        """How many namespace indexes were rebuilt from SQLite (missing, stale or unreadable file)."""
        self._lock = threading.RLock()
        self._cache: OrderedDict[Namespace, _Cached] = OrderedDict()
        self._depth = 0
        self._touched: set[Namespace] = set()
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "index").mkdir(exist_ok=True)
        # autocommit mode: transactions are begun and ended explicitly below
        self._con: sqlite3.Connection | None = sqlite3.connect(
            self.path / "memory.sqlite", isolation_level=None, check_same_thread=False, timeout=30)
        try:
            self._con.execute("PRAGMA journal_mode=WAL")
            self._con.execute("PRAGMA synchronous=FULL")
            self._con.executescript(_SCHEMA)
            self._check_meta()
        except BaseException:
            self._con.close()
            self._con = None
            raise

    def _check_meta(self) -> None:
        con = self._db
        with self._write():
            con.execute("INSERT OR IGNORE INTO meta VALUES ('dim', ?)", (str(self.dim),))
            con.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (_SCHEMA_VERSION,))
        meta = dict(con.execute("SELECT key, value FROM meta"))
        if int(meta["dim"]) != self.dim:
            raise UsageError("dim", self.dim,
                             f"{meta['dim']}: the store at {self.path} holds {meta['dim']}-d vectors")
        if meta["schema"] != _SCHEMA_VERSION:
            raise UsageError("store schema", meta["schema"], f"{_SCHEMA_VERSION} (this version of Plural)")

    @property
    def _db(self) -> sqlite3.Connection:
        if self._con is None:
            raise UsageError("store", f"closed FaissMemoryStore at {self.path}",
                             "an open store; open a new one")
        return self._con

    # -- transactions ---------------------------------------------------------------------
    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        with self._lock:
            con = self._db
            outer = self._depth == 0
            savepoint = f"plural_{self._depth}"
            if outer:
                # IMMEDIATE takes the write lock now, so a concurrent writer waits here
                # rather than failing halfway through our block
                con.execute("BEGIN IMMEDIATE")
                self._touched = set()
            else:
                con.execute(f"SAVEPOINT {savepoint}")
            self._depth += 1
            try:
                yield
            except BaseException:
                self._depth -= 1
                self._undo(outer, savepoint)
                raise
            self._depth -= 1
            try:
                con.execute("COMMIT" if outer else f"RELEASE {savepoint}")
            except BaseException:
                self._undo(outer, savepoint)
                raise
            if outer:
                touched, self._touched = self._touched, set()
                if self.save_on_commit:
                    for ns in sorted(touched):
                        self._save(ns)
                self._evict()  # a transaction may have held more namespaces than the limit

    def _undo(self, outer: bool, savepoint: str) -> None:
        con = self._db
        if outer:
            if con.in_transaction:
                con.execute("ROLLBACK")
        else:
            con.execute(f"ROLLBACK TO {savepoint}")
            con.execute(f"RELEASE {savepoint}")
        # the in-memory indexes saw the undone writes: drop them; the next use reloads
        # them from their files or rebuilds them from SQLite
        for ns in self._touched:
            self._cache.pop(ns, None)
        if outer:
            self._touched = set()

    _write = transaction  # a single write is a transaction of one

    def _bump(self, ns: Namespace, n_new: int) -> tuple[int, int]:
        """Reserve ``n_new`` ids and advance the generation; returns (first id, new generation)."""
        con = self._db
        key = _key(ns)
        con.execute("INSERT OR IGNORE INTO namespaces VALUES (?, 0, 0)", (key,))
        first, gen = con.execute("SELECT next_id, generation FROM namespaces WHERE ns=?", (key,)).fetchone()
        con.execute("UPDATE namespaces SET next_id=?, generation=? WHERE ns=?", (first + n_new, gen + 1, key))
        self._touched.add(ns)
        return first, gen + 1

    # -- index cache ----------------------------------------------------------------------
    def _index_file(self, ns: Namespace) -> Path:
        return self.path / "index" / (hashlib.sha256(_key(ns).encode()).hexdigest()[:32] + ".faiss")

    def _generation(self, ns: Namespace) -> int | None:
        row = self._db.execute("SELECT generation FROM namespaces WHERE ns=?", (_key(ns),)).fetchone()
        return None if row is None else int(row[0])

    def _index(self, ns: Namespace) -> FaissVectorIndex | None:
        """The up-to-date index of ``ns`` (None if the namespace never had a record)."""
        gen = self._generation(ns)
        if gen is None:
            return None
        cached = self._cache.get(ns)
        if cached is not None and cached.generation == gen:
            self._cache.move_to_end(ns)
            return cached.index
        index = self._load_file(ns, gen)
        if index is None:
            index = self._rebuild(ns)
            self.index_rebuilds += 1
            self._cache[ns] = _Cached(index, gen, dirty=True)
            if self._depth == 0:
                self._save(ns)
        else:
            self._cache[ns] = _Cached(index, gen)
        self._cache.move_to_end(ns)
        self._evict(keep=ns)
        return index

    def _evict(self, keep: Namespace | None = None) -> None:
        """Drop least recently used indexes beyond ``max_cached_indexes``, saving unsaved ones
        first. Inside a transaction the namespaces it wrote stay (their state is not committed:
        it must be neither written to a file nor lost before the commit decides)."""
        limit = self.max_cached_indexes
        if limit is None or len(self._cache) <= limit:
            return
        for ns in list(self._cache):
            if len(self._cache) <= limit:
                break
            if ns == keep or (self._depth > 0 and ns in self._touched):
                continue
            if self._cache[ns].dirty:
                self._save(ns)
            del self._cache[ns]

    def _load_file(self, ns: Namespace, gen: int) -> FaissVectorIndex | None:
        """The index from its file, if the file exists, is ours, and reflects generation ``gen``."""
        try:
            data = self._index_file(ns).read_bytes()
            if not data.startswith(_FILE_MAGIC):
                return None
            (n,) = struct.unpack_from("<I", data, len(_FILE_MAGIC))
            start = len(_FILE_MAGIC) + 4
            header = json.loads(data[start:start + n])
            if header.get("namespace") != _key(ns) or header.get("generation") != gen:
                return None
            return FaissVectorIndex.from_bytes(data[start + n:], self.dim, self.index_config)
        except (OSError, ValueError, struct.error, RuntimeError):
            # missing, truncated, corrupt, or written for another kind/dim: SQLite has the truth
            return None

    def _rebuild(self, ns: Namespace) -> FaissVectorIndex:
        index = FaissVectorIndex(self.dim, self.index_config)
        rows = self._db.execute("SELECT record_id, vector FROM records WHERE ns=? ORDER BY record_id",
                                (_key(ns),)).fetchall()
        if rows:
            ids = np.array([r[0] for r in rows], np.int64)
            vecs = np.stack([np.frombuffer(r[1], np.float32) for r in rows])
            index.add(ids, vecs)
        return index

    def _save(self, ns: Namespace) -> None:
        cached = self._cache.get(ns)
        if cached is None:
            return
        header = json.dumps({"namespace": _key(ns), "generation": cached.generation,
                             "kind": self.index_config.kind, "dim": self.dim}).encode()
        atomic_write_bytes(self._index_file(ns),
                           _FILE_MAGIC + struct.pack("<I", len(header)) + header + cached.index.to_bytes())
        cached.dirty = False

    def _index_for_write(self, ns: Namespace) -> FaissVectorIndex:
        """The current index of ``ns``, loaded before a write so that it stays in step with SQLite."""
        index = self._index(ns)
        return FaissVectorIndex(self.dim, self.index_config) if index is None else index

    def flush(self) -> None:
        """Write every index that changed since it was last saved."""
        with self._lock:
            for ns, cached in list(self._cache.items()):
                if cached.dirty:
                    self._save(ns)

    def close(self) -> None:
        """Write pending index files and close SQLite; the store cannot be used afterwards."""
        with self._lock:
            if self._con is None:
                return
            if self._depth == 0:
                self.flush()
            self._con.close()
            self._con = None
            self._cache.clear()

    # -- MemoryStore ----------------------------------------------------------------------
    def put(self, namespace, records, vectors) -> list[int]:
        ns, records, vecs, payloads = self._check_put(namespace, records, vectors)
        if not records:
            return []
        with self._lock, self._write():
            index = self._index_for_write(ns)
            first, gen = self._bump(ns, len(records))
            ids = list(range(first, first + len(records)))
            self._db.executemany(
                "INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(_key(ns), rid, r.kind, r.text, float(r.timestamp), p, json.dumps(r.source_ids), v.tobytes())
                 for rid, r, p, v in zip(ids, records, payloads, vecs)])
            index.add(np.array(ids, np.int64), vecs)
            self._cache[ns] = _Cached(index, gen, dirty=True)
            self._cache.move_to_end(ns)
            self._evict(keep=ns)
            return ids

    def delete(self, namespace, ids) -> int:
        ns = validate_namespace(namespace)
        ids = list(dict.fromkeys(self._check_ids(ids)))
        if not ids:
            return 0
        with self._lock, self._write():
            key = _key(ns)
            present = [i for (i,) in self._select_ids(key, ids)]
            if not present:
                return 0
            index = self._index_for_write(ns)
            _, gen = self._bump(ns, 0)
            self._db.executemany("DELETE FROM records WHERE ns=? AND record_id=?",
                                 [(key, i) for i in present])
            index.remove(np.array(present, np.int64))
            self._cache[ns] = _Cached(index, gen, dirty=True)
            self._cache.move_to_end(ns)
            self._evict(keep=ns)
            return len(present)

    def _select_ids(self, key: str, ids: list[int], columns: str = "record_id") -> list[tuple]:
        out: list[tuple] = []
        for s in range(0, len(ids), 500):  # stay under SQLite's bound-parameter limit
            chunk = ids[s:s + 500]
            out += self._db.execute(
                f"SELECT {columns} FROM records WHERE ns=? AND record_id IN ({','.join('?' * len(chunk))})",
                [key, *chunk]).fetchall()
        return out

    @staticmethod
    def _record(ns: Namespace, row: tuple) -> MemoryRecord:
        rid, kind, text, ts, payload, sources = row
        return MemoryRecord(record_id=rid, namespace=ns, kind=kind, text=text, timestamp=ts,
                            payload=json.loads(payload), source_ids=json.loads(sources))

    def get(self, namespace, ids) -> list[MemoryRecord]:
        ns = validate_namespace(namespace)
        ids = self._check_ids(ids)
        with self._lock:
            found = {row[0]: self._record(ns, row)
                     for row in self._select_ids(_key(ns), list(dict.fromkeys(ids)), _COLUMNS)}
        return [found[i].model_copy(deep=True) for i in ids if i in found]

    def list(self, namespace, kind=None, since=None, limit=None, newest_first=True) -> list[MemoryRecord]:
        ns = validate_namespace(namespace)
        self._check_list_args(limit)
        sql, args = f"SELECT {_COLUMNS} FROM records WHERE ns=?", [_key(ns)]
        if kind is not None:
            sql += " AND kind=?"
            args.append(kind)
        if since is not None:
            sql += " AND timestamp>=?"
            args.append(float(since))
        order = "DESC" if newest_first else "ASC"
        sql += f" ORDER BY timestamp {order}, record_id {order}"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(int(limit))
        with self._lock:
            return [self._record(ns, row) for row in self._db.execute(sql, args)]

    def search(self, namespace, query_vector, k, kind=None, ids=None) -> list[tuple[MemoryRecord, float]]:
        ns = validate_namespace(namespace)
        q = self._check_query(query_vector)
        k = _validate_search_args(k)
        wanted = None if ids is None else list(dict.fromkeys(self._check_ids(ids)))
        with self._lock:
            index = self._index(ns)
            if index is None or len(index) == 0:
                return []
            allowed = None
            if wanted is not None and kind is not None:
                allowed = [i for i, k_ in self._select_ids(_key(ns), wanted, "record_id, kind") if k_ == kind]
            elif wanted is not None:
                allowed = wanted
            elif kind is not None:
                allowed = [i for (i,) in self._db.execute(
                    "SELECT record_id FROM records WHERE ns=? AND kind=?", (_key(ns), kind))]
            if allowed is not None and not allowed:
                return []
            allowed_arr = None if allowed is None else np.array(allowed, np.int64)
            scores, hit_ids = index.search(q, k, allowed_ids=allowed_arr)
            records = {r.record_id: r for r in self.get(ns, [int(i) for i in hit_ids[0] if i >= 0])}
            return _hits(records, scores[0], hit_ids[0])  # type: ignore[arg-type]

    def namespaces(self, prefix=()) -> list[Namespace]:
        prefix = tuple(prefix)
        with self._lock:
            if not prefix:
                rows = self._db.execute("SELECT DISTINCT ns FROM records").fetchall()
            else:
                p = _key(validate_namespace(prefix))
                # substr comparisons, not LIKE: namespace parts may contain % and _
                rows = self._db.execute(
                    "SELECT DISTINCT ns FROM records WHERE ns=? OR substr(ns, 1, ?)=?",
                    (p, len(p) + 1, p + "/")).fetchall()
        return sorted(tuple(r[0].split("/")) for r in rows)

    def count(self, namespace, kind=None) -> int:
        ns = validate_namespace(namespace)
        sql, args = "SELECT COUNT(*) FROM records WHERE ns=?", [_key(ns)]
        if kind is not None:
            sql += " AND kind=?"
            args.append(kind)
        with self._lock:
            return int(self._db.execute(sql, args).fetchone()[0])
