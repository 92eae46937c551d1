"""Postgres storage end to end: selecting it, the schema per data directory and its seeding, a
turn's commit as one database transaction, compare-and-set under concurrency, the Postgres
checkpointer through PluralAgent, and pruning checkpoints (SQLite and Postgres)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
import uuid

import pytest

from agent.postgres import PostgresSettings, data_dir_schema, resolve_storage
from memory.errors import UsageError


def _schema() -> str:
    return f"t_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def pg_settings(postgres_url):
    """Settings on a fresh schema, dropped after the test."""
    made: list[PostgresSettings] = []

    def make(schema: str | None = None) -> PostgresSettings:
        s = PostgresSettings(postgres_url, schema=schema or _schema())
        made.append(s)
        return s

    yield make
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as conn:
        for s in made:
            conn.execute(f'DROP SCHEMA IF EXISTS "{s.schema}" CASCADE')


def _agent(engine, **kw):
    from agent.api import PluralAgent
    from agent.refine import RefineConfig
    from agent.runtime import AgentConfig, AgentRuntime

    return PluralAgent(AgentRuntime(engine, None, AgentConfig(k=5, llm_prose="off",
                                                              refine=RefineConfig(simulator="embedding"))), **kw)


# ---- selection, naming (no server needed) ----------------------------------------------------
def test_storage_selection(monkeypatch):
    monkeypatch.delenv("PLURAL_POSTGRES_URL", raising=False)
    monkeypatch.delenv("PLURAL_POSTGRES_SCHEMA", raising=False)
    assert resolve_storage(None) is None and resolve_storage("sqlite") is None
    assert resolve_storage("postgresql://h/db") == PostgresSettings("postgresql://h/db")
    s = PostgresSettings("postgres://h/db", schema="mine", pool_max=3)
    assert resolve_storage(s) is s
    with pytest.raises(UsageError, match="storage"):
        resolve_storage("postgres")  # no URL anywhere
    with pytest.raises(UsageError, match="storage"):
        resolve_storage("mysql://h/db")
    monkeypatch.setenv("PLURAL_POSTGRES_URL", "postgresql://env/db")
    assert resolve_storage(None).url == "postgresql://env/db" and resolve_storage("postgres").url.endswith("env/db")
    assert resolve_storage("sqlite") is None  # forced, whatever the environment says


def test_schema_per_data_dir(tmp_path, monkeypatch):
    from memory.postgres import validate_schema

    m = {"built_at": 1.5}
    s = data_dir_schema(tmp_path / "ML-100K-3f2a (v2)", m)
    assert s.startswith("plural_ml_100k_3f2a_v2_") and validate_schema(s) == s and len(s) <= 63
    assert data_dir_schema(tmp_path / "ML-100K-3f2a (v2)", dict(m)) == s  # stable
    assert data_dir_schema(tmp_path / "copy", m) != s  # another folder (a copy) has its own state
    assert data_dir_schema(tmp_path / "ML-100K-3f2a (v2)", {"built_at": 2.0}) != s  # and so has a rebuild
    long = data_dir_schema(tmp_path / ("x" * 200), m)
    assert validate_schema(long) == long
    monkeypatch.setenv("PLURAL_POSTGRES_URL", "postgresql://env/db")
    monkeypatch.setenv("PLURAL_POSTGRES_SCHEMA", "shared_by_replicas")
    assert resolve_storage(None).schema == "shared_by_replicas"
    for bad in ("Upper", "1abc", "a-b", "pg_x", "x" * 64, 'a"; drop'):
        with pytest.raises(UsageError, match="postgres schema"):
            validate_schema(bad)


def test_default_storage_imports_no_postgres_module(pg_data_dir):
    code = ("import sys, agent, agent.api, agent.runtime, agent.postgres, agent.checkpoints, agent.db_cli\n"
            "from agent.engine import Engine\n"
            f"e = Engine.open_data_dir({str(pg_data_dir)!r})\n"
            "assert e.postgres is None, e.postgres\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('psycopg', 'psycopg_pool', 'pgvector'))\n"
            "assert not bad, bad\n")
    env = {k: v for k, v in __import__("os").environ.items() if k != "PLURAL_POSTGRES_URL"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)


# ---- engine on Postgres: schema, seeding, isolation -------------------------------------------
@pytest.mark.postgres
def test_engine_seeds_its_schema_once_and_data_dirs_are_isolated(pg_data_dir, pg_settings, postgres_url, monkeypatch):
    from agent.engine import Engine
    from personas.store import SqlitePersonaStore

    src = SqlitePersonaStore(pg_data_dir / "personas.sqlite")
    users = src.users()
    one = pg_settings()
    e = Engine.open_data_dir(pg_data_dir, storage=one)
    assert e.postgres.schema == one.schema and e.postgres.seeded == len(users) > 0
    ps = e.persona_store
    assert ps.users() == users
    u = users[0]
    assert ps.get(u) == src.get(u) and ps.versions(u) == src.versions(u)
    changed = ps.get(u)
    p0 = changed.personas[0]
    ps.put(changed.model_copy(update={"personas": [p0.model_copy(update={"description": "Only in schema one."}),
                                                   *changed.personas[1:]]}), reason="refinement")
    e.memory_store().put_one(("user", u, "episodic"), __import__("memory.store", fromlist=["MemoryRecord"])
                             .MemoryRecord(kind="chat_turn", text="hello", timestamp=1.0),
                             [1.0] + [0.0] * (int(e.manifest["text_dim"]) - 1))
    e.exposure_store().add(["i1"])
    assert e.search_catalog("space")  # the catalog stays in the data directory's FAISS index
    e.close()
    assert e.postgres.db.closed

    again = Engine.open_data_dir(pg_data_dir, storage=one)  # reopened: not seeded again
    assert again.postgres.seeded == 0 and again.persona_store.get(u).personas[0].description == "Only in schema one."
    assert again.memory_store().count(("user", u, "episodic")) == 1 and again.exposure_store().total() == 1
    again.close()

    other = Engine.open_data_dir(pg_data_dir, storage=pg_settings())  # another schema: its own state
    assert other.postgres.seeded == len(users)
    assert other.persona_store.get(u) == src.get(u)
    assert other.memory_store().count(("user", u, "episodic")) == 0 and other.exposure_store().total() == 0
    other.close()
    src.close()

    # the environment selects Postgres, with the data directory's own schema; "sqlite" overrides it
    monkeypatch.setenv("PLURAL_POSTGRES_URL", postgres_url)
    derived = pg_settings(data_dir_schema(pg_data_dir))  # registered for dropping
    env = Engine.open_data_dir(pg_data_dir)
    assert env.postgres is not None and env.postgres.schema == derived.schema
    env.close()
    files = Engine.open_data_dir(pg_data_dir, storage="sqlite")
    assert files.postgres is None
    files.close()


# ---- one transaction per turn ---------------------------------------------------------------
def _turn(rt, user: str, thread: str):
    """A turn's pending writes over all four stores: a like (persona versions + a feedback event),
    a list shown (an event + exposure counts), the thread claim."""
    rec = rt.recommend_request(user, rt.parse_request(user, "")[0], 5, None)
    _, pending = rt.feedback(user, rec.items[0].item_id, "like", use_llm=False)
    assert pending.personas is not None
    return pending.merge(rt.shown(rec, thread)).model_copy(update={"thread_id": thread})


def _state(engine, user: str, thread: str) -> dict:
    return {"versions": len(engine.persona_store.versions(user)), "set": engine.persona_store.get(user).model_dump(),
            "events": engine.memory_store().count(("user", user, "episodic")),
            "exposure": engine.exposure_store().total(), "owner": engine.thread_registry().owner(thread),
            "turns": engine.thread_registry().turns(thread)}


@pytest.mark.postgres
def test_a_turns_commit_is_one_transaction_that_rolls_back_whole(pg_data_dir, pg_settings, postgres_url, monkeypatch):
    import psycopg

    from agent.engine import Engine
    from agent.postgres import PostgresThreadRegistry
    from agent.runtime import AgentConfig, AgentRuntime
    from agent.threads import ThreadOwnershipError

    engine = Engine.open_data_dir(pg_data_dir, storage=pg_settings())
    rt = AgentRuntime(engine, None, AgentConfig(llm_prose="off"))
    user, schema = engine.persona_store.users()[2], engine.postgres.schema
    db = engine.postgres.db
    before = _state(engine, user, "th")
    seen: dict = {}
    real_add = type(engine.exposure_store()).add

    def spy_add(self, ids):
        with db.connection() as conn:
            seen["exposure"] = conn.execute("SELECT pg_backend_pid(), txid_current()").fetchone()
        return real_add(self, ids)

    def failing_claim(self, thread_id, user_id):  # the turn's last write fails
        with db.connection() as conn:
            seen["claim"] = conn.execute("SELECT pg_backend_pid(), txid_current()").fetchone()
        with psycopg.connect(postgres_url) as outside:  # nothing of the turn is visible yet
            seen["outside_versions"] = outside.execute(
                f'SELECT count(*) FROM "{schema}".persona_versions WHERE user_id = %s', (user,)).fetchone()[0]
            seen["outside_events"] = outside.execute(
                f'SELECT count(*) FROM "{schema}".memory_records WHERE ns = %s', (f"user/{user}/episodic",)).fetchone()[0]
        with db.connection() as conn:  # while the turn's own connection sees its writes
            seen["inside_versions"] = conn.execute(
                f'SELECT count(*) FROM "{schema}".persona_versions WHERE user_id = %s', (user,)).fetchone()[0]
        raise RuntimeError("disk full")

    monkeypatch.setattr(type(engine.exposure_store()), "add", spy_add)
    monkeypatch.setattr(PostgresThreadRegistry, "_record_turn", failing_claim)
    with pytest.raises(RuntimeError, match="disk full"):
        rt.commit(user, _turn(rt, user, "th"))
    assert seen["exposure"] == seen["claim"]  # one connection, one transaction id
    assert seen["outside_versions"] == before["versions"] and seen["outside_events"] == before["events"]
    assert seen["inside_versions"] > before["versions"]
    assert _state(engine, user, "th") == before  # nothing at all was kept
    monkeypatch.undo()

    # a real failure at the end: another user committed a first turn on the thread meanwhile
    other = engine.persona_store.users()[3]
    engine.thread_registry().claim("th", other)
    before = _state(engine, user, "th")
    with pytest.raises(ThreadOwnershipError):
        rt.commit(user, _turn(rt, user, "th"))
    assert _state(engine, user, "th") == before

    # and the same turn on a free thread is kept whole
    rt.commit(user, _turn(rt, user, "th2"))
    after = _state(engine, user, "th2")
    assert after["versions"] > before["versions"] and after["events"] == before["events"] + 2
    assert after["exposure"] == before["exposure"] + 5 and after["owner"] == user and after["turns"] == 1
    engine.close()


# ---- compare-and-set under concurrency ------------------------------------------------------
def _cas_writers(store, user, n_threads, n_writes, hold_lock: bool):
    from personas.store import PersonaConflictError

    conflicts = [0]
    barrier = threading.Barrier(n_threads)
    errors: list[BaseException] = []

    def one_write(tag):
        pset = store.get(user)
        p = pset.personas[0]
        new = pset.model_copy(update={"personas": [p.model_copy(update={"evidence": [*p.evidence, tag]}),
                                                   *pset.personas[1:]]})
        store.put(new, reason="refinement", expected_versions=store.versions_of(pset))

    def work(k):
        try:
            barrier.wait()
            for i in range(n_writes):
                while True:
                    try:
                        if hold_lock:  # read and write in one block: the read takes the user's row lock
                            with store.transaction():
                                one_write(f"w{k}-{i}")
                        else:
                            one_write(f"w{k}-{i}")
                        break
                    except PersonaConflictError:
                        conflicts[0] += 1
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    return conflicts[0]


@pytest.mark.postgres
@pytest.mark.parametrize("hold_lock", [False, True], ids=["read-then-cas", "read-under-lock"])
def test_concurrent_compare_and_set_writes_lose_nothing(postgres_db, hold_lock):
    from personas.model import Persona, PersonaSet
    from personas.postgres_store import PostgresPersonaStore

    store = PostgresPersonaStore(postgres_db(max_size=8))
    store.put(PersonaSet(user_id="u", personas=[
        Persona(persona_id="p1", user_id="u", name="Space", description="likes space", weight=0.5, evidence=["1"],
                embedding=[1.0, 0.0]),
        Persona(persona_id="p2", user_id="u", name="Love", description="likes love", weight=0.5, embedding=[0.0, 1.0])]))
    n_threads, n_writes = 6, 5
    conflicts = _cas_writers(store, "u", n_threads, n_writes, hold_lock)
    p1 = store.get("u").get("p1")
    tags = {f"w{k}-{i}" for k in range(n_threads) for i in range(n_writes)}
    assert p1.version == 1 + n_threads * n_writes  # one version per write: none lost, none doubled
    assert set(p1.evidence) == {"1", *tags} and len(p1.evidence) == 1 + len(tags)
    assert [v.persona.version for v in store.versions("u", "p1")] == list(range(1, p1.version + 1))
    if hold_lock:
        assert conflicts == 0  # a block that read under the lock cannot lose the race (write_node's retry)
    else:
        assert conflicts >= 1  # they did collide, and the compare-and-set refused the stale writes


@pytest.mark.postgres
def test_concurrent_chat_likes_on_postgres_are_all_kept(tmp_path, hash_config, postgres_url, monkeypatch):
    """The chat-level race of tests/test_turn_atomicity.py with everything in Postgres (the
    engine's stores and the checkpointer, selected by $PLURAL_POSTGRES_URL): the losers of the
    compare-and-set are recomputed under the row lock and committed."""
    from test_turn_atomicity import test_concurrent_likes_on_one_persona_are_all_kept as race

    monkeypatch.setenv("PLURAL_POSTGRES_URL", postgres_url)
    race(tmp_path, hash_config)


# ---- the checkpointer ------------------------------------------------------------------------
@pytest.mark.postgres
def test_checkpointer_round_trip_and_resume(pg_data_dir, pg_settings, postgres_url):
    import psycopg

    from agent.engine import Engine

    settings = pg_settings()
    agent = _agent(Engine.open_data_dir(pg_data_dir, storage=settings), postgres_url=postgres_url)
    pool = agent._checkpointer.conn
    assert (pool.min_size, pool.max_size) == (1, 8)
    user = agent.engine.persona_store.users()[2]
    first = agent.chat(user, "a space film", "rt1")
    second = agent.chat(user, "loved #1", "rt1")
    assert first.error is None and second.error is None and second.intent == "feedback", second.response
    assert [t.role for t in agent.transcript("rt1", user)] == ["user", "assistant"] * 2
    with psycopg.connect(postgres_url) as conn:  # in the data directory's schema, not public
        n = conn.execute(f'SELECT count(*) FROM "{settings.schema}".checkpoints WHERE thread_id = %s',
                         ("rt1",)).fetchone()[0]
    assert n >= 2
    agent.close()
    assert pool.closed and agent.engine.postgres.db.closed
    agent.close()  # idempotent

    # reopened without naming the URL: an engine on Postgres keeps its checkpoints there too
    again = _agent(Engine.open_data_dir(pg_data_dir, storage=settings))
    assert type(again._checkpointer).__name__ == "PostgresSaver"
    turns = again.transcript("rt1", user)
    assert turns[0].content == "a space film" and len(turns) == 4
    third = again.chat(user, "something funny", "rt1")  # the conversation resumes where it was
    assert third.error is None, third.response
    assert len(again.transcript("rt1", user)) == 6 and again.threads.turns("rt1") == 3
    liked = [e for e in again.history(user, 100) if e.kind == "feedback"]
    assert len(liked) == 1  # the like of the first session is in Postgres memory
    again.close()


# ---- pruning checkpoints ---------------------------------------------------------------------
def _chat_threads(agent, user, turns_per_thread: dict[str, int]):
    for thread, n in turns_per_thread.items():
        for k in range(n):
            reply = agent.chat(user, ["a space film", "something funny", "older films"][k % 3], thread)
            assert reply.error is None, reply.response


def _checkpoint_counts_sqlite(path) -> dict[str, int]:
    import sqlite3

    con = sqlite3.connect(path)
    try:
        return dict(con.execute("SELECT thread_id, count(*) FROM checkpoints GROUP BY thread_id").fetchall())
    finally:
        con.close()


def test_prune_sqlite_checkpoints(pg_data_dir, tmp_path):
    from typer.testing import CliRunner

    from agent.checkpoints import checkpoint_time, prune_checkpoints
    from agent.db_cli import db_app
    from agent.engine import Engine

    ddir = tmp_path / "dd"
    shutil.copytree(pg_data_dir, ddir)
    agent = _agent(Engine.open_data_dir(ddir, storage="sqlite"), postgres_url=None)
    user = agent.engine.persona_store.users()[2]
    _chat_threads(agent, user, {"a": 3, "b": 2})
    path = ddir / "checkpoints.sqlite"
    before = _checkpoint_counts_sqlite(path)
    assert before["a"] > before["b"] >= 2

    dry = prune_checkpoints(ddir, keep_last=1, dry_run=True)
    assert dry.dry_run and dry.threads == 2 and dry.deleted_checkpoints == sum(before.values()) - 2
    assert _checkpoint_counts_sqlite(path) == before  # nothing deleted
    recent = prune_checkpoints(ddir, older_than_days=1)  # everything is minutes old
    assert recent.deleted_checkpoints == 0
    both = prune_checkpoints(ddir, keep_last=2, older_than_days=1, now=time.time() + 2 * 86400)
    assert both.deleted_checkpoints == sum(before.values()) - 4
    assert _checkpoint_counts_sqlite(path) == {"a": 2, "b": 2}

    runner = CliRunner()
    out = runner.invoke(db_app, ["prune-checkpoints", "--data-dir", str(ddir), "--keep-last", "1", "--json"],
                        env={"PLURAL_POSTGRES_URL": "", "PLURAL_POSTGRES_SCHEMA": ""})
    assert out.exit_code == 0, out.output
    rep = json.loads(out.output)
    assert rep["backend"] == "sqlite" and rep["deleted_checkpoints"] == 2 and rep["kept"] == 2
    assert _checkpoint_counts_sqlite(path) == {"a": 1, "b": 1}
    import sqlite3

    con = sqlite3.connect(path)
    ids = {r[0] for r in con.execute("SELECT checkpoint_id FROM checkpoints")}
    orphans = con.execute("SELECT count(*) FROM writes WHERE checkpoint_id NOT IN (SELECT checkpoint_id FROM "
                          "checkpoints)").fetchone()[0]
    con.close()
    assert orphans == 0 and all(abs(checkpoint_time(i) - time.time()) < 600 for i in ids)

    # the threads go on from their newest checkpoint
    assert len(agent.transcript("a", user)) == 6
    reply = agent.chat(user, "loved #1", "a")
    assert reply.error is None and len(agent.transcript("a", user)) == 8
    agent.close()

    out = runner.invoke(db_app, ["prune-checkpoints", "--data-dir", str(ddir), "--dry-run"],
                        env={"PLURAL_POSTGRES_URL": "", "PLURAL_POSTGRES_SCHEMA": ""})
    assert out.exit_code == 2 and "--older-than-days / --keep-last" in out.output
    out = runner.invoke(db_app, ["prune-checkpoints", "--data-dir", str(ddir), "--keep-last", "0"],
                        env={"PLURAL_POSTGRES_URL": "", "PLURAL_POSTGRES_SCHEMA": ""})
    assert out.exit_code == 2 and "--keep-last" in out.output


def test_prune_errors_name_parameters(tmp_path, pg_data_dir):
    from agent.checkpoints import prune_checkpoints

    with pytest.raises(UsageError, match="older_than_days / keep_last"):
        prune_checkpoints(pg_data_dir)
    with pytest.raises(UsageError, match="invalid keep_last 0"):
        prune_checkpoints(pg_data_dir, keep_last=0)
    with pytest.raises(UsageError, match="invalid older_than_days -1"):
        prune_checkpoints(pg_data_dir, older_than_days=-1)
    with pytest.raises(UsageError, match="invalid data_dir"):
        prune_checkpoints(tmp_path / "nothing", keep_last=1)
    empty = tmp_path / "built"
    shutil.copytree(pg_data_dir, empty, ignore=shutil.ignore_patterns("checkpoints.sqlite*"))
    assert prune_checkpoints(empty, keep_last=1).checkpoints == 0  # no thread yet: nothing to do
    assert not (empty / "checkpoints.sqlite").exists()


@pytest.mark.postgres
def test_prune_postgres_checkpoints(pg_data_dir, pg_settings, postgres_url):
    import psycopg
    from typer.testing import CliRunner

    from agent.checkpoints import prune_checkpoints
    from agent.db_cli import db_app
    from agent.engine import Engine

    settings = pg_settings()
    q = f'"{settings.schema}"'
    agent = _agent(Engine.open_data_dir(pg_data_dir, storage=settings), postgres_url=postgres_url)
    user = agent.engine.persona_store.users()[2]
    _chat_threads(agent, user, {"a": 3, "b": 2})

    with psycopg.connect(postgres_url) as conn:  # the newest checkpoint of each thread: the ones kept
        newest = [r[0] for r in conn.execute(f"SELECT max(checkpoint_id) FROM {q}.checkpoints GROUP BY thread_id")]

    def counts():
        with psycopg.connect(postgres_url) as conn:
            per = dict(conn.execute(f"SELECT thread_id, count(*) FROM {q}.checkpoints GROUP BY thread_id").fetchall())
            blobs = conn.execute(f"SELECT count(*) FROM {q}.checkpoint_blobs").fetchone()[0]
            found = conn.execute(  # the channel values the newest checkpoints load
                f"SELECT count(*) FROM {q}.checkpoints c, jsonb_each_text(c.checkpoint -> 'channel_versions') cv, "
                f"{q}.checkpoint_blobs b WHERE c.checkpoint_id = ANY(%s) AND b.thread_id = c.thread_id AND "
                "b.checkpoint_ns = c.checkpoint_ns AND b.channel = cv.key AND b.version = cv.value",
                (newest,)).fetchone()[0]
        return per, blobs, found

    before, blobs_before, found_before = counts()
    assert before["a"] > before["b"] >= 2
    dry = prune_checkpoints(pg_data_dir, postgres_url=postgres_url, schema=settings.schema, keep_last=1, dry_run=True)
    assert dry.deleted_checkpoints == sum(before.values()) - 2 and dry.deleted_blobs > 0
    assert found_before > 0 and counts() == (before, blobs_before, found_before)

    out = CliRunner().invoke(db_app, ["prune-checkpoints", "--data-dir", str(pg_data_dir), "--schema", settings.schema,
                                      "--keep-last", "1", "--postgres-url", postgres_url])
    assert out.exit_code == 0 and "Deleted" in out.output and "postgres" in out.output, out.output
    after, blobs_after, found_after = counts()
    assert after == {"a": 1, "b": 1} and blobs_after == blobs_before - dry.deleted_blobs
    assert found_after == found_before  # the kept checkpoints still have every value they load

    assert len(agent.transcript("a", user)) == 6
    reply = agent.chat(user, "loved #1", "a")
    assert reply.error is None and len(agent.transcript("a", user)) == 8
    agent.close()
