"""The web page's operations over one :class:`~agent.api.PluralAgent`, with no Gradio in them.

Every message is a :meth:`PluralAgent.chat` turn on a thread (a card's like/dislike button is the
turn ``"loved #k"`` / ``"not #k"``), and everything the page shows after a turn is read back
from the agent's thread state (:meth:`WebChat.view`): the transcript, the thread's last list, its
latest reaction, the personas. So a page that was reloaded, or a second tab on the same thread,
shows what the thread holds, not what one tab remembers.

Example:
    >>> chat = WebChat(PluralAgent.from_dataset("synthetic", llm="none"))     # doctest: +SKIP
    >>> turn = chat.send("1", None, "something with aliens")                  # doctest: +SKIP
    >>> turn.view.items[0].persona.name, turn.view.thread_id                  # doctest: +SKIP
    >>> chat.react("1", turn.view.thread_id, 2, "dislike", turn.view.item_ids).view.last_feedback  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import threading
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from agent.api import ChatReply, FollowUp, PluralAgent
from agent.graph.builder import FeedbackAnswer, ListedItem, TranscriptTurn
from agent.web.views import apply_model_explanations
from personas.model import PersonaView
from personas.recommendation import PersonaRef, Recommendation

log = logging.getLogger("plural.web")

REACTION_MESSAGES = {"like": "loved #{k}", "dislike": "not #{k}"}
"""The chat turn a card's button sends (the chat's own words for a reaction to list item k)."""

FALLBACK_KEPT = {"recommend": "the cards keep the template explanations",
                 "refine": "the cards keep the template explanations",
                 "why": "the answer stays the template's", "feedback": "the persona stays as your reaction left it"}
"""What stays when the model fails after a turn, by the turn's intent (said in the notice)."""

HISTORY_LIMIT = 60
"""Checkpoints searched, newest first, for the thread's last list and last reaction."""


class ThreadView(BaseModel):
    """What the page shows for a user's thread, read from the agent."""

    model_config = ConfigDict(extra="forbid")

    user_id: str
    thread_id: str | None = None
    """None before the first message of a new conversation."""
    transcript: list[TranscriptTurn] = Field(default_factory=list)
    items: list[Recommendation] = Field(default_factory=list)
    """The thread's last list (what "#2" refers to), with the model's explanations where it wrote them."""
    reactions: dict[str, str] = Field(default_factory=dict)
    """Item id -> the user's latest reaction (``like``/``dislike``)."""
    personas: list[PersonaView] = Field(default_factory=list)
    last_feedback: FeedbackAnswer | None = None
    """The thread's latest reaction and what it did to a persona."""
    note: str | None = None
    """The follow-up's line about the latest reaction's persona (its rewrite, or why the text was kept)."""
    note_source: Literal["template", "llm"] = "llm"
    """Who wrote the rewrite ``note`` speaks of: the model, or the template (the model failed)."""

    @property
    def item_ids(self) -> list[str]:
        return [r.item_id for r in self.items]


class Turn(BaseModel):
    """The result of a page action: the agent's reply (None when no turn was run), the thread
    as it is now, and a one-line notice for the person (an error, a refusal, a fallback)."""

    model_config = ConfigDict(extra="forbid")

    reply: ChatReply | None = None
    view: ThreadView
    notice: str | None = None


class WebChat:
    """The page's operations (see the module docstring). Thread-safe: beside the agent it keeps
    only what the model's follow-ups added (in memory, for this process): per thread, the model's
    explanations of one list (shown while that list is the thread's last) and its line on one
    reaction (shown while that reaction is the thread's latest)."""

    def __init__(self, agent: PluralAgent):
        self.agent = agent
        self._lock = threading.Lock()
        self._model_text: dict[str, tuple[tuple[str, ...], dict[str, str]]] = {}
        self._notes: dict[str, tuple[str, str, str]] = {}

    # ---- reading -----------------------------------------------------------------------
    def users(self) -> list[str]:
        """Every user id of the dataset, in the dataset's order."""
        return list(self.agent.engine.history.user_ids)

    def check_user(self, user: str) -> str:
        """The user id, stripped; :class:`~memory.errors.UnknownUserError` when it has no history."""
        return self.agent.runtime.check_user(str(user).strip())

    def view(self, user: str, thread_id: str | None) -> ThreadView:
        """The thread as the agent holds it. Raises :class:`~memory.errors.UnknownUserError`,
        :class:`~agent.threads.ThreadOwnershipError` (another user's thread) or
        :class:`~memory.errors.UsageError` (a malformed thread id)."""
        agent = self.agent
        user = self.check_user(user)
        personas = [PersonaView.of(p) for p in agent.personas(user)]
        reactions = agent.runtime.memory.reacted_items(user)
        if not thread_id:
            return ThreadView(user_id=user, personas=personas, reactions=reactions)
        transcript = agent.transcript(thread_id, user)  # checks the id and the owner
        items, feedback = self._thread_state(user, thread_id)
        with self._lock:
            listed, texts = self._model_text.get(thread_id, ((), {}))
            fb_key, note, source = self._notes.get(thread_id, (None, None, "llm"))
        if listed != tuple(r.item_id for r in items):
            texts = {}  # the model explained another list
        if feedback is None or fb_key != _feedback_key(feedback):
            note, source = None, "llm"
        return ThreadView(user_id=user, thread_id=thread_id, transcript=transcript,
                          items=apply_model_explanations(items, texts), reactions=reactions, personas=personas,
                          last_feedback=feedback, note=note, note_source=source)

    def _thread_state(self, user: str, thread_id: str) -> tuple[list[Recommendation], FeedbackAnswer | None]:
        """The thread's last list and its latest reaction, from the checkpoints (one per turn):
        the list is the newest checkpoint's ``recommendation`` whose items are the thread's
        ``results``; a list older than the checkpoints searched is rebuilt from the engine."""
        cfg = {"configurable": {"thread_id": thread_id}}
        graph = self.agent.graph
        values = graph.get_state(cfg).values
        results = [ListedItem.model_validate(x) for x in values.get("results") or []]
        ids = [r.item_id for r in results]
        items: list[Recommendation] | None = [] if not ids else None
        feedback: FeedbackAnswer | None = None
        for snap in graph.get_state_history(cfg, limit=HISTORY_LIMIT):
            v = snap.values
            if feedback is None and isinstance(v.get("answer"), FeedbackAnswer) and not v.get("error"):
                feedback = v["answer"]
            rec = v.get("recommendation")
            if items is None and rec is not None and [r.item_id for r in rec.items] == ids:
                items = list(rec.items)
            if items is not None and feedback is not None:
                break
        if items is None:
            items = [self._rebuilt(user, k, x) for k, x in enumerate(results, start=1)]
        return items, feedback

    def _rebuilt(self, user: str, rank: int, listed: ListedItem) -> Recommendation:
        ex = self.agent.runtime.explain_item(user, listed.item_id, listed.persona_id)
        cat = self.agent.engine.catalog.get(listed.item_id)
        return Recommendation(item_id=ex.item_id, title=ex.title, score=ex.score or 0.0, rank=rank,
                              persona=PersonaRef(id=ex.persona.persona_id, name=ex.persona.name) if ex.persona else None,
                              attention=ex.attention, evidence=ex.evidence, explanation=ex.explanation,
                              categories=list(cat.categories))

    def user_category_shares(self, user: str) -> dict[str, float]:
        """The user's category mix over their liked titles (an item counts ``1/n`` per category)."""
        eng = self.agent.engine
        pos = eng.history.positives(self.check_user(user))
        if len(pos) == 0:
            return {}
        row = eng.catalog.category_distribution()[pos].sum(axis=0)
        total = float(row.sum()) or 1.0
        return {c: float(v) / total for c, v in zip(eng.catalog.categories, row) if v > 0}

    # ---- acting ------------------------------------------------------------------------
    def send(self, user: str, thread_id: str | None, message: str) -> Turn:
        """One chat turn (a new thread when ``thread_id`` is None), then the thread as it is now.
        A turn the agent could not serve (empty or too long a message, "why #9" on a 5-item list)
        comes back with its message as the notice and the thread unchanged."""
        user = self.check_user(user)
        tid = thread_id or uuid.uuid4().hex[:12]
        reply = self.agent.chat(user, message or "", tid)
        if reply.error and not thread_id and self.agent.threads.owner(tid) is None:
            tid = None  # nothing was said yet: stay a new conversation
        notice = reply.response if reply.error else None
        return Turn(reply=reply, view=self.view(user, tid), notice=notice)

    def react(self, user: str, thread_id: str | None, rank: int, reaction: Literal["like", "dislike"],
              shown: list[str]) -> Turn:
        """A card's button: the chat turn ``"loved #k"`` / ``"not #k"`` on the thread, sent only
        when the thread's last list is still the one the page showed (``shown``, the item ids in
        order): after another tab moved the thread on, nothing is sent and the latest state comes
        back with a notice."""
        user = self.check_user(user)
        current = self.view(user, thread_id)
        if not thread_id or current.item_ids != list(shown) or not 1 <= rank <= len(shown):
            return Turn(view=current, notice="This list is out of date (the conversation moved on, perhaps in "
                                             "another tab); here is the latest. Nothing was changed.")
        return self.send(user, thread_id, REACTION_MESSAGES[reaction].format(k=rank))

    def follow_up(self, reply: ChatReply) -> Turn:
        """What the LLM adds after ``reply`` (:meth:`PluralAgent.follow_up`; slow on a CPU, never
        on the turn's path): its explanations replace the templates on the cards, its note on a
        persona is kept for the panel. A model that fails leaves the templates, and says so."""
        try:
            later = self.agent.follow_up(reply)
        except Exception as e:  # noqa: BLE001 - the model's extras never end the conversation
            log.warning("the model's follow-up failed for thread %s: %r", reply.thread_id, e)
            later = FollowUp(user_id=reply.user_id, thread_id=reply.thread_id,
                             meta={"llm_error": f"{type(e).__name__}: {e}"})
        tid = reply.thread_id
        with self._lock:
            if later.explanations:
                self._model_text[tid] = (tuple(r.item_id for r in reply.items),
                                         {e.item_id: e.text for e in later.explanations})
            if later.note and isinstance(reply.answer, FeedbackAnswer):
                # the follow-up commits only the model's own rewrite (the template's was the turn's)
                self._notes[tid] = (_feedback_key(reply.answer), later.note, "llm")
        notice = None
        if later.meta.get("llm_error"):
            kept = FALLBACK_KEPT.get(reply.intent or "", "what the templates said stays")
            notice = f"The model could not add its text ({later.meta['llm_error']}); {kept}."
        elif later.explanations:
            notice = (f"The model wrote {len(later.explanations)} of the {len(reply.items)} explanations "
                      f"(marked \u201cmodel\u201d); the others keep the template.")
        elif later.answer:
            notice = f"(model) {later.answer}"
        elif reply.items and not later.explanations and reply.intent in ("recommend", "refine"):
            notice = "The model's explanations did not pass validation; the cards keep the template ones."
        return Turn(view=self.view(reply.user_id, tid), notice=notice)

    def needs_follow_up(self, reply: ChatReply | None) -> bool:
        """True when the LLM would add something to ``reply`` (a backend is configured for
        ``llm_prose="after"`` and the turn was served)."""
        rt = self.agent.runtime
        return (reply is not None and not reply.error and rt.backend is not None and rt.config.llm_prose == "after"
                and reply.intent in ("recommend", "refine", "why", "feedback"))

    def rollback(self, user: str, persona_id: str, version: int) -> str:
        """Make an earlier version of a persona current again; returns a line saying what it is now."""
        user = self.check_user(user)
        p = self.agent.rollback(user, persona_id, int(version))
        # the weights are shares of one whole: read the persona back as the panel shows it
        now = next((q for q in self.agent.personas(user) if q.persona_id == persona_id), p)
        return (f"\u201c{now.name}\u201d is back to version {int(version)}'s text and weight (recorded as "
                f"v{now.version}; its share is now {100 * now.weight:.0f}% beside the other personas).")

    def undo_target(self, view: ThreadView) -> int | None:
        """The version to offer a rollback to after the thread's latest reaction: the concerned
        persona's version before it, while the persona has changed since and was not already
        rolled back; else None."""
        fb = view.last_feedback
        if fb is None or fb.persona_id is None or fb.persona_before is None:
            return None
        now = next((p for p in view.personas if p.persona_id == fb.persona_id), None)
        if now is None or now.version == fb.persona_before.version:
            return None
        stored = self.agent.persona_versions(view.user_id, fb.persona_id)
        if not stored or stored[-1].reason.startswith("rollback") or \
                all(v.persona.version != fb.persona_before.version for v in stored):
            return None
        return fb.persona_before.version

    def versions(self, user: str, persona_id: str) -> list[tuple[int, str]]:
        """A persona's stored versions, newest first: (version, a short label)."""
        out = []
        for v in reversed(self.agent.persona_versions(self.check_user(user), persona_id)):
            p = v.persona
            out.append((p.version, f"v{p.version} \u00b7 {v.reason} \u00b7 {100 * p.weight:.0f}% \u00b7 {p.name}"))
        return out


def _feedback_key(answer: FeedbackAnswer) -> str:
    """Which reaction a follow-up's line is about: the item, the persona and its version after it."""
    after = answer.persona_after.version if answer.persona_after is not None else None
    return f"{answer.item_id}:{answer.persona_id}:{after}"


__all__ = ["REACTION_MESSAGES", "ThreadView", "Turn", "WebChat"]
