"""The fake ``vllm.LLM``: vLLM's offline entry point, with :mod:`toy_lm` as the model."""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Sequence
from typing import Any

import toy_lm
from vllm.outputs import CompletionOutput, RequestOutput
from vllm.sampling_params import SamplingParams

_DTYPES = ("auto", "half", "float16", "bfloat16", "float", "float32")
_SO_BACKENDS = ("auto", "xgrammar", "guidance", "outlines", "lm-format-enforcer")
_ENGINE_ARGS = {  # accepted and recorded; vLLM's EngineArgs rejects names it does not know
    "tokenizer",
    "trust_remote_code",
    "quantization",
    "revision",
    "swap_space",
    "cpu_offload_gb",
    "load_format",
    "max_num_seqs",
    "max_num_batched_tokens",
    "enable_prefix_caching",
    "kv_cache_memory_bytes",
    "disable_log_stats",
    "compilation_config",
    "download_dir",
}
_FINISH = re.compile(r"\[\[finish:(\w+)\]\]")


class ToyTokenizer:
    """The tokenizer ``LLM.get_tokenizer()`` returns: :mod:`toy_lm`'s tokens and chat template."""

    chat_template = toy_lm.CHAT_TEMPLATE
    eos_token_id = toy_lm.EOS_TOKEN_ID
    eos_token = "<|end|>"

    def apply_chat_template(self, conversation, tokenize=True, add_generation_prompt=False, **kwargs):
        text = toy_lm.render_chat(list(conversation), add_generation_prompt=add_generation_prompt)
        return self.encode(text) if tokenize else text

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return toy_lm.encode(text)

    def __call__(self, text: str):
        return {"input_ids": self.encode(text)}


class LLM:
    """A fake vLLM engine for one model (any name: nothing is loaded).

    Engine arguments are validated like vLLM's (unknown names raise ``TypeError``) and kept in
    ``engine_args``; every ``generate`` call is recorded in ``calls`` as (prompts, params).
    """

    failure: BaseException | None = None
    """When set, every ``chat``/``generate`` call raises it (an engine that died)."""

    def __init__(
        self,
        model: str,
        *,
        tensor_parallel_size: int = 1,
        dtype: str = "auto",
        seed: int = 0,
        gpu_memory_utilization: float = 0.9,
        enforce_eager: bool = False,
        max_model_len: int | None = None,
        structured_outputs_config: dict[str, Any] | None = None,
        **kwargs: Any,
    ):
        unknown = sorted(set(kwargs) - _ENGINE_ARGS)
        if unknown:
            raise TypeError(f"EngineArgs.__init__() got an unexpected keyword argument {unknown[0]!r}")
        if not isinstance(tensor_parallel_size, int) or tensor_parallel_size < 1:
            raise ValueError(f"tensor_parallel_size must be a positive integer, got {tensor_parallel_size}")
        if dtype not in _DTYPES:
            raise ValueError(f"Unknown dtype: {dtype!r}; choose one of {_DTYPES}")
        if not 0.0 < gpu_memory_utilization <= 1.0:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
        so = dict(structured_outputs_config or {})
        if so.get("backend", "auto") not in _SO_BACKENDS:
            raise ValueError(f"structured outputs backend {so['backend']!r} is not one of {_SO_BACKENDS}")
        self.model = model
        self.engine_args = {
            "model": model,
            "tensor_parallel_size": tensor_parallel_size,
            "dtype": dtype,
            "seed": seed,
            "gpu_memory_utilization": gpu_memory_utilization,
            "enforce_eager": enforce_eager,
            "max_model_len": max_model_len,
            "structured_outputs_config": so,
            **kwargs,
        }
        self.max_model_len = max_model_len or 2048
        self.compact_json = bool(so.get("disable_any_whitespace", False))
        self._rng = random.Random(seed)
        self._ids = itertools.count()
        self._tokenizer = ToyTokenizer()
        self.calls: list[tuple[list[str], list[SamplingParams]]] = []

    def get_tokenizer(self) -> ToyTokenizer:
        return self._tokenizer

    def chat(
        self,
        messages: list[dict] | Sequence[list[dict]],
        sampling_params: SamplingParams | list[SamplingParams] | None = None,
        use_tqdm: bool = True,
        lora_request: Any = None,
        chat_template: str | None = None,
        chat_template_content_format: str = "auto",
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        tools: list[dict] | None = None,
        chat_template_kwargs: dict[str, Any] | None = None,
        tokenization_kwargs: dict[str, Any] | None = None,
        mm_processor_kwargs: dict[str, Any] | None = None,
    ) -> list[RequestOutput]:
        """Render each conversation with the chat template, then :meth:`generate`."""
        convs = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        for conv in convs:
            for m in conv:
                if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "tool"):
                    raise ValueError(f"not a chat message: {m!r}")
                if not isinstance(m.get("content"), str):
                    raise TypeError(f"message content must be a string in the fake vllm: {m!r}")
        prompts = [
            self._tokenizer.apply_chat_template(
                c, tokenize=False, add_generation_prompt=add_generation_prompt
            )
            for c in convs
        ]
        return self.generate(prompts, sampling_params, use_tqdm=use_tqdm)

    def generate(
        self,
        prompts: str | dict | Sequence[str | dict],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        *,
        use_tqdm: bool = True,
        lora_request: Any = None,
        priority: list[int] | None = None,
        tokenization_kwargs: dict[str, Any] | None = None,
    ) -> list[RequestOutput]:
        """One ``RequestOutput`` per prompt, in prompt order."""
        failure = self.failure
        if failure is not None:
            raise failure
        seq = [prompts] if isinstance(prompts, (str, dict)) else list(prompts)
        texts = [p["prompt"] if isinstance(p, dict) else p for p in seq]
        if sampling_params is None:
            params = [SamplingParams()] * len(texts)
        elif isinstance(sampling_params, SamplingParams):
            params = [sampling_params] * len(texts)
        else:
            params = list(sampling_params)
            if len(params) != len(texts):
                raise ValueError("The lengths of prompts and sampling_params must be the same.")
        # vLLM validates every request while adding it, before the engine runs any
        for text, sp in zip(texts, params):
            n_prompt = len(toy_lm.encode(text))
            if n_prompt >= self.max_model_len:
                raise ValueError(
                    f"The decoder prompt (length {n_prompt}) is longer than the maximum model length "
                    f"of {self.max_model_len}."
                )
            so = sp.structured_outputs
            if so is not None:
                if so.json is not None:
                    toy_lm.json_answer(so.json)  # raises ValueError for a schema a grammar cannot use
                elif so.choice is None:
                    raise NotImplementedError("the fake vllm implements json and choice structured outputs")
        self.calls.append((texts, params))
        return [self._run(str(next(self._ids)), text, sp) for text, sp in zip(texts, params)]

    def _run(self, request_id: str, prompt: str, sp: SamplingParams) -> RequestOutput:
        prompt_ids = toy_lm.encode(prompt)
        seed = sp.seed if sp.seed is not None else self._rng.randrange(2**31)
        forced = _FINISH.search(prompt)
        limit = self.max_model_len - len(prompt_ids)
        if sp.max_tokens is not None:
            limit = min(limit, sp.max_tokens)
        outputs = []
        for k in range(sp.n):
            so = sp.structured_outputs
            if so is not None and so.json is not None:
                full = toy_lm.json_answer(so.json, compact=self.compact_json or so.disable_any_whitespace)
            elif so is not None:
                full = so.choice[0]
            else:
                full = toy_lm.reply(prompt, temperature=sp.temperature, rng=random.Random(f"{seed}:{k}"))
            outputs.append(self._decode(k, full, sp, limit, forced.group(1) if forced else None))
        return RequestOutput(
            request_id=request_id,
            prompt=prompt,
            prompt_token_ids=prompt_ids,
            prompt_logprobs=None,
            outputs=outputs,
            finished=True,
        )

    @staticmethod
    def _decode(
        index: int, full: str, sp: SamplingParams, limit: int, forced: str | None
    ) -> CompletionOutput:
        """Emit ``full`` token by token until EOS, a stop string or the token limit."""
        text, ids = "", []
        for tok in toy_lm.tokenize(full):
            if len(ids) >= limit:
                return CompletionOutput(index, text, ids, finish_reason="length")
            text += tok
            ids.append(toy_lm.token_id(tok))
            if forced:
                return CompletionOutput(index, text, ids, finish_reason=forced)
            for s in sp.stop:
                pos = text.find(s)
                if pos >= 0:
                    kept = text if sp.include_stop_str_in_output else text[:pos]
                    return CompletionOutput(index, kept, ids, finish_reason="stop", stop_reason=s)
        if len(ids) >= limit:  # no room left for the end-of-sequence token
            return CompletionOutput(index, text, ids, finish_reason="length")
        return CompletionOutput(index, text, ids + [toy_lm.EOS_TOKEN_ID], finish_reason="stop")
