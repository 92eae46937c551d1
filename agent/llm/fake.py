"""``ScriptedLLM``: a deterministic backend that answers from a script and records every call.

For logic tests anywhere in the project: no model, no network, exact control over what the
"model" says (valid JSON, invalid JSON, hallucinated ids, an exception as if the server died).

Example:
    >>> llm = ScriptedLLM(lambda req: '{"persona_id": "p1"}')
    >>> llm.chat("which persona?").text
    '{"persona_id": "p1"}'
    >>> len(llm.requests)
    1
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from agent.llm.base import Completion, LLMBackend, LLMError, LLMRequest

Answer = str | Completion | BaseException
"""A scripted answer: text, a full ``Completion``, or an exception that ``generate`` raises."""


class ScriptExhaustedError(LLMError):
    """The script has no answer left for a request."""


class ScriptedLLM(LLMBackend):
    """Answers requests from a script.

    ``script`` is either a sequence of answers, consumed one per request in call order, or a
    function of the request. An answer is a string (the completion text), a
    :class:`Completion` (returned with the request's id filled in) or an exception, which
    makes the whole ``generate`` call raise, as a dead server would. When a sequence runs out,
    ``default`` is used if given, else :class:`ScriptExhaustedError` is raised.

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
        """A backend whose every ``generate`` call raises ``error`` (a server that is down)."""
        return cls(lambda _req: error, model=model)

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
        out = []
        for req, a in zip(requests, answers):
            if isinstance(a, Completion):
                out.append(a.model_copy(update={"request_id": req.request_id}))
            else:
                out.append(
                    Completion(
                        request_id=req.request_id,
                        text=a,
                        alternatives=[a] * (req.sampling.n - 1),
                        completion_tokens=len(a.split()),
                        prompt_tokens=sum(len(m.content.split()) for m in req.messages),
                        backend=self.name,
                        model=self.model_name,
                    )
                )
        return out
