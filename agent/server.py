"""``plural serve``: the agent over HTTP, for many users at once.

A FastAPI app over one :class:`~agent.api.PluralAgent` (one engine, one embedder, one LLM per
process). Endpoints are plain functions that FastAPI runs in its thread pool, so turns of
different users run concurrently; the agent's commits are transactions with a compare-and-set
on persona versions, so concurrent turns on one user's personas are serialised, never lost.

* ``GET /health``: ``{"status": "ok", "dataset", "users", "items"}``.
* ``POST /chat`` ``{"user_id", "message", "thread_id"?}``: one chat turn, a
  :class:`~agent.api.ChatReply` (HTTP 200 also when the turn could not be served: ``error``
  says why and nothing was written; an unknown user is 404, another user's thread 403).
* ``POST /follow_up``: a ``ChatReply`` in, the LLM's :class:`~agent.api.FollowUp` out.
* ``POST /recommend`` ``{"user_id", "k"?, "request"?, "query"?, "mode"?}``: a
  :class:`~personas.recommendation.RecommendationList` through the chat's request path; the list
  counts as shown (memory, exposure).
* ``POST /feedback`` ``{"user_id", "item_id", "reaction", "text"?}``: a
  :class:`~agent.runtime.FeedbackOutcome`.
* ``GET /users/{user_id}/personas``, ``GET /users/{user_id}/personas/versions``,
  ``GET /users/{user_id}/history?limit=``, ``GET /threads/{thread_id}?user_id=``.

Usage errors are HTTP 422 with ``{"detail": message}`` naming the bad value.

Example:
    >>> app = create_app(PluralAgent.from_dataset("synthetic", llm="none"))   # doctest: +SKIP
    >>> # uvicorn.run(app, host="127.0.0.1", port=8000)
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from agent.api import ChatReply, FollowUp, PluralAgent
from agent.threads import ThreadOwnershipError
from memory.errors import PluralError, UnknownItemError, UnknownUserError, UsageError


class ChatIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: str
    message: str
    thread_id: str | None = None
    """A thread to continue (default: a new one, whose id the reply carries)."""


class RecommendIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: str
    k: int = Field(10, gt=0, le=100)
    request: str | None = None
    """A wish in words, read as the chat reads it ("a comedy from the 90s", "like Heat")."""
    query: str | None = None
    """Free text matched against the catalog."""
    mode: str | None = None


class FeedbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: str
    item_id: str
    reaction: Literal["like", "dislike"] | int
    """``like``/``dislike`` or a 1-5 rating."""
    text: str | None = None


def create_app(agent: PluralAgent, concurrent_turns: int = 32):
    """The FastAPI app serving ``agent`` (see the module docstring); at most ``concurrent_turns``
    requests are computed at once (FastAPI's thread pool for plain endpoints)."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, HTTPException, Request
    from fastapi.responses import JSONResponse

    @asynccontextmanager
    async def lifespan(_app):
        import anyio.to_thread

        anyio.to_thread.current_default_thread_limiter().total_tokens = concurrent_turns
        yield

    app = FastAPI(title="Plural", version="1", lifespan=lifespan,
                  description="Persona-based recommendation: chat, recommend, feedback, personas.")

    @app.exception_handler(PluralError)
    def _plural_error(_: Request, e: PluralError):
        status = 404 if isinstance(e, (UnknownUserError, UnknownItemError)) else \
            403 if isinstance(e, ThreadOwnershipError) else 422 if isinstance(e, UsageError) else 500
        return JSONResponse(status_code=status, content={"detail": str(e)})

    def _user(user_id: str) -> str:
        agent.runtime.check_user(user_id)  # UnknownUserError -> 404
        return user_id

    @app.get("/health")
    def health() -> dict:
        e = agent.engine
        return {"status": "ok", "data_dir": e.data_dir.name, "users": len(e.history.user_ids),
                "items": len(e.catalog)}

    @app.post("/chat", response_model=ChatReply)
    def chat(body: ChatIn) -> ChatReply:
        _user(body.user_id)
        if body.thread_id:
            agent.threads.check(body.thread_id, body.user_id)  # another user's thread -> 403
        return agent.chat(body.user_id, body.message, body.thread_id)

    @app.post("/follow_up", response_model=FollowUp)
    def follow_up(reply: ChatReply) -> FollowUp:
        _user(reply.user_id)
        agent.threads.check(reply.thread_id, reply.user_id)
        return agent.follow_up(reply)

    @app.post("/recommend")
    def recommend(body: RecommendIn) -> dict:
        out = agent.recommend(_user(body.user_id), body.k, body.query, mode=body.mode, request=body.request)
        return out.model_dump(mode="json")

    @app.post("/feedback")
    def feedback(body: FeedbackIn) -> dict:
        return agent.feedback(_user(body.user_id), body.item_id, body.reaction, body.text).model_dump(mode="json")

    @app.get("/users/{user_id}/personas")
    def personas(user_id: str) -> list[dict]:
        return [p.model_dump(mode="json", exclude={"embedding"}) for p in agent.personas(_user(user_id))]

    @app.get("/users/{user_id}/personas/versions")
    def versions(user_id: str, persona_id: str | None = None) -> list[dict]:
        return [v.model_dump(mode="json", exclude={"persona": {"embedding"}})
                for v in agent.persona_versions(_user(user_id), persona_id)]

    @app.get("/users/{user_id}/history")
    def history(user_id: str, limit: int = 50) -> list[dict]:
        if not 1 <= limit <= 10_000:
            raise HTTPException(422, f"limit {limit} is not between 1 and 10000")
        return [e.model_dump(mode="json") for e in agent.history(_user(user_id), limit)]

    @app.get("/threads/{thread_id}")
    def thread(thread_id: str, user_id: str) -> list[dict]:
        return [t.model_dump() for t in agent.transcript(thread_id, _user(user_id))]

    return app


def serve(agent: PluralAgent, host: str = "127.0.0.1", port: int = 8000, concurrent_turns: int = 32) -> None:
    """Run the app with uvicorn until interrupted (blocking)."""
    import uvicorn

    uvicorn.run(create_app(agent, concurrent_turns), host=host, port=port, log_level="warning")


__all__ = ["ChatIn", "FeedbackIn", "RecommendIn", "create_app", "serve"]
