"""Collaborative scorers. The persona engine needs an item-item linear scorer, whose score splits
exactly over any partition of a user's history.

``ItemItemScorer`` scores ``s(u, i) = sum_{j in H_u} B[j, i]``. Partition ``H_u`` into persona
groups ``H_1..H_K`` and ``s(u, i) = sum_k s_k(u, i)`` with ``s_k = sum_{j in H_k} B[j, i]``
(``contributions``). EASE (Steck 2019), its sparse local approximation ``SparseEASE`` and
ItemKNN are all of this form.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from pydantic import BaseModel, ConfigDict, Field

from memory.errors import UsageError


class Scorer(ABC):
    """Scores every catalog item for a user history (item positions). Fit once, then score many."""

    name: str

    @abstractmethod
    def fit(self, X: sp.csr_matrix) -> "Scorer":
        """Fit on a (users, items) binary interaction matrix."""

    @abstractmethod
    def score_batch(self, X: sp.csr_matrix) -> np.ndarray:
        """(rows of X, n_items) float32 scores for many histories at once."""

    def score(self, history: Sequence[int], n_items: int | None = None) -> np.ndarray:
        """Scores of every item for one history given as item positions."""
        n = n_items or self.n_items
        h = np.asarray(history, dtype=np.int64)
        x = sp.csr_matrix((np.ones(len(h), np.float32), (np.zeros(len(h), np.int64), h)), shape=(1, n))
        return self.score_batch(x)[0]

    n_items: int = 0


class ItemItemScorer(Scorer):
    """A linear item-item scorer with weight matrix ``B`` (dense ndarray or sparse CSR, items x items)."""

    B: np.ndarray | sp.csr_matrix

    def score_batch(self, X: sp.csr_matrix) -> np.ndarray:
        out = X @ self.B
        return np.asarray(out.todense() if sp.issparse(out) else out, dtype=np.float32)

    def score(self, history: Sequence[int], n_items: int | None = None) -> np.ndarray:
        h = np.asarray(history, dtype=np.int64)
        if len(h) == 0:
            return np.zeros(self.n_items, np.float32)
        if sp.issparse(self.B):
            idx = _row_entries(self.B, h)  # straight from the CSR arrays: ~5x faster than B[h].sum(0)
            return np.bincount(self.B.indices[idx], weights=self.B.data[idx], minlength=self.n_items).astype(np.float32)
        return self.B[h].sum(axis=0, dtype=np.float32)

    def contributions(self, groups: Sequence[Sequence[int]]) -> np.ndarray:
        """(len(groups), n_items): the score each group of history items gives each item.

        Summing the rows gives ``score`` of the union of the groups (exact up to float rounding).
        """
        out = np.zeros((len(groups), self.n_items), dtype=np.float32)
        for k, g in enumerate(groups):
            if len(g):
                out[k] = self.score(g)
        return out

    def item_weights(self, history: Sequence[int], items: Sequence[int]) -> np.ndarray:
        """(len(history), len(items)): ``B[j, i]`` for history items j and candidate items i (evidence)."""
        h = np.asarray(history, dtype=np.int64)
        it = np.asarray(items, dtype=np.int64)
        if sp.issparse(self.B):
            where = np.full(self.B.shape[1], -1, np.int64)
            where[it] = np.arange(len(it))  # a repeated candidate keeps its last column: fill the rest below
            idx = _row_entries(self.B, h)
            cols = where[self.B.indices[idx]]
            rows = np.repeat(np.arange(len(h)), self.B.indptr[h + 1] - self.B.indptr[h])
            ok = cols >= 0
            out = np.zeros((len(h), len(it)), np.float32)
            out[rows[ok], cols[ok]] = self.B.data[idx[ok]]
            if len(np.unique(it)) != len(it):
                out = out[:, where[it]]
            return out
        return np.asarray(self.B[np.ix_(h, it)], dtype=np.float32)

    # ---- persistence -----------------------------------------------------------------
    def config_dict(self) -> dict:
        return {}

    def save(self, folder: str | Path) -> None:
        """Write ``B`` and the config into ``folder`` (``scorer.json`` + ``B.npy`` or ``B.npz``)."""
        from memory.persistence import atomic_write_bytes, atomic_write_json

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        import io

        buf = io.BytesIO()
        if sp.issparse(self.B):
            sp.save_npz(buf, self.B.tocsr())
            atomic_write_bytes(folder / "B.npz", buf.getvalue())
        else:
            np.save(buf, np.ascontiguousarray(self.B, dtype=np.float32))
            atomic_write_bytes(folder / "B.npy", buf.getvalue())
        atomic_write_json(folder / "scorer.json", {"kind": self.name, "n_items": self.n_items,
                                                   "config": self.config_dict()})


def _row_entries(B: sp.csr_matrix, rows: np.ndarray) -> np.ndarray:
    """Positions in ``B.data`` / ``B.indices`` of every stored entry of ``rows`` (row by row)."""
    starts, ends = B.indptr[rows], B.indptr[rows + 1]
    lengths = ends - starts
    if len(lengths) == 0:
        return np.zeros(0, np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    return np.repeat(starts - offsets, lengths) + np.arange(int(lengths.sum()))


class EASEConfig(BaseModel):
    """EASE (Steck 2019): ``B = I - P / diag(P)``, ``P = (X^T X + lambda I)^-1``, zero diagonal."""

    model_config = ConfigDict(extra="forbid")

    l2: float = Field(200.0, gt=0)
    """Ridge strength lambda (tuned on a validation split by ``plural eval rec``)."""


class EASE(ItemItemScorer):
    """Embarrassingly Shallow Autoencoder, closed form; accepts a sparse input matrix.

    Example:
        >>> import scipy.sparse as sp, numpy as np
        >>> X = sp.csr_matrix(np.array([[1, 1, 0], [0, 1, 1], [1, 1, 1]], dtype=np.float32))
        >>> m = EASE(EASEConfig(l2=1.0)).fit(X)
        >>> m.score([0]).shape
        (3,)
    """

    name = "ease"

    def __init__(self, config: EASEConfig | None = None, **overrides):
        self.config = EASEConfig.model_validate({**(config or EASEConfig()).model_dump(), **overrides})
        self.B = np.zeros((0, 0), np.float32)

    def fit(self, X: sp.csr_matrix) -> "EASE":
        X = sp.csr_matrix(X, dtype=np.float64)
        self.n_items = X.shape[1]
        G = np.asarray((X.T @ X).todense(), dtype=np.float64)
        G[np.diag_indices_from(G)] += self.config.l2
        P = np.linalg.inv(G)
        B = P / (-np.diag(P))
        B[np.diag_indices_from(B)] = 0.0
        self.B = B.astype(np.float32)
        return self

    def config_dict(self) -> dict:
        return self.config.model_dump()


class ItemKNNConfig(BaseModel):
    """Item-based k-nearest neighbours on cosine similarity of item columns."""

    model_config = ConfigDict(extra="forbid")

    k: int = Field(100, gt=0)
    """Neighbours kept per item."""
    shrink: float = Field(10.0, ge=0)
    """Similarity shrinkage: ``sim = dot / (|a||b| + shrink)``."""


class ItemKNN(ItemItemScorer):
    """Item-based kNN; ``B`` is sparse with at most ``k`` non-zeros per target item."""

    name = "itemknn"

    def __init__(self, config: ItemKNNConfig | None = None, **overrides):
        self.config = ItemKNNConfig.model_validate({**(config or ItemKNNConfig()).model_dump(), **overrides})
        self.B = sp.csr_matrix((0, 0), dtype=np.float32)

    def fit(self, X: sp.csr_matrix) -> "ItemKNN":
        X = sp.csc_matrix(X, dtype=np.float32)
        self.n_items = X.shape[1]
        norms = np.sqrt(np.asarray(X.multiply(X).sum(axis=0)).ravel())
        G = np.asarray((X.T @ X).todense(), dtype=np.float32)
        S = G / (np.outer(norms, norms) + self.config.shrink + 1e-12)
        np.fill_diagonal(S, 0.0)
        k = min(self.config.k, max(1, self.n_items - 1))
        # keep the top-k sources j for every target column i
        idx = np.argpartition(-S, kth=k - 1, axis=0)[:k]
        cols = np.broadcast_to(np.arange(self.n_items), idx.shape)
        vals = S[idx, cols]
        keep = vals > 0
        self.B = sp.csr_matrix((vals[keep], (idx[keep], cols[keep])), shape=S.shape, dtype=np.float32)
        return self

    def config_dict(self) -> dict:
        return self.config.model_dump()


class SparseEASEConfig(BaseModel):
    """Sparse EASE for large catalogues: per-item ridge regressions on local neighbourhoods.

    Memory grows with ``n_items * neighbours`` (the Gram matrix kept pruned, ``B`` sparse), not
    with ``n_items ** 2``; time with ``n_items * neighbours ** 3``.
    """

    model_config = ConfigDict(extra="forbid")

    l2: float = Field(200.0, gt=0)
    """Ridge strength lambda (the same role, and the same default, as dense EASE's)."""
    neighbours: int = Field(200, gt=0, le=2000)
    """m: for each target item, the m items co-occurring with it most often (in ``X^T X``) are
    the only sources its column of ``B`` may use."""
    gram_neighbours: int = Field(400, gt=0)
    """Entries of ``X^T X`` kept per column (its largest, then symmetrised) to build the local
    systems; at least ``neighbours``. Entries outside the kept pattern count as 0 in a local
    system (exact when every co-occurring pair is kept, as on catalogues of up to this size)."""
    keep: int | None = Field(None, gt=0)
    """Largest-magnitude weights kept per column of ``B`` (None: all ``neighbours``)."""
    block: int = Field(128, gt=0)
    """Target items solved together (one batched LAPACK call; bounds the working memory)."""


class SparseEASE(ItemItemScorer):
    """EASE restricted to local neighbourhoods, ``B`` a float32 CSR matrix.

    For each target item ``i``: ``N_i`` = the ``neighbours`` items co-occurring with ``i`` most
    often, and ``B[N_i, i] = (G[N_i, N_i] + lambda I)^-1 G[N_i, i]``, ``G = X^T X``. With
    ``N_i`` = every other item this is dense EASE's column exactly (EASE's zero-diagonal
    solution is the ridge regression of each item on all the others), so the approximation is
    only the neighbourhood. Scores stay ``sum_{j in H_u} B[j, i]``: the persona decomposition,
    attention and evidence are exact as with every item-item scorer.

    Example:
        >>> import scipy.sparse as sp, numpy as np
        >>> X = sp.csr_matrix(np.array([[1, 1, 0], [0, 1, 1], [1, 1, 1]], dtype=np.float32))
        >>> m = SparseEASE(SparseEASEConfig(l2=1.0, neighbours=2)).fit(X)
        >>> sp.issparse(m.B), m.score([0]).shape
        (True, (3,))
    """

    name = "sparse_ease"

    def __init__(self, config: SparseEASEConfig | None = None, **overrides):
        self.config = SparseEASEConfig.model_validate({**(config or SparseEASEConfig()).model_dump(), **overrides})
        self.B = sp.csr_matrix((0, 0), dtype=np.float32)
        self.fit_stats: dict = {}
        """What the last fit kept and how long its steps took (seconds)."""

    def fit(self, X: sp.csr_matrix) -> "SparseEASE":
        import time

        cfg = self.config
        t0 = time.perf_counter()
        X = sp.csr_matrix(X, dtype=np.float32)
        n = self.n_items = X.shape[1]
        m = min(cfg.neighbours, max(n - 1, 1))
        G = pruned_gram(X, max(cfg.gram_neighbours, m), block=max(cfg.block, 64))
        t1 = time.perf_counter()
        diag = G.diagonal().astype(np.float64)
        where = np.full(n, -1, np.int64)  # scratch of _gather: item -> position in the neighbourhood
        rows_out, cols_out, vals_out = [], [], []
        k = min(m, n - 1)
        for s in range(0, n, cfg.block):
            targets = np.arange(s, min(s + cfg.block, n))
            A = np.zeros((len(targets), k, k), np.float64)
            rhs = np.zeros((len(targets), k), np.float64)
            nb = np.full((len(targets), k), n, np.int64)  # n marks padding (fewer co-occurring items)
            for r, t in enumerate(targets):
                lo, hi = G.indptr[t], G.indptr[t + 1]  # G is symmetric: row t is column t
                cols, vals = G.indices[lo:hi], G.data[lo:hi]
                ok = (cols != t) & (vals > 0)
                cols, vals = cols[ok], vals[ok]
                if len(cols) > k:  # the k items co-occurring with t most often
                    top = np.argpartition(-vals, kth=k - 1)[:k]
                    cols, vals = cols[top], vals[top]
                order = np.argsort(cols)
                cols, vals = cols[order].astype(np.int64), vals[order]
                q = len(cols)
                if q:
                    nb[r, :q], rhs[r, :q] = cols, vals
                    A[r, :q, :q] = _gather(G, cols, where)
            A += cfg.l2 * np.eye(k)[None]
            W = _solve_spd(A, rhs).astype(np.float32)
            W[nb >= n] = 0.0
            if cfg.keep is not None and cfg.keep < k:
                drop = np.argpartition(-np.abs(W), kth=cfg.keep - 1, axis=1)[:, cfg.keep:]
                np.put_along_axis(W, drop, 0.0, axis=1)
            keep = (nb < n) & (W != 0)
            rows_out.append(nb[keep])
            cols_out.append(np.broadcast_to(targets[:, None], nb.shape)[keep])
            vals_out.append(W[keep])
        rows = np.concatenate(rows_out) if rows_out else np.zeros(0, np.int64)
        cols = np.concatenate(cols_out) if cols_out else np.zeros(0, np.int64)
        vals = np.concatenate(vals_out) if vals_out else np.zeros(0, np.float32)
        self.B = sp.csr_matrix((vals, (rows, cols)), shape=(n, n), dtype=np.float32)
        self.B.sort_indices()
        self.fit_stats = {"gram_nnz": int(G.nnz), "B_nnz": int(self.B.nnz), "neighbours": m,
                          "gram_s": round(t1 - t0, 3), "solve_s": round(time.perf_counter() - t1, 3),
                          "items_without_neighbours": int((diag == 0).sum())}
        return self

    def config_dict(self) -> dict:
        return self.config.model_dump()


def _solve_spd(A: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Solve each ``A[r] x = rhs[r]`` (symmetric, positive definite when the local Gram is exact).

    LAPACK's Cholesky solver one system at a time, on one BLAS thread: numpy's batched
    ``solve`` (LU, float64) is ~15x slower on these sizes, and a multi-threaded BLAS ~10x slower
    on a loaded 2-core machine (its threads spin on systems this small). A system the pruning
    made indefinite falls back to LU.
    """
    from scipy.linalg import lapack
    from threadpoolctl import threadpool_limits

    out = np.empty_like(rhs)
    with threadpool_limits(1, user_api="blas"):
        for r in range(len(A)):
            _, x, info = lapack.dposv(A[r], rhs[r], lower=0)
            if info != 0:
                x = np.linalg.solve(A[r], rhs[r])
            out[r] = x
    return out


def _gather(G: sp.csr_matrix, ids: np.ndarray, where: np.ndarray) -> np.ndarray:
    """Dense ``G[ids][:, ids]`` (scipy's column fancy indexing costs milliseconds per call; this
    is the fit's inner loop). ``where`` is an all -1 scratch array of length n, restored before
    returning."""
    q = len(ids)
    where[ids] = np.arange(q)
    sub = G[ids]  # scipy's row slice (C); the column mapping below replaces its slow column slice
    cols = where[sub.indices]
    rows = np.repeat(np.arange(q), np.diff(sub.indptr))
    ok = cols >= 0
    out = np.zeros((q, q), np.float64)
    out[rows[ok], cols[ok]] = sub.data[ok]
    where[ids] = -1
    return out


def pruned_gram(X: sp.csr_matrix, per_column: int, block: int = 256) -> sp.csr_matrix:
    """``X^T X`` keeping, per column, the diagonal and the ``per_column`` largest off-diagonal
    entries, then symmetrised (an entry kept in either column is kept in both), float32 CSR.

    Computed in blocks of ``block`` columns, each a sparse product, so the peak memory is one
    block's co-occurrences plus the kept entries, never the (items x items) matrix.
    """
    X = sp.csr_matrix(X, dtype=np.float32)
    n = X.shape[1]
    Xt = X.T.tocsr()
    rows, cols, vals = [], [], []
    k = min(per_column, max(n - 1, 1))
    for s in range(0, n, block):
        targets = np.arange(s, min(s + block, n))
        P = (Xt[targets] @ X).tocsr()  # (b, n): row r is column targets[r] of X^T X, sparse
        for r, t in enumerate(targets):
            lo, hi = P.indptr[r], P.indptr[r + 1]
            c, v = P.indices[lo:hi], P.data[lo:hi]
            own = c == t
            rows.append(np.array([t]))
            cols.append(np.array([t]))
            vals.append(np.array([v[own].sum()], np.float32))
            c, v = c[~own & (v > 0)], v[~own & (v > 0)]
            if len(c) > k:
                top = np.argpartition(-v, kth=k - 1)[:k]
                c, v = c[top], v[top]
            rows.append(c)
            cols.append(np.full(len(c), t))
            vals.append(v)
    r, c, v = np.concatenate(rows).astype(np.int64), np.concatenate(cols).astype(np.int64), np.concatenate(vals)
    off = r != c
    # symmetrise: an entry kept by either column is kept in both (the values agree: G is symmetric)
    rr = np.concatenate([r, c[off]])
    cc = np.concatenate([c, r[off]])
    key, first = np.unique(rr * n + cc, return_index=True)
    vv = np.concatenate([v, v[off]])[first]
    G = sp.csr_matrix((vv, (key // n, key % n)), shape=(n, n), dtype=np.float32)
    return G


SCORERS = {"ease": (EASE, EASEConfig), "itemknn": (ItemKNN, ItemKNNConfig),
           "sparse_ease": (SparseEASE, SparseEASEConfig)}


def make_scorer(kind: str, **config) -> ItemItemScorer:
    """An unfitted scorer by name (``ease``, ``itemknn`` or ``sparse_ease``)."""
    if kind not in SCORERS:
        raise UsageError("scorer", kind, SCORERS)
    cls, _ = SCORERS[kind]
    return cls(**config)


def load_scorer(folder: str | Path, mmap: bool = True) -> ItemItemScorer:
    """Reload a scorer written by :meth:`ItemItemScorer.save` (dense ``B`` is memory-mapped)."""
    folder = Path(folder)
    meta = json.loads((folder / "scorer.json").read_text())
    scorer = make_scorer(meta["kind"], **meta["config"])
    if (folder / "B.npy").exists():
        scorer.B = np.load(folder / "B.npy", mmap_mode="r" if mmap else None)
    else:
        scorer.B = sp.load_npz(folder / "B.npz").tocsr()
    scorer.n_items = int(meta["n_items"])
    return scorer
