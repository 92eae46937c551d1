"""``SamplingParams`` and ``StructuredOutputsParams``, validated the way vLLM 0.26 validates them."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

_SAMPLING_EPS = 1e-5


class VLLMValidationError(ValueError):
    """vLLM's validation error (a ``ValueError``), naming the bad parameter."""

    def __init__(self, message: str, *, parameter: str | None = None, value: Any = None):
        super().__init__(message)
        self.parameter, self.value = parameter, value


@dataclass
class StructuredOutputsParams:
    """One constraint for the decoder; the fake implements ``json`` and ``choice``."""

    json: str | dict | None = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None
    disable_any_whitespace: bool = False
    disable_additional_properties: bool = False
    whitespace_pattern: str | None = None
    structural_tag: str | None = None
    _backend: str | None = field(default=None, init=False)

    def __post_init__(self):
        count = sum(
            x is not None for x in (self.json, self.regex, self.choice, self.grammar, self.json_object)
        ) + (self.structural_tag is not None)
        if count > 1:
            raise ValueError(
                "You can only use one kind of structured outputs constraint "
                f"but multiple are specified: {self.__dict__}"
            )
        if count == 0:
            raise ValueError("You must use one kind of structured outputs constraint but none are specified")

    def schema(self) -> dict[str, Any] | None:
        """The JSON schema as a dict (``None`` for other constraints)."""
        if self.json is None:
            return None
        return json.loads(self.json) if isinstance(self.json, str) else self.json


class SamplingParams:
    """Sampling parameters of one request (keyword arguments only, unknown ones are a ``TypeError``)."""

    def __init__(
        self,
        *,
        n: int = 1,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        repetition_penalty: float = 1.0,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        min_p: float = 0.0,
        seed: int | None = None,
        stop: str | list[str] | None = None,
        stop_token_ids: list[int] | None = None,
        ignore_eos: bool = False,
        max_tokens: int | None = 16,
        min_tokens: int = 0,
        logprobs: int | None = None,
        include_stop_str_in_output: bool = False,
        skip_special_tokens: bool = True,
        structured_outputs: StructuredOutputsParams | None = None,
    ):
        self.n, self.presence_penalty, self.frequency_penalty = n, presence_penalty, frequency_penalty
        self.repetition_penalty, self.temperature, self.top_p = repetition_penalty, temperature, top_p
        self.top_k, self.min_p, self.seed = top_k, min_p, seed
        self.stop = [] if stop is None else [stop] if isinstance(stop, str) else list(stop)
        self.stop_token_ids = list(stop_token_ids or [])
        self.ignore_eos, self.max_tokens, self.min_tokens = ignore_eos, max_tokens, min_tokens
        self.logprobs, self.include_stop_str_in_output = logprobs, include_stop_str_in_output
        self.skip_special_tokens, self.structured_outputs = skip_special_tokens, structured_outputs
        self._verify()
        if self.temperature < _SAMPLING_EPS:
            self.top_p, self.top_k, self.min_p = 1.0, 0, 0.0
            if self.n > 1:
                raise VLLMValidationError(
                    f"n must be 1 when using greedy sampling, got {self.n}.", parameter="n", value=self.n
                )

    def _verify(self) -> None:
        def bad(parameter: str, rule: str):
            value = getattr(self, parameter)
            raise VLLMValidationError(
                f"{parameter} must be {rule}, got {value}.", parameter=parameter, value=value
            )

        if not isinstance(self.n, int) or self.n < 1:
            bad("n", "an int of at least 1")
        if not -2.0 <= self.presence_penalty <= 2.0:
            bad("presence_penalty", "in [-2, 2]")
        if not -2.0 <= self.frequency_penalty <= 2.0:
            bad("frequency_penalty", "in [-2, 2]")
        if self.temperature < 0.0:
            bad("temperature", "non-negative")
        if not 0.0 < self.top_p <= 1.0:
            bad("top_p", "in (0, 1]")
        if self.max_tokens is not None and self.max_tokens < 1:
            bad("max_tokens", "at least 1")
        if any(not s for s in self.stop):
            raise VLLMValidationError(
                "stop cannot contain an empty string.", parameter="stop", value=self.stop
            )
        if self.structured_outputs is not None and not isinstance(
            self.structured_outputs, StructuredOutputsParams
        ):
            raise TypeError(
                f"structured_outputs must be StructuredOutputsParams, got {self.structured_outputs!r}"
            )

    def __repr__(self) -> str:
        return (
            f"SamplingParams(n={self.n}, temperature={self.temperature}, top_p={self.top_p}, "
            f"seed={self.seed}, stop={self.stop}, max_tokens={self.max_tokens}, "
            f"structured_outputs={self.structured_outputs})"
        )
