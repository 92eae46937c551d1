"""The chat's LangGraph checkpoints: the Postgres checkpointer, and pruning old checkpoints.

Checkpointers
-------------
:class:`agent.api.PluralAgent` keeps thread state in ``<data dir>/checkpoints.sqlite``
(``langgraph-checkpoint-sqlite``) or, with a Postgres URL, in the data directory's schema
(:func:`agent.postgres.data_dir_schema`) through :func:`postgres_checkpointer`: a
:class:`~langgraph.checkpoint.postgres.PostgresSaver` on a :class:`psycopg_pool.ConnectionPool`
built here (``PostgresSaver.from_conn_string`` takes no pool settings): ``min_size=1``,
``max_size=8`` (:data:`CHECKPOINT_POOL_MAX`), connections in autocommit mode with
``prepare_threshold=0`` and ``dict_row`` as the saver requires, ``search_path`` set to the
schema. The pool belongs to the agent, which closes it in :meth:`~agent.api.PluralAgent.close`.

Retention
---------
Every turn adds a checkpoint to its thread and none is ever removed; :func:`prune_checkpoints`
(``plural db prune-checkpoints``) deletes old ones, with their pending writes and (Postgres) the
channel blobs no remaining checkpoint references:

* ``keep_last=K``: keep the K newest checkpoints of each thread (and checkpoint namespace);
* ``older_than_days=N``: delete checkpoints older than N days (their time is the one in their
  UUIDv6 id, i.e. when LangGraph wrote them);
* both: a checkpoint is deleted only when both say so (beyond the K newest *and* older than N
  days);
* the newest checkpoint of every thread is always kept, so every conversation can go on (its
  transcript and lists are in that checkpoint); the thread registry is not touched.

``dry_run=True`` counts what would be deleted (the deletes run and are rolled back).
"""

from __future__ import annotations

import sqlite3
import time
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from pydantic import BaseModel

from memory.errors import UsageError

CHECKPOINT_POOL_MIN = 1
CHECKPOINT_POOL_MAX = 8
_UUID_EPOCH_100NS = 0x01B21DD213814000  # 100-ns intervals between 1582-10-15 and 1970-01-01


# ---- the Postgres checkpointer ---------------------------------------------------------------
def postgres_checkpointer(url: str, schema: str, *, serde=None, min_size: int = CHECKPOINT_POOL_MIN,
                          max_size: int = CHECKPOINT_POOL_MAX, timeout: float = 30.0):
    """A set-up :class:`~langgraph.checkpoint.postgres.PostgresSaver` whose tables live in
    ``schema``, on a pool of its own (``saver.conn``; close it when done)."""
    try:
        import psycopg
        from langgraph.checkpoint.postgres import PostgresSaver
        from psycopg.rows import dict_row
        from psycopg_pool import ConnectionPool, PoolTimeout
    except ImportError as e:
        raise UsageError("postgres checkpointer", url, "install the extra: pip install 'plural[postgres]'") from e
    from memory.postgres import PostgresUnavailableError, advisory_key, mask_url, validate_schema

    schema = validate_schema(schema)
    try:
        lock_conn = psycopg.connect(url, autocommit=True, connect_timeout=int(max(1, timeout)))
    except psycopg.OperationalError as e:
        raise PostgresUnavailableError(f"cannot connect to Postgres at {mask_url(url)}: {e}") from e

    def configure(conn) -> None:
        conn.execute(f'SET search_path TO "{schema}"')

    pool = ConnectionPool(url, min_size=min_size, max_size=max_size, timeout=timeout, open=False,
                          configure=configure, name=f"plural-checkpoints-{schema}",
                          kwargs={"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row})
    try:
        with lock_conn:
            # the schema, and the saver's migrations, one process at a time
            lock_conn.execute("SELECT pg_advisory_lock(%s)", (advisory_key(schema, "checkpoints-setup"),))
            lock_conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            try:
                pool.open(wait=True, timeout=timeout)
            except PoolTimeout as e:
                raise PostgresUnavailableError(f"cannot connect to Postgres at {mask_url(url)} "
                                               f"within {timeout:g} s") from e
            saver = PostgresSaver(pool, serde=serde)
            saver.setup()
            lock_conn.execute("SELECT pg_advisory_unlock(%s)", (advisory_key(schema, "checkpoints-setup"),))
    except BaseException:
        pool.close()
        raise
    return saver


# ---- pruning ---------------------------------------------------------------------------------
class PruneReport(BaseModel):
    """What :func:`prune_checkpoints` deleted (or, with ``dry_run``, would delete)."""

    backend: str
    """``sqlite`` or ``postgres``."""
    target: str
    """The SQLite file, or the Postgres URL (password masked) and schema."""
    dry_run: bool
    threads: int = 0
    """Threads (thread id and checkpoint namespace) with checkpoints."""
    checkpoints: int = 0
    """Checkpoints before pruning."""
    deleted_checkpoints: int = 0
    deleted_writes: int = 0
    deleted_blobs: int = 0
    """Postgres only: channel values no remaining checkpoint references."""

    @property
    def kept(self) -> int:
        return self.checkpoints - self.deleted_checkpoints


def checkpoint_time(checkpoint_id: str) -> float | None:
    """Unix time of a LangGraph checkpoint id (a UUIDv6), or None for an id of another form."""
    h = str(checkpoint_id).replace("-", "")
    if len(h) != 32 or h[12] != "6":
        return None
    try:
        ts = (int(h[:12], 16) << 12) | int(h[13:16], 16)
    except ValueError:
        return None
    return (ts - _UUID_EPOCH_100NS) / 1e7


def _check_policy(older_than_days, keep_last) -> None:
    if older_than_days is None and keep_last is None:
        raise UsageError("older_than_days / keep_last", None, "at least one of them (a number of days >= 0, "
                                                              "an integer >= 1 of checkpoints kept per thread)")
    if older_than_days is not None and (isinstance(older_than_days, bool) or not isinstance(older_than_days, (int, float))
                                        or not older_than_days >= 0):
        raise UsageError("older_than_days", older_than_days, "a number of days >= 0")
    if keep_last is not None and (isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1):
        raise UsageError("keep_last", keep_last, "an integer >= 1 (the newest checkpoint of a thread is always kept)")


def _doomed(rows: Iterable[tuple[str, str, str]], older_than_days, keep_last, now: float
            ) -> tuple[int, list[tuple[str, str, str]]]:
    """(number of threads, the (thread id, namespace, checkpoint id) to delete)."""
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    for thread, ns, cid in rows:
        groups[(thread, ns)].append(cid)
    cutoff = None if older_than_days is None else now - float(older_than_days) * 86400.0
    out = []
    for (thread, ns), ids in groups.items():
        ids.sort(reverse=True)  # ids are time-ordered: newest first (LangGraph's own "latest")
        for rank, cid in enumerate(ids):
            if rank == 0:
                continue  # the thread's current state
            beyond = keep_last is None or rank >= keep_last
            t = checkpoint_time(cid)
            old = cutoff is None or (t is not None and t < cutoff)
            if beyond and old:
                out.append((thread, ns, cid))
    return len(groups), out


def prune_sqlite_checkpoints(path: str | Path, *, older_than_days: float | None = None,
                             keep_last: int | None = None, dry_run: bool = False,
                             now: float | None = None) -> PruneReport:
    """Prune a ``langgraph-checkpoint-sqlite`` file (tables ``checkpoints`` and ``writes``)."""
    _check_policy(older_than_days, keep_last)
    path = Path(path)
    report = PruneReport(backend="sqlite", target=str(path), dry_run=dry_run)
    if not path.exists():
        return report
    con = sqlite3.connect(str(path), timeout=30, isolation_level=None)
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "checkpoints" not in tables:
            return report
        con.execute("BEGIN IMMEDIATE")  # a writer of the file waits for the prune, and the other way round
        try:
            rows = con.execute("SELECT thread_id, checkpoint_ns, checkpoint_id FROM checkpoints").fetchall()
            report.checkpoints = len(rows)
            report.threads, doomed = _doomed(rows, older_than_days, keep_last, time.time() if now is None else now)
            before = con.total_changes
            con.executemany("DELETE FROM checkpoints WHERE thread_id = ? AND checkpoint_ns = ? AND checkpoint_id = ?",
                            doomed)
            report.deleted_checkpoints = con.total_changes - before
            if "writes" in tables:
                before = con.total_changes
                con.executemany("DELETE FROM writes WHERE thread_id = ? AND checkpoint_ns = ? AND checkpoint_id = ?",
                                doomed)
                report.deleted_writes = con.total_changes - before
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("ROLLBACK" if dry_run else "COMMIT")
    finally:
        con.close()
    return report


def prune_postgres_checkpoints(url: str, schema: str, *, older_than_days: float | None = None,
                               keep_last: int | None = None, dry_run: bool = False,
                               now: float | None = None) -> PruneReport:
    """Prune the ``PostgresSaver`` tables of ``schema`` (``checkpoints``, ``checkpoint_writes``,
    ``checkpoint_blobs``) in one transaction."""
    _check_policy(older_than_days, keep_last)
    import psycopg

    from memory.postgres import PostgresUnavailableError, mask_url, validate_schema

    schema = validate_schema(schema)
    report = PruneReport(backend="postgres", target=f"{mask_url(url)} schema {schema}", dry_run=dry_run)
    q = f'"{schema}"'
    try:
        conn = psycopg.connect(url, autocommit=True)
    except psycopg.OperationalError as e:
        raise PostgresUnavailableError(f"cannot connect to Postgres at {mask_url(url)}: {e}") from e
    with conn:
        have = {r[0] for r in conn.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
                                           (schema,)).fetchall()}
        if "checkpoints" not in have:
            return report
        with conn.transaction():  # dry run: rolled back at the end
            rows = conn.execute(f"SELECT thread_id, checkpoint_ns, checkpoint_id FROM {q}.checkpoints").fetchall()
            report.checkpoints = len(rows)
            report.threads, doomed = _doomed(rows, older_than_days, keep_last, time.time() if now is None else now)
            if doomed:
                cols = [list(c) for c in zip(*doomed)]
                gone = conn.execute(
                    f"DELETE FROM {q}.checkpoints c USING unnest(%s::text[], %s::text[], %s::text[]) AS d(t, ns, id) "
                    "WHERE c.thread_id = d.t AND c.checkpoint_ns = d.ns AND c.checkpoint_id = d.id "
                    "RETURNING c.thread_id, c.checkpoint_ns, c.checkpoint -> 'channel_versions'", cols).fetchall()
                report.deleted_checkpoints = len(gone)
                if "checkpoint_writes" in have:
                    report.deleted_writes = conn.execute(
                        f"DELETE FROM {q}.checkpoint_writes w USING unnest(%s::text[], %s::text[], %s::text[]) "
                        "AS d(t, ns, id) WHERE w.thread_id = d.t AND w.checkpoint_ns = d.ns "
                        "AND w.checkpoint_id = d.id", cols).rowcount
                refs = sorted({(t, ns, str(ch), str(v)) for t, ns, versions in gone
                               for ch, v in (versions or {}).items()})
                if refs and "checkpoint_blobs" in have:
                    # only values the deleted checkpoints used, and that no remaining one uses: a
                    # checkpoint being written meanwhile derives from the newest, which is kept
                    report.deleted_blobs = conn.execute(
                        f"DELETE FROM {q}.checkpoint_blobs b USING unnest(%s::text[], %s::text[], %s::text[], "
                        "%s::text[]) AS d(t, ns, ch, v) WHERE b.thread_id = d.t AND b.checkpoint_ns = d.ns "
                        "AND b.channel = d.ch AND b.version = d.v AND NOT EXISTS (SELECT 1 FROM "
                        f"{q}.checkpoints c WHERE c.thread_id = b.thread_id AND c.checkpoint_ns = b.checkpoint_ns "
                        "AND c.checkpoint -> 'channel_versions' ->> b.channel = b.version)",
                        [list(c) for c in zip(*refs)]).rowcount
            if dry_run:
                raise psycopg.Rollback()  # leaves the block, undoing it
    return report


def prune_checkpoints(data_dir: str | Path, *, postgres_url: str | None = None, schema: str | None = None,
                      older_than_days: float | None = None, keep_last: int | None = None,
                      dry_run: bool = False, now: float | None = None) -> PruneReport:
    """Prune the checkpoints of a data directory's chat threads: its ``checkpoints.sqlite``, or,
    with ``postgres_url``, its Postgres schema (``schema``, default
    :func:`agent.postgres.data_dir_schema`). See the module docstring for the policy."""
    _check_policy(older_than_days, keep_last)
    d = Path(data_dir)
    if not (d / "manifest.json").exists():
        raise UsageError("data_dir", str(d), "a folder built by Plural (it has a manifest.json)")
    if postgres_url:
        from agent.postgres import data_dir_schema

        return prune_postgres_checkpoints(postgres_url, schema or data_dir_schema(d), older_than_days=older_than_days,
                                          keep_last=keep_last, dry_run=dry_run, now=now)
    return prune_sqlite_checkpoints(d / "checkpoints.sqlite", older_than_days=older_than_days, keep_last=keep_last,
                                    dry_run=dry_run, now=now)


__all__ = ["CHECKPOINT_POOL_MAX", "CHECKPOINT_POOL_MIN", "PruneReport", "checkpoint_time", "postgres_checkpointer",
           "prune_checkpoints", "prune_postgres_checkpoints", "prune_sqlite_checkpoints"]
