"""Collaborative scorers. The persona engine needs an item-item linear scorer, whose score splits
exactly over any partition of a user's history.

``ItemItemScorer`` scores ``s(u, i) = sum_{j in H_u} B[j, i]``. Partition ``H_u`` into persona
groups ``H_1..H_K`` and ``s(u, i) = sum_k s_k(u, i)`` with ``s_k = sum_{j in H_k} B[j, i]``
(``contributions``). EASE (Steck 2019) and ItemKNN are both of this form.
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
            return np.asarray(self.B[h].sum(axis=0), dtype=np.float32).ravel()
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
            return np.asarray(self.B[h][:, it].todense(), dtype=np.float32)
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


SCORERS = {"ease": (EASE, EASEConfig), "itemknn": (ItemKNN, ItemKNNConfig)}


def make_scorer(kind: str, **config) -> ItemItemScorer:
    """An unfitted scorer by name (``ease`` or ``itemknn``)."""
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
