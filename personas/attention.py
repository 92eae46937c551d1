"""Candidate-conditional attention over a user's personas.

For a linear item-item scorer the score of item ``i`` splits exactly over the persona groups of
the history: ``s(i) = sum_k s_k(i) + r(i)``, where ``r`` is the contribution of history items no
persona claims (empty right after induction). Attention ``a_k(i)`` is each persona's share of the
positive contributions (rule ``share``, the default: it sums to 1 and is 1 for a persona that
alone supports the item) or a softmax of the contributions (rule ``softmax``). When no
contribution is positive, ``share`` falls back to the softmax. The responsible persona is
``argmax_k s_k(i)``; its evidence items are its history items with the largest ``B[j, i]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from personas.scorers import ItemItemScorer


class AttentionConfig(BaseModel):
    """How contributions turn into attention and evidence."""

    model_config = ConfigDict(extra="forbid")

    rule: Literal["share", "softmax"] = "share"
    """``share``: positive contributions normalised to sum 1; ``softmax``: softmax(s_k / T)."""
    temperature: float = Field(0.1, gt=0)
    """Softmax temperature, relative to the largest absolute contribution of the item."""
    evidence_per_item: int = Field(3, ge=1, le=20)
    """Evidence items listed per recommendation."""


def _softmax_rows(c: np.ndarray, temperature: float) -> np.ndarray:
    scale = np.abs(c).max(axis=1, keepdims=True)
    z = c / (temperature * np.where(scale > 0, scale, 1.0))
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@dataclass
class PersonaScores:
    """Per-persona contributions to every item's score, for one user."""

    persona_ids: list[str]
    groups: list[np.ndarray]
    """History item positions of each persona."""
    contributions: np.ndarray
    """(K, n_items) float32: ``s_k(i)``."""
    residual: np.ndarray
    """(n_items,): contribution of history items outside every persona (zeros after induction)."""
    scorer: ItemItemScorer

    @classmethod
    def compute(cls, scorer: ItemItemScorer, persona_ids: Sequence[str], groups: Sequence[Sequence[int]],
                history: Sequence[int] | None = None) -> "PersonaScores":
        """Contributions of ``groups``; ``history`` items outside every group go to the residual."""
        groups = [np.asarray(g, dtype=np.int64) for g in groups]
        contrib = scorer.contributions(groups) if groups else np.zeros((0, scorer.n_items), np.float32)
        residual = np.zeros(scorer.n_items, np.float32)
        if history is not None:
            claimed = np.concatenate(groups) if groups else np.zeros(0, np.int64)
            rest = np.setdiff1d(np.asarray(history, dtype=np.int64), claimed)
            if len(rest):
                residual = scorer.score(rest)
        return cls(list(persona_ids), groups, contrib, residual, scorer)

    @property
    def scores(self) -> np.ndarray:
        """The base scorer's score of every item (sum of contributions plus residual)."""
        return self.contributions.sum(axis=0) + self.residual

    def weighted_scores(self, multipliers: np.ndarray) -> np.ndarray:
        """``sum_k m_k s_k + r``: a persona focus (all ones gives ``scores``)."""
        return multipliers.astype(np.float32) @ self.contributions + self.residual

    def attention(self, items: Sequence[int], config: AttentionConfig | None = None) -> np.ndarray:
        """(len(items), K) attention rows, each summing to 1."""
        cfg = config or AttentionConfig()
        c = self.contributions[:, np.asarray(items, dtype=np.int64)].T.astype(np.float64)
        if c.shape[1] == 0:
            return c
        if cfg.rule == "softmax":
            return _softmax_rows(c, cfg.temperature)
        pos = np.maximum(c, 0.0)
        tot = pos.sum(axis=1, keepdims=True)
        out = np.where(tot > 0, pos / np.where(tot > 0, tot, 1.0), 0.0)
        none = tot[:, 0] <= 0
        if none.any():
            out[none] = _softmax_rows(c[none], cfg.temperature)
        return out

    def responsible(self, items: Sequence[int] | None = None) -> np.ndarray:
        """Index of the persona with the largest contribution, per item (-1 when K = 0)."""
        c = self.contributions if items is None else self.contributions[:, np.asarray(items, dtype=np.int64)]
        if c.shape[0] == 0:
            return np.full(c.shape[1], -1, dtype=np.int64)
        return np.argmax(c, axis=0)

    def evidence_many(self, items: Sequence[int], personas: Sequence[int], n: int = 3) -> list[list[tuple[int, float]]]:
        """:meth:`evidence` for several (item, persona) pairs, one matrix read per persona."""
        items = np.asarray(items, dtype=np.int64)
        personas = np.asarray(personas, dtype=np.int64)
        out: list[list[tuple[int, float]]] = [[] for _ in range(len(items))]
        for r in np.unique(personas):
            rows = np.flatnonzero(personas == r)
            g = self.groups[r]
            if len(g) == 0:
                continue
            W = self.scorer.item_weights(g, items[rows])  # (|g|, len(rows))
            for col, row in enumerate(rows):
                w = W[:, col]
                order = np.lexsort((g, -w))[:n]
                picked = [(int(g[o]), float(w[o])) for o in order if w[o] > 0]
                out[row] = picked or [(int(g[order[0]]), float(w[order[0]]))]
        return out

    def evidence(self, item: int, persona: int, n: int = 3) -> list[tuple[int, float]]:
        """The persona's history items that support ``item`` most: (position, B[j, item]) pairs."""
        g = self.groups[persona]
        if len(g) == 0:
            return []
        w = self.scorer.item_weights(g, [item])[:, 0]
        order = np.lexsort((g, -w))[:n]
        return [(int(g[o]), float(w[o])) for o in order if w[o] > 0] or [(int(g[order[0]]), float(w[order[0]]))]


def persona_ranks(contributions: np.ndarray, responsible: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """(n_items,) 0-based rank of each item in its responsible persona's own ranking.

    Each persona ranks the allowed items by its contribution ``s_k``; an item's persona rank is
    its position in the ranking of the persona responsible for it (disallowed items get
    ``n_items``). Intent-aware relevance uses it: a minority persona's best item has rank 0.
    """
    n = contributions.shape[1]
    out = np.full(n, n, dtype=np.int64)
    idx = np.flatnonzero(allowed)
    for k in range(contributions.shape[0]):
        mine = idx[responsible[idx] == k]
        if len(mine) == 0:
            continue
        s = contributions[k, idx]
        order = idx[np.lexsort((idx, -s))]
        rank = np.empty(n, dtype=np.int64)
        rank[order] = np.arange(len(order))
        out[mine] = rank[mine]
    return out
