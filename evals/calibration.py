"""Steck's calibrated re-ranking (RecSys 2018): the post-hoc fix for genre crowding-out.

From a base scorer's top-N candidates, build the list greedily, each step adding the item that
maximises ``(1 - lambda) * relevance(list) - lambda * C_KL(p(g|u) || q~(g|list))``. The greedy
step is vectorised over users *and* candidates: the list's genre sum is kept incrementally, so a
step costs O(users * N * genres) array work and no Python loop over users.

Relevance is either ``rank`` (``sum 1/log2(base_rank + 2)`` over the chosen items: scale-free,
and in this project's measurements it keeps more NDCG than scores do) or ``minmax`` (the sum of
the base scores min-max normalised over each user's candidates, as in Steck's paper).

Example:
    >>> import numpy as np
    >>> C = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # p(g|i) for 3 items, 2 genres
    >>> cand, scores = np.array([[0, 1, 2]]), np.array([[3.0, 2.0, 1.0]])
    >>> p = np.array([[0.5, 0.5]])                           # the user likes both genres equally
    >>> calibrated_rerank(cand, scores, p, C, CalibrationConfig(k=2, lam=0.0))
    array([[0, 1]])
    >>> calibrated_rerank(cand, scores, p, C, CalibrationConfig(k=2, lam=0.5))
    array([[0, 2]])
"""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np
import scipy.sparse as sp
from pydantic import BaseModel, ConfigDict, Field

from evals.metrics import STECK_ALPHA
from evals.splits import rank_unseen


class CalibrationConfig(BaseModel):
    """Settings of the calibrated greedy re-ranker."""

    model_config = ConfigDict(extra="forbid")

    lam: float = Field(0.25, ge=0, le=1)
    """Trade-off lambda: 0 keeps the base order, 1 optimises calibration alone. 0.25 with rank
    relevance keeps ~98% of EASE's NDCG@10 on MovieLens while cutting C_KL by about a third."""
    k: int = Field(10, gt=0)
    """Length of the re-ranked list."""
    n_candidates: int = Field(100, gt=0)
    """The base scorer's top-N unseen items the list is chosen from."""
    relevance: Literal["rank", "minmax"] = "rank"
    """``rank``: ``1/log2(base_rank+2)`` per chosen item; ``minmax``: the base score min-max
    normalised over the user's candidates (all 0 when every candidate scores the same)."""
    alpha: float = Field(STECK_ALPHA, gt=0, le=1)
    """Smoothing of the list distribution toward the user's, ``q~ = (1-alpha) q + alpha p``."""
    chunk: int = Field(2048, gt=0)
    """Users re-ranked together (bounds memory at ``chunk * N * genres`` floats)."""


def _relevance(candidates: np.ndarray, scores: np.ndarray, kind: str) -> np.ndarray:
    valid = candidates >= 0
    if kind == "rank":
        rel = np.broadcast_to(1.0 / np.log2(np.arange(candidates.shape[1]) + 2.0), candidates.shape)
        return np.where(valid, rel, 0.0)
    s = np.where(valid, scores, np.nan).astype(np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows (no candidates) are handled below
        lo = np.nanmin(s, axis=1, keepdims=True)
        hi = np.nanmax(s, axis=1, keepdims=True)
    span = hi - lo
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.where(span > 0, (s - lo) / np.where(span > 0, span, 1.0), 0.0)
    return np.where(valid, rel, 0.0)


def calibrated_rerank(candidates: np.ndarray, scores: np.ndarray, profiles: np.ndarray,
                      category_dist: np.ndarray, config: CalibrationConfig | None = None) -> np.ndarray:
    """Choose ``config.k`` items per user from ``candidates`` by Steck's greedy objective.

    Args:
        candidates: ``(users, N)`` item positions in base order (best first), ``-1`` for none.
        scores: ``(users, N)`` base scores of the candidates (read by ``minmax`` relevance only).
        profiles: ``(users, genres)`` the users' ``p(g|u)`` (:func:`evals.metrics.user_profiles`).
        category_dist: ``(n_items, genres)`` ``p(g|i)``.

    Returns:
        ``(users, k)`` chosen item positions in the order they were picked; ``-1`` pads users
        with fewer than ``k`` candidates. With ``lam = 0`` this is the base order. A user with an
        all-zero profile has nothing to calibrate to and keeps the base order.
    """
    c = config or CalibrationConfig()
    candidates = np.asarray(candidates, dtype=np.int64)
    n_users, n_cand = candidates.shape
    C = np.asarray(category_dist, dtype=np.float32)
    P = np.asarray(profiles, dtype=np.float32)
    if P.shape != (n_users, C.shape[1]):
        raise ValueError(f"profiles must be ({n_users}, {C.shape[1]}), got {P.shape}")
    rel_all = _relevance(candidates, np.asarray(scores), c.relevance).astype(np.float32)
    k = min(c.k, n_cand)
    out = np.full((n_users, c.k), -1, np.int64)
    for s in range(0, n_users, c.chunk):
        cand = candidates[s:s + c.chunk]
        b = cand.shape[0]
        p = P[s:s + c.chunk]
        valid = cand >= 0
        cat = C[np.maximum(cand, 0)] * valid[..., None]           # (b, N, G)
        rel = (1.0 - c.lam) * rel_all[s:s + c.chunk]
        # log(q~) is only needed where p > 0 (the KL's other terms are 0); adding 1 where p == 0
        # keeps log finite there without a mask in the inner loop
        p_zero = (p == 0)[:, None, :].astype(np.float32)
        ap = (c.alpha * p)[:, None, :]
        taken = ~valid
        list_sum = np.zeros((b, C.shape[1]), np.float32)
        rows = np.arange(b)
        for step in range(k):
            if c.lam > 0:
                q = (list_sum[:, None, :] + cat) / (step + 1.0)
                q_tilde = (1.0 - c.alpha) * q + ap + p_zero
                # -C_KL up to the constant sum_g p log p: argmax is unchanged
                neg_kl = np.einsum("bg,bng->bn", p, np.log(q_tilde))
                obj = rel + c.lam * neg_kl
            else:
                obj = rel.copy()
            obj[taken] = -np.inf
            pick = np.argmax(obj, axis=1)  # first maximum: ties go to the better base rank
            ok = ~taken[rows, pick]
            out[s + rows[ok], step] = cand[rows[ok], pick[ok]]
            taken[rows, pick] = True
            list_sum += cat[rows, pick] * ok[:, None]
    return out


class CalibratedReranker:
    """Re-rank a base scorer's full-ranking output with :func:`calibrated_rerank`.

    Example:
        >>> import numpy as np
        >>> C = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
        >>> r = CalibratedReranker(CalibrationConfig(k=2, lam=0.5, n_candidates=3))
        >>> r.rerank(np.array([[4.0, 3.0, 2.0, 1.0]]), None, np.array([[0.5, 0.5]]), C)
        array([[0, 2]])
    """

    def __init__(self, config: CalibrationConfig | None = None, **overrides):
        self.config = CalibrationConfig.model_validate({**(config or CalibrationConfig()).model_dump(), **overrides})

    def candidates(self, scores: np.ndarray, seen: sp.csr_matrix | None) -> tuple[np.ndarray, np.ndarray]:
        """The top ``n_candidates`` unseen items per user and their base scores."""
        cand = rank_unseen(scores, seen, self.config.n_candidates)
        cand_scores = np.take_along_axis(np.asarray(scores, dtype=np.float32), np.maximum(cand, 0), axis=1)
        return cand, np.where(cand >= 0, cand_scores, -np.inf)

    def rerank(self, scores: np.ndarray, seen: sp.csr_matrix | None, profiles: np.ndarray,
               category_dist: np.ndarray) -> np.ndarray:
        """``(users, k)`` calibrated lists from ``(users, n_items)`` base scores, skipping ``seen``."""
        cand, cand_scores = self.candidates(scores, seen)
        return calibrated_rerank(cand, cand_scores, profiles, category_dist, self.config)
