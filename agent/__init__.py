"""Plural's top layer: the engine that composes memory and personas, LLM backends, the LangGraph
agent, the Python API and the ``plural`` CLI.

Importing ``agent`` is cheap: torch, transformers, vLLM and LangGraph load only in the backend
or command that needs them.
"""
