"""Plural's personas and attribution for every evaluated user of a split, in one pass.

Induction reads only the split's training positives (the item space is built from the
training matrix), so nothing of the test set leaks into the personas.
"""

from __future__ import annotations

from collections.abc import Callable
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
                     config: InductionConfig, collaborative_dim: int = 64, tick=None,
                     map_shards: Callable[..., list[SplitPersonas]] | None = None) -> SplitPersonas:
    """Induce personas from each user's training positives and attribute every item.

    ``map_shards``, when given, runs the per-user work elsewhere: it is called as
    ``map_shards(inducer, scorer, users, history, exclude)`` and returns :func:`induce_rows`'s
    results for consecutive ranges of rows, in order (``evals.ray_shards`` runs them on Ray).
    The item space is built here, once, either way; each user's personas depend only on that
    user's rows, so the result is the same however the rows are cut.
    """
    space = build_item_space(config.space, X=train_matrix, text_vectors=text_vectors,
                             category_dist=catalog.category_distribution(), dim=collaborative_dim, seed=config.seed)
    inducer = PersonaInducer(catalog, space, text_vectors, config)
    if map_shards is None:
        return induce_rows(inducer, scorer, users, history, exclude, tick=tick)
    out = concat_split_personas(map_shards(inducer, scorer, users, history, exclude))
    if tick:
        tick(len(users))
    return out


def induce_rows(inducer: PersonaInducer, scorer: ItemItemScorer, users: list[str], history: sp.csr_matrix,
                exclude: sp.csr_matrix, tick=None) -> SplitPersonas:
    """The per-user part of :func:`induce_for_split`: ``users[r]``'s personas from row ``r`` of
    ``history`` (training positives), their contributions, and the attribution of every item
    outside row ``r`` of ``exclude``."""
    catalog, config = inducer.catalog, inducer.config
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


def concat_split_personas(parts: list[SplitPersonas]) -> SplitPersonas:
    """Rows of several :class:`SplitPersonas` (consecutive user ranges), in order, as one."""
    return SplitPersonas([s for p in parts for s in p.sets], np.concatenate([p.responsible for p in parts]),
                         np.concatenate([p.persona_rank for p in parts]), np.concatenate([p.weights for p in parts]),
                         [c for p in parts for c in p.contributions])


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
