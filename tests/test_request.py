"""A request as a typed constraint: the rules' reading, the engine's filters and re-scoring, the chat's use."""

from __future__ import annotations

import numpy as np
import pytest

from agent.request_parser import ParseContext, activated_personas, parse_request
from personas.request import Period, Request, RequestConfig, item_years, score_spread

ML_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
             "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western")
TITLES = ("Star Wars (1977)", "Batman (1989)", "Ghost (1990)", "Godfather, The (1972)", "Aliens (1986)",
          "Love Story (1970)", "Heat (1995)", "Toy Story (1995)")
IDS = tuple(str(i + 1) for i in range(len(TITLES)))


def ctx(**kw) -> ParseContext:
    return ParseContext(categories=ML_GENRES, titles=TITLES, item_ids=IDS, max_year=1998, **kw)


@pytest.mark.parametrize("message, wanted, unwanted", [
    ("something light and funny tonight", ["Comedy"], ["Horror", "War", "Film-Noir"]),
    ("a scary movie", ["Horror", "Thriller"], []),
    ("an animated film for children", ["Animation", "Children's"], ["Horror", "Film-Noir", "Crime"]),
    ("no horror please, something tense", ["Thriller"], ["Horror"]),
    ("a sci-fi movie", ["Sci-Fi"], []),
    ("a western", ["Western"], []),
    ("a film-noir", ["Film-Noir"], []),
    ("a documentary", ["Documentary"], []),
    ("a romantic comedy", ["Comedy", "Romance"], []),
    ("surprise me", [], []),
])
def test_genre_and_mood_words_become_categories(message, wanted, unwanted):
    r = parse_request(message, ctx())
    assert sorted(r.wanted_categories) == sorted(wanted)
    assert sorted(r.unwanted_categories) == sorted(unwanted)


@pytest.mark.parametrize("message, start, end", [
    ("a crime film from the 70s", 1970, 1979),
    ("something from the 1980s", 1980, 1989),
    ("a nineties comedy", 1990, 1999),
    ("a comedy before 1970", None, 1969),
    ("a comedy made between 1980 and 1990", 1980, 1990),
    ("a drama from 1995", 1995, 1995),
    ("a thriller after 1990", 1991, None),
    ("something recent", 1994, None),
    ("an old western", None, 1978),
])
def test_periods(message, start, end):
    p = parse_request(message, ctx()).period
    assert p is not None and (p.start, p.end) == (start, end)


def test_like_a_title_is_a_reference_and_the_title_words_are_not_genres():
    r = parse_request("something like Aliens", ctx())
    assert r.reference_item == "5" and r.wanted_categories == []  # "aliens" here names the film, not Sci-Fi
    assert "5" in r.exclude_items and r.reference_label == "Aliens"
    assert parse_request("something like star wars", ctx()).reference_item == "1"


def test_lowercase_genre_phrases_are_not_titles():
    r = parse_request("a ghost story", ctx())
    assert r.reference_item is None and r.content == "ghost story"
    assert parse_request("a love story", ctx()).reference_item is None


def test_not_a_title_excludes_it():
    r = parse_request("an action movie, not Batman", ctx())
    assert "2" in r.exclude_items and r.reference_item is None and r.wanted_categories == ["Action"]


def test_more_like_the_second_one_refers_to_the_last_list_and_excludes_what_was_shown():
    r = parse_request("more like the second one", ctx(last_list=["7", "3", "4"], shown=["7", "3", "4"], reference=2))
    assert r.reference_item == "3" and set(r.exclude_items) >= {"7", "3", "4"}
    assert r.content is None


def test_more_repeats_the_previous_request_without_what_was_shown_and_refused():
    prev = Request(text="a scary movie", wanted_categories=["Horror"])
    r = parse_request("more", ctx(previous=prev, shown=["1", "2"], refused=["6"]))
    assert r.wanted_categories == ["Horror"] and set(r.exclude_items) == {"1", "2", "6"}


def test_refused_items_are_always_excluded():
    r = parse_request("a comedy", ctx(refused=["8"]))
    assert r.exclude_items == ["8"]


def test_what_the_catalog_cannot_check_is_reported_not_ignored():
    r = parse_request("something romantic, not too long", ctx())
    assert r.wanted_categories == ["Romance"]
    assert r.unsupported and "running time" in r.unsupported[0]
    assert r.content is None


def test_a_genre_request_activates_the_personas_that_hold_it():
    cats = {"p1": {"Horror": 0.6, "Comedy": 0.4}, "p2": {"Drama": 1.0}, "p3": {"Thriller": 0.5, "Drama": 0.5}}
    assert activated_personas(["Horror", "Thriller"], cats) == ["p1", "p3"]
    assert activated_personas(["Western"], cats) == []
    r = parse_request("a scary movie", ctx(persona_categories=cats))
    assert r.personas == ["p1", "p3"]


def test_period_validation_names_the_bad_value():
    with pytest.raises(ValueError, match="1990 is after its end 1980"):
        Period(start=1990, end=1980)
    with pytest.raises(ValueError):
        Period()


# ---- the engine's side ---------------------------------------------------------------------
def test_years_come_from_titles():
    from memory.catalog import Catalog, Item

    cat = Catalog.from_items([Item(item_id="1", title="A (1995)"), Item(item_id="2", title="B")])
    assert item_years(cat).tolist() == [1995, 0]


def test_spread_is_the_competitive_range():
    assert score_spread(np.arange(200, dtype=float), top=100) == pytest.approx(99.0)
    assert score_spread(np.ones(5)) == 1.0


def test_hard_constraints_filter(synthetic_engine):
    e = synthetic_engine
    rs = e.request_scorer()
    years = item_years(e.catalog)
    r = Request(wanted_categories=["Horror", "Western"], unwanted_categories=["Comedy"],
                period=Period(start=1980, end=1999), exclude_items=[e.catalog.item_ids[0]])
    mask = rs.allowed(r)
    assert mask.any()
    for pos in np.flatnonzero(mask):
        cats = set(e.catalog.item(int(pos)).categories)
        assert cats & {"Horror", "Western"} and "Comedy" not in cats and 1980 <= years[pos] <= 1999
    assert not mask[0]


def test_a_category_request_lists_only_that_category_and_keeps_exact_attribution(synthetic_engine):
    e = synthetic_engine
    user = e.history.user_ids[0]
    r = parse_request("a scary movie", e.parse_context(user))
    assert r.wanted_categories == ["Horror"]
    out = e.recommend_request(user, r, 10, "persona_calibrated")
    assert len(out.items) == 10 and all("Horror" in it.categories for it in out.items)
    ps, pset = e.recommender.persona_scores(user)
    for it in out.items:  # the personalised score is still the exact sum of the persona contributions
        pos = e.catalog.index(it.item_id)
        assert it.score == pytest.approx(float(ps.contributions[:, pos].sum()), abs=1e-5)
    assert out.provenance["request"]["wanted_categories"] == ["Horror"]


def test_like_x_lists_its_neighbours(synthetic_engine):
    e = synthetic_engine
    user = e.history.user_ids[1]
    seen = set(e.history.seen(user).tolist())
    ref = next(i for i in range(len(e.catalog)) if i not in seen and e.catalog.item(i).categories[0] == "Western")
    r = Request(text="like it", reference_item=e.catalog.item(ref).item_id)
    out = e.recommend_request(user, r, 5, "relevance")
    plain = e.recommend(user, 5, "relevance")
    sim = e.request_scorer().reference_similarity(ref)
    got = np.mean([sim[e.catalog.index(it.item_id)] for it in out.items])
    base = np.mean([sim[e.catalog.index(it.item_id)] for it in plain.items])
    assert got > base and all(it.request_match is not None for it in out.items)
    assert sum("Western" in it.categories for it in out.items) >= 4


def test_titles_rated_low_weigh_against_their_neighbours(synthetic_engine):
    e = synthetic_engine
    user = e.history.user_ids[2]
    r = Request(text="anything")
    base = e.recommend_request(user, r, 10, "relevance")
    top = base.items[0]
    # the user now dislikes the top item's strongest neighbour: the top item's request term drops
    B = e.scorer.B
    pos = e.catalog.index(top.item_id)
    col = np.asarray(B[:, pos]).ravel().copy()
    col[pos] = -np.inf
    neighbour = e.catalog.item(int(np.argmax(col))).item_id
    req = r.model_copy(update={"exclude_items": [neighbour]})
    after = e.recommend_request(user, req, 50, "relevance", disliked_items=[neighbour])
    moved = next(it for it in after.items if it.item_id == top.item_id)
    assert moved.request_term < top.request_term and moved.score == pytest.approx(top.score)  # p(i) untouched
    # with a heavier negative history it leaves the top of the list
    saved = e.config
    try:
        e.config = e.config.model_copy(update={"request": e.config.request.model_copy(update={"dislike_weight": 50.0})})
        e.recommender.request_scorer = None
        heavy = e.recommend_request(user, req, 10, "relevance", disliked_items=[neighbour])
        assert top.item_id not in [it.item_id for it in heavy.items[:1]]
    finally:
        e.config = saved
        e.recommender.request_scorer = None


def test_a_request_with_no_matching_items_returns_an_empty_list(synthetic_engine):
    e = synthetic_engine
    r = Request(wanted_categories=["Horror"], period=Period(start=1900, end=1901))
    assert e.recommend_request(e.history.user_ids[0], r, 5).items == []


def test_request_config_round_trips():
    c = RequestConfig(mix=0.5, reference_mix=4)
    assert RequestConfig.model_validate(c.model_dump()) == c
    with pytest.raises(ValueError):
        RequestConfig(mix=-1)


# ---- the chat uses it --------------------------------------------------------------------
@pytest.fixture
def chat_agent(tmp_path, hash_config):
    from agent.api import PluralAgent
    from agent.engine import Engine
    from agent.runtime import AgentConfig, AgentRuntime
    from memory.loaders import DataSource

    engine = Engine.open(DataSource(dataset="synthetic"), hash_config, tmp_path / "dd")
    a = PluralAgent(AgentRuntime(engine, None, AgentConfig(k=5)))
    yield a
    a.close()


def test_chat_a_scary_movie_is_horror_and_a_refusal_is_never_shown_again(chat_agent):
    a = chat_agent
    user = a.runtime.engine.history.user_ids[0]
    r1 = a.chat(user, "something funny", "t")
    assert r1.error is None and all("Comedy" in i.categories for i in r1.items)
    r2 = a.chat(user, "a scary movie", "t")
    assert all("Horror" in i.categories for i in r2.items)
    assert {i.item_id for i in r1.items}.isdisjoint({i.item_id for i in r2.items})
    first = r2.items[0].item_id
    r3 = a.chat(user, "not the first one", "t")
    assert r3.intent == "feedback"
    seen_after = set()
    for msg in ("more", "a scary movie", "something else", "more"):
        r = a.chat(user, msg, "t")
        seen_after |= {i.item_id for i in r.items}
    assert first not in seen_after


def test_chat_more_like_the_second_one_is_close_to_it(chat_agent):
    a = chat_agent
    e = a.runtime.engine
    user = e.history.user_ids[3]
    r1 = a.chat(user, "a western", "t2")
    second = r1.items[1].item_id
    r2 = a.chat(user, "more like the second one", "t2")
    assert r2.intent == "refine" and second not in {i.item_id for i in r2.items}
    sim = e.request_scorer().reference_similarity(e.catalog.index(second))
    plain = e.recommend(user, 5, "persona_calibrated")
    assert np.mean([sim[e.catalog.index(i.item_id)] for i in r2.items]) > \
        np.mean([sim[e.catalog.index(it.item_id)] for it in plain.items])
    assert "like" in r2.response.splitlines()[0]


def test_recommend_cli_request_and_json_object(capsys, tmp_path, monkeypatch):
    from agent.cli import main

    monkeypatch.setenv("PLURAL_DATA_DIR", str(tmp_path / "data"))
    cfg = tmp_path / "plural.json"
    cfg.write_text('{"embedder": "hash:128"}')
    code = main(["recommend", "--dataset", "synthetic", "--config", str(cfg), "--user", "1", "--k", "4",
                 "--request", "a scary movie", "--json"])
    assert code == 0
    import json

    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"recommendations", "provenance", "meta"}
    assert len(out["recommendations"]) == 4 and all("Horror" in r["categories"] for r in out["recommendations"])
    assert out["provenance"]["request"]["wanted_categories"] == ["Horror"] and "latency_ms" in out["meta"]


# ---- the LLM may fill the same object, checked against the catalog --------------------------
def _reading(**kw) -> str:
    import json

    base = {"wanted_categories": [], "unwanted_categories": [], "like_title": None, "not_titles": [],
            "list_position": None, "from_year": None, "to_year": None, "about": None}
    return json.dumps({**base, **kw})


def test_a_valid_llm_reading_is_used_and_the_thread_still_excludes_what_it_showed():
    from agent.llm import ScriptedLLM
    from agent.request_reader import read_request

    llm = ScriptedLLM([_reading(wanted_categories=["Horror"], from_year=1980, to_year=1989, like_title="Aliens")])
    r, meta = read_request("something as scary as Aliens, 80s please", ctx(shown=["8"], refused=["6"]), llm)
    assert meta["source"] == "llm" and r.source == "llm"
    assert r.wanted_categories == ["Horror"] and (r.period.start, r.period.end) == (1980, 1989)
    assert r.reference_item == "5" and {"5", "6", "8"} <= set(r.exclude_items)
    schema = llm.calls[0][0].json_schema
    assert "Horror" in schema["properties"]["wanted_categories"]["items"]["enum"]  # only catalog genres


@pytest.mark.parametrize("answer, reason", [
    (_reading(like_title="Jaws"), "unknown_title"),           # not a catalog title
    (_reading(like_title="Heat"), "unknown_title"),           # a catalog title the message does not name
    (_reading(about="ghosts and cat videos"), "invented_content"),
    (_reading(from_year=1990, to_year=1980), "period"),
    (_reading(list_position=4), "reference"),                  # the last list had 2 items
    (_reading(wanted_categories=["Horror"], unwanted_categories=["Horror"]), "contradiction"),
])
def test_an_llm_reading_that_fails_a_check_falls_back_to_the_rules(answer, reason):
    from agent.llm import ScriptedLLM
    from agent.request_reader import read_request

    llm = ScriptedLLM([answer, answer])
    r, meta = read_request("a scary movie about ghosts", ctx(last_list=["1", "2"]), llm)
    assert meta["source"] == "rules" and r == parse_request("a scary movie about ghosts", ctx(last_list=["1", "2"]))
    assert meta["fallbacks"]["fallbacks"] == {reason: 1}


def test_more_is_never_sent_to_the_llm():
    from agent.llm import ScriptedLLM
    from agent.request_reader import read_request

    llm = ScriptedLLM([])
    prev = Request(text="a western", wanted_categories=["Western"])
    r, meta = read_request("more", ctx(previous=prev, shown=["3"]), llm)
    assert r.wanted_categories == ["Western"] and "3" in r.exclude_items and not llm.calls
