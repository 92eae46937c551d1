"""The web page without a browser: :mod:`agent.web.session` over a synthetic-data agent, the
page's handlers (:class:`agent.web.app.ChatPage`) and the pure views. Unknown users, empty and
long messages, another user's thread, two tabs on one thread, a failing or garbage-speaking LLM
falling back to the templates where the person can see it, the model's text arriving after
the cards."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from fakes.answers import grounded_explanations

from agent.api import PluralAgent
from agent.llm import ScriptedLLM
from agent.runtime import AgentConfig, AgentRuntime
from agent.threads import ThreadOwnershipError
from agent.web import views
from agent.web.session import WebChat
from memory.errors import UnknownUserError


def _agent(tmp_path, config, backend=None) -> PluralAgent:
    from agent.engine import Engine
    from memory.loaders import DataSource

    engine = Engine.open(DataSource(dataset="synthetic"), config, tmp_path / "dd")
    return PluralAgent(AgentRuntime(engine, backend, AgentConfig(k=5)))


@pytest.fixture(scope="module")
def web(tmp_path_factory, hash_config):
    """One agent for the tests that need no LLM; each test works on users of its own."""
    agent = _agent(tmp_path_factory.mktemp("web"), hash_config)
    yield WebChat(agent)
    agent.close()


@pytest.fixture(scope="module")
def page(web):
    from agent.web.app import ChatPage

    return ChatPage(web, k=5, title="Plural")


def explaining_llm(answer_rest: str = "not json"):
    """A model that writes valid explanations (opening on one of the item's evidence titles)
    and answers anything else with ``answer_rest``."""

    def answer(req) -> str:
        return grounded_explanations(req) or answer_rest

    return ScriptedLLM(answer)


# ---- users ---------------------------------------------------------------------------------------
def test_an_unknown_user_gets_a_message_naming_it_and_the_known_ones(web, page):
    with pytest.raises(UnknownUserError, match=r"'nobody'.*known users: 120"):
        web.view("nobody", None)
    with pytest.raises(UnknownUserError, match="'nobody'"):
        web.send("nobody", None, "a space movie")
    out = page.on_open("nobody", {})
    assert "unknown user 'nobody'" in out[page.notice] and "known users" in out[page.notice]
    assert page.state not in out  # the page stays as it was
    out = page.on_load(SimpleNamespace(query_params={"user": "nobody"}))
    assert "unknown user 'nobody'" in out[page.notice] and out[page.chatbot] == []
    out = page.on_open("  7 ", {})  # typed with spaces: the id is stripped
    assert out[page.state]["user"] == "7" and "User 7: a new conversation" in out[page.notice]
    assert "7" in web.users() and len(web.users()) == 120


# ---- messages --------------------------------------------------------------------------------------
def test_empty_and_very_long_messages_get_a_message_and_change_nothing(web, page):
    turn = web.send("11", None, "   ")
    assert turn.reply.error and "empty" in turn.notice.lower()
    assert turn.view.thread_id is None  # nothing was said: still a new conversation
    turn = web.send("11", None, "x " * 3000)
    assert turn.reply.error and "5999 characters" in turn.notice and "2000" in turn.notice
    assert turn.view.thread_id is None
    first = web.send("11", None, "a space movie")
    tid = first.view.thread_id
    assert first.notice is None and len(first.view.items) == 5 and len(first.view.transcript) == 2
    again = web.send("11", tid, "")
    assert again.reply.error and again.view.transcript == first.view.transcript
    assert again.view.item_ids == first.view.item_ids
    # the page: the notice says it, the box keeps the message to be edited, no trace anywhere
    state = page.on_open("11", {})[page.state] | {"thread": tid}
    out = page.on_send("y" * 2500, state)
    assert "2500 characters" in out[page.notice] and page.msg not in out
    assert "Traceback" not in json.dumps(out[page.notice])
    out = page.on_send("a space movie", {"user": None})
    assert "Pick a user first" in out[page.notice]


def test_a_request_gives_cards_with_persona_attention_evidence_and_source(web):
    turn = web.send("12", None, "a space movie")
    v = turn.view
    assert v.thread_id and turn.reply.intent == "recommend"
    names = {p.persona_id: p.name for p in v.personas}
    for r in v.items:
        html = views.card_html(r, names, v.reactions.get(r.item_id))
        assert views._e(r.title) in html and r.persona is not None and r.evidence
        assert f"\u201c{views._e(names[r.persona.id])}\u201d" in html
        assert all(f'data-persona="{pid}"' in html for pid in r.attention)  # one bar per persona
        assert all(views._e(e.title) in html for e in r.evidence)
        assert all(views._e(c) in html for c in r.categories)
        assert 'pl-src-template">template<' in html and r.explanation_source == "template"
    assert sum("Space" in r.categories for r in v.items) >= 4  # the request was read
    panel = views.persona_panel_html(v.personas)
    assert all(views._e(p.name) in panel and f"v{p.version}" in panel and views._e(p.description) in panel
               for p in v.personas)
    frame = views.category_mix_frame(v.items, web.user_category_shares("12"))
    assert set(frame["source"]) == {"this list", "your history"} and "Space" in set(frame["category"])
    w = views.persona_weights_frame(v.personas)
    assert list(w["persona"]) == [p.name for p in v.personas] and abs(w["weight"].sum() - 100) < 1


def test_a_dislike_shows_the_change_and_can_be_rolled_back(web, page):
    first = web.send("13", None, "a space movie")
    tid, shown = first.view.thread_id, first.view.item_ids
    before = {p.persona_id: p for p in first.view.personas}
    turn = web.react("13", tid, 2, "dislike", shown)
    fb = turn.view.last_feedback
    assert turn.notice is None and turn.reply.intent == "feedback"
    assert fb is not None and fb.item_id == shown[1] and fb.reaction == "dislike"
    assert turn.view.reactions[shown[1]] == "dislike"
    assert turn.view.item_ids == shown  # a reaction keeps the list ("#2" still means the same title)
    now = {p.persona_id: p for p in turn.view.personas}[fb.persona_id]
    assert now.weight < before[fb.persona_id].weight and now.version > before[fb.persona_id].version
    html = views.change_summary_html(fb, now)
    assert "You disliked" in html and views._e(fb.title) in html
    assert f"weight {100 * fb.persona_before.weight:.0f}% \u2192 {100 * fb.persona_after.weight:.0f}%" in html
    card = views.card_html(turn.view.items[1], {p.persona_id: p.name for p in turn.view.personas}, "dislike")
    assert "you disliked this" in card
    # the page draws again only the plot whose data changed: the weights, not the list's mix
    from matplotlib.figure import Figure

    shown_first = page._render(first.view, None)
    again = page._render(turn.view, None, prev=shown_first[page.state])
    assert isinstance(shown_first[page.mix_plot], Figure) and isinstance(again[page.weights_plot], Figure)
    assert again[page.mix_plot] == {"__type__": "update"}  # gr.skip(): left as it is
    # the page offers the rollback of that persona to its version before the change
    assert web.undo_target(turn.view) == fb.persona_before.version
    out = page._render(turn.view, None)
    assert out[page.rb_persona].value == fb.persona_id and out[page.rb_version].value == fb.persona_before.version
    line = web.rollback("13", fb.persona_id, fb.persona_before.version)
    assert f"back to version {fb.persona_before.version}" in line
    after = {p.persona_id: p for p in web.view("13", tid).personas}[fb.persona_id]
    assert (after.name, after.description) == (fb.persona_before.name, fb.persona_before.description)
    assert after.version > now.version
    assert web.undo_target(web.view("13", tid)) is None  # nothing left to undo
    assert page._render(web.view("13", tid), None)[page.rb_persona].value is None


# ---- threads -----------------------------------------------------------------------------------------
def test_another_users_thread_is_refused_and_left_as_it_was(web, page):
    mine = web.send("14", None, "a space movie")
    tid = mine.view.thread_id
    with pytest.raises(ThreadOwnershipError, match=tid):
        web.view("15", tid)
    with pytest.raises(ThreadOwnershipError):
        web.send("15", tid, "not #1")
    with pytest.raises(ThreadOwnershipError):
        web.react("15", tid, 1, "dislike", mine.view.item_ids)
    still = web.view("14", tid)
    assert still.transcript == mine.view.transcript and still.last_feedback is None
    out = page.on_load(SimpleNamespace(query_params={"user": "15", "thread": tid}))
    assert "belongs to another user" in out[page.notice] and out[page.chatbot] == []
    assert out[page.url_thread] == "" and out[page.state]["thread"] is None  # the URL drops the thread
    out = page.on_load(SimpleNamespace(query_params={"user": "14", "thread": tid}))  # the owner resumes it
    assert out[page.chatbot] == views.chat_messages(mine.view.transcript) and out[page.url_thread] == tid
    out = page.on_load(SimpleNamespace(query_params={"user": "14", "thread": "no such/thread"}))
    assert "Cannot open that thread" in out[page.notice] and "'no such/thread'" in out[page.notice]


def test_two_tabs_on_one_thread_stay_consistent(web, tmp_path):
    a = web.send("16", None, "a space movie")
    tid = a.view.thread_id
    b = web.view("16", tid)  # the second tab opens the thread's URL
    assert b.transcript == a.view.transcript and b.item_ids == a.view.item_ids
    a2 = web.send("16", tid, "something romantic")  # tab A moves the thread on
    assert a2.view.item_ids != b.item_ids
    versions = len(web.agent.persona_versions("16"))
    stale = web.react("16", tid, 1, "dislike", b.item_ids)  # tab B still shows the old list
    assert stale.reply is None and "out of date" in stale.notice
    assert stale.view.item_ids == a2.view.item_ids and stale.view.transcript == a2.view.transcript
    assert len(web.agent.persona_versions("16")) == versions and not stale.view.reactions
    fresh = web.react("16", tid, 1, "dislike", stale.view.item_ids)  # what tab B shows now
    assert fresh.view.last_feedback.item_id == a2.view.item_ids[0]
    again = web.view("16", tid)  # tab A reloads: the same thread, reaction and change
    assert again.transcript == fresh.view.transcript and again.last_feedback == fresh.view.last_feedback
    assert again.reactions == {a2.view.item_ids[0]: "dislike"}
    other = WebChat(web.agent)  # another page object over the same agent reads the same
    assert other.view("16", tid).model_dump() == again.model_dump()


def test_a_tab_refreshes_when_its_thread_changed_elsewhere(web, page):
    a = web.send("18", None, "a space movie")
    tid = a.view.thread_id
    tab_b = page._render(web.view("18", tid), None)[page.state]  # tab B shows the thread
    assert page.on_tick(tab_b) == page.unchanged()  # nothing changed: nothing is sent
    assert page.on_tick({"user": "18", "thread": None}) == page.unchanged() and page.on_tick({}) == page.unchanged()
    moved = web.send("18", tid, "something romantic")  # tab A moves the thread on
    with page._working(tid):  # while an action on the thread runs, the refresh waits
        assert page.on_tick(tab_b) == page.unchanged()
    out = page.on_tick(tab_b)
    assert "changed elsewhere" in out[page.notice] and out[page.state]["shown"] == moved.view.item_ids
    assert out[page.chatbot] == views.chat_messages(moved.view.transcript)
    assert page.on_tick(out[page.state]) == page.unchanged()  # shown now: quiet again
    web.react("18", tid, 1, "like", moved.view.item_ids)
    out2 = page.on_tick(out[page.state])
    assert "What changed" in out2[page.change] and "You liked" in out2[page.change]


# ---- the LLM -------------------------------------------------------------------------------------------
FAILING = {
    "down": lambda: ScriptedLLM.failing(ConnectionError("server at 127.0.0.1:9 is down")),
    "raises": lambda: ScriptedLLM(lambda req: RuntimeError("the backend broke its contract")),
    "garbage": lambda: ScriptedLLM(lambda req: "}}} not json at all {{{"),
}


@pytest.mark.parametrize("kind", sorted(FAILING))
def test_a_failing_llm_leaves_the_templates_and_says_so(tmp_path, hash_config, kind):
    llm = FAILING[kind]()
    agent = _agent(tmp_path, hash_config, llm)
    try:
        chat = WebChat(agent)
        turn = chat.send("21", None, "a space movie")
        assert not llm.calls  # the cards come from the engine, before the model is asked anything
        assert chat.needs_follow_up(turn.reply) and all(r.explanation_source == "template" for r in turn.view.items)
        later = chat.follow_up(turn.reply)
        assert llm.calls  # the model was asked, afterwards
        assert all(r.explanation_source == "template" for r in later.view.items)
        assert later.view.item_ids == turn.view.item_ids and later.view.transcript == turn.view.transcript
        if kind == "garbage":
            assert "did not pass validation" in later.notice and "template" in later.notice
        else:
            detail = "is down" if kind == "down" else "broke its contract"
            assert "could not add its text" in later.notice and detail in later.notice
            assert "template explanations" in later.notice
        fb = chat.react("21", turn.view.thread_id, 1, "dislike", turn.view.item_ids)
        assert fb.view.last_feedback is not None  # the reaction itself never waits for the model
        after_fb = chat.follow_up(fb.reply)
        # a model that wrote nothing adds no persona version: the persona stays as the reaction left it
        p_before = {p.persona_id: p for p in fb.view.personas}[fb.view.last_feedback.persona_id]
        p_now = {p.persona_id: p for p in after_fb.view.personas}[p_before.persona_id]
        assert p_now.version == p_before.version and p_now.text_source == p_before.text_source
        if kind != "garbage":
            assert "the persona stays as your reaction left it" in after_fb.notice
    finally:
        agent.close()


def test_the_models_explanations_arrive_after_the_cards_marked_model(tmp_path, hash_config):
    llm = explaining_llm()
    agent = _agent(tmp_path, hash_config, llm)
    try:
        chat = WebChat(agent)
        turn = chat.send("22", None, "a space movie")
        assert not llm.calls and all(r.explanation_source == "template" for r in turn.view.items)
        later = chat.follow_up(turn.reply)
        assert [r.explanation_source for r in later.view.items] == ["llm"] * 5
        assert "The model wrote 5 of the 5 explanations" in later.notice
        names = {p.persona_id: p.name for p in later.view.personas}
        html = views.card_html(later.view.items[0], names)
        assert 'pl-src-model">model<' in html and "Because you enjoyed" in html
        assert [r.explanation_source for r in chat.view("22", turn.view.thread_id).items] == ["llm"] * 5  # a reload
        nxt = chat.send("22", turn.view.thread_id, "something romantic")  # a new list: templates again
        assert all(r.explanation_source == "template" for r in nxt.view.items)
    finally:
        agent.close()


def test_no_follow_up_without_a_model(web):
    turn = web.send("17", None, "a space movie")
    assert not web.needs_follow_up(turn.reply) and not web.needs_follow_up(None)


# ---- views ---------------------------------------------------------------------------------------------
def _feedback(**refinement):
    from agent.graph.builder import FeedbackAnswer
    from personas.model import PersonaView

    before = PersonaView(persona_id="p1", user_id="1", name="Space", description="Enjoys space operas.", weight=0.4)
    after = before.model_copy(update={"weight": 0.35})
    if refinement.pop("rewritten", False):
        after = after.model_copy(update={"name": "Deep Space", "description": "Enjoys slow, cold space stories."})
    return FeedbackAnswer(user_id="1", item_id="7", title="Alien <1979>", reaction="dislike", persona_id="p1",
                          persona_name="Space", refinement=refinement, persona_before=before, persona_after=after)


def test_change_summary_says_rewritten_refused_or_kept():
    refused = views.change_summary_html(_feedback(proposed={"name": "Grim Space", "description": "Bleak."},
                                                  guard={"old": 0.81, "new": 0.62, "accepted": False},
                                                  loss="It missed the dislike of Alien."))
    assert "drift guard refused" in refused and "Grim Space" in refused and "0.62 against 0.81" in refused
    assert "weight 40% \u2192 35%" in refused and "Alien &lt;1979&gt;" in refused  # escaped
    assert "It missed the dislike of Alien." in refused
    rewritten = views.change_summary_html(_feedback(rewritten=True, loss="Too broad."), note="I sharpened it.")
    assert "rewritten" in rewritten and "Deep Space" in rewritten and "why: Too broad." in rewritten
    assert "I sharpened it." in rewritten and "drift guard" not in rewritten
    kept = views.change_summary_html(_feedback(guard={"accepted": False, "reason": "no valid rewrite"}))
    assert "text kept: no valid rewrite" in kept


def test_card_escapes_what_it_shows():
    from personas.recommendation import PersonaRef, Recommendation

    rec = Recommendation(item_id="x", title="<script>alert(1)</script>", score=0.1, rank=1,
                         persona=PersonaRef(id="p1", name="<b>"), attention={"p1": 1.0},
                         explanation="a & b", categories=["<i>"])
    html = views.card_html(rec, {"p1": "<b>"})
    assert "<script>" not in html and "&lt;script&gt;" in html and "&lt;i&gt;" in html and "a &amp; b" in html


# ---- the command -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("args", "named"), [
    (["--port", "0"], "invalid --port 0; allowed: 1-65535"),
    (["--k", "50"], "invalid --k 50; allowed: an integer from 1 to 20"),
    (["--mode", "loudest"], "invalid --mode 'loudest'; allowed: calibrated, persona_calibrated"),
])
def test_plural_web_rejects_bad_options_before_loading_anything(capsys, args, named):
    from agent.cli import main

    code = main(["web", "--dataset", "synthetic", "--llm", "none", *args])
    err = capsys.readouterr().err
    assert code == 2 and named in " ".join(err.split()), err
