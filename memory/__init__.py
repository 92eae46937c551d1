"""Plural's bottom layer: the catalog, the interaction log, loaders, embedders and the FAISS memory.

Nothing here knows about personas, LLMs or LangGraph.
"""
