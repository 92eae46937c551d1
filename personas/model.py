"""The Persona model: one of a user's several tastes, as text, vector, weight and evidence."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_NAME_CHARS = 80
MAX_DESCRIPTION_CHARS = 600


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Persona(BaseModel):
    """One persona of one user.

    ``evidence`` lists the user's items behind this persona, most representative first.
    ``embedding`` lives in the text-embedding space (mean of the evidence items' text vectors,
    L2-normalised), so a free-text request can be matched against it.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    persona_id: str
    """Stable id, unique for the user (``p1``, ``p2``...)."""
    user_id: str
    """Owner; personas are never shared across users."""
    name: str = Field(max_length=MAX_NAME_CHARS)
    """Short label (\"Sci-Fi & Action\")."""
    description: str = Field(max_length=MAX_DESCRIPTION_CHARS)
    """One or two sentences a person can read and correct."""
    embedding: list[float] = Field(default_factory=list, repr=False)
    """Unit vector in the text space; empty when not computed."""
    weight: float = Field(ge=0.0, le=1.0)
    """Share of the user's taste (the weights of a user's personas sum to 1)."""
    evidence: list[str] = Field(default_factory=list)
    """Item ids of the user's history that form this persona, most representative first."""
    categories: dict[str, float] = Field(default_factory=dict)
    """Category shares over the evidence (top few), for names, routing and calibration."""
    version: int = Field(1, ge=1)
    """Incremented by every accepted change; old versions are kept in the store."""
    text_source: Literal["template", "llm", "refinement", "user"] = "template"
    """Who wrote ``name`` and ``description``."""
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)

    @field_validator("name", "description")
    @classmethod
    def _strip(cls, v: str) -> str:
        v = " ".join(v.split())
        if not v:
            raise ValueError("must not be empty")
        return v

    def vector(self) -> np.ndarray:
        return np.asarray(self.embedding, dtype=np.float32)

    def short(self) -> dict:
        """The ``persona`` field of a recommendation: id and name."""
        return {"id": self.persona_id, "name": self.name}


class PersonaView(BaseModel):
    """A persona as results show it: everything but the embedding."""

    model_config = ConfigDict(extra="forbid")

    persona_id: str
    user_id: str
    name: str
    description: str
    weight: float
    evidence: list[str] = Field(default_factory=list)
    categories: dict[str, float] = Field(default_factory=dict)
    version: int = 1
    text_source: str = "template"

    @classmethod
    def of(cls, persona: "Persona") -> "PersonaView":
        return cls.model_validate(persona.model_dump(include=set(cls.model_fields)))


class PersonaVersion(BaseModel):
    """A persona as it was, with why it changed (kept for audit and rollback)."""

    model_config = ConfigDict(extra="forbid")

    persona: Persona
    reason: str = "induction"
    """What produced this version: ``induction``, ``llm-description``, ``refinement``, ``rollback``..."""
    feedback: dict | None = None
    """The feedback event that caused it, when there was one."""
    recorded_at: datetime = Field(default_factory=utcnow)


class PersonaSet(BaseModel):
    """All current personas of one user, plus how they were induced."""

    model_config = ConfigDict(extra="forbid")

    user_id: str
    personas: list[Persona]
    induction: dict = Field(default_factory=dict)
    """Settings and criterion values of the induction run (space, k chosen, scores per k, seed)."""

    def get(self, persona_id: str) -> Persona:
        for p in self.personas:
            if p.persona_id == persona_id:
                return p
        from memory.errors import UsageError

        raise UsageError("persona id", persona_id, [p.persona_id for p in self.personas])

    @property
    def ids(self) -> list[str]:
        return [p.persona_id for p in self.personas]

    def weights(self) -> np.ndarray:
        return np.array([p.weight for p in self.personas], dtype=np.float64)
