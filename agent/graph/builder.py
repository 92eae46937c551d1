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
from personas.request import Request

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
    request: dict | None
    """This turn's parsed request (a personas.request.Request as JSON)."""
    last_request: dict | None
    """The thread's last request ("more" repeats it); kept across turns."""
    shown: list[str]
    """Every item id shown in this thread (follow-ups show new titles); kept across turns."""
    refused: list[str]
    """Item ids the person refused in this thread: never shown again in it; kept across turns."""
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
        reset = {"recommendation": None, "answer": None, "error": None, "routing": {}, "recalled": [], "request": None,
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
        results = state.get("results") or []
        previous = Request.model_validate(state["last_request"]) if state.get("last_request") else None
        thread = {"shown": state.get("shown") or [], "refused": state.get("refused") or []}
        request, meta = runtime.parse_request(state["user_id"], state["message"],
                                              last_list=[x["item_id"] for x in results], previous=previous,
                                              reference=u.get("reference"), **thread)
        if u["intent"] == "refine" and previous and not request.has_constraints():
            # "something else", "other ones": the previous request again, on titles not shown yet
            again, _ = runtime.parse_request(state["user_id"], "more", previous=previous, **thread)
            request = again.model_copy(update={"text": request.text})
        boost = runtime.engine.config.request.persona_boost
        routing = {"persona_focus": {pid: boost for pid in request.personas},
                   "like_item": request.reference_item, "request": request.text,
                   "route_meta": {**meta, "persona_ids": request.personas}}
        out = {"routing": routing, "request": request.model_dump(mode="json")}
        if meta.get("llm_error"):
            out["meta"] = {**(state.get("meta") or {}), "llm_error": meta["llm_error"]}
        return out

    def rank_node(state: AgentState) -> dict:
        request = Request.model_validate(state["request"])
        out = runtime.recommend_request(state["user_id"], request)
        shown = list(dict.fromkeys([*(state.get("shown") or []), *(r.item_id for r in out.items)]))
        return {"recommendation": out.model_dump(mode="json"), "shown": shown,
                "last_request": request.model_dump(mode="json")}

    def explain_node(state: AgentState) -> dict:
        u = state["understanding"]
        llm = runtime.in_turn_llm()
        if u["intent"] == "why":
            item = _item_at(state, u.get("reference"))
            if item is None:
                n = len(state.get("results") or [])
                return {"error": f"There is no item {u.get('reference')} in the last list ({n} items)." if n else
                        "I have not recommended anything in this conversation yet; ask for something first."}
            ans = runtime.explain_item(state["user_id"], item["item_id"], item.get("persona_id"), backend=llm)
            return {"answer": {"kind": "why", "position": u.get("reference"), **ans}, "focus": u.get("reference")}
        out = RecommendationList.model_validate(state["recommendation"])
        if llm is not None and out.items and not out.cold_start:
            meta = runtime.language.explain_list(out, backend=llm)
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
                                            persona_id=item.get("persona_id"),
                                            use_llm=runtime.in_turn_llm() is not None)
        update = {"answer": {"kind": "feedback", "position": u.get("reference"), **outcome.model_dump(mode="json")},
                  "pending": pending.to_dict(), "focus": u.get("reference")}
        if outcome.reaction == "dislike":  # a refusal: never shown again in this thread
            update["refused"] = list(dict.fromkeys([*(state.get("refused") or []), item["item_id"]]))
        return update

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
        committed = runtime.commit(state["user_id"], pending, backend=runtime.in_turn_llm())
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
        request = Request.model_validate(state["request"]) if state.get("request") else Request()
        cat = runtime.engine.catalog
        asked = request.describe(cat)
        notes = [f"I can't check {u} here, so I left that out." for u in request.unsupported]
        if not out.items:
            lines = [f"Nothing I haven't shown you matches that ({asked})." if asked else
                     "I found nothing new for that request.",
                     "Try something broader, e.g. a genre without the period.", *notes]
            return "\n".join(lines), {"results": [], "focus": None}
        pset = runtime.engine.recommender.persona_set(state["user_id"])
        names = [pset.get(pid).name for pid in request.personas if pid in pset.ids]
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
        if before["name"] != after["name"]:
            parts.append(f"I renamed it \u201c{after['name']}\u201d: {after['description']}")
        elif before["description"] != after["description"]:
            parts.append(f"I updated its description: {after['description']}")
        elif ref.get("proposed"):
            parts.append("I considered rewriting its description but kept the old one: the new text described "
                         "the titles you liked before less well.")
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
