"""Shared fixtures: an isolated cache folder, the synthetic dataset, a built synthetic engine."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _single_thread_faiss():
    """FAISS's OpenMP start-up dominates on tiny data (k-means on 200 points: ~0.3 s on 2 cores
    against 0.2 ms on one thread); Plural configures it through memory.faiss_runtime, and so do
    the tests, before any test imports faiss on its own."""
    from memory.faiss_runtime import load_faiss

    load_faiss()
    yield


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Every test run writes caches and data directories under a temp folder, never ~/.cache."""
    root = tmp_path_factory.mktemp("plural-cache")
    old = {k: os.environ.get(k) for k in ("PLURAL_CACHE_DIR", "PLURAL_DATA_DIR", "HF_HUB_OFFLINE")}
    # the embedding cache is shared across runs when the caller sets PLURAL_TEST_CACHE (faster reruns)
    os.environ["PLURAL_CACHE_DIR"] = os.environ.get("PLURAL_TEST_CACHE") or str(root / "cache")
    os.environ["PLURAL_DATA_DIR"] = str(root / "data")
    os.environ["HF_HUB_OFFLINE"] = "1"
    yield root
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def synthetic():
    from memory.synthetic import generate_synthetic

    return generate_synthetic(seed=0)


@pytest.fixture(scope="session")
def hash_config():
    from agent.config import EngineConfig

    return EngineConfig(embedder="hash:128")


@pytest.fixture(scope="session")
def synthetic_engine(tmp_path_factory, hash_config):
    from agent.engine import Engine
    from memory.loaders import DataSource

    ddir = tmp_path_factory.mktemp("synthetic-engine") / "data"
    return Engine.open(DataSource(dataset="synthetic"), hash_config, ddir)


def adjusted_rand_index(a, b) -> float:
    """ARI of two labelings (used to compare induced personas with planted ones)."""
    from evals.persona_quality import adjusted_rand_index as ari

    return ari(a, b)


# ---- PostgreSQL (pgserver) ---------------------------------------------------------------------
@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory):
    """A real PostgreSQL 16 with pgvector for the ``postgres`` tests: ``$PLURAL_TEST_POSTGRES_URL``
    when set, else a server started here from the ``pgserver`` package (once per session, about a
    second; stopped and deleted at the end). The tests must run in CI, so a missing package fails
    instead of skipping: install the project's ``test`` and ``postgres`` extras (``make setup``)."""
    url = os.environ.get("PLURAL_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    import warnings

    try:
        with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
            warnings.simplefilter("ignore")
            import pgserver
    except ImportError as e:  # pragma: no cover
        pytest.fail(f"the postgres tests need pgserver (pip install -e '.[test,postgres]'): {e}")
    import shutil
    import tempfile

    # outside pytest's temp tree: as root, pgserver runs the server as a user of its own, which
    # must keep access to every folder above the data
    root = tempfile.mkdtemp(prefix="plural-pg-")
    server = pgserver.get_server(os.path.join(root, "pgdata"), cleanup_mode="delete")
    try:
        # a throwaway server: durability buys nothing here, and every commit would wait for a disk flush
        server.psql("ALTER SYSTEM SET fsync = off; ALTER SYSTEM SET synchronous_commit = off; "
                    "ALTER SYSTEM SET full_page_writes = off; SELECT pg_reload_conf();")
        yield server.get_uri()
    finally:
        server.cleanup()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_db(postgres_url):
    """Factory of :class:`memory.postgres.PostgresDatabase` objects, each on a fresh schema of the
    session's server; closed and dropped after the test."""
    import uuid

    from memory.postgres import PostgresDatabase

    made = []

    def make(schema: str | None = None, **kw):
        db = PostgresDatabase(postgres_url, schema=schema or f"t_{uuid.uuid4().hex[:12]}", **kw)
        made.append(db)
        return db

    yield make
    for db in made:
        try:
            if db.closed:
                db = PostgresDatabase(postgres_url, schema=db.schema, max_size=1)
            db.drop_schema()
        finally:
            db.close()


@pytest.fixture(scope="session")
def pg_data_dir(tmp_path_factory, hash_config):
    """A synthetic data directory built once for the postgres tests (never written to by them:
    each test opens it on a schema of its own)."""
    from agent.engine import Engine
    from memory.loaders import DataSource

    ddir = tmp_path_factory.mktemp("pg-engine") / "data"
    Engine.open(DataSource(dataset="synthetic"), hash_config, ddir, storage="sqlite").close()
    return ddir
