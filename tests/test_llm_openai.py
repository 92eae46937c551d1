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
from pathlib import Path

import pytest
from fakes.transformers_serve import free_port, shared_server
from pydantic import BaseModel

from agent.llm import LLMRequest, SamplingConfig, StructuredOutputError
from agent.llm.openai_backend import OpenAIBackend
from agent.llm.tasks import RecommendationInput, explain_recommendations

REC = RecommendationInput(
    item_id="i1",
    title="Aliens (1986)",
    categories=["Sci-Fi"],
    persona_id="p1",
    persona_name="Space Opera",
    persona_description="Space battles, aliens and robots.",
    evidence_titles=["Alien (1979)", "Star Wars (1977)"],
)


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
def test_batch_over_http_in_request_order(served):
    reqs = [
        LLMRequest(messages="Name a colour.", sampling=SamplingConfig(max_tokens=8)),
        LLMRequest(messages="Name an animal.", sampling=SamplingConfig(max_tokens=8)),
        LLMRequest(messages="Count to three.", sampling=SamplingConfig(max_tokens=4)),
    ]
    out = served.generate(reqs)
    assert [c.request_id for c in out] == [r.request_id for r in reqs]
    assert all(c.ok and c.text and c.backend == "openai" for c in out), [c.error for c in out]
    assert out[2].finish_reason == "length" and out[2].completion_tokens == 4


@pytest.mark.server
def test_structured_output_is_validated_client_side(served):
    class Colour(BaseModel):
        colour: str

    reqs = [
        LLMRequest(
            messages='Reply with JSON like {"colour": "red"} naming a colour.',
            sampling=SamplingConfig(max_tokens=24),
        )
        for _ in range(2)
    ]
    out = served.complete_json(reqs, Colour)
    assert len(out) == 2
    # the server ignores response_format: whatever came back is either valid or a labelled error
    for o in out:
        assert isinstance(o, Colour) or (isinstance(o, StructuredOutputError) and o.reason != "backend_error")
    sent = served.model_name
    assert sent and Path(sent).name.startswith("SmolLM2")


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
