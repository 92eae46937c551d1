"""The Gradio Blocks page over :class:`~agent.web.session.WebChat`: the chat, a card per
recommendation with like/dislike buttons, the persona panel with rollback, two plots.

Events (each one reads the thread back from the agent, so every output is the thread's state):

* page load: ``?user=ID&thread=ID`` in the URL opens that user's thread (the transcript and
  the last list come from the agent's checkpoints); another user's thread is refused.
* Open / picking a user: that user, a new conversation (the thread id is made on the first message).
* Send (button or Enter): one chat turn; then a line of JavaScript writes ``user`` and
  ``thread`` into the URL (``history.replaceState``), then the LLM's follow-up runs as its
  own event, so the cards are on the page before the model starts.
* a card's like / dislike: the chat turn ``"loved #k"`` / ``"not #k"`` on the thread.
* Roll back: :meth:`PluralAgent.rollback` on the persona and version picked.
* every few seconds (``REFRESH_S``): a tab whose thread changed elsewhere (another tab, the
  model's follow-up) shows it as it is now; a thread with an action running is left alone.

Example:
    >>> demo = build_app(WebChat(PluralAgent.from_dataset("synthetic", llm="none")))   # doctest: +SKIP
    >>> launch(demo, port=7860)                                                        # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import threading
from contextlib import contextmanager
from functools import partial

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio is imported: no telemetry, no version check

import gradio as gr

from agent.threads import ThreadOwnershipError
from agent.web import plots, views
from agent.web.session import ThreadView, Turn, WebChat
from agent.web.style import CSS
from memory.errors import PluralError, UnknownUserError

log = logging.getLogger("plural.web")

SET_URL_JS = """(user, thread) => {
  const url = new URL(window.location.href);
  for (const [k, v] of [["user", user], ["thread", thread]]) {
    if (v) { url.searchParams.set(k, v); } else { url.searchParams.delete(k); }
  }
  window.history.replaceState(null, "", url.toString());
  return [];
}"""

REFRESH_S = 4.0
"""How often a tab checks whether its thread changed elsewhere (another tab, the model's follow-up)."""

EXAMPLES = ["a scary movie", "something light and funny tonight", "why the third?", "not #2, too slow",
            "more like the first one", "show my personas"]


def _empty_state() -> dict:
    return {"user": None, "thread": None, "shown": [], "reply": None}


class ChatPage:
    """The components and the event handlers of one page (one per :func:`build_app`); ``demo`` is
    the Gradio ``Blocks``. The handlers are plain methods (``on_load``, ``on_send``, ``on_react``...)
    that return ``{component: value}``, so they are tested without a browser.

    Example:
        >>> page = ChatPage(WebChat(agent), k=5, title="Plural")          # doctest: +SKIP
        >>> page.on_open("1", {})[page.notice]                           # doctest: +SKIP
        'User 1: a new conversation. Ask for something.'
    """

    def __init__(self, chat: WebChat, k: int, title: str):
        self.chat, self.k = chat, k
        self._busy: dict[str, int] = {}  # thread id -> actions on it now running
        self._busy_lock = threading.Lock()
        users = chat.users()
        with gr.Blocks(title=title, analytics_enabled=False, fill_width=True) as self.demo:
            self.state = gr.State(_empty_state())
            self.timer = gr.Timer(REFRESH_S)
            with gr.Row(elem_id="plural-top"):
                gr.Markdown(f"## {title}\nSeveral tastes per user; every pick names the persona it comes from and "
                            "the titles behind it.", elem_id="plural-head")
                self.user_in = gr.Dropdown(choices=users, value=None, allow_custom_value=True, label="User",
                                           info=f"{len(users)} users; pick one or type an id", elem_id="plural-user",
                                           scale=0, min_width=180)
                self.open_btn = gr.Button("Open", elem_id="plural-open", scale=0, min_width=90)
                self.new_btn = gr.Button("New conversation", elem_id="plural-new", scale=0, min_width=150)
            # the URL's parameters, mirrored for the JavaScript that writes them (hidden, still on the page)
            self.url_user = gr.Textbox(visible="hidden", elem_id="plural-url-user")
            self.url_thread = gr.Textbox(visible="hidden", elem_id="plural-url-thread")
            self.notice = gr.Markdown("Pick a user to start.", elem_id="plural-notice")
            with gr.Row(equal_height=False):
                with gr.Column(scale=3):
                    self.chatbot = gr.Chatbot(label="Conversation", elem_id="plural-chat", height=360,
                                              buttons=[], feedback_options=None)
                    with gr.Row():
                        self.msg = gr.Textbox(show_label=False, elem_id="plural-message", scale=5, lines=1, max_lines=4,
                                              placeholder="Ask for something (\u201ca scary movie\u201d), react "
                                                          "(\u201cnot #2\u201d), ask \u201cwhy the third?\u201d")
                        self.send_btn = gr.Button("Send", variant="primary", elem_id="plural-send", scale=0,
                                                  min_width=90)
                    gr.Examples(examples=[[e] for e in EXAMPLES], inputs=[self.msg], label="Try")
                with gr.Column(scale=2):
                    gr.Markdown("### Your personas")
                    self.personas = gr.HTML(elem_id="plural-personas")
                    self.change = gr.HTML(elem_id="plural-change")
                    with gr.Accordion("Roll back a persona", open=False, elem_id="plural-rollback-box") as self.rb_box:
                        with gr.Row():
                            self.rb_persona = gr.Dropdown(label="Persona", choices=[], elem_id="plural-rb-persona")
                            self.rb_version = gr.Dropdown(label="Version", choices=[], elem_id="plural-rb-version")
                        self.rb_btn = gr.Button("Roll back", elem_id="plural-rollback", size="sm")
            gr.Markdown("### Recommendations")
            self.slots, self.cards, self.like, self.dislike = [], [], [], []
            with gr.Row(elem_id="plural-cards", equal_height=False):
                for rank in range(1, self.k + 1):
                    with gr.Column(visible=False, elem_id=f"plural-slot-{rank}", elem_classes="pl-slot",
                                   min_width=230) as slot:
                        self.cards.append(gr.HTML(elem_id=f"plural-card-{rank}"))
                        with gr.Row():
                            self.like.append(gr.Button("Like", elem_id=f"plural-like-{rank}", size="sm", min_width=60))
                            self.dislike.append(gr.Button("Not for me", elem_id=f"plural-dislike-{rank}", min_width=60,
                                                          size="sm"))
                    self.slots.append(slot)
            with gr.Row():
                self.weights_plot = gr.Plot(show_label=False, elem_id="plural-weights", format="png")
                self.mix_plot = gr.Plot(show_label=False, elem_id="plural-mix", format="png")
            self._wire()

    # ---- outputs -----------------------------------------------------------------------
    @property
    def outputs(self) -> list:
        return [self.state, self.url_user, self.url_thread, self.notice, self.chatbot, self.personas, self.change,
                self.rb_box, self.rb_persona, self.rb_version, self.weights_plot, self.mix_plot, self.user_in,
                *self.slots, *self.cards]

    def _render(self, view: ThreadView | None, notice: str | None, reply=None, prev: dict | None = None) -> dict:
        """Every output from the thread as the agent holds it (``view``; None: no user open). The
        plots are drawn again only when what they show changed since ``prev`` (the page's state)."""
        if view is None:
            out = {self.state: _empty_state(), self.url_user: "", self.url_thread: "",
                   self.notice: _notice(notice or "Pick a user to start."), self.chatbot: [],
                   self.personas: "", self.change: "", self.rb_box: gr.Accordion(open=False),
                   self.rb_persona: gr.Dropdown(choices=[], value=None),
                   self.rb_version: gr.Dropdown(choices=[], value=None),
                   self.weights_plot: None, self.mix_plot: None}
            out.update({s: gr.Column(visible=False) for s in self.slots})
            out.update({c: "" for c in self.cards})
            return out
        names = {p.persona_id: p.name for p in view.personas}
        colors = views.persona_colors([p.persona_id for p in view.personas])
        fb = view.last_feedback
        current = {p.persona_id: p for p in view.personas}
        change = ""
        if fb is not None:
            change = ('<div class="pl-change-title">What changed</div>'
                      + views.change_summary_html(fb, current.get(fb.persona_id or ""), view.note,
                                                  view.note_source))
        rb_persona, rb_version, rb_open, fb_key = self._rollback_offer(view, prev)
        # each plot is drawn (and sent) again only when what it shows changed
        weights_key = repr((view.user_id, [(p.persona_id, p.name, round(p.weight, 4)) for p in view.personas]))
        mix_key = repr((view.user_id, view.item_ids))
        same_weights = prev is not None and prev.get("weights_plot") == weights_key
        same_mix = prev is not None and prev.get("mix_plot") == mix_key
        out = {self.state: {"user": view.user_id, "thread": view.thread_id, "shown": view.item_ids,
                            "reply": reply.model_dump(mode="json") if reply is not None else None,
                            "weights_plot": weights_key, "mix_plot": mix_key, "feedback": fb_key,
                            "seen": _signature(view)},
               self.url_user: view.user_id, self.url_thread: view.thread_id or "",
               self.notice: _notice(notice, view), self.chatbot: views.chat_messages(view.transcript),
               self.personas: views.persona_panel_html(view.personas, fb.persona_id if fb else None),
               self.change: change, self.user_in: view.user_id,
               self.rb_box: gr.Accordion(open=True) if rb_open else gr.skip(),
               self.rb_persona: rb_persona, self.rb_version: rb_version,
               self.weights_plot: gr.skip() if same_weights else plots.persona_weights_figure(
                   views.persona_weights_frame(view.personas), list(colors.values())),
               self.mix_plot: gr.skip() if same_mix else plots.category_mix_figure(
                   views.category_mix_frame(view.items, self.chat.user_category_shares(view.user_id)))}
        for k in range(self.k):
            if k < len(view.items):
                r = view.items[k]
                out[self.slots[k]] = gr.Column(visible=True)
                out[self.cards[k]] = views.card_html(r, names, view.reactions.get(r.item_id), colors)
            else:
                out[self.slots[k]] = gr.Column(visible=False)
                out[self.cards[k]] = ""
        return out

    def _rollback_offer(self, view: ThreadView, prev: dict | None):
        """The rollback controls: after a reaction that changed a persona, that persona and its
        version before the change are picked (and the box opens the first time the change is
        shown), so undoing it is one click (:meth:`WebChat.undo_target`); otherwise nothing is picked."""
        choices = [(f"{p.name} ({p.persona_id})", p.persona_id) for p in view.personas]
        target = self.chat.undo_target(view)
        if target is None:
            return (gr.Dropdown(choices=choices, value=None), gr.Dropdown(choices=[], value=None), False, None)
        fb = view.last_feedback
        versions = [(label, v) for v, label in self.chat.versions(view.user_id, fb.persona_id)]
        key = f"{view.thread_id}:{fb.persona_id}:{fb.item_id}:{fb.persona_after.version if fb.persona_after else ''}"
        fresh = prev is None or prev.get("feedback") != key
        return (gr.Dropdown(choices=choices, value=fb.persona_id), gr.Dropdown(choices=versions, value=target),
                fresh, key)

    def _turn(self, turn: Turn, prev: dict | None) -> dict:
        notice = turn.notice
        if notice is None and self.chat.needs_follow_up(turn.reply):
            notice = "The model is writing its own text for this reply; the cards are the engine's, for now."
        return self._render(turn.view, notice, turn.reply, prev)

    @contextmanager
    def _working(self, thread: str | None):
        """Mark ``thread`` busy while an action on it runs (the refresh then leaves it alone)."""
        if not thread:
            yield
            return
        with self._busy_lock:
            self._busy[thread] = self._busy.get(thread, 0) + 1
        try:
            yield
        finally:
            with self._busy_lock:
                self._busy[thread] -= 1
                if not self._busy[thread]:
                    del self._busy[thread]

    def _guard(self, fn, state: dict):
        """Run ``fn`` and render its turn; a refusal or an error becomes the notice (never a trace)."""
        try:
            with self._working(state.get("thread")):
                return self._turn(fn(), state)
        except ThreadOwnershipError:
            return self._refused(state.get("user"), state.get("thread"))
        except UnknownUserError as e:
            return {self.notice: _notice(str(e))}
        except PluralError as e:
            return {self.notice: _notice(f"That did not work: {e}")}
        except Exception as e:
            log.exception("web action failed")
            return {self.notice: _notice(f"Something went wrong on my side ({type(e).__name__}); nothing was "
                                         "changed, please try again.")}

    def _refused(self, user: str | None, thread: str | None) -> dict:
        msg = (f"Thread \u201c{thread}\u201d belongs to another user, so it is not shown. "
               f"This is a new conversation for user {user}.")
        try:
            return self._render(self.chat.view(user, None), msg) if user else self._render(None, msg)
        except UnknownUserError as e:
            return self._render(None, str(e))

    # ---- handlers ----------------------------------------------------------------------
    def on_load(self, request: gr.Request) -> dict:
        params = dict(request.query_params) if request is not None else {}
        user, thread = (params.get("user") or "").strip(), (params.get("thread") or "").strip() or None
        if not user:
            return self._render(None, "Pick a user to start." + (" (The URL names a thread but no user.)"
                                                                 if thread else ""))
        try:
            return self._render(self.chat.view(user, thread), None)
        except ThreadOwnershipError:
            return self._refused(user, thread)
        except UnknownUserError as e:
            return self._render(None, str(e))
        except PluralError as e:  # a malformed thread id
            return self._render(self.chat.view(user, None), f"Cannot open that thread: {e}. This is a new "
                                                            "conversation.")
        except Exception as e:
            log.exception("opening the page failed")
            return self._render(None, f"Something went wrong on my side ({type(e).__name__}) opening user "
                                      f"{user}'s page; please reload.")

    def on_open(self, user: str | None, state: dict) -> dict:
        user = (user or "").strip()
        if not user:
            return {self.notice: _notice("Pick a user, or type a user id, then Open.")}
        if user == state.get("user") and state.get("thread"):
            return self._guard(lambda: Turn(view=self.chat.view(user, state["thread"])), state)
        return self._guard(lambda: Turn(view=self.chat.view(user, None)), {**state, "user": user, "thread": None})

    def on_new(self, state: dict) -> dict:
        if not state.get("user"):
            return {self.notice: _notice("Pick a user first.")}
        return self._guard(lambda: Turn(view=self.chat.view(state["user"], None),
                                        notice="A new conversation: ask for something."), state)

    def on_send(self, message: str, state: dict) -> dict:
        if not state.get("user"):
            return {self.notice: _notice("Pick a user first (the User box above), then ask.")}
        out = self._guard(lambda: self.chat.send(state["user"], state.get("thread"), message), state)
        reply = (out.get(self.state) or {}).get("reply")
        if reply is not None and not reply.get("error"):
            out[self.msg] = ""  # answered: clear the box (a message that was refused stays, to be edited)
        return out

    def on_react(self, rank: int, reaction: str, state: dict) -> dict:
        if not state.get("user"):
            return {self.notice: _notice("Pick a user first.")}
        return self._guard(lambda: self.chat.react(state["user"], state.get("thread"), rank, reaction,
                                                   state.get("shown") or []), state)

    def unchanged(self) -> dict:
        """The update that changes nothing on the page (an empty dict would reach Gradio as one
        value for all the outputs, an error)."""
        return {self.notice: gr.skip()}

    def on_tick(self, state: dict) -> dict:
        """Every few seconds: when the thread changed since this tab last showed it (another tab
        said something, reacted, rolled a persona back, or the model added its text), show the
        thread as it is now; else change nothing."""
        user, thread = state.get("user"), state.get("thread")
        with self._busy_lock:
            busy = bool(self._busy.get(thread))
        if not user or not thread or busy:  # an action on the thread renders it when it ends
            return self.unchanged()
        try:
            view = self.chat.view(user, thread)
        except Exception:  # a refresh that fails leaves the page as it is
            log.debug("refresh of thread %s failed", thread, exc_info=True)
            return self.unchanged()
        if _signature(view) == state.get("seen"):
            return self.unchanged()
        return self._render(view, "This conversation changed elsewhere (another tab?); here is the latest.",
                            prev=state)

    def on_follow_up(self, state: dict) -> dict:
        from agent.api import ChatReply

        reply = state.get("reply")
        reply = ChatReply.model_validate(reply) if reply else None
        if not self.chat.needs_follow_up(reply):
            return {self.notice: gr.skip()}
        out = self._guard(lambda: self.chat.follow_up(reply), state)
        if self.state in out:
            out[self.state] = {**out[self.state], "reply": None}
        return out

    def on_pick_persona(self, persona_id: str | None, state: dict) -> dict:
        if not persona_id or not state.get("user"):
            return {self.rb_version: gr.Dropdown(choices=[], value=None)}
        try:
            choices = [(label, v) for v, label in self.chat.versions(state["user"], persona_id)]
        except PluralError as e:
            return {self.notice: _notice(str(e))}
        return {self.rb_version: gr.Dropdown(choices=choices, value=None)}

    def on_rollback(self, persona_id: str | None, version, state: dict) -> dict:
        if not state.get("user") or not persona_id or version in (None, ""):
            return {self.notice: _notice("Pick a persona and one of its versions to roll back to.")}

        def run() -> Turn:
            line = self.chat.rollback(state["user"], persona_id, int(version))
            return Turn(view=self.chat.view(state["user"], state.get("thread")), notice=line)

        return self._guard(run, state)

    # ---- wiring ------------------------------------------------------------------------
    def _wire(self) -> None:
        outs = self.outputs
        turn_opts = {"outputs": outs, "concurrency_limit": 8, "show_progress": "minimal"}
        rt = self.chat.agent.runtime
        with_llm = rt.backend is not None and rt.config.llm_prose == "after"

        def after_turn(dep, follow_up: bool = True):
            """Write the thread into the URL; then, with a model, its follow-up as an event of its own
            (one at a time: the backend generates one reply after the other)."""
            dep = dep.then(None, inputs=[self.url_user, self.url_thread], outputs=None, js=SET_URL_JS)
            if follow_up and with_llm:
                dep.then(self.on_follow_up, inputs=[self.state], outputs=outs, concurrency_limit=1,
                         concurrency_id="plural-llm", show_progress="hidden")

        after_turn(self.demo.load(self.on_load, inputs=None, outputs=outs), follow_up=False)
        after_turn(gr.on([self.open_btn.click, self.user_in.select], self.on_open, inputs=[self.user_in, self.state],
                         **turn_opts), follow_up=False)
        after_turn(self.new_btn.click(self.on_new, inputs=[self.state], **turn_opts), follow_up=False)
        after_turn(gr.on([self.msg.submit, self.send_btn.click], self.on_send, inputs=[self.msg, self.state],
                         outputs=[*outs, self.msg], concurrency_limit=8, show_progress="minimal"))
        for k in range(self.k):
            for btn, reaction in ((self.like[k], "like"), (self.dislike[k], "dislike")):
                after_turn(btn.click(partial(self.on_react, k + 1, reaction), inputs=[self.state], **turn_opts))
        self.rb_persona.input(self.on_pick_persona, inputs=[self.rb_persona, self.state],
                              outputs=[self.rb_version, self.notice])
        self.rb_btn.click(self.on_rollback, inputs=[self.rb_persona, self.rb_version, self.state], **turn_opts)
        self.timer.tick(self.on_tick, inputs=[self.state], outputs=outs, show_progress="hidden",
                        concurrency_limit=8, concurrency_id="plural-refresh")


def _signature(view: ThreadView) -> str:
    """What the page shows of a thread, in short: a tab whose last signature differs is out of date."""
    return repr((view.user_id, view.thread_id, len(view.transcript), view.item_ids,
                 [r.explanation_source for r in view.items], [(p.persona_id, p.version) for p in view.personas],
                 view.last_feedback.model_dump_json() if view.last_feedback else None, view.note,
                 sorted(view.reactions.items())))


def _notice(text: str | None, view: ThreadView | None = None) -> str:
    if text:
        return text
    if view is not None and view.thread_id is None:
        return f"User {view.user_id}: a new conversation. Ask for something."
    if view is not None:
        return f"User {view.user_id}, thread `{view.thread_id}` (the URL resumes it)."
    return ""


def build_app(chat: WebChat, *, title: str = "Plural") -> gr.Blocks:
    """The page over ``chat``, with one card slot per item of the agent's lists (``AgentConfig.k``)."""
    plots.warm_up()
    return ChatPage(chat, chat.agent.runtime.config.k, title).demo


def launch(demo: gr.Blocks, *, host: str = "127.0.0.1", port: int | None = 7860, block: bool = True,
           quiet: bool = False):
    """Serve ``demo`` on ``host:port`` (loopback by default): no share link, no telemetry, no
    server-side rendering. ``block=False`` returns at once (the server runs in a thread; stop it
    with ``demo.close()``). Returns what :meth:`gradio.Blocks.launch` returns."""
    demo.queue(default_concurrency_limit=8)
    return demo.launch(server_name=host, server_port=port, share=False, prevent_thread_lock=not block,
                       quiet=quiet, ssr_mode=False, show_error=False, css=CSS, theme=gr.themes.Default(),
                       footer_links=[], inbrowser=False, enable_monitoring=False, mcp_server=False)


__all__ = ["ChatPage", "build_app", "launch"]
