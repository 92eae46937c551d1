"""A turn is one unit of work: concurrent reactions on one persona lose nothing (compare-and-set
on persona versions, recomputed on fresh state), and a failure anywhere in a turn, with an LLM
writing persona descriptions inside it, leaves no write at all."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from fakes.answers import category_description, grounded_explanations

from agent.api import PluralAgent
from agent.llm import ScriptedLLM
from agent.refine import RefineConfig
from agent.runtime import AgentConfig, AgentRuntime
from personas.store import PersonaConflictError


def _engine(tmp_path, hash_config, name="dd"):
    from agent.engine import Engine
    from memory.loaders import DataSource

    return Engine.open(DataSource(dataset="synthetic"), hash_config, tmp_path / name)


def _snapshot(agent: PluralAgent, user: str) -> dict:
    """Everything a turn could have written, for one user."""
    e = agent.engine
    return {"versions": [(v.persona.persona_id, v.persona.version, v.reason) for v in e.persona_store.versions(user)],
            "set": e.persona_store.get(user).model_dump(),
            "events": [(r.kind, r.text) for r in agent.history(user, 1000)],
            "exposure": e.exposure_store().total(),
            "threads": {t: agent.threads.owner(t) for t in ("atom", "atom2")}}


def test_concurrent_likes_on_one_persona_are_all_kept(tmp_path, hash_config):
    n = 6
    agent = PluralAgent(AgentRuntime(_engine(tmp_path, hash_config), None,
                                     AgentConfig(k=10, llm_prose="off", refine=RefineConfig(simulator="embedding"))))
    user = "3"
    # one list per thread, then one like per thread on an item of the same persona, all at once
    lists = [agent.chat(user, "a space film", f"t{k}") for k in range(n)]
    pid = lists[0].items[0].persona.id
    picks = []
    used: set[str] = set()
    for k, reply in enumerate(lists):
        pos = next(i for i, r in enumerate(reply.items, start=1) if r.persona.id == pid and r.item_id not in used)
        used.add(reply.items[pos - 1].item_id)
        picks.append((f"t{k}", pos))
    before = agent.engine.persona_store.get(user).get(pid)
    barrier = threading.Barrier(n)

    def like(thread_and_pos):
        thread, pos = thread_and_pos
        barrier.wait()  # every turn reads the same persona version, then they race to commit
        return agent.chat(user, f"loved #{pos}", thread)

    with ThreadPoolExecutor(n) as pool:
        replies = list(pool.map(like, picks))
    assert all(r.error is None and r.intent == "feedback" for r in replies), [r.response for r in replies]
    after = agent.engine.persona_store.get(user).get(pid)
    assert after.version == before.version + n  # one version per like, none lost, none doubled
    assert set(after.evidence) - set(before.evidence) == used  # every liked title joined the persona
    liked = [r for r in agent.history(user, 1000) if r.kind == "feedback"]
    assert sorted(e.payload["item_id"] for e in liked) == sorted(used)
    chain = [v.persona.version for v in agent.engine.persona_store.versions(user, pid)]
    assert chain == list(range(1, after.version + 1))  # gap-free version chain
    assert sum(r.committed.retries for r in replies) >= 1  # they did collide, and were recomputed
    agent.close()


def test_a_stale_persona_write_is_refused_not_overwritten(tmp_path, hash_config):
    agent = PluralAgent(AgentRuntime(_engine(tmp_path, hash_config), None, AgentConfig(llm_prose="off")))
    rt = agent.runtime
    r = agent.recommend("3", k=3)
    item = r.items[0].item_id
    _, first = rt.feedback("3", item, "like", use_llm=False)
    _, second = rt.feedback("3", r.items[1].item_id, "like", use_llm=False)  # read the same versions
    rt.commit("3", first)
    with pytest.raises(PersonaConflictError, match="changed meanwhile"):
        rt.commit("3", second)
    liked_persona = first.events[0].persona_id
    assert item in agent.engine.persona_store.get("3").get(liked_persona).evidence  # the first one stands
    assert len([e for e in agent.history("3", 100) if e.kind == "feedback"]) == 1  # the refused one wrote nothing
    agent.close()


def _describing_llm():
    """A model that writes valid persona descriptions and explanations."""

    def answer(req) -> str:
        props = (req.json_schema or {}).get("properties", {})
        written = grounded_explanations(req) or category_description(req)
        if written:
            return written
        if "facts" in props:
            return json.dumps({"facts": [{"text": "Keeps coming back to the same tastes.", "sources": [1]}]})
        raise AssertionError(f"unexpected schema {props}")

    return ScriptedLLM(answer)


NODES = {
    "understand": ("agent.graph.builder.understand", "a space film"),
    "recall_memory": ("runtime.memory.recall", "a space film"),
    "route_personas": ("runtime.parse_request", "a space film"),
    "rank": ("runtime.recommend_request", "a space film"),
    "explain": ("runtime.language.explain_list", "a space film"),
    "respond": ("agent.graph.builder._compose", "a space film"),
    "write_memory": ("runtime.engine._exposure.add", "a space film"),  # inside the commit's transaction
    "refine_personas": ("runtime.feedback", "loved the first"),
}


@pytest.mark.parametrize("node", sorted(NODES))
def test_a_failure_at_any_node_leaves_no_write(node, tmp_path, hash_config, monkeypatch):
    agent = PluralAgent(AgentRuntime(_engine(tmp_path, hash_config), _describing_llm(),
                                     AgentConfig(k=5, llm_prose="inline", refine=RefineConfig(simulator="embedding"))))
    user = "3"
    if node == "refine_personas":
        agent.chat(user, "a space film", "atom")  # a list to react to
    before = _snapshot(agent, user)
    turns = agent.transcript("atom", user)
    target, message = NODES[node]

    def boom(*a, **k):
        raise RuntimeError(f"injected failure in {node}")

    if target.startswith("runtime."):
        obj = agent.runtime
        *path, attr = target.split(".")[1:]
        for part in path:
            obj = getattr(obj, part)
        monkeypatch.setattr(obj, attr, boom)
    else:
        monkeypatch.setattr(target, boom)
    reply = agent.chat(user, message, "atom")
    assert reply.error and "injected failure" in reply.error and "Nothing was changed" in reply.response
    monkeypatch.undo()
    assert _snapshot(agent, user) == before  # no persona version, no event, no exposure, no thread claim
    assert agent.transcript("atom", user) == turns
    # and the model did write descriptions when nothing failed (the test would be empty otherwise)
    if node == "explain":
        ok = agent.chat(user, message, "atom2")
        assert ok.error is None
        assert any(v.reason == "llm-description" for v in agent.engine.persona_store.versions(user))
    agent.close()
