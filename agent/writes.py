"""A turn's writes, typed: what nodes produce and ``write_memory`` commits as one unit of work.

Nodes compute; none of them writes. Each returns its writes as a :class:`Pending` (episodic
events, a persona set to store with the versions it was computed from, the items shown for the
exposure counts), and :meth:`agent.runtime.AgentRuntime.commit` applies them together: the
persona set as a compare-and-set on each persona's version, the memory events, the exposure
counts, in one transaction (a persona-store transaction around a memory transaction). A
conflict (another turn changed the persona since it was read) writes nothing.

Example:
    >>> p = Pending(events=[ChatTurnWrite(thread_id="t1", role="user", text="a scary movie")])
    >>> p.merge(Pending(exposure=["50", "181"])).exposure
    ['50', '181']
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from personas.model import PersonaSet


class ChatTurnWrite(BaseModel):
    """One side of a chat turn, for episodic memory."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["chat_turn"] = "chat_turn"
    thread_id: str
    role: Literal["user", "assistant"]
    text: str


class ShownItem(BaseModel):
    """A listed item as memory keeps it."""

    model_config = ConfigDict(extra="forbid")

    item_id: str
    title: str
    persona_id: str | None = None


class ShownWrite(BaseModel):
    """A list shown to the user."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["recommendation"] = "recommendation"
    thread_id: str | None = None
    items: list[ShownItem]


class FeedbackWrite(BaseModel):
    """A reaction to an item."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["feedback"] = "feedback"
    item_id: str
    title: str
    reaction: Literal["like", "dislike"]
    text: str | None = None
    persona_id: str | None = None
    thread_id: str | None = None


EventWrite = Annotated[Union[ChatTurnWrite, ShownWrite, FeedbackWrite], Field(discriminator="kind")]


class PersonaWrite(BaseModel):
    """A user's persona set to store, and the versions it was computed from (compare-and-set)."""

    model_config = ConfigDict(extra="forbid")

    set: PersonaSet
    reason: str = "refinement"
    """Why the versions change: ``refinement``, ``llm-description``..."""
    feedback: dict | None = None
    """The feedback that caused it (item, reaction, loss, drift guard), kept with the version."""
    expected_versions: dict[str, int] = Field(default_factory=dict)
    """Persona id -> the version read: the write is refused when one of them moved on."""


class Pending(BaseModel):
    """Everything one turn (or one API call) writes."""

    model_config = ConfigDict(extra="forbid")

    events: list[EventWrite] = Field(default_factory=list)
    personas: PersonaWrite | None = None
    exposure: list[str] = Field(default_factory=list)
    """Item ids shown to the user by this turn (each adds one to its exposure count)."""
    thread_id: str | None = None
    """The chat thread this turn is on: the commit claims it for the user (the first user to
    commit a turn on a thread owns it) and counts the turn."""

    def empty(self) -> bool:
        return not (self.events or self.personas or self.exposure or self.thread_id)

    def merge(self, other: "Pending") -> "Pending":
        """Both turns' writes (``other``'s persona set wins when both have one: it was computed later)."""
        return Pending(events=[*self.events, *other.events], personas=other.personas or self.personas,
                       exposure=[*self.exposure, *other.exposure], thread_id=other.thread_id or self.thread_id)


class Committed(BaseModel):
    """What a commit wrote."""

    model_config = ConfigDict(extra="forbid")

    events: int = 0
    personas: bool = False
    exposure: int = 0
    consolidated: dict | None = None
    retries: int = 0
    """Commits retried on fresh state after a version conflict."""


__all__ = ["ChatTurnWrite", "Committed", "EventWrite", "FeedbackWrite", "Pending", "PersonaWrite", "ShownItem",
           "ShownWrite"]
