"""Vector indexes with stable int64 ids: an exact numpy reference and a FAISS implementation.

Both score by inner product (the embedders return unit vectors, so this is cosine), both
replace the vector of an id that is added again, and both return ``(scores, ids)`` of shape
``(q, k)`` padded with score ``-inf`` and id ``-1`` when fewer than ``k`` vectors qualify.
:class:`ExactVectorIndex` is the reference the contract tests hold :class:`FaissVectorIndex`
to. FAISS is imported on first use of :class:`FaissVectorIndex`, so ``import memory`` stays fast.

Example:
    >>> import numpy as np
    >>> index = ExactVectorIndex(dim=2)
    >>> index.add([7, 9], np.array([[1, 0], [0, 1]], np.float32))
    >>> scores, ids = index.search(np.array([[1, 0]], np.float32), k=3)
    >>> ids.tolist()
    [[7, 9, -1]]
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from memory.errors import UsageError

IndexKind = Literal["flat", "hnsw", "ivf", "auto"]


class VectorIndexConfig(BaseModel):
    """How :class:`FaissVectorIndex` indexes vectors; the defaults are exact search on the CPU.

    Example:
        >>> VectorIndexConfig(kind="hnsw", hnsw_m=16).kind
        'hnsw'
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: IndexKind = "flat"
    """``flat``: exact inner product (the default); ``hnsw``: graph-based approximate search;
    ``ivf``: inverted lists over k-means cells, approximate, for large catalogs; ``auto``: exact
    while the index holds fewer than ``approximate_above`` vectors, then IVF sized to the data
    (``nlist`` about ``4 * sqrt(n)``, retrained each time the index has grown fourfold since its
    last training): what a store with many small namespaces and a few huge ones wants."""
    hnsw_m: int = Field(32, ge=2, le=256)
    """HNSW: neighbours per node. Larger is more accurate, slower to build and bigger."""
    hnsw_ef_construction: int = Field(80, gt=0)
    """HNSW: candidate list size while inserting. Larger builds a better graph, slower."""
    hnsw_ef_search: int = Field(64, gt=0)
    """HNSW: candidate list size while searching (raised to ``k`` when ``k`` is larger)."""
    ivf_nlist: int = Field(100, gt=0)
    """IVF: number of k-means cells."""
    ivf_min_train: int | None = Field(None, gt=0)
    """IVF: vectors needed before the index trains itself; until then it searches exactly.
    None means ``39 * ivf_nlist``, below which FAISS's k-means warns that it lacks data."""
    nprobe: int = Field(8, gt=0)
    """IVF: cells visited per query. ``nprobe == ivf_nlist`` makes IVF exact."""
    approximate_above: int = Field(50_000, ge=1)
    """``auto``: vectors at which an index turns approximate (IVF). Below it an exact scan is
    fast enough (384-d on one core: about 1 ms per 10,000 vectors) and exact; above it the scan's
    cost grows with the index while IVF's stays near ``nprobe / nlist`` of it. Measured in
    ``benchmarks/scale_memory.py``."""
    approximate_probe_share: float = Field(0.05, gt=0, le=1)
    """``auto``: share of the IVF cells a query visits (``nprobe = max(nprobe, share * nlist)``);
    the recall/latency knob of the approximate mode."""
    use_gpu: bool | None = None
    """Search on GPU 0 through ``faiss-gpu``. None uses a GPU when FAISS sees one; applies to
    ``flat`` and ``ivf`` only (FAISS has no GPU HNSW). True without a GPU is an error."""
    gpu_min_size: int = Field(20_000, ge=0)
    """Indexes smaller than this search on the CPU even when a GPU is used: a copy to the GPU
    and a kernel launch cost more than scanning a small index (per-user memories stay on the CPU)."""

    @property
    def min_train(self) -> int:
        """Vectors an IVF index waits for before training (see ``ivf_min_train``; for ``auto``,
        ``approximate_above``)."""
        if self.kind == "auto":
            return self.approximate_above
        return self.ivf_min_train if self.ivf_min_train is not None else 39 * self.ivf_nlist

    def nlist_for(self, n: int) -> int:
        """IVF cells for an index trained on ``n`` vectors: ``ivf_nlist``, or for ``auto`` about
        ``4 * sqrt(n)`` (never more than ``n``)."""
        if self.kind == "auto":
            return max(1, min(n, int(round(4 * n ** 0.5))))
        return max(1, min(self.ivf_nlist, n))

    def nprobe_for(self, nlist: int) -> int:
        """Cells a query visits in an IVF index of ``nlist`` cells."""
        if self.kind == "auto":
            return min(nlist, max(self.nprobe, int(round(self.approximate_probe_share * nlist))))
        return self.nprobe


class VectorIndex(ABC):
    """A set of ``(id, vector)`` pairs searched by inner product. Ids are non-negative int64.

    Subclasses implement five methods; the shared validation below gives every implementation
    the same errors, which the contract tests check.
    """

    dim: int
    """Length of every vector in the index."""

    @abstractmethod
    def add(self, ids: Any, vectors: Any) -> None:
        """Insert ``vectors`` (n, dim) under ``ids`` (n,); an id already present gets the new vector."""

    @abstractmethod
    def remove(self, ids: Any) -> int:
        """Delete these ids; absent ids are ignored. Returns how many were removed."""

    @abstractmethod
    def search(self, queries: Any, k: int, allowed_ids: Any | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` by inner product for each query row.

        ``queries`` is (q, dim) or a single (dim,) vector (treated as q = 1). ``allowed_ids``,
        when given, restricts results to those ids (absent ones are ignored). Returns float32
        scores and int64 ids, both (q, k), best first, padded with ``-inf`` / ``-1``.
        """

    @abstractmethod
    def __len__(self) -> int:
        """Number of vectors in the index."""

    @abstractmethod
    def ids(self) -> np.ndarray:
        """Every id in the index, sorted ascending (int64)."""

    def __contains__(self, id_: object) -> bool:
        try:
            return bool(np.isin(np.int64(id_), self.ids()))  # type: ignore[arg-type]
        except (TypeError, ValueError, OverflowError):
            return False

    # -- validation shared by every implementation ------------------------------------------
    def _check_ids(self, ids: Any, *, unique: bool = True) -> np.ndarray:
        arr = np.asarray(ids)
        if arr.size == 0:
            return np.zeros(0, np.int64)
        if arr.ndim != 1:
            raise UsageError("ids shape", arr.shape, "a 1-D sequence of integers")
        if not np.issubdtype(arr.dtype, np.integer):
            raise UsageError("ids dtype", str(arr.dtype), "integers (int64)")
        arr = arr.astype(np.int64)
        if (arr < 0).any():
            # -1 marks padding in search results, so negative ids would be indistinguishable from it
            raise UsageError("id", int(arr[arr < 0][0]), "non-negative integers")
        if unique and len(np.unique(arr)) != len(arr):
            uniq, counts = np.unique(arr, return_counts=True)
            raise UsageError("ids", f"duplicate id {int(uniq[counts > 1][0])} in one call",
                             "each id at most once per call")
        return arr

    def _check_vectors(self, vectors: Any, n: int) -> np.ndarray:
        v = np.asarray(vectors, dtype=np.float32)
        if n == 0 and v.size == 0:
            return np.zeros((0, self.dim), np.float32)
        if v.ndim != 2 or v.shape[1] != self.dim:
            raise UsageError("vectors shape", tuple(v.shape),
                             f"(n, {self.dim}): this index has dim {self.dim}")
        if v.shape[0] != n:
            raise UsageError("vectors", f"{v.shape[0]} rows for {n} ids", "one vector per id")
        if not np.isfinite(v).all():
            raise UsageError("vectors", "a NaN or infinite value", "finite floats")
        return np.ascontiguousarray(v)

    def _check_queries(self, queries: Any, k: int) -> np.ndarray:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise UsageError("k", k, "an integer >= 1")
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise UsageError("query shape", tuple(np.shape(queries)),
                             f"(q, {self.dim}) or ({self.dim},): this index has dim {self.dim}")
        if not np.isfinite(q).all():
            raise UsageError("queries", "a NaN or infinite value", "finite floats")
        return np.ascontiguousarray(q)


def _check_dim(dim: Any) -> int:
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
        raise UsageError("dim", dim, "a positive integer")
    return int(dim)


def topk_rows(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best ``k`` of each row of ``scores`` (q, n) over candidate ``ids`` (n,), padded to k.

    Ties break by ascending id so that results do not depend on insertion order.
    """
    q, n = scores.shape
    out_s = np.full((q, k), -np.inf, np.float32)
    out_i = np.full((q, k), -1, np.int64)
    if n == 0:
        return out_s, out_i
    take = min(k, n)
    for r in range(q):
        row = scores[r]
        if take < n:
            # argpartition finds the k best in O(n); widen to every candidate tied with the
            # k-th so the id tie-break below is applied to the whole tie group
            part = np.argpartition(-row, take - 1)[:take]
            cand = np.flatnonzero(row >= row[part].min())
        else:
            cand = np.arange(n)
        order = cand[np.lexsort((ids[cand], -row[cand]))][:take]
        out_s[r, :take] = row[order]
        out_i[r, :take] = ids[order]
    return out_s, out_i


class ExactVectorIndex(VectorIndex):
    """Brute-force inner product in numpy: the reference implementation.

    Example:
        >>> import numpy as np
        >>> ix = ExactVectorIndex(dim=3)
        >>> ix.add([1, 2], np.eye(3, dtype=np.float32)[:2])
        >>> ix.search(np.array([0, 1, 0], np.float32), k=1)[1].tolist()
        [[2]]
    """

    def __init__(self, dim: int):
        self.dim = _check_dim(dim)
        self._ids = np.zeros(0, np.int64)
        self._vecs = np.zeros((0, self.dim), np.float32)
        self._pos: dict[int, int] = {}

    def add(self, ids: Any, vectors: Any) -> None:
        ids = self._check_ids(ids)
        vecs = self._check_vectors(vectors, len(ids))
        if len(ids) == 0:
            return
        known = np.array([int(i) in self._pos for i in ids], dtype=bool)
        for i, v in zip(ids[known], vecs[known]):
            self._vecs[self._pos[int(i)]] = v
        new_ids, new_vecs = ids[~known], vecs[~known]
        start = len(self._ids)
        self._ids = np.concatenate([self._ids, new_ids])
        self._vecs = np.concatenate([self._vecs, new_vecs])
        for off, i in enumerate(new_ids):
            self._pos[int(i)] = start + off

    def remove(self, ids: Any) -> int:
        ids = self._check_ids(ids, unique=False)
        drop = np.isin(self._ids, ids)
        n = int(drop.sum())
        if n:
            self._ids, self._vecs = self._ids[~drop], self._vecs[~drop]
            self._pos = {int(i): p for p, i in enumerate(self._ids)}
        return n

    def search(self, queries: Any, k: int, allowed_ids: Any | None = None) -> tuple[np.ndarray, np.ndarray]:
        q = self._check_queries(queries, k)
        ids, vecs = self._ids, self._vecs
        if allowed_ids is not None:
            keep = np.isin(ids, self._check_ids(allowed_ids, unique=False))
            ids, vecs = ids[keep], vecs[keep]
        return topk_rows(q @ vecs.T, ids, int(k))

    def __len__(self) -> int:
        return len(self._ids)

    def ids(self) -> np.ndarray:
        return np.sort(self._ids)

    def vectors(self, ids: Any) -> np.ndarray:
        """The stored vectors of ``ids`` (n, dim), in the order given; every id must be present."""
        ids = self._check_ids(ids, unique=False)
        missing = [int(i) for i in ids if int(i) not in self._pos]
        if missing:
            raise UsageError("id", missing[0], f"ids in this index ({len(self)} of them)")
        return self._vecs[[self._pos[int(i)] for i in ids]].copy()

    def copy(self) -> ExactVectorIndex:
        """An independent copy (used to snapshot state for transactions)."""
        out = ExactVectorIndex(self.dim)
        out._ids, out._vecs, out._pos = self._ids.copy(), self._vecs.copy(), dict(self._pos)
        return out


def _faiss():
    from memory.faiss_runtime import load_faiss

    return load_faiss()


_GPU_RESOURCES: list[Any] = []


def _gpu_resources():
    """One ``StandardGpuResources`` per process: each reserves GPU scratch memory, so one
    per index would exhaust the GPU with many namespaces."""
    if not _GPU_RESOURCES:
        _GPU_RESOURCES.append(_faiss().StandardGpuResources())
    return _GPU_RESOURCES[0]


_MAGIC = b"PLVI1"  # prefix of to_bytes(); lets from_bytes reject files that are not ours


class FaissVectorIndex(VectorIndex):
    """A FAISS index with stable ids: flat (exact), HNSW or IVF, by :class:`VectorIndexConfig`.

    ``flat`` and ``hnsw`` wrap ``IndexFlatIP`` / ``IndexHNSWFlat`` in ``IndexIDMap2``. ``ivf``
    uses ``IndexIVFFlat``'s own ids instead: ``IndexIDMap`` renumbers its id table on removal
    but IVF keeps its internal labels, so removals through the wrapper return wrong ids. An
    IVF index searches an exact flat index until it holds ``config.min_train`` vectors, then
    trains on them and switches. HNSW cannot delete, so removing or replacing an id rebuilds
    the graph (fine for catalogs that change rarely; use ``flat`` for churny data).

    Equal scores are ordered by ascending id, as in the exact index. Restricted search
    (``allowed_ids``) uses FAISS ID selectors; filtered HNSW and IVF searches can come back
    short, and such rows are recomputed exactly over the allowed vectors, so a row always has
    ``min(k, #allowed present)`` results.

    Example:
        >>> import numpy as np
        >>> ix = FaissVectorIndex(dim=2, config=VectorIndexConfig(kind="flat"))
        >>> ix.add([10, 20], np.array([[1, 0], [0.6, 0.8]], np.float32))
        >>> ix.search(np.array([1, 0], np.float32), k=2, allowed_ids=[20])[1].tolist()
        [[20, -1]]
    """

    def __init__(self, dim: int, config: VectorIndexConfig | None = None):
        self.dim = _check_dim(dim)
        self.config = config or VectorIndexConfig()
        self._faiss = _faiss()
        self._ids = np.zeros(0, np.int64)  # sorted; FAISS offers no cheap "is this id present"
        self._index = self._new_primary()
        self._gpu_index: Any = None
        self._gpu_stale = True
        self._use_gpu = self._resolve_gpu()

    # -- construction ---------------------------------------------------------------------
    def _resolve_gpu(self) -> bool:
        want = self.config.use_gpu
        if self.config.kind == "hnsw":
            if want:
                raise UsageError("use_gpu", True, "False or None for kind 'hnsw' (FAISS has no GPU HNSW)")
            return False
        if want is False:
            return False
        n_gpus = self._faiss.get_num_gpus() if hasattr(self._faiss, "get_num_gpus") else 0
        if want and n_gpus == 0:
            raise UsageError("use_gpu", True,
                             "False or None: FAISS sees no GPU (install faiss-gpu on a CUDA machine)")
        return n_gpus > 0

    def _new_primary(self):
        f, c = self._faiss, self.config
        if c.kind == "hnsw":
            h = f.IndexHNSWFlat(self.dim, c.hnsw_m, f.METRIC_INNER_PRODUCT)
            h.hnsw.efConstruction = c.hnsw_ef_construction
            h.hnsw.efSearch = c.hnsw_ef_search
            return f.IndexIDMap2(h)
        # ivf starts exact and is replaced by a trained IndexIVFFlat in _maybe_train
        return f.IndexIDMap2(f.IndexFlatIP(self.dim))

    @property
    def trained_ivf(self) -> bool:
        """True once an ``ivf`` index has trained and left its exact start-up mode."""
        return isinstance(self._index, self._faiss.IndexIVF)

    def _maybe_train(self) -> None:
        c = self.config
        if c.kind not in ("ivf", "auto") or len(self._ids) < c.min_train:
            return
        if self.trained_ivf:
            # auto: cells sized for the data they were trained on; retrain once it has grown fourfold
            if c.kind != "auto" or len(self._ids) < 4 * self._trained_on():
                return
        f = self._faiss
        ids, vecs = self._all()
        # FAISS needs at least nlist points; min_train defaults far above that, a custom one may not
        nlist = c.nlist_for(len(ids))
        ivf = f.IndexIVFFlat(f.IndexFlatIP(self.dim), self.dim, nlist, f.METRIC_INNER_PRODUCT)
        ivf.cp.seed = 1234  # deterministic k-means, so the same data gives the same cells
        if c.kind == "auto" and len(ids) > 256 * nlist:  # FAISS's own sampling cap, made deterministic and silent
            train = vecs[np.random.default_rng(1234).choice(len(ids), 256 * nlist, replace=False)]
        else:
            train = vecs
        ivf.train(np.ascontiguousarray(train))
        ivf.set_direct_map_type(f.DirectMap.Hashtable)  # reconstruct(id) for rebuilds and fallbacks
        ivf.add_with_ids(vecs, ids)
        ivf.nprobe = c.nprobe_for(nlist)
        self._index = ivf

    def _trained_on(self) -> int:
        """For ``auto``: the size the current IVF cells were made for (the inverse of ``nlist_for``)."""
        return int((self._index.nlist / 4) ** 2)

    # -- helpers --------------------------------------------------------------------------
    def _all(self) -> tuple[np.ndarray, np.ndarray]:
        """Every (id, vector), ids sorted."""
        if len(self._ids) == 0:
            return self._ids.copy(), np.zeros((0, self.dim), np.float32)
        return self._ids.copy(), self._reconstruct(self._ids)

    def _reconstruct(self, ids: np.ndarray) -> np.ndarray:
        return np.asarray(self._index.reconstruct_batch(np.ascontiguousarray(ids, np.int64)),
                          np.float32).reshape(len(ids), self.dim)

    def _touch(self) -> None:
        self._gpu_stale = True

    def _rebuild(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        """Start over from these vectors: how HNSW, which cannot delete, removes or replaces ids."""
        self._index = self._new_primary()
        self._ids = np.zeros(0, np.int64)
        if len(ids):
            self._insert(ids, vecs)

    def _insert(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        self._index.add_with_ids(vecs, ids)
        if len(self._ids) == 0 or ids.min() > self._ids[-1]:
            # ids that count up (a store's are assigned so): append, no O(n log n) re-sort per write
            self._ids = np.concatenate([self._ids, np.sort(ids)])
        else:
            self._ids = np.union1d(self._ids, ids)
        self._maybe_train()

    # -- VectorIndex ----------------------------------------------------------------------
    def add(self, ids: Any, vectors: Any) -> None:
        ids = self._check_ids(ids)
        vecs = self._check_vectors(vectors, len(ids))
        if len(ids) == 0:
            return
        fresh = len(self._ids) == 0 or ids.min() > self._ids[-1]
        existing = ids[:0] if fresh else ids[np.isin(ids, self._ids)]
        if len(existing):
            if self.config.kind == "hnsw":
                all_ids, all_vecs = self._all()
                keep = ~np.isin(all_ids, existing)
                self._rebuild(np.concatenate([all_ids[keep], ids]), np.concatenate([all_vecs[keep], vecs]))
                self._touch()
                return
            self._index.remove_ids(existing)
            self._ids = np.setdiff1d(self._ids, existing)
        self._insert(ids, vecs)
        self._touch()

    def remove(self, ids: Any) -> int:
        ids = self._check_ids(ids, unique=False)
        present = np.intersect1d(ids, self._ids)
        if len(present) == 0:
            return 0
        if self.config.kind == "hnsw":
            all_ids, all_vecs = self._all()
            keep = ~np.isin(all_ids, present)
            self._rebuild(all_ids[keep], all_vecs[keep])
        else:
            self._index.remove_ids(present)
            self._ids = np.setdiff1d(self._ids, present)
        self._touch()
        return len(present)

    def _search_params(self, selector, k: int):
        f = self._faiss
        if self.config.kind == "hnsw":
            params = f.SearchParametersHNSW(efSearch=max(self.config.hnsw_ef_search, k))
        elif self.trained_ivf:
            params = f.SearchParametersIVF(nprobe=self.config.nprobe_for(self._index.nlist))
        else:
            params = f.SearchParameters()
        if selector is not None:
            params.sel = selector
        return params

    def _searcher(self):
        """The index to run unrestricted searches on: a GPU copy when configured, else the CPU one."""
        if not self._use_gpu or len(self._ids) < self.config.gpu_min_size:
            return self._index
        if self._gpu_stale or self._gpu_index is None:
            # the CPU index stays the one that is mutated and serialised; the GPU copy is
            # refreshed lazily, so write bursts cost one copy at the next search
            self._gpu_index = None  # free the old copy before making the new one
            self._gpu_index = self._faiss.index_cpu_to_gpu(_gpu_resources(), 0, self._index)
            self._gpu_stale = False
        return self._gpu_index

    def search(self, queries: Any, k: int, allowed_ids: Any | None = None) -> tuple[np.ndarray, np.ndarray]:
        q = self._check_queries(queries, k)
        k = int(k)
        if allowed_ids is None:
            if len(self._ids) == 0:
                return topk_rows(np.zeros((len(q), 0), np.float32), self._ids, k)
            kk = min(k, len(self._ids))
            index = self._searcher()
            if index is self._index:
                scores, ids = index.search(q, kk, params=self._search_params(None, kk))
            else:  # GPU copy: nprobe was copied over with the index
                scores, ids = index.search(q, kk)
            return self._pad(scores, ids, k)
        allowed = np.intersect1d(self._check_ids(allowed_ids, unique=False), self._ids)
        if len(allowed) == 0:
            return topk_rows(np.zeros((len(q), 0), np.float32), allowed, k)
        if len(allowed) == len(self._ids):
            return self.search(q, k)
        if len(allowed) <= k:
            # every allowed vector will be returned anyway: score them directly
            return self._exact(q, allowed, k)
        # more allowed ids than k, so a complete answer has no padding
        selector = self._faiss.IDSelectorBatch(allowed)
        scores, ids = self._index.search(q, k, params=self._search_params(selector, k))
        scores, ids = self._pad(scores, ids, k)
        short = np.flatnonzero((ids < 0).any(axis=1))
        if len(short):
            # a filtered graph walk or a too-small nprobe can miss allowed vectors: redo exactly
            ex_s, ex_i = self._exact(q[short], allowed, k)
            scores[short], ids[short] = ex_s, ex_i
        return scores, ids

    def _exact(self, q: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return topk_rows(q @ self._reconstruct(ids).T, ids, k)

    @staticmethod
    def _pad(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        out_s = np.full((len(ids), k), -np.inf, np.float32)
        out_i = np.full((len(ids), k), -1, np.int64)
        w = ids.shape[1]
        out_s[:, :w], out_i[:, :w] = scores, ids
        out_s[out_i < 0] = -np.inf  # FAISS pads inner-product results with -FLT_MAX
        # FAISS leaves the order of equal scores to its heaps; sort ties by id as the exact
        # index does (padding, at -inf with id -1, must stay last)
        for r in range(len(out_i)):
            order = np.lexsort((np.where(out_i[r] < 0, np.iinfo(np.int64).max, out_i[r]), -out_s[r]))
            out_s[r], out_i[r] = out_s[r, order], out_i[r, order]
        return out_s, out_i

    def __len__(self) -> int:
        return len(self._ids)

    def ids(self) -> np.ndarray:
        return self._ids.copy()

    # -- persistence ----------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """The index, serialised by FAISS (the CPU copy), with a short header naming its kind."""
        kind = self.config.kind.encode()
        return _MAGIC + bytes([len(kind)]) + kind + self._faiss.serialize_index(self._index).tobytes()

    @classmethod
    def from_bytes(cls, data: bytes, dim: int, config: VectorIndexConfig | None = None) -> FaissVectorIndex:
        """Rebuild an index from :meth:`to_bytes` output.

        Raises :class:`UsageError` when ``data`` is not such output, or was written for another
        kind or dimension than ``config`` / ``dim`` ask for.
        """
        config = config or VectorIndexConfig()
        out = cls(dim, config)
        f = out._faiss
        if not data.startswith(_MAGIC) or len(data) < len(_MAGIC) + 2:
            raise UsageError("index bytes", f"{bytes(data[:8])!r}...",
                             "output of FaissVectorIndex.to_bytes()")
        n = data[len(_MAGIC)]
        kind = data[len(_MAGIC) + 1: len(_MAGIC) + 1 + n].decode("ascii", "replace")
        if kind != config.kind:
            raise UsageError("index kind", kind, f"{config.kind!r} (the configured kind)")
        try:
            index = f.deserialize_index(np.frombuffer(data[len(_MAGIC) + 1 + n:], dtype=np.uint8))
        except RuntimeError as e:
            raise UsageError("index bytes", "unreadable by FAISS",
                             f"a serialised FAISS index ({e})") from None
        if index.d != out.dim:
            raise UsageError("index dim", index.d, f"{out.dim} (the configured dim)")
        if isinstance(index, f.IndexIVF):
            index.nprobe = config.nprobe_for(index.nlist)
            ids = np.concatenate([np.zeros(0, np.int64)] + [
                f.rev_swig_ptr(index.invlists.get_ids(lst), index.invlists.list_size(lst)).copy()
                for lst in range(index.nlist) if index.invlists.list_size(lst)])
        else:
            if not isinstance(index, f.IndexIDMap2):
                raise UsageError("index type", type(index).__name__, "IndexIDMap2 or IndexIVFFlat")
            ids = f.vector_to_array(index.id_map).astype(np.int64)
        out._index = index
        out._ids = np.sort(ids)
        out._touch()
        return out
