"""Ranking modes: how a user's scored candidates become a top-k list.

* ``relevance``: by the base scorer's score, exactly as the base scorer ranks (ties broken by
  item position).
* ``persona_fill``: the list is filled across personas in proportion to their weights. Each
  persona gets ``q_k`` slots by largest-remainder apportionment of ``k`` over the persona
  weights; candidates are taken in score order and each counts for its responsible persona;
  a candidate whose persona's slots are full is skipped; slots no candidate can fill go to the
  best remaining candidates by score. The list keeps score order.

More modes (calibrated ones) register themselves in :data:`RANKING_MODES`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

from memory.errors import UsageError


@dataclass
class RankingContext:
    """Everything a mode may use, for one user, over the whole catalog."""

    scores: np.ndarray
    """(n_items,) base scores (possibly persona-focused)."""
    allowed: np.ndarray
    """(n_items,) bool: candidates (unseen, passing filters)."""
    responsible: np.ndarray
    """(n_items,) responsible persona index per item (-1 when the user has no personas)."""
    persona_weights: np.ndarray
    """(K,) weights of the user's personas (sum 1)."""
    contributions: np.ndarray | None = None
    """(K, n_items) persona contributions, when available."""
    category_dist: np.ndarray | None = None
    """(n_items, G) ``p(g|i)``, for calibrated modes."""
    user_categories: np.ndarray | None = None
    """(G,) ``p(g|u)`` over the user's history, for calibrated modes."""
    extra: dict = field(default_factory=dict)
    """Mode-specific inputs (e.g. items already shown to anyone, for coverage-aware modes)."""

    def candidates_by_score(self, limit: int | None = None) -> np.ndarray:
        """Allowed item positions in descending score, ties by position (deterministic)."""
        idx = np.flatnonzero(self.allowed)
        s = self.scores[idx]
        if limit is not None and limit < len(idx):
            part = np.argpartition(-s, limit - 1)[:limit]
            idx, s = idx[part], s[part]
        order = np.lexsort((idx, -s))
        return idx[order]


class RankingMode(ABC):
    """Turns a :class:`RankingContext` into a top-k list of item positions."""

    name: str
    description: str

    @abstractmethod
    def select(self, ctx: RankingContext, k: int) -> np.ndarray:
        """At most ``k`` allowed item positions, best first."""


class RelevanceMode(RankingMode):
    name = "relevance"
    description = "rank by the base scorer's score (identical to the base scorer)"

    def select(self, ctx: RankingContext, k: int) -> np.ndarray:
        return ctx.candidates_by_score(k)


def apportion(weights: np.ndarray, k: int) -> np.ndarray:
    """Largest-remainder apportionment of ``k`` slots over ``weights`` (ties to the lower index)."""
    w = np.asarray(weights, dtype=np.float64)
    if len(w) == 0:
        return np.zeros(0, dtype=np.int64)
    w = w / w.sum() if w.sum() > 0 else np.full(len(w), 1.0 / len(w))
    exact = w * k
    q = np.floor(exact).astype(np.int64)
    rem = exact - q
    for j in np.lexsort((np.arange(len(w)), -rem))[: k - q.sum()]:
        q[j] += 1
    return q


class PersonaFillMode(RankingMode):
    name = "persona_fill"
    description = "fill the list across personas in proportion to their weights"

    def __init__(self, pool: int = 300):
        self.pool = pool

    def select(self, ctx: RankingContext, k: int) -> np.ndarray:
        K = len(ctx.persona_weights)
        if K <= 1:
            return ctx.candidates_by_score(k)
        quota = apportion(ctx.persona_weights, k)
        cands = ctx.candidates_by_score(max(self.pool, k))
        chosen, skipped = [], []
        for i in cands:
            p = ctx.responsible[i]
            if p >= 0 and quota[p] > 0:
                quota[p] -= 1
                chosen.append(i)
                if len(chosen) == k:
                    break
            else:
                skipped.append(i)
        if len(chosen) < k:  # slots no candidate could fill: best remaining by score
            chosen.extend(skipped[: k - len(chosen)])
            if len(chosen) < k:
                rest = ctx.candidates_by_score()
                taken = set(chosen)
                chosen.extend([i for i in rest if i not in taken][: k - len(chosen)])
        chosen = np.asarray(chosen, dtype=np.int64)
        return chosen[np.lexsort((chosen, -ctx.scores[chosen]))]


RANKING_MODES: dict[str, RankingMode] = {}


def register_mode(mode: RankingMode) -> RankingMode:
    RANKING_MODES[mode.name] = mode
    return mode


register_mode(RelevanceMode())
register_mode(PersonaFillMode())


def get_mode(name: str) -> RankingMode:
    """The mode called ``name``; a usage error lists the modes that exist."""
    if name not in RANKING_MODES:
        raise UsageError("mode", name, sorted(RANKING_MODES))
    return RANKING_MODES[name]
