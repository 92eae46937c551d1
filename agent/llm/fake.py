"""``ScriptedLLM``: a deterministic backend that answers from a script and records every call.

For logic tests anywhere in the project: no model, no network, exact control over what the
"model" says (valid JSON, invalid JSON, hallucinated ids, a server that is down). It keeps the
:class:`~agent.llm.base.LLMBackend` contract like the real backends do (``tests/test_llm_contract.py``):
text answers are cut at stop strings and at ``max_tokens`` (a token is a whitespace-separated
word), ``n`` repeats the answer, and :meth:`ScriptedLLM.failing` fails the way a real backend does.

Example:
    >>> llm = ScriptedLLM(lambda req: '{"persona_id": "p1"}')
    >>> llm.chat("which persona?").text
    '{"persona_id": "p1"}'
    >>> len(llm.requests)
    1
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence

from agent.llm.base import Completion, LLMBackend, LLMError, LLMRequest, cut_at_stop, error_completion

Answer = str | Completion | BaseException
"""A scripted answer: text, a full ``Completion``, or an exception that ``generate`` raises."""

_WORD = re.compile(r"\S+")


class ScriptExhaustedError(LLMError):
    """The script has no answer left for a request."""


class ScriptedLLM(LLMBackend):
    """Answers requests from a script.

    ``script`` is either a sequence of answers, consumed one per request in call order, or a
    function of the request. An answer is

    * a string: what the model says, before sampling is applied: it is cut at the first stop
      string (``finish_reason="stop"``; not for schema requests) and after ``max_tokens``
      words (``"length"``), and repeated for the ``n - 1`` alternatives;
    * a :class:`Completion`, returned as it is with the request's id filled in;
    * an exception, which makes the whole ``generate`` call raise: a backend that breaks the
      contract (real backends return error completions instead; :meth:`failing` does that),
      to test that callers survive it.

    When a sequence runs out, ``default`` is used if given, else :class:`ScriptExhaustedError`
    is raised.

    ``calls`` holds the request batches of every ``generate`` call; ``requests`` flattens them.
    """

    name = "scripted"

    def __init__(
        self,
        script: Iterable[Answer] | Callable[[LLMRequest], Answer],
        *,
        default: Answer | None = None,
        model: str = "scripted",
    ):
        self._fn = script if callable(script) else None
        self._queue: list[Answer] = [] if callable(script) else list(script)
        self._pos = 0
        self.default = default
        self._model_name = model
        self.calls: list[list[LLMRequest]] = []

    @classmethod
    def failing(cls, error: BaseException, model: str = "scripted") -> ScriptedLLM:
        """A backend that is down, failing as the real ones do: ``generate`` does not raise, and
        every request gets an error completion (``finish_reason="error"``, empty text,
        ``error="<ExceptionType>: <message>"``, here ``str(error)`` for the message)."""
        return cls(lambda req: error_completion(req, error, backend=cls.name, model=model), model=model)

    @property
    def requests(self) -> list[LLMRequest]:
        """Every request received, in order."""
        return [r for batch in self.calls for r in batch]

    @property
    def remaining(self) -> int:
        """Scripted answers not yet used (0 for a function script)."""
        return len(self._queue) - self._pos

    def _next(self, req: LLMRequest) -> Answer:
        if self._fn is not None:
            return self._fn(req)
        if self._pos < len(self._queue):
            self._pos += 1
            return self._queue[self._pos - 1]
        if self.default is not None:
            return self.default
        raise ScriptExhaustedError(
            f"ScriptedLLM has no answer for request {len(self.requests)} "
            f"({len(self._queue)} scripted, no default)"
        )

    def generate(self, requests: Sequence[LLMRequest]) -> list[Completion]:
        requests = list(requests)
        self.calls.append(requests)
        answers = [self._next(r) for r in requests]
        for a in answers:
            if isinstance(a, BaseException):
                raise a
        return [self._complete(req, a) for req, a in zip(requests, answers)]

    def _complete(self, req: LLMRequest, answer: str | Completion) -> Completion:
        if isinstance(answer, Completion):
            return answer.model_copy(update={"request_id": req.request_id})
        s = req.sampling
        text, reason = answer, "stop"
        if req.json_schema is None:
            text, _ = cut_at_stop(text, s.stop)
        words = list(_WORD.finditer(text))
        if len(words) > s.max_tokens:
            text, reason = text[: words[s.max_tokens - 1].end()], "length"
        text = text.strip()
        return Completion(
            request_id=req.request_id,
            text=text,
            alternatives=[text] * (s.n - 1),
            finish_reason=reason,
            completion_tokens=min(len(words), s.max_tokens) * s.n,
            prompt_tokens=sum(len(m.content.split()) for m in req.messages),
            backend=self.name,
            model=self.model_name,
        )
