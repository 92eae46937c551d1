"""Steck's calibrated re-ranking over full-ranking score matrices, for evaluation runs.

The greedy re-ranker itself lives in :mod:`personas.calibration` (ranking modes use it too);
this module picks each user's top-N unseen candidates from a ``(users, items)`` score matrix and
hands them over.

Example:
    >>> import numpy as np
    >>> C = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    >>> r = CalibratedReranker(CalibrationConfig(k=2, lam=0.5, n_candidates=3))
    >>> r.rerank(np.array([[4.0, 3.0, 2.0, 1.0]]), None, np.array([[0.5, 0.5]]), C)
    array([[0, 2]])
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from evals.splits import rank_unseen
from personas.calibration import CalibrationConfig, calibrated_rerank, relevance_gains  # noqa: F401 - re-exported


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
