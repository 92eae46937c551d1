"""The production GPU backend: vLLM in-process (``vllm.LLM``), one batched ``chat`` call per batch.

Written against vLLM 0.26's offline API: ``LLM(model, tensor_parallel_size=...,
gpu_memory_utilization=...)``, ``LLM.chat(conversations, sampling_params=[...])`` and
structured outputs through ``SamplingParams(structured_outputs=StructuredOutputsParams(json=schema))``
(vLLM < 0.12 spelled it ``SamplingParams(guided_decoding=GuidedDecodingParams(json=schema))``;
both are handled). vLLM is imported only when this backend is built (extra ``[vllm]``).
vLLM schedules the whole batch itself (continuous batching, prefix caching), so this backend
hands it every request at once.

Failures follow the :class:`~agent.llm.base.LLMBackend` contract: a request vLLM rejects
(its ``SamplingParams``, or a ``ValueError`` while vLLM adds it: prompt too long, schema it
cannot compile) gets its own error completion, an engine failure during ``chat`` gives every
request of the call one, and vLLM's finish reasons go through
:func:`~agent.llm.base.normalize_finish_reason` (``abort``/``error`` are failures,
``repetition`` is a cut like ``length``). vLLM refuses ``n > 1`` with greedy decoding, so a
greedy request draws one sample and repeats it. ``tests/fakes/vllm`` drives all of this on CPU.

Beyond one machine, run ``vllm serve`` replicas behind a load balancer and use the ``openai`` backend.

Example:
    >>> llm = VLLMBackend("/models/Llama-3.2-1B-Instruct", gpu_memory_utilization=0.5)  # doctest: +SKIP
    >>> llm.chat("Say hi", sampling=SamplingConfig(max_tokens=8)).text                  # doctest: +SKIP
    'Hi! How can I help?'
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Sequence
from typing import Any

from agent.llm.base import (
    Completion,
    LLMBackend,
    LLMError,
    LLMRequest,
    SamplingConfig,
    error_completion,
    normalize_finish_reason,
)
from memory.errors import UsageError

log = logging.getLogger("plural.llm")

_DTYPES = ("auto", "float32", "bfloat16", "float16")


def _import_vllm():
    try:
        import vllm
    except ImportError as e:
        raise LLMError(
            f"the vllm backend needs vLLM (pip install 'plural[vllm]', CUDA GPU required): {e}; "
            "on CPU use --llm transformers, or --llm openai against a vllm serve deployment"
        ) from e
    return vllm


class VLLMBackend(LLMBackend):
    """A model served in-process by vLLM on one or more GPUs.

    Args:
        model: a local model folder (or a name vLLM can resolve offline).
        tensor_parallel_size: GPUs to shard the model across.
        gpu_memory_utilization: share of each GPU's memory vLLM may use (weights + KV cache).
        dtype: ``auto``, ``bfloat16``, ``float16`` or ``float32``.
        max_model_len: context length to reserve KV cache for (``None``: the model's own).
        enforce_eager: skip CUDA graph capture (starts faster, decodes slower).
        seed: engine seed (requests may carry their own ``SamplingConfig.seed``).
        engine_args: further ``vllm.LLM`` keyword arguments, passed as given (vLLM rejects unknown
            names), e.g. ``{"load_format": "dummy"}`` for random weights in benchmarks.
    """

    name = "vllm"

    def __init__(
        self,
        model: str,
        *,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.85,
        dtype: str = "auto",
        max_model_len: int | None = None,
        enforce_eager: bool = False,
        seed: int = 0,
        engine_args: dict[str, Any] | None = None,
    ):
        if tensor_parallel_size < 1:
            raise UsageError("tensor_parallel_size", tensor_parallel_size, "a positive integer")
        if not 0.0 < gpu_memory_utilization <= 1.0:
            raise UsageError("gpu_memory_utilization", gpu_memory_utilization, "a fraction in (0, 1]")
        if dtype not in _DTYPES:
            raise UsageError("dtype", dtype, _DTYPES)
        vllm = _import_vllm()
        self._vllm = vllm
        self._model_name = str(model)
        kwargs: dict[str, Any] = {
            "model": str(model),
            "tensor_parallel_size": tensor_parallel_size,
            "gpu_memory_utilization": gpu_memory_utilization,
            "dtype": dtype,
            "enforce_eager": enforce_eager,
            "seed": seed,
        }
        if max_model_len is not None:
            kwargs["max_model_len"] = max_model_len
        # vllm's package __getattr__ hides submodules that were not imported yet
        if hasattr(importlib.import_module("vllm.sampling_params"), "StructuredOutputsParams"):
            # Compact JSON is an engine setting in vLLM 0.26 (the per-request flag is not read): on a
            # GPU check with a weak (random-weight) model, the default let every answer run out of
            # tokens in whitespace after "{"; xgrammar is the backend that supports turning it off.
            kwargs["structured_outputs_config"] = {"backend": "xgrammar", "disable_any_whitespace": True}
        kwargs.update(engine_args or {})
        t0 = time.perf_counter()
        self.llm = vllm.LLM(**kwargs)
        log.info("vLLM loaded %s in %.1f s", model, time.perf_counter() - t0)
        self._structured = self._structured_outputs_api()

    def _structured_outputs_api(self) -> tuple[str, Any]:
        """(SamplingParams keyword, params class) for JSON-schema decoding in this vLLM version."""
        sp = importlib.import_module("vllm.sampling_params")
        if hasattr(sp, "StructuredOutputsParams"):  # vLLM >= 0.11
            return "structured_outputs", sp.StructuredOutputsParams
        if hasattr(sp, "GuidedDecodingParams"):  # older releases
            return "guided_decoding", sp.GuidedDecodingParams
        raise LLMError(
            f"vLLM {self._vllm.__version__} has neither StructuredOutputsParams nor GuidedDecodingParams"
        )

    def sampling_params(self, s: SamplingConfig, json_schema: dict[str, Any] | None):
        """Translate a :class:`SamplingConfig` (and optional schema) to ``vllm.SamplingParams``."""
        kw: dict[str, Any] = {
            "n": s.draws,  # vLLM: "n must be 1 when using greedy sampling"
            "temperature": s.temperature,
            "top_p": s.top_p if s.temperature > 0 else 1.0,
            "max_tokens": s.max_tokens,
            "seed": s.seed,
            "frequency_penalty": s.frequency_penalty,
            "presence_penalty": s.presence_penalty,
        }
        if s.stop and json_schema is None:
            kw["stop"] = list(s.stop)
        if json_schema is not None:
            key, cls = self._structured
            kw[key] = cls(json=json_schema)
        return self._vllm.SamplingParams(**kw)

    def generate(self, requests: Sequence[LLMRequest]) -> list[Completion]:
        requests = list(requests)
        results: list[Completion | None] = [None] * len(requests)
        todo, convs, params = [], [], []
        for i, r in enumerate(requests):
            try:  # vLLM validates here (e.g. a malformed schema): only this request fails
                params.append(self.sampling_params(r.sampling, r.json_schema))
            except Exception as e:  # noqa: BLE001 - reported in the completion
                log.warning("vLLM rejected request %s: %s", r.request_id, e)
                results[i] = error_completion(r, e, backend=self.name, model=self.model_name)
                continue
            todo.append(i)
            convs.append([m.model_dump() for m in r.messages])
        if todo:
            done = self._chat([requests[i] for i in todo], convs, params)
            for i, c in zip(todo, done):
                results[i] = c
        return results  # type: ignore[return-value]

    def _chat(self, reqs: list[LLMRequest], convs: list[list[dict]], params: list[Any]) -> list[Completion]:
        """One ``LLM.chat`` call; an engine failure gives every request an error completion."""
        t0 = time.perf_counter()
        try:
            outs = self.llm.chat(convs, sampling_params=params, use_tqdm=False)
            if len(outs) != len(reqs):
                raise LLMError(f"vLLM returned {len(outs)} outputs for {len(reqs)} conversations")
        except ValueError as e:
            # vLLM validates every request (prompt length, schema grammar) before it runs any, and
            # one it rejects fails the call: ask for each alone, so only that one fails
            if len(reqs) > 1:
                log.warning("vLLM rejected a batch of %d (%s); retrying them one by one", len(reqs), e)
                alone: list[Completion] = []
                for k in range(len(reqs)):
                    alone += self._chat(reqs[k : k + 1], convs[k : k + 1], params[k : k + 1])
                return alone
            return [error_completion(reqs[0], e, backend=self.name, model=self.model_name)]
        except Exception as e:  # engine failure: every request of the call
            log.exception("vLLM generate failed for %d requests", len(reqs))
            latency = time.perf_counter() - t0
            return [
                error_completion(r, e, backend=self.name, model=self.model_name, latency_s=latency)
                for r in reqs
            ]
        latency = time.perf_counter() - t0
        return [self._completion(r, o, latency) for r, o in zip(reqs, outs)]

    def _completion(self, req: LLMRequest, out: Any, latency: float) -> Completion:
        """One ``RequestOutput`` as a :class:`Completion` (the first output decides the finish reason)."""
        reason, error = normalize_finish_reason(out.outputs[0].finish_reason)
        if error is not None:
            return error_completion(req, error, backend=self.name, model=self.model_name, latency_s=latency)
        texts = [o.text.strip() for o in out.outputs]
        tokens = sum(len(o.token_ids) for o in out.outputs)
        n = req.sampling.n
        if len(texts) < n:  # greedy: the one sample stands for all n
            tokens = tokens * n // len(texts)
            texts = texts + [texts[0]] * (n - len(texts))
        return Completion(
            request_id=req.request_id,
            text=texts[0],
            alternatives=texts[1:n],
            finish_reason=reason,
            prompt_tokens=len(out.prompt_token_ids or []),
            completion_tokens=tokens,
            latency_s=latency,
            backend=self.name,
            model=self.model_name,
        )

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        self.llm = None
        if llm is not None:
            del llm
            try:
                import gc

                import torch

                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            except ImportError:  # pragma: no cover
                pass
