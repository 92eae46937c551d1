"""Plural's mutable state in PostgreSQL: how an :class:`~agent.engine.Engine` picks it, the schema
of each data directory, the seeding of personas, and the thread registry.

Selecting Postgres
------------------
``Engine.open(..., storage=...)`` / ``Engine.open_data_dir(path, storage=...)`` take:

* ``None`` (the default): ``$PLURAL_POSTGRES_URL`` when it is set (with ``$PLURAL_POSTGRES_SCHEMA``
  as the schema when that is set too), else SQLite + FAISS files in the data directory, exactly
  as before;
* ``"sqlite"``: the files, whatever the environment says;
* a ``postgresql://`` (or ``postgres://``) URL, or a :class:`PostgresSettings` (URL, schema,
  pool sizes).

What moves and what stays
-------------------------
The data directory stays on disk and read-only to a running engine: catalog, histories, scorer,
item vectors, the catalog's FAISS index, and ``personas.sqlite`` as the build wrote it. Mutable
state goes to Postgres: personas and their versions, episodic and semantic memory, exposure
counts, thread ownership, and (with :class:`agent.api.PluralAgent`) the LangGraph checkpoints.

Each data directory has its own schema, :func:`data_dir_schema`: ``plural_<folder>_<hash>``,
the hash over the folder's absolute path and build time: another folder (a copy too) or a rebuild
gets a fresh schema, as it would get fresh SQLite files. Processes of one folder share its schema;
replicas with copies of one build on several machines share one by naming it
(``PostgresSettings.schema``, ``$PLURAL_POSTGRES_SCHEMA``). The schema and its tables are created
on first open; when it holds no personas yet, the induced personas of ``personas.sqlite`` are
copied into it (with their versions), once, under an advisory lock so concurrent first opens
seed once.

One transaction per turn
------------------------
Every store of one engine is built on one :class:`~memory.postgres.PostgresDatabase`, whose
transaction is thread-local: :meth:`agent.runtime.AgentRuntime.commit` nests the persona store's,
the memory's, the exposure store's and the thread registry's blocks, and they all run on the
connection the outermost block checked out, as one Postgres transaction (inner blocks are
savepoints). See :mod:`personas.postgres_store` for the row locks behind the persona
compare-and-set.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from agent.threads import ThreadOwnershipError, ThreadRegistry
from memory.errors import UsageError

ENV_URL = "PLURAL_POSTGRES_URL"
ENV_SCHEMA = "PLURAL_POSTGRES_SCHEMA"


@dataclass(frozen=True)
class PostgresSettings:
    """Where and how an engine keeps its mutable state in Postgres."""

    url: str
    """A libpq URL, ``postgresql://user:password@host:5432/dbname``."""
    schema: str | None = None
    """The schema; None: :func:`data_dir_schema` of the data directory."""
    pool_min: int = 1
    """Connections the engine's pool keeps open."""
    pool_max: int = 8
    """At most this many of the engine's turns talk to Postgres at once (the rest wait)."""


def resolve_storage(storage) -> PostgresSettings | None:
    """:class:`PostgresSettings` for ``storage`` (see the module docstring), or None for SQLite."""
    if storage is None:
        url = os.environ.get(ENV_URL)
        return PostgresSettings(url, schema=os.environ.get(ENV_SCHEMA) or None) if url else None
    if isinstance(storage, PostgresSettings):
        return storage
    if isinstance(storage, str):
        if storage == "sqlite":
            return None
        if storage.startswith(("postgresql://", "postgres://")):
            return PostgresSettings(storage)
        if storage == "postgres":
            url = os.environ.get(ENV_URL)
            if url:
                return PostgresSettings(url, schema=os.environ.get(ENV_SCHEMA) or None)
            raise UsageError("storage", storage, f"'postgres' only with ${ENV_URL} set; or a postgresql:// URL")
    raise UsageError("storage", storage, "None (the default), 'sqlite', 'postgres', a postgresql:// URL "
                                         "or a PostgresSettings")


def data_dir_schema(data_dir: str | Path, manifest: dict | None = None) -> str:
    """The Postgres schema of a data directory: ``plural_<folder name>_<12 hex digits>``, the
    folder name lower-cased with anything but letters and digits turned into ``_`` (30 characters
    at most), the hash over the folder's absolute path and its manifest's build time. So every
    data directory has its own state (a copy too, as the evaluations' copies need), and a rebuild
    in place starts fresh, as it does with SQLite files. Processes that must share one schema
    across folders (server replicas on several machines) name it: :class:`PostgresSettings`'s
    ``schema`` or ``$PLURAL_POSTGRES_SCHEMA``."""
    d = Path(data_dir).resolve()
    if manifest is None:
        try:
            manifest = json.loads((d / "manifest.json").read_text())
        except (OSError, ValueError):
            manifest = {}
    identity = json.dumps([str(d), manifest.get("built_at")])
    safe = re.sub(r"[^a-z0-9]+", "_", d.name.lower()).strip("_")[:30].strip("_") or "data"
    return f"plural_{safe}_{hashlib.sha1(identity.encode()).hexdigest()[:12]}"


# ---- thread ownership ------------------------------------------------------------------------
_THREADS_DDL = """
CREATE TABLE IF NOT EXISTS @s.threads (
    thread_id text PRIMARY KEY,
    user_id text NOT NULL,
    created_at double precision,
    turns integer NOT NULL DEFAULT 0
);
"""


class PostgresThreadRegistry(ThreadRegistry):
    """Table ``threads(thread_id, user_id, created_at, turns)`` in the schema of a
    :class:`~memory.postgres.PostgresDatabase`; a claim joins the turn's transaction.

    The claim is one statement, ``INSERT ... ON CONFLICT DO UPDATE ... WHERE owner = user``: two
    users racing for a new thread queue on its row, and the second one finds the first one's row
    and gets :class:`~agent.threads.ThreadOwnershipError` (its turn rolls back)."""

    def __init__(self, db):
        self.db = db
        self._t = f"{db.qschema}.threads"
        db.ensure_tables(_THREADS_DDL, "threads")

    def owner(self, thread_id: str) -> str | None:
        with self.db.connection() as conn:
            row = conn.execute(f"SELECT user_id FROM {self._t} WHERE thread_id = %s", (thread_id,)).fetchone()
        return row[0] if row else None

    def _record_turn(self, thread_id: str, user_id: str) -> None:
        with self.db.transaction() as conn:
            row = conn.execute(f"INSERT INTO {self._t} AS t VALUES (%s, %s, %s, 1) ON CONFLICT (thread_id) "
                               "DO UPDATE SET turns = t.turns + 1 WHERE t.user_id = EXCLUDED.user_id "
                               "RETURNING user_id", (thread_id, user_id, time.time())).fetchone()
        if row is None:  # the thread exists and belongs to someone else
            raise ThreadOwnershipError(thread_id)

    def turns(self, thread_id: str) -> int:
        with self.db.connection() as conn:
            row = conn.execute(f"SELECT turns FROM {self._t} WHERE thread_id = %s", (thread_id,)).fetchone()
        return int(row[0]) if row else 0

    @contextmanager
    def transaction(self):
        with self.db.transaction():
            yield self


# ---- the engine's bundle ---------------------------------------------------------------------
class PostgresStorage:
    """The Postgres stores of one data directory, on one database (one pool, one schema)."""

    def __init__(self, settings: PostgresSettings, data_dir: str | Path, manifest: dict | None = None):
        from memory.postgres import PostgresDatabase
        from personas.postgres_store import PostgresExposureStore, PostgresPersonaStore

        self.settings = settings
        self.data_dir = Path(data_dir)
        self.schema = settings.schema or data_dir_schema(self.data_dir, manifest)
        self.url = settings.url
        self.db = PostgresDatabase(settings.url, schema=self.schema, min_size=settings.pool_min,
                                   max_size=settings.pool_max)
        try:
            self.persona_store = PostgresPersonaStore(self.db)
            self.exposure = PostgresExposureStore(self.db)
            self.threads = PostgresThreadRegistry(self.db)
            self.seeded = self._seed()
            """Users copied from ``personas.sqlite`` by this open (0 when the schema had personas)."""
        except BaseException:
            self.db.close()
            raise
        self._memory = None

    def _seed(self) -> int:
        """Copy the build's induced personas into an empty schema (once; concurrent opens queue)."""
        src = self.data_dir / "personas.sqlite"
        if not self.persona_store.is_empty() or self.persona_store.meta("seeded_from") is not None:
            return 0
        with self.db.transaction():
            self.db.lock("seed")
            if not self.persona_store.is_empty() or self.persona_store.meta("seeded_from") is not None:
                return 0  # another process seeded it while this one waited
            n = 0
            if src.exists():
                from personas.store import SqlitePersonaStore

                source = SqlitePersonaStore(src)
                try:
                    n = self.persona_store.copy_from(source)
                finally:
                    source.close()
            self.persona_store.set_meta("seeded_from", json.dumps({"file": str(src), "users": n,
                                                                   "at": time.time()}))
            return n

    def memory_store(self, dim: int):
        """The episodic and semantic memory (created on first use)."""
        if self._memory is None:
            from memory.postgres_store import PostgresMemoryStore

            self._memory = PostgresMemoryStore(self.db, dim)
        return self._memory

    def close(self) -> None:
        self.db.close()


__all__ = ["ENV_SCHEMA", "ENV_URL", "PostgresSettings", "PostgresStorage", "PostgresThreadRegistry", "data_dir_schema",
           "resolve_storage"]
