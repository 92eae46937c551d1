"""The LLM interface, the scripted fake, structured parsing and the registry (no model needed)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import BaseModel, Field

from agent.llm import (
    BACKENDS,
    ChatMessage,
    Completion,
    LLMConfig,
    LLMRequest,
    SamplingConfig,
    ScriptedLLM,
    StructuredOutputError,
    make_backend,
)
from agent.llm.fake import ScriptExhaustedError
from agent.llm.structured import extract_json, json_schema_of, parse_structured
from memory.errors import UsageError


class Pick(BaseModel):
    persona_id: str
    score: int = Field(ge=0, le=10)


class Outer(BaseModel):
    picks: list[Pick]


# -- configs --------------------------------------------------------------------------------
def test_sampling_config_round_trips_and_rejects_bad_values():
    s = SamplingConfig(
        temperature=0.7, top_p=0.9, max_tokens=64, stop=["\n"], seed=3, n=2, frequency_penalty=0.5
    )
    assert SamplingConfig.model_validate(s.model_dump()) == s
    assert SamplingConfig.model_validate_json(s.model_dump_json()) == s
    with pytest.raises(ValueError):
        SamplingConfig(temperature=-1)
    with pytest.raises(ValueError):
        SamplingConfig(max_tokens=0)
    with pytest.raises(ValueError):
        SamplingConfig(temprature=0.5)  # typo: extra fields are forbidden


def test_llm_config_round_trips():
    cfg = LLMConfig(
        backend="vllm", model="/m", tensor_parallel_size=2, gpu_memory_utilization=0.5, cpu_threads=1
    )
    assert LLMConfig.model_validate(cfg.model_dump()) == cfg
    assert LLMConfig.model_validate(cfg.model_dump()).model_dump() == cfg.model_dump()
    with pytest.raises(ValueError):
        LLMConfig(gpu_memory_utilization=1.5)


def test_request_accepts_a_plain_string():
    r = LLMRequest(messages="hello")
    assert r.messages == [ChatMessage(role="user", content="hello")]
    assert len(r.request_id) == 12


# -- registry -------------------------------------------------------------------------------
def test_unknown_backend_lists_the_available_ones():
    with pytest.raises(UsageError) as e:
        make_backend(LLMConfig(backend="llamacpp"))
    msg = str(e.value)
    assert "llamacpp" in msg
    for name in BACKENDS:
        assert name in msg


def test_none_backend_means_templates_only():
    assert make_backend(LLMConfig(backend="none")) is None


def test_scripted_backend_from_config_answers_empty_objects():
    llm = make_backend(LLMConfig(backend="scripted"))
    assert isinstance(llm, ScriptedLLM)
    assert llm.chat("x").text == "{}"


def test_unknown_model_path_lists_what_is_available(tmp_path):
    from agent.llm.model_files import resolve_model

    with pytest.raises(UsageError) as e:
        resolve_model(str(tmp_path / "no-such-model"))
    msg = str(e.value)
    assert "no-such-model" in msg and "model folder" in msg and ".gguf" in msg


def test_folder_without_config_or_gguf_is_rejected(tmp_path):
    from agent.llm.model_files import resolve_model

    with pytest.raises(UsageError, match="0 .gguf files"):
        resolve_model(tmp_path)


def test_vllm_backend_needs_a_model():
    with pytest.raises(UsageError, match="vllm backend has no default model"):
        make_backend(LLMConfig(backend="vllm"))


def test_importing_agent_llm_does_not_import_heavy_stacks():
    code = (
        "import sys, agent.llm, agent.llm.tasks, prompts; "
        "bad = [m for m in ('torch', 'transformers', 'vllm', 'openai', 'xgrammar') if m in sys.modules]; "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


# -- scripted fake --------------------------------------------------------------------------
def test_scripted_llm_answers_in_order_and_records_calls():
    llm = ScriptedLLM(["a", "b", "c"])
    out = llm.generate([LLMRequest(messages="1"), LLMRequest(messages="2")])
    assert [c.text for c in out] == ["a", "b"]
    assert llm.chat("3").text == "c"
    assert len(llm.calls) == 2 and [r.messages[0].content for r in llm.requests] == ["1", "2", "3"]
    assert llm.remaining == 0
    with pytest.raises(ScriptExhaustedError):
        llm.chat("4")


def test_scripted_llm_by_function_and_exceptions():
    llm = ScriptedLLM(lambda req: req.messages[-1].content.upper())
    assert llm.chat("hi").text == "HI"
    # a scripted exception is a backend that breaks the contract: generate raises
    broken = ScriptedLLM([ConnectionError("server down")])
    with pytest.raises(ConnectionError):
        broken.chat("hi")
    # failing() is a backend that is down, reported like the real ones (tests/test_llm_contract.py)
    dead = ScriptedLLM.failing(ConnectionError("server down"))
    c = dead.chat("hi")
    assert not c.ok and c.finish_reason == "error" and c.error == "ConnectionError: server down"


def test_scripted_completion_keeps_request_id():
    llm = ScriptedLLM([Completion(request_id="x", text="", finish_reason="error", error="boom")])
    req = LLMRequest(messages="hi")
    c = llm.generate([req])[0]
    assert c.request_id == req.request_id and not c.ok and c.error == "boom"


# -- structured output ----------------------------------------------------------------------
def test_json_schema_of_inlines_defs_and_closes_objects():
    schema = json_schema_of(Outer)
    assert "$defs" not in schema and "$ref" not in str(schema)
    item = schema["properties"]["picks"]["items"]
    assert item["additionalProperties"] is False and schema["additionalProperties"] is False
    assert item["properties"]["score"]["maximum"] == 10


@pytest.mark.parametrize(
    "text",
    [
        '{"persona_id": "p1", "score": 3}',
        'Sure! ```json\n{"persona_id": "p1", "score": 3}\n```',
        'The answer is {"persona_id": "p1", "score": 3} as requested.',
    ],
)
def test_parse_structured_accepts_wrapped_json(text):
    assert parse_structured(text, Pick) == Pick(persona_id="p1", score=3)


def test_parse_structured_reasons():
    with pytest.raises(StructuredOutputError) as e:
        parse_structured("no json here", Pick)
    assert e.value.reason == "invalid_json"
    with pytest.raises(StructuredOutputError) as e:
        parse_structured('{"persona_id": "p1", "score": 99}', Pick)
    assert e.value.reason == "schema" and "score" in e.value.message


def test_extract_json_raises_without_json():
    with pytest.raises(ValueError):
        extract_json("nothing {here")


def test_complete_json_returns_instances_or_errors_in_order():
    llm = ScriptedLLM(['{"persona_id": "p2", "score": 1}', "oops", '{"persona_id": 5}'])
    reqs = [LLMRequest(messages=f"q{i}") for i in range(3)]
    out = llm.complete_json(reqs, Pick)
    assert out[0] == Pick(persona_id="p2", score=1)
    assert isinstance(out[1], StructuredOutputError) and out[1].reason == "invalid_json"
    assert isinstance(out[2], StructuredOutputError) and out[2].reason == "schema"
    assert out[1].completion is not None and out[1].completion.text == "oops"
    # the pydantic model's schema was attached to every request
    assert all(r.json_schema == json_schema_of(Pick) for r in llm.requests)


def test_complete_json_reports_backend_errors():
    llm = ScriptedLLM([Completion(request_id="", finish_reason="error", error="timeout")])
    (out,) = llm.complete_json([LLMRequest(messages="q")], Pick)
    assert isinstance(out, StructuredOutputError) and out.reason == "backend_error"
