"""The conversational agent as a LangGraph ``StateGraph``.

::

    START -> understand -> recall_memory -+-> route_personas -> rank -> explain -> respond -> write_memory -> END
                                          +-> refine_personas ----------------------> respond
                                          +-> explain (why) ---------------------> respond
                                          +-> respond (show personas, or a message that cannot be served)

The state is a typed pydantic model (:class:`AgentState`). Nodes compute; none of them writes:
each returns typed pending writes (:mod:`agent.writes`). ``write_memory`` commits them in one
transaction, with a compare-and-set on every persona version they were computed from, and only
then updates the thread's own state (the list "the second one" refers to, what was shown and
refused, the transcript). So a turn that fails anywhere leaves the thread, memory and personas
as they were, and the next turn continues from the last completed one: the same under
``PluralAgent`` and under the LangGraph server. The first node refuses a thread that belongs to
another user; the last one claims a new thread for its user.
"""

from __future__ import annotations

import logging
import operator
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agent.graph.intent import Understanding, understand
from agent.runtime import AgentRuntime, FeedbackOutcome, ItemExplanation
from agent.threads import ThreadOwnershipError
from agent.writes import ChatTurnWrite, Committed, Pending
from memory.errors import PluralError
from personas.recommendation import RecommendationList
from personas.request import Request
from personas.store import PersonaConflictError

log = logging.getLogger("plural.graph")



class ListedItem(BaseModel):
    """An item of the list last shown in a thread (what "the second one" refers to)."""

    model_config = ConfigDict(extra="forbid")

    item_id: str
    title: str
    persona_id: str | None = None
    persona_name: str | None = None


class TranscriptTurn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["user", "assistant"]
    content: str


class RecalledMemory(BaseModel):
    """A memory brought back for this turn: an episodic event, or a semantic fact with its sources."""

    model_config = ConfigDict(extra="forbid")

    kind: str
    text: str
    score: float | None = None
    recency: float | None = None
    similarity: float | None = None
    event_id: int | None = None
    sources: list[int] = Field(default_factory=list)


class WhyAnswer(ItemExplanation):
    """The answer to "why the third?"."""

    kind: Literal["why"] = "why"
    position: int | None = None


class FeedbackAnswer(FeedbackOutcome):
    """What a reaction did, for the reply."""

    kind: Literal["feedback"] = "feedback"
    position: int | None = None
    text: str | None = None
    """The person's words with the reaction."""


Answer = Annotated[WhyAnswer | FeedbackAnswer, Field(discriminator="kind")]


class ThreadUpdate(BaseModel):
    """The thread's own state after this turn, applied by ``write_memory`` once the turn's writes
    are committed."""

    model_config = ConfigDict(extra="forbid")

    results: list[ListedItem] | None = None
    """The new "last list" (None: unchanged)."""
    focus: int | None = None
    shown: list[str] = Field(default_factory=list)
    refused: list[str] = Field(default_factory=list)
    last_request: Request | None = None


class AgentState(BaseModel):
    """The state of one chat thread. Input: ``user_id``, ``thread_id``, ``message``."""

    model_config = ConfigDict(extra="forbid")

    user_id: str = ""
    thread_id: str = ""
    message: str = ""
    # ---- this turn (reset by the first node) ----
    understanding: Understanding | None = None
    """The reading of the message: intent, reference, reaction, source."""
    recalled: list[RecalledMemory] = Field(default_factory=list)
    """Memory recalled for this turn (events blending recency and similarity, then facts)."""
    request: Request | None = None
    """This turn's request, as read (rules, or the LLM validated against them)."""
    recommendation: RecommendationList | None = None
    """This turn's list."""
    answer: Answer | None = None
    """This turn's answer to "why" or to a reaction."""
    response: str = ""
    """What the agent says."""
    pending: Pending = Field(default_factory=Pending)
    """This turn's writes, committed by write_memory."""
    thread_update: ThreadUpdate | None = None
    """The thread state this turn leads to, applied after the commit."""
    committed: Committed | None = None
    """What write_memory wrote."""
    error: str | None = None
    """A message for the person when the turn could not be served (nothing is written then)."""
    meta: dict[str, Any] = Field(default_factory=dict)
    """Run facts: how the message was read, LLM fallbacks, llm_error."""
    # ---- the thread (written only by write_memory, after the commit) ----
    results: list[ListedItem] = Field(default_factory=list)
    """The last list shown in this thread."""
    focus: int | None = None
    """The list position the conversation is about ("that one")."""
    shown: list[str] = Field(default_factory=list)
    """Every item id shown in this thread (every list is new titles)."""
    refused: list[str] = Field(default_factory=list)
    """Item ids the person refused in this thread: never shown again in it."""
    last_request: Request | None = None
    """The thread's last request ("more" repeats it)."""
    transcript: Annotated[list[TranscriptTurn], operator.add] = Field(default_factory=list)
    """Every turn of the thread."""


_TURN_RESET = {"understanding": None, "recalled": [], "request": None, "recommendation": None, "answer": None,
               "response": "", "pending": Pending(), "thread_update": None, "committed": None, "error": None,
               "meta": {}}


def _item_at(state: AgentState, ref: int | None) -> ListedItem | None:
    if ref is None or not 1 <= ref <= len(state.results):
        return None
    return state.results[ref - 1]


def state_types() -> list[type]:
    """Every pydantic model the state holds (the checkpointer's allow-list for deserialising)."""
    seen: list[type] = []

    def walk(t) -> None:
        import typing

        for arg in typing.get_args(t) or ():
            walk(arg)
        if isinstance(t, type) and issubclass(t, BaseModel) and t not in seen:
            seen.append(t)
            for f in t.model_fields.values():
                walk(f.annotation)

    walk(AgentState)
    return seen


def state_serde():
    """The checkpoint serializer, allowed to rebuild exactly the state's own types (LangGraph
    refuses, or warns about, any other class found in a checkpoint)."""
    from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

    return JsonPlusSerializer(allowed_msgpack_modules=[(t.__module__, t.__name__) for t in state_types()])


def build_graph(runtime: AgentRuntime, checkpointer=None):
    """Compile the agent's graph over ``runtime`` (see the module docstring)."""
    from langchain_core.runnables import RunnableConfig
    from langgraph.graph import END, START, StateGraph

    def understand_node(state: AgentState, config: RunnableConfig) -> dict:
        msg = state.message.strip()
        # the checkpointer's thread is the thread (a server's client cannot claim another one)
        thread_id = (config.get("configurable") or {}).get("thread_id") or state.thread_id
        reset = {**_TURN_RESET, "thread_id": str(thread_id)}
        try:
            runtime.threads.check(str(thread_id), state.user_id)
        except (ThreadOwnershipError, PluralError) as e:
            return {**reset, "error": str(e)}
        if not msg:
            return {**reset, "error": "Your message was empty. Ask for something, e.g. \"something light and "
                                      "funny tonight\"."}
        if len(msg) > runtime.config.max_message_chars:
            return {**reset, "error": f"Your message has {len(msg)} characters; please keep it under "
                                      f"{runtime.config.max_message_chars}."}
        backend = runtime.backend if runtime.config.intent_parser == "llm" else None
        u, err = understand(msg, len(state.results), state.focus, backend)
        meta: dict[str, Any] = {"intent_source": u.source}
        if err:
            meta["llm_error"] = err
        return {**reset, "understanding": u, "meta": meta}

    def recall_node(state: AgentState) -> dict:
        if state.error:
            return {}
        try:
            return {"recalled": [RecalledMemory.model_validate(r)
                                 for r in runtime.memory.recall(state.user_id, state.message)]}
        except PluralError as e:  # memory is help, not a requirement for answering
            log.warning("recall failed: %s", e)
            return {"recalled": []}

    def route_node(state: AgentState) -> dict:
        u = state.understanding
        thread = {"shown": state.shown, "refused": state.refused}
        request, read = runtime.parse_request(state.user_id, state.message,
                                              last_list=[x.item_id for x in state.results],
                                              previous=state.last_request, reference=u.reference, **thread)
        if u.intent == "refine" and state.last_request is not None and not request.has_constraints():
            # "something else", "other ones": the previous request again, on titles not shown yet
            again, _ = runtime.parse_request(state.user_id, "more", previous=state.last_request, **thread)
            request = again.model_copy(update={"text": request.text})
        meta = {**state.meta, "read_request": {**read, "persona_ids": request.personas}}
        if read.get("llm_error"):
            meta["llm_error"] = read["llm_error"]
        return {"request": request, "meta": meta}

    def rank_node(state: AgentState) -> dict:
        return {"recommendation": runtime.recommend_request(state.user_id, state.request)}

    def explain_node(state: AgentState) -> dict:
        u = state.understanding
        llm = runtime.in_turn_llm()
        if u.intent == "why":
            item = _item_at(state, u.reference)
            if item is None:
                n = len(state.results)
                return {"error": f"There is no item {u.reference} in the last list ({n} items)." if n else
                        "I have not recommended anything in this conversation yet; ask for something first."}
            ans = runtime.explain_item(state.user_id, item.item_id, item.persona_id, backend=llm)
            return {"answer": WhyAnswer(**ans.model_dump(), position=u.reference)}
        out = state.recommendation
        if llm is None or not out.items or out.cold_start:
            return {}
        out = out.model_copy(deep=True)
        update: dict[str, Any] = {}
        described, dmeta = runtime.language.describe_pending(state.user_id)
        if described is not None:  # the model's persona text, stored by write_memory with the turn
            update["pending"] = state.pending.merge(Pending(personas=described))
            names = {p.persona_id: p.name for p in described.set.personas}
            for r in out.items:
                if r.persona is not None and r.persona.id in names:
                    r.persona = r.persona.model_copy(update={"name": names[r.persona.id]})
        pset = described.set if described is not None else None
        meta = runtime.language.explain_list(out, pset, backend=llm)
        out.meta["explain_recommendations"] = meta
        errors = [m.get("llm_error") for m in (meta, dmeta or {}) if m.get("llm_error")]
        if errors:
            out.meta["llm_error"] = out.meta.get("llm_error") or errors[0]
        return {**update, "recommendation": out,
                "meta": {**state.meta, "explain": meta, **({"describe": dmeta} if dmeta else {}),
                         **({"llm_error": errors[0]} if errors else {})}}

    def refine_node(state: AgentState) -> dict:
        u = state.understanding
        item = _item_at(state, u.reference)
        if item is None:
            n = len(state.results)
            return {"error": f"There is no item {u.reference} in the last list ({n} items)." if n else
                    "Tell me which recommendation you mean once I have shown you some."}
        answer, pending = _feedback(runtime, state, item)
        return {"answer": answer, "pending": state.pending.merge(pending)}

    def respond_node(state: AgentState) -> dict:
        text, update = _compose(runtime, state)
        if state.error:
            return {"response": text, "pending": Pending(), "thread_update": None}
        tid = state.thread_id
        pending = Pending(events=[ChatTurnWrite(thread_id=tid, role="user", text=state.message)]).merge(state.pending)
        pending = pending.merge(Pending(events=[ChatTurnWrite(thread_id=tid, role="assistant", text=text[:2000])]))
        if state.recommendation is not None:
            pending = pending.merge(runtime.shown(state.recommendation, tid))
        return {"response": text, "pending": pending, "thread_update": update}

    def write_node(state: AgentState) -> dict:
        turn = [TranscriptTurn(role="user", content=state.message), TranscriptTurn(role="assistant",
                                                                                  content=state.response)]
        if state.error or state.thread_update is None:  # not served: nothing written, the thread untouched
            return {"committed": Committed()}
        pending, answer, response, retries = state.pending, state.answer, state.response, 0
        pending = pending.model_copy(update={"thread_id": state.thread_id})
        try:
            try:
                committed = runtime.commit(state.user_id, pending, backend=runtime.in_turn_llm())
            except PersonaConflictError as e:
                if not isinstance(answer, FeedbackAnswer):
                    raise
                # another turn changed the persona first: recompute the reaction on the state it
                # left and commit again, holding the persona store's write lock from read to
                # write this time, so the second attempt cannot lose the race again
                log.info("turn of user %s on thread %s recomputed after a conflict: %s", state.user_id,
                         state.thread_id, e)
                retries = 1
                with runtime.engine.persona_store.transaction():
                    item = _item_at(state, answer.position) or ListedItem(
                        item_id=answer.item_id, title=answer.title, persona_id=answer.persona_id)
                    answer, fresh = _feedback(runtime, state, item)
                    response, _ = _compose(runtime, state.model_copy(update={"answer": answer}))
                    keep = [ev for ev in pending.events if ev.kind != "feedback"]
                    events = [*keep[:1], *fresh.events, *keep[1:]]
                    events = [ev.model_copy(update={"text": response[:2000]})  # the words follow the new answer
                              if ev.kind == "chat_turn" and ev.role == "assistant" else ev for ev in events]
                    pending = Pending(events=events, personas=fresh.personas, exposure=pending.exposure,
                                      thread_id=pending.thread_id)
                    committed = runtime.commit(state.user_id, pending, backend=runtime.in_turn_llm())
        except ThreadOwnershipError as e:  # another user committed a first turn on this thread meanwhile
            return {"committed": Committed(), "error": str(e), "response": str(e)}
        except PersonaConflictError as e:
            log.warning("turn of user %s on thread %s not committed: %s", state.user_id, state.thread_id, e)
            msg = ("Your personas changed at the same moment (another conversation?), so I could not save that. "
                   "Nothing was changed; please say it again.")
            return {"committed": Committed(retries=retries), "error": str(e), "response": msg}
        up = state.thread_update
        out: dict[str, Any] = {"committed": committed.model_copy(update={"retries": retries}), "pending": Pending(),
                               "shown": list(dict.fromkeys([*state.shown, *up.shown])),
                               "refused": list(dict.fromkeys([*state.refused, *up.refused])),
                               "focus": up.focus,
                               "transcript": [turn[0], TranscriptTurn(role="assistant", content=response)]}
        if up.results is not None:
            out["results"] = up.results
        if up.last_request is not None:
            out["last_request"] = up.last_request
        if retries:
            out.update(answer=answer, response=response)
        return out

    def after_recall(state: AgentState) -> str:
        if state.error:
            return "respond"
        return {"recommend": "route_personas", "refine": "route_personas", "feedback": "refine_personas",
                "why": "explain", "personas": "respond"}.get(state.understanding.intent, "respond")

    def after_explain(state: AgentState) -> str:
        return "respond"

    g = StateGraph(AgentState)
    g.add_node("understand", understand_node)
    g.add_node("recall_memory", recall_node)
    g.add_node("route_personas", route_node)
    g.add_node("rank", rank_node)
    g.add_node("explain", explain_node)
    g.add_node("refine_personas", refine_node)
    g.add_node("respond", respond_node)
    g.add_node("write_memory", write_node)
    g.add_edge(START, "understand")
    g.add_edge("understand", "recall_memory")
    g.add_conditional_edges("recall_memory", after_recall,
                            {"route_personas": "route_personas", "refine_personas": "refine_personas",
                             "explain": "explain", "respond": "respond"})
    g.add_edge("route_personas", "rank")
    g.add_edge("rank", "explain")
    g.add_conditional_edges("explain", after_explain, {"respond": "respond"})
    g.add_edge("refine_personas", "respond")
    g.add_edge("respond", "write_memory")
    g.add_edge("write_memory", END)
    return g.compile(checkpointer=checkpointer)


def _feedback(runtime: AgentRuntime, state: AgentState, item: ListedItem) -> tuple[FeedbackAnswer, Pending]:
    """The reaction to ``item`` on the current persona state, as an answer and pending writes."""
    u = state.understanding
    outcome, pending = runtime.feedback(state.user_id, item.item_id, u.reaction or "like", text=state.message,
                                        thread_id=state.thread_id, persona_id=item.persona_id,
                                        use_llm=runtime.in_turn_llm() is not None)
    answer = FeedbackAnswer(**outcome.model_dump(), position=u.reference, text=state.message)
    return answer, pending


def _remembered(recalled: list[RecalledMemory], n_facts: int = 3, n_reactions: int = 2) -> list[str]:
    """What recall brought back, as the person would say it: semantic facts first (each cites its
    source events), then the best-recalled reactions (recency and similarity blended)."""
    facts = [r.text for r in recalled if r.kind == "fact"][:n_facts]
    reactions = [r.text for r in recalled if r.kind == "feedback"][:n_reactions]
    return facts + reactions


def _compose(runtime: AgentRuntime, state: AgentState) -> tuple[str, ThreadUpdate | None]:
    """The agent's words for this turn, and the thread state it leads to."""
    if state.error:
        return state.error, None
    u = state.understanding
    intent = u.intent
    same = ThreadUpdate(results=None, focus=state.focus)
    if intent in ("recommend", "refine"):
        out = state.recommendation
        request = state.request or Request()
        asked = request.describe(runtime.engine.catalog)
        notes = [f"I can't check {what} here, so I left that out." for what in request.unsupported]
        if not out.items:
            lines = [f"Nothing I haven't shown you matches that ({asked})." if asked else
                     "I found nothing new for that request.",
                     "Try something broader, e.g. a genre without the period.", *notes]
            return "\n".join(lines), ThreadUpdate(results=[], focus=None, last_request=request)
        # the tastes the listed titles come from (most titles first; at most three named)
        by_persona: dict[str, int] = {}
        for r in out.items:
            if r.persona is not None:
                by_persona[r.persona.name] = by_persona.get(r.persona.name, 0) + 1
        names = sorted(by_persona, key=lambda n: -by_persona[n])[:3]
        head = "Here are some picks" if intent == "recommend" else "Here is a new set"
        if asked:
            head += f" ({asked})"
        if names:
            quoted = [f"\u201c{n}\u201d" for n in names]
            head += " for your " + (", ".join(quoted[:-1]) + " and " + quoted[-1] if len(quoted) > 1 else quoted[0])
            head += " tastes" if len(quoted) > 1 else " taste"
        if out.cold_start:
            head = "I don't know your tastes yet, so here are popular picks" + (f" ({asked})" if asked else "")
        lines = [head + ":"]
        for r in out.items:
            cats = f" [{', '.join(r.categories)}]" if r.categories else ""
            lines.append(f"{r.rank}. {r.title}{cats} \u2014 {r.explanation}")
        if len(out.items) < out.k:
            lines.append(f"Only {len(out.items)} title{'s' if len(out.items) != 1 else ''} you haven't seen "
                         f"match{'es' if len(out.items) == 1 else ''} all of that.")
        lines += notes
        lines.append("Tell me what you think (\"not that one\", \"more like the second\", \"why the third?\").")
        results = [ListedItem(item_id=r.item_id, title=r.title, persona_id=r.persona.id if r.persona else None,
                              persona_name=r.persona.name if r.persona else None) for r in out.items]
        return "\n".join(lines), ThreadUpdate(results=results, focus=None, shown=[r.item_id for r in out.items],
                                              last_request=request)
    if intent == "why":
        a = state.answer
        if a.persona is None:
            return a.explanation, same.model_copy(update={"focus": a.position})
        share = a.attention.get(a.persona.persona_id, 0.0)
        ev = ", ".join(e.title for e in a.evidence)
        text = (f"\u201c{a.title}\u201d comes from your \u201c{a.persona.name}\u201d taste "
                f"({round(100 * share)}% of the match; that taste: {a.persona.description}). "
                f"It rests on titles you liked: {ev}.")
        if a.explanation_source == "llm":
            text += f" {a.explanation}"
        return text, same.model_copy(update={"focus": a.position})
    if intent == "feedback":
        a = state.answer
        verb = "liked" if a.reaction == "like" else "didn't like"
        refused = [a.item_id] if a.reaction == "dislike" else []  # a refusal: never shown again in this thread
        update = same.model_copy(update={"focus": a.position, "refused": refused})
        if a.persona_id is None:
            return f"Noted: you {verb} {a.title}.", update
        ref = a.refinement or {}
        before, after = a.persona_before, a.persona_after
        parts = [f"Noted: you {verb} {a.title}. That concerns your \u201c{before.name}\u201d taste."]
        if abs(after.weight - before.weight) > 1e-6:
            parts.append(f"Its weight went from {round(100 * before.weight)}% to {round(100 * after.weight)}%.")
        if ref.get("evidence_added"):
            parts.append("I added the title to its evidence.")
        if before.name != after.name:
            parts.append(f"I renamed it \u201c{after.name}\u201d: {after.description}")
        elif before.description != after.description:
            parts.append(f"I updated its description: {after.description}")
        elif ref.get("proposed"):
            parts.append("I considered rewriting its description but kept the old one: the new text described "
                         "the titles you liked before less well.")
        elif ref.get("loss_source") == "aligned":
            parts.append("Its description already predicted that reaction, so the text stays.")
        return " ".join(parts), update
    if intent == "personas":
        pset = runtime.engine.recommender.persona_set(state.user_id)
        if not pset.personas:
            return "You have no personas yet: like a few titles and I will learn your tastes.", same
        lines = ["Your personas:"]
        for p in pset.personas:
            lines.append(f"- {p.name} ({round(100 * p.weight)}%, v{p.version}): {p.description}")
        remembered = _remembered(state.recalled)
        if remembered:
            lines += ["What I remember about you:", *(f"- {t}" for t in remembered)]
        return "\n".join(lines), same
    return "I did not understand that. Ask for something to watch, or react to one of my picks.", same
