"""Personas: item spaces, induction, the Persona model, scorers (EASE, ItemKNN), attention and ranking.

Knows nothing of LLMs or LangGraph; persona text written by an LLM comes in through a small interface.
"""
