"""``RequestOutput`` and ``CompletionOutput``, with vLLM's field names."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class CompletionOutput:
    """One sample of a request."""

    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None = None
    logprobs: list | None = None
    finish_reason: str | None = None
    """``stop`` (EOS or a stop string), ``length``, or ``abort``/``error``/``repetition``."""
    stop_reason: int | str | None = None
    """The stop string that ended the sample; ``None`` at EOS or a length cut."""

    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestOutput:
    """The result of one prompt: its ``n`` samples in ``outputs``."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int] | None
    prompt_logprobs: list | None
    outputs: list[CompletionOutput]
    finished: bool
    metrics: object | None = None
    lora_request: object | None = None
    num_cached_tokens: int | None = 0
    kv_transfer_params: dict | None = field(default=None)
