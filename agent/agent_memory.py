"""The agent's memory of each user: episodic events and semantic facts, on the engine's FAISS
+ SQLite store.

* Episodic: every chat turn (``chat_turn``), every list shown (``recommendation``), every
  reaction (``feedback``), time-stamped, searchable by similarity.
* Semantic: facts about the user's tastes, each citing the episodic events it came from,
  consolidated from the events by the LLM every ``consolidate_every`` events (a deterministic
  summary of the feedback when the model fails or there is none).
* Recall blends recency and similarity, recency weighted more (PRIME: recency-based recall
  beats similarity-based recall for personalisation).

Users are separate namespaces of the store: nothing here can read or write another user's
memory. Writes of one agent turn go through :meth:`AgentMemory.transaction`: all or nothing.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from agent.llm.base import LLMBackend, SamplingConfig
from agent.llm.validated import FallbackCounter, Job, Rejected, run_validated
from memory.memories import EpisodicMemory, SemanticMemory
from memory.store import MemoryRecord
from prompts import load_prompt

log = logging.getLogger("plural.memory")

class MemoryConfig(BaseModel):
    """How the agent remembers."""

    model_config = ConfigDict(extra="forbid")

    consolidate_every: int = Field(6, ge=1)
    """Consolidate semantic memory after this many new episodic events."""
    recall_k: int = Field(6, ge=1)
    """Events recalled per turn."""
    recency_weight: float = Field(0.6, ge=0, le=1)
    """Weight of recency against similarity in recall (recency matters more: PRIME)."""
    half_life_days: float = Field(30.0, gt=0)
    """Recency half-life."""
    max_facts: int = Field(8, ge=1)
    """Facts kept per user."""


class _Fact(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str
    sources: list[int]


class _Facts(BaseModel):
    model_config = ConfigDict(extra="forbid")
    facts: list[_Fact]


_NEGATIVE = re.compile(r"\b(reject\w*|dislike\w*|hate\w*|did ?n[o']?t (?:like|enjoy)|turn\w* down|refus\w*|"
                       r"skip\w*|not (?:a fan|interested))\b", re.I)
_POSITIVE = re.compile(r"\b(lik(?:e|es|ed)|lov(?:e|es|ed)|enjoy\w*|adore\w*|accept\w*|fan of)\b", re.I)


def check_fact(text: str, cited: Sequence[MemoryRecord], catalog_titles: Sequence[str] = ()) -> None:
    """A consolidated fact must be true of the events it cites: every title it names is one of
    theirs (with that title's year), and a title it says was rejected (liked) was rejected
    (liked) in them. Raises :class:`Rejected` (``unsupported_fact``) otherwise."""
    from agent.llm.claims import title_year
    from agent.llm.tasks import title_index

    reactions: dict[str, set[str]] = {}
    for e in cited:
        t = e.payload.get("title")
        if t:
            reactions.setdefault(t, set()).add(e.payload.get("reaction") or "")
        for it in e.payload.get("items") or []:  # a list shown
            reactions.setdefault(it.get("title", ""), set())
    known = tuple(dict.fromkeys([*catalog_titles, *reactions]))
    named = [title_index(known).titles[pos] for pos, _ in title_index(known).find(text)] if known else []
    for title in named:
        if title not in reactions:
            raise Rejected("unsupported_fact", f"the fact names {title!r}, which none of its cited events is about")
    years = {y for t in named if (y := title_year(t)) is not None}
    for m in re.finditer(r"(?<!\d)(1[89]\d\d|20\d\d)(?!\d)", text):
        if int(m.group(1)) not in years:
            raise Rejected("unsupported_fact", f"the fact says {m.group(1)}, the year of none of the titles it names")
    negative, positive = bool(_NEGATIVE.search(text)), bool(_POSITIVE.search(_NEGATIVE.sub(" ", text)))
    for title in named:
        got = reactions[title]
        if negative and not positive and "dislike" not in got:
            raise Rejected("unsupported_fact", f"the fact says {title!r} was rejected; the cited events say "
                                               f"{sorted(got - {''}) or 'it was only shown'}")
        if positive and not negative and "like" not in got:
            raise Rejected("unsupported_fact", f"the fact says {title!r} was liked; the cited events say "
                                               f"{sorted(got - {''}) or 'it was only shown'}")


class AgentMemory:
    """Episodic and semantic memory of users (see the module docstring)."""

    def __init__(self, store, embedder, config: MemoryConfig | None = None, catalog_titles: Sequence[str] = ()):
        self.store = store
        self.config = config or MemoryConfig()
        self.catalog_titles = tuple(catalog_titles)
        """Every title of the catalog: a fact may name only the titles of the events it cites."""
        self.episodic = EpisodicMemory(store, embedder)
        self.semantic = SemanticMemory(store, embedder)

    def transaction(self):
        """All writes inside are applied together or not at all."""
        return self.store.transaction()

    # ---- episodic writes ---------------------------------------------------------------
    @staticmethod
    def turn_record(thread_id: str, role: str, text: str) -> MemoryRecord:
        """A chat turn. Its text is what recall embeds and compares: the opening of a long
        reply says what it was about (the whole reply stays in the thread's transcript)."""
        body = f"{role}: {text}"
        return MemoryRecord(kind="chat_turn", text=body if len(body) <= 300 else body[:297] + "...",
                            payload={"thread_id": thread_id, "role": role})

    @staticmethod
    def shown_record(thread_id: str | None, items: Sequence[dict]) -> MemoryRecord:
        """A list shown to the user: ``items`` are ``{item_id, title, persona_id}``."""
        titles = "; ".join(i["title"] for i in items)
        return MemoryRecord(kind="recommendation", text=f"shown: {titles}",
                            payload={"thread_id": thread_id, "items": list(items)})

    @staticmethod
    def feedback_record(item_id: str, title: str, reaction: str, text: str | None, persona_id: str | None,
                        thread_id: str | None = None) -> MemoryRecord:
        words = "liked" if reaction == "like" else "disliked"
        body = f"{words} {title}" + (f": {text}" if text else "")
        return MemoryRecord(kind="feedback", text=body,
                            payload={"item_id": item_id, "title": title, "reaction": reaction, "text": text,
                                     "persona_id": persona_id, "thread_id": thread_id})

    def record(self, user_id: str, records: Sequence[MemoryRecord]) -> list[MemoryRecord]:
        """Store events of one user in one write (one embedding call for all of them)."""
        now = self.episodic.clock()
        stamped = [r if r.timestamp else r.model_copy(update={"timestamp": now}) for r in records]
        return self.episodic.record_many(user_id, stamped) if stamped else []

    def record_turn(self, user_id: str, thread_id: str, role: str, text: str) -> MemoryRecord:
        return self.record(user_id, [self.turn_record(thread_id, role, text)])[0]

    def record_shown(self, user_id: str, thread_id: str | None, items: Sequence[dict]) -> MemoryRecord:
        """A list shown to the user: ``items`` are ``{item_id, title, persona_id}``."""
        return self.record(user_id, [self.shown_record(thread_id, items)])[0]

    def record_feedback(self, user_id: str, item_id: str, title: str, reaction: str, text: str | None,
                        persona_id: str | None, thread_id: str | None = None) -> MemoryRecord:
        return self.record(user_id, [self.feedback_record(item_id, title, reaction, text, persona_id, thread_id)])[0]

    # ---- reads -------------------------------------------------------------------------
    def feedback_events(self, user_id: str, limit: int | None = None) -> list[MemoryRecord]:
        """Feedback events, newest first."""
        return self.store.list(self.episodic_ns(user_id), kind="feedback", limit=limit, newest_first=True)

    def reacted_items(self, user_id: str) -> dict[str, str]:
        """item id -> latest reaction of the user."""
        out: dict[str, str] = {}
        for r in reversed(self.feedback_events(user_id)):
            out[r.payload["item_id"]] = r.payload["reaction"]
        return out

    def history(self, user_id: str, limit: int = 50) -> list[MemoryRecord]:
        """The user's episodic events, newest first."""
        return self.store.list(self.episodic_ns(user_id), limit=limit, newest_first=True)

    def recall(self, user_id: str, text: str, k: int | None = None) -> list[dict]:
        """Events blending recency and similarity, plus the user's semantic facts."""
        if self.store.count(self.episodic_ns(user_id)) == 0:
            events = []
        else:
            events = self.episodic.recall(user_id, text or "recommendation", k=k or self.config.recall_k,
                                          recency_weight=self.config.recency_weight,
                                          half_life_days=self.config.half_life_days)
        out = [{"kind": e.record.kind, "text": e.record.text, "score": round(e.score, 4),
                "recency": round(e.recency, 4), "similarity": round(e.similarity, 4),
                "event_id": e.record.record_id} for e in events]
        facts = [{"kind": "fact", "text": f.text, "sources": list(f.source_ids)} for f in self.semantic.facts(user_id)]
        return out + facts

    def episodic_ns(self, user_id: str):
        from memory.memories import episodic_namespace

        return episodic_namespace(user_id)

    def events_since_consolidation(self, user_id: str) -> list[MemoryRecord]:
        facts = self.semantic.facts(user_id)
        since = max((f.timestamp for f in facts), default=0.0)
        # the store filters by time (SQL on the persistent store): no scan of the whole history per turn
        return [r for r in self.store.list(self.episodic_ns(user_id), since=since, newest_first=False)
                if r.timestamp > since and r.kind in ("feedback", "chat_turn")]

    # ---- consolidation -----------------------------------------------------------------
    def maybe_consolidate(self, user_id: str, backend: LLMBackend | None, force: bool = False) -> dict | None:
        """Consolidate semantic memory when enough new events arrived; returns what happened."""
        new = self.events_since_consolidation(user_id)
        if not new or (len(new) < self.config.consolidate_every and not force):
            return None
        return self.consolidate(user_id, backend, new)

    def consolidate(self, user_id: str, backend: LLMBackend | None, events: Sequence[MemoryRecord]) -> dict:
        """Replace the user's facts with ones consolidated from ``events`` (and the old facts)."""
        old = self.semantic.facts(user_id)
        events = list(events)[-24:]
        ids = [e.record_id for e in events]
        prompt = load_prompt("consolidate_memory")

        def check(out: _Facts) -> list[_Fact]:
            if not out.facts:
                raise Rejected("empty", "no facts")
            for f in out.facts:
                if not f.sources or any(s < 1 or s > len(events) for s in f.sources):
                    raise Rejected("bad_source", f"fact {f.text!r} cites events outside 1..{len(events)}")
                if len(f.text) > 160 or len(f.text.split()) < 3:
                    raise Rejected("length", f"fact {f.text!r} is not one short sentence")
                check_fact(f.text, [events[s - 1] for s in f.sources], self.catalog_titles)
            return out.facts[: self.config.max_facts]

        job = Job(variables={"current_facts": [f.text for f in old],
                             "events": [{"n": n, "kind": e.kind, "text": e.text} for n, e in
                                        enumerate(events, start=1)],
                             "max_facts": self.config.max_facts},
                  schema=prompt.output_schema, check=check)
        counter = FallbackCounter()
        outcomes, llm_error = run_validated(backend, prompt, [job], _Facts, SamplingConfig(max_tokens=256,
                                                                                           frequency_penalty=0.3),
                                            counter, task="consolidate_memory")
        o = outcomes[0]
        if o.value is not None:
            facts = [(f.text, [ids[s - 1] for s in f.sources]) for f in o.value]
            source = o.source
        else:
            facts = self._template_facts(events, old)
            source = "template"
            counter.record("template", o.reason)
        if facts:
            self.semantic.replace_facts(user_id, [MemoryRecord(kind="fact", text=t, source_ids=list(s))
                                                  for t, s in facts])
        return {"facts": [t for t, _ in facts], "source": source, "fallbacks": counter.as_dict(),
                "llm_error": llm_error}

    def _template_facts(self, events: Sequence[MemoryRecord], old) -> list[tuple[str, list[int]]]:
        """Deterministic facts: what the user liked and disliked lately, citing those events."""
        liked = [e for e in events if e.kind == "feedback" and e.payload.get("reaction") == "like"]
        disliked = [e for e in events if e.kind == "feedback" and e.payload.get("reaction") == "dislike"]
        facts: list[tuple[str, list[int]]] = []
        if liked:
            titles = ", ".join(e.payload["title"] for e in liked[-3:])
            facts.append((f"Recently liked {titles}.", [e.record_id for e in liked[-3:]]))
        if disliked:
            titles = ", ".join(e.payload["title"] for e in disliked[-3:])
            reasons = [e.payload.get("text") for e in disliked[-3:] if e.payload.get("text")]
            why = f" ({'; '.join(reasons)[:80]})" if reasons else ""
            facts.append((f"Recently rejected {titles}{why}.", [e.record_id for e in disliked[-3:]]))
        kept = [(f.text, list(f.source_ids)) for f in old if f.text not in {t for t, _ in facts}]
        return (facts + kept)[: self.config.max_facts]

