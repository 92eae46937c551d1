"""The graph for the standard LangGraph server (``langgraph dev``, see ``langgraph.json``).

The server brings its own checkpointer, so the graph is compiled without one. Settings come
from the environment: ``PLURAL_DATASET`` (default ``ml-100k``), ``PLURAL_DATA`` (a MovieLens
folder or table, instead), ``PLURAL_LLM`` (default ``transformers``; ``none`` for templates),
``PLURAL_MODEL`` and ``PLURAL_BASE_URL``. Input per run: ``{"user_id", "thread_id", "message"}``.
"""

from __future__ import annotations

import os


def make_graph(config=None):
    """Build the runtime and compile the agent graph (called by the LangGraph server)."""
    from agent.engine import Engine
    from agent.graph.builder import build_graph
    from agent.llm import LLMConfig, make_backend
    from agent.runtime import AgentRuntime
    from memory.loaders import DataSource

    source = DataSource(dataset=os.environ.get("PLURAL_DATASET", "ml-100k"), data=os.environ.get("PLURAL_DATA"))
    engine = Engine.open(source)
    backend = make_backend(LLMConfig(backend=os.environ.get("PLURAL_LLM", "transformers"),
                                     model=os.environ.get("PLURAL_MODEL"), base_url=os.environ.get("PLURAL_BASE_URL")))
    return build_graph(AgentRuntime(engine, backend))
