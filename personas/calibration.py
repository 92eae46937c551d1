"""Calibrated greedy re-ranking (Steck 2018), generalised to personas and exposure.

Re-ranks the top-``N`` candidates of a base scorer by greedily adding, at each step, the item
that maximises the list objective

    (1 - lam) * sum_{i in L} rel(i)
    - lam * KL(p_genre(u) || q~_genre(L))
    - mu  * KL(w_persona(u) || q~_persona(L))
    + beta * sum_{i in L} novelty(i)

where ``q~ = (1 - a) q + a p`` (a = 0.01) as in Steck, ``rel`` is either the min-max normalised
score or the rank weight ``1/log2(rank + 2)`` of the base ranking, ``q_persona`` counts each
item for its responsible persona, and ``novelty(i) = 1 / (1 + exposure(i))`` rewards items not
yet shown to anyone. With ``mu = beta = 0`` this is exactly Steck's calibrated re-ranker.
Optionally the chosen list is re-sorted by base rank (the set, hence calibration and coverage,
is unchanged; accuracy-at-rank improves).

Everything is vectorised over a batch of users; exposure is updated between batches.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

ALPHA = 0.01


class CalibrationConfig(BaseModel):
    """Settings of the calibrated greedy re-ranker."""

    model_config = ConfigDict(extra="forbid")

    lam: float = Field(0.3, ge=0, le=1)
    """Weight of genre miscalibration against relevance (Steck's lambda)."""
    mu: float = Field(0.0, ge=0)
    """Weight of persona miscalibration (KL between persona weights and the list's persona mix)."""
    beta: float = Field(0.0, ge=0)
    """Weight of the novelty bonus ``1/(1 + exposure)`` for items rarely shown so far."""
    relevance: Literal["rank", "minmax"] = "rank"
    """``rank``: 1/log2(rank+2) of the base rank; ``minmax``: scores min-max scaled over the candidates."""
    candidates: int = Field(100, gt=0)
    """How many top base items are re-ranked."""
    resort: bool = False
    """Re-sort the chosen list by base rank."""

    def label(self) -> str:
        parts = [f"{self.relevance}", f"lam={self.lam:g}"]
        if self.mu:
            parts.append(f"mu={self.mu:g}")
        if self.beta:
            parts.append(f"beta={self.beta:g}")
        if self.resort:
            parts.append("resort")
        return ",".join(parts)


def _kl(p: np.ndarray, q_sum: np.ndarray, n: np.ndarray | float) -> np.ndarray:
    """KL(p || q~) where q = q_sum / n (n > 0); p: (..., G) broadcastable with q_sum."""
    q = q_sum / n
    q_t = (1 - ALPHA) * q + ALPHA * p
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0) / np.where(q_t > 0, q_t, 1.0)), 0.0)
    return terms.sum(axis=-1)


def relevance_gains(scores_sorted: np.ndarray, kind: str) -> np.ndarray:
    """(U, N) gains from candidates sorted by descending base score."""
    U, N = scores_sorted.shape
    if kind == "rank":
        return np.broadcast_to(1.0 / np.log2(np.arange(N) + 2.0), (U, N)).astype(np.float64)
    lo = scores_sorted.min(axis=1, keepdims=True)
    hi = scores_sorted.max(axis=1, keepdims=True)
    return ((scores_sorted - lo) / np.where(hi > lo, hi - lo, 1.0)).astype(np.float64)


def calibrated_rerank(cand: np.ndarray, cand_scores: np.ndarray, k: int, config: CalibrationConfig, *,
                      genre_dist: np.ndarray, user_genres: np.ndarray,
                      cand_persona: np.ndarray | None = None, persona_weights: np.ndarray | None = None,
                      exposure: np.ndarray | None = None, batch: int = 64) -> np.ndarray:
    """Re-rank candidates for many users.

    Args:
        cand: (U, N) item positions, sorted by descending base score (pad with -1).
        cand_scores: (U, N) their base scores (ignored where cand is -1).
        k: list length.
        genre_dist: (n_items, G) ``p(g|i)``.
        user_genres: (U, G) ``p(g|u)``.
        cand_persona: (U, N) responsible persona index of each candidate (needed when mu > 0).
        persona_weights: (U, P) persona weights (zero padded; needed when mu > 0).
        exposure: (n_items,) times each item was already recommended; updated in place
            after every batch of users (needed when beta > 0).
    Returns:
        (U, k) chosen item positions (-1 where fewer than k candidates exist).
    """
    U, N = cand.shape
    out = np.full((U, k), -1, dtype=np.int64)
    use_persona = config.mu > 0 and cand_persona is not None and persona_weights is not None
    use_bonus = config.beta > 0 and exposure is not None
    for s in range(0, U, batch):
        sl = slice(s, min(U, s + batch))
        c = cand[sl]
        valid = c >= 0
        B = c.shape[0]
        rows = np.arange(B)
        rel = relevance_gains(np.where(valid, cand_scores[sl], -np.inf) if config.relevance == "rank"
                              else np.where(valid, cand_scores[sl], np.nan_to_num(cand_scores[sl]).min()),
                              config.relevance)
        G = genre_dist[np.where(valid, c, 0)]  # (B, N, G)
        p = user_genres[sl]  # (B, G)
        gsum = np.zeros_like(p)
        if use_persona:
            w = persona_weights[sl]
            Pn = w.shape[1]
            onehot = np.zeros((B, N, Pn))
            cp = np.where(valid, cand_persona[sl], 0)
            onehot[rows[:, None], np.arange(N)[None, :], np.clip(cp, 0, Pn - 1)] = 1.0
            psum = np.zeros_like(w)
        bonus = (config.beta / (1.0 + exposure[np.where(valid, c, 0)])) if use_bonus else 0.0
        base = (1.0 - config.lam) * rel + bonus
        taken = ~valid
        chosen_idx = np.full((B, k), -1, dtype=np.int64)
        for t in range(k):
            n = t + 1
            obj = base.copy()
            if config.lam > 0:
                obj -= config.lam * _kl(p[:, None, :], gsum[:, None, :] + G, n)
            if use_persona:
                obj -= config.mu * _kl(w[:, None, :], psum[:, None, :] + onehot, n)
            obj[taken] = -np.inf
            best = np.argmax(obj, axis=1)
            ok = np.isfinite(obj[rows, best])
            chosen_idx[ok, t] = best[ok]
            taken[rows[ok], best[ok]] = True
            gsum[ok] += G[rows[ok], best[ok]]
            if use_persona:
                psum[ok] += onehot[rows[ok], best[ok]]
        if config.resort:
            chosen_idx = np.where(chosen_idx >= 0, chosen_idx, N + 1)
            chosen_idx.sort(axis=1)
            chosen_idx = np.where(chosen_idx <= N, chosen_idx, -1)
        picked = np.where(chosen_idx >= 0, np.take_along_axis(c, np.maximum(chosen_idx, 0), axis=1), -1)
        out[sl] = picked
        if use_bonus:
            got = picked[picked >= 0]
            np.add.at(exposure, got, 1)
    return out
