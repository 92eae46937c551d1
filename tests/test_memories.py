"""Catalog, episodic and semantic memories, over both store implementations."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from memory.catalog import Catalog, Item
from memory.embeddings import HashEmbedder
from memory.errors import UnknownItemError, UsageError
from memory.memories import (
    CatalogIndex,
    EpisodicMemory,
    SemanticMemory,
    episodic_namespace,
    forget_user,
    semantic_namespace,
)
from memory.store import FaissMemoryStore, InMemoryMemoryStore, MemoryRecord
from memory.vector_index import VectorIndexConfig

DIM = 256
NOW = 1_700_000_000.0
DAY = 86_400.0




@pytest.fixture(params=["in_memory", "faiss"])
def store(request):
    if request.param == "in_memory":
        yield InMemoryMemoryStore(DIM)
        return
    # tmpfs when there is one: these tests exercise the wrappers, not the disk
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    folder = tempfile.mkdtemp(prefix="plural-memories-test-", dir=base)
    s = FaissMemoryStore(folder, DIM, VectorIndexConfig(use_gpu=False))
    yield s
    s.close()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def emb():
    return HashEmbedder(dim=DIM, seed=0)


@pytest.fixture
def episodes(store, emb):
    return EpisodicMemory(store, emb, clock=lambda: NOW)


@pytest.fixture
def semantic(store, emb):
    return SemanticMemory(store, emb, clock=lambda: NOW)


ITEMS = {
    "1": "Alien: a crew in deep space hunted by a creature, sci-fi horror",
    "2": "Toy Story: toys come alive when nobody watches, animated comedy",
    "3": "Heat: a detective chases a crew of bank robbers in Los Angeles, crime thriller",
    "4": "Solaris: a slow philosophical sci-fi drama on a space station",
}


# ----------------------------------------------------------------------------------------
class TestCatalogIndex:
    def test_search_by_text(self, store, emb):
        cat = CatalogIndex(store, emb)
        cat.add_items(ITEMS, timestamp=0.0)
        assert len(cat) == 4 and "2" in cat and "9" not in cat
        hits = cat.search("animated toys comedy", k=2)
        assert hits[0][0] == "2"
        assert hits[0][1] > hits[1][1]
        assert cat.search("sci-fi space", k=2)[0][0] in {"1", "4"}

    def test_allowed_item_ids_restrict(self, store, emb):
        cat = CatalogIndex(store, emb)
        cat.add_items(ITEMS)
        hits = cat.search("animated toys comedy", k=3, allowed_item_ids=["3", "4"])
        assert [i for i, _ in hits][:2] and {i for i, _ in hits} == {"3", "4"}
        assert cat.search("toys", k=3, allowed_item_ids=[]) == []
        with pytest.raises(UnknownItemError, match="'99'.*catalog index"):
            cat.search("toys", allowed_item_ids=["2", "99"])

    def test_re_adding_replaces(self, store, emb):
        cat = CatalogIndex(store, emb)
        cat.add_items(ITEMS)
        cat.add_items({"2": "Jaws: a shark terrorises a beach town"})
        assert len(cat) == 4 and store.count(("catalog",)) == 4
        assert cat.search("shark beach", k=1)[0][0] == "2"
        assert cat.search("animated toys comedy", k=1)[0][0] != "2"

    def test_remove_and_refresh(self, store, emb):
        a, b = CatalogIndex(store, emb), CatalogIndex(store, emb)
        a.add_items(ITEMS)
        assert len(b) == 4  # b builds its map on first use
        assert a.remove_items(["1", "nope"]) == 1
        assert "1" not in a and all(i != "1" for i, _ in a.search("creature horror", k=4))
        b.refresh()
        assert len(b) == 3

    def test_add_catalog_and_search_vector(self, store, emb):
        catalog = Catalog.from_items([Item(item_id="10", title="Amélie", text="whimsical Paris romance"),
                                      Item(item_id="11", title="Mad Max")])
        cat = CatalogIndex(store, emb)
        cat.add_catalog(catalog)
        assert cat.search_vector(emb.embed_one("Mad Max"), k=1)[0] == ("11", pytest.approx(1.0, abs=1e-5))
        assert cat.search("paris romance", k=1)[0][0] == "10"

    def test_embedder_dim_must_match_store(self, store):
        with pytest.raises(UsageError, match=f"embedder dim.*{DIM}"):
            CatalogIndex(store, HashEmbedder(dim=DIM // 2))


# ----------------------------------------------------------------------------------------
class TestEpisodicMemory:
    def test_record_and_recent(self, episodes):
        for d in range(5):
            episodes.record("u1", "interaction", f"watched film {d}", {"item_id": str(d)},
                            timestamp=NOW - (5 - d) * DAY)
        e = episodes.record("u1", "chat_turn", "something light please")
        assert e.timestamp == NOW and e.record_id == 5 and e.namespace == ("user", "u1", "episodic")
        assert [r.text for r in episodes.recent("u1", n=2)] == ["something light please", "watched film 4"]
        assert [r.payload["item_id"] for r in episodes.recent("u1", n=2, kind="interaction")] == ["4", "3"]
        assert episodes.get("u1", [0])[0].payload == {"item_id": "0"}

    def test_record_many(self, episodes):
        out = episodes.record_many("u1", [MemoryRecord(kind="feedback", text=f"liked {i}", timestamp=float(i))
                                          for i in range(3)])
        assert [r.record_id for r in out] == [0, 1, 2]
        assert episodes.search("u1", "liked 2", k=1)[0][0].record_id == 2

    def test_search(self, episodes):
        episodes.record("u1", "interaction", "watched a gritty crime thriller")
        episodes.record("u1", "interaction", "watched an animated family comedy")
        hits = episodes.search("u1", "animated comedy", k=2)
        assert hits[0][0].text == "watched an animated family comedy" and hits[0][1] > hits[1][1]

    def _blend_setup(self, episodes):
        query = "epic space opera with huge battles"
        old = episodes.record("u1", "interaction", "watched an epic space opera with huge battles",
                              timestamp=NOW - 120 * DAY)
        recent = episodes.record("u1", "interaction", "watched a quiet drama set in space",
                                 timestamp=NOW - 1 * DAY)
        episodes.record("u1", "interaction", "cooked pasta", timestamp=NOW - 400 * DAY)
        return query, old, recent

    def test_recall_favours_recent_by_default(self, episodes):
        query, old, recent = self._blend_setup(episodes)
        got = episodes.recall("u1", query, k=3)
        by_id = {e.record.record_id: e for e in got}
        # the old event is the better text match, yet the recent one wins with default weights
        assert by_id[old.record_id].similarity > by_id[recent.record_id].similarity
        assert got[0].record.record_id == recent.record_id
        for e in got:
            age_days = (NOW - e.record.timestamp) / DAY
            assert e.recency == pytest.approx(0.5 ** (age_days / 30))
            assert e.score == pytest.approx(0.6 * e.recency + 0.4 * e.similarity)
        assert [e.score for e in got] == sorted((e.score for e in got), reverse=True)

    def test_recall_without_recency_is_similarity(self, episodes):
        query, old, _ = self._blend_setup(episodes)
        got = episodes.recall("u1", query, k=3, recency_weight=0.0)
        assert got[0].record.record_id == old.record_id
        assert [e.score for e in got] == pytest.approx([e.similarity for e in got])
        only_recency = episodes.recall("u1", query, k=3, recency_weight=1.0)
        assert [e.record.text for e in only_recency][-1] == "cooked pasta"

    def test_recall_longer_half_life_helps_old_events(self, episodes):
        query, old, _ = self._blend_setup(episodes)
        assert episodes.recall("u1", query, k=1, half_life_days=3650)[0].record.record_id == old.record_id

    def test_recall_edge_cases(self, episodes):
        assert episodes.recall("nobody", "anything") == []
        episodes.record("u1", "chat_turn", "hello", timestamp=NOW + DAY)  # clock skew: counts as now
        assert episodes.recall("u1", "hello", k=5)[0].recency == 1.0
        assert episodes.recall("u1", "hello", k=5, kind="interaction") == []
        with pytest.raises(UsageError, match="recency_weight"):
            episodes.recall("u1", "x", recency_weight=1.5)
        with pytest.raises(UsageError, match="half_life_days"):
            episodes.recall("u1", "x", half_life_days=0)
        with pytest.raises(UsageError, match="k"):
            episodes.recall("u1", "x", k=0)

    def test_users_are_isolated(self, episodes):
        episodes.record("alice", "chat_turn", "my secret: I love horror films")
        episodes.record("bob", "chat_turn", "I like comedies")
        for hits in (episodes.search("bob", "secret horror films", k=10),
                     [(e.record, e.score) for e in episodes.recall("bob", "secret horror films", k=10)]):
            assert [r.text for r, _ in hits] == ["I like comedies"]
        assert [r.text for r in episodes.recent("bob", n=10)] == ["I like comedies"]
        assert episodes.get("bob", [0])[0].text == "I like comedies"  # same id, bob's own record

    @pytest.mark.parametrize("bad", [42, "", "a/b", "x\x00"])
    def test_bad_user_ids(self, episodes, bad):
        with pytest.raises(UsageError, match="user_id"):
            episodes.record(bad, "chat_turn", "hi")
        with pytest.raises(UsageError, match="user_id"):
            episodes.recent(bad)

    def test_forget(self, episodes):
        for i in range(3):
            episodes.record("u1", "interaction", f"event {i}")
        episodes.record("u2", "interaction", "keep me")
        assert episodes.forget("u1", [0]) == 1
        assert episodes.forget("u1") == 2
        assert episodes.recent("u1") == [] and len(episodes.recent("u2")) == 1


# ----------------------------------------------------------------------------------------
class TestSemanticMemory:
    def test_add_fact_with_sources(self, episodes, semantic):
        e1 = episodes.record("u1", "interaction", "watched Alien")
        e2 = episodes.record("u1", "feedback", "loved the tension")
        f = semantic.add_fact("u1", "enjoys tense sci-fi horror",
                              source_event_ids=[e1.record_id, e2.record_id])
        assert f.namespace == ("user", "u1", "semantic") and f.source_ids == [0, 1] and f.kind == "fact"
        assert [s.text for s in semantic.sources("u1", f)] == ["watched Alien", "loved the tension"]
        assert [x.text for x in semantic.facts("u1")] == ["enjoys tense sci-fi horror"]

    def test_sources_must_be_the_users_own_events(self, episodes, semantic):
        episodes.record("alice", "interaction", "a0")
        episodes.record("alice", "interaction", "a1")
        episodes.record("bob", "interaction", "b0")
        with pytest.raises(UsageError, match=r"source_event_ids.*\[1\].*'bob'"):
            semantic.add_fact("bob", "cites alice's event 1", source_event_ids=[1])
        f = semantic.add_fact("bob", "cites event 0", source_event_ids=[0])
        assert [s.text for s in semantic.sources("bob", f)] == ["b0"]  # bob's 0, not alice's

    def test_search_and_kinds(self, semantic):
        semantic.add_fact("u1", "prefers comedies on weekdays")
        semantic.add_fact("u1", "lately in a mood for documentaries", kind="summary")
        assert semantic.search("u1", "comedies", k=1)[0][0].text == "prefers comedies on weekdays"
        assert [r.kind for r, _ in semantic.search("u1", "comedies", k=5, kind="summary")] == ["summary"]
        assert [f.kind for f in semantic.facts("u1", kind="summary")] == ["summary"]

    def test_replace_facts(self, episodes, semantic):
        e = episodes.record("u1", "interaction", "watched Heat")
        semantic.add_fact("u1", "old fact one")
        semantic.add_fact("u1", "old summary", kind="summary")
        new = semantic.replace_facts("u1", ["likes crime films",
                                            MemoryRecord(kind="fact", text="watches at night", timestamp=5.0,
                                                         source_ids=[e.record_id])], kind="fact")
        assert [f.record_id for f in new] == [2, 3]
        # oldest first: the record's own timestamp (5.0) is kept, the rest are stamped NOW
        assert [(f.kind, f.text) for f in semantic.facts("u1")] == [
            ("fact", "watches at night"), ("summary", "old summary"), ("fact", "likes crime films")]
        assert semantic.facts("u1", kind="fact")[0].source_ids == [0]
        semantic.replace_facts("u1", [])
        assert semantic.facts("u1") == []

    def test_replace_facts_is_atomic(self, store, semantic, monkeypatch):
        semantic.add_fact("u1", "keep me")
        # an invalid citation is caught before anything is written
        with pytest.raises(UsageError, match="source_event_ids"):
            semantic.replace_facts("u1", ["fine", MemoryRecord(kind="fact", text="bad", source_ids=[7])])
        # a failure inside the write rolls the deletion of the old facts back
        monkeypatch.setattr(store, "put", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
        with pytest.raises(OSError, match="disk full"):
            semantic.replace_facts("u1", ["new"])
        monkeypatch.undo()
        assert [f.text for f in semantic.facts("u1")] == ["keep me"]
        assert semantic.search("u1", "keep me", k=3)[0][0].text == "keep me"


def test_forget_user_removes_only_that_user(store, episodes, semantic):
    episodes.record("u1", "interaction", "x")
    semantic.add_fact("u1", "y")
    episodes.record("u10", "interaction", "other user")  # "u1" is a prefix of "u10" as a string
    assert forget_user(store, "u1") == 2
    assert store.namespaces(("user", "u1")) == []
    assert store.namespaces() == [episodic_namespace("u10")]


def test_namespace_helpers():
    assert episodic_namespace("42") == ("user", "42", "episodic")
    assert semantic_namespace("42") == ("user", "42", "semantic")
    with pytest.raises(UsageError, match="str"):
        episodic_namespace(42)  # type: ignore[arg-type]


def test_default_clock_stamps_now(emb):
    mem = EpisodicMemory(InMemoryMemoryStore(DIM), emb)
    import time

    before = time.time()
    assert before <= mem.record("u", "chat_turn", "hi").timestamp <= time.time()


def test_stores_agree(emb):
    """The same calls give the same answers on both stores (the reference keeps FAISS honest)."""
    folder = tempfile.mkdtemp(dir="/dev/shm" if os.access("/dev/shm", os.W_OK) else None)
    try:
        results = []
        for store in (InMemoryMemoryStore(DIM), FaissMemoryStore(Path(folder), DIM)):
            ep = EpisodicMemory(store, emb, clock=lambda: NOW)
            for i, text in enumerate(ITEMS.values()):
                ep.record("u", "interaction", text, timestamp=NOW - i * 10 * DAY)
            recalled = ep.recall("u", "space crew", k=4)
            results.append([(e.record.record_id, round(e.score, 5)) for e in recalled])
            store.close()
        assert results[0] == results[1]
        assert np.isfinite([s for _, s in results[0]]).all()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
