"""A fake ``vllm`` that runs on CPU: the parts of vLLM 0.26's offline API that Plural uses.

``LLM(model, **engine_args)`` with ``.chat(conversations, sampling_params, use_tqdm=...)``,
``.generate(prompts, sampling_params, use_tqdm=...)`` and ``.get_tokenizer()``;
``SamplingParams`` (validated as vLLM does, including "n must be 1 when using greedy
sampling") with ``structured_outputs=StructuredOutputsParams(json=schema)``; ``RequestOutput``
and ``CompletionOutput``. The "model" is :mod:`toy_lm`: deterministic, and it honours the
request: ``max_tokens`` (``finish_reason="length"``), stop strings (``"stop"``, not in the
text), ``n``, seeds, JSON schemas (the smallest valid instance), outputs in prompt order.

Fault injection, for tests:

* ``LLM.failure = RuntimeError("...")`` (class or instance attribute; ``monkeypatch.setattr``):
  every ``chat``/``generate`` call raises it, as a dead engine does;
* ``[[finish:REASON]]`` in a prompt: that request stops after one token with vLLM's finish
  reason ``REASON`` (``abort``, ``error``, ``repetition``...);
* a prompt longer than ``max_model_len`` tokens, or a schema that does not resolve, makes the
  whole call raise ``ValueError`` before anything is generated, as vLLM does.

Import it by putting ``tests/fakes`` first on ``sys.path`` (see ``tests/fakes/__init__.py``).
"""

from vllm.entrypoints.llm import LLM
from vllm.outputs import CompletionOutput, RequestOutput
from vllm.sampling_params import SamplingParams, StructuredOutputsParams

__version__ = "0.26.0+fake"

__all__ = ["LLM", "CompletionOutput", "RequestOutput", "SamplingParams", "StructuredOutputsParams"]
