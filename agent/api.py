"""The Python agent API: recommendations, feedback, chat, personas, explanations, history.

Example (runnable: ``python docs/examples/agent_api.py``):

    >>> from agent.api import PluralAgent
    >>> agent = PluralAgent.from_dataset("ml-100k", llm="none")            # doctest: +SKIP
    >>> recs = agent.recommend("1", k=5, query="a funny animated film")     # doctest: +SKIP
    >>> recs.items[0].persona.name, recs.items[0].evidence[0].title         # doctest: +SKIP
    >>> change = agent.feedback("1", recs.items[0].item_id, "dislike", text="too childish")  # doctest: +SKIP
    >>> change.refinement["guard"]                                          # doctest: +SKIP
    >>> reply = agent.chat("1", "why the second one?", thread_id="t1")      # doctest: +SKIP
    >>> reply.response                                                      # doctest: +SKIP

Every result carries provenance: the persona and its version, attention, evidence, the
scorer and ranking mode, the prompts' names and hashes and the LLM's name.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from agent.runtime import AgentConfig, AgentRuntime, FeedbackOutcome, Pending, PersonaConflictError
from agent.threads import ThreadOwnershipError, ThreadRegistry
from memory.errors import PluralError, UnknownUserError, UsageError
from personas.model import Persona, PersonaVersion
from personas.recommendation import RecommendationList

log = logging.getLogger("plural.api")


class ChatReply(BaseModel):
    """The agent's answer to one chat message."""

    model_config = ConfigDict(extra="forbid")

    user_id: str
    thread_id: str
    response: str
    """What the agent says."""
    intent: str | None = None
    """How the message was read: recommend, refine, feedback, why, personas."""
    items: list[dict] = Field(default_factory=list)
    """The list shown this turn: item_id, title, score, rank, persona, attention, evidence, explanation."""
    answer: dict | None = None
    """Details of a why / feedback answer (persona before and after, drift guard, evidence...)."""
    error: str | None = None
    """Set when the turn could not be served; nothing was written then."""
    meta: dict = Field(default_factory=dict)
    """LLM error, fallbacks, what was written."""


class ModelExplanation(BaseModel):
    """A listed item's explanation written by the LLM (validated: it cites only the item's own
    evidence) that replaces the template sentence of the reply."""

    model_config = ConfigDict(extra="forbid")

    item_id: str
    rank: int
    title: str
    text: str


class FollowUp(BaseModel):
    """What the LLM added after a chat reply (:meth:`PluralAgent.follow_up`): only text that
    passed validation; everything else stays as the reply's templates said."""

    model_config = ConfigDict(extra="forbid")

    user_id: str
    thread_id: str
    intent: str | None = None
    explanations: list[ModelExplanation] = Field(default_factory=list)
    """Model-written explanations of the reply's list (the template stands for the others)."""
    answer: str | None = None
    """The model's sentence on a "why" question."""
    persona: dict | None = None
    """After feedback: the model's refinement of the persona's text (a FeedbackOutcome as JSON)
    when it changed the text and the drift guard accepted it."""
    note: str | None = None
    """One line for the person about what happened (rewrite kept or refused, nothing to add)."""
    meta: dict = Field(default_factory=dict)
    """Fallback counts, ``llm_error``, ``latency_ms``."""

    def lines(self) -> list[str]:
        """What to show the person, one line each (empty when the model added nothing)."""
        out = [f"#{e.rank} {e.title}: {e.text}" for e in self.explanations]
        if self.answer:
            out.append(self.answer)
        if self.note:
            out.append(self.note)
        return out


class MemoryEvent(BaseModel):
    """One episodic event of a user."""

    event_id: int
    kind: str
    text: str
    timestamp: float
    payload: dict


class ItemExplanation(BaseModel):
    """Why an item suits a user: the responsible persona, attention, evidence, a sentence."""

    model_config = ConfigDict(extra="allow")

    item_id: str
    title: str
    persona: dict | None
    attention: dict[str, float]
    evidence: list[dict]
    explanation: str
    explanation_source: str


class PluralAgent:
    """Plural as a conversational agent (see the module docstring)."""

    def __init__(self, runtime: AgentRuntime, *, postgres_url: str | None = None):
        self.runtime = runtime
        self.engine = runtime.engine
        ddir = Path(self.engine.data_dir)
        self.threads = ThreadRegistry(ddir / "threads.sqlite")
        self._llm_lock = threading.Lock()
        self._checkpointer = self._make_checkpointer(ddir, postgres_url or os.environ.get("PLURAL_POSTGRES_URL"))
        from agent.graph.builder import build_graph

        self.graph = build_graph(runtime, self._checkpointer)

    # ---- construction ------------------------------------------------------------------
    @classmethod
    def from_dataset(cls, dataset: Any = "ml-100k", *, llm: Any = "none", config: AgentConfig | None = None,
                     engine_config=None, data_dir: str | Path | None = None, progress: bool = False,
                     postgres_url: str | None = None) -> "PluralAgent":
        """Build (or reopen) the engine for a dataset name or :class:`~memory.loaders.DataSource`.

        ``llm``: a backend name (``none``, ``transformers``, ``openai``, ``vllm``), an
        :class:`~agent.llm.LLMConfig`, or an :class:`~agent.llm.LLMBackend` instance.
        """
        from agent.engine import Engine
        from memory.loaders import DataSource

        source = dataset if isinstance(dataset, DataSource) else DataSource(dataset=str(dataset))
        engine = Engine.open(source, engine_config, data_dir, progress=progress)
        return cls(AgentRuntime(engine, _backend(llm), config), postgres_url=postgres_url)

    @classmethod
    def from_data_dir(cls, path: str | Path, *, llm: Any = "none", config: AgentConfig | None = None,
                      postgres_url: str | None = None) -> "PluralAgent":
        """Open an existing data directory (built by ``plural recommend`` or :meth:`from_dataset`)."""
        from agent.engine import Engine

        engine = Engine.open_data_dir(path)
        return cls(AgentRuntime(engine, _backend(llm), config), postgres_url=postgres_url)

    @staticmethod
    def _make_checkpointer(ddir: Path, postgres_url: str | None):
        if postgres_url:
            try:
                from langgraph.checkpoint.postgres import PostgresSaver
            except ImportError as e:
                raise UsageError("postgres checkpointer", postgres_url,
                                 "install the extra: pip install 'plural[postgres]'") from e
            import psycopg

            conn = psycopg.connect(postgres_url, autocommit=True, prepare_threshold=0)
            saver = PostgresSaver(conn)
            saver.setup()
            return saver
        import sqlite3

        from langgraph.checkpoint.sqlite import SqliteSaver

        conn = sqlite3.connect(str(ddir / "checkpoints.sqlite"), check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        return SqliteSaver(conn)

    # ---- the API -----------------------------------------------------------------------
    def recommend(self, user: str, k: int = 10, query: str | None = None, *, mode: str | None = None,
                  request: str | None = None) -> RecommendationList:
        """Top-k for ``user`` through the chat's request path: ``request`` is read into a
        :class:`~personas.request.Request` (genres, period, "like X", "not X"...), ``query`` adds
        free-text content matched against the catalog. Titles the user reacted to are never
        listed. The list shown is written to episodic memory."""
        if not isinstance(k, int) or isinstance(k, bool) or k <= 0:
            raise UsageError("k", k, "a positive integer")
        parsed, meta = self.runtime.parse_request(user, request or "")
        if query:
            parsed = parsed.model_copy(update={"content": " ".join(filter(None, [parsed.content, query]))})
        out = self.runtime.recommend_request(user, parsed, k, mode)
        out.meta["read_request"] = meta
        self.runtime.commit(str(user), Pending(events=[self.runtime.shown_event(out, None)]))
        return out

    def feedback(self, user: str, item: str, reaction: str | float | int, text: str | None = None) -> FeedbackOutcome:
        """React to an item (``like``/``dislike``/``accept``/``reject`` or a 1-5 rating, optional
        free text): the persona it concerns is updated and refined; every version is kept."""
        outcome, pending = self.runtime.feedback(user, item, reaction, text)
        self.runtime.commit(str(user), pending)
        return outcome

    def chat(self, user: str, message: str, thread_id: str | None = None) -> ChatReply:
        """One chat turn. A new thread is started when ``thread_id`` is None; a thread belongs to
        the user who started it. A turn that fails leaves the thread and memory as they were."""
        user = str(user)
        try:
            self.runtime.check_user(user)
        except UnknownUserError as e:
            return ChatReply(user_id=user, thread_id=thread_id or "", response=str(e), error=str(e))
        thread_id = thread_id or uuid.uuid4().hex[:12]
        try:
            last_good = self.threads.claim(thread_id, user)
        except (ThreadOwnershipError, UsageError) as e:
            return ChatReply(user_id=user, thread_id=thread_id, response=str(e), error=str(e))
        config: dict = {"configurable": {"thread_id": thread_id}}
        if last_good:
            config["configurable"]["checkpoint_id"] = last_good
        try:
            state = self.graph.invoke({"user_id": user, "thread_id": thread_id, "message": message or ""}, config)
        except PluralError as e:
            msg = f"Sorry, I could not do that: {e}. Nothing was changed; the conversation continues."
            log.warning("chat turn failed for user %s thread %s: %s", user, thread_id, e)
            return ChatReply(user_id=user, thread_id=thread_id, response=msg, error=str(e))
        except Exception as e:  # noqa: BLE001 - a failed turn must not end the conversation
            log.exception("chat turn failed for user %s thread %s", user, thread_id)
            msg = (f"Sorry, something went wrong on my side ({type(e).__name__}). Nothing was changed; "
                   "please try again.")
            return ChatReply(user_id=user, thread_id=thread_id, response=msg, error=f"{type(e).__name__}: {e}")
        snapshot = self.graph.get_state({"configurable": {"thread_id": thread_id}})
        if state.get("error") is None:
            self.threads.completed(thread_id, snapshot.config["configurable"]["checkpoint_id"])
        rec = state.get("recommendation") or {}
        meta = dict(state.get("meta") or {})
        meta["committed"] = state.get("committed")
        if rec:
            meta["recommendation"] = {k: rec.get(k) for k in ("provenance", "meta", "mode")}
        answer = state.get("answer") or {}
        errors = [meta.get("llm_error"), (rec.get("meta") or {}).get("llm_error") if rec else None,
                  (answer.get("refinement") or {}).get("llm_error"), (answer.get("llm") or {}).get("llm_error")]
        meta["llm_error"] = next((e for e in errors if e), None)
        return ChatReply(user_id=user, thread_id=thread_id, response=state.get("response", ""),
                         intent=(state.get("understanding") or {}).get("intent"),
                         items=rec.get("items", []) if rec else [], answer=state.get("answer"),
                         error=state.get("error"), meta=meta)

    def follow_up(self, reply: ChatReply) -> FollowUp:
        """What the LLM adds to a reply after it was shown (``llm_prose="after"``, the default):
        its explanations of the list, its sentence on "why", or, after feedback, its rewrite of
        the persona (committed only while the persona is still at the version the turn left;
        else dropped). Slow on a CPU, never on the turn's path; safe to run in a background
        thread while the next turn is served. Without an LLM, or with ``llm_prose`` other than
        ``after``, it returns an empty :class:`FollowUp` at once."""
        import time

        rt = self.runtime
        out = FollowUp(user_id=reply.user_id, thread_id=reply.thread_id, intent=reply.intent)
        if rt.backend is None or rt.config.llm_prose != "after" or reply.error:
            return out
        t0 = time.perf_counter()
        with self._llm_lock:  # one generation at a time on this backend
            try:
                self._follow_up(reply, out)
            except PluralError as e:
                out.meta["llm_error"] = str(e)
                log.warning("follow-up for user %s thread %s failed: %s", reply.user_id, reply.thread_id, e)
        out.meta["latency_ms"] = round(1000 * (time.perf_counter() - t0), 1)
        return out

    def _follow_up(self, reply: ChatReply, out: FollowUp) -> None:
        rt, user = self.runtime, reply.user_id
        if reply.intent in ("recommend", "refine") and reply.items:
            rec = RecommendationList.model_validate({"user_id": user, "mode": rt.config.mode, "k": len(reply.items),
                                                     "items": reply.items})
            if rec.items and rec.items[0].persona is not None:
                meta = rt.language.explain_list(rec, backend=rt.backend)
                out.meta.update(fallbacks=meta.get("fallbacks"), llm_error=meta.get("llm_error"))
                out.explanations = [ModelExplanation(item_id=r.item_id, rank=r.rank, title=r.title, text=r.explanation)
                                    for r in rec.items if r.explanation_source == "llm"]
        elif reply.intent == "why" and reply.answer and reply.answer.get("persona"):
            a = reply.answer
            ans = rt.explain_item(user, a["item_id"], a["persona"]["id"], backend=rt.backend)
            out.meta.update(llm=ans.get("llm"))
            if ans["explanation_source"] == "llm":
                out.answer = ans["explanation"]
        elif reply.intent == "feedback" and reply.answer and reply.answer.get("persona_id"):
            a = reply.answer
            outcome, pending = rt.refine_text(user, a["item_id"], a["reaction"], a.get("text"),
                                              thread_id=reply.thread_id, persona_id=a["persona_id"])
            ref = outcome.refinement or {}
            out.meta.update(fallbacks=ref.get("fallbacks"), llm_error=ref.get("llm_error"))
            if pending.personas:
                try:
                    rt.commit(user, pending)
                except PersonaConflictError as e:
                    out.note = f"The model's rewrite of \u201c{outcome.persona_name}\u201d came too late: {e}."
                    return
                out.persona = outcome.model_dump(mode="json")
                after = outcome.persona_after or {}
                who = "The model rewrote" if ref.get("rewrite_source") not in (None, "template") else "I updated"
                out.note = f"{who} your \u201c{after.get('name')}\u201d taste: {after.get('description')}"
            elif ref.get("proposed"):
                out.note = ("The model proposed a new description of that taste, but it described the titles "
                            "you liked before less well, so I kept the current one.")

    def transcript(self, thread_id: str, user: str) -> list[dict]:
        """The turns of a thread (the owner only)."""
        last_good = self.threads.last_checkpoint(thread_id, str(user))  # reading starts no thread
        if not last_good:
            return []
        snap = self.graph.get_state({"configurable": {"thread_id": thread_id, "checkpoint_id": last_good}})
        return list(snap.values.get("transcript") or [])

    def personas(self, user: str) -> list[Persona]:
        """The user's current personas."""
        self.runtime.check_user(user)
        return self.engine.recommender.persona_set(str(user)).personas

    def persona_versions(self, user: str, persona_id: str | None = None) -> list[PersonaVersion]:
        """Every stored version (with the feedback that caused it), oldest first."""
        self.runtime.check_user(user)
        return self.engine.persona_store.versions(str(user), persona_id)

    def rollback(self, user: str, persona_id: str, version: int) -> Persona:
        """Make an earlier version of a persona current again (recorded as a new version)."""
        self.runtime.check_user(user)
        return self.engine.persona_store.rollback(str(user), persona_id, version)

    def explain(self, user: str, item: str) -> ItemExplanation:
        """Why ``item`` suits ``user``: persona, attention, evidence and a sentence."""
        return ItemExplanation.model_validate(self.runtime.explain_item(user, item))

    def history(self, user: str, limit: int = 50) -> list[MemoryEvent]:
        """The user's episodic events, newest first."""
        self.runtime.check_user(user)
        return [MemoryEvent(event_id=r.record_id, kind=r.kind, text=r.text, timestamp=r.timestamp,
                            payload=r.payload) for r in self.runtime.memory.history(str(user), limit)]

    def facts(self, user: str) -> list[dict]:
        """The user's semantic memory: facts with the events they cite."""
        self.runtime.check_user(user)
        return [{"text": f.text, "sources": list(f.source_ids)} for f in self.runtime.memory.semantic.facts(str(user))]

    def close(self) -> None:
        self.threads.close()
        self.engine.close()


def _backend(llm: Any):
    from agent.llm import LLMBackend, LLMConfig, make_backend

    if llm is None:
        return None
    if isinstance(llm, LLMBackend):
        return llm
    if isinstance(llm, LLMConfig):
        return make_backend(llm)
    return make_backend(LLMConfig(backend=str(llm)))
