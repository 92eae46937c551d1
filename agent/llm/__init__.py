"""LLM backends behind one interface, the scripted fake, the registry, and validated LLM tasks.

``from agent.llm import LLMRequest, make_backend`` is cheap: torch, transformers, openai and
vLLM are imported only when a backend that needs them is built.

Example:
    >>> from agent.llm import LLMConfig, make_backend
    >>> make_backend(LLMConfig(backend="none")) is None      # templates only
    True
"""

from agent.llm.base import (
    ChatMessage,
    Completion,
    LLMBackend,
    LLMError,
    LLMRequest,
    SamplingConfig,
    StructuredOutputError,
)
from agent.llm.fake import ScriptedLLM
from agent.llm.registry import BACKENDS, LLMConfig, make_backend

__all__ = [
    "BACKENDS",
    "ChatMessage",
    "Completion",
    "LLMBackend",
    "LLMConfig",
    "LLMError",
    "LLMRequest",
    "SamplingConfig",
    "ScriptedLLM",
    "StructuredOutputError",
    "make_backend",
]
