"""A :class:`~memory.store.MemoryStore` in PostgreSQL with pgvector: records and their vectors in
one table of a :class:`~memory.postgres.PostgresDatabase` schema.

* Ids: a per-namespace counter row (``memory_namespaces``) hands out ids in the writing
  transaction, so a rolled-back write consumes none and a deleted id is never reused. The
  counter row is locked by the write until its transaction ends: writers of one namespace queue.
* Search is exact: ``ORDER BY embedding <#> query`` (negative inner product) over the records of
  the namespace, read through the ``(ns, record_id)`` primary key, so ``k`` hits come back
  whenever the namespace holds ``k`` records (of the kind and ids asked). No approximate
  (HNSW/IVFFlat) index is created on purpose: Postgres would apply the namespace filter after
  the approximate scan and could return fewer than ``k`` hits. User namespaces hold hundreds to
  a few thousand records; the catalog namespace, the big one, stays in the data directory's
  FAISS store (see :class:`agent.engine.Engine`).
* Transactions are the database's: blocks nest as savepoints, and every other store on the same
  :class:`PostgresDatabase` (personas, exposure counts, thread ownership) writes in the same
  transaction.
* ``text`` holding a NUL character (which Postgres text cannot hold) is stored JSON-encoded with
  ``text_json`` set; everything else is stored as is.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator

import numpy as np

from memory.errors import UsageError
from memory.postgres import PostgresDatabase
from memory.store import (
    MemoryRecord,
    MemoryStore,
    Namespace,
    _check_dim,
    _key,
    _validate_search_args,
    validate_namespace,
)

_SCHEMA_VERSION = "1"

_DDL = """
CREATE TABLE IF NOT EXISTS @s.memory_meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE IF NOT EXISTS @s.memory_namespaces (ns text PRIMARY KEY, next_id bigint NOT NULL);
CREATE TABLE IF NOT EXISTS @s.memory_records (
    ns text NOT NULL,
    record_id bigint NOT NULL,
    kind text NOT NULL,
    text text NOT NULL,
    text_json boolean NOT NULL DEFAULT false,
    ts double precision NOT NULL,
    payload text NOT NULL,
    source_ids text NOT NULL,
    embedding vector({dim}) NOT NULL,
    PRIMARY KEY (ns, record_id)
);
CREATE INDEX IF NOT EXISTS memory_records_by_time ON @s.memory_records (ns, ts, record_id);
"""
_COLUMNS = "record_id, kind, text, text_json, ts, payload, source_ids"


class PostgresMemoryStore(MemoryStore):
    """Namespaced records with vectors in the schema of ``db`` (see the module docstring).

    ``owns_db=True`` makes :meth:`close` close the database too (a store opened on its own).

    Example:
        >>> from memory.postgres import PostgresDatabase                      # doctest: +SKIP
        >>> store = PostgresMemoryStore(PostgresDatabase(url, schema="demo"), dim=384, owns_db=True)  # doctest: +SKIP
    """

    def __init__(self, db: PostgresDatabase, dim: int, *, owns_db: bool = False):
        self.dim = _check_dim(dim)
        self.db = db
        self._owns_db = owns_db
        self._closed = False
        self._t = {n: f"{db.qschema}.{n}" for n in ("memory_meta", "memory_namespaces", "memory_records")}
        db.ensure_tables(_DDL.replace("{dim}", str(self.dim)), "memory")
        with db.transaction() as conn:
            meta = self._t["memory_meta"]
            conn.execute(f"INSERT INTO {meta} VALUES ('dim', %s), ('schema', %s) ON CONFLICT (key) DO NOTHING",
                         (str(self.dim), _SCHEMA_VERSION))
            have = dict(conn.execute(f"SELECT key, value FROM {meta}").fetchall())
        if int(have["dim"]) != self.dim:
            raise UsageError("dim", self.dim, f"{have['dim']}: the memory in Postgres schema {db.schema!r} "
                                              f"holds {have['dim']}-d vectors")
        if have["schema"] != _SCHEMA_VERSION:
            raise UsageError("store schema", have["schema"], f"{_SCHEMA_VERSION} (this version of Plural)")

    # -- plumbing -------------------------------------------------------------------------
    def _conn(self):
        if self._closed:
            raise UsageError("store", f"closed PostgresMemoryStore on schema {self.db.schema!r}",
                             "an open store; open a new one")
        return self.db.connection()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        if self._closed:
            raise UsageError("store", f"closed PostgresMemoryStore on schema {self.db.schema!r}",
                             "an open store; open a new one")
        with self.db.transaction():
            yield

    @staticmethod
    def _record(ns: Namespace, row: tuple) -> MemoryRecord:
        rid, kind, text, text_json, ts, payload, sources = row
        return MemoryRecord(record_id=int(rid), namespace=ns, kind=kind, text=json.loads(text) if text_json else text,
                            timestamp=float(ts), payload=json.loads(payload), source_ids=json.loads(sources))

    def close(self) -> None:
        """The store cannot be used afterwards; the database is closed too when the store owns it."""
        if self._closed:
            return
        self._closed = True
        if self._owns_db:
            self.db.close()

    # -- MemoryStore ----------------------------------------------------------------------
    def put(self, namespace, records, vectors) -> list[int]:
        ns, records, vecs, payloads = self._check_put(namespace, records, vectors)
        if not records:
            return []
        key, n = _key(ns), len(records)
        with self.transaction(), self.db.connection() as conn:
            t = self._t["memory_namespaces"]
            (end,) = conn.execute(
                f"INSERT INTO {t} AS t (ns, next_id) VALUES (%s, %s) "
                "ON CONFLICT (ns) DO UPDATE SET next_id = t.next_id + EXCLUDED.next_id RETURNING next_id",
                (key, n)).fetchone()
            ids = list(range(int(end) - n, int(end)))
            rows = []
            for rid, r, p, v in zip(ids, records, payloads, vecs):
                escaped = "\x00" in r.text
                rows.append((key, rid, r.kind, json.dumps(r.text) if escaped else r.text, escaped,
                             float(r.timestamp), p, json.dumps(r.source_ids), v))
            with conn.cursor() as cur:
                cur.executemany(f"INSERT INTO {self._t['memory_records']} (ns, record_id, kind, text, text_json, "
                                "ts, payload, source_ids, embedding) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                                rows)
            return ids

    def delete(self, namespace, ids) -> int:
        ns = validate_namespace(namespace)
        ids = list(dict.fromkeys(self._check_ids(ids)))
        if not ids:
            return 0
        with self.transaction(), self.db.connection() as conn:
            cur = conn.execute(f"DELETE FROM {self._t['memory_records']} WHERE ns = %s AND record_id = ANY(%s)",
                               (_key(ns), ids))
            return int(cur.rowcount)

    def get(self, namespace, ids) -> list[MemoryRecord]:
        ns = validate_namespace(namespace)
        ids = self._check_ids(ids)
        if not ids:
            return []
        with self._conn() as conn:
            rows = conn.execute(f"SELECT {_COLUMNS} FROM {self._t['memory_records']} "
                                "WHERE ns = %s AND record_id = ANY(%s)", (_key(ns), list(dict.fromkeys(ids)))).fetchall()
        found = {int(row[0]): self._record(ns, row) for row in rows}
        return [found[i].model_copy(deep=True) for i in ids if i in found]

    def list(self, namespace, kind=None, since=None, limit=None, newest_first=True) -> list[MemoryRecord]:
        ns = validate_namespace(namespace)
        self._check_list_args(limit)
        sql, args = f"SELECT {_COLUMNS} FROM {self._t['memory_records']} WHERE ns = %s", [_key(ns)]
        if kind is not None:
            sql += " AND kind = %s"
            args.append(kind)
        if since is not None:
            sql += " AND ts >= %s"
            args.append(float(since))
        order = "DESC" if newest_first else "ASC"
        sql += f" ORDER BY ts {order}, record_id {order}"
        if limit is not None:
            sql += " LIMIT %s"
            args.append(int(limit))
        with self._conn() as conn:
            return [self._record(ns, row) for row in conn.execute(sql, args).fetchall()]

    def search(self, namespace, query_vector, k, kind=None, ids=None) -> list[tuple[MemoryRecord, float]]:
        ns = validate_namespace(namespace)
        q = self._check_query(query_vector)
        k = _validate_search_args(k)
        wanted = None if ids is None else list(dict.fromkeys(self._check_ids(ids)))
        if wanted is not None and not wanted:
            return []
        sql = (f"SELECT {_COLUMNS}, (embedding <#> %s) * -1 AS score FROM {self._t['memory_records']} "
               "WHERE ns = %s")
        args: list = [np.ascontiguousarray(q, np.float32), _key(ns)]
        if kind is not None:
            sql += " AND kind = %s"
            args.append(kind)
        if wanted is not None:
            sql += " AND record_id = ANY(%s)"
            args.append(wanted)
        sql += " ORDER BY score DESC, record_id LIMIT %s"  # exact: no approximate index on the column
        args.append(k)
        with self._conn() as conn:
            rows = conn.execute(sql, args).fetchall()
        return [(self._record(ns, row[:-1]), float(row[-1])) for row in rows]

    def namespaces(self, prefix=()) -> list[Namespace]:
        prefix = tuple(prefix)
        t = self._t["memory_records"]
        with self._conn() as conn:
            if not prefix:
                rows = conn.execute(f"SELECT DISTINCT ns FROM {t}").fetchall()
            else:
                p = _key(validate_namespace(prefix))
                # starts_with, not LIKE: namespace parts may contain % and _
                rows = conn.execute(f"SELECT DISTINCT ns FROM {t} WHERE ns = %s OR starts_with(ns, %s)",
                                    (p, p + "/")).fetchall()
        return sorted(tuple(r[0].split("/")) for r in rows)

    def count(self, namespace, kind=None) -> int:
        ns = validate_namespace(namespace)
        sql, args = f"SELECT count(*) FROM {self._t['memory_records']} WHERE ns = %s", [_key(ns)]
        if kind is not None:
            sql += " AND kind = %s"
            args.append(kind)
        with self._conn() as conn:
            return int(conn.execute(sql, args).fetchone()[0])


__all__ = ["PostgresMemoryStore"]
