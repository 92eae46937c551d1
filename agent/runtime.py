"""What the agent can do, as plain operations over the engine, the LLM and memory.

The LangGraph nodes (``agent.graph``) and the Python API (``agent.api``) both call these.
Operations that change something return their writes as a typed :class:`~agent.writes.Pending`
instead of writing; :meth:`AgentRuntime.commit` applies a turn's writes together (a
persona-store transaction around a memory transaction, the exposure counts inside it), with a
compare-and-set on every persona version it read, so a turn's writes are complete or absent
and a concurrent turn's change is never overwritten.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from agent.agent_memory import AgentMemory, MemoryConfig
from agent.language import LanguageConfig, LanguageLayer
from agent.llm.base import LLMBackend
from agent.refine import Interaction, PersonaRefiner, RefineConfig
from agent.request_reader import read_request
from agent.writes import Committed, FeedbackWrite, Pending, PersonaWrite, ShownItem, ShownWrite
from memory.errors import PluralError, UnknownItemError, UnknownUserError, UsageError
from personas.model import PersonaSet, PersonaView
from personas.store import PersonaConflictError
from personas.recommendation import EvidenceItem, RecommendationList, template_explanation
from personas.request import Request

log = logging.getLogger("plural.agent")

Reaction = Literal["like", "dislike"]
REACTION_WORDS = {"like": "like", "liked": "like", "accept": "like", "accepted": "like", "love": "like",
                  "positive": "like", "dislike": "dislike", "disliked": "dislike", "reject": "dislike",
                  "rejected": "dislike", "negative": "dislike", "hate": "dislike"}


class AgentConfig(BaseModel):
    """Settings of the agent (memory, refinement, language, defaults of a turn)."""

    model_config = ConfigDict(extra="forbid")

    k: int = Field(5, gt=0, le=50)
    """Items per list in chat."""
    mode: str = "persona_calibrated"
    """Ranking mode of the agent's lists."""
    llm_prose: Literal["after", "inline", "off"] = "after"
    """When the LLM writes prose in chat. ``after`` (default): a turn's reply comes from the
    exact engine and templates, with no model on its path; the model's explanations, its
    sentence on "why", its persona rewrite after feedback and its memory facts follow through
    :meth:`agent.api.PluralAgent.follow_up`. ``inline``: the same work inside the turn (for a
    fast served model: a 135M model on a CPU takes tens of seconds). ``off``: templates only."""
    intent_parser: Literal["rules", "llm"] = "rules"
    """Who reads a chat message (its intent and its request): the rules, or the LLM validated
    against the rules' fallback (the LLM is then on the turn's path: use a fast model)."""
    refine: RefineConfig = Field(default_factory=RefineConfig)
    """Test-time persona refinement."""
    memory: MemoryConfig = Field(default_factory=MemoryConfig)
    """Episodic/semantic memory."""
    language: LanguageConfig = Field(default_factory=LanguageConfig)
    """How the LLM is used on top of the engine."""
    max_message_chars: int = Field(2000, gt=0)
    """Longer chat messages are rejected with a clear message."""


class FeedbackOutcome(BaseModel):
    """What a reaction did: which persona it concerned and how that persona changed."""

    model_config = ConfigDict(extra="forbid")

    user_id: str
    item_id: str
    title: str
    reaction: Reaction
    persona_id: str | None
    persona_name: str | None = None
    refinement: dict | None = None
    """The refinement's summary: loss, proposed text, drift guard scores, weight and evidence changes."""
    persona_before: PersonaView | None = None
    persona_after: PersonaView | None = None


class ItemExplanation(BaseModel):
    """Why an item suits a user: the responsible persona, attention, evidence, a sentence."""

    model_config = ConfigDict(extra="forbid")

    item_id: str
    title: str
    persona: PersonaView | None = None
    """The persona the item comes from (None for a user without personas)."""
    attention: dict[str, float] = Field(default_factory=dict)
    evidence: list[EvidenceItem] = Field(default_factory=list)
    explanation: str
    explanation_source: Literal["template", "llm"] = "template"
    llm: dict | None = None
    """The explain task's metadata (prompt, fallbacks) when an LLM was asked."""
    score: float | None = None
    """The personalised score (the sum of the persona contributions)."""


class AgentRuntime:
    """The engine, the language layer, memory and the refiner, for one data directory."""

    def __init__(self, engine, backend: LLMBackend | None = None, config: AgentConfig | None = None):
        self.engine, self.backend = engine, backend
        self.config = config or AgentConfig()
        self.language = LanguageLayer(engine, backend, self.config.language)
        self.memory = AgentMemory(engine.memory_store(), engine.embedder(), self.config.memory,
                                  catalog_titles=engine.catalog_titles())
        self.refiner = PersonaRefiner(engine.catalog, engine.embedder(), backend, self.config.refine)
        self._template_refiner = self.refiner.with_backend(None)
        self.threads = engine.thread_registry()
        """Who owns which chat thread (checked by the graph's first node, claimed by the turn's commit)."""

    def warm_up(self) -> None:
        """Load what the first turn would otherwise wait for: the text embedder (recall, free-text
        requests), the request scorer and the catalog's title index."""
        self.engine.embedder().warm_up()
        self.engine.request_scorer()
        self.engine.parse_context()

    def in_turn_llm(self) -> LLMBackend | None:
        """The backend a chat turn may call itself (``llm_prose="inline"``), else None."""
        return self.backend if self.config.llm_prose == "inline" else None

    # ---- checks ------------------------------------------------------------------------
    def check_user(self, user_id: str) -> str:
        user_id = str(user_id)
        if user_id not in self.engine.history:
            raise UnknownUserError(user_id, self.engine.history.user_ids)
        return user_id

    def check_item(self, item_id: str) -> str:
        item_id = str(item_id)
        self.engine.catalog.index(item_id)  # raises UnknownItemError naming known ids
        return item_id

    @staticmethod
    def check_reaction(reaction: str | float | int) -> Reaction:
        if isinstance(reaction, (int, float)) and not isinstance(reaction, bool):
            if not 1 <= float(reaction) <= 5:
                raise UsageError("rating", reaction, "1 to 5 (>= 4 counts as a like)")
            return "like" if float(reaction) >= 4 else "dislike"
        r = REACTION_WORDS.get(str(reaction).strip().lower())
        if r is None:
            raise UsageError("reaction", reaction, sorted(REACTION_WORDS) + ["a rating 1-5"])
        return r  # type: ignore[return-value]

    # ---- requests (the chat's path) ----------------------------------------------------
    def parse_request(self, user_id: str, message: str, *, last_list: Sequence[str] = (),
                      shown: Sequence[str] = (), refused: Sequence[str] = (), previous: Request | None = None,
                      reference: int | None = None) -> tuple[Request, dict]:
        """The typed :class:`~personas.request.Request` a message asks for, in the context of this
        thread, and how it was read: by the rules, or by the LLM validated against them when
        ``intent_parser`` is ``llm`` (the rules' reading is the fallback)."""
        ctx = self.engine.parse_context(self.check_user(user_id), last_list=list(last_list), shown=list(shown),
                                        refused=list(refused), previous=previous, reference=reference)
        backend = self.backend if self.config.intent_parser == "llm" else None
        return read_request(message, ctx, backend)

    def recommend_request(self, user_id: str, request: Request, k: int | None = None,
                          mode: str | None = None) -> RecommendationList:
        """The list for a parsed request: :meth:`agent.engine.Engine.recommend_request`, never
        showing what the user already reacted to in conversation, and with their conversational
        dislikes weighing against close neighbours (as titles they rated low do)."""
        user_id = self.check_user(user_id)
        reacted = self.memory.reacted_items(user_id)
        req = request.model_copy(update={"exclude_items": list(dict.fromkeys([*request.exclude_items, *reacted]))})
        disliked = [i for i, r in reacted.items() if r == "dislike"]
        return self.engine.recommend_request(user_id, req, k or self.config.k, mode or self.config.mode,
                                             disliked_items=disliked)

    @staticmethod
    def shown(out: RecommendationList, thread_id: str | None) -> Pending:
        """The writes of showing ``out``: a memory event and one exposure per listed item."""
        items = [ShownItem(item_id=r.item_id, title=r.title, persona_id=r.persona.id if r.persona else None)
                 for r in out.items]
        return Pending(events=[ShownWrite(thread_id=thread_id, items=items)] if items else [],
                       exposure=[r.item_id for r in out.items])

    # ---- explain -----------------------------------------------------------------------
    def responsible_persona(self, user_id: str, item_id: str) -> str | None:
        ps, pset = self.engine.recommender.persona_scores(user_id)
        if not pset.personas:
            return None
        pos = self.engine.catalog.index(item_id)
        return pset.personas[int(ps.responsible([pos])[0])].persona_id

    def explain_item(self, user_id: str, item_id: str, persona_id: str | None = None,
                     backend: LLMBackend | None = None) -> ItemExplanation:
        """Why ``item_id`` suits the user: its persona, the attention, the evidence and a sentence
        (the template's; ``backend``'s when given and its sentence passes validation)."""
        user_id, item_id = self.check_user(user_id), self.check_item(item_id)
        ps, pset = self.engine.recommender.persona_scores(user_id)
        cat = self.engine.catalog
        item = cat.get(item_id)
        if not pset.personas:
            return ItemExplanation(item_id=item_id, title=item.title, explanation=template_explanation(None, []))
        pos = cat.index(item_id)
        att = ps.attention([pos], self.engine.config.attention)[0]
        r = pset.ids.index(persona_id) if persona_id in pset.ids else int(ps.responsible([pos])[0])
        persona = pset.personas[r]
        ev = [EvidenceItem(item_id=cat.item(j).item_id, title=cat.title(j), weight=round(w, 6))
              for j, w in ps.evidence(pos, r, self.engine.config.attention.evidence_per_item)]
        text = template_explanation(persona.name, [e.title for e in ev], float(att[r]))
        source, meta = "template", None
        if backend is not None:
            from agent.language import recommendation_input
            from agent.llm.tasks import explain_recommendations

            rec = recommendation_input(self.engine, pset, item_id, persona.persona_id, [e.item_id for e in ev])
            res = explain_recommendations(backend, [rec], catalog_titles=self.engine.catalog_titles(),
                                          catalog_categories=self.engine.catalog.categories)
            if res.items[0].source != "template":
                text, source = res.items[0].text, "llm"
            meta = res.metadata()
        return ItemExplanation(item_id=item_id, title=item.title, persona=PersonaView.of(persona),
                               attention={pid: round(float(a), 6) for pid, a in zip(pset.ids, att)}, evidence=ev,
                               explanation=text, explanation_source=source, llm=meta, score=float(ps.scores[pos]))

    # ---- feedback ----------------------------------------------------------------------
    def feedback(self, user_id: str, item_id: str, reaction: str | float | int, text: str | None = None,
                 thread_id: str | None = None, persona_id: str | None = None,
                 use_llm: bool = True) -> tuple[FeedbackOutcome, Pending]:
        """A reaction to an item: numeric persona update and textual refinement, as pending writes.

        ``use_llm=False`` refines the text with the deterministic templates and the embedding
        simulator (what a chat turn does; the model's rewrite follows in :meth:`refine_text`)."""
        user_id, item_id = self.check_user(user_id), self.check_item(item_id)
        r = self.check_reaction(reaction)
        text = (text or "").strip()[:500] or None
        item = self.engine.catalog.get(item_id)
        pset = self.engine.persona_store.get(user_id)
        event = FeedbackWrite(item_id=item_id, title=item.title, reaction=r, text=text, thread_id=thread_id)
        if pset is None or not pset.personas:
            return FeedbackOutcome(user_id=user_id, item_id=item_id, title=item.title, reaction=r,
                                   persona_id=None), Pending(events=[event])
        pid = persona_id if persona_id in pset.ids else self.responsible_persona(user_id, item_id)
        pending = Pending(events=[event.model_copy(update={"persona_id": pid})])
        updated = self.refiner.numeric_update(pset, pid, item_id, r)
        batch = [Interaction(self.refiner.view(item_id), r, text)] + self._recent_reactions(user_id, pid, item_id)
        refiner = self.refiner if use_llm else self._template_refiner
        outcome, pending.personas = self._refined(refiner, pset, updated, pid, item_id, r, text, thread_id, batch)
        return outcome, pending

    def refine_text(self, user_id: str, item_id: str, reaction: str, text: str | None = None,
                    thread_id: str | None = None, persona_id: str | None = None) -> tuple[FeedbackOutcome, Pending]:
        """The LLM's textual refinement after a reaction that a chat turn already committed (its
        numeric update and event are stored): the writes are the persona's new text only, valid
        while the persona is still at the version it had (else :meth:`commit` refuses them)."""
        user_id, item_id = self.check_user(user_id), self.check_item(item_id)
        r = self.check_reaction(reaction)
        item = self.engine.catalog.get(item_id)
        pset = self.engine.persona_store.get(user_id)
        if pset is None or persona_id not in pset.ids:
            return FeedbackOutcome(user_id=user_id, item_id=item_id, title=item.title, reaction=r,
                                   persona_id=None), Pending()
        batch = self._recent_reactions(user_id, persona_id, None)
        outcome, personas = self._refined(self.refiner, pset, pset, persona_id, item_id, r, text, thread_id, batch)
        before, after = pset.get(persona_id), outcome.persona_after
        pending = Pending()
        if after is not None and (after.name, after.description) != (before.name, before.description):
            pending.personas = personas
        return outcome, pending

    def _recent_reactions(self, user_id: str, persona_id: str, skip_item: str | None) -> list[Interaction]:
        """The persona's latest reactions from memory, newest first (the alignment batch)."""
        batch: list[Interaction] = []
        for ev in self.memory.feedback_events(user_id, limit=20):
            if len(batch) >= self.config.refine.alignment_batch - (1 if skip_item else 0):
                break
            if ev.payload.get("persona_id") == persona_id and ev.payload.get("item_id") != skip_item:
                batch.append(Interaction(self.refiner.view(ev.payload["item_id"]), ev.payload["reaction"],
                                         ev.payload.get("text")))
        return batch

    def _refined(self, refiner: PersonaRefiner, stored: PersonaSet, updated: PersonaSet, pid: str, item_id: str,
                 r: str, text: str | None, thread_id: str | None,
                 batch: list[Interaction]) -> tuple[FeedbackOutcome, PersonaWrite]:
        """Run the textual gradient on ``updated`` and describe the change against ``stored``."""
        rejected = [i for i, rr in self.memory.reacted_items(stored.user_id).items() if rr == "dislike"]
        if r == "dislike" and item_id not in rejected:
            rejected.append(item_id)
        result = refiner.refine(updated, pid, batch, negatives=rejected)
        final = updated.model_copy(update={"personas": [result.after if p.persona_id == pid else p
                                                        for p in updated.personas]})
        before, after = stored.get(pid), final.get(pid)
        summary = result.summary()
        # the refiner saw the numerically updated persona: report changes against the stored one
        summary["weight"] = {"before": before.weight, "after": after.weight}
        summary["evidence_added"] = [e for e in after.evidence if e not in before.evidence]
        title = self.engine.catalog.get(item_id).title
        fb = {"item_id": item_id, "title": title, "reaction": r, "text": text, "thread_id": thread_id}
        personas = PersonaWrite(set=final, reason="refinement", feedback={**fb, "loss": result.loss, "guard": result.guard},
                                expected_versions=self.engine.persona_store.versions_of(stored))
        outcome = FeedbackOutcome(user_id=stored.user_id, item_id=item_id, title=title, reaction=r, persona_id=pid,
                                  persona_name=after.name, refinement=summary,
                                  persona_before=PersonaView.of(before), persona_after=PersonaView.of(after))
        return outcome, personas

    # ---- commit ------------------------------------------------------------------------
    def commit(self, user_id: str, pending: Pending, backend: LLMBackend | None = None) -> Committed:
        """Apply one turn's writes together; returns what was written. The persona set is a
        compare-and-set on the versions it was computed from: :class:`PersonaConflictError`
        (nothing written) when another turn changed one of them first. Semantic memory is then
        consolidated when enough new events arrived, by ``backend`` (templates when None)."""
        store = self.engine.persona_store
        exposure = self.engine.exposure_store()
        # personas and memory are two SQLite files: the persona transaction (the exposure counts
        # share its file) commits only after the memory one did, so a failure anywhere leaves
        # both as they were
        with store.transaction():
            with self.memory.transaction():
                if pending.personas:
                    new = pending.personas.set
                    if new.user_id != user_id:
                        raise UsageError("persona set", new.user_id, f"the personas of user {user_id!r} only")
                    store.put(new, reason=pending.personas.reason, feedback=pending.personas.feedback,
                              expected_versions=pending.personas.expected_versions)
                records = []
                for ev in pending.events:
                    if ev.kind == "chat_turn":
                        records.append(self.memory.turn_record(ev.thread_id, ev.role, ev.text))
                    elif ev.kind == "recommendation":
                        records.append(self.memory.shown_record(ev.thread_id, [i.model_dump() for i in ev.items]))
                    else:
                        records.append(self.memory.feedback_record(ev.item_id, ev.title, ev.reaction, ev.text,
                                                                   ev.persona_id, ev.thread_id))
                self.memory.record(user_id, records)
                if pending.exposure:
                    exposure.add(pending.exposure)
                if pending.thread_id:
                    self.threads.claim(pending.thread_id, user_id)
        consolidated = None
        try:
            consolidated = self.memory.maybe_consolidate(user_id, backend)
        except PluralError as e:  # consolidation is best effort; the turn is already committed
            log.warning("memory consolidation failed for user %s: %s", user_id, e)
        return Committed(events=len(pending.events), personas=pending.personas is not None,
                         exposure=len(pending.exposure), consolidated=consolidated)


__all__ = ["AgentConfig", "AgentRuntime", "FeedbackOutcome", "ItemExplanation", "Pending", "PersonaConflictError",
           "UnknownItemError"]
