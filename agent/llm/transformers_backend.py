"""The embedded backend: a local causal LM run with Hugging Face transformers, batched.

The default model is the packaged SmolLM2-135M-Instruct (see :mod:`agent.llm.model_files`),
which runs on a laptop CPU; any local model folder or GGUF works, on CUDA when there is one.
Requests that share sampling settings go through one left-padded ``generate`` call per
``max_batch_size`` chunk. A request with a JSON schema is decoded under an xgrammar grammar
(the engine vLLM uses too), so even a 135M model writes schema-valid JSON; the answer is still
validated downstream, because a grammar cannot check meaning (or a cut-off at ``max_tokens``).

Failures follow the :class:`~agent.llm.base.LLMBackend` contract: a request whose chat template
or schema grammar fails gets its own error completion, a failed ``generate`` call gives the
requests of its chunk one. Greedy search cannot return several sequences, so a greedy request
with ``n > 1`` draws one and repeats it.

Example:
    >>> llm = TransformersBackend()                      # doctest: +SKIP
    >>> llm.chat("Say hi", sampling=SamplingConfig(max_tokens=8)).text   # doctest: +SKIP
    'Hello! How can I help you today?'
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from agent.llm.base import Completion, LLMBackend, LLMRequest, SamplingConfig, cut_at_stop, error_completion
from agent.llm.model_files import DEFAULT_MODEL, PACKAGED_MODELS, resolve_model
from memory.embeddings import quiet_loading
from memory.errors import UsageError

log = logging.getLogger("plural.llm")

DTYPES = ("auto", "float32", "bfloat16", "float16")


def optimised_generate_kwargs() -> dict[str, Any]:
    """``generate`` settings of the optimised path: a static KV cache, which makes transformers
    compile the decode step with ``torch.compile(mode="reduce-overhead")`` (CUDA graphs) on GPU.

    Each new (batch, length) shape compiles once, so this pays off for long-running servers
    and fixed-shape batches, not for one-off CPU calls.
    """
    from transformers import CompileConfig

    return {
        "cache_implementation": "static",
        "compile_config": CompileConfig(fullgraph=False, dynamic=False, mode="reduce-overhead"),
    }


class _OpenAIPenalties:
    """OpenAI's frequency and presence penalties over the generated tokens (not the prompt).

    transformers only has the multiplicative ``repetition_penalty``, which also punishes prompt
    tokens; this keeps the three backends' meaning of :class:`SamplingConfig` the same.
    Runs before the grammar mask, so a penalty never re-allows a token the grammar forbids.
    """

    def __init__(self, prompt_len: int, frequency: float, presence: float):
        self.prompt_len, self.frequency, self.presence = prompt_len, frequency, presence

    def __call__(self, input_ids, scores):
        import torch

        gen = input_ids[:, self.prompt_len :]
        if gen.shape[1] == 0:
            return scores
        counts = torch.zeros_like(scores)
        counts.scatter_add_(1, gen, torch.ones_like(gen, dtype=scores.dtype))
        return scores - self.frequency * counts - self.presence * (counts > 0).to(scores.dtype)


class _GrammarConstraint:
    """A logits processor that constrains some rows of a batch to a compiled xgrammar grammar.

    Unlike ``xgrammar.contrib.hf.LogitsProcessor`` it leaves rows without a grammar free and,
    if a row ever leaves its grammar (it should not), stops constraining that row instead of
    failing the whole batch on an assertion; validation then rejects that one answer.
    One instance serves one ``generate`` call.
    """

    def __init__(self, grammars: list[Any]):
        import xgrammar as xgr

        self._xgr = xgr
        self.grammars = grammars
        self.matchers: list[Any] | None = None
        self.bitmask = None

    def __call__(self, input_ids, scores):
        xgr = self._xgr
        if self.matchers is None:
            if input_ids.shape[0] != len(self.grammars):
                raise RuntimeError(f"batch of {input_ids.shape[0]} rows for {len(self.grammars)} grammars")
            self.matchers = [xgr.GrammarMatcher(g) if g is not None else None for g in self.grammars]
            self.bitmask = xgr.allocate_token_bitmask(len(self.grammars), self.grammars_vocab())
        else:
            last = input_ids[:, -1].tolist()
            for i, m in enumerate(self.matchers):
                if m is not None and not m.is_terminated() and not m.accept_token(last[i]):
                    log.warning("row %d left its grammar; it will be validated as free text", i)
                    self.matchers[i] = None
        rows = [i for i, m in enumerate(self.matchers) if m is not None and not m.is_terminated()]
        if not rows:
            return scores
        for i in rows:
            self.matchers[i].fill_next_token_bitmask(self.bitmask, i)
        dev = scores.device
        work = scores if dev.type in ("cuda", "cpu") else scores.to("cpu")
        xgr.apply_token_bitmask_inplace(work, self.bitmask.to(work.device), indices=rows)
        return work if work is scores else work.to(dev)

    def grammars_vocab(self) -> int:
        g = next(g for g in self.grammars if g is not None)
        return g.tokenizer_info.vocab_size


class TransformersBackend(LLMBackend):
    """A local model run in-process with transformers.

    Args:
        model: ``"smollm2"`` (default, packaged), a model folder or a ``.gguf`` file.
        device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        dtype: ``"auto"`` (bfloat16 on CUDA, float32 on CPU) or an explicit torch dtype name.
        max_batch_size: most requests per ``generate`` call; larger batches are split.
        optimise: use a static KV cache and ``torch.compile`` (CUDA graphs) on CUDA; see
            :func:`optimised_generate_kwargs`.
        cpu_threads: torch threads while generating on CPU (``None``: torch's default). A small
            model gains little from more threads, and on a busy machine 1 thread was measured
            4x faster than 2 on 2 cores.

    Example:
        >>> llm = TransformersBackend("smollm2", max_batch_size=8)            # doctest: +SKIP
        >>> reqs = [LLMRequest(messages=f"Name a colour #{i}") for i in range(8)]  # doctest: +SKIP
        >>> [c.finish_reason for c in llm.generate(reqs)][:2]                 # doctest: +SKIP
        ['stop', 'stop']
    """

    name = "transformers"

    def __init__(
        self,
        model: str | None = None,
        *,
        device: str = "auto",
        dtype: str = "auto",
        max_batch_size: int = 16,
        optimise: bool = False,
        cpu_threads: int | None = None,
    ):
        if max_batch_size < 1:
            raise UsageError("max_batch_size", max_batch_size, "a positive integer")
        if dtype not in DTYPES:
            raise UsageError("dtype", dtype, DTYPES)
        if cpu_threads is not None and cpu_threads < 1:
            raise UsageError("cpu_threads", cpu_threads, "a positive integer or None")
        self.cpu_threads = cpu_threads
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        folder = resolve_model(model)
        spec = DEFAULT_MODEL if model is None else str(model)
        self._model_name = PACKAGED_MODELS[spec][1].removesuffix(".gguf") if spec in PACKAGED_MODELS else spec
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise UsageError("device", device, "'cpu' or 'auto' (no CUDA device is visible)")
        self.device = torch.device(device)
        if dtype == "auto":
            dtype = "bfloat16" if self.device.type == "cuda" else "float32"
        self.dtype = getattr(torch, dtype)
        self.max_batch_size = max_batch_size
        self.optimise = optimise and self.device.type == "cuda"
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.tokenizer.padding_side = "left"  # decoder-only: new tokens must follow the prompt directly
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if not getattr(self.tokenizer, "chat_template", None):
            raise UsageError("model", spec, "a chat (instruct) model: this tokenizer has no chat template")
        with quiet_loading():
            self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=self.dtype).to(self.device).eval()
        self.folder = folder
        self._compiler = None
        self._grammars: dict[str, Any] = {}
        # generate() is not re-entrant on one model; the OpenAI-style callers may use threads
        self._lock = threading.Lock()
        eos = self.model.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos] if eos is not None else []
        self._eos_ids = set(eos) | ({self.tokenizer.eos_token_id} - {None})

    # -- grammars ---------------------------------------------------------------------------
    def _grammar(self, schema: dict[str, Any]):
        key = json.dumps(schema, sort_keys=True)
        if key not in self._grammars:
            import xgrammar as xgr

            if self._compiler is None:
                info = xgr.TokenizerInfo.from_huggingface(
                    self.tokenizer,
                    vocab_size=self.model.config.vocab_size,
                    stop_token_ids=sorted(self._eos_ids),
                )
                self._compiler = xgr.GrammarCompiler(info)
            # any_whitespace=False: small models otherwise spend their token budget on newlines
            self._grammars[key] = self._compiler.compile_json_schema(
                key, any_whitespace=False, strict_mode=True
            )
        return self._grammars[key]

    # -- generation -------------------------------------------------------------------------
    def generate(self, requests: Sequence[LLMRequest]) -> list[Completion]:
        requests = list(requests)
        results: list[Completion | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(r.sampling.key(), []).append(i)
        with self._lock, self._threads():
            for idx in groups.values():
                prompts: dict[int, str] = {}
                for i in idx:
                    try:  # a request that cannot be prepared fails alone (template, schema grammar)
                        prompt = self._render(requests[i])
                        if requests[i].json_schema is not None:
                            self._grammar(requests[i].json_schema)  # compiled once, then cached
                        prompts[i] = prompt
                    except Exception as e:  # noqa: BLE001 - reported in the completion
                        log.warning(
                            "transformers could not prepare request %s: %s", requests[i].request_id, e
                        )
                        results[i] = error_completion(
                            requests[i], e, backend=self.name, model=self.model_name
                        )
                # similar lengths together: less padding per chunk
                idx = sorted(prompts, key=lambda i: len(prompts[i]))
                for start in range(0, len(idx), self.max_batch_size):
                    chunk = idx[start : start + self.max_batch_size]
                    t0 = time.perf_counter()
                    try:
                        outs = self._run_chunk([requests[i] for i in chunk], [prompts[i] for i in chunk])
                    except Exception as e:  # one failed chunk must not lose the others
                        log.exception("transformers generate failed for %d requests", len(chunk))
                        latency = time.perf_counter() - t0
                        outs = [
                            error_completion(
                                requests[i], e, backend=self.name, model=self.model_name, latency_s=latency
                            )
                            for i in chunk
                        ]
                    for i, c in zip(chunk, outs):
                        results[i] = c
        return results  # type: ignore[return-value]

    @contextlib.contextmanager
    def _threads(self):
        import torch

        if self.cpu_threads is None or self.device.type != "cpu":
            yield
            return
        before = torch.get_num_threads()
        torch.set_num_threads(self.cpu_threads)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    def _render(self, req: LLMRequest) -> str:
        msgs = [m.model_dump() for m in req.messages]
        return self.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)

    def _run_chunk(self, reqs: list[LLMRequest], prompts: list[str]) -> list[Completion]:
        import torch

        s: SamplingConfig = reqs[0].sampling
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(
            self.device
        )
        kwargs: dict[str, Any] = {
            "max_new_tokens": s.max_tokens,
            "num_return_sequences": s.draws,  # greedy: one sample, repeated below
            "pad_token_id": self.tokenizer.pad_token_id,
            "eos_token_id": sorted(self._eos_ids),
        }
        if s.temperature > 0:
            kwargs.update(do_sample=True, temperature=s.temperature, top_p=s.top_p, top_k=0)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        grammars = [self._grammar(r.json_schema) if r.json_schema is not None else None for r in reqs]
        processors: list[Any] = []
        if s.frequency_penalty or s.presence_penalty:
            processors.append(
                _OpenAIPenalties(enc["input_ids"].shape[1], s.frequency_penalty, s.presence_penalty)
            )
        if any(g is not None for g in grammars):
            processors.append(_GrammarConstraint([g for g in grammars for _ in range(s.draws)]))
        if s.stop and not any(g is not None for g in grammars):
            # only without a grammar: a stop string cut mid-JSON would desynchronise the matcher
            kwargs.update(stop_strings=list(s.stop), tokenizer=self.tokenizer)
        if processors:
            kwargs["logits_processor"] = processors
        if self.optimise:
            kwargs.update(optimised_generate_kwargs())
        if s.seed is not None:
            torch.manual_seed(s.seed)
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(**enc, **kwargs)
        latency = time.perf_counter() - t0
        new = out[:, enc["input_ids"].shape[1] :].tolist()
        prompt_lens = enc["attention_mask"].sum(dim=1).tolist()
        comps = []
        for j, req in enumerate(reqs):
            texts, reasons, n_tok = [], [], 0
            for k in range(s.draws):
                text, reason, used = self._decode(new[j * s.draws + k], s.stop if grammars[j] is None else [])
                texts.append(text)
                reasons.append(reason)
                n_tok += used
            if s.draws < s.n:  # greedy: the one sample stands for all n
                texts, n_tok = texts * s.n, n_tok * s.n
            comps.append(
                Completion(
                    request_id=req.request_id,
                    text=texts[0],
                    alternatives=texts[1:],
                    finish_reason=reasons[0],
                    prompt_tokens=int(prompt_lens[j]),
                    completion_tokens=n_tok,
                    latency_s=latency,
                    backend=self.name,
                    model=self.model_name,
                )
            )
        return comps

    def _decode(self, ids: list[int], stop: list[str]) -> tuple[str, str, int]:
        used = len(ids)
        reason = "length"
        for pos, t in enumerate(ids):
            if t in self._eos_ids:
                used, reason = pos + 1, "stop"
                break
        text = self.tokenizer.decode(
            ids[: used if reason == "length" else used - 1], skip_special_tokens=True
        )
        text, cut = cut_at_stop(text, stop)
        return text.strip(), "stop" if cut else reason, used

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]
        self._grammars.clear()
