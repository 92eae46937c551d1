"""``LLMPersonaWriter``: persona induction's ``PersonaWriter``, with names and descriptions by an LLM.

``personas`` knows nothing of LLMs: induction asks a ``PersonaWriter`` for text. This adapter
answers with :func:`agent.llm.tasks.describe_personas` and, for every persona the model
fails on, with exactly the text ``TemplatePersonaWriter`` would have written, so
``--llm none`` and a failed LLM give the same personas. The task results (provenance,
fallback counters, ``llm_error``) are kept per user for the engine's metadata.

Example:
    >>> from agent.llm.fake import ScriptedLLM
    >>> from personas.naming import PersonaDraft
    >>> answer = '{"name": "Space Sagas", "description": "Epic space adventures, like Alien."}'
    >>> w = LLMPersonaWriter(ScriptedLLM([answer]))
    >>> w.write("u1", [PersonaDraft("p1", ["Alien (1979)"], {"Sci-Fi": 1.0}, n_items=1)])
    [('Space Sagas', 'Epic space adventures, like Alien.')]
    >>> w.fallbacks.llm
    1
"""

from __future__ import annotations

from collections.abc import Sequence

from agent.llm.base import LLMBackend, SamplingConfig
from agent.llm.tasks import PersonaInput, describe_personas
from agent.llm.validated import FallbackCounter, TaskResult
from personas.naming import PersonaDraft, PersonaWriter, TemplatePersonaWriter


class LLMPersonaWriter(PersonaWriter):
    """Writes persona text with ``backend`` (``None``: the template only), falling back per persona.

    Attributes:
        results: the :class:`TaskResult` of the last ``write`` per user id.
        fallbacks: counts over every ``write`` so far.
    """

    def __init__(
        self,
        backend: LLMBackend | None,
        *,
        template: PersonaWriter | None = None,
        sampling: SamplingConfig | None = None,
    ):
        self.backend = backend
        self.template = template or TemplatePersonaWriter()
        self.sampling = sampling
        self.results: dict[str, TaskResult] = {}
        self.fallbacks = FallbackCounter()

    def write(self, user_id: str, drafts: Sequence[PersonaDraft]) -> list[tuple[str, str]]:
        drafts = list(drafts)
        # the template text is the fallback, so a failed LLM changes nothing about induction
        template = self.template.write(user_id, drafts)
        inputs = [
            PersonaInput(
                persona_id=d.persona_id,
                name=name,
                description=desc,
                evidence_titles=list(d.titles),
                categories=dict(d.category_shares),
                weight=d.weight,
            )
            for d, (name, desc) in zip(drafts, template)
        ]
        result = describe_personas(self.backend, inputs, sampling=self.sampling)
        self.results[user_id] = result
        self.fallbacks = self.fallbacks.merge(result.fallbacks)
        return [(item.name, item.description) for item in result.items]

    def text_source(self, user_id: str) -> list[str]:
        """``llm`` or ``template`` per persona of ``user_id``'s last ``write`` (``Persona.text_source``)."""
        result = self.results.get(user_id)
        if result is None:
            return []
        return ["template" if item.source == "template" else "llm" for item in result.items]
