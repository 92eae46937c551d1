"""The OpenAI-compatible backend: against a real ``transformers serve`` process, and against dead servers.

The server (``tests/fakes/transformers_serve.py``) is ``transformers serve`` on 127.0.0.1 on a
free port with the packaged SmolLM2 (its cached fp32 folder), started once per session.
``transformers serve`` ignores ``response_format`` and ``n``, which is exactly why the backend
validates on the client side: these tests hold it to that. What every backend must do is in
``test_llm_contract.py``; this module keeps what is particular to HTTP (faults, retries, budget).
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import time
from types import SimpleNamespace

import pytest
from fakes.answers import ALIENS
from fakes.transformers_serve import free_port, shared_server

from agent.llm import LLMRequest, SamplingConfig
from agent.llm.openai_backend import OpenAIBackend
from agent.llm.tasks import explain_recommendations

REC = ALIENS


# -- faults (no model needed) ---------------------------------------------------------------
def test_server_down_gives_a_clear_error_within_the_timeout():
    llm = OpenAIBackend(
        "m", base_url=f"http://127.0.0.1:{free_port()}/v1", timeout_s=3, max_retries=2, backoff_s=0.1
    )
    t0 = time.monotonic()
    out = llm.generate([LLMRequest(messages="hi"), LLMRequest(messages="there")])
    elapsed = time.monotonic() - t0
    assert elapsed < 3.5
    for c in out:
        assert not c.ok and c.finish_reason == "error"
        assert "APIConnectionError" in c.error and "3 attempts" in c.error and "127.0.0.1" in c.error


@pytest.fixture
def hanging_server():
    """Accepts connections and never answers: a stuck server."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    conns, stop = [], threading.Event()

    def accept():
        sock.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                conns.append(sock.accept()[0])

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    stop.set()
    t.join(2)
    for c in conns:
        c.close()
    sock.close()


def test_stuck_server_times_out_within_the_budget_and_tasks_fall_back(hanging_server):
    llm = OpenAIBackend("m", base_url=hanging_server, timeout_s=1.5, max_retries=3, backoff_s=0.1)
    t0 = time.monotonic()
    res = explain_recommendations(llm, [REC])
    assert time.monotonic() - t0 < 2.5
    assert res.llm_error and "Timeout" in res.llm_error
    assert res.items[0].source == "template" and res.items[0].fallback_reason == "backend_error"
    assert res.items[0].cited_titles == ["Alien (1979)", "Star Wars (1977)"]


def test_bad_settings_are_rejected():
    from memory.errors import UsageError

    with pytest.raises(UsageError):
        OpenAIBackend("m", timeout_s=0)
    with pytest.raises(UsageError):
        OpenAIBackend("m", max_concurrency=0)


# -- what the backend makes of a server's answers (a scripted client, no server) ------------------
def scripted_client(monkeypatch, llm: OpenAIBackend, answers: list[tuple[str | None, str | None]]):
    """Make ``llm``'s client answer one choice per call from ``answers`` (finish reason, text);
    returns the keyword arguments of every call."""
    sent: list[dict] = []

    def create(**kwargs):
        sent.append(kwargs)
        reason, text = answers[len(sent) - 1]
        choice = SimpleNamespace(finish_reason=reason, message=SimpleNamespace(content=text))
        return SimpleNamespace(choices=[choice], usage=SimpleNamespace(prompt_tokens=5, completion_tokens=3))

    monkeypatch.setattr(llm.client.chat.completions, "create", create)
    return sent


@pytest.mark.parametrize(
    "raw, reason", [("stop", "stop"), (None, "stop"), ("length", "length"), ("content_filter", "error")]
)
def test_server_finish_reasons_are_normalised(monkeypatch, raw, reason):
    llm = OpenAIBackend("m", base_url="http://127.0.0.1:9/v1")
    scripted_client(monkeypatch, llm, [(raw, "Some text")])
    c = llm.chat("hi")
    assert c.finish_reason == reason
    if reason == "error":  # withheld: no text, the reason in the error (not a silent "stop")
        assert c.text == "" and c.error.startswith("FinishReasonError: finish_reason 'content_filter'")
    else:
        assert c.ok and c.text == "Some text"


def test_stop_string_left_in_by_the_server_is_cut(monkeypatch):
    llm = OpenAIBackend("m", base_url="http://127.0.0.1:9/v1")
    sent = scripted_client(
        monkeypatch, llm, [("stop", "Hello there, welcome"), ("length", "one, two, three")]
    )
    assert llm.chat("hi", sampling=SamplingConfig(stop=[" welcome"])).text == "Hello there,"
    c = llm.chat("count", sampling=SamplingConfig(stop=[","]))  # the server ran past it
    assert (c.text, c.finish_reason) == ("one", "stop")
    assert sent[0]["stop"] == [" welcome"]


def test_schema_requests_send_response_format_and_no_stop(monkeypatch):
    llm = OpenAIBackend("m", base_url="http://127.0.0.1:9/v1")
    sent = scripted_client(monkeypatch, llm, [("stop", '{"a": "b:c"}')])
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    c = llm.chat("json", sampling=SamplingConfig(stop=[":"]), json_schema=schema)
    assert c.text == '{"a": "b:c"}' and "stop" not in sent[0]
    assert sent[0]["response_format"]["json_schema"]["schema"] == schema


def test_server_that_ignores_n_is_topped_up_with_next_seeds(monkeypatch):
    llm = OpenAIBackend("m", base_url="http://127.0.0.1:9/v1")
    sent = scripted_client(monkeypatch, llm, [("stop", "a"), ("stop", "b"), ("length", "c")])
    c = llm.chat("hi", sampling=SamplingConfig(temperature=0.7, seed=5, n=3))
    assert (c.text, c.alternatives, c.completion_tokens) == ("a", ["b", "c"], 9)
    assert [(k.get("n"), k["seed"]) for k in sent] == [(3, 5), (2, 6), (None, 7)]


def test_greedy_n_is_asked_once_and_repeated(monkeypatch):
    llm = OpenAIBackend("m", base_url="http://127.0.0.1:9/v1")
    sent = scripted_client(monkeypatch, llm, [("stop", "a")])
    c = llm.chat("hi", sampling=SamplingConfig(n=3))
    assert (c.text, c.alternatives, c.completion_tokens) == ("a", ["a", "a"], 9)
    assert len(sent) == 1 and "n" not in sent[0]


# -- a real server --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def served_model(request):
    return shared_server(request)  # one server per session, shared with test_llm_contract.py


@pytest.fixture(scope="module")
def served(served_model):
    base_url, folder = served_model
    llm = OpenAIBackend(folder, base_url=base_url, timeout_s=120, max_retries=1, max_concurrency=4)
    yield llm
    llm.close()


@pytest.mark.server
def test_tasks_through_the_server_never_break(served, capsys):
    res = explain_recommendations(served, [REC], sampling=SamplingConfig(max_tokens=100))
    assert res.llm_error is None and res.provenance.backend == "openai"
    item = res.items[0]
    assert item.text and set(item.cited_titles) <= set(REC.evidence_titles) and item.cited_titles
    with capsys.disabled():
        print(f"\n[transformers serve] explain_recommendations: {res.fallbacks.as_dict()}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
