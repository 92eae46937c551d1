"""Test doubles for the LLM backends, and the one real server their tests share.

* ``vllm/``: a fake ``vllm`` package (vLLM 0.26's offline API: ``LLM``, ``SamplingParams``,
  ``StructuredOutputsParams``, ``RequestOutput``) that runs on CPU. It is not on ``sys.path``
  by default; a fixture adds this folder, e.g. ``monkeypatch.syspath_prepend(FAKES_DIR)``, and
  drops any ``vllm`` already imported.
* ``toy_lm``: the deterministic "model" behind the fakes (what it answers, its tokens).
* ``transformers_serve``: a real ``transformers serve`` process with the packaged SmolLM2,
  started once per test session for the OpenAI backend's tests.
"""

from pathlib import Path

FAKES_DIR = Path(__file__).resolve().parent
"""This folder: put it on ``sys.path`` to make ``import vllm`` and ``import toy_lm`` find the fakes."""
