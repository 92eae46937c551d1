"""Validate, retry once, fall back: how every LLM task turns untrusted text into a result.

:func:`run_validated` renders one prompt per job, sends all of them to the backend in one
``generate`` call, parses and checks each answer, retries the rejected ones once (one more
batched call, with the reason appended through the ``retry_invalid_output`` prompt) and
leaves the rest to the caller's deterministic template. It never raises for model output
or backend failures: a backend exception, or an error completion, becomes ``llm_error`` and
template results. :class:`FallbackCounter` counts what happened per reason; it goes into
every result's metadata and the logs.

Fallback reasons: ``no_llm`` (backend ``none``), ``backend_error``, ``invalid_json``,
``truncated`` (cut at ``max_tokens``), ``schema``, and the tasks' semantic checks
(``unknown_persona``, ``uncited_title``, ``foreign_title``, ``duplicate_name``, ``count``...).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from agent.llm.base import (
    ChatMessage,
    Completion,
    LLMBackend,
    LLMRequest,
    SamplingConfig,
    StructuredOutputError,
)
from agent.llm.structured import parse_structured
from prompts import Prompt, load_prompt

log = logging.getLogger("plural.llm")

T = TypeVar("T", bound=BaseModel)
Source = Literal["llm", "llm_retry", "template"]


class Rejected(Exception):
    """Raised by a task's check: the answer parses but is wrong (``reason`` is a counter key)."""

    def __init__(self, reason: str, message: str):
        self.reason, self.message = reason, message
        super().__init__(f"{reason}: {message}")


class FallbackCounter(BaseModel):
    """How many results came from the LLM, after a retry, or from the template, and why.

    Example:
        >>> c = FallbackCounter()
        >>> c.record("llm"); c.record("template", "schema")
        >>> c.as_dict()["fallbacks"], c.fallback_rate
        ({'schema': 1}, 0.5)
    """

    model_config = ConfigDict(extra="forbid")

    total: int = 0
    """Results produced."""
    llm: int = 0
    """Accepted on the first answer."""
    llm_retry: int = 0
    """Accepted after the one retry."""
    template: int = 0
    """Deterministic template used."""
    fallbacks: dict[str, int] = Field(default_factory=dict)
    """Template results per reason."""
    rejections: dict[str, int] = Field(default_factory=dict)
    """Every rejected answer per reason, first attempts included (a retried success counts here too)."""

    def record(self, source: Source, reason: str | None = None) -> None:
        self.total += 1
        setattr(self, source, getattr(self, source) + 1)
        if source == "template":
            key = reason or "unknown"
            self.fallbacks[key] = self.fallbacks.get(key, 0) + 1

    def reject(self, reason: str) -> None:
        self.rejections[reason] = self.rejections.get(reason, 0) + 1

    @property
    def fallback_rate(self) -> float:
        """Share of results from the template (0.0 when there were none)."""
        return self.template / self.total if self.total else 0.0

    def merge(self, other: FallbackCounter) -> FallbackCounter:
        """A new counter with both counts added (to total over tasks or users)."""
        out = self.model_copy(deep=True)
        for k in ("total", "llm", "llm_retry", "template"):
            setattr(out, k, getattr(out, k) + getattr(other, k))
        for d_out, d_in in ((out.fallbacks, other.fallbacks), (out.rejections, other.rejections)):
            for k, v in d_in.items():
                d_out[k] = d_out.get(k, 0) + v
        return out

    def as_dict(self) -> dict[str, Any]:
        return {**self.model_dump(), "fallback_rate": round(self.fallback_rate, 4)}


class Provenance(BaseModel):
    """Which prompt version and which model produced a result."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str
    """Prompt name (a file in ``prompts/``)."""
    prompt_sha256: str
    """Content hash of the prompt's template and spec."""
    backend: str
    """Backend name, ``none`` when no LLM was configured."""
    model: str | None = None
    """Model name or path; ``None`` when no LLM was configured."""


class Judged(BaseModel):
    """Fields every LLM-task result item carries: where it came from and, if a template, why."""

    source: Source = "template"
    """``llm`` (first answer accepted), ``llm_retry`` (accepted after the retry) or ``template``."""
    fallback_reason: str | None = None
    """Why the template was used (see the module docstring); ``None`` for LLM results."""


class TaskResult(BaseModel, Generic[T]):
    """The items of one LLM task call, in input order, with provenance and counters."""

    task: str
    items: list[T]
    provenance: Provenance
    fallbacks: FallbackCounter
    llm_error: str | None = None
    """Set when the backend failed (server down, timeout): the items then come from templates."""

    def metadata(self) -> dict[str, Any]:
        """What goes into a recommendation's metadata: task, provenance, counters, error."""
        return {
            "task": self.task,
            "provenance": self.provenance.model_dump(),
            "fallbacks": self.fallbacks.as_dict(),
            "llm_error": self.llm_error,
        }


@dataclass
class Job(Generic[T]):
    """One structured question: the prompt's variables, the (narrowed) schema, and the meaning check."""

    variables: dict[str, Any]
    schema: dict[str, Any]
    check: Callable[[Any], Any] = lambda out: out
    """Takes the parsed answer; returns the (possibly normalised) value or raises :class:`Rejected`."""


@dataclass
class Outcome:
    """What :func:`run_validated` decided for one job; ``value is None`` means: use the template."""

    value: Any = None
    source: Source = "template"
    reason: str | None = None
    message: str | None = None
    raw: list[str] = field(default_factory=list)


def provenance(prompt: Prompt, backend: LLMBackend | None) -> Provenance:
    """Provenance for results of ``prompt`` run on ``backend`` (``None``: templates only)."""
    if backend is None:
        return Provenance(prompt=prompt.name, prompt_sha256=prompt.sha256, backend="none", model=None)
    return Provenance(
        prompt=prompt.name, prompt_sha256=prompt.sha256, backend=backend.name, model=backend.model_name
    )


def _safe_generate(backend: LLMBackend, reqs: list[LLMRequest]) -> tuple[list[Completion] | None, str | None]:
    try:
        comps = backend.generate(reqs)
    except Exception as e:  # noqa: BLE001 - a broken backend must not break recommendations
        log.warning("LLM backend %s failed: %s: %s", backend.name, type(e).__name__, e)
        return None, f"{type(e).__name__}: {e}"
    if len(comps) != len(reqs):
        return None, f"backend {backend.name} returned {len(comps)} completions for {len(reqs)} requests"
    return comps, None


def _judge(
    comp: Completion, output_model: type[T], check: Callable[[Any], Any]
) -> tuple[Any, str | None, str | None]:
    """(value, reason, message): value on success, else the rejection reason and message."""
    if not comp.ok:
        return None, "backend_error", comp.error
    try:
        parsed = parse_structured(comp.text, output_model)
    except StructuredOutputError as e:
        # an answer cut at max_tokens is truncated, whatever the parser made of its remains
        reason = "truncated" if comp.finish_reason == "length" else e.reason
        return None, reason, e.message
    try:
        return check(parsed), None, None
    except Rejected as e:
        return None, e.reason, e.message


RETRY_TEMPERATURE = 0.7
"""Temperature of the one retry when the first answer was greedy: a greedy retry of a small model
mostly writes the rejected answer again."""


def retry_sampling(sampling: SamplingConfig) -> SamplingConfig:
    """The retry's sampling: the task's own, sampled (seeded, so reruns agree) when it was greedy."""
    if sampling.temperature > 0:
        return sampling
    return sampling.model_copy(update={"temperature": RETRY_TEMPERATURE, "top_p": 0.95,
                                       "seed": 0 if sampling.seed is None else sampling.seed})


def run_validated(
    backend: LLMBackend | None,
    prompt: Prompt,
    jobs: Sequence[Job],
    output_model: type[T],
    sampling: SamplingConfig,
    counter: FallbackCounter,
    *,
    task: str,
) -> tuple[list[Outcome], str | None]:
    """Ask, check, retry once, and report per job; see the module docstring.

    Returns one :class:`Outcome` per job (in order) and the backend error, if any. The caller
    fills in the template for outcomes without a value and records each in ``counter``.
    """
    outcomes = [Outcome() for _ in jobs]
    if not jobs:
        return outcomes, None
    if backend is None:
        for o in outcomes:
            o.reason = "no_llm"
        return outcomes, None
    messages = [[ChatMessage.model_validate(m) for m in prompt.render(**j.variables)] for j in jobs]
    reqs = [
        LLMRequest(messages=msgs, sampling=sampling, json_schema=j.schema, schema_name=prompt.name)
        for msgs, j in zip(messages, jobs)
    ]
    comps, llm_error = _safe_generate(backend, reqs)
    if comps is None:
        for o in outcomes:
            o.reason, o.message = "backend_error", llm_error
        return outcomes, llm_error
    retry: list[int] = []
    for i, (job, comp) in enumerate(zip(jobs, comps)):
        o = outcomes[i]
        o.raw.append(comp.text)
        value, o.reason, o.message = _judge(comp, output_model, job.check)
        if o.reason is None:
            o.value, o.source = value, "llm"
            continue
        counter.reject(o.reason)
        if o.reason == "backend_error":
            llm_error = llm_error or o.message  # the backend already retried transport errors
        else:
            retry.append(i)
    if retry:
        retry_prompt = load_prompt("retry_invalid_output")
        reqs2 = []
        for i in retry:
            follow = [
                ChatMessage.model_validate(m) for m in retry_prompt.render(error=outcomes[i].message or "")
            ]
            msgs = messages[i] + [ChatMessage(role="assistant", content=comps[i].text[:2000])] + follow
            reqs2.append(reqs[i].model_copy(update={"messages": msgs, "sampling": retry_sampling(sampling)}))
        comps2, err2 = _safe_generate(backend, reqs2)
        for k, i in enumerate(retry):
            o = outcomes[i]
            if comps2 is None:
                o.reason, o.message = "backend_error", err2
                llm_error = llm_error or err2
                continue
            o.raw.append(comps2[k].text)
            value, reason, message = _judge(comps2[k], output_model, jobs[i].check)
            if reason is None:
                o.value, o.source, o.reason, o.message = value, "llm_retry", None, None
            else:
                counter.reject(reason)
                o.reason, o.message = reason, message
                if reason == "backend_error":
                    llm_error = llm_error or message
    for i, o in enumerate(outcomes):
        if o.value is None:
            log.info("%s: job %d falls back to the template (%s: %s)", task, i, o.reason, o.message)
    return outcomes, llm_error
