"""Contract tests for VectorIndex, run over the exact reference and every FAISS kind."""

from __future__ import annotations

import numpy as np
import pytest

from memory.errors import UsageError
from memory.vector_index import ExactVectorIndex, FaissVectorIndex, VectorIndex, VectorIndexConfig

DIM = 16




def unit(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def brute_force(ids: np.ndarray, vecs: np.ndarray, q: np.ndarray, k: int) -> list[int]:
    s = vecs @ q
    return [int(ids[j]) for j in np.lexsort((ids, -s))[:k]]


class VectorIndexContract:
    """Every VectorIndex must pass these. ``exact`` is False for approximate kinds, whose
    tests check recall instead of order."""

    exact = True
    min_recall = 1.0

    def make(self, dim: int = DIM) -> VectorIndex:
        raise NotImplementedError

    @pytest.fixture
    def rng(self):
        return np.random.default_rng(7)

    @pytest.fixture
    def filled(self, rng):
        ix = self.make()
        ids = np.arange(0, 600, 3, dtype=np.int64)  # 200 sparse ids, not positions
        vecs = unit(rng, len(ids))
        ix.add(ids, vecs)
        return ix, ids, vecs

    # -- basics ---------------------------------------------------------------------------
    def test_empty_index_pads(self):
        ix = self.make()
        scores, ids = ix.search(np.ones(DIM, np.float32), k=3)
        assert ids.tolist() == [[-1, -1, -1]]
        assert np.isneginf(scores).all()
        assert len(ix) == 0 and ix.ids().tolist() == []

    def test_len_ids_and_contains(self, filled):
        ix, ids, _ = filled
        assert len(ix) == 200
        assert ix.ids().dtype == np.int64
        assert ix.ids().tolist() == sorted(ids.tolist())
        assert 3 in ix and 4 not in ix

    def test_search_finds_itself_first(self, filled):
        ix, ids, vecs = filled
        scores, got = ix.search(vecs[:20], k=1)
        assert got[:, 0].tolist() == ids[:20].tolist()
        np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)

    def test_search_shapes_and_dtypes(self, filled):
        ix, _, vecs = filled
        scores, ids = ix.search(vecs[:4], k=5)
        assert scores.shape == ids.shape == (4, 5)
        assert scores.dtype == np.float32 and ids.dtype == np.int64
        assert (np.diff(scores, axis=1) <= 1e-6).all(), "scores must be best first"

    def test_single_vector_query_is_one_row(self, filled):
        ix, ids, vecs = filled
        _, got = ix.search(vecs[5], k=1)
        assert got.shape == (1, 1) and got[0, 0] == ids[5]

    def test_top_k_matches_brute_force(self, filled, rng):
        ix, ids, vecs = filled
        queries = unit(rng, 10)
        _, got = ix.search(queries, k=10)
        hits = 0
        for qi, q in enumerate(queries):
            truth = brute_force(ids, vecs, q, 10)
            if self.exact:
                assert got[qi].tolist() == truth
            hits += len(set(got[qi].tolist()) & set(truth))
        assert hits / 100 >= self.min_recall

    def test_scores_are_inner_products(self, filled, rng):
        ix, ids, vecs = filled
        q = unit(rng, 1)
        scores, got = ix.search(q, k=5)
        lookup = dict(zip(ids.tolist(), vecs))
        for s, i in zip(scores[0], got[0]):
            assert s == pytest.approx(float(lookup[int(i)] @ q[0]), abs=1e-5)

    def test_k_larger_than_index_pads(self, rng):
        ix = self.make()
        ix.add([5, 9], unit(rng, 2))
        scores, ids = ix.search(unit(rng, 1), k=4)
        assert sorted(ids[0, :2].tolist()) == [5, 9]
        assert ids[0, 2:].tolist() == [-1, -1] and np.isneginf(scores[0, 2:]).all()

    # -- stable ids -----------------------------------------------------------------------
    def test_add_existing_id_replaces_vector(self, filled, rng):
        ix, ids, vecs = filled
        target = unit(rng, 1)
        ix.add([ids[0]], target)
        assert len(ix) == 200
        scores, got = ix.search(target, k=1)
        assert got[0, 0] == ids[0] and scores[0, 0] == pytest.approx(1.0, abs=1e-5)
        # the old vector is gone: querying with it no longer finds ids[0] with score 1
        s_old, g_old = ix.search(vecs[0], k=1)
        assert not (g_old[0, 0] == ids[0] and s_old[0, 0] > 0.999)

    def test_remove(self, filled):
        ix, ids, vecs = filled
        assert ix.remove([ids[0], ids[1], 10_000]) == 2
        assert len(ix) == 198 and ids[0] not in ix
        _, got = ix.search(vecs[:2], k=5)
        assert ids[0] not in got and ids[1] not in got
        assert ix.remove([ids[0]]) == 0

    def test_remove_then_readd_same_id(self, filled, rng):
        ix, ids, _ = filled
        ix.remove([ids[3]])
        v = unit(rng, 1)
        ix.add([ids[3]], v)
        assert ix.search(v, k=1)[1][0, 0] == ids[3]

    def test_search_after_many_removals_stays_correct(self, filled, rng):
        ix, ids, vecs = filled
        keep = np.ones(len(ids), bool)
        keep[::2] = False
        ix.remove(ids[~keep])
        queries = unit(rng, 5)
        _, got = ix.search(queries, k=5)
        for qi, q in enumerate(queries):
            truth = brute_force(ids[keep], vecs[keep], q, 5)
            assert set(got[qi].tolist()) <= set(ids[keep].tolist())
            if self.exact:
                assert got[qi].tolist() == truth

    # -- allowed_ids ----------------------------------------------------------------------
    def test_allowed_ids_restrict_results(self, filled, rng):
        ix, ids, vecs = filled
        allowed = ids[10:40:3]
        queries = unit(rng, 6)
        _, got = ix.search(queries, k=4, allowed_ids=allowed)
        for qi, q in enumerate(queries):
            assert set(got[qi].tolist()) <= set(allowed.tolist())
            assert (got[qi] >= 0).all(), "restricted search must be complete"
            if self.exact:
                assert got[qi].tolist() == brute_force(allowed, vecs[10:40:3], q, 4)

    def test_allowed_ids_fewer_than_k_pads(self, filled):
        ix, ids, vecs = filled
        _, got = ix.search(vecs[0], k=5, allowed_ids=[ids[7], ids[8], 99_999])
        assert sorted(got[0, :2].tolist()) == sorted([ids[7], ids[8]])
        assert got[0, 2:].tolist() == [-1, -1, -1]

    def test_allowed_ids_empty_returns_nothing(self, filled):
        ix, _, vecs = filled
        scores, got = ix.search(vecs[:2], k=3, allowed_ids=[])
        assert (got == -1).all() and np.isneginf(scores).all()

    def test_allowed_ids_large_set_is_complete(self, filled, rng):
        ix, ids, _ = filled
        allowed = ids[::2]  # 100 ids: larger than k, goes through the ID selector
        _, got = ix.search(unit(rng, 8), k=10, allowed_ids=allowed)
        assert (got >= 0).all()
        assert set(got.ravel().tolist()) <= set(allowed.tolist())

    # -- errors ---------------------------------------------------------------------------
    def test_dimension_mismatch_names_dims(self):
        ix = self.make()
        with pytest.raises(UsageError, match=rf"\(3, 5\).*dim {DIM}"):
            ix.add([1, 2, 3], np.zeros((3, 5), np.float32))
        with pytest.raises(UsageError, match=f"dim {DIM}"):
            ix.search(np.zeros(DIM + 1, np.float32), k=1)

    @pytest.mark.parametrize("bad_ids, match", [([-1], "non-negative"), ([1.5], "integers"),
                                                ([4, 4], "duplicate id 4")])
    def test_bad_ids(self, bad_ids, match):
        ix = self.make()
        with pytest.raises(UsageError, match=match):
            ix.add(bad_ids, np.zeros((len(bad_ids), DIM), np.float32))

    def test_bad_k_and_row_count(self):
        ix = self.make()
        with pytest.raises(UsageError, match="k"):
            ix.search(np.zeros(DIM, np.float32), k=0)
        with pytest.raises(UsageError, match="2 rows for 3 ids"):
            ix.add([1, 2, 3], np.zeros((2, DIM), np.float32))
        with pytest.raises(UsageError, match="NaN"):
            ix.add([1], np.full((1, DIM), np.nan, np.float32))

    def test_dim_must_be_positive(self):
        with pytest.raises(UsageError, match="dim"):
            self.make(dim=0)


class TestExactVectorIndex(VectorIndexContract):
    def make(self, dim: int = DIM) -> VectorIndex:
        return ExactVectorIndex(dim)

    def test_ties_break_by_id(self):
        ix = ExactVectorIndex(2)
        ix.add([9, 3, 5], np.array([[1, 0], [1, 0], [0, 1]], np.float32))
        assert ix.search(np.array([1, 0], np.float32), k=3)[1].tolist() == [[3, 9, 5]]


class FaissContract(VectorIndexContract):
    config = VectorIndexConfig()

    def make(self, dim: int = DIM) -> VectorIndex:
        return FaissVectorIndex(dim, self.config.model_copy(update={"use_gpu": False}))

    def test_bytes_round_trip(self, filled, rng):
        ix, ids, _ = filled
        ix.remove(ids[:5])
        back = FaissVectorIndex.from_bytes(ix.to_bytes(), DIM, ix.config)
        assert back.ids().tolist() == ix.ids().tolist()
        q = unit(rng, 4)
        a, b = ix.search(q, k=7), back.search(q, k=7)
        np.testing.assert_array_equal(a[1], b[1])
        np.testing.assert_allclose(a[0], b[0], atol=1e-6)
        back.add([1], unit(rng, 1))  # the loaded index stays writable
        assert 1 in back

    def test_from_bytes_rejects_other_kind_dim_or_garbage(self, filled):
        ix, _, _ = filled
        data = ix.to_bytes()
        other = "flat" if ix.config.kind != "flat" else "hnsw"
        with pytest.raises(UsageError, match="index kind"):
            FaissVectorIndex.from_bytes(data, DIM, VectorIndexConfig(kind=other, use_gpu=False))
        with pytest.raises(UsageError, match="index dim"):
            FaissVectorIndex.from_bytes(data, DIM * 2, ix.config)
        with pytest.raises(UsageError, match="index bytes"):
            FaissVectorIndex.from_bytes(b"not an index", DIM, ix.config)
        with pytest.raises(UsageError, match="index bytes"):
            FaissVectorIndex.from_bytes(data[:40], DIM, ix.config)


class TestFaissFlat(FaissContract):
    config = VectorIndexConfig(kind="flat")

    def test_matches_exact_reference_scores(self, filled, rng):
        ix, ids, vecs = filled
        ref = ExactVectorIndex(DIM)
        ref.add(ids, vecs)
        q = unit(rng, 5)
        a, b = ix.search(q, k=20), ref.search(q, k=20)
        np.testing.assert_array_equal(a[1], b[1])
        np.testing.assert_allclose(a[0], b[0], atol=1e-5)


class TestFaissHNSW(FaissContract):
    exact = False
    min_recall = 0.9
    config = VectorIndexConfig(kind="hnsw", hnsw_m=16)


class TestFaissIVF(FaissContract):
    # 200 vectors >= min_train 100: the fixture index is trained; nprobe < nlist keeps it approximate
    exact = False
    min_recall = 0.7
    config = VectorIndexConfig(kind="ivf", ivf_nlist=4, ivf_min_train=100, nprobe=3)

    def test_trains_once_enough_vectors(self, rng):
        ix = FaissVectorIndex(DIM, self.config.model_copy(update={"use_gpu": False}))
        ix.add(np.arange(99), unit(rng, 99))
        assert not ix.trained_ivf  # still exact
        ix.add([1000], unit(rng, 1))
        assert ix.trained_ivf and len(ix) == 100
        assert ix.search(ix._reconstruct(np.array([1000]))[0], k=1)[1][0, 0] == 1000

    def test_untrained_ivf_is_exact_and_round_trips(self, rng):
        cfg = self.config.model_copy(update={"use_gpu": False})
        ix = FaissVectorIndex(DIM, cfg)
        ids, vecs = np.arange(50), unit(rng, 50)
        ix.add(ids, vecs)
        q = unit(rng, 1)[0]
        assert ix.search(q, k=5)[1][0].tolist() == brute_force(ids, vecs, q, 5)
        back = FaissVectorIndex.from_bytes(ix.to_bytes(), DIM, cfg)
        assert not back.trained_ivf and len(back) == 50

    def test_filtered_search_missing_allowed_cells_falls_back_to_exact(self, filled, rng, monkeypatch):
        ix, ids, vecs = filled
        one_probe = FaissVectorIndex.from_bytes(ix.to_bytes(), DIM,
                                                ix.config.model_copy(update={"nprobe": 1}))
        q = unit(rng, 1)[0]
        # the allowed vectors point away from q, so they sit in cells that nprobe=1 never visits
        far = np.argsort(vecs @ q)[:6]
        calls = []
        real = FaissVectorIndex._exact
        monkeypatch.setattr(FaissVectorIndex, "_exact", lambda self, *a: calls.append(1) or real(self, *a))
        _, got = one_probe.search(q, k=4, allowed_ids=ids[far])
        assert calls, "the short row should have been recomputed exactly"
        assert got[0].tolist() == brute_force(ids[far], vecs[far], q, 4)

    def test_nprobe_equal_nlist_is_exact(self, filled, rng):
        ix, ids, vecs = filled
        exact = FaissVectorIndex.from_bytes(ix.to_bytes(), DIM, ix.config.model_copy(update={"nprobe": 4}))
        q = unit(rng, 3)
        _, got = exact.search(q, k=10)
        for qi in range(3):
            assert got[qi].tolist() == brute_force(ids, vecs, q[qi], 10)


class TestVectorIndexConfig:
    def test_round_trip(self):
        cfg = VectorIndexConfig(kind="ivf", ivf_nlist=64, nprobe=4)
        assert VectorIndexConfig.model_validate(cfg.model_dump()).model_dump() == cfg.model_dump()

    def test_rejects_typos_and_bad_values(self):
        with pytest.raises(ValueError, match="kind"):
            VectorIndexConfig(kind="annoy")
        with pytest.raises(ValueError, match="nprob"):
            VectorIndexConfig(nprob=3)  # extra="forbid": a typo is an error, not a silent default
        with pytest.raises(ValueError):
            VectorIndexConfig(hnsw_m=1)

    def test_min_train_default(self):
        assert VectorIndexConfig(ivf_nlist=10).min_train == 390

    def test_gpu_requests(self):
        with pytest.raises(UsageError, match="hnsw"):
            FaissVectorIndex(DIM, VectorIndexConfig(kind="hnsw", use_gpu=True))
        import faiss

        if faiss.get_num_gpus() == 0:
            with pytest.raises(UsageError, match="no GPU"):
                FaissVectorIndex(DIM, VectorIndexConfig(use_gpu=True))
            assert FaissVectorIndex(DIM, VectorIndexConfig(use_gpu=None))._use_gpu is False


def test_gpu_copy_serves_large_indexes_and_is_refreshed_after_writes(monkeypatch):
    """The GPU path with a stand-in for ``index_cpu_to_gpu`` (a CPU clone), so it runs anywhere."""
    import faiss

    import memory.vector_index as vi

    copies = []

    def fake_to_gpu(resources, device, index):
        copies.append(device)
        return faiss.clone_index(index)

    monkeypatch.setattr(faiss, "index_cpu_to_gpu", fake_to_gpu, raising=False)
    monkeypatch.setattr(vi, "_gpu_resources", lambda: None)
    rng = np.random.default_rng(3)
    ix = FaissVectorIndex(DIM, VectorIndexConfig(use_gpu=False, gpu_min_size=10))
    ix._use_gpu = True  # as if FAISS saw a GPU
    ix.add(np.arange(5), unit(rng, 5))
    ix.search(unit(rng, 1), k=2)
    assert copies == []  # below gpu_min_size: stays on the CPU
    vecs = unit(rng, 20)
    ix.add(np.arange(100, 120), vecs)
    assert ix.search(vecs[3], k=1)[1][0, 0] == 103
    ix.search(vecs[4], k=1)
    assert copies == [0]  # one copy, reused until the next write
    ix.remove([103])
    assert ix.search(vecs[3], k=1)[1][0, 0] != 103  # the refreshed copy no longer has it
    assert copies == [0, 0]


def test_import_memory_does_not_import_faiss():
    import subprocess
    import sys

    code = "import sys, memory.vector_index, memory.store, memory.memories; print('faiss' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
