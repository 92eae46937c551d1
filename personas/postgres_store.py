"""Personas and exposure counts in PostgreSQL, on a :class:`~memory.postgres.PostgresDatabase`.

:class:`PostgresPersonaStore` keeps each user's current set in one row (``persona_sets``: the
JSON body without embeddings, the embeddings as float32 ``bytea``, in the body's order) and every
version in ``persona_versions``. :class:`PostgresExposureStore` keeps ``exposure(item_id, n)``.
Both write through the database's thread-local transaction, so inside a turn's
``persona_store.transaction()`` the persona versions, the memory records, the exposure counts and
the thread claim are one Postgres transaction.

Compare-and-set under concurrency
---------------------------------
Inside a transaction block, :meth:`PostgresPersonaStore.get` reads the user's row with
``SELECT ... FOR UPDATE``; for a user without a row it first takes a transaction-scoped advisory
lock on the user (so two first writes of one user queue too). The lock is held until the
outermost block ends. So:

* :meth:`~personas.store.PersonaStore.put_many` (and ``put``, ``rollback``) read the versions they
  compare ``expected_versions`` with under that lock: a concurrent writer of the same user waits
  and then reads the committed result (READ COMMITTED takes a fresh snapshot per statement), so
  the compare-and-set can neither miss a concurrent change nor be overwritten by one.
* Any block that reads a user's personas and then writes them (the recomputation of a
  conflicting feedback turn in :func:`agent.graph.builder.write_node`, which wraps its read and its
  commit in ``persona_store.transaction()``) holds the lock from its first read on: a second
  attempt cannot lose the race again.

Reads outside a block take no lock. Locks are released when the outermost block ends (a
savepoint rolled back releases the row locks taken inside it).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from contextlib import contextmanager

import numpy as np

from memory.postgres import PostgresDatabase
from personas import store as _store
from personas.exposure import ExposureStore
from personas.model import PersonaSet, PersonaVersion
from personas.store import PersonaStore

_PERSONA_DDL = """
CREATE TABLE IF NOT EXISTS @s.persona_sets (
    user_id text PRIMARY KEY,
    ord bigserial,
    body text NOT NULL,
    vectors bytea[] NOT NULL
);
CREATE TABLE IF NOT EXISTS @s.persona_versions (
    seq bigserial PRIMARY KEY,
    user_id text NOT NULL,
    persona_id text NOT NULL,
    version integer NOT NULL,
    body text NOT NULL,
    v bytea
);
CREATE INDEX IF NOT EXISTS persona_versions_user ON @s.persona_versions (user_id, persona_id, seq);
CREATE TABLE IF NOT EXISTS @s.persona_meta (key text PRIMARY KEY, value text NOT NULL);
"""

_EXPOSURE_DDL = "CREATE TABLE IF NOT EXISTS @s.exposure (item_id text PRIMARY KEY, n bigint NOT NULL);"

_USER_LOCK_BUCKETS = 1024
"""Advisory locks for users without a row are taken per hash bucket, so that a transaction
writing many new users holds at most this many (Postgres' lock table is small)."""


class PostgresPersonaStore(PersonaStore):
    """Personas in the schema of ``db`` (see the module docstring). ``owns_db=True``: :meth:`close`
    closes the database too."""

    def __init__(self, db: PostgresDatabase, *, owns_db: bool = False):
        self.db = db
        self._owns_db = owns_db
        self._sets = f"{db.qschema}.persona_sets"
        self._versions = f"{db.qschema}.persona_versions"
        self._meta = f"{db.qschema}.persona_meta"
        db.ensure_tables(_PERSONA_DDL, "personas")

    # ---- PersonaStore -----------------------------------------------------------------
    def get(self, user_id: str) -> PersonaSet | None:
        uid = str(user_id)
        sql = f"SELECT body, vectors FROM {self._sets} WHERE user_id = %s"
        with self.db.connection() as conn:
            if not self.db.in_transaction:
                row = conn.execute(sql, (uid,)).fetchone()
            else:  # read under the user's lock, held until the outermost block ends
                row = conn.execute(sql + " FOR UPDATE", (uid,)).fetchone()
                if row is None:
                    self.db.lock("persona-user", str(hash_bucket(uid)))
                    row = conn.execute(sql + " FOR UPDATE", (uid,)).fetchone()
        if row is None:
            return None
        body, vectors = row
        d = json.loads(body)
        for p, blob in zip(d["personas"], vectors):
            p["embedding"] = np.frombuffer(blob, dtype=np.float32).tolist() if blob else []
        return PersonaSet.model_validate(d)

    @contextmanager
    def transaction(self):
        with self.db.transaction():
            yield self

    def _write(self, items):
        sets, versions = [], []
        for pset, vs in items:
            body, vecs = _store._dump_set(pset)
            sets.append((pset.user_id, body, [bytes(v) for _, v in vecs]))
            versions += [(pset.user_id, v.persona.persona_id, v.persona.version,
                          v.model_dump_json(exclude={"persona": {"embedding"}}),
                          np.asarray(v.persona.embedding, np.float32).tobytes()) for v in vs]
        with self.db.transaction() as conn, conn.cursor() as cur:
            cur.executemany(f"INSERT INTO {self._sets} (user_id, body, vectors) VALUES (%s, %s, %s) "
                            "ON CONFLICT (user_id) DO UPDATE SET body = EXCLUDED.body, vectors = EXCLUDED.vectors",
                            sets)
            if versions:
                cur.executemany(f"INSERT INTO {self._versions} (user_id, persona_id, version, body, v) "
                                "VALUES (%s, %s, %s, %s, %s)", versions)

    def versions(self, user_id: str, persona_id: str | None = None) -> list[PersonaVersion]:
        sql = f"SELECT body, v FROM {self._versions} WHERE user_id = %s"
        args: list = [str(user_id)]
        if persona_id is not None:
            sql += " AND persona_id = %s"
            args.append(persona_id)
        with self.db.connection() as conn:
            rows = conn.execute(sql + " ORDER BY seq", args).fetchall()
        return [_store.load_version(body, blob) for body, blob in rows]

    def users(self) -> list[str]:
        with self.db.connection() as conn:
            return [r[0] for r in conn.execute(f"SELECT user_id FROM {self._sets} ORDER BY ord").fetchall()]

    # ---- seeding and metadata -----------------------------------------------------------
    def is_empty(self) -> bool:
        with self.db.connection() as conn:
            return conn.execute(f"SELECT 1 FROM {self._sets} LIMIT 1").fetchone() is None

    def meta(self, key: str) -> str | None:
        with self.db.connection() as conn:
            row = conn.execute(f"SELECT value FROM {self._meta} WHERE key = %s", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        with self.db.transaction() as conn:
            conn.execute(f"INSERT INTO {self._meta} VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value = "
                         "EXCLUDED.value", (key, value))

    def copy_from(self, source: PersonaStore) -> int:
        """Copy every user's current set and every version of ``source`` as they are (versions,
        reasons and feedback kept); returns the number of users copied. Used to seed a schema
        from a data directory's induced personas."""
        users = source.users()
        with self.db.transaction():
            for s in range(0, len(users), 500):
                self._write([(source.require(u), source.versions(u)) for u in users[s:s + 500]])
        return len(users)

    def close(self) -> None:
        if self._owns_db:
            self.db.close()


def hash_bucket(user_id: str) -> int:
    import hashlib

    return int.from_bytes(hashlib.blake2b(user_id.encode(), digest_size=4).digest(), "big") % _USER_LOCK_BUCKETS


class PostgresExposureStore(ExposureStore):
    """Exposure counts in the schema of ``db``. ``add`` upserts the counts in item-id order, so two
    turns counting overlapping lists lock the rows in the same order and never deadlock."""

    def __init__(self, db: PostgresDatabase):
        self.db = db
        self._t = f"{db.qschema}.exposure"
        db.ensure_tables(_EXPOSURE_DDL, "exposure")

    def counts(self, item_ids: Sequence[str]) -> np.ndarray:
        with self.db.connection() as conn:
            have = dict(conn.execute(f"SELECT item_id, n FROM {self._t}").fetchall())
        return np.fromiter((have.get(str(i), 0) for i in item_ids), dtype=np.int64, count=len(item_ids))

    def add(self, item_ids: Sequence[str]) -> None:
        rows = sorted(Counter(str(i) for i in item_ids).items())
        if not rows:
            return
        with self.db.transaction() as conn, conn.cursor() as cur:
            cur.executemany(f"INSERT INTO {self._t} AS e (item_id, n) VALUES (%s, %s) "
                            "ON CONFLICT (item_id) DO UPDATE SET n = e.n + EXCLUDED.n", rows)

    @contextmanager
    def transaction(self):
        with self.db.transaction():
            yield self

    def reset(self) -> None:
        with self.db.transaction() as conn:
            conn.execute(f"DELETE FROM {self._t}")

    def total(self) -> int:
        with self.db.connection() as conn:
            (n,) = conn.execute(f"SELECT COALESCE(SUM(n), 0) FROM {self._t}").fetchone()
        return int(n)


__all__ = ["PostgresExposureStore", "PostgresPersonaStore"]
