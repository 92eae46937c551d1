"""Plural's personas and attribution for every evaluated user of a split, in one pass.

Induction reads only the split's training positives (the item space is built from the
training matrix), so nothing of the test set leaks into the personas.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from memory.catalog import Catalog
from personas.attention import persona_ranks
from personas.induction import InductionConfig, PersonaInducer
from personas.model import PersonaSet
from personas.ranking import PersonaFillMode, RankingContext
from personas.scorers import ItemItemScorer
from personas.spaces import build_item_space


@dataclass
class SplitPersonas:
    """Per-user persona structure over the whole catalog, rows in the split's user order."""

    sets: list[PersonaSet]
    responsible: np.ndarray
    """(users, n_items) int16: responsible persona index of every item (-1: no personas)."""
    persona_rank: np.ndarray
    """(users, n_items) int32: rank of each item in its responsible persona's ranking (excluded: n_items)."""
    weights: np.ndarray
    """(users, max personas) persona weights, zero-padded."""
    contributions: list[np.ndarray]
    """Per user, (K, n_items) persona contributions."""

    @property
    def n_personas(self) -> np.ndarray:
        return np.array([len(s.personas) for s in self.sets])

    def labels(self, top: np.ndarray) -> np.ndarray:
        """(users, k) responsible persona of each listed item (-1 for padding)."""
        lab = np.take_along_axis(self.responsible, np.maximum(top, 0), axis=1).astype(np.int64)
        return np.where(top >= 0, lab, -1)


def induce_for_split(catalog: Catalog, scorer: ItemItemScorer, train_matrix: sp.csr_matrix, users: list[str],
                     history: sp.csr_matrix, exclude: sp.csr_matrix, text_vectors: np.ndarray,
                     config: InductionConfig, collaborative_dim: int = 64, tick=None) -> SplitPersonas:
    """Induce personas from each user's training positives and attribute every item."""
    space = build_item_space(config.space, X=train_matrix, text_vectors=text_vectors,
                             category_dist=catalog.category_distribution(), dim=collaborative_dim, seed=config.seed)
    inducer = PersonaInducer(catalog, space, text_vectors, config)
    n_items = len(catalog)
    U = len(users)
    responsible = np.full((U, n_items), -1, np.int16)
    ranks = np.full((U, n_items), n_items, np.int32)
    weights = np.zeros((U, config.max_personas))
    sets, contribs = [], []
    for r, u in enumerate(users):
        pos = history[r].indices
        pset = inducer.induce(u, pos)
        groups = [catalog.indices(p.evidence) for p in pset.personas]
        c = scorer.contributions(groups) if groups else np.zeros((0, n_items), np.float32)
        if len(groups):
            resp = np.argmax(c, axis=0)
            allowed = np.ones(n_items, bool)
            allowed[exclude[r].indices] = False
            responsible[r] = resp
            ranks[r] = persona_ranks(c, resp, allowed)
            weights[r, :len(groups)] = pset.weights()
        sets.append(pset)
        contribs.append(c)
        if tick:
            tick()
    return SplitPersonas(sets, responsible, ranks, weights, contribs)


def persona_fill_lists(scores: np.ndarray, exclude: sp.csr_matrix, sp_: SplitPersonas, k: int) -> np.ndarray:
    """The ``persona_fill`` mode for every user (the product's own mode, user by user)."""
    mode = PersonaFillMode()
    out = np.full((scores.shape[0], k), -1, np.int64)
    n_items = scores.shape[1]
    for r in range(scores.shape[0]):
        allowed = np.ones(n_items, bool)
        allowed[exclude[r].indices] = False
        n_p = len(sp_.sets[r].personas)
        ctx = RankingContext(scores=scores[r], allowed=allowed, responsible=sp_.responsible[r].astype(np.int64),
                             persona_weights=sp_.weights[r, :n_p])
        chosen = mode.select(ctx, k)
        out[r, :len(chosen)] = chosen
    return out
