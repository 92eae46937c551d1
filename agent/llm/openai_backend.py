"""A backend for any OpenAI-compatible server: ``vllm serve`` replicas, ``transformers serve``, OpenAI.

Built on the official ``openai`` client. A batch becomes concurrent HTTP requests (at most
``max_concurrency`` in flight), which a vLLM server batches again on its side. Each request
has a total time budget of ``timeout_s``: transient failures (connection refused, timeouts,
429, 5xx) are retried with exponential backoff while the budget lasts, then reported as
``Completion.error`` (``"<ExceptionType>: <message> (N attempts to URL, ...)"``); nothing
raises, so a dead server costs at most ``timeout_s`` and the callers fall back to templates.
JSON schemas go out as ``response_format={"type": "json_schema", ...}``; some servers ignore it
(``transformers serve`` does), so answers are always validated on this side too.

The :class:`~agent.llm.base.LLMBackend` contract holds whatever the server does: finish reasons
go through :func:`~agent.llm.base.normalize_finish_reason`; a stop string the server left in
the text is cut here; a greedy request asks for one sample and repeats it, and a sampled one
whose server ignored ``n`` (``transformers serve`` does) is topped up with further requests
(seeds ``seed + 1``, ``seed + 2``... when a seed is set).

Example:
    >>> llm = OpenAIBackend("smollm2", base_url="http://127.0.0.1:8000/v1", timeout_s=10)  # doctest: +SKIP
    >>> llm.chat("Say hi", sampling=SamplingConfig(max_tokens=8)).text                        # doctest: +SKIP
    'Hello!'
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from agent.llm.base import (
    Completion,
    LLMBackend,
    LLMError,
    LLMRequest,
    cut_at_stop,
    describe_error,
    error_completion,
    normalize_finish_reason,
)
from memory.errors import UsageError

log = logging.getLogger("plural.llm")

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"


class OpenAIBackend(LLMBackend):
    """Chat completions from an OpenAI-compatible HTTP server.

    Args:
        model: served model name; ``None`` asks the server (``GET /v1/models``) and takes the first.
        base_url: server URL ending in ``/v1``; ``None`` reads ``$OPENAI_BASE_URL``, else
            ``http://127.0.0.1:8000/v1``.
        api_key: the key itself; ``None`` reads ``api_key_env`` (local servers accept any key).
        api_key_env: environment variable holding the key.
        timeout_s: total time budget per request, retries included.
        max_retries: extra attempts after a transient failure.
        max_concurrency: requests in flight at once.
        backoff_s: first backoff delay; doubles per attempt, with jitter.
    """

    name = "openai"

    def __init__(
        self,
        model: str | None = None,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        timeout_s: float = 60.0,
        max_retries: int = 2,
        max_concurrency: int = 8,
        backoff_s: float = 0.5,
    ):
        if timeout_s <= 0:
            raise UsageError("timeout_s", timeout_s, "a positive number of seconds")
        if max_retries < 0:
            raise UsageError("max_retries", max_retries, "0 or more")
        if max_concurrency < 1:
            raise UsageError("max_concurrency", max_concurrency, "a positive integer")
        try:
            import openai
        except ImportError as e:
            raise LLMError(
                f"the openai backend needs the openai client (pip install 'plural[openai]'): {e}"
            ) from e
        self._openai = openai
        self.base_url = base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
        key = api_key or os.environ.get(api_key_env) or "EMPTY"  # local servers want a key, any key
        self.timeout_s, self.max_retries, self.backoff_s = float(timeout_s), max_retries, backoff_s
        self.max_concurrency = max_concurrency
        # retries are ours (they share the per-request budget), so the client's are off
        self.client = openai.OpenAI(base_url=self.base_url, api_key=key, timeout=timeout_s, max_retries=0)
        self._model_name = model or ""
        self._model_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="plural-openai")

    @property
    def model_name(self) -> str:
        return self._model_name

    def _resolve_model(self, deadline: float) -> str:
        with self._model_lock:
            if not self._model_name:
                models = self.client.models.list(timeout=max(0.1, deadline - time.monotonic()))
                ids = [m.id for m in models.data]
                if not ids:
                    raise LLMError(f"server {self.base_url} lists no models; pass --model")
                self._model_name = ids[0]
            return self._model_name

    def _is_transient(self, e: Exception) -> bool:
        o = self._openai
        if isinstance(e, (o.APIConnectionError, o.APITimeoutError, o.RateLimitError, o.InternalServerError)):
            return True  # APITimeoutError is an APIConnectionError; both are worth another try
        return isinstance(e, o.APIStatusError) and e.status_code >= 500

    def _params(self, req: LLMRequest, model: str, n: int = 1, seed_offset: int = 0) -> dict[str, Any]:
        s = req.sampling
        p: dict[str, Any] = {
            "model": model,
            "messages": [m.model_dump() for m in req.messages],
            "temperature": s.temperature,
            "max_tokens": s.max_tokens,
        }
        if s.temperature > 0 and s.top_p < 1.0:
            p["top_p"] = s.top_p
        if s.stop and req.json_schema is None:
            p["stop"] = list(s.stop)
        if s.seed is not None:
            p["seed"] = s.seed + seed_offset
        if n > 1:
            p["n"] = n
        if s.frequency_penalty:
            p["frequency_penalty"] = s.frequency_penalty
        if s.presence_penalty:
            p["presence_penalty"] = s.presence_penalty
        if req.json_schema is not None:
            p["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": req.schema_name, "schema": req.json_schema, "strict": True},
            }
        return p

    def _call(self, req: LLMRequest, deadline: float, n: int, seed_offset: int, tries: list[int]):
        """One ``chat.completions.create`` with retries of transient failures inside the budget.

        Counts attempts in ``tries[0]``; raises the last failure."""
        attempt = 0
        while True:
            attempt += 1
            tries[0] += 1
            try:
                model = self._resolve_model(deadline)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no time left of the {self.timeout_s:g} s budget")
                params = self._params(req, model, n, seed_offset)
                return self.client.chat.completions.create(**params, timeout=remaining), model
            except Exception as e:
                delay = self.backoff_s * 2 ** (attempt - 1) * (0.5 + random.random())
                if (
                    not self._is_transient(e)
                    or attempt > self.max_retries
                    or time.monotonic() + delay >= deadline
                ):
                    raise
                log.info(
                    "openai request %s failed (%s), retry %d in %.2f s", req.request_id, e, attempt, delay
                )
                time.sleep(delay)

    def _text(self, req: LLMRequest, choice: Any) -> tuple[str, bool]:
        """A choice's text, cut at a stop string the server left in (``transformers serve`` does)."""
        text = choice.message.content or ""
        hit = False
        if req.json_schema is None:
            text, hit = cut_at_stop(text, req.sampling.stop)
        return text.strip(), hit

    def _one(self, req: LLMRequest) -> Completion:
        t0 = time.monotonic()
        deadline = t0 + self.timeout_s
        s = req.sampling
        tries = [0]
        choices: list[Any] = []
        prompt_tokens = completion_tokens = 0
        model = self._model_name
        try:
            while len(choices) < s.draws:  # more than one round only if the server ignored n
                resp, model = self._call(req, deadline, s.draws - len(choices), len(choices), tries)
                if not resp.choices:
                    raise LLMError("the server returned no choices")
                choices += resp.choices
                usage = resp.usage
                prompt_tokens = prompt_tokens or getattr(usage, "prompt_tokens", 0) or 0
                completion_tokens += getattr(usage, "completion_tokens", 0) or 0
        except Exception as e:  # noqa: BLE001 - every failure becomes Completion.error
            attempts = tries[0]
            msg = f"{describe_error(e)} ({attempts} attempt{'s' * (attempts > 1)} to {self.base_url}"
            msg += f", {time.monotonic() - t0:.1f} s of a {self.timeout_s:g} s budget)"
            log.warning("openai request %s failed: %s", req.request_id, msg)
            return error_completion(
                req, msg, backend=self.name, model=self._model_name, latency_s=time.monotonic() - t0
            )
        reason, error = normalize_finish_reason(choices[0].finish_reason)
        if error is not None:
            log.warning("openai request %s: %s", req.request_id, error)
            return error_completion(
                req, error, backend=self.name, model=model, latency_s=time.monotonic() - t0
            )
        texts = []
        for k, c in enumerate(choices[: s.draws]):
            text, cut = self._text(req, c)
            if k == 0 and cut:
                reason = "stop"  # the server ran past the stop string; the answer ends there
            texts.append(text)
        if len(texts) < s.n:  # greedy: the one sample stands for all n
            completion_tokens *= s.n
            texts += [texts[0]] * (s.n - len(texts))
        return Completion(
            request_id=req.request_id,
            text=texts[0],
            alternatives=texts[1:],
            finish_reason=reason,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            latency_s=time.monotonic() - t0,
            backend=self.name,
            model=model,
        )

    def generate(self, requests: Sequence[LLMRequest]) -> list[Completion]:
        return list(self._pool.map(self._one, list(requests)))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()
