"""The LLM's jobs wired into recommendation: persona text, request routing, persona selection,
explanations. The exact engine ranks; the language model only works on language on top of it.

* Persona text: a user's template-written personas are named and described by the LLM the
  first time the user is served with a model configured (one batched call), stored as a new
  persona version (``text_source="llm"``).
* Routing: a free-text request ("something light and funny tonight") is routed to the
  personas it activates; their contributions are multiplied by ``route_boost`` (a persona
  focus; calibrated modes then aim at the focused personas' mix), and the catalog is filtered
  by semantic search only when ``query_filter`` is on. Without a model (or when its answer
  fails) :meth:`LanguageLayer.route_scores` decides: a title the request names, else the
  genres it evokes, else no narrowing.
* Selection: the responsible persona of each listed item is the numeric attention's
  (``attention``), the LLM's (``llm``) or the LLM's only where attention is not decisive
  (``both``); the disagreement rate is reported. Evidence follows the chosen persona.
* Explanations: one batched call for the whole list; an explanation may cite only its own
  evidence titles; failures fall back to the template sentence.

Every result carries the prompts' names and hashes, fallback counters per reason and
``llm_error`` (server down, timeout) in ``RecommendationList.meta``; nothing here raises for
model output or backend failures.

Example:
    >>> from agent.llm import ScriptedLLM
    >>> lang = LanguageLayer(engine, ScriptedLLM([...]))                       # doctest: +SKIP
    >>> out = lang.recommend("1", k=5, request="something funny", explain=True)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from agent.llm.base import LLMBackend
from agent.llm.tasks import (CandidateInput, PersonaInput, RecommendationInput, combine_selection,
                             describe_personas, explain_recommendations, route_request, select_personas)
from agent.llm.tasks import title_index
from agent.llm.validated import FallbackCounter
from personas.model import PersonaSet
from personas.recommendation import EvidenceItem, PersonaRef, RecommendationList
from personas.request import Request

if TYPE_CHECKING:
    from agent.writes import PersonaWrite

log = logging.getLogger("plural.language")


class LanguageConfig(BaseModel):
    """How the LLM is used on top of the engine."""

    model_config = ConfigDict(extra="forbid")

    describe_personas: bool = True
    """Have the LLM name and describe template-written personas the first time a user is served."""
    selection: Literal["attention", "llm", "both"] = "attention"
    """Who picks each item's responsible persona: the numeric attention, the LLM, or the LLM
    where attention gives no persona at least ``min_attention_share``."""
    min_attention_share: float = Field(0.5, gt=0, le=1)
    """``both``: attention below this share is not decisive, so the LLM decides."""
    route_boost: float = Field(2.0, ge=1.0)
    """Multiplier of the contributions of the personas a request is routed to."""
    query_filter: bool = False
    """Also restrict candidates to the catalog's semantic neighbours of the request. Off by
    default: a vague request ("surprise me") has arbitrary neighbours, and routing to personas
    already carries the request; an explicit ``query`` is always a filter."""
    evidence_titles: int = Field(8, ge=1)
    """Evidence titles per persona shown to the LLM when describing it."""
    route_genre_temperature: float = Field(0.05, gt=0)
    """Routing fallback: the request's similarity to each category ("a comedy film") becomes a
    distribution over categories by a softmax at this temperature (MiniLM cosines differ by a
    few hundredths between related and unrelated genres, so it must be sharp)."""
    route_min_genre_share: float = Field(0.35, ge=0, le=1)
    """Routing fallback: the request names a genre when its top category gets at least this
    share; then personas are scored by their share of the request's categories, else by the
    similarity of the request to the persona's vector."""


def recommendation_input(engine, pset: PersonaSet, item_id: str, persona_id: str,
                         evidence: Sequence[str]) -> RecommendationInput:
    """The explain task's view of one listed item: its persona, its evidence, and the facts a
    sentence about it may state (the evidence's categories, the user's tastes)."""
    cat = engine.catalog
    item, p = cat.get(item_id), pset.get(persona_id)
    evidence_items = [cat.get(i) for i in evidence]
    tastes = sorted({c for q in pset.personas for c in q.categories})
    return RecommendationInput(item_id=item_id, title=item.title, categories=list(item.categories),
                               persona_id=p.persona_id, persona_name=p.name, persona_description=p.description,
                               evidence_titles=[e.title for e in evidence_items],
                               evidence_categories=sorted({c for e in evidence_items for c in e.categories}),
                               user_tastes=tastes)


def persona_inputs(engine, pset: PersonaSet, n_titles: int = 8) -> list[PersonaInput]:
    """The LLM tasks' view of a user's personas."""
    cat = engine.catalog
    out = []
    for p in pset.personas:
        pos = cat.indices(p.evidence[:n_titles])
        out.append(PersonaInput.from_persona(p, cat.titles(pos), [c for i in pos for c in cat.item(int(i)).categories]))
    return out


class LanguageLayer:
    """An :class:`~agent.engine.Engine` plus an LLM backend (``None``: templates only)."""

    def __init__(self, engine, backend: LLMBackend | None, config: LanguageConfig | None = None):
        self.engine, self.backend = engine, backend
        self.config = config or LanguageConfig()
        self._category_vectors: tuple[list[str], np.ndarray | None] | None = None

    # ---- persona text ------------------------------------------------------------------
    def describe_pending(self, user_id: str) -> tuple["PersonaWrite | None", dict | None]:
        """The LLM's names and descriptions for personas still carrying template text, as a
        pending write (``(None, None)`` when nothing needs asking): only personas the model
        answered validly change. Each persona version is asked once per model and prompt: the
        attempt is remembered with the persona set (``induction["llm_text_attempts"]``), so a
        description that failed validation is not asked again on every run."""
        from agent.writes import PersonaWrite

        if self.backend is None or not self.config.describe_personas:
            return None, None
        store = self.engine.persona_store
        pset = store.get(user_id)
        if pset is None or not pset.personas:
            return None, None
        from prompts import load_prompt

        stamp = f"{getattr(self.backend, 'model_name', '?')}|{load_prompt('describe_persona').sha256[:12]}"
        tried = dict(pset.induction.get("llm_text_attempts") or {})
        todo = [p for p in pset.personas if p.text_source == "template" and tried.get(p.persona_id) != f"{p.version}|{stamp}"]
        if not todo:
            return None, None
        inputs = persona_inputs(self.engine, PersonaSet(user_id=user_id, personas=todo), self.config.evidence_titles)
        result = describe_personas(self.backend, inputs, catalog_categories=self.engine.catalog.categories)
        written = {it.persona_id: it for it in result.items if it.source != "template"}
        personas = [p.model_copy(update={"name": written[p.persona_id].name,
                                         "description": written[p.persona_id].description,
                                         "text_source": "llm"}) if p.persona_id in written else p
                    for p in pset.personas]
        if not result.llm_error:  # a server that was down has not judged the text: ask again next time
            tried.update({p.persona_id: f"{p.version}|{stamp}" for p in todo if p.persona_id not in written})
        new = pset.model_copy(update={"personas": personas, "induction": {**pset.induction, "llm_text_attempts": tried}})
        return PersonaWrite(set=new, reason="llm-description", expected_versions=store.versions_of(pset)), \
            result.metadata()

    def ensure_persona_text(self, user_id: str) -> dict | None:
        """:meth:`describe_pending`, stored at once (a compare-and-set on the versions read);
        returns the task metadata (None when nothing was asked)."""
        write, meta = self.describe_pending(user_id)
        if write is not None:
            self.engine.persona_store.put(write.set, reason=write.reason, expected_versions=write.expected_versions)
        return meta

    # ---- routing -----------------------------------------------------------------------
    def route(self, user_id: str, request: str) -> tuple[dict[str, float], dict]:
        """The persona focus a request implies, and the routing task's metadata."""
        pset = self.engine.recommender.persona_set(user_id)
        if not pset.personas:
            return {}, {}
        scores = {}
        try:
            scores = self.route_scores(pset, request)
        except Exception as e:  # noqa: BLE001 - routing must not fail a recommendation
            log.warning("embedding the request failed (%s); routing by words only", e)
        result = route_request(self.backend, request, persona_inputs(self.engine, pset, self.config.evidence_titles),
                               fallback_scores=scores or None)
        routed = result.items[0].persona_ids if result.items else []
        focus = {pid: self.config.route_boost for pid in routed}
        meta = {**result.metadata(), "persona_ids": routed, "source": result.items[0].source if result.items else None}
        return focus, meta

    def route_scores(self, pset: PersonaSet, request: str) -> dict[str, float]:
        """The routing fallback's score per persona (also what the LLM's routing falls back to).

        When the request names a genre ("something light and funny" is close to "a comedy
        film"), a persona scores its share of the request's categories. When it names a title
        ("something like Star Wars"), the cosine of that item's text and the persona's vector
        (its evidence items' centroid). Otherwise nothing: a vague request ("surprise me")
        narrows no taste, and the template then keeps every persona.
        """
        embedder = self.engine.embedder()
        pos = self._mentioned_item(request)
        if pos is not None:  # a named title is more specific than any genre ("Star Wars" is not a war film)
            v = embedder.embed([self.engine.catalog.texts()[pos]])[0]
            return {p.persona_id: float(np.dot(p.vector(), v)) for p in pset.personas if p.embedding}
        q = embedder.embed([request])[0]
        dist = self._request_categories(q)
        if dist is None:
            return {}
        return {p.persona_id: float(sum(share * dist.get(c, 0.0) for c, share in p.categories.items()))
                for p in pset.personas}

    def _mentioned_item(self, request: str) -> int | None:
        """The catalog position of the longest title the request names ("like Star Wars"), if any.

        Titles match as whole word sequences, without year or punctuation and in either article
        order ("Godfather, The" or "The Godfather"); a one-word title needs 5+ letters here, so
        that "beat the heat" is not a request for *Heat*.
        """
        hits = [(len(words), pos) for pos, words in title_index(self.engine.catalog.all_titles()).find(request)
                if len(words) > 1 or len(words[0]) >= 5]
        return max(hits)[1] if hits else None

    def _request_categories(self, q: np.ndarray) -> dict[str, float] | None:
        """The request's distribution over catalog categories, or None when it names none clearly."""
        if self._category_vectors is None:
            cats = [c for c in self.engine.catalog.categories if c.lower() != "unknown"]
            vecs = self.engine.embedder().embed([f"a {c.lower()} film" for c in cats]) if cats else None
            self._category_vectors = (cats, vecs)
        cats, vecs = self._category_vectors
        if not cats:
            return None
        z = (np.asarray(vecs) @ q) / self.config.route_genre_temperature
        w = np.exp(z - z.max())
        w /= w.sum()
        if w.max() < self.config.route_min_genre_share:
            return None
        return {c: float(x) for c, x in zip(cats, w)}

    # ---- the whole recommendation ------------------------------------------------------
    def recommend(self, user_id: str, k: int = 10, mode: str = "relevance", *, request: str | None = None,
                  explain: bool = True, categories: Sequence[str] | None = None, query: str | None = None,
                  exclude_items: Sequence[str] | None = None,
                  persona_focus: dict[str, float] | None = None,
                  routing: tuple[dict[str, float], dict] | None = None,
                  parsed: "Request | None" = None) -> RecommendationList:
        """Recommend for ``user_id`` with the LLM's help; see the module docstring.

        ``routing`` is a ``(persona focus, metadata)`` pair from :meth:`route` when the caller
        routed the request already (the agent's graph does it in its own node). ``parsed`` is a
        request already read into a :class:`~personas.request.Request` (the chat's and ``plural
        recommend --request``'s path): the engine applies it and no LLM routes it.
        """
        t0 = time.perf_counter()
        focus = dict(persona_focus or {})
        request_query = False
        route_meta = None
        if request and parsed is None:
            routed_focus, route_meta = routing if routing is not None else self.route(user_id, request)
            focus.update(routed_focus)
            if query is None and self.config.query_filter:
                query, request_query = request, True
        if parsed is not None:
            out = self.engine.recommend_request(user_id, parsed, k, mode)
        else:
            out = self.engine.recommend(user_id, k, mode, categories=categories, query=query,
                                        persona_focus=focus or None, exclude_items=exclude_items)
        if request_query and len(out.items) < k:
            # the request's catalog neighbours are too few: keep the persona focus, drop the filter
            out = self.engine.recommend(user_id, k, mode, categories=categories, persona_focus=focus or None,
                                        exclude_items=exclude_items)
            out.meta["query_filter"] = "dropped: fewer than k items matched the request"
        out = self.improve(out, explain=explain, focus=focus, route_meta=route_meta)
        out.meta["latency_ms"] = round(1000 * (time.perf_counter() - t0), 1)
        return out

    def improve(self, out: RecommendationList, *, explain: bool = True, focus: dict[str, float] | None = None,
                route_meta: dict | None = None) -> RecommendationList:
        """The model's work on a list the engine already made (in place, and returned): persona
        names and descriptions (the first time a user is served; the list's persona names
        follow), persona selection (``selection``), explanations. Callers that show the engine's
        list first (``plural recommend --explain``) call this after showing it."""
        meta: dict = {"llm": {"backend": getattr(self.backend, "name", "none") if self.backend else "none",
                              "model": self.backend.model_name if self.backend else None}}
        errors: list[str] = []
        if route_meta is not None:
            meta["route_request"] = route_meta
            if route_meta.get("llm_error"):
                errors.append(route_meta["llm_error"])
        described = self.ensure_persona_text(out.user_id) if self.backend is not None else None
        pset = self.engine.recommender.persona_set(out.user_id)
        if described:
            meta["describe_personas"] = described
            if described.get("llm_error"):
                errors.append(described["llm_error"])
            for r in out.items:  # the list names the personas as they are now
                if r.persona is not None and r.persona.id in pset.ids:
                    r.persona = PersonaRef(id=r.persona.id, name=pset.get(r.persona.id).name)
        if not out.cold_start and out.items:
            if self.config.selection != "attention" and self.backend is not None:
                sel_meta = self._select(out, pset, focus or {})
                meta["select_personas"] = sel_meta
                if sel_meta.get("llm_error"):
                    errors.append(sel_meta["llm_error"])
            if explain:
                ex_meta = self.explain_list(out, pset)
                meta["explain_recommendations"] = ex_meta
                if ex_meta.get("llm_error"):
                    errors.append(ex_meta["llm_error"])
        total = FallbackCounter()
        for key in ("describe_personas", "route_request", "select_personas", "explain_recommendations"):
            if key in meta and isinstance(meta[key], dict) and "fallbacks" in meta[key]:
                total = total.merge(FallbackCounter.model_validate(
                    {k: v for k, v in meta[key]["fallbacks"].items() if k != "fallback_rate"}))
        meta["fallbacks"] = total.as_dict()
        meta["llm_error"] = errors[0] if errors else None
        if errors:
            log.warning("LLM unavailable, template text used: %s", errors[0])
        if total.template:
            log.info("LLM fallbacks: %s", total.fallbacks)
        out.meta.update(meta)
        out.provenance["prompts"] = {name: m["provenance"]["prompt_sha256"][:12] for name, m in meta.items()
                                     if isinstance(m, dict) and "provenance" in m}
        out.provenance["llm"] = meta["llm"]
        return out

    def _select(self, out: RecommendationList, pset: PersonaSet, focus: dict[str, float]) -> dict:
        cands = [CandidateInput(item_id=r.item_id, title=r.title, categories=r.categories) for r in out.items]
        attention = {r.item_id: r.attention for r in out.items}
        result = select_personas(self.backend, cands, persona_inputs(self.engine, pset, self.config.evidence_titles),
                                 attention=attention)
        report = combine_selection(attention, result, self.config.selection,
                                   min_attention_share=self.config.min_attention_share)
        chosen = {c.item_id: c.persona_id for c in report.choices}
        changed = [r for r in out.items if chosen.get(r.item_id) and chosen[r.item_id] != (r.persona.id if r.persona else None)]
        if changed:
            ps, _ = self.engine.recommender.persona_scores(out.user_id, pset)
            idx = {pid: n for n, pid in enumerate(pset.ids)}
            cat = self.engine.catalog
            positions = cat.indices([r.item_id for r in changed])
            ev = ps.evidence_many(positions, [idx[chosen[r.item_id]] for r in changed],
                                  self.engine.config.attention.evidence_per_item)
            for r, pairs in zip(changed, ev):
                p = pset.get(chosen[r.item_id])
                r.persona = PersonaRef(id=p.persona_id, name=p.name)
                r.evidence = [EvidenceItem(item_id=cat.item(j).item_id, title=cat.title(j), weight=round(w, 6))
                              for j, w in pairs]
        return {**result.metadata(), **report.model_dump(exclude={"choices"}), "changed": len(changed)}

    def explain_list(self, out: RecommendationList, pset: PersonaSet | None = None, *,
                     backend: LLMBackend | None = None) -> dict:
        """Explain every item of ``out`` in one batched call (in place) by ``backend`` (default:
        this layer's); returns the task metadata."""
        pset = pset or self.engine.recommender.persona_set(out.user_id)
        backend = backend or self.backend
        recs = [recommendation_input(self.engine, pset, r.item_id, r.persona.id, [e.item_id for e in r.evidence])
                for r in out.items]
        result = explain_recommendations(backend, recs, catalog_titles=self.engine.catalog_titles(),
                                         catalog_categories=self.engine.catalog.categories)
        for r, ex in zip(out.items, result.items):
            if ex.source != "template":
                r.explanation = ex.text
                r.explanation_source = "llm"
        return result.metadata()
