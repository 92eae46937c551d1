"""ExposureStore and ThreadRegistry contracts over the in-memory, SQLite and Postgres implementations."""

from __future__ import annotations

import threading

import pytest

from agent.threads import InMemoryThreadRegistry, SqliteThreadRegistry, ThreadOwnershipError
from memory.errors import UsageError
from personas.exposure import InMemoryExposureStore, SqliteExposureStore
from personas.store import SqlitePersonaStore


# ---- exposure ------------------------------------------------------------------------------
class ExposureStoreContract:
    @pytest.fixture
    def store(self, tmp_path):
        raise NotImplementedError

    def test_counts_add_total(self, store):
        assert store.counts(["a", "b"]).tolist() == [0, 0] and store.total() == 0
        store.add(["a", "b", "a"])
        store.add([])
        store.add([7])  # ids are strings: 7 is "7"
        assert store.counts(["a", "b", "c", "7"]).tolist() == [2, 1, 0, 1]
        assert store.counts([]).tolist() == [] and store.counts(["a"]).dtype.name == "int64"
        assert store.total() == 4

    def test_counts_follow_any_id_sequence(self, store):
        catalog = tuple(str(i) for i in range(1, 41))
        store.add(["3", "3", "7", "99"])
        for _ in range(2):  # the same tuple asked again (the recommender's call), then others
            assert store.counts(catalog).tolist() == [2 if i == "3" else 1 if i == "7" else 0 for i in catalog]
        assert store.counts(["7", "3", "7", "99", "5"]).tolist() == [1, 2, 1, 1, 0]
        assert store.counts(["99"]).tolist() == [1] and store.counts([]).tolist() == []
        store.add(["5"])
        assert store.counts(catalog)[4] == 1

    def test_transaction_keeps_all_or_nothing(self, store):
        store.add(["a"])
        with pytest.raises(RuntimeError), store.transaction():
            store.add(["a", "b"])
            assert store.total() == 3  # visible inside the block
            raise RuntimeError("the turn failed")
        assert store.counts(["a", "b"]).tolist() == [1, 0]
        with store.transaction():
            store.add(["b"])
            store.add(["b"])
        assert store.counts(["a", "b"]).tolist() == [1, 2]

    def test_reset(self, store):
        store.add(["a", "b"])
        store.reset()
        assert store.total() == 0 and store.counts(["a"]).tolist() == [0]

    def test_concurrent_adds_are_all_counted(self, store):
        def work(k):
            for _ in range(10):
                store.add(["x", f"own{k}", "y"] if k % 2 else ["y", "x"])  # opposite orders too

        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert store.counts(["x", "y"]).tolist() == [40, 40] and store.total() == 100


class TestInMemoryExposureStore(ExposureStoreContract):
    @pytest.fixture
    def store(self, tmp_path):
        return InMemoryExposureStore()


class TestSqliteExposureStore(ExposureStoreContract):
    @pytest.fixture
    def store(self, tmp_path):
        ps = SqlitePersonaStore(tmp_path / "p.sqlite")
        yield SqliteExposureStore(ps)
        ps.close()


@pytest.mark.postgres
class TestPostgresExposureStore(ExposureStoreContract):
    @pytest.fixture
    def store(self, postgres_db):
        from personas.postgres_store import PostgresExposureStore

        return PostgresExposureStore(postgres_db())


# ---- threads -------------------------------------------------------------------------------
class ThreadRegistryContract:
    @pytest.fixture
    def registry(self, tmp_path):
        raise NotImplementedError

    def test_first_claim_owns_the_thread(self, registry):
        assert registry.owner("t1") is None and registry.turns("t1") == 0
        registry.check("t1", "alice")  # an unknown thread is anyone's
        registry.claim("t1", "alice")
        registry.claim("t1", "alice")
        assert registry.owner("t1") == "alice" and registry.turns("t1") == 2
        with pytest.raises(ThreadOwnershipError, match="belongs to another user"):
            registry.claim("t1", "bob")
        with pytest.raises(ThreadOwnershipError):
            registry.check("t1", "bob")
        assert registry.turns("t1") == 2  # the refused claim wrote nothing

    def test_bad_thread_ids_are_refused(self, registry):
        for bad in ("", "a/b", "x" * 65, "sp ace"):
            with pytest.raises(UsageError, match="thread id"):
                registry.claim(bad, "alice")

    def test_transaction_keeps_all_or_nothing(self, registry):
        with pytest.raises(RuntimeError), registry.transaction():
            registry.claim("t2", "alice")
            assert registry.owner("t2") == "alice"
            raise RuntimeError("the turn failed")
        assert registry.owner("t2") is None and registry.turns("t2") == 0

    def test_racing_first_claims_have_one_winner(self, registry):
        barrier = threading.Barrier(4)
        outcome: dict[str, str] = {}

        def claim(user):
            barrier.wait()
            try:
                registry.claim("race", user)
                outcome[user] = "won"
            except ThreadOwnershipError:
                outcome[user] = "refused"

        threads = [threading.Thread(target=claim, args=(f"u{k}",)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        winners = [u for u, o in outcome.items() if o == "won"]
        assert len(winners) == 1 and registry.owner("race") == winners[0] and registry.turns("race") == 1


class TestInMemoryThreadRegistry(ThreadRegistryContract):
    @pytest.fixture
    def registry(self, tmp_path):
        return InMemoryThreadRegistry()


class TestSqliteThreadRegistry(ThreadRegistryContract):
    @pytest.fixture
    def registry(self, tmp_path):
        ps = SqlitePersonaStore(tmp_path / "p.sqlite")
        yield SqliteThreadRegistry(ps)
        ps.close()


@pytest.mark.postgres
class TestPostgresThreadRegistry(ThreadRegistryContract):
    @pytest.fixture
    def registry(self, postgres_db):
        from agent.postgres import PostgresThreadRegistry

        return PostgresThreadRegistry(postgres_db())


def test_sqlite_counts_see_every_write_though_they_are_kept_between_reads(tmp_path):
    """The SQLite store keeps the table it read until the file changes: its own writes, another
    connection's commits and a rolled-back transaction must all show in the next read."""
    from personas.exposure import SqliteExposureStore
    from personas.store import SqlitePersonaStore

    path = tmp_path / "p.sqlite"
    a, b = SqlitePersonaStore(path), SqlitePersonaStore(path)
    ea, eb = SqliteExposureStore(a), SqliteExposureStore(b)
    ids = ("1", "2", "3")
    assert ea.counts(ids).tolist() == [0, 0, 0]
    ea.add(["1"])
    assert ea.counts(ids).tolist() == [1, 0, 0] and eb.counts(ids).tolist() == [1, 0, 0]
    eb.add(["2", "2"])  # another connection commits
    assert ea.counts(ids).tolist() == [1, 2, 0]
    with pytest.raises(RuntimeError):
        with ea.transaction():
            ea.add(["3"])
            assert ea.counts(ids).tolist() == [1, 2, 1]  # its own uncommitted write
            raise RuntimeError("the turn failed")
    assert ea.counts(ids).tolist() == [1, 2, 0]  # rolled back: not kept
    eb.reset()
    assert ea.counts(ids).tolist() == [0, 0, 0]
    a.close()
    b.close()
