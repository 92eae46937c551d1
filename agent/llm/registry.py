"""Choose a backend by name: ``LLMConfig`` (what the CLI's ``--llm/--model/--base-url`` fill in)
and ``make_backend``.

Example:
    >>> cfg = LLMConfig(backend="openai", model="smollm2", base_url="http://127.0.0.1:8000/v1")
    >>> LLMConfig.model_validate(cfg.model_dump()) == cfg
    True
    >>> make_backend(LLMConfig(backend="none")) is None
    True
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from pydantic import BaseModel, ConfigDict, Field

from agent.llm.base import LLMBackend
from agent.llm.fake import Answer
from memory.errors import UsageError

BACKENDS = ("transformers", "vllm", "openai", "none", "scripted")
"""Backend names ``make_backend`` accepts; ``none`` means templates only (no model)."""


class LLMConfig(BaseModel):
    """Which LLM backend to build, and how. Fields that a backend does not use are ignored by it."""

    model_config = ConfigDict(extra="forbid")

    backend: str = "transformers"
    """One of :data:`BACKENDS`: ``transformers`` (embedded, default), ``vllm`` (in-process GPU),
    ``openai`` (any OpenAI-compatible server), ``none`` (templates only) or ``scripted`` (tests)."""
    model: str | None = None
    """Model alias, folder, GGUF file or served model name. ``None``: the packaged SmolLM2 for
    ``transformers``; the server's first model for ``openai``; required for ``vllm``."""
    base_url: str | None = None
    """``openai``: URL ending in ``/v1``; ``None``: ``$OPENAI_BASE_URL`` or ``http://127.0.0.1:8000/v1``."""
    api_key_env: str = "OPENAI_API_KEY"
    """``openai``: the environment variable that holds the API key (the key itself is never stored)."""
    timeout_s: float = Field(60.0, gt=0)
    """``openai``: seconds before one HTTP attempt is abandoned."""
    max_retries: int = Field(2, ge=0, le=10)
    """``openai``: extra attempts after a failed one (exponential backoff between them)."""
    max_concurrency: int = Field(8, ge=1, le=256)
    """``openai``: requests in flight at once (a server's batch comes from these)."""
    device: str = "auto"
    """``transformers``: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:N``."""
    dtype: str = "auto"
    """``transformers``/``vllm``: ``auto``, ``float32``, ``bfloat16`` or ``float16``."""
    max_batch_size: int = Field(16, ge=1, le=4096)
    """``transformers``: most requests per ``generate`` call."""
    optimise: bool = False
    """``transformers``: static KV cache and ``torch.compile`` (CUDA graphs); CUDA only."""
    cpu_threads: int | None = Field(None, ge=1)
    """``transformers`` on CPU: torch threads while generating (``None``: torch's default)."""
    tensor_parallel_size: int = Field(1, ge=1)
    """``vllm``: GPUs to shard the model over."""
    gpu_memory_utilization: float = Field(0.85, gt=0.0, le=1.0)
    """``vllm``: share of GPU memory vLLM may take (weights plus KV cache)."""
    max_model_len: int | None = Field(None, ge=16)
    """``vllm``: context length to reserve KV cache for; ``None`` uses the model's."""
    enforce_eager: bool = False
    """``vllm``: skip CUDA graph capture (faster start, slower decode)."""


def make_backend(
    config: LLMConfig | None = None,
    *,
    script: Iterable[Answer] | Callable | None = None,
) -> LLMBackend | None:
    """Build the backend ``config`` names; ``None`` for backend ``none`` (templates only).

    ``script`` feeds the ``scripted`` backend; without one it answers ``{}`` to everything, so
    every structured task falls back to its template (useful to test that path end to end).
    Unknown backend names raise :class:`UsageError` listing :data:`BACKENDS`; unknown models
    raise it from the backend, listing the models available.
    """
    config = config or LLMConfig()
    name = config.backend.lower()
    if name == "none":
        return None
    if name == "scripted":
        from agent.llm.fake import ScriptedLLM

        return ScriptedLLM(
            script if script is not None else [], default="{}", model=config.model or "scripted"
        )
    if name == "transformers":
        from agent.llm.transformers_backend import TransformersBackend

        return TransformersBackend(
            config.model,
            device=config.device,
            dtype=config.dtype,
            max_batch_size=config.max_batch_size,
            optimise=config.optimise,
            cpu_threads=config.cpu_threads,
        )
    if name == "openai":
        from agent.llm.openai_backend import OpenAIBackend

        return OpenAIBackend(
            config.model,
            base_url=config.base_url,
            api_key_env=config.api_key_env,
            timeout_s=config.timeout_s,
            max_retries=config.max_retries,
            max_concurrency=config.max_concurrency,
        )
    if name == "vllm":
        from agent.llm.vllm_backend import VLLMBackend

        if not config.model:
            raise UsageError("model", None, "a model folder or name: the vllm backend has no default model")
        return VLLMBackend(
            config.model,
            tensor_parallel_size=config.tensor_parallel_size,
            gpu_memory_utilization=config.gpu_memory_utilization,
            dtype=config.dtype,
            max_model_len=config.max_model_len,
            enforce_eager=config.enforce_eager,
        )
    raise UsageError("LLM backend", config.backend, BACKENDS)
