"""Contract tests for MemoryStore, run over the in-memory reference and the SQLite+FAISS store,
plus the FAISS store's persistence and crash-recovery guarantees."""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
from pathlib import Path

import numpy as np
import pytest

from memory.errors import UsageError
from memory.store import FaissMemoryStore, InMemoryMemoryStore, MemoryRecord, MemoryStore
from memory.vector_index import VectorIndexConfig

DIM = 8
NS = ("user", "42", "episodic")
OTHER = ("user", "43", "episodic")
NASTY = [  # namespace parts that look like SQL or LIKE injections, or path tricks
    ("user", "1' OR '1'='1", "episodic"),
    ("user", "%", "episodic"),
    ("user", "_", "episodic"),
    ("user", "4_", "episodic"),
    ("user", "..", "episodic"),
    ("user", "x\"; DROP TABLE records; --", "episodic"),
]




@pytest.fixture
def data_dir(request):
    """A fresh folder for a store, on tmpfs when there is one.

    These tests check what the store does across close/reopen and damaged files, not the
    disk; every fsync on a real disk costs milliseconds, and the suite makes hundreds.
    """
    shm = "/dev/shm"
    if not (os.path.isdir(shm) and os.access(shm, os.W_OK)):
        yield request.getfixturevalue("tmp_path")
        return
    d = tempfile.mkdtemp(prefix="plural-store-test-", dir=shm)
    try:
        yield Path(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def vec(*hot: int, dim: int = DIM) -> np.ndarray:
    """A unit vector spread over the ``hot`` coordinates."""
    v = np.zeros(dim, np.float32)
    v[list(hot)] = 1.0
    return v / np.linalg.norm(v)


def rec(text: str, t: float, kind: str = "interaction", **kw) -> MemoryRecord:
    return MemoryRecord(kind=kind, text=text, timestamp=t, **kw)


def fill(store: MemoryStore, ns=NS, n: int = 5) -> list[int]:
    """n records, record j at time 100 + j along coordinate j (so searches are unambiguous)."""
    return store.put(ns, [rec(f"event {j}", 100.0 + j, payload={"j": j}) for j in range(n)],
                     np.stack([vec(j) for j in range(n)]))


def comparable(records):
    return [r.model_dump() for r in records]


class MemoryStoreContract:
    """Every MemoryStore must pass these."""

    def make(self, folder: Path, dim: int = DIM) -> MemoryStore:
        raise NotImplementedError

    @pytest.fixture
    def store(self, data_dir):
        s = self.make(data_dir)
        yield s
        s.close()

    # -- put / get ------------------------------------------------------------------------
    def test_put_assigns_sequential_ids_per_namespace(self, store):
        assert fill(store, NS, 3) == [0, 1, 2]
        assert fill(store, OTHER, 2) == [0, 1]  # ids collide across namespaces on purpose
        assert fill(store, NS, 1) == [3]

    def test_get_returns_records_in_asked_order_and_skips_missing(self, store):
        fill(store)
        got = store.get(NS, [3, 99, 0])
        assert [r.record_id for r in got] == [3, 0]
        assert got[0].namespace == NS and got[0].text == "event 3" and got[0].payload == {"j": 3}
        assert got[0].timestamp == 103.0 and got[0].kind == "interaction"
        assert store.get(("never", "used"), [0]) == []
        assert store.get_one(NS, 99) is None and store.get_one(NS, 1).text == "event 1"

    def test_fields_round_trip(self, store):
        r = MemoryRecord(kind="fact", text="likes ünïcode ✓", timestamp=1.25,
                         payload={"a": [1, {"b": None}]},
                         source_ids=[4, 2])
        stored = store.put_one(("user", "1", "semantic"), r, vec(1))
        back = store.get_one(("user", "1", "semantic"), stored.record_id)
        assert back == stored
        assert back.model_dump() == {**r.model_dump(), "record_id": 0, "namespace": ("user", "1", "semantic")}

    def test_ids_are_never_reused(self, store):
        fill(store, NS, 3)
        store.delete(NS, [2])
        assert fill(store, NS, 1) == [3]

    def test_returned_records_are_copies(self, store):
        fill(store)
        r = store.get_one(NS, 0)
        r.payload["j"] = "mutated"
        assert store.get_one(NS, 0).payload == {"j": 0}

    def test_empty_put_is_a_no_op(self, store):
        assert store.put(NS, [], np.zeros((0, DIM), np.float32)) == []
        assert store.count(NS) == 0 and store.namespaces() == []

    # -- delete ---------------------------------------------------------------------------
    def test_delete(self, store):
        fill(store)
        assert store.delete(NS, [1, 3, 3, 77]) == 2
        assert [r.record_id for r in store.list(NS, newest_first=False)] == [0, 2, 4]
        assert all(r.record_id not in (1, 3) for r, _ in store.search(NS, vec(1), k=5))
        assert store.delete(NS, [1]) == 0
        assert store.delete(("nobody",), [0]) == 0

    def test_delete_namespace(self, store):
        fill(store, NS)
        fill(store, OTHER)
        assert store.delete_namespace(NS) == 5
        assert store.count(NS) == 0 and store.count(OTHER) == 5
        assert store.namespaces(("user",)) == [OTHER]

    # -- list / count ---------------------------------------------------------------------
    def test_list_orders_and_filters(self, store):
        ids = store.put(NS, [rec("a", 5.0), rec("b", 1.0, kind="feedback"), rec("c", 5.0), rec("d", 3.0)],
                        np.stack([vec(0)] * 4))
        assert ids == [0, 1, 2, 3]
        assert [r.text for r in store.list(NS)] == ["c", "a", "d", "b"]  # time, then id, newest first
        assert [r.text for r in store.list(NS, newest_first=False)] == ["b", "d", "a", "c"]
        assert [r.text for r in store.list(NS, kind="feedback")] == ["b"]
        assert [r.text for r in store.list(NS, since=3.0)] == ["c", "a", "d"]
        assert [r.text for r in store.list(NS, limit=2)] == ["c", "a"]
        assert store.list(NS, limit=0) == []
        assert store.count(NS) == 4 and store.count(NS, kind="feedback") == 1 and store.count(OTHER) == 0

    def test_list_rejects_bad_limit(self, store):
        with pytest.raises(UsageError, match="limit"):
            store.list(NS, limit=-1)

    # -- search ---------------------------------------------------------------------------
    def test_search_ranks_by_inner_product(self, store):
        fill(store)
        hits = store.search(NS, vec(2, 3), k=3)
        assert sorted(r.record_id for r, _ in hits[:2]) == [2, 3]
        assert hits[0][1] == pytest.approx(float(vec(2, 3) @ vec(2)), abs=1e-5)
        assert all(isinstance(s, float) for _, s in hits)
        assert store.search(NS, vec(4), k=1)[0][0].text == "event 4"

    def test_search_k_larger_than_namespace(self, store):
        fill(store, n=2)
        assert len(store.search(NS, vec(0), k=10)) == 2

    def test_search_empty_or_unknown_namespace(self, store):
        assert store.search(("nobody", "here"), vec(0), k=3) == []
        fill(store, n=1)
        store.delete(NS, [0])
        assert store.search(NS, vec(0), k=3) == []

    def test_search_by_kind(self, store):
        store.put(NS, [rec("a", 1.0), rec("b", 2.0, kind="chat_turn"), rec("c", 3.0, kind="chat_turn")],
                  np.stack([vec(0), vec(1), vec(2)]))
        hits = store.search(NS, vec(0), k=3, kind="chat_turn")
        assert {r.text for r, _ in hits} == {"b", "c"}
        assert store.search(NS, vec(0), k=3, kind="fact") == []

    def test_search_within_ids(self, store):
        fill(store)
        hits = store.search(NS, vec(0), k=2, ids=[3, 4, 999])
        assert {r.record_id for r, _ in hits} == {3, 4}
        assert store.search(NS, vec(0), k=2, ids=[]) == []
        assert [r.record_id for r, _ in store.search(NS, vec(4), k=1, ids=[4], kind="interaction")] == [4]
        assert store.search(NS, vec(4), k=1, ids=[4], kind="fact") == []

    # -- isolation ------------------------------------------------------------------------
    def test_search_never_crosses_namespaces(self, store):
        fill(store, NS)
        # same ids, and vectors that match the query better, in another namespace
        store.put(OTHER, [rec("theirs", 1.0) for _ in range(5)], np.stack([vec(0, 1)] * 5))
        for q in (vec(0, 1), vec(3)):
            hits = store.search(NS, q, k=10)
            assert len(hits) == 5
            assert all(r.namespace == NS and r.text.startswith("event") for r, _ in hits)
        assert {r.text for r, _ in store.search(OTHER, vec(3), k=10)} == {"theirs"}
        assert store.get(OTHER, [0])[0].text == "theirs"

    def test_injection_looking_namespaces_are_isolated(self, store):
        fill(store, ("user", "4", "episodic"), 2)
        fill(store, ("user", "42", "episodic"), 2)
        for k, ns in enumerate(NASTY):
            store.put(ns, [rec(f"nasty {k}", 1.0)], vec(k % DIM)[None])
        for k, ns in enumerate(NASTY):
            hits = store.search(ns, vec(k % DIM), k=10)
            assert [r.text for r, _ in hits] == [f"nasty {k}"]
            assert store.count(ns) == 1 and store.list(ns)[0].namespace == ns
        # prefixes match whole parts only: "%" and "_" are not wildcards, "4" is not "42"
        assert store.namespaces(("user", "%")) == [("user", "%", "episodic")]
        assert store.namespaces(("user", "_")) == [("user", "_", "episodic")]
        assert store.namespaces(("user", "4")) == [("user", "4", "episodic")]
        assert len(store.namespaces(("user",))) == len(NASTY) + 2
        assert store.count(("user", "4", "episodic")) == 2  # nothing was dropped or rewritten

    def test_namespaces(self, store):
        fill(store, ("catalog",), 1)
        fill(store, NS, 1)
        fill(store, ("user", "42", "semantic"), 1)
        assert store.namespaces() == sorted([("catalog",), NS, ("user", "42", "semantic")])
        assert store.namespaces(("user", "42")) == [NS, ("user", "42", "semantic")]
        assert store.namespaces(("user", "42", "episodic")) == [NS]
        assert store.namespaces(("nobody",)) == []

    # -- validation -----------------------------------------------------------------------
    @pytest.mark.parametrize("bad", ["catalog", (), ("a/b",), ("",), ("a\x00",), (1,), None])
    def test_bad_namespaces_are_rejected(self, store, bad):
        with pytest.raises(UsageError, match="namespace"):
            store.put(bad, [rec("x", 0.0)], vec(0)[None])
        with pytest.raises(UsageError, match="namespace"):
            store.search(bad, vec(0), k=1)

    def test_wrong_dimension_is_rejected_with_dims(self, store):
        with pytest.raises(UsageError, match=rf"\(1, 3\).*dim {DIM}"):
            store.put(NS, [rec("x", 0.0)], np.zeros((1, 3), np.float32))
        with pytest.raises(UsageError, match=rf"\({DIM + 1},\).*dim {DIM}"):
            store.search(NS, np.zeros(DIM + 1, np.float32), k=1)
        with pytest.raises(UsageError, match="2 rows for 1 records"):
            store.put(NS, [rec("x", 0.0)], np.zeros((2, DIM), np.float32))
        assert store.count(NS) == 0

    def test_bad_records_are_rejected(self, store):
        with pytest.raises(UsageError, match="record_id"):
            store.put(NS, [rec("x", 0.0, record_id=3)], vec(0)[None])
        with pytest.raises(UsageError, match="record namespace"):
            store.put(NS, [rec("x", 0.0, namespace=OTHER)], vec(0)[None])
        with pytest.raises(UsageError, match="payload"):
            store.put(NS, [rec("x", 0.0, payload={"f": object()})], vec(0)[None])
        with pytest.raises(UsageError, match="k"):
            store.search(NS, vec(0), k=0)
        with pytest.raises(ValueError, match="kind"):
            MemoryRecord(kind="", text="x")
        assert store.count(NS) == 0

    # -- transactions ---------------------------------------------------------------------
    def test_transaction_commits_everything(self, store):
        fill(store, NS, 2)
        with store.transaction():
            store.put(NS, [rec("new", 200.0)], vec(5)[None])
            store.delete(NS, [0])
            store.put(OTHER, [rec("other", 1.0)], vec(1)[None])
        assert [r.text for r in store.list(NS)] == ["new", "event 1"]
        assert store.search(NS, vec(5), k=1)[0][0].text == "new"
        assert store.count(OTHER) == 1

    def test_failed_transaction_leaves_nothing(self, store):
        fill(store, NS, 3)
        before = comparable(store.list(NS))
        with pytest.raises(RuntimeError, match="boom"), store.transaction():
            store.put(NS, [rec("ghost", 500.0)], vec(7)[None])
            store.delete(NS, [0, 1])
            store.put(("user", "new", "semantic"), [rec("ghost fact", 1.0, kind="fact")], vec(7)[None])
            assert store.count(NS) == 2  # writes are visible inside the block
            raise RuntimeError("boom")
        assert comparable(store.list(NS)) == before
        assert {r.text for r, _ in store.search(NS, vec(7), k=10)} == {"event 0", "event 1", "event 2"}
        assert store.namespaces() == [NS]
        assert fill(store, NS, 1) == [3]  # the rolled-back id was not consumed

    def test_inner_block_rolls_back_alone(self, store):
        with store.transaction():
            store.put(NS, [rec("kept", 1.0)], vec(0)[None])
            with pytest.raises(KeyError), store.transaction():
                store.put(NS, [rec("undone", 2.0)], vec(1)[None])
                store.put(OTHER, [rec("undone too", 2.0)], vec(1)[None])
                raise KeyError("inner")
            with store.transaction():
                store.put(NS, [rec("kept too", 3.0)], vec(2)[None])
        assert [r.text for r in store.list(NS)] == ["kept too", "kept"]
        assert {r.text for r, _ in store.search(NS, vec(1), k=5)} == {"kept", "kept too"}
        assert store.count(OTHER) == 0

    def test_outer_failure_undoes_committed_inner_blocks(self, store):
        with pytest.raises(ValueError), store.transaction():
            with store.transaction():
                store.put(NS, [rec("inner", 1.0)], vec(0)[None])
            raise ValueError("outer")
        assert store.count(NS) == 0 and store.search(NS, vec(0), k=1) == []


class TestInMemoryMemoryStore(MemoryStoreContract):
    def make(self, folder: Path, dim: int = DIM) -> MemoryStore:
        return InMemoryMemoryStore(dim)


class TestFaissMemoryStore(MemoryStoreContract):
    config = VectorIndexConfig(kind="flat", use_gpu=False)

    def make(self, folder: Path, dim: int = DIM, **kw) -> FaissMemoryStore:
        return FaissMemoryStore(folder / "mem", dim, self.config, **kw)

    def reopen(self, store: FaissMemoryStore, **kw) -> FaissMemoryStore:
        store.close()
        return FaissMemoryStore(store.path, store.dim, kw.pop("config", self.config), **kw)

    def snapshot(self, store: MemoryStore, namespaces, queries):
        # k covers every record, so ties at the cut-off cannot make equal stores differ
        return ({ns: comparable(store.list(ns)) for ns in namespaces},
                {(ns, qi): [(r.record_id, round(s, 5)) for r, s in store.search(ns, q, k=10)]
                 for ns in namespaces for qi, q in enumerate(queries)})

    def populated(self, data_dir):
        store = self.make(data_dir)
        fill(store, NS, 6)
        fill(store, OTHER, 3)
        store.put(("catalog",), [rec("item", 0.0, kind="item", payload={"item_id": "i1"})], vec(1, 2)[None])
        store.delete(NS, [2])
        return store, [NS, OTHER, ("catalog",)], [vec(0), vec(2, 5), vec(1)]

    def test_sqlite_is_wal_with_full_sync(self, store):
        mode = store._db.execute("PRAGMA journal_mode").fetchone()[0]
        sync = store._db.execute("PRAGMA synchronous").fetchone()[0]
        assert mode == "wal" and sync == 2  # 2 = FULL

    def test_reopen_restores_records_and_search(self, data_dir):
        store, namespaces, queries = self.populated(data_dir)
        before = self.snapshot(store, namespaces, queries)
        again = self.reopen(store)
        assert self.snapshot(again, namespaces, queries) == before
        assert again.index_rebuilds == 0  # the saved index files were current
        assert fill(again, NS, 1) == [6]  # the id counter survived too
        again.close()

    def test_failed_transaction_leaves_nothing_after_reopen(self, data_dir):
        store, namespaces, queries = self.populated(data_dir)
        before = self.snapshot(store, namespaces, queries)
        with pytest.raises(RuntimeError), store.transaction():
            store.put(NS, [rec("ghost", 999.0)], vec(0)[None])
            store.delete(OTHER, [0])
            raise RuntimeError("crash inside the block")
        again = self.reopen(store)
        assert self.snapshot(again, namespaces, queries) == before
        again.close()

    @pytest.mark.parametrize("damage", ["delete", "garbage", "truncate"])
    def test_missing_or_corrupt_index_file_is_rebuilt(self, data_dir, damage):
        store, namespaces, queries = self.populated(data_dir)
        before = self.snapshot(store, namespaces, queries)
        path = store._index_file(NS)
        store.close()
        if damage == "delete":
            path.unlink()
        elif damage == "garbage":
            path.write_bytes(b"\x00garbage" * 50)
        else:
            path.write_bytes(path.read_bytes()[:60])
        again = FaissMemoryStore(store.path, DIM, self.config)
        assert self.snapshot(again, namespaces, queries) == before
        assert again.index_rebuilds == 1
        again.close()
        # the rebuilt index was written back: the next open loads it
        third = FaissMemoryStore(store.path, DIM, self.config)
        assert self.snapshot(third, namespaces, queries) == before and third.index_rebuilds == 0
        third.close()

    def test_stale_index_file_is_rebuilt(self, data_dir):
        """A crash after the SQLite commit but before the index write leaves an old index file."""
        store, namespaces, queries = self.populated(data_dir)
        path = store._index_file(NS)
        old_file = path.read_bytes()
        store.put(NS, [rec("after", 500.0)], vec(7)[None])
        store.delete(NS, [0])
        before = self.snapshot(store, namespaces, queries + [vec(7)])
        store.close()
        path.write_bytes(old_file)  # as if the process died before writing the new one
        again = FaissMemoryStore(store.path, DIM, self.config)
        assert self.snapshot(again, namespaces, queries + [vec(7)]) == before
        assert again.search(NS, vec(7), k=1)[0][0].text == "after"
        assert again.index_rebuilds == 1
        again.close()

    def test_index_file_of_another_namespace_is_not_used(self, data_dir):
        store, namespaces, queries = self.populated(data_dir)
        before = self.snapshot(store, namespaces, queries)
        store.close()
        shutil.copy(store._index_file(OTHER), store._index_file(NS))  # same generation numbers possible
        again = FaissMemoryStore(store.path, DIM, self.config)
        assert self.snapshot(again, namespaces, queries) == before
        again.close()

    def test_deferred_index_writes_survive_a_crash(self, data_dir):
        store = self.make(data_dir, save_on_commit=False)
        fill(store, NS, 4)
        assert not store._index_file(NS).exists()
        # "crash": open a second store on the same folder without closing the first
        other = FaissMemoryStore(store.path, DIM, self.config)
        assert [r.record_id for r, _ in other.search(NS, vec(3), k=1)] == [3]
        assert other.index_rebuilds == 1
        other.close()
        store.close()

    def test_second_store_on_same_folder_sees_writes(self, data_dir):
        a = self.make(data_dir)
        b = FaissMemoryStore(a.path, DIM, self.config)
        fill(a, NS, 2)
        assert len(b.search(NS, vec(0), k=5)) == 2
        a.put(NS, [rec("late", 9.0)], vec(6)[None])
        assert b.search(NS, vec(6), k=1)[0][0].text == "late"  # the generation told b to reload
        b.put(NS, [rec("from b", 10.0)], vec(5)[None])
        assert a.search(NS, vec(5), k=1)[0][0].text == "from b"
        a.close()
        b.close()

    def test_reopen_with_other_dim_is_an_error(self, data_dir):
        store = self.make(data_dir)
        store.close()
        with pytest.raises(UsageError, match=rf"dim.*{DIM}"):
            FaissMemoryStore(store.path, DIM * 2, self.config)

    def test_reopen_with_other_index_kind_rebuilds(self, data_dir):
        store, namespaces, queries = self.populated(data_dir)
        before = self.snapshot(store, namespaces, queries)
        again = self.reopen(store, config=VectorIndexConfig(kind="hnsw", hnsw_m=8, use_gpu=False))
        assert self.snapshot(again, namespaces, queries) == before
        assert again.index_rebuilds == 3
        again.close()

    def test_closed_store_says_so(self, data_dir):
        store = self.make(data_dir)
        store.close()
        store.close()  # idempotent
        with pytest.raises(UsageError, match="closed"):
            store.count(NS)

    def test_index_files_are_named_by_hash(self, data_dir):
        store = self.make(data_dir)
        for ns in NASTY:
            store.put(ns, [rec("x", 0.0)], vec(0)[None])
        files = sorted(p.name for p in (store.path / "index").iterdir())
        assert len(files) == len(NASTY)
        assert all(len(f) == 32 + len(".faiss") and f[:32].isalnum() for f in files)
        store.close()

    def test_sqlite_holds_vectors(self, data_dir):
        store = self.make(data_dir)
        fill(store, NS, 2)
        store.close()
        con = sqlite3.connect(store.path / "memory.sqlite")
        row = con.execute("SELECT vector FROM records WHERE ns='user/42/episodic' AND record_id=1").fetchone()
        blob = row[0]
        con.close()
        np.testing.assert_array_equal(np.frombuffer(blob, np.float32), vec(1))


class TestFaissMemoryStoreIVF(TestFaissMemoryStore):
    """The same guarantees with an IVF index that trains as soon as a namespace has 4 vectors
    (nprobe == nlist keeps its answers exact, so the contract's exact checks still apply)."""

    config = VectorIndexConfig(kind="ivf", ivf_nlist=2, ivf_min_train=4, nprobe=2, use_gpu=False)


class TestFaissMemoryStoreAuto(TestFaissMemoryStore):
    """The approximate mode at scale, with a tiny threshold: exact until a namespace holds 4
    vectors, IVF from then on (probing every cell, so the contract's exact checks still apply;
    tests/test_memory_scale.py checks the filtered searches an IVF that probes too little misses)."""

    config = VectorIndexConfig(kind="auto", approximate_above=4, approximate_probe_share=1.0, use_gpu=False)


class TestFaissMemoryStoreAutoOneCachedIndex(TestFaissMemoryStoreAuto):
    """... and with room for one namespace index in memory: every other namespace is evicted
    (saved first) and reloaded from its file, within and across transactions."""

    def make(self, folder: Path, dim: int = DIM, **kw) -> FaissMemoryStore:
        kw.setdefault("max_cached_indexes", 1)
        return super().make(folder, dim, **kw)

    def reopen(self, store: FaissMemoryStore, **kw) -> FaissMemoryStore:
        kw.setdefault("max_cached_indexes", 1)
        return super().reopen(store, **kw)


@pytest.mark.postgres
class TestPostgresMemoryStore(MemoryStoreContract):
    """The same contract over PostgreSQL + pgvector (exact search per namespace), each test on a
    schema of its own of the session's server."""

    @pytest.fixture
    def store(self, postgres_db):
        from memory.postgres_store import PostgresMemoryStore

        s = PostgresMemoryStore(postgres_db(), DIM)
        yield s
        s.close()

    def test_search_is_exact_and_never_short_in_a_big_store(self, store):
        # many records elsewhere whose vectors match the query better: the namespace still
        # yields its k best, in inner-product order
        rng = np.random.default_rng(0)
        other = rng.normal(size=(400, DIM)).astype(np.float32)
        store.put(OTHER, [rec(f"o{j}", float(j)) for j in range(400)], other)
        mine = rng.normal(size=(30, DIM)).astype(np.float32)
        store.put(NS, [rec(f"m{j}", float(j), kind="chat_turn" if j % 3 else "feedback") for j in range(30)], mine)
        q = rng.normal(size=DIM).astype(np.float32)
        hits = store.search(NS, q, k=10)
        assert [r.record_id for r, _ in hits] == list(np.argsort(-(mine @ q), kind="stable")[:10])
        assert [s for _, s in hits] == pytest.approx(sorted((mine @ q).tolist(), reverse=True)[:10], abs=1e-4)
        fb = [j for j in range(30) if j % 3 == 0]
        assert len(store.search(NS, q, k=10, kind="feedback")) == 10 == len(fb)
        assert len(store.search(NS, q, k=30)) == 30

    def test_a_second_store_on_the_schema_sees_everything(self, store):
        from memory.postgres_store import PostgresMemoryStore

        fill(store, NS, 3)
        store.delete(NS, [1])
        again = PostgresMemoryStore(store.db, DIM)
        assert comparable(again.list(NS)) == comparable(store.list(NS))
        assert fill(again, NS, 1) == [3]
        with pytest.raises(UsageError, match="dim"):
            PostgresMemoryStore(store.db, DIM + 1)

    def test_text_with_nul_round_trips(self, store):
        r = store.put_one(NS, rec("a\x00b", 1.0), vec(0))
        assert store.get_one(NS, r.record_id).text == "a\x00b"

    def test_closed_store_says_so(self, store):
        store.close()
        store.close()  # idempotent
        with pytest.raises(UsageError, match="closed"):
            store.count(NS)
