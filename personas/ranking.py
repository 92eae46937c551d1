"""Ranking modes: how a user's scored candidates become a top-k list.

* ``relevance``: by the base scorer's score, exactly as the base scorer ranks (ties broken by
  item position).
* ``persona_fill``: the list is filled across personas in proportion to their weights. Each
  persona gets ``q_k`` slots by largest-remainder apportionment of ``k`` over the persona
  weights; candidates are taken in score order and each counts for its responsible persona;
  a candidate whose persona's slots are full is skipped; slots no candidate can fill go to the
  best remaining candidates by score. The list keeps score order.

* ``calibrated``: Steck's calibrated re-ranking of the top candidates toward the user's genre
  distribution (:mod:`personas.calibration`, genre term only); every item still carries its
  responsible persona.
* ``persona_calibrated``: the joint objective of :mod:`personas.calibration`: genre and persona
  calibration, intent-aware relevance, a bonus for items no one was shown yet, the chosen set
  re-sorted by base rank. Defaults are the setting chosen on ML-100K's validation split by
  ``plural eval rec`` (see the README's results).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

from memory.errors import UsageError
from personas.attention import persona_ranks
from personas.calibration import CalibrationConfig, calibrated_rerank


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
    uses_exposure: bool = False
    """True when the mode reads ``ctx.extra["exposure"]`` (how often each item was shown)."""

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


class CalibratedMode(RankingMode):
    """A ranking mode backed by :func:`personas.calibration.calibrated_rerank` for one user.

    ``ctx.extra["exposure"]`` (item -> times recommended so far), when present, feeds the
    exposure bonus and is updated with the chosen list.
    """

    def __init__(self, name: str, description: str, config: CalibrationConfig):
        self.name, self.description, self.config = name, description, config
        self.uses_exposure = config.beta > 0

    def select(self, ctx: RankingContext, k: int) -> np.ndarray:
        if ctx.category_dist is None or ctx.user_categories is None:
            raise UsageError("mode", self.name, "contexts with category distributions")
        cfg = self.config.model_copy(update={"k": k})
        cand = ctx.candidates_by_score(max(cfg.n_candidates, k))
        if len(cand) == 0:
            return cand
        n_p = len(ctx.persona_weights)
        needs_persona = (cfg.mu > 0 or cfg.gamma > 0) and n_p > 0 and ctx.contributions is not None
        if not needs_persona:
            cfg = cfg.model_copy(update={"mu": 0.0, "gamma": 0.0})
        exposure = ctx.extra.get("exposure")
        if cfg.beta > 0 and exposure is None:
            exposure = np.zeros(len(ctx.scores))  # nothing shown yet: the bonus is uniform
        kw = {}
        if needs_persona:
            kw = {"cand_persona": ctx.responsible[cand][None, :], "persona_weights": ctx.persona_weights[None, :],
                  "cand_persona_rank": persona_ranks(ctx.contributions, ctx.responsible, ctx.allowed)[cand][None, :]}
        out = calibrated_rerank(cand[None, :], ctx.scores[cand][None, :], ctx.user_categories[None, :],
                                ctx.category_dist, cfg, exposure=exposure if cfg.beta > 0 else None, **kw)[0]
        return out[out >= 0]


# Chosen on ML-100K's validation split (``plural eval rec``, README "Results"); override per engine.
DEFAULT_STECK = CalibrationConfig(lam=0.25, relevance="rank")
DEFAULT_JOINT = CalibrationConfig(lam=0.25, mu=0.05, beta=0.04, gamma=0.25, relevance="rank", resort=True)

RANKING_MODES: dict[str, RankingMode] = {}


def register_mode(mode: RankingMode) -> RankingMode:
    RANKING_MODES[mode.name] = mode
    return mode


register_mode(RelevanceMode())
register_mode(PersonaFillMode())
register_mode(CalibratedMode("calibrated", "Steck's calibrated re-ranking toward the user's genre mix",
                             DEFAULT_STECK))
register_mode(CalibratedMode("persona_calibrated", "genres and personas calibrated jointly, with an "
                             "exposure bonus and base-rank re-sort", DEFAULT_JOINT))


def get_mode(name: str) -> RankingMode:
    """The mode called ``name``; a usage error lists the modes that exist."""
    if name not in RANKING_MODES:
        raise UsageError("mode", name, sorted(RANKING_MODES))
    return RANKING_MODES[name]
