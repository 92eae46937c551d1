"""`plural serve`'s HTTP API (in process, through FastAPI's test client): chat, recommend,
feedback, personas, history, threads; errors as HTTP statuses that name the bad value; many
users at once."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

fastapi = pytest.importorskip("fastapi", reason="the `agent` extra installs fastapi for `plural serve`")


@pytest.fixture(scope="module")
def client(tmp_path_factory, hash_config):
    from fastapi.testclient import TestClient

    from agent.api import PluralAgent
    from agent.engine import Engine
    from agent.runtime import AgentConfig, AgentRuntime
    from agent.server import create_app
    from memory.loaders import DataSource

    engine = Engine.open(DataSource(dataset="synthetic"), hash_config, tmp_path_factory.mktemp("srv") / "dd")
    agent = PluralAgent(AgentRuntime(engine, None, AgentConfig(k=5, llm_prose="off")))
    with TestClient(create_app(agent)) as c:
        yield c
    agent.close()


def test_chat_then_react_then_why_on_one_thread(client):
    r = client.post("/chat", json={"user_id": "3", "message": "a western"})
    assert r.status_code == 200
    reply = r.json()
    assert reply["intent"] == "recommend" and all("Western" in i["categories"] for i in reply["items"])
    tid = reply["thread_id"]
    fb = client.post("/chat", json={"user_id": "3", "message": "not the first one", "thread_id": tid}).json()
    assert fb["intent"] == "feedback" and fb["answer"]["item_id"] == reply["items"][0]["item_id"]
    assert fb["committed"]["personas"] is True
    why = client.post("/chat", json={"user_id": "3", "message": "why the second?", "thread_id": tid}).json()
    assert why["answer"]["kind"] == "why" and why["answer"]["item_id"] == reply["items"][1]["item_id"]
    turns = client.get(f"/threads/{tid}", params={"user_id": "3"}).json()
    assert [t["role"] for t in turns] == ["user", "assistant"] * 3
    history = client.get("/users/3/history", params={"limit": 20}).json()
    assert any(e["kind"] == "feedback" for e in history)


def test_recommend_feedback_personas(client):
    rec = client.post("/recommend", json={"user_id": "5", "k": 4, "request": "a comedy"}).json()
    assert len(rec["items"]) == 4 and all("Comedy" in i["categories"] for i in rec["items"])
    out = client.post("/feedback", json={"user_id": "5", "item_id": rec["items"][0]["item_id"], "reaction": 5})
    assert out.status_code == 200 and out.json()["reaction"] == "like"
    personas = client.get("/users/5/personas").json()
    assert personas and "embedding" not in personas[0]
    versions = client.get("/users/5/personas/versions").json()
    assert any(v["reason"] == "refinement" for v in versions)


def test_errors_are_statuses_that_name_the_value(client):
    assert client.post("/chat", json={"user_id": "nobody", "message": "hi"}).status_code == 404
    tid = client.post("/chat", json={"user_id": "3", "message": "a comedy"}).json()["thread_id"]
    r = client.post("/chat", json={"user_id": "4", "message": "why the first?", "thread_id": tid})
    assert r.status_code == 403 and "another user" in r.json()["detail"]
    r = client.post("/feedback", json={"user_id": "3", "item_id": "no-such-item", "reaction": "like"})
    assert r.status_code == 404 and "no-such-item" in r.json()["detail"]
    assert client.post("/recommend", json={"user_id": "3", "k": 0}).status_code == 422
    r = client.post("/recommend", json={"user_id": "3", "mode": "bogus"})
    assert r.status_code == 422 and "bogus" in r.json()["detail"]
    empty = client.post("/chat", json={"user_id": "3", "message": "   "}).json()
    assert empty["error"] and "empty" in empty["response"]


def test_many_users_at_once(client):
    users = [str(u) for u in range(10, 26)]

    def talk(u):
        first = client.post("/chat", json={"user_id": u, "message": "something good"}).json()
        second = client.post("/chat", json={"user_id": u, "message": "loved the first",
                                            "thread_id": first["thread_id"]}).json()
        return u, first, second

    with ThreadPoolExecutor(8) as pool:
        done = list(pool.map(talk, users))
    for u, first, second in done:
        assert first["error"] is None and second["intent"] == "feedback" and second["error"] is None
        history = client.get(f"/users/{u}/history").json()
        liked = [e for e in history if e["kind"] == "feedback"]
        assert [e["payload"]["item_id"] for e in liked] == [first["items"][0]["item_id"]]
        assert all(e["payload"].get("thread_id") in (None, first["thread_id"]) for e in history)
