"""``plural web`` in a real browser: the command serves ML-100K (no LLM) and Playwright drives
Debian's Chromium through the page: open it, pick user 1, ask for "a scary movie", check the
cards (horror or thriller titles, each with its persona, attention bars and evidence), dislike
one, check the persona panel shows the change, reload, check the conversation is still there.
Then two tabs on one thread (the second follows the first by itself), and another user's thread
in the URL.

Screenshots go to the test's temp folder; with ``PLURAL_WRITE_SCREENSHOTS=1`` the one after the
dislike is also written to ``docs/img/web-chat.png`` (the README's picture).

Chromium is the system one (``.ci/install-chromium.sh``, ``apt-get install chromium``; or
``$PLURAL_CHROMIUM``), never a downloaded one: the tests skip, saying so, only where none is found.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.server]

ROOT = Path(__file__).resolve().parents[1]
README_SHOT = ROOT / "docs" / "img" / "web-chat.png"
READY_TIMEOUT_S = 300  # a cold CI cache builds the ML-100K engine (embeddings, personas) first
STEP_MS = 30_000  # the longest any one step of the page may take
VIEWPORT = {"width": 1400, "height": 1000}


def _chromium() -> str | None:
    named = os.environ.get("PLURAL_CHROMIUM")
    if named:
        if not (os.path.isfile(named) and os.access(named, os.X_OK)):
            pytest.fail(f"PLURAL_CHROMIUM={named!r} is not an executable file; unset it or name a Chromium binary")
        return named
    for path in (shutil.which("chromium"), shutil.which("chromium-browser"), "/usr/bin/chromium",
                 "/usr/bin/chromium-browser"):
        if path and os.access(path, os.X_OK):
            return path
    return None


@pytest.fixture(scope="module")
def chromium():
    path = _chromium()
    if path is None:
        pytest.skip("Chromium not found ($PLURAL_CHROMIUM, chromium or chromium-browser on PATH, /usr/bin): "
                    "install it with `apt-get install chromium` (CI: .ci/install-chromium.sh)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, args=["--no-sandbox"])
        yield browser
        browser.close()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory, chromium):
    """``plural web --user 1 --llm none --dataset ml-100k`` on a free port, in its own process
    group (the data directory and caches are the test session's, see conftest)."""
    import httpx

    port = _free_port()
    log = tmp_path_factory.mktemp("web") / "server.log"
    plural = Path(sys.executable).parent / "plural"
    with log.open("w") as out:
        proc = subprocess.Popen([str(plural), "web", "--user", "1", "--llm", "none", "--dataset", "ml-100k",
                                 "--port", str(port)], stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                start_new_session=True, env={**os.environ, "COLUMNS": "200"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"plural web exited with {proc.returncode} before it served; its log:\n"
                            f"{log.read_text()[-6000:]}")
            try:
                if httpx.get(url + "/", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"plural web did not serve {url} within {READY_TIMEOUT_S} s; its log:\n"
                            f"{log.read_text()[-6000:]}")
            time.sleep(0.5)
        assert f"Plural web on http://127.0.0.1:{port}/?user=1" in log.read_text()
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=20)


@pytest.fixture
def shots(tmp_path):
    """Where screenshots go: the test's temp folder, and the README's when asked."""

    def save(page, name: str, readme: bool = False) -> Path:
        path = tmp_path / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        if readme and os.environ.get("PLURAL_WRITE_SCREENSHOTS") == "1":
            README_SHOT.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, README_SHOT)
        return path

    return save


def _open(browser, url: str):
    page = browser.new_page(viewport=VIEWPORT)
    page.set_default_timeout(STEP_MS)
    page.goto(url)
    page.wait_for_selector("#plural-message textarea")
    return page


def _notice(page, contains: str) -> str:
    """Wait until the notice line says ``contains``; return it."""
    page.wait_for_function("s => document.querySelector('#plural-notice').innerText.includes(s)", arg=contains)
    return page.inner_text("#plural-notice")


def _cards(page) -> list[dict]:
    """What each visible card shows."""
    return page.eval_on_selector_all("#plural-cards .pl-card", """cards => cards.map(c => ({
        title: c.querySelector('.pl-title').innerText,
        categories: [...c.querySelectorAll('.pl-chip')].map(x => x.innerText),
        persona: (c.querySelector('.pl-persona b') || {}).innerText || null,
        bars: [...c.querySelectorAll('.pl-att')].map(x => x.querySelector('.pl-att-name').innerText),
        evidence: [...c.querySelectorAll('.pl-evidence li')].map(x => x.innerText),
        source: c.querySelector('.pl-src').innerText.toLowerCase(),
        reacted: (c.querySelector('.pl-reacted') || {}).innerText || null}))""")


def _personas(page) -> dict[str, dict]:
    return {r["name"]: r for r in page.eval_on_selector_all("#plural-personas .pl-prow", """rows => rows.map(r => ({
        name: r.querySelector('.pl-pname').innerText, weight: r.querySelector('.pl-weight').innerText,
        version: r.querySelector('.pl-version').innerText, desc: r.querySelector('.pl-pdesc').innerText,
        highlight: r.classList.contains('pl-highlight')}))""")}


def _ask(page, message: str) -> float:
    """Send ``message`` (Enter) and wait until the first card changes; the seconds it took."""
    before = page.inner_text("#plural-card-1") if page.locator("#plural-card-1 .pl-card").count() else ""
    page.fill("#plural-message textarea", message)
    t0 = time.perf_counter()
    page.press("#plural-message textarea", "Enter")
    page.wait_for_function("b => { const c = document.querySelector('#plural-card-1 .pl-card');"
                           " return c !== null && c.innerText !== b; }", arg=before)
    return time.perf_counter() - t0


def test_ask_dislike_and_resume_in_a_real_browser(site, chromium, shots):
    page = _open(chromium, site + "/")
    _notice(page, "Pick a user")
    # pick user 1 from the list
    box = page.locator("#plural-user input")
    box.click()
    box.fill("1")
    page.get_by_role("option", name="1", exact=True).click()
    _notice(page, "User 1: a new conversation")
    assert re.search(r"[?&]user=1(&|$)", page.url)

    took = _ask(page, "a scary movie")
    print(f"\nanswer latency in the page (no LLM): {took:.2f} s")
    assert took < 10, f"the page took {took:.1f} s to show the cards"
    page.wait_for_function("() => location.search.includes('thread=')")  # written just after the cards
    thread = re.search(r"[?&]thread=([A-Za-z0-9_.-]+)", page.url)
    cards = _cards(page)
    assert len(cards) == 5
    scary = [c for c in cards if {"Horror", "Thriller"} & set(c["categories"])]
    assert len(scary) >= 3, cards
    personas = _personas(page)
    assert len(personas) >= 2 and all(p["version"].startswith("v") and p["desc"] for p in personas.values())
    for c in cards:
        assert c["persona"] and c["persona"].strip("\u201c\u201d") in personas, c
        assert sorted(c["bars"]) == sorted(personas), c  # an attention bar per persona
        assert c["evidence"] and c["source"] == "template", c
    assert page.locator("#plural-weights img, #plural-weights canvas, #plural-weights svg").count() >= 1
    assert page.locator("#plural-mix img, #plural-mix canvas, #plural-mix svg").count() >= 1
    shots(page, "1-cards")

    # dislike the second card: the panel shows what changed
    second = cards[1]
    page.click("#plural-dislike-2")
    page.wait_for_selector("#plural-change .pl-change")
    change = page.inner_text("#plural-change")
    assert "What changed" in change and f"You disliked {second['title']}" in change, change
    persona = second["persona"].strip("\u201c\u201d")
    assert f"\u2192 \u201c{persona}\u201d" in change, change
    m = re.search(r"weight (\d+)% \u2192 (\d+)%", change)
    assert m and int(m.group(2)) <= int(m.group(1)), change
    after = _personas(page)
    assert after[persona]["highlight"] and sum(p["highlight"] for p in after.values()) == 1
    assert after[persona]["weight"] == f"{m.group(2)}%"
    assert _cards(page)[1]["reacted"] == "you disliked this"
    assert page.locator("#plural-rollback").is_visible()  # the rollback is offered beside the change
    chat = page.inner_text("#plural-chat")
    assert "not #2" in chat and second["title"] in chat
    shots(page, "2-after-dislike", readme=True)

    # reload: the same thread, conversation, list and change
    url = page.url
    page.reload()
    page.wait_for_selector("#plural-change .pl-change")
    assert page.url == url
    chat = page.inner_text("#plural-chat")
    assert "a scary movie" in chat and "not #2" in chat and second["title"] in chat
    assert [c["title"] for c in _cards(page)] == [c["title"] for c in cards]
    assert f"You disliked {second['title']}" in page.inner_text("#plural-change")
    _notice(page, f"thread {thread.group(1)}")
    shots(page, "3-after-reload")
    page.close()


def test_two_tabs_and_another_users_thread(site, chromium, shots):
    a = _open(chromium, site + "/?user=2")
    _notice(a, "User 2: a new conversation")
    _ask(a, "something light and funny")
    a.wait_for_function("() => location.search.includes('thread=')")
    url = a.url
    b = _open(chromium, url)  # a second tab on the same thread
    b.wait_for_selector("#plural-card-1 .pl-card")
    assert [c["title"] for c in _cards(b)] == [c["title"] for c in _cards(a)]
    _ask(a, "a war movie")  # tab A moves the thread on: tab B follows by itself
    titles = [c["title"] for c in _cards(a)]
    b.wait_for_function("t => document.querySelector('#plural-card-1 .pl-title').innerText === t", arg=titles[0])
    _notice(b, "changed elsewhere")
    assert [c["title"] for c in _cards(b)] == titles and "a war movie" in b.inner_text("#plural-chat")
    a.click("#plural-dislike-1")  # a reaction in tab A: tab B shows the change too
    a.wait_for_selector("#plural-change .pl-change")
    b.wait_for_selector("#plural-change .pl-change")
    assert f"You disliked {titles[0]}" in b.inner_text("#plural-change")
    assert _cards(b)[0]["reacted"] == "you disliked this"
    shots(b, "4-second-tab")
    # user 3 opening user 2's thread is refused; the URL drops the thread
    thread = re.search(r"thread=([A-Za-z0-9_.-]+)", url).group(1)
    c = _open(chromium, f"{site}/?user=3&thread={thread}")
    _notice(c, "belongs to another user")
    assert c.locator("#plural-cards .pl-card").count() == 0 and "funny" not in c.inner_text("#plural-chat")
    c.wait_for_function("() => !location.search.includes('thread=')")
    assert "user=3" in c.url
    # an empty message, and a very long one, get a message (no trace), and the box keeps the text
    c.press("#plural-message textarea", "Enter")
    _notice(c, "empty")
    c.fill("#plural-message textarea", "scary " * 500)
    c.press("#plural-message textarea", "Enter")
    text = _notice(c, "characters")
    assert "Traceback" not in text and "2000" in text
    assert len(c.input_value("#plural-message textarea")) > 2000
    shots(c, "5-refused")
    for p in (a, b, c):
        p.close()


# ---- the model's text after the cards (in process: synthetic data, a scripted model) -----------
def _held_model(release):
    """A model that writes valid explanations, but only once ``release`` is set."""
    from fakes.answers import grounded_explanations

    from agent.llm import ScriptedLLM

    def answer(req) -> str:
        assert release.wait(60), "the test never released the model"
        return grounded_explanations(req) or "not json"

    return ScriptedLLM(answer)


@pytest.fixture
def served(tmp_path, hash_config):
    """``serve(agent, block=False)`` over a synthetic-data agent with the given backend."""
    from agent.api import PluralAgent
    from agent.engine import Engine
    from agent.runtime import AgentConfig, AgentRuntime
    from agent.web import serve
    from memory.loaders import DataSource

    opened = []

    def start(backend) -> str:
        engine = Engine.open(DataSource(dataset="synthetic"), hash_config, tmp_path / "dd")
        agent = PluralAgent(AgentRuntime(engine, backend, AgentConfig(k=5)))
        port = _free_port()
        demo = serve(agent, port=port, block=False, quiet=True)
        opened.append((demo, agent))
        return f"http://127.0.0.1:{port}"

    yield start
    for demo, agent in opened:
        demo.close()
        agent.close()


def test_the_models_text_arrives_after_the_cards(chromium, served, shots):
    import threading

    release = threading.Event()
    try:
        llm = _held_model(release)
        page = _open(chromium, served(llm) + "/?user=4")
        _notice(page, "User 4: a new conversation")
        _ask(page, "a space movie")  # the cards come while the model is held
        assert [c["source"] for c in _cards(page)] == ["template"] * 5
        _notice(page, "The model is writing its own text")
        shots(page, "6-model-writing")
        release.set()
        page.wait_for_selector("#plural-card-1 .pl-src-model")
        _notice(page, "The model wrote 5 of the 5 explanations")
        assert [c["source"] for c in _cards(page)] == ["model"] * 5
        assert "Because you enjoyed" in page.inner_text("#plural-card-1 .pl-expl")
        shots(page, "7-model-wrote")
        page.close()
    finally:
        release.set()


def test_a_failing_model_falls_back_to_the_templates_visibly(chromium, served, shots):
    from agent.llm import ScriptedLLM

    page = _open(chromium, served(ScriptedLLM.failing(ConnectionError("no server at 127.0.0.1:9"))) + "/?user=5")
    _ask(page, "a space movie")
    text = _notice(page, "could not add its text")
    assert "no server at 127.0.0.1:9" in text and "template explanations" in text
    assert [c["source"] for c in _cards(page)] == ["template"] * 5
    shots(page, "8-model-failed")
    page.close()
