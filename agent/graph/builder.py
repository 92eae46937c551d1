"""The conversational agent as a LangGraph ``StateGraph``.

::

    START -> understand -> recall_memory -+-> route_personas -> rank -> explain -> respond -> write_memory -> END
                                          +-> refine_personas ----------------------> respond
                                          +-> explain (why) ---------------------> respond
                                          +-> respond (show personas, or a message that cannot be served)

Nodes compute; only ``write_memory`` writes (episodic events, persona versions), all together
through :meth:`agent.runtime.AgentRuntime.commit`. State is plain JSON (checkpointed with
``langgraph-checkpoint-sqlite`` in the data directory, or Postgres), so a thread resumes after a
restart with its last list, its transcript and what "that one" refers to.
"""

from __future__ import annotations

import logging
import operator
from typing import Annotated, Any, TypedDict

from agent.graph.intent import understand
from agent.runtime import AgentRuntime, Pending
from memory.errors import PluralError
from personas.recommendation import RecommendationList

log = logging.getLogger("plural.graph")

MAX_TRANSCRIPT = 200


class AgentState(TypedDict, total=False):
    """The state of one chat thread. Input keys: ``user_id``, ``thread_id``, ``message``."""

    user_id: str
    thread_id: str
    message: str
    understanding: dict
    """The reading of the message: intent, reference, reaction, request, source."""
    recalled: list[dict]
    """Memory recalled for this turn (events blending recency and similarity, then facts)."""
    routing: dict
    """Personas the request was routed to, and the persona focus used for ranking."""
    recommendation: dict | None
    """This turn's list (a RecommendationList as JSON)."""
    results: list[dict]
    """The last list shown in this thread (what "the second one" refers to); kept across turns."""
    focus: int | None
    """The list position the conversation is about ("that one")."""
    answer: dict | None
    """This turn's answer for why / feedback / personas."""
    response: str
    """What the agent says."""
    transcript: Annotated[list[dict], operator.add]
    """Every turn of the thread: {role, content}."""
    pending: dict
    """Writes of this turn (applied by write_memory)."""
    committed: dict
    """What write_memory wrote."""
    error: str | None
    """A message for the person when the turn could not be served (nothing is written then)."""
    meta: dict
    """Run facts: LLM fallbacks, llm_error, timings."""


def _item_at(state: AgentState, ref: int | None) -> dict | None:
    results = state.get("results") or []
    if ref is None or not results:
        return None
    if not 1 <= ref <= len(results):
        return None
    return results[ref - 1]


def build_graph(runtime: AgentRuntime, checkpointer=None):
    """Compile the agent's graph over ``runtime`` (see the module docstring)."""
    from langgraph.graph import END, START, StateGraph

    def understand_node(state: AgentState) -> dict:
        msg = (state.get("message") or "").strip()
        reset = {"recommendation": None, "answer": None, "error": None, "routing": {}, "recalled": [],
                 "pending": {}, "committed": {}, "meta": {}}
        if not msg:
            return {**reset, "understanding": {"intent": "none"},
                    "error": "Your message was empty. Ask for something, e.g. \"something light and funny tonight\"."}
        if len(msg) > runtime.config.max_message_chars:
            return {**reset, "understanding": {"intent": "none"},
                    "error": f"Your message has {len(msg)} characters; please keep it under "
                             f"{runtime.config.max_message_chars}."}
        backend = runtime.backend if runtime.config.intent_parser == "llm" else None
        u, err = understand(msg, len(state.get("results") or []), state.get("focus"), backend)
        meta = {"intent_source": u.source}
        if err:
            meta["llm_error"] = err
        return {**reset, "understanding": u.model_dump(), "meta": meta}

    def recall_node(state: AgentState) -> dict:
        if state.get("error"):
            return {}
        try:
            return {"recalled": runtime.memory.recall(state["user_id"], state["message"])}
        except PluralError as e:  # memory is help, not a requirement for answering
            log.warning("recall failed: %s", e)
            return {"recalled": []}

    def route_node(state: AgentState) -> dict:
        u = state["understanding"]
        routing: dict[str, Any] = {"persona_focus": {}, "like_item": None}
        item = _item_at(state, u.get("reference"))
        if u["intent"] == "refine" and item is not None:
            routing["like_item"] = item["item_id"]
        request = u.get("request") or state["message"]
        if u["intent"] == "refine" and item is not None and len(request.split()) <= 6:
            request = None  # "more like the second one" says nothing beyond the item itself
        if request:
            focus, meta = runtime.language.route(state["user_id"], request)
            routing.update(persona_focus=focus, request=request, route_meta=meta)
        return {"routing": routing}

    def rank_node(state: AgentState) -> dict:
        r = state.get("routing") or {}
        route_pair = (r.get("persona_focus") or {}, r.get("route_meta") or {}) if r.get("request") else None
        shown = [x["item_id"] for x in state.get("results") or []] if state["understanding"]["intent"] == "refine" \
            else []
        # a refinement shows new items: what this thread just listed is excluded
        out = runtime.recommend(state["user_id"], like_item=r.get("like_item"), request=r.get("request"),
                                exclude=shown, explain=False, routing=route_pair)
        return {"recommendation": out.model_dump(mode="json")}

    def explain_node(state: AgentState) -> dict:
        u = state["understanding"]
        if u["intent"] == "why":
            item = _item_at(state, u.get("reference"))
            if item is None:
                n = len(state.get("results") or [])
                return {"error": f"There is no item {u.get('reference')} in the last list ({n} items)." if n else
                        "I have not recommended anything in this conversation yet; ask for something first."}
            ans = runtime.explain_item(state["user_id"], item["item_id"], item.get("persona_id"))
            return {"answer": {"kind": "why", "position": u.get("reference"), **ans}, "focus": u.get("reference")}
        out = RecommendationList.model_validate(state["recommendation"])
        if runtime.config.explain and out.items and not out.cold_start:
            meta = runtime.language.explain_list(out)
            out.meta["explain_recommendations"] = meta
            if meta.get("llm_error"):
                out.meta["llm_error"] = out.meta.get("llm_error") or meta["llm_error"]
            return {"recommendation": out.model_dump(mode="json"),
                    "meta": {**(state.get("meta") or {}), "explain": meta}}
        return {}

    def refine_node(state: AgentState) -> dict:
        u = state["understanding"]
        item = _item_at(state, u.get("reference"))
        if item is None:
            n = len(state.get("results") or [])
            return {"error": f"There is no item {u.get('reference')} in the last list ({n} items)." if n else
                    "Tell me which recommendation you mean once I have shown you some."}
        outcome, pending = runtime.feedback(state["user_id"], item["item_id"], u.get("reaction") or "like",
                                            text=state["message"], thread_id=state.get("thread_id"),
                                            persona_id=item.get("persona_id"))
        return {"answer": {"kind": "feedback", "position": u.get("reference"), **outcome.model_dump(mode="json")},
                "pending": pending.to_dict(), "focus": u.get("reference")}

    def respond_node(state: AgentState) -> dict:
        text, update = _compose(runtime, state)
        pending = Pending.from_dict(state.get("pending"))
        if not state.get("error"):
            tid = state.get("thread_id")
            pending.events.insert(0, {"kind": "chat_turn", "role": "user", "text": state["message"], "thread_id": tid})
            pending.events.append({"kind": "chat_turn", "role": "assistant", "text": text[:2000], "thread_id": tid})
            if state.get("recommendation"):
                out = RecommendationList.model_validate(state["recommendation"])
                pending.events.append(runtime.shown_event(out, tid))
        else:
            pending = Pending()  # a turn that could not be served writes nothing
        turn = [{"role": "user", "content": state.get("message", "")}, {"role": "assistant", "content": text}]
        return {"response": text, "pending": pending.to_dict(), "transcript": turn, **update}

    def write_node(state: AgentState) -> dict:
        pending = Pending.from_dict(state.get("pending"))
        if not pending.events and not pending.personas:
            return {"committed": {"events": 0, "personas": False}}
        committed = runtime.commit(state["user_id"], pending)
        return {"committed": committed, "pending": {}}

    def after_recall(state: AgentState) -> str:
        if state.get("error"):
            return "respond"
        intent = state["understanding"]["intent"]
        return {"recommend": "route_personas", "refine": "route_personas", "feedback": "refine_personas",
                "why": "explain", "personas": "respond"}.get(intent, "respond")

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


def _remembered(recalled: list[dict], n_facts: int = 3, n_reactions: int = 2) -> list[str]:
    """What recall brought back, as the person would say it: semantic facts first (each cites its
    source events), then the best-recalled reactions (recency and similarity blended)."""
    facts = [r["text"] for r in recalled if r.get("kind") == "fact"][:n_facts]
    reactions = [r["text"] for r in recalled if r.get("kind") == "feedback"][:n_reactions]
    return facts + reactions


def _compose(runtime: AgentRuntime, state: AgentState) -> tuple[str, dict]:
    """The agent's words for this turn, and state updates (the list shown, the focus)."""
    if state.get("error"):
        return state["error"], {}
    u = state["understanding"]
    intent = u["intent"]
    if intent in ("recommend", "refine"):
        out = RecommendationList.model_validate(state["recommendation"])
        if not out.items:
            return ("I found nothing new for that request. Try asking differently, or for something broader.",
                    {"results": [], "focus": None})
        routed = (state.get("routing") or {}).get("persona_focus") or {}
        pset = runtime.engine.recommender.persona_set(state["user_id"])
        names = [pset.get(pid).name for pid in routed if pid in pset.ids]
        head = "Here are some picks" if intent == "recommend" else "Here is a new set"
        if names:
            head += " for your " + " and ".join(f"\u201c{n}\u201d" for n in names) + " side"
        if out.cold_start:
            head = "I don't know your tastes yet, so here are popular picks"
        lines = [head + ":"]
        for r in out.items:
            lines.append(f"{r.rank}. {r.title} \u2014 {r.explanation}")
        lines.append("Tell me what you think (\"not that one\", \"more like the second\", \"why the third?\").")
        results = [{"item_id": r.item_id, "title": r.title, "persona_id": r.persona.id if r.persona else None,
                    "persona_name": r.persona.name if r.persona else None} for r in out.items]
        return "\n".join(lines), {"results": results, "focus": None}
    if intent == "why":
        a = state["answer"]
        if a.get("persona") is None:
            return a["explanation"], {}
        share = a["attention"].get(a["persona"]["id"], 0.0)
        ev = ", ".join(e["title"] for e in a["evidence"])
        text = (f"\u201c{a['title']}\u201d comes from your \u201c{a['persona']['name']}\u201d taste "
                f"({round(100 * share)}% of the match; that taste: {a['persona']['description']}). "
                f"It rests on titles you liked: {ev}.")
        if a.get("explanation_source") == "llm":
            text += f" {a['explanation']}"
        return text, {}
    if intent == "feedback":
        a = state["answer"]
        verb = "liked" if a["reaction"] == "like" else "didn't like"
        if a.get("persona_id") is None:
            return f"Noted: you {verb} {a['title']}.", {}
        ref = a.get("refinement") or {}
        before, after = a["persona_before"], a["persona_after"]
        parts = [f"Noted: you {verb} {a['title']}. That concerns your \u201c{before['name']}\u201d taste."]
        w0, w1 = before["weight"], after["weight"]
        if abs(w1 - w0) > 1e-6:
            parts.append(f"Its weight went from {round(100 * w0)}% to {round(100 * w1)}%.")
        if ref.get("evidence_added"):
            parts.append("I added the title to its evidence.")
        guard = ref.get("guard") or {}
        if (before["name"], before["description"]) != (after["name"], after["description"]):
            parts.append(f"I rewrote it as \u201c{after['name']}\u201d: {after['description']} "
                         f"(why: {ref.get('loss')}; drift check {guard.get('old')} \u2192 {guard.get('new')}).")
        elif ref.get("proposed"):
            parts.append(f"A rewrite was proposed but kept out: it described your past picks less well "
                         f"(drift check {guard.get('old')} \u2192 {guard.get('new')}).")
        elif ref.get("loss_source") == "aligned":
            parts.append("Its description already predicted that reaction, so the text stays.")
        return " ".join(parts), {}
    if intent == "personas":
        pset = runtime.engine.recommender.persona_set(state["user_id"])
        if not pset.personas:
            return "You have no personas yet: like a few titles and I will learn your tastes.", {}
        lines = ["Your personas:"]
        for p in pset.personas:
            lines.append(f"- {p.name} ({round(100 * p.weight)}%, v{p.version}): {p.description}")
        remembered = _remembered(state.get("recalled") or [])
        if remembered:
            lines += ["What I remember about you:", *(f"- {t}" for t in remembered)]
        return "\n".join(lines), {}
    return "I did not understand that. Ask for something to watch, or react to one of my picks.", {}
