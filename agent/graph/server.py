"""The graph for the standard LangGraph server (``langgraph dev``, see ``langgraph.json``).

The server brings its own checkpointer, so the graph is compiled without one. Input per run:
``{"user_id", "thread_id", "message"}``; see ``docs/langgraph-server.md``.

Settings come from the environment (read when the graph is first built):

* ``PLURAL_DATASET``: a packaged dataset name (default ``ml-100k``; ``synthetic`` for a small
  generated one).
* ``PLURAL_DATA``: a MovieLens folder or interaction table, instead of ``PLURAL_DATASET``.
* ``PLURAL_CONFIG``: an engine settings file (``.json`` or ``.toml``, an
  :class:`agent.config.EngineConfig`, e.g. ``{"embedder": "hash:128"}``); default settings without it.
* ``PLURAL_DATA_DIR``: the folder data directories are built in and reopened from, one
  ``<dataset>-<source hash>-<config hash>`` folder per data source and settings (default
  ``<cache>/data``; read by :func:`agent.engine.default_data_dir`). The first run on new data or
  settings builds one (seconds for ``synthetic``, minutes for ``ml-100k``); later runs reopen it.
* ``PLURAL_LLM``: the language backend (default ``transformers``, the packaged CPU model;
  ``openai`` for an OpenAI-compatible server; ``none`` for templates only), with ``PLURAL_MODEL``
  (a model name) and ``PLURAL_BASE_URL`` (the server's URL, for ``openai``).

Building is slow and blocking (file writes, SQLite, numpy, torch, the embedder), and the server
calls the graph factory on its event loop for every run, state read and schema request, where
``langgraph dev`` raises ``BlockingError`` on any blocking call. So :func:`make_graph` builds
once per process and settings, in a worker thread, and afterwards returns the built graph at
once, with no I/O. The graph's nodes are plain functions: LangGraph runs them in its thread pool.
"""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any

SETTINGS = ("PLURAL_DATASET", "PLURAL_DATA", "PLURAL_CONFIG", "PLURAL_DATA_DIR", "PLURAL_LLM", "PLURAL_MODEL",
            "PLURAL_BASE_URL")
"""The environment variables that shape the graph (a change builds another one)."""

_graphs: dict[tuple, Any] = {}
_build_lock = threading.Lock()


def _settings() -> tuple[tuple[str, str | None], ...]:
    return tuple((k, os.environ.get(k) or None) for k in SETTINGS)


def _build(settings: dict[str, str | None]):
    from agent.config import EngineConfig
    from agent.engine import Engine
    from agent.graph.builder import build_graph
    from agent.llm import LLMConfig, make_backend
    from agent.runtime import AgentRuntime
    from memory.loaders import DataSource

    source = DataSource(dataset=settings["PLURAL_DATASET"] or "ml-100k", data=settings["PLURAL_DATA"])
    config = EngineConfig.from_file(settings["PLURAL_CONFIG"]) if settings["PLURAL_CONFIG"] else None
    engine = Engine.open(source, config)  # PLURAL_DATA_DIR is read here (agent.engine.default_data_dir)
    backend = make_backend(LLMConfig(backend=settings["PLURAL_LLM"] or "transformers", model=settings["PLURAL_MODEL"],
                                     base_url=settings["PLURAL_BASE_URL"]))
    runtime = AgentRuntime(engine, backend)
    runtime.warm_up()  # the embedder, the request scorer, the title index: loaded once, here
    return build_graph(runtime)


def load_graph():
    """The compiled graph for the current settings, built on first use and then reused (blocking;
    thread-safe: concurrent first callers wait for one build)."""
    key = _settings()
    graph = _graphs.get(key)
    if graph is None:
        with _build_lock:
            graph = _graphs.get(key)
            if graph is None:
                graph = _graphs[key] = _build(dict(key))
    return graph


async def aload_graph():
    """:func:`load_graph` for async callers: builds in a worker thread, never on the event loop."""
    graph = _graphs.get(_settings())
    return graph if graph is not None else await asyncio.to_thread(load_graph)


def make_graph(config=None):
    """The graph factory ``langgraph.json`` names (the server passes the run's ``config``, unused).

    Returns the built graph when there is one. Otherwise, called on a running event loop (the
    LangGraph server, which awaits what a factory returns), it returns a coroutine that builds in a
    worker thread; called from plain synchronous code (a script, a test), it builds right here.
    """
    graph = _graphs.get(_settings())
    if graph is not None:
        return graph
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return load_graph()
    return aload_graph()
