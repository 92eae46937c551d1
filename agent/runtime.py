"""What the agent can do, as plain operations over the engine, the LLM and memory.

The LangGraph nodes (``agent.graph``) and the Python API (``agent.api``) both call these.
Operations that change something return their writes as :class:`Pending` instead of writing;
:meth:`AgentRuntime.commit` applies a turn's writes together (a persona-store transaction around
a memory transaction), so a turn's writes are complete or absent.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from agent.agent_memory import AgentMemory, MemoryConfig
from agent.language import LanguageConfig, LanguageLayer
from agent.llm.base import LLMBackend
from agent.refine import Interaction, PersonaRefiner, RefineConfig
from memory.errors import PluralError, UnknownItemError, UnknownUserError, UsageError
from personas.model import PersonaSet
from personas.recommendation import RecommendationList, template_explanation

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
    explain: bool = True
    """Explain lists with the LLM (templates when there is none)."""
    intent_parser: Literal["rules", "llm"] = "rules"
    """Who reads a chat message: the rules, or the LLM validated against the rules' fallback."""
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
        self.memory = AgentMemory(engine.memory_store(), engine.embedder(), self.config.memory)
        self.refiner = PersonaRefiner(engine.catalog, engine.embedder(), backend, self.config.refine)

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

    # ---- recommend ---------------------------------------------------------------------
    def recommend(self, user_id: str, k: int | None = None, *, request: str | None = None,
                  query: str | None = None, mode: str | None = None, like_item: str | None = None,
                  persona_focus: dict[str, float] | None = None, exclude: list[str] | None = None,
                  explain: bool | None = None, routing: tuple[dict, dict] | None = None) -> RecommendationList:
        """A list for the user, excluding what they already reacted to in conversation.

        ``like_item`` asks for items like one listed item: its persona is focused and the
        catalog is narrowed to its semantic neighbours.
        """
        user_id = self.check_user(user_id)
        reacted = list(self.memory.reacted_items(user_id)) + list(exclude or [])
        explain = self.config.explain if explain is None else explain
        focus = dict(persona_focus or {})
        if like_item is not None:
            like_item = self.check_item(like_item)
            pid = self.responsible_persona(user_id, like_item)
            if pid:
                focus[pid] = max(focus.get(pid, 1.0), self.config.language.route_boost)
            query = query or self.engine.catalog.get(like_item).text
            reacted.append(like_item)
        out = self.language.recommend(user_id, k or self.config.k, mode or self.config.mode, request=request,
                                      explain=explain, query=query, exclude_items=reacted or None,
                                      persona_focus=focus or None, routing=routing)
        if like_item is not None and len(out.items) < (k or self.config.k):  # too few neighbours: focus only
            out = self.language.recommend(user_id, k or self.config.k, mode or self.config.mode, request=request,
                                          explain=explain, exclude_items=reacted or None,
                                          persona_focus=focus or None, routing=routing)
        return out

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

    def explain_item(self, user_id: str, item_id: str, persona_id: str | None = None) -> dict:
        """Why ``item_id`` suits the user: its persona, the attention, the evidence and a sentence."""
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
        if self.backend is not None and self.config.explain:
            from agent.llm.tasks import RecommendationInput, explain_recommendations

            res = explain_recommendations(self.backend, [RecommendationInput(
                item_id=item_id, title=item.title, categories=list(item.categories), persona_id=persona.persona_id,
                persona_name=persona.name, persona_description=persona.description,
                evidence_titles=[e["title"] for e in ev])], catalog_titles=self.engine.catalog_titles())
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
                 thread_id: str | None = None, persona_id: str | None = None) -> tuple[FeedbackOutcome, Pending]:
        """A reaction to an item: numeric persona update and textual refinement, as pending writes."""
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
        before = pset.get(pid)
        updated = self.refiner.numeric_update(pset, pid, item_id, r)
        batch = [Interaction(self.refiner.view(item_id), r, text)]
        for ev in self.memory.feedback_events(user_id, limit=20):
            if ev.payload.get("persona_id") == pid and ev.payload.get("item_id") != item_id:
                batch.append(Interaction(self.refiner.view(ev.payload["item_id"]), ev.payload["reaction"],
                                         ev.payload.get("text")))
            if len(batch) >= self.config.refine.alignment_batch:
                break
        rejected = [i for i, rr in self.memory.reacted_items(user_id).items() if rr == "dislike"]
        if r == "dislike":
            rejected.append(item_id)
        result = self.refiner.refine(updated, pid, batch, negatives=rejected)
        final = updated.model_copy(update={"personas": [result.after if p.persona_id == pid else p
                                                        for p in updated.personas]})
        summary = result.summary()
        # the refiner saw the numerically updated persona: report changes against the stored one
        summary["weight"] = {"before": before.weight, "after": final.get(pid).weight}
        summary["evidence_added"] = [e for e in final.get(pid).evidence if e not in before.evidence]
        fb = {"item_id": item_id, "title": item.title, "reaction": r, "text": text, "thread_id": thread_id}
        pending.personas = {"set": final.model_dump(mode="json"), "reason": "refinement",
                            "feedback": {**fb, "loss": result.loss, "guard": result.guard}}
        after = final.get(pid)
        return FeedbackOutcome(user_id=user_id, item_id=item_id, title=item.title, reaction=r, persona_id=pid,
                               persona_name=after.name, refinement=summary,
                               persona_before=before.model_dump(mode="json", exclude={"embedding"}),
                               persona_after=after.model_dump(mode="json", exclude={"embedding"})), pending

    # ---- commit ------------------------------------------------------------------------
    def commit(self, user_id: str, pending: Pending) -> dict:
        """Apply one turn's writes together; returns what was written."""
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
                    store.put(new, reason=pending.personas.get("reason", "refinement"),
                              feedback=pending.personas.get("feedback"))
                    written_personas = True
                for ev in pending.events:
                    kind = ev["kind"]
                    if kind == "chat_turn":
                        self.memory.record_turn(user_id, ev.get("thread_id") or "", ev["role"], ev["text"])
                    elif kind == "recommendation":
                        self.memory.record_shown(user_id, ev.get("thread_id"), ev["items"])
                    elif kind == "feedback":
                        self.memory.record_feedback(user_id, ev["item_id"], ev["title"], ev["reaction"],
                                                    ev.get("text"), ev.get("persona_id"), ev.get("thread_id"))
                    else:
                        raise UsageError("event kind", kind, ["chat_turn", "recommendation", "feedback"])
        consolidated = None
        try:
            consolidated = self.memory.maybe_consolidate(user_id, self.backend)
        except PluralError as e:  # consolidation is best effort; the turn is already committed
            log.warning("memory consolidation failed for user %s: %s", user_id, e)
        return {"events": len(pending.events), "personas": written_personas, "consolidated": consolidated}


__all__ = ["AgentConfig", "AgentRuntime", "FeedbackOutcome", "Pending", "UnknownItemError"]
