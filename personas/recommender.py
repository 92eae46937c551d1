"""The persona recommender: scores, attention, ranking and provenance for one user at a time.

No LLM and no I/O: it reads a catalog, a fitted item-item scorer, the users' histories and a
persona store, all already in memory. ``agent.engine`` builds and caches these; ``evals`` uses
this class directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from memory.catalog import Catalog
from memory.errors import UsageError
from memory.history import HistoryIndex
from personas.attention import AttentionConfig, PersonaScores
from personas.model import PersonaSet
from personas.ranking import RankingContext, RankingMode, get_mode
from personas.recommendation import (EvidenceItem, PersonaRef, Recommendation, RecommendationList,
                                     template_explanation)
from personas.exposure import ExposureStore
from personas.request import Request, RequestScorer
from personas.scorers import ItemItemScorer
from personas.store import PersonaStore


class PersonaRecommender:
    """Recommends with candidate-conditional attention over each user's personas.

    Example:
        >>> rec = PersonaRecommender(catalog, scorer, history, store)         # doctest: +SKIP
        >>> out = rec.recommend("42", k=10, mode="persona_fill")               # doctest: +SKIP
        >>> out.items[0].persona.name, out.items[0].evidence[0].title          # doctest: +SKIP
        ('Sci-Fi & Action', 'Alien (1979)')
    """

    def __init__(self, catalog: Catalog, scorer: ItemItemScorer, history: HistoryIndex, personas: PersonaStore,
                 attention: AttentionConfig | None = None, popularity: np.ndarray | None = None,
                 provenance: dict | None = None, exclude: Literal["seen", "positives"] = "seen"):
        if exclude not in ("seen", "positives"):
            raise UsageError("exclude", exclude, ["seen", "positives"])
        self.catalog, self.scorer, self.history, self.personas = catalog, scorer, history, personas
        self.exclude = exclude
        """Items never recommended to a user: ``seen`` (the live behaviour) is everything in their
        history, rated high or low; ``positives`` is only what they liked (ratings at or above
        the history's threshold), so an item rated low may come back. ``positives`` is the
        offline reference protocol (``plural eval rec --exclude positives``, the default there),
        through which the evaluation replays its users on this class."""
        self.attention_config = attention or AttentionConfig()
        self.popularity = popularity if popularity is not None else history.item_popularity(len(catalog))
        self.provenance = provenance or {}
        self._user_categories_cache: dict[str, np.ndarray] = {}
        self._item_ids = catalog.item_ids  # a catalog never changes; the tuple is rebuilt per access
        self.exposure: ExposureStore | None = None
        """How often each item was shown to anyone (the exposure bonus of the modes that use it;
        set by the engine; None: nothing counted, every item is new)."""
        self.request_scorer: RequestScorer | None = None
        """Applies :class:`~personas.request.Request` objects (set by the engine, which has the
        item text vectors); without it a request applies its hard constraints only."""

    def requests(self) -> RequestScorer:
        """The request scorer (a text-less one when none was set)."""
        if self.request_scorer is None:
            self.request_scorer = RequestScorer(self.catalog, self.scorer.B)
        return self.request_scorer

    def disliked(self, user_id: str, threshold: float | None = None) -> np.ndarray:
        """Item positions the user rated at or below ``threshold`` (default: the request config's)."""
        t = self.requests().config.dislike_threshold if threshold is None else threshold
        items, ratings, _ = self.history.events(user_id)
        return np.unique(items[ratings <= t])

    # ---- building blocks ---------------------------------------------------------------
    def persona_set(self, user_id: str) -> PersonaSet:
        pset = self.personas.get(user_id)
        if pset is None:
            self.history.seen(user_id)  # raises UnknownUserError for an unknown user
            return PersonaSet(user_id=str(user_id), personas=[])
        return pset

    def persona_scores(self, user_id: str, pset: PersonaSet | None = None) -> tuple[PersonaScores, PersonaSet]:
        """Contributions of each persona; positives no persona claims go to the residual."""
        pset = pset or self.persona_set(user_id)
        groups = [self.catalog.indices(p.evidence) for p in pset.personas]
        ps = PersonaScores.compute(self.scorer, pset.ids, groups, history=self.history.positives(user_id))
        return ps, pset

    def user_categories(self, user_id: str) -> np.ndarray:
        """``p(g|u)``: mean category distribution over the user's positives."""
        pos = self.history.positives(user_id)
        cat = self.catalog.category_distribution()
        return cat[pos].mean(axis=0) if len(pos) else np.zeros(cat.shape[1])

    def context(self, user_id: str, *, categories: Sequence[str] | None = None,
                candidate_items: Sequence[str] | None = None, persona_focus: dict[str, float] | None = None,
                exclude_items: Sequence[str] | None = None, extra: dict | None = None,
                request: Request | None = None, disliked_items: Sequence[str] | None = None,
                min_candidates: int = 1) -> tuple[RankingContext, PersonaScores, PersonaSet]:
        """The ranking context of one user (scores, candidates, responsible personas).

        With a ``request``, its hard constraints narrow ``allowed`` and its soft part and the
        user's dislikes (ratings at or below the threshold, plus ``disliked_items``) re-score;
        ``extra["personal_scores"]`` and ``extra["request_term"]`` keep the two parts apart.
        """
        ps, pset = self.persona_scores(user_id)
        allowed = np.ones(len(self.catalog), dtype=bool)
        allowed[self.history.seen(user_id) if self.exclude == "seen" else self.history.positives(user_id)] = False
        for g in ps.groups:  # items liked since the data was loaded live in persona evidence
            allowed[g] = False
        if exclude_items:
            allowed[self.catalog.indices(exclude_items)] = False
        if categories:
            allowed &= self.catalog.items_in_categories(categories)
        if candidate_items is not None:
            mask = np.zeros(len(self.catalog), dtype=bool)
            mask[self.catalog.indices(candidate_items)] = True
            allowed &= mask
        if persona_focus:
            unknown = [p for p in persona_focus if p not in pset.ids]
            if unknown:
                raise UsageError("persona id", unknown[0], pset.ids)
            mult = np.array([persona_focus.get(pid, 1.0) for pid in pset.ids], dtype=np.float32)
            scores = ps.weighted_scores(mult)
            contributions = ps.contributions * mult[:, None]
        else:
            scores = ps.scores
            contributions = ps.contributions
        responsible = (np.argmax(contributions, axis=0) if len(pset.personas)
                       else np.full(len(self.catalog), -1, dtype=np.int64))
        weights, user_cats = pset.weights(), self.user_categories(user_id)
        if persona_focus and len(pset.personas):
            # a focused request changes who the user is tonight: calibrated modes aim at the
            # focused mix of personas and at their genres, not at the whole history's
            weights = weights * mult
            weights = weights / weights.sum() if weights.sum() > 0 else pset.weights()
            cat = self.catalog.category_distribution()
            per_persona = np.stack([cat[g].mean(axis=0) if len(g) else np.zeros(cat.shape[1]) for g in ps.groups])
            user_cats = weights @ per_persona
        extra = dict(extra or {})
        if request is not None:
            rs = self.requests()
            allowed &= rs.allowed(request)
            match, pool = rs.match(request)
            if pool is not None and int((allowed & pool).sum()) >= min_candidates:
                allowed &= pool  # "like X" lists only X's neighbourhood while it has enough items
            disliked = list(self.disliked(user_id))
            if disliked_items:
                disliked += [int(p) for p in self.catalog.indices([i for i in disliked_items if i in self.catalog])]
            # the personalised part stays the exact sum of the persona contributions; everything
            # the request does (persona boost, history focus, match, dislikes) is one added term
            personal = ps.scores
            focus_term = scores - personal if persona_focus else None
            history_term = rs.history_focus(request, self.history.positives(user_id))
            scores, term = rs.rescore(personal, allowed, match, rs.dislike_penalty(disliked),
                                      extra=[t for t in (focus_term, history_term) if t is not None],
                                      relatives=rs.dislike_relatives(disliked))
            extra.update(personal_scores=personal, request_term=term, request_match=match)
            responsible = (np.argmax(ps.contributions, axis=0) if len(pset.personas)
                           else np.full(len(self.catalog), -1, dtype=np.int64))
            contributions = ps.contributions
            if request.wanted_categories and len(pset.personas):
                # the request decides the genres tonight: calibrated modes aim at them, not the history's mix
                cats = self.catalog.category_distribution()
                pos = self.history.positives(user_id)
                pos = pos[self.catalog.items_in_categories(request.wanted_categories)[pos]]
                sel = cats[pos] if len(pos) else cats[allowed]  # the user's own horror, else the catalog's
                if len(sel):
                    user_cats = sel.mean(axis=0)
            elif request.reference_item is not None and request.reference_item in self.catalog and len(pset.personas):
                # "like X": the genres aimed at are X's
                user_cats = self.catalog.category_distribution()[self.catalog.index(request.reference_item)]
        ctx = RankingContext(scores=scores, allowed=allowed, responsible=responsible,
                             persona_weights=weights, contributions=contributions,
                             category_dist=self.catalog.category_distribution(),
                             user_categories=user_cats, extra=extra)
        return ctx, ps, pset

    # ---- the entry point ---------------------------------------------------------------
    def recommend(self, user_id: str, k: int = 10, mode: str | RankingMode = "relevance", *,
                  categories: Sequence[str] | None = None, candidate_items: Sequence[str] | None = None,
                  persona_focus: dict[str, float] | None = None, exclude_items: Sequence[str] | None = None,
                  request: Request | None = None, disliked_items: Sequence[str] | None = None,
                  ) -> RecommendationList:
        """Top-``k`` items for ``user_id``, each with its persona, attention, evidence and explanation.

        ``categories`` keeps items with at least one of them; ``candidate_items`` restricts to
        those ids (e.g. a semantic search result); ``persona_focus`` multiplies each persona's
        contribution (request routing); ``exclude_items`` removes ids (e.g. rejected ones);
        ``request`` filters and re-scores (:mod:`personas.request`), with ``disliked_items``
        (conversational dislikes) adding to the rated-low titles whose neighbours drop.
        ``mode`` is a registered mode's name or a :class:`~personas.ranking.RankingMode` (e.g. a
        :class:`~personas.ranking.CalibratedMode` with settings of its own, as the evaluation
        passes the ones it chose).
        """
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k <= 0:
            raise UsageError("k", k, "a positive integer")
        ranking = mode if isinstance(mode, RankingMode) else get_mode(mode)
        mode = ranking.name
        user_id = str(user_id)
        extra = {}
        if ranking.uses_exposure and self.exposure is not None:
            extra["exposure"] = self.exposure.counts(self._item_ids).astype(np.float64)
        ctx, ps, pset = self.context(user_id, categories=categories, candidate_items=candidate_items,
                                     persona_focus=persona_focus, exclude_items=exclude_items, request=request,
                                     disliked_items=disliked_items, min_candidates=k, extra=extra)
        provenance = {**self.provenance, "mode": mode,
                      "personas": {p.persona_id: p.version for p in pset.personas},
                      "attention_rule": self.attention_config.rule}
        if request is not None:
            provenance["request"] = request.model_dump(mode="json", exclude_defaults=True)
        if not pset.personas:
            return self._cold_start(user_id, k, mode, ctx, provenance)
        chosen = ranking.select(ctx, k)
        att = ps.attention(chosen, self.attention_config) if len(chosen) else np.zeros((0, len(pset.personas)))
        if persona_focus and request is None:  # attention follows the focused contributions
            mult = np.array([persona_focus.get(pid, 1.0) for pid in pset.ids])
            att = PersonaScores(ps.persona_ids, ps.groups, ps.contributions * mult[:, None].astype(np.float32),
                                ps.residual, ps.scorer).attention(chosen, self.attention_config)
        items = []
        personal = ctx.extra.get("personal_scores", ctx.scores)
        term, match = ctx.extra.get("request_term"), ctx.extra.get("request_match")
        resp = ctx.responsible[chosen]
        evidence = ps.evidence_many(chosen, resp, self.attention_config.evidence_per_item)
        for rank, (i, a, r, pairs) in enumerate(zip(chosen, att, resp, evidence), start=1):
            persona = pset.personas[int(r)]
            ev = [EvidenceItem(item_id=self.catalog.item(j).item_id, title=self.catalog.title(j), weight=round(w, 6))
                  for j, w in pairs]
            it = self.catalog.item(int(i))
            items.append(Recommendation(
                item_id=it.item_id, title=it.title, score=float(personal[i]), rank=rank,
                request_term=round(float(term[i]), 6) if term is not None else 0.0,
                request_match=round(float(match[i]), 6) if match is not None else None,
                persona=PersonaRef(id=persona.persona_id, name=persona.name),
                attention={pid: round(float(x), 6) for pid, x in zip(pset.ids, a)},
                evidence=ev, categories=list(it.categories),
                explanation=template_explanation(persona.name, [e.title for e in ev], float(a[r]))))
        return RecommendationList(user_id=user_id, mode=mode, k=k, items=items, provenance=provenance)

    def _cold_start(self, user_id: str, k: int, mode: str, ctx: RankingContext, provenance: dict) -> RecommendationList:
        pop_ctx = RankingContext(scores=self.popularity.astype(np.float32), allowed=ctx.allowed,
                                 responsible=ctx.responsible, persona_weights=np.zeros(0))
        chosen = pop_ctx.candidates_by_score(k)
        items = [Recommendation(item_id=self.catalog.item(int(i)).item_id, title=self.catalog.title(int(i)),
                                score=float(self.popularity[i]), rank=r, persona=None, attention={}, evidence=[],
                                categories=list(self.catalog.item(int(i)).categories),
                                explanation=template_explanation(None, []), cold_start=True)
                 for r, i in enumerate(chosen, start=1)]
        return RecommendationList(user_id=user_id, mode=mode, k=k, items=items, cold_start=True,
                                  provenance={**provenance, "fallback": "popularity"})
