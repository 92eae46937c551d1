"""What every recommendation returns: the item, its persona, the attention, the evidence, why."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class PersonaRef(BaseModel):
    """The persona responsible for a recommendation."""

    id: str
    name: str


class EvidenceItem(BaseModel):
    """A history item that supports a recommendation; ``weight`` is its item-item weight ``B[j, i]``."""

    item_id: str
    title: str
    weight: float


class Recommendation(BaseModel):
    """One recommended item with its provenance."""

    model_config = ConfigDict(extra="forbid")

    item_id: str
    title: str
    score: float
    """Base scorer score (persona-focused when a request routed to personas)."""
    rank: int
    """1-based position in the list."""
    persona: PersonaRef | None
    """Responsible persona (None only for cold-start users)."""
    attention: dict[str, float] = Field(default_factory=dict)
    """Persona id -> attention weight; sums to 1."""
    evidence: list[EvidenceItem] = Field(default_factory=list)
    explanation: str
    explanation_source: Literal["template", "llm"] = "template"
    categories: list[str] = Field(default_factory=list)
    cold_start: bool = False
    """True when the user has no positives and the list is the popularity fallback."""
    request_match: float | None = None
    """How well the item meets the request's soft part (free text, "like X") in [0, 1]; None
    when the request had none. ``score`` is the personalised score; the ranking used
    ``score + request_term`` (see :mod:`personas.request`)."""
    request_term: float = 0.0
    """What the request added to ``score`` for ranking (match bonus minus dislike penalty)."""


class RecommendationList(BaseModel):
    """A user's list plus how it was produced."""

    model_config = ConfigDict(extra="forbid")

    user_id: str
    mode: str
    k: int
    items: list[Recommendation]
    cold_start: bool = False
    provenance: dict = Field(default_factory=dict)
    """Scorer, dataset fingerprint, persona versions, prompt names and hashes..."""
    meta: dict = Field(default_factory=dict)
    """Run facts: timings, LLM fallbacks per reason, ``llm_error``..."""


def _quote_list(titles: list[str]) -> str:
    if not titles:
        return ""
    if len(titles) == 1:
        return titles[0]
    return ", ".join(titles[:-1]) + " and " + titles[-1]


def template_explanation(persona_name: str | None, evidence_titles: list[str], share: float | None = None) -> str:
    """The deterministic explanation: names the persona and the evidence titles.

    >>> template_explanation("Sci-Fi & Action", ["Alien (1979)", "Aliens (1986)"], 0.8)
    'For your "Sci-Fi & Action" taste (80% of this match): you liked Alien (1979) and Aliens (1986), and people who liked them like this.'
    """
    if persona_name is None:
        return "Popular with other viewers; rate a few titles and Plural will learn your tastes."
    head = f'For your "{persona_name}" taste'
    if share is not None and share < 0.995:
        head += f" ({round(100 * share)}% of this match)"
    if not evidence_titles:
        return head + "."
    return f"{head}: you liked {_quote_list(evidence_titles)}, and people who liked them like this."
