"""One PostgreSQL schema behind a connection pool, and the transaction scope its stores share.

Every Postgres store of Plural (memory records here, personas and exposure counts in
:mod:`personas.postgres_store`, thread ownership in :mod:`agent.postgres`) is built on one
:class:`PostgresDatabase`. Its :meth:`~PostgresDatabase.transaction` is what makes a chat turn
one database transaction:

* the outermost block of a thread checks a connection out of the pool, begins a transaction on
  it and keeps the connection in a thread-local slot until the block ends (commit when it ends
  normally, rollback when an exception escapes);
* a block opened inside it, by the same store or by any other store on the same database, reuses
  that connection and runs as a ``SAVEPOINT``: an exception escaping the inner block rolls back to
  the savepoint only (the :class:`~memory.store.MemoryStore` nesting contract), and nothing is
  durable before the outermost block commits;
* reads outside a block take a pooled connection for the statement (autocommit); reads inside a
  block run on the block's connection, so they see its uncommitted writes.

The state is per thread, never shared across threads: a server runs several turns at once, each
on its own connection. Tables live in the database's schema (one per data directory, created on
first open, see :func:`validate_schema`); the ``vector`` extension (pgvector) is created when
missing.

psycopg, psycopg_pool and pgvector are imported by this module, which nothing imports unless
Postgres storage was asked for (``pip install 'plural[postgres]'``).
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Self
from urllib.parse import urlsplit, urlunsplit

from memory.errors import PluralError, UsageError

try:
    import psycopg
    from psycopg_pool import ConnectionPool, PoolTimeout
except ImportError as e:  # pragma: no cover - the extra is not installed
    raise ImportError("Postgres storage needs the extra: pip install 'plural[postgres]' "
                      "(psycopg[binary], psycopg_pool, pgvector)") from e

_SCHEMA_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

POOL_MIN_SIZE = 1
"""Connections a store pool keeps open."""
POOL_MAX_SIZE = 8
"""At most this many turns (or reads) of one process talk to Postgres at once; more wait up to
``POOL_TIMEOUT_S`` for a connection."""
POOL_TIMEOUT_S = 30.0


class PostgresUnavailableError(PluralError):
    """The database could not be reached or set up; the message names the (password-masked) URL."""


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for messages and logs)."""
    try:
        parts = urlsplit(url)
        if parts.password:
            netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
            return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        pass
    return url


def validate_schema(schema: str) -> str:
    """A schema name Plural uses unquoted-safe: lower-case letters, digits and ``_``, at most 63
    characters, not starting with a digit (names are interpolated into SQL, so nothing else)."""
    if not isinstance(schema, str) or not _SCHEMA_RE.match(schema) or schema.startswith("pg_"):
        raise UsageError("postgres schema", schema,
                         "1-63 lower-case letters, digits or '_', not starting with a digit or 'pg_'")
    return schema


def advisory_key(*parts: str) -> int:
    """A signed 64-bit key for ``pg_advisory_xact_lock`` from text parts."""
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class PostgresDatabase:
    """A schema of a Postgres database through a :class:`psycopg_pool.ConnectionPool`.

    ``url`` builds a pool owned by this object (``min_size``/``max_size`` connections, closed by
    :meth:`close`); ``pool`` uses a pool the caller owns (its connections must be in autocommit
    mode). Creates the schema and the ``vector`` extension when missing.
    """

    def __init__(self, url: str | None = None, *, schema: str, pool: ConnectionPool | None = None,
                 min_size: int = POOL_MIN_SIZE, max_size: int = POOL_MAX_SIZE, timeout: float = POOL_TIMEOUT_S):
        if (url is None) == (pool is None):
            raise UsageError("postgres database", "url and pool" if url else "neither url nor pool",
                             "exactly one of url (a postgresql:// URL) or pool (a psycopg_pool.ConnectionPool)")
        self.schema = validate_schema(schema)
        self.qschema = f'"{self.schema}"'
        """The schema as an SQL identifier, for table names."""
        self.url = url
        self._local = threading.local()
        self._owns_pool = pool is None
        if pool is None:
            if not isinstance(min_size, int) or not isinstance(max_size, int) or not 1 <= min_size <= max_size:
                raise UsageError("pool sizes", (min_size, max_size), "integers with 1 <= min_size <= max_size")
            pool = ConnectionPool(url, min_size=min_size, max_size=max_size, timeout=timeout, open=False,
                                  kwargs={"autocommit": True}, name=f"plural-{self.schema}")
            try:
                pool.open(wait=True, timeout=timeout)
            except PoolTimeout as e:
                pool.close()
                raise PostgresUnavailableError(
                    f"cannot connect to Postgres at {mask_url(url or '')} within {timeout:g} s "
                    f"(is the server running and the URL right?)") from e
        self.pool = pool
        try:
            self._setup()
        except BaseException:
            self.close()
            raise

    def _setup(self) -> None:
        with self.pool.connection() as conn, conn.transaction():
            # one process at a time creates the extension and the schema (IF NOT EXISTS is not
            # safe against a concurrent creator)
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (advisory_key("plural", "setup"),))
            if conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'").fetchone() is None:
                try:
                    with conn.transaction():
                        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
                except psycopg.Error as e:
                    raise PostgresUnavailableError(
                        f"the pgvector extension is not installed in the database at "
                        f"{mask_url(self.url or 'the pool')} and could not be created ({e}); "
                        "install pgvector and run CREATE EXTENSION vector as a superuser") from e
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {self.qschema}")

    # ---- connections and transactions ------------------------------------------------
    @property
    def in_transaction(self) -> bool:
        """Whether the calling thread is inside a :meth:`transaction` block of this database."""
        return getattr(self._local, "conn", None) is not None

    @staticmethod
    def _prepare(conn: psycopg.Connection) -> psycopg.Connection:
        if conn.adapters.types.get("vector") is None:  # once per connection: numpy arrays <-> vector
            from pgvector.psycopg import register_vector

            register_vector(conn)
        return conn

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Connection]:
        """A transaction block (see the module docstring); yields its connection."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:  # nested: a savepoint on the thread's connection
            with conn.transaction():
                yield conn
            return
        with self.pool.connection() as conn:
            self._prepare(conn)
            self._local.conn = conn
            try:
                with conn.transaction():
                    yield conn
            finally:
                self._local.conn = None

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        """The thread's transaction connection inside a block, else a pooled one (autocommit)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            yield conn
            return
        with self.pool.connection() as conn:
            yield self._prepare(conn)

    def lock(self, *parts: str) -> None:
        """Take a transaction-scoped advisory lock on ``parts`` (within this schema); only inside a
        :meth:`transaction` block, where it is held until the outermost block ends."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            raise UsageError("advisory lock", parts, "taken inside PostgresDatabase.transaction()")
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (advisory_key(self.schema, *parts),))

    def ensure_tables(self, ddl: str, name: str) -> None:
        """Run ``ddl`` (``CREATE ... IF NOT EXISTS`` statements, ``@s.`` standing for the schema)
        once at a time across processes."""
        with self.transaction() as conn:
            self.lock("ddl", name)
            conn.execute(self.sql(ddl))

    def sql(self, text: str) -> str:
        """``text`` with ``@s.`` replaced by the quoted schema and a dot."""
        return text.replace("@s.", self.qschema + ".")

    def drop_schema(self) -> None:
        """Drop the schema and everything in it (tests, and removing a data directory's state)."""
        with self.connection() as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {self.qschema} CASCADE")

    @property
    def closed(self) -> bool:
        return self.pool.closed

    def close(self) -> None:
        """Close the pool when this object made it (idempotent)."""
        if self._owns_pool and not self.pool.closed:
            self.pool.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PostgresDatabase({mask_url(self.url) if self.url else 'pool'!r}, schema={self.schema!r})"


__all__ = ["POOL_MAX_SIZE", "POOL_MIN_SIZE", "PostgresDatabase", "PostgresUnavailableError", "advisory_key",
           "mask_url", "validate_schema"]
