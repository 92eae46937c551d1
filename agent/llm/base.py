"""The LLM interface: one abstract batch method, OpenAI-shaped sampling, conveniences on top.

Every backend (transformers, vLLM, an OpenAI-compatible server, the scripted fake) implements
:meth:`LLMBackend.generate` and nothing else; :meth:`LLMBackend.chat` and
:meth:`LLMBackend.complete_json` are built on it, the way LangGraph's ``BaseStore`` builds
``get``/``put`` on ``batch``. Nothing here imports torch, so ``import agent.llm`` stays cheap.

Example:
    >>> from agent.llm.fake import ScriptedLLM
    >>> llm = ScriptedLLM(['{"name": "Night Owl"}'])
    >>> llm.chat("Name this persona").text
    '{"name": "Night Owl"}'
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from memory.errors import PluralError

T = TypeVar("T", bound=BaseModel)


class LLMError(PluralError):
    """A backend could not be built or used (missing package, model failed to load).

    ``generate`` does not raise it for a server that is down or an engine that fails: those
    become error completions (see :class:`LLMBackend`); it names the failure inside them.
    """


class FinishReasonError(LLMError):
    """A server or engine ended an answer for a reason that is a failure (see :data:`FINISH_REASONS`)."""


FinishReason = Literal["stop", "length", "error"]
"""Why an answer ended, the same on every backend:

* ``stop``: the model ended its turn (end-of-sequence token) or produced a stop string;
  the text is complete.
* ``length``: cut before its natural end, at ``max_tokens`` (or the context window); the text
  is incomplete, and structured output cut there is reported as ``truncated``.
* ``error``: no answer: the backend, server or engine failed for this request
  (``Completion.error`` says why, ``text`` is empty).
"""

FINISH_REASONS: dict[str | None, tuple[FinishReason, str]] = {
    "stop": ("stop", "end of turn or a stop string (OpenAI, vLLM, transformers serve)"),
    None: ("stop", "no reason reported for a finished answer: complete as far as the server says"),
    "tool_calls": ("stop", "OpenAI: the turn ended in a tool call (Plural sends no tools)"),
    "function_call": ("stop", "OpenAI: older spelling of tool_calls"),
    "length": ("length", "max_tokens reached, or the context window (vLLM: max_model_len)"),
    "repetition": ("length", "vLLM: a repetitive token loop was detected and cut; incomplete, like length"),
    "content_filter": ("error", "a content filter withheld or cut the answer"),
    "abort": ("error", "vLLM: the engine aborted the request (e.g. shut down or cancelled)"),
    "error": ("error", "vLLM: request-level engine error (e.g. a KV-cache load failure)"),
}
"""Raw finish reasons (OpenAI API, vLLM ``CompletionOutput.finish_reason``) and what they mean in
:data:`FinishReason`, with why. Any reason not listed maps to ``error`` (unknown: the text cannot
be trusted to be complete, and the validated tasks then use their templates)."""


def normalize_finish_reason(raw: object) -> tuple[FinishReason, str | None]:
    """Plural's finish reason for a server's or engine's raw one, and the error text if it is a failure.

    Shared by the OpenAI and vLLM backends (transformers decides ``stop``/``length`` itself).

    Example:
        >>> normalize_finish_reason("length")
        ('length', None)
        >>> reason, error = normalize_finish_reason("content_filter")
        >>> reason, error.split(": ")[0]
        ('error', 'FinishReasonError')
        >>> normalize_finish_reason("teapot")[0]
        'error'
    """
    key = None if raw is None else str(raw)  # vLLM's FinishReason enum prints as its string
    reason, meaning = FINISH_REASONS.get(key, ("error", "unknown finish reason (not in FINISH_REASONS)"))
    if reason != "error":
        return reason, None
    return "error", describe_error(FinishReasonError(f"finish_reason {key!r}: {meaning}"))


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to the first stop string, and whether one was found (then it is not kept).

    Example:
        >>> cut_at_stop("one, two, three", [","])
        ('one', True)
    """
    cuts = [text.find(x) for x in stop if x and x in text]
    return (text[: min(cuts)], True) if cuts else (text, False)


def describe_error(error: BaseException) -> str:
    """``"<ExceptionType>: <message>"``, the start of every ``Completion.error``."""
    return f"{type(error).__name__}: {error}"


class SamplingConfig(BaseModel):
    """How to sample, in OpenAI's vocabulary; every backend translates it, none invents its own.

    The default is greedy decoding, so that explanations and persona texts are reproducible.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float = Field(0.0, ge=0.0, le=2.0)
    """0 means greedy decoding; higher values sample more freely."""
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    """Nucleus sampling: keep the smallest token set whose probability reaches ``top_p``."""
    max_tokens: int = Field(256, ge=1, le=32768)
    """Upper bound on generated tokens per completion (prompt excluded)."""
    stop: list[str] = Field(default_factory=list, max_length=8)
    """Strings that end generation; they are not part of the returned text. Ignored for requests
    with a ``json_schema`` (a stop string inside the JSON would cut it)."""
    seed: int | None = None
    """Seed for sampling; with ``temperature > 0`` the same seed gives the same text on the same backend."""
    n: int = Field(1, ge=1, le=16)
    """Completions per request; the first is ``Completion.text``, the others ``Completion.alternatives``.
    Greedy decoding (``temperature == 0``) draws one sample and repeats it (see :attr:`draws`)."""
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    """Subtracted from a token's logit once per earlier occurrence in the completion (curbs loops)."""
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    """Subtracted from a token's logit once if it already occurs in the completion."""

    @property
    def draws(self) -> int:
        """Distinct samples a backend draws: ``n``, or 1 when greedy (every greedy sample is the same;
        vLLM and transformers refuse ``n > 1`` with greedy decoding)."""
        return self.n if self.temperature > 0 else 1

    def key(self) -> tuple:
        """Hashable identity; requests that share it can share one ``generate`` call."""
        return (
            self.temperature,
            self.top_p,
            self.max_tokens,
            tuple(self.stop),
            self.seed,
            self.n,
            self.frequency_penalty,
            self.presence_penalty,
        )


class ChatMessage(BaseModel):
    """One chat turn."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Literal["system", "user", "assistant"]
    """Who speaks: ``system`` instructions, the ``user``, or the model (``assistant``)."""
    content: str
    """The text of the turn."""


class LLMRequest(BaseModel):
    """One conversation to complete, with its sampling and, optionally, the JSON schema of the answer."""

    model_config = ConfigDict(extra="forbid")

    messages: list[ChatMessage] = Field(min_length=1)
    """The conversation so far; the completion is the next assistant turn."""
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    """Sampling settings for this request."""
    json_schema: dict[str, Any] | None = None
    """When set, the answer must be JSON valid under this schema (decoded under it where the backend can)."""
    schema_name: str = Field("output", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    """Name of the schema, as OpenAI's ``response_format`` wants one."""
    request_id: str = Field(default_factory=lambda: uuid.uuid4().hex[:12])
    """Identifies the request in logs and in its :class:`Completion`."""

    @field_validator("messages", mode="before")
    @classmethod
    def _coerce_messages(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [{"role": "user", "content": v}]
        return v


class Completion(BaseModel):
    """What a backend returned for one request (or why it could not)."""

    model_config = ConfigDict(extra="forbid")

    request_id: str
    """The :attr:`LLMRequest.request_id` this answers."""
    text: str = ""
    """The generated assistant turn (empty when ``error`` is set)."""
    alternatives: list[str] = Field(default_factory=list)
    """The other ``n - 1`` samples when ``SamplingConfig.n > 1``."""
    finish_reason: FinishReason = "stop"
    """Why ``text`` ended: ``stop``, ``length`` or ``error`` (see :data:`FinishReason`)."""
    prompt_tokens: int = 0
    """Tokens in the rendered prompt (0 when the backend does not report it)."""
    completion_tokens: int = 0
    """Tokens generated for ``text`` and every alternative (a repeated greedy sample counts each time)."""
    latency_s: float = 0.0
    """Wall time of the call that produced this completion (shared by a batch)."""
    backend: str = ""
    """Backend name (``transformers``, ``vllm``, ``openai``, ``scripted``)."""
    model: str = ""
    """Model name or path as the backend knows it."""
    error: str | None = None
    """Why no text came back, ``"<ExceptionType>: <message>"`` (see :func:`describe_error`), possibly
    followed by the backend's context in parentheses; ``None`` on success."""

    @property
    def ok(self) -> bool:
        return self.error is None


def error_completion(
    request: LLMRequest, error: BaseException | str, *, backend: str, model: str, latency_s: float = 0.0
) -> Completion:
    """The completion of a request that failed: how every backend reports a failure.

    ``error`` is the exception (described as ``"<ExceptionType>: <message>"``) or a message
    already in that shape.
    """
    return Completion(
        request_id=request.request_id,
        finish_reason="error",
        error=error if isinstance(error, str) else describe_error(error),
        latency_s=latency_s,
        backend=backend,
        model=model,
    )


class StructuredOutputError(PluralError, ValueError):
    """An answer that is not valid JSON for the requested model; kept, not raised, by ``complete_json``.

    ``reason`` is a short code used by fallback counters: ``backend_error``, ``invalid_json``
    or ``schema``; ``completion`` is the raw answer when there was one.
    """

    def __init__(self, reason: str, message: str, completion: Completion | None = None):
        self.reason, self.message, self.completion = reason, message, completion
        super().__init__(f"{reason}: {message}")


def as_messages(messages: str | Sequence[ChatMessage | dict], system: str | None = None) -> list[ChatMessage]:
    """A string or a list of dicts/messages as ``ChatMessage`` objects (after ``system``, if given)."""
    if isinstance(messages, str):
        msgs = [ChatMessage(role="user", content=messages)]
    else:
        msgs = [m if isinstance(m, ChatMessage) else ChatMessage.model_validate(m) for m in messages]
    if system is not None:
        msgs.insert(0, ChatMessage(role="system", content=system))
    return msgs


class LLMBackend(ABC):
    """A language model that completes batches of chat requests.

    Subclasses implement :meth:`generate`, under one contract (``tests/test_llm_contract.py``
    holds every backend to it):

    * one :class:`Completion` per request, in request order, with its ``request_id``;
      ``generate([])`` is ``[]``;
    * ``text`` is the answer without surrounding whitespace, plus ``n - 1`` ``alternatives``
      (greedy decoding repeats its one sample, see :attr:`SamplingConfig.draws`);
    * ``finish_reason`` is ``stop`` (end of turn or a stop string, which is not in the text),
      ``length`` (cut at ``max_tokens``) or ``error``; raw server/engine reasons go through
      :func:`normalize_finish_reason`;
    * with a ``json_schema`` the answer is decoded under it where the backend or server can
      (stop strings are then ignored); callers validate it in any case;
    * failures do not raise: a server that is down or times out, an engine that fails, a
      request the backend cannot prepare, each give the affected requests an
      :func:`error_completion` (``finish_reason="error"``, empty ``text``, ``error`` =
      ``"<ExceptionType>: <message>"``), so one bad request does not lose a batch. Only
      construction raises (:class:`LLMError`, ``UsageError``).

    Example:
        >>> from agent.llm.fake import ScriptedLLM
        >>> from pydantic import BaseModel
        >>> class Name(BaseModel):
        ...     name: str
        >>> llm = ScriptedLLM(['{"name": "Night Owl"}', 'not json'])
        >>> out = llm.complete_json([LLMRequest(messages="a"), LLMRequest(messages="b")], Name)
        >>> out[0].name, type(out[1]).__name__
        ('Night Owl', 'StructuredOutputError')
    """

    name: str = "backend"
    """Short backend name, used in provenance."""

    @property
    def model_name(self) -> str:
        """The model this backend runs, as it appears in provenance."""
        return getattr(self, "_model_name", "")

    @abstractmethod
    def generate(self, requests: Sequence[LLMRequest]) -> list[Completion]:
        """Complete every request; one :class:`Completion` per request, in request order."""

    def chat(
        self,
        messages: str | Sequence[ChatMessage | dict],
        *,
        system: str | None = None,
        sampling: SamplingConfig | None = None,
        json_schema: dict[str, Any] | None = None,
    ) -> Completion:
        """Complete one conversation (a plain string is one user turn)."""
        req = LLMRequest(
            messages=as_messages(messages, system),
            sampling=sampling or SamplingConfig(),
            json_schema=json_schema,
        )
        return self.generate([req])[0]

    def complete_json(
        self, requests: Sequence[LLMRequest], output_model: type[T]
    ) -> list[T | StructuredOutputError]:
        """Generate, then parse and validate each answer as ``output_model``.

        Requests without a schema get ``output_model``'s schema. Each result is a validated
        instance or a :class:`StructuredOutputError` (returned, not raised), in request order.
        """
        from agent.llm.structured import json_schema_of, parse_structured

        schema = json_schema_of(output_model)
        reqs = [
            r if r.json_schema is not None else r.model_copy(update={"json_schema": schema}) for r in requests
        ]
        out: list[T | StructuredOutputError] = []
        for comp in self.generate(reqs):
            if not comp.ok:
                out.append(StructuredOutputError("backend_error", comp.error or "unknown error", comp))
                continue
            try:
                out.append(parse_structured(comp.text, output_model))
            except StructuredOutputError as e:
                e.completion = comp
                out.append(e)
        return out

    def close(self) -> None:
        """Release the model or connections (the backend is unusable afterwards)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model_name!r})"
