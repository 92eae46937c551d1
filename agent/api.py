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

from agent.graph.builder import Answer, AgentState, FeedbackAnswer, TranscriptTurn, WhyAnswer, state_serde
from agent.runtime import AgentConfig, AgentRuntime, FeedbackOutcome, ItemExplanation, PersonaConflictError
from agent.writes import Committed
from memory.errors import PluralError, UnknownUserError, UsageError
from personas.model import Persona, PersonaVersion
from personas.recommendation import Recommendation, RecommendationList
from personas.request import Request

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
    items: list[Recommendation] = Field(default_factory=list)
    """The list shown this turn: each item with its persona, attention, evidence, explanation."""
    answer: Answer | None = None
    """A why answer (persona, attention, evidence) or a feedback outcome (persona before and after)."""
    request: Request | None = None
    """The request as read (genres, period, "like X", exclusions...)."""
    error: str | None = None
    """Set when the turn could not be served; nothing was written then."""
    committed: Committed | None = None
    """What the turn wrote (events, persona versions, exposure), or None when it could not be served."""
    meta: dict = Field(default_factory=dict)
    """How the message was read, LLM error and fallbacks, the list's provenance."""


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
    persona: FeedbackOutcome | None = None
    """After feedback: the model's refinement of the persona's text, when it changed the text
    and the drift guard accepted it."""
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


def reply_from_state(state: AgentState) -> ChatReply:
    """The :class:`ChatReply` of a finished turn's state (the graph's output, here or from the
    LangGraph server)."""
    rec = state.recommendation
    meta = dict(state.meta)
    if rec is not None:
        meta["recommendation"] = {"provenance": rec.provenance, "meta": rec.meta, "mode": rec.mode}
    a = state.answer
    errors = [meta.get("llm_error"), rec.meta.get("llm_error") if rec is not None else None,
              (a.refinement or {}).get("llm_error") if isinstance(a, FeedbackAnswer) else None,
              (a.llm or {}).get("llm_error") if isinstance(a, WhyAnswer) else None]
    meta["llm_error"] = next((e for e in errors if e), None)
    return ChatReply(user_id=state.user_id, thread_id=state.thread_id, response=state.response,
                     intent=state.understanding.intent if state.understanding else None,
                     items=list(rec.items) if rec is not None else [], answer=a, request=state.request,
                     error=state.error, committed=state.committed, meta=meta)


class PluralAgent:
    """Plural as a conversational agent (see the module docstring)."""

    def __init__(self, runtime: AgentRuntime, *, postgres_url: str | None = None):
        self.runtime = runtime
        self.engine = runtime.engine
        ddir = Path(self.engine.data_dir)
        self.threads = runtime.threads
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
                      postgres_url: str | None = None, storage: Any = None) -> "PluralAgent":
        """Open an existing data directory (built by ``plural recommend`` or :meth:`from_dataset`);
        ``storage`` as in :meth:`agent.engine.Engine.open` (None: ``$PLURAL_POSTGRES_URL`` or the
        data directory's files; a ``postgresql://`` URL: that database)."""
        from agent.engine import Engine

        engine = Engine.open_data_dir(path, storage=storage)
        return cls(AgentRuntime(engine, _backend(llm), config), postgres_url=postgres_url)

    def _make_checkpointer(self, ddir: Path, postgres_url: str | None):
        """The thread-state saver: ``<data dir>/checkpoints.sqlite``, or with ``postgres_url`` a
        ``PostgresSaver`` on a pool of its own (1 to 8 connections, :mod:`agent.checkpoints`) whose
        tables live in the data directory's schema (the engine's, when its state is in Postgres).
        An engine whose state is in Postgres keeps its checkpoints there too, URL or not."""
        pg = getattr(self.engine, "postgres", None)
        postgres_url = postgres_url or (pg.url if pg is not None else None)
        if postgres_url:
            from agent.checkpoints import postgres_checkpointer
            from agent.postgres import data_dir_schema

            schema = pg.schema if pg is not None else (os.environ.get("PLURAL_POSTGRES_SCHEMA")
                                                       or data_dir_schema(ddir, getattr(self.engine, "manifest", None)))
            return postgres_checkpointer(postgres_url, schema, serde=state_serde())
        import sqlite3

        from langgraph.checkpoint.sqlite import SqliteSaver

        conn = sqlite3.connect(str(ddir / "checkpoints.sqlite"), check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        return SqliteSaver(conn, serde=state_serde())

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
        self.runtime.commit(str(user), self.runtime.shown(out, None))
        return out

    def feedback(self, user: str, item: str, reaction: str | float | int, text: str | None = None) -> FeedbackOutcome:
        """React to an item (``like``/``dislike``/``accept``/``reject`` or a 1-5 rating, optional
        free text): the persona it concerns is updated and refined; every version is kept."""
        outcome, pending = self.runtime.feedback(user, item, reaction, text)
        self.runtime.commit(str(user), pending)
        return outcome

    def chat(self, user: str, message: str, thread_id: str | None = None) -> ChatReply:
        """One chat turn. A new thread is started when ``thread_id`` is None; a thread belongs to
        the user who started it. A turn that fails leaves the thread and memory as they were.
        Safe to call from several threads at once (a server): turns on the same persona are
        committed one after the other, each recomputed on the state the other left."""
        user = str(user)
        try:
            self.runtime.check_user(user)
        except UnknownUserError as e:
            return ChatReply(user_id=user, thread_id=thread_id or "", response=str(e), error=str(e))
        thread_id = thread_id or uuid.uuid4().hex[:12]
        try:
            self.threads.check_id(thread_id)
        except UsageError as e:
            return ChatReply(user_id=user, thread_id=thread_id, response=str(e), error=str(e))
        config: dict = {"configurable": {"thread_id": thread_id}}
        try:
            # one checkpoint per turn, written when it ends: only the last node writes the thread state
            out = self.graph.invoke({"user_id": user, "thread_id": thread_id, "message": message or ""}, config,
                                    durability="exit")
        except PluralError as e:
            msg = f"Sorry, I could not do that: {e}. Nothing was changed; the conversation continues."
            log.warning("chat turn failed for user %s thread %s: %s", user, thread_id, e)
            return ChatReply(user_id=user, thread_id=thread_id, response=msg, error=str(e))
        except Exception as e:  # noqa: BLE001 - a failed turn must not end the conversation
            log.exception("chat turn failed for user %s thread %s", user, thread_id)
            msg = (f"Sorry, something went wrong on my side ({type(e).__name__}). Nothing was changed; "
                   "please try again.")
            return ChatReply(user_id=user, thread_id=thread_id, response=msg, error=f"{type(e).__name__}: {e}")
        return reply_from_state(AgentState.model_validate(out))

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
        rt, user, a = self.runtime, reply.user_id, reply.answer
        if reply.intent in ("recommend", "refine") and reply.items:
            rec = RecommendationList(user_id=user, mode=rt.config.mode, k=len(reply.items),
                                     items=[r.model_copy(deep=True) for r in reply.items])
            if rec.items[0].persona is not None:
                meta = rt.language.explain_list(rec, backend=rt.backend)
                out.meta.update(fallbacks=meta.get("fallbacks"), llm_error=meta.get("llm_error"))
                out.explanations = [ModelExplanation(item_id=r.item_id, rank=r.rank, title=r.title, text=r.explanation)
                                    for r in rec.items if r.explanation_source == "llm"]
        elif isinstance(a, WhyAnswer) and a.persona is not None:
            ans = rt.explain_item(user, a.item_id, a.persona.persona_id, backend=rt.backend)
            out.meta.update(llm=ans.llm)
            if ans.explanation_source == "llm":
                out.answer = ans.explanation
        elif isinstance(a, FeedbackAnswer) and a.persona_id:
            outcome, pending = rt.refine_text(user, a.item_id, a.reaction, a.text, thread_id=reply.thread_id,
                                              persona_id=a.persona_id)
            ref = outcome.refinement or {}
            out.meta.update(fallbacks=ref.get("fallbacks"), llm_error=ref.get("llm_error"))
            by_model = ref.get("rewrite_source") in ("llm", "llm_retry")
            if pending.personas and not by_model:
                # the model wrote nothing that passed (the template stood in): the turn already made
                # the template's update, so the follow-up adds no version of its own
                out.note = ("The model wrote no rewrite of that taste that passed the checks; "
                            "it stays as your reaction left it.")
                return
            if pending.personas:
                try:
                    rt.commit(user, pending)
                except PersonaConflictError as e:
                    out.note = f"The model's rewrite of \u201c{outcome.persona_name}\u201d came too late: {e}."
                    return
                out.persona = outcome
                after = outcome.persona_after
                out.note = f"The model rewrote your \u201c{after.name}\u201d taste: {after.description}"
            elif ref.get("proposed"):
                out.note = ("The model proposed a new description of that taste, but it described the titles "
                            "you liked before less well, so I kept the current one.")

    def transcript(self, thread_id: str, user: str) -> list[TranscriptTurn]:
        """The turns of a thread (its owner only: another user's thread raises
        :class:`~agent.threads.ThreadOwnershipError`; reading starts no thread)."""
        self.threads.check(thread_id, str(user))
        if self.threads.owner(thread_id) is None:
            return []
        snap = self.graph.get_state({"configurable": {"thread_id": thread_id}})
        return [TranscriptTurn.model_validate(t) for t in snap.values.get("transcript") or []]

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
        return self.runtime.explain_item(user, item)

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
        """Release the checkpointer's connection or pool and the engine's stores (idempotent)."""
        self.threads.close()
        conn = getattr(self._checkpointer, "conn", None)
        if conn is not None and not getattr(self, "_closed", False):
            # the saver does not close what it was given: the SQLite connection, or the pool
            # (ConnectionPool.close waits for the connections in use and closes them all)
            conn.close()
        self._closed = True
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
