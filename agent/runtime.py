"""What the agent can do, as plain operations over the engine, the LLM and memory.

The LangGraph nodes (``agent.graph``) and the Python API (``agent.api``) both call these.
Operations that change something return their writes as :class:`Pending` instead of writing;
:meth:`AgentRuntime.commit` applies a turn's writes together (a persona-store transaction around
a memory transaction), so a turn's writes are complete or absent.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from agent.agent_memory import AgentMemory, MemoryConfig
from agent.language import LanguageConfig, LanguageLayer
from agent.llm.base import LLMBackend
from agent.refine import Interaction, PersonaRefiner, RefineConfig
from agent.request_reader import read_request
from memory.errors import PluralError, UnknownItemError, UnknownUserError, UsageError
from personas.model import PersonaSet
from personas.recommendation import RecommendationList, template_explanation
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


@dataclass
class Pending:
    """Writes of one turn, applied by :meth:`AgentRuntime.commit`."""

    events: list[dict] = field(default_factory=list)
    """Episodic events: ``{"kind": "chat_turn"|"recommendation"|"feedback", ...}``."""
    personas: dict | None = None
    """``{"set": PersonaSet json, "reason": str, "feedback": dict}`` to store."""

    def to_dict(self) -> dict:
        return {"events": self.events, "personas": self.personas}

    @classmethod
    def from_dict(cls, d: dict | None) -> "Pending":
        d = d or {}
        return cls(list(d.get("events") or []), d.get("personas"))


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
    persona_before: dict | None = None
    persona_after: dict | None = None


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

    def shown_event(self, out: RecommendationList, thread_id: str | None) -> dict:
        return {"kind": "recommendation", "thread_id": thread_id,
                "items": [{"item_id": r.item_id, "title": r.title, "persona_id": r.persona.id if r.persona else None}
                          for r in out.items]}

    # ---- explain -----------------------------------------------------------------------
    def responsible_persona(self, user_id: str, item_id: str) -> str | None:
        ps, pset = self.engine.recommender.persona_scores(user_id)
        if not pset.personas:
            return None
        pos = self.engine.catalog.index(item_id)
        return pset.personas[int(ps.responsible([pos])[0])].persona_id

    def explain_item(self, user_id: str, item_id: str, persona_id: str | None = None,
                     backend: LLMBackend | None = None) -> dict:
        """Why ``item_id`` suits the user: its persona, the attention, the evidence and a sentence
        (the template's; ``backend``'s when given and its sentence passes validation)."""
        user_id, item_id = self.check_user(user_id), self.check_item(item_id)
        ps, pset = self.engine.recommender.persona_scores(user_id)
        cat = self.engine.catalog
        item = cat.get(item_id)
        if not pset.personas:
            return {"item_id": item_id, "title": item.title, "persona": None, "attention": {}, "evidence": [],
                    "explanation": template_explanation(None, []), "explanation_source": "template"}
        pos = cat.index(item_id)
        att = ps.attention([pos], self.engine.config.attention)[0]
        r = pset.ids.index(persona_id) if persona_id in pset.ids else int(ps.responsible([pos])[0])
        persona = pset.personas[r]
        ev = [{"item_id": cat.item(j).item_id, "title": cat.title(j), "weight": round(w, 6)}
              for j, w in ps.evidence(pos, r, self.engine.config.attention.evidence_per_item)]
        text = template_explanation(persona.name, [e["title"] for e in ev], float(att[r]))
        source, meta = "template", None
        if backend is not None:
            from agent.language import recommendation_input
            from agent.llm.tasks import explain_recommendations

            rec = recommendation_input(self.engine, pset, item_id, persona.persona_id, [e["item_id"] for e in ev])
            res = explain_recommendations(backend, [rec], catalog_titles=self.engine.catalog_titles(),
                                          catalog_categories=self.engine.catalog.categories)
            if res.items[0].source != "template":
                text, source = res.items[0].text, "llm"
            meta = res.metadata()
        return {"item_id": item_id, "title": item.title,
                "persona": {"id": persona.persona_id, "name": persona.name, "description": persona.description,
                            "version": persona.version},
                "attention": {pid: round(float(a), 6) for pid, a in zip(pset.ids, att)},
                "evidence": ev, "explanation": text, "explanation_source": source, "llm": meta,
                "score": float(ps.scores[pos])}

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
        pending = Pending(events=[{"kind": "feedback", "item_id": item_id, "title": item.title, "reaction": r,
                                   "text": text, "persona_id": None, "thread_id": thread_id}])
        if pset is None or not pset.personas:
            return FeedbackOutcome(user_id=user_id, item_id=item_id, title=item.title, reaction=r,
                                   persona_id=None), pending
        pid = persona_id if persona_id in pset.ids else self.responsible_persona(user_id, item_id)
        pending.events[0]["persona_id"] = pid
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
        before, after = pset.get(persona_id), outcome.persona_after or {}
        pending = Pending()
        if (after.get("name"), after.get("description")) != (before.name, before.description):
            personas["expected_versions"] = {persona_id: before.version}
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
                 batch: list[Interaction]) -> tuple[FeedbackOutcome, dict]:
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
        personas = {"set": final.model_dump(mode="json"), "reason": "refinement",
                    "feedback": {**fb, "loss": result.loss, "guard": result.guard}}
        outcome = FeedbackOutcome(user_id=stored.user_id, item_id=item_id, title=title, reaction=r, persona_id=pid,
                                  persona_name=after.name, refinement=summary,
                                  persona_before=before.model_dump(mode="json", exclude={"embedding"}),
                                  persona_after=after.model_dump(mode="json", exclude={"embedding"}))
        return outcome, personas

    # ---- commit ------------------------------------------------------------------------
    def commit(self, user_id: str, pending: Pending, backend: LLMBackend | None = None) -> dict:
        """Apply one turn's writes together; returns what was written. Semantic memory is then
        consolidated when enough new events arrived, by ``backend`` (templates when None)."""
        store = self.engine.persona_store
        written_personas = False
        # personas and memory are two SQLite files: the persona transaction commits only after the
        # memory one did, so a failure anywhere leaves both as they were
        with store.transaction():
            with self.memory.transaction():
                if pending.personas:
                    new = PersonaSet.model_validate(pending.personas["set"])
                    if new.user_id != user_id:
                        raise UsageError("persona set", new.user_id, f"the personas of user {user_id!r} only")
                    self._check_versions(user_id, pending.personas.get("expected_versions") or {})
                    store.put(new, reason=pending.personas.get("reason", "refinement"),
                              feedback=pending.personas.get("feedback"))
                    written_personas = True
                records = []
                for ev in pending.events:
                    kind = ev["kind"]
                    if kind == "chat_turn":
                        records.append(self.memory.turn_record(ev.get("thread_id") or "", ev["role"], ev["text"]))
                    elif kind == "recommendation":
                        records.append(self.memory.shown_record(ev.get("thread_id"), ev["items"]))
                    elif kind == "feedback":
                        records.append(self.memory.feedback_record(ev["item_id"], ev["title"], ev["reaction"],
                                                                   ev.get("text"), ev.get("persona_id"),
                                                                   ev.get("thread_id")))
                    else:
                        raise UsageError("event kind", kind, ["chat_turn", "recommendation", "feedback"])
                self.memory.record(user_id, records)
        consolidated = None
        try:
            consolidated = self.memory.maybe_consolidate(user_id, backend)
        except PluralError as e:  # consolidation is best effort; the turn is already committed
            log.warning("memory consolidation failed for user %s: %s", user_id, e)
        return {"events": len(pending.events), "personas": written_personas, "consolidated": consolidated}

    def _check_versions(self, user_id: str, expected: dict[str, int]) -> None:
        """Refuse writes prepared against persona versions that are no longer current."""
        if not expected:
            return
        current = self.engine.persona_store.get(user_id)
        for pid, version in expected.items():
            now = current.get(pid).version if current is not None and pid in current.ids else None
            if now != version:
                raise PersonaConflictError(user_id, pid, version, now)


class PersonaConflictError(PluralError):
    """Writes prepared against a persona version that changed meanwhile; nothing was written."""

    def __init__(self, user_id: str, persona_id: str, expected: int, found: int | None):
        super().__init__(f"persona {persona_id!r} of user {user_id!r} changed meanwhile (version {found}, "
                         f"expected {expected}); nothing was written")
        self.user_id, self.persona_id, self.expected, self.found = user_id, persona_id, expected, found


__all__ = ["AgentConfig", "AgentRuntime", "FeedbackOutcome", "Pending", "PersonaConflictError",
           "UnknownItemError"]
