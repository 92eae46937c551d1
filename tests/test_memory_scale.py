"""Memory at scale: the approximate (``auto``) index's filtered searches are never short, the
index cache stays bounded, the IVF cells follow the data's size, and the benchmark's figures
come from a real run."""

from __future__ import annotations

import numpy as np
import pytest

from memory.store import FaissMemoryStore, MemoryRecord
from memory.vector_index import FaissVectorIndex, VectorIndexConfig

DIM = 16
USER = ("user", "a", "episodic")
OTHER = ("user", "b", "episodic")


def _around(rng, center: np.ndarray, n: int, spread: float = 0.05) -> np.ndarray:
    v = center[None, :] + spread * rng.standard_normal((n, len(center))).astype(np.float32)
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def _recs(kind: str, n: int) -> list[MemoryRecord]:
    return [MemoryRecord(kind=kind, text=f"{kind} {j}", timestamp=float(j)) for j in range(n)]


def test_filtered_search_returns_min_k_n_of_the_users_own_even_when_ivf_misses_them(tmp_path):
    rng = np.random.default_rng(0)
    a, b = np.eye(DIM, dtype=np.float32)[0], np.eye(DIM, dtype=np.float32)[1]
    # IVF from 50 vectors on, one cell probed per query: what lies in other cells is invisible to it
    cfg = VectorIndexConfig(kind="auto", approximate_above=50, nprobe=1, approximate_probe_share=0.01, use_gpu=False)
    store = FaissMemoryStore(tmp_path / "mem", DIM, cfg)
    store.put(USER, _recs("interaction", 400), _around(rng, a, 400))       # near the query
    fb = _around(rng, b, 6)
    fb_ids = store.put(USER, _recs("feedback", 6), fb)                     # the user's few feedback events, far away
    store.put(OTHER, _recs("feedback", 50), _around(rng, a, 50, 0.01))      # someone else's, right at the query
    index = store._index(USER)
    assert index.trained_ivf and index._index.nprobe == 1
    q = a
    # the approximate pass alone comes back short: no feedback record in the probed cell
    f = index._faiss
    params = f.SearchParametersIVF(nprobe=1)
    params.sel = f.IDSelectorBatch(np.array(fb_ids, np.int64))
    _, raw = index._index.search(q[None], 10, params=params)
    assert (raw >= 0).sum() < 6
    for k in (1, 3, 6, 10):
        hits = store.search(USER, q, k, kind="feedback")
        assert len(hits) == min(k, 6)
        assert all(r.namespace == USER and r.kind == "feedback" for r, _ in hits)
        exact = np.array(fb_ids)[np.argsort(-(fb @ q), kind="stable")[:k]].tolist()
        assert [r.record_id for r, _ in hits] == exact
    # an id filter behaves the same; ids of the other namespace do not leak in
    hits = store.search(USER, q, 10, ids=fb_ids[:4] + [10_000])
    assert sorted(r.record_id for r, _ in hits) == sorted(fb_ids[:4])
    store.close()


def test_cache_is_bounded_and_evicted_indexes_reload_from_their_files(tmp_path):
    rng = np.random.default_rng(1)
    store = FaissMemoryStore(tmp_path / "mem", DIM, save_on_commit=False, max_cached_indexes=3)
    spaces = [("user", str(u), "episodic") for u in range(12)]
    vecs = {}
    with store.transaction():  # more namespaces in one transaction than the cache holds
        for ns in spaces[:6]:
            vecs[ns] = _around(rng, np.eye(DIM, dtype=np.float32)[len(vecs) % DIM], 5)
            store.put(ns, _recs("interaction", 5), vecs[ns])
    assert len(store._cache) <= 3
    for ns in spaces[6:]:
        vecs[ns] = _around(rng, np.eye(DIM, dtype=np.float32)[len(vecs) % DIM], 5)
        store.put(ns, _recs("interaction", 5), vecs[ns])
        assert len(store._cache) <= 3
    for ns in spaces:  # every namespace still answers, exactly, from its saved file
        q = vecs[ns][0]
        hits = store.search(ns, q, 5)
        assert [r.record_id for r, _ in hits] == np.argsort(-(vecs[ns] @ q), kind="stable").tolist()
    assert store.index_rebuilds == 0  # evicted with unsaved changes: written first, never rebuilt
    store.close()
    with pytest.raises(Exception, match="max_cached_indexes"):
        FaissMemoryStore(tmp_path / "mem", DIM, max_cached_indexes=0)


def test_auto_turns_approximate_at_the_threshold_and_resizes_its_cells(tmp_path):
    rng = np.random.default_rng(2)
    cfg = VectorIndexConfig(kind="auto", approximate_above=100, use_gpu=False)
    ix = FaissVectorIndex(DIM, cfg)
    v = _around(rng, np.ones(DIM, np.float32) / 4, 1600, spread=1.0)
    ix.add(np.arange(99), v[:99])
    assert not ix.trained_ivf  # exact below the threshold
    ix.add([99], v[99:100])
    assert ix.trained_ivf and ix._index.nlist == cfg.nlist_for(100) == 40
    ix.add(np.arange(100, 399), v[100:399])
    assert ix._index.nlist == 40  # not yet four times the size it was trained for
    ix.add(np.arange(399, 1600), v[399:1600])
    assert ix._index.nlist == cfg.nlist_for(1600) == 160  # retrained on the grown data
    assert ix._index.nprobe == cfg.nprobe_for(160) == 8
    back = FaissVectorIndex.from_bytes(ix.to_bytes(), DIM, cfg)
    assert back._index.nprobe == 8 and len(back) == 1600
    s1, i1 = ix.search(v[:5], 10)
    s2, i2 = back.search(v[:5], 10)
    assert np.array_equal(i1, i2)
    # the approximate answers stay close to exact on this data
    ex = np.argsort(-(v[:5] @ v.T), axis=1, kind="stable")[:, :10]
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(i1.tolist(), ex.tolist())])
    assert recall >= 0.5


def test_config_round_trips_and_rejects_bad_values():
    cfg = VectorIndexConfig(kind="auto", approximate_above=1000, approximate_probe_share=0.1)
    assert VectorIndexConfig.model_validate(cfg.model_dump()) == cfg
    with pytest.raises(Exception, match="approximate_above"):
        VectorIndexConfig(kind="auto", approximate_above=0)
    with pytest.raises(Exception, match="kind"):
        VectorIndexConfig(kind="annoy")


def test_benchmark_figures_come_from_a_real_run(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        from scale_memory import run_memory_scale
    finally:
        sys.path.pop(0)
    small = run_memory_scale(3_000, 6, dim=32, queries=30, approximate_above=400, max_cached_indexes=2,
                             folder=tmp_path)
    assert small["short_filtered"] == 0
    assert small["index_kinds"] == {"IndexIVFFlat": 30}  # 500 per user: every namespace turned approximate
    assert 0 < small["recall_at_k"] <= 1 and small["insert_events_per_s"] > 0
    exact = run_memory_scale(600, 6, dim=32, queries=20, approximate_above=400, folder=tmp_path / "exact")
    assert exact["recall_at_k"] == 1.0 and exact["index_kinds"] == {"IndexIDMap2": 20}
