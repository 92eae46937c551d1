"""Item spaces: the vectors persona induction clusters a user's items in.

* ``collaborative``: truncated SVD of the (users x items) positive matrix, items as rows of
  ``V * sqrt(S)``: items liked by the same people sit together.
* ``text``: the text embedding of each item (title, genres, description).
* ``categories``: ``sqrt(p(g|i))`` (Hellinger embedding of the genre distribution).
* ``both``: collaborative and text, each L2-normalised and scaled by ``1/sqrt(2)``.

Every space returns L2-normalised float32 rows (zero rows for items with no signal), so inner
product is cosine similarity.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import scipy.sparse as sp

from memory.errors import UsageError

SpaceName = Literal["collaborative", "text", "categories", "both"]
SPACES = ("collaborative", "text", "categories", "both")


def l2_normalize(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float32)
    n = np.linalg.norm(m, axis=1, keepdims=True)
    return np.divide(m, n, out=np.zeros_like(m), where=n > 0)


def collaborative_space(X: sp.csr_matrix, dim: int = 64, seed: int = 0) -> np.ndarray:
    """Item factors from a truncated SVD of the binary matrix ``X`` (users x items)."""
    X = sp.csr_matrix(X, dtype=np.float64)
    # damp very active users so they do not dominate the item factors
    row = np.asarray(X.sum(axis=1)).ravel()
    Xn = sp.diags(1.0 / np.sqrt(np.maximum(row, 1.0))) @ X
    k = max(1, min(dim, min(X.shape) - 1))
    from scipy.sparse.linalg import svds

    v0 = np.random.default_rng(seed).standard_normal(min(Xn.shape))
    _, s, vt = svds(Xn, k=k, v0=v0)
    order = np.argsort(-s)
    items = vt[order].T * np.sqrt(s[order])
    # fix the sign of each component so the space is identical across runs
    signs = np.sign(items[np.argmax(np.abs(items), axis=0), np.arange(items.shape[1])])
    return l2_normalize(items * signs)


def category_space(category_dist: np.ndarray) -> np.ndarray:
    return l2_normalize(np.sqrt(category_dist))


def build_item_space(name: str, *, X: sp.csr_matrix | None = None, text_vectors: np.ndarray | None = None,
                     category_dist: np.ndarray | None = None, dim: int = 64, seed: int = 0) -> np.ndarray:
    """The (n_items, d) matrix of the named space."""
    if name not in SPACES:
        raise UsageError("item space", name, SPACES)
    if name in ("collaborative", "both") and X is None:
        raise UsageError("item space", name, "needs the interaction matrix X")
    if name in ("text", "both") and text_vectors is None:
        raise UsageError("item space", name, "needs item text vectors")
    if name == "collaborative":
        return collaborative_space(X, dim, seed)
    if name == "text":
        return l2_normalize(text_vectors)
    if name == "categories":
        if category_dist is None:
            raise UsageError("item space", name, "needs the catalog's category distribution")
        return category_space(category_dist)
    both = np.hstack([collaborative_space(X, dim, seed), l2_normalize(text_vectors)]) / np.sqrt(2.0)
    return both.astype(np.float32)
