"""LLM tasks with a scripted backend: validation, the one retry, fallbacks, counters, provenance, faults."""

from __future__ import annotations

import json
import logging

import pytest

from agent.llm import Completion, ScriptedLLM
from agent.llm.tasks import (
    DEFAULT_SAMPLING,
    CandidateInput,
    PersonaInput,
    RecommendationInput,
    combine_selection,
    describe_personas,
    explain_recommendations,
    route_request,
    select_personas,
    template_route,
)
from agent.llm.validated import FallbackCounter
from memory.errors import UsageError
from prompts import load_prompt

PERSONAS = [
    PersonaInput(
        persona_id="p1",
        name="Space Opera",
        description="Space battles and robots.",
        evidence_titles=["Star Wars (1977)", "Alien (1979)", "Blade Runner (1982)"],
        categories={"Sci-Fi": 0.7, "Action": 0.3},
        weight=0.6,
        evidence_categories=["Action", "Adventure", "Horror", "Sci-Fi", "Thriller"],  # as MovieLens tags them
    ),
    PersonaInput(
        persona_id="p2",
        name="Light Comedy",
        description="Funny, light romantic comedies.",
        evidence_titles=["Groundhog Day (1993)", "Clueless (1995)"],
        categories={"Comedy": 0.7, "Romance": 0.3},
        weight=0.4,
    ),
]

RECS = [
    RecommendationInput(
        item_id="i1",
        title="Aliens (1986)",
        categories=["Sci-Fi", "Action"],
        persona_id="p1",
        persona_name="Space Opera",
        persona_description="Space battles and robots.",
        evidence_titles=["Alien (1979)", "Star Wars (1977)"],
    ),
    RecommendationInput(
        item_id="i2",
        title="Sleepless in Seattle (1993)",
        categories=["Comedy", "Romance"],
        persona_id="p2",
        persona_name="Light Comedy",
        persona_description="Funny, light romantic comedies.",
        evidence_titles=["Groundhog Day (1993)"],
    ),
]


def explain_json(cited, text, item=1):
    return json.dumps({"explanations": [{"item": item, "cited_titles": cited, "explanation": text}]})


GOOD_1 = explain_json(["Alien (1979)"], "More xenomorph terror in space, just like Alien, which you loved.")
GOOD_2 = explain_json(
    ["Groundhog Day (1993)"], "A warm romantic comedy in the spirit of Groundhog Day for a cosy night."
)


# -- explanations ---------------------------------------------------------------------------
def test_explanations_accepted_in_one_batched_call_with_provenance():
    llm = ScriptedLLM([GOOD_1, GOOD_2], model="tiny")
    res = explain_recommendations(llm, RECS)
    assert len(llm.calls) == 1 and len(llm.calls[0]) == 2  # one generate call for the whole list
    assert [e.item_id for e in res.items] == ["i1", "i2"]
    assert [e.source for e in res.items] == ["llm", "llm"]
    assert res.items[0].cited_titles == ["Alien (1979)"]
    p = load_prompt("explain_recommendations")
    assert res.provenance.prompt == "explain_recommendations" and res.provenance.prompt_sha256 == p.sha256
    assert (res.provenance.backend, res.provenance.model) == ("scripted", "tiny")
    assert res.fallbacks.total == 2 and res.fallbacks.template == 0 and res.llm_error is None
    # the schema sent to the model restricts citations to that item's evidence
    entry = llm.calls[0][0].json_schema["properties"]["explanations"]["prefixItems"][0]
    assert entry["properties"]["cited_titles"]["items"]["enum"] == ["Alien (1979)", "Star Wars (1977)"]
    assert entry["properties"]["item"]["const"] == 1


def test_hallucinated_citation_is_retried_with_the_reason_then_accepted():
    bad = explain_json(["Jaws (1975)"], "Like Jaws, which you enjoyed, this is a thrilling monster chase.")
    llm = ScriptedLLM([bad, GOOD_2, GOOD_1])
    res = explain_recommendations(llm, RECS)
    assert [e.source for e in res.items] == ["llm_retry", "llm"]
    assert len(llm.calls) == 2 and len(llm.calls[1]) == 1  # only the rejected request is retried
    retry = llm.calls[1][0].messages
    assert retry[-2].role == "assistant" and retry[-2].content == bad
    assert "Jaws (1975)" in retry[-1].content and "not in its evidence" in retry[-1].content
    assert res.fallbacks.llm_retry == 1 and res.fallbacks.rejections == {"uncited_title": 1}


def test_text_mentioning_a_title_outside_the_evidence_falls_back_after_one_retry():
    # cites correctly but names another recommendation's title in the prose
    sneaky = explain_json(
        ["Alien (1979)"], "Watch it after Sleepless in Seattle for a change of pace, like Alien."
    )
    llm = ScriptedLLM([sneaky, GOOD_2, sneaky])
    res = explain_recommendations(llm, RECS)
    first = res.items[0]
    assert first.source == "template" and first.fallback_reason == "foreign_title"
    assert first.cited_titles == ["Alien (1979)", "Star Wars (1977)"]
    assert "Space Opera" in first.text and "Alien (1979)" in first.text
    assert res.fallbacks.fallbacks == {"foreign_title": 1} and res.fallbacks.fallback_rate == 0.5


def test_catalog_titles_extend_the_hallucination_check():
    text = explain_json(
        ["Alien (1979)"], "As tense as Predator and Alien, with marines fighting in deep space."
    )
    res = explain_recommendations(
        ScriptedLLM([text, text, GOOD_2]), RECS[:1], catalog_titles=["Predator (1987)"]
    )
    assert res.items[0].fallback_reason == "foreign_title"
    res = explain_recommendations(ScriptedLLM([text, text]), RECS[:1])
    # without the catalog, "Predator" is still no title of the evidence, nor a genre or a taste
    assert res.items[0].fallback_reason == "unknown_name"


@pytest.mark.parametrize(
    "answer, reason",
    [
        ("I cannot help with that.", "invalid_json"),
        ('{"explanations": []}', "schema"),
        (explain_json(["Alien (1979)"], "Great pick for you, enjoy the movie tonight.", item=2), "count"),
        (explain_json(["Alien (1979)"], "Here is the JSON you asked for, with fields."), "meta_text"),
        (
            explain_json(
                ["Alien (1979)"], "You like it: space battles, robots and the crews who fight them."
            ),
            "copied_input",
        ),
        (explain_json(["Alien (1979)"], "Alien fans will enjoy this, " + " ".join(f"word{i}" for i in range(30))),
         "length"),
        (explain_json(["Alien (1979)"], "A hero and a villain, and a hero and a villain, like Alien."), "repetitive"),
        (explain_json(["Alien (1979)"], "A tense space thriller that suits your taste for dread."), "ungrounded"),
        (explain_json(["Alien (1979)"], "Since you enjoyed Alien, this classic standoff between a sheriff and "
                                        "outlaws suits you."), "copied_example"),
        (explain_json(["Alien (1979)"], "Since you enjoyed Alien, this classic thriller is a favorite of yours."),
         "false_claim"),
        (explain_json(["Alien (1979)"], "Since you enjoyed Alien, Space Horror (1994) will grip you too."),
         "invented_title"),
        (explain_json(["Alien (1979)"], "Since you enjoyed Alien, this is both gripping and gripping."),
         "repetitive"),
    ],
)
def test_each_invalid_answer_has_its_reason(answer, reason):
    rec = RECS[0].model_copy(
        update={"persona_description": "Space battles, robots and the crews who fight them."}
    )
    res = explain_recommendations(ScriptedLLM([answer, answer]), [rec])
    assert res.items[0].source == "template" and res.items[0].fallback_reason == reason
    assert res.fallbacks.fallbacks == {reason: 1} and res.fallbacks.rejections == {reason: 2}


def test_truncated_answer_is_labelled_truncated():
    cut = Completion(request_id="", text='{"explanations": [{"item": 1, "cited', finish_reason="length")
    res = explain_recommendations(ScriptedLLM([cut, cut]), RECS[:1])
    assert res.items[0].fallback_reason == "truncated"


def test_several_items_per_request():
    both = json.dumps(
        {
            "explanations": [
                json.loads(GOOD_1)["explanations"][0],
                {**json.loads(GOOD_2)["explanations"][0], "item": 2},
            ]
        }
    )
    llm = ScriptedLLM([both])
    res = explain_recommendations(llm, RECS, items_per_request=2)
    assert len(llm.requests) == 1 and [e.source for e in res.items] == ["llm", "llm"]
    assert llm.requests[0].sampling.max_tokens == 2 * DEFAULT_SAMPLING['explain_recommendations'].max_tokens
    arr = llm.requests[0].json_schema["properties"]["explanations"]
    assert arr["minItems"] == arr["maxItems"] == 2 and arr["items"] is False


def test_recommendation_without_evidence_is_not_sent_to_the_model():
    rec = RECS[1].model_copy(update={"evidence_titles": []})
    llm = ScriptedLLM([GOOD_1])
    res = explain_recommendations(llm, [RECS[0], rec])
    assert len(llm.requests) == 1
    assert res.items[1].fallback_reason == "no_evidence" and res.items[1].cited_titles == []
    assert res.items[1].text == "Recommended for your \u201cLight Comedy\u201d taste."


def test_backend_exception_gives_templates_and_llm_error(caplog):
    llm = ScriptedLLM.failing(ConnectionError("connection refused"))
    with caplog.at_level(logging.INFO, logger="plural.llm"):
        res = explain_recommendations(llm, RECS)
    assert res.llm_error == "ConnectionError: connection refused"
    assert all(e.source == "template" and e.fallback_reason == "backend_error" for e in res.items)
    assert res.fallbacks.fallbacks == {"backend_error": 2}
    assert res.metadata()["llm_error"] == res.llm_error and res.metadata()["fallbacks"]["template"] == 2
    assert "llm_error" in caplog.text and "backend_error" in caplog.text
    assert len(llm.calls) == 1  # no retry against a dead backend


def test_a_backend_that_raises_still_gives_templates_and_llm_error():
    """A third-party backend may break the contract and raise from ``generate``: callers still get
    templates, never an exception (validated._safe_generate)."""
    llm = ScriptedLLM([ConnectionError("connection reset")] * len(RECS))
    res = explain_recommendations(llm, RECS)
    assert res.llm_error == "ConnectionError: connection reset"
    assert all(e.source == "template" and e.fallback_reason == "backend_error" for e in res.items)


def test_error_completion_is_not_retried_and_sets_llm_error():
    timeout = Completion(request_id="", finish_reason="error", error="APITimeoutError: timed out")
    llm = ScriptedLLM([timeout, GOOD_2])
    res = explain_recommendations(llm, RECS)
    assert res.items[0].fallback_reason == "backend_error" and res.items[1].source == "llm"
    assert res.llm_error == "APITimeoutError: timed out" and len(llm.calls) == 1


def test_no_backend_means_templates_with_no_llm_reason():
    res = explain_recommendations(None, RECS)
    assert all(e.fallback_reason == "no_llm" for e in res.items)
    assert res.provenance.backend == "none" and res.provenance.model is None and res.llm_error is None


# -- routing --------------------------------------------------------------------------------
def test_route_maps_labels_to_ids_and_lists_them_as_an_enum():
    llm = ScriptedLLM(['{"personas": ["Light Comedy (p2)"]}', '{"personas": ["p1", "p1"]}'])
    res = route_request(llm, ["something funny", "robots please"], PERSONAS)
    assert [r.persona_ids for r in res.items] == [["p2"], ["p1"]]  # bare ids accepted, duplicates dropped
    enum = llm.requests[0].json_schema["properties"]["personas"]["items"]["enum"]
    assert enum == ["Space Opera (p1)", "Light Comedy (p2)"]


def test_route_rejects_unknown_persona_then_falls_back_to_scores():
    llm = ScriptedLLM(['{"personas": ["p9"]}', '{"personas": ["Horror (p9)"]}'])
    res = route_request(llm, "anything", PERSONAS, fallback_scores={"p1": 0.1, "p2": 0.9})
    item = res.items[0]
    assert (
        item.source == "template" and item.fallback_reason == "unknown_persona" and item.persona_ids == ["p2"]
    )
    assert "p9" in llm.calls[1][0].messages[-1].content  # the retry names the bad id


def test_template_route_by_words_and_without_signal():
    assert template_route("a light comedy tonight", PERSONAS) == ["p2"]
    assert template_route("zzz", PERSONAS) == ["p1", "p2"]  # no signal: every persona
    assert template_route("x", PERSONAS, {"p1": 1.0, "p2": 0.95}, max_personas=2) == ["p1", "p2"]


def test_route_validates_arguments():
    with pytest.raises(UsageError):
        route_request(None, "x", [])
    with pytest.raises(UsageError, match="unique"):
        route_request(None, "x", [PERSONAS[0], PERSONAS[0]])


# -- selection ------------------------------------------------------------------------------
CANDS = [
    CandidateInput(item_id="i1", title="Aliens (1986)", categories=["Sci-Fi"]),
    CandidateInput(item_id="i2", title="Sleepless in Seattle (1993)", categories=["Comedy", "Romance"]),
    CandidateInput(item_id="i3", title="Mystery Men (1999)", categories=["Comedy", "Sci-Fi"]),
]
ATTENTION = {"i1": {"p1": 0.9, "p2": 0.1}, "i2": {"p1": 0.2, "p2": 0.8}, "i3": {"p1": 0.55, "p2": 0.45}}


def test_select_personas_with_invalid_id_falls_back_to_attention():
    llm = ScriptedLLM(
        [
            '{"persona": "Space Opera (p1)"}',
            '{"persona": "Unknown (p7)"}',
            '{"persona": "Light Comedy (p2)"}',
            '{"persona": "p7"}',
        ]
    )
    res = select_personas(llm, CANDS, PERSONAS, attention=ATTENTION)
    assert [c.persona_id for c in res.items] == ["p1", "p2", "p2"]
    assert [c.source for c in res.items] == ["llm", "template", "llm"]
    assert res.items[1].fallback_reason == "unknown_persona"
    assert llm.requests[0].json_schema["properties"]["persona"]["enum"] == [
        "Space Opera (p1)",
        "Light Comedy (p2)",
    ]


def test_combine_selection_modes_and_disagreement():
    llm = ScriptedLLM(['{"persona": "p2"}', '{"persona": "p2"}', '{"persona": "p2"}'])
    res = select_personas(llm, CANDS, PERSONAS, attention=ATTENTION)
    att = combine_selection(ATTENTION, res, "attention")
    assert [c.persona_id for c in att.choices] == ["p1", "p2", "p1"]
    only_llm = combine_selection(ATTENTION, res, "llm")
    assert [c.persona_id for c in only_llm.choices] == ["p2", "p2", "p2"]
    both = combine_selection(ATTENTION, res, "both")
    # i1: attention 0.1 < 0.5 * 0.9 keeps p1; i3: 0.45 >= 0.5 * 0.55 lets the LLM break the near-tie
    assert [c.persona_id for c in both.choices] == ["p1", "p2", "p2"]
    assert [c.decided_by for c in both.choices] == ["attention", "agreement", "llm"]
    assert both.compared == 3 and both.disagreement_rate == pytest.approx(2 / 3)
    assert combine_selection(ATTENTION, None, "both").disagreement_rate is None
    with pytest.raises(UsageError):
        combine_selection(ATTENTION, res, "vote")


def test_template_choices_do_not_count_as_llm_disagreement():
    res = select_personas(None, CANDS, PERSONAS, attention=ATTENTION)
    rep = combine_selection(ATTENTION, res, "llm")
    assert rep.compared == 0 and [c.decided_by for c in rep.choices] == ["attention"] * 3


def test_select_template_without_attention_uses_categories():
    res = select_personas(None, CANDS[:2], PERSONAS)
    assert [c.persona_id for c in res.items] == ["p1", "p2"]


# -- descriptions ---------------------------------------------------------------------------
def test_describe_accepts_checks_and_falls_back():
    answers = [
        '{"name": "Galactic Adventures", "description": "Epic space sagas with robots, like Star Wars and Alien."}',
        # p2: mentions p1's title: rejected, then a duplicate of p1's new name: rejected after the retry
        '{"name": "Big Laughs", "description": "Romantic comedies, and sometimes Blade Runner on a rainy day."}',
        '{"name": "Space Opera", "description": "Funny and light romantic comedies such as Clueless."}',
    ]
    res = describe_personas(ScriptedLLM(answers), PERSONAS)
    a, b = res.items
    assert (a.name, a.source) == ("Galactic Adventures", "llm")
    assert b.source == "template" and b.fallback_reason == "duplicate_name"
    assert (b.name, b.description) == ("Light Comedy", "Funny, light romantic comedies.")  # current text kept
    assert res.fallbacks.rejections == {"foreign_title": 1, "duplicate_name": 1}


def test_describe_rejects_copying_the_worked_example():
    copied = '{"name": "Frontier Westerns", "description": "Gritty Westerns about outlaws, like Unforgiven and Tombstone."}'
    res = describe_personas(ScriptedLLM([copied, copied]), PERSONAS[:1])
    assert res.items[0].fallback_reason == "foreign_title"


def test_describe_template_without_current_text():
    p = PERSONAS[0].model_copy(update={"name": "", "description": ""})
    res = describe_personas(None, [p])
    assert res.items[0].name == "Sci-Fi & Action"
    assert (
        res.items[0].description
        == "Enjoys Sci-Fi and Action titles, such as Star Wars, Alien and Blade Runner."
    )


def test_describe_name_pattern_is_enforced_in_schema_and_validation():
    bad = '{"name": "Toy Story (1995) fans", "description": "Animated films for the whole family to enjoy."}'
    llm = ScriptedLLM([bad, bad])
    res = describe_personas(llm, PERSONAS[:1])
    assert res.items[0].fallback_reason == "schema"
    assert "pattern" in llm.requests[0].json_schema["properties"]["name"]


# -- counters -------------------------------------------------------------------------------
def test_fallback_counter_merge_and_dict():
    a, b = FallbackCounter(), FallbackCounter()
    a.record("llm")
    a.record("template", "schema")
    b.record("llm_retry")
    b.record("template", "schema")
    b.reject("schema")
    m = a.merge(b)
    assert (m.total, m.llm, m.llm_retry, m.template) == (4, 1, 1, 2)
    assert m.fallbacks == {"schema": 2} and m.rejections == {"schema": 1}
    assert m.as_dict()["fallback_rate"] == 0.5 and a.total == 2  # merge does not mutate
    assert FallbackCounter.model_validate(m.model_dump()) == m


# -- persona induction adapter --------------------------------------------------------------
def test_llm_persona_writer_falls_back_to_the_induction_template():
    from agent.llm.persona_writer import LLMPersonaWriter
    from personas.naming import PersonaDraft, TemplatePersonaWriter

    drafts = [
        PersonaDraft(
            "p1", ["Alien (1979)", "Star Wars (1977)"], {"Sci-Fi": 0.8, "Action": 0.2}, weight=0.6, n_items=2
        ),
        PersonaDraft("p2", ["Clueless (1995)"], {"Comedy": 1.0}, weight=0.4, n_items=1),
    ]
    good = '{"name": "Space Sagas", "description": "Epic space battles, like Alien and Star Wars."}'
    writer = LLMPersonaWriter(ScriptedLLM([good, "not json", "still not json"]))
    texts = writer.write("u1", drafts)
    assert texts[0] == ("Space Sagas", "Epic space battles, like Alien and Star Wars.")
    assert texts[1] == TemplatePersonaWriter().write("u1", drafts)[1]
    assert writer.text_source("u1") == ["llm", "template"]
    assert writer.fallbacks.fallbacks == {"invalid_json": 1}
    assert LLMPersonaWriter(None).write("u1", drafts) == TemplatePersonaWriter().write("u1", drafts)


@pytest.mark.parametrize("answer, reason", [
    ('{"name": "Alien", "description": "Tense science fiction about survival in deep space."}', "title_as_name"),
    ('{"name": "Deep Space", "description": "The story of a ship that goes to the edge of the universe."}',
     "ungrounded"),
    ('{"name": "Deep Space", "description": "Sci-Fi: 30, Horror: 12, and more of the same kind."}', "meta_text"),
    ('{"name": "Deep Space", "description": "Science fiction and science fiction and science fiction again."}',
     "repetitive"),
    ('{"name": "Deep Space", "description": "Sci-Fi (1994) is a classic, tense and dark, like the best."}',
     "invented_title"),
    ('{"name": "Deep Space", "description": "Sci-Fi that is both entertaining and entertaining to watch."}',
     "repetitive"),
    ('{"name": "Deep Space", "description": "Alien (1979), Aliens (1986) and more."}', "only_titles"),
    ('{"name": "Aliens", "description": "Tense science fiction about survival in deep space."}', "title_as_name"),
])
def test_persona_descriptions_must_be_grounded_prose(answer, reason):
    p = PersonaInput(persona_id="p1", name="Sci-Fi", description="Sci-Fi titles.",
                     evidence_titles=["Alien (1979)", "Aliens (1986)"], categories={"Sci-Fi": 0.8, "Horror": 0.2})
    res = describe_personas(ScriptedLLM([answer, answer]), [p])
    assert res.items[0].source == "template" and res.items[0].fallback_reason == reason


def test_grounded_persona_description_is_accepted():
    p = PersonaInput(persona_id="p1", name="Sci-Fi", description="Sci-Fi titles.",
                     evidence_titles=["Alien (1979)", "Aliens (1986)"], categories={"Sci-Fi": 0.8, "Horror": 0.2})
    ok = '{"name": "Deep Space Dread", "description": "Claustrophobic science fiction horror, like Alien (1979)."}'
    res = describe_personas(ScriptedLLM([ok]), [p])
    assert res.items[0].source == "llm" and res.items[0].name == "Deep Space Dread"


def test_title_checks_ignore_punctuation_and_article_order():
    from agent.llm.tasks import _is_title, _only_titles

    assert _is_title("Fan The", ["Fan, The (1996)"]) and _is_title("The Fan", ["Fan, The (1996)"])
    assert not _is_title("Fan Club", ["Fan, The (1996)"])
    assert _only_titles("My Best Friend's Wedding (1997)", ["My Best Friend's Wedding (1997)"])
    assert not _only_titles("Enjoys Drama titles; e.g. Big Night, Lone Star.", ["Big Night (1996)", "Lone Star (1996)"])


def test_title_index_finds_what_a_whole_word_scan_finds():
    from agent.llm.tasks import TitleIndex

    titles = ["Godfather, The (1972)", "Alien (1979)", "Aliens (1986)", "Star Wars (1977)", "Heat (1995)", "M*A*S*H (1970)"]
    idx = TitleIndex(titles)

    def named(text):
        return [titles[p] for p, _ in idx.find(text)]

    assert named("Since you liked The Godfather and Aliens, M*A*S*H fits.") == \
        ["Godfather, The (1972)", "Aliens (1986)", "M*A*S*H (1970)"]
    assert named("Alien's sequel; star wars; some heat") == ["Alien (1979)", "Star Wars (1977)", "Heat (1995)"]
    assert named("Starwars, aliensque, godfathers") == []
    assert [w for _, w in idx.find("the godfather")] == [("the", "godfather")]  # the longest naming is kept
