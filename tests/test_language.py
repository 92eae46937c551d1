"""The LLM wired into recommendation (agent.language), with a scripted backend: persona text,
routing, persona selection, explanations, fallbacks and backend failures."""

from __future__ import annotations

import json

import pytest

from fakes.answers import category_description, grounded_explanations

from agent.cli import main
from agent.engine import Engine
from agent.language import LanguageConfig, LanguageLayer
from agent.llm import LLMError, ScriptedLLM
from memory.loaders import DataSource


@pytest.fixture
def engine(tmp_path, hash_config):
    # a private copy: these tests write persona versions
    return Engine.open(DataSource(dataset="synthetic"), hash_config, tmp_path / "dd")


def _answer(req) -> str:
    """A well-behaved fake LLM: valid, grounded answers built from what the prompt shows."""
    schema = req.json_schema or {}
    props = schema.get("properties", {})
    written = (grounded_explanations(req, "You loved {title}, and this one shares its spirit.")
               or category_description(req))
    if written:
        return written
    if "personas" in props:  # routing: the last persona offered
        return json.dumps({"personas": [props["personas"]["items"]["enum"][-1]]})
    if "persona" in props:  # selection: always the first persona offered
        return json.dumps({"persona": props["persona"]["enum"][0]})
    raise AssertionError(f"unexpected request schema {schema}")


def test_llm_writes_persona_text_once_as_a_new_version(engine):
    lang = LanguageLayer(engine, ScriptedLLM(_answer))
    out = lang.recommend("3", k=5, explain=True)
    pset = engine.persona_store.get("3")
    assert all(p.text_source == "llm" and p.name.startswith("Devoted") for p in pset.personas)
    assert all(v.reason == "llm-description" for v in engine.persona_store.versions("3")
               if v.persona.version == 2)
    assert out.meta["describe_personas"]["fallbacks"]["llm"] == len(pset.personas)
    again = LanguageLayer(engine, ScriptedLLM(_answer))
    again.recommend("3", k=5, explain=False)
    assert "describe_personas" not in again.recommend("3", k=5).meta  # already LLM-written: not asked again


def test_a_description_that_failed_validation_is_not_asked_again(engine):
    def invalid(req):
        if "description" in (req.json_schema or {}).get("properties", {}):
            return json.dumps({"name": "x", "description": "too short"})
        return _answer(req)

    llm = ScriptedLLM(invalid)
    first = LanguageLayer(engine, llm).ensure_persona_text("6")
    n_personas = len(engine.persona_store.get("6").personas)
    assert first["fallbacks"]["template"] == n_personas
    calls = len(llm.calls)
    assert LanguageLayer(engine, llm).ensure_persona_text("6") is None and len(llm.calls) == calls  # remembered
    # another model (or prompt) is asked again
    other = ScriptedLLM(invalid, model="bigger")
    assert LanguageLayer(engine, other).ensure_persona_text("6") is not None and other.calls
    # and the template text stays, with no new persona version
    assert all(v.persona.version == 1 for v in engine.persona_store.versions("6"))


def test_explanations_are_llm_written_and_grounded(engine):
    out = LanguageLayer(engine, ScriptedLLM(_answer)).recommend("4", k=5, explain=True)
    assert all(r.explanation_source == "llm" for r in out.items)
    for r in out.items:
        assert r.evidence[0].title.split(" (")[0] in r.explanation
    assert out.meta["fallbacks"]["template"] == 0 and out.meta["llm_error"] is None
    assert set(out.provenance["prompts"]) >= {"describe_personas", "explain_recommendations"}


def test_routing_focuses_the_list_on_the_routed_persona(engine):
    lang = LanguageLayer(engine, ScriptedLLM(_answer), LanguageConfig(query_filter=False, route_boost=4.0))
    pset = engine.persona_store.get("9")
    out = lang.recommend("9", k=10, request="something for tonight", explain=False)
    routed = out.meta["route_request"]["persona_ids"]
    assert routed == [pset.personas[-1].persona_id]
    plain = engine.recommend("9", k=10)
    count = lambda o: sum(r.persona.id == routed[0] for r in o.items)  # noqa: E731
    assert count(out) > count(plain)


def test_selection_modes_and_disagreement(engine):
    lang = LanguageLayer(engine, ScriptedLLM(_answer), LanguageConfig(selection="llm", describe_personas=False))
    out = lang.recommend("11", k=8, explain=False)
    first = engine.persona_store.get("11").personas[0].persona_id
    assert all(r.persona.id == first for r in out.items)  # the LLM decides every item
    sel = out.meta["select_personas"]
    assert sel["mode"] == "llm" and sel["disagreement_rate"] is not None
    pset = engine.persona_store.get("11")
    for r in out.items:  # evidence follows the chosen persona
        assert {e.item_id for e in r.evidence} <= set(pset.get(r.persona.id).evidence)


def test_backend_down_gives_template_text_and_llm_error(engine):
    lang = LanguageLayer(engine, ScriptedLLM.failing(LLMError("connection refused: 127.0.0.1:9")))
    out = lang.recommend("5", k=5, explain=True, request="war films")
    assert len(out.items) == 5 and all(r.explanation_source == "template" for r in out.items)
    assert "connection refused" in out.meta["llm_error"]
    assert all(p.text_source == "template" for p in engine.persona_store.get("5").personas)


def test_cli_explain_with_no_llm_and_unknown_backend(capsys, tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"embedder": "hash:128"}))
    code = main(["recommend", "--user", "2", "--k", "3", "--explain", "--llm", "none", "--json",
                 "--dataset", "synthetic", "--config", str(cfg)])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert all(r["explanation_source"] == "template" for r in json.loads(out.out)["recommendations"])
    code = main(["recommend", "--user", "2", "--explain", "--llm", "gpt5", "--dataset", "synthetic",
                 "--config", str(cfg)])
    err = capsys.readouterr().err
    assert code == 2 and "transformers" in err and "vllm" in err and "openai" in err


# -- the routing fallback (no LLM) ---------------------------------------------------------
def _routing_layer():
    from types import SimpleNamespace

    from memory.catalog import Catalog, Item
    from memory.embeddings import HashEmbedder
    from personas.model import Persona, PersonaSet

    items = [Item(item_id="sw", title="Star Wars (1977)", text="Star Wars space opera adventure", categories=("Sci-Fi",)),
             Item(item_id="pl", title="Platoon (1986)", text="Platoon war drama", categories=("War", "Drama")),
             Item(item_id="ap", title="Airplane! (1980)", text="Airplane! comedy spoof", categories=("Comedy",)),
             Item(item_id="gf", title="Godfather, The (1972)", text="The Godfather crime drama", categories=("Crime",))]
    emb = HashEmbedder(dim=256, seed=0)

    def persona(pid, cats, text):
        return Persona(persona_id=pid, user_id="u", name=pid, description=pid, weight=0.5, categories=cats,
                       embedding=emb.embed([text])[0].tolist(), evidence=[])

    pset = PersonaSet(user_id="u", personas=[persona("war", {"War": 0.7, "Drama": 0.3}, "Platoon war drama"),
                                             persona("space", {"Sci-Fi": 1.0}, "Star Wars space opera adventure"),
                                             persona("laughs", {"Comedy": 1.0}, "Airplane! comedy spoof")])
    engine = SimpleNamespace(catalog=Catalog(items), embedder=lambda: emb,
                             recommender=SimpleNamespace(persona_set=lambda user: pset))
    return LanguageLayer(engine, None), pset


@pytest.mark.parametrize("request_text, routed", [
    ("a comedy please", ["laughs"]),                 # names a genre: the persona holding that genre
    ("an evening of war drama", ["war"]),
    ("something like Star Wars", ["space"]),          # names a title: not the war persona, despite "Wars"
    ("more like the godfather", None),                # a title none of the personas resembles: best by vector
    ("surprise me", ["war", "space", "laughs"]),      # vague: narrows nothing
])
def test_routing_fallback_by_genre_title_or_nothing(request_text, routed):
    lang, pset = _routing_layer()
    focus, meta = lang.route("u", request_text)
    assert meta["source"] == "template"
    if routed is not None:
        assert meta["persona_ids"] == routed
    assert set(focus) == set(meta["persona_ids"])


def test_title_mentions_need_whole_words_and_accept_either_article_order():
    lang, _ = _routing_layer()
    assert lang._mentioned_item("like The Godfather tonight") == 3
    assert lang._mentioned_item("godfather, the") == 3
    assert lang._mentioned_item("starwars or platoons") is None
    assert lang._mentioned_item("Airplane!") == 2
