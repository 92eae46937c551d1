"""Answers a well-behaved scripted model gives, built from the request's JSON schema, shared
by the tests that script a model (``ScriptedLLM(answer)``)."""

from __future__ import annotations

import json

from agent.llm.tasks import RecommendationInput

ALIENS = RecommendationInput(
    item_id="i1",
    title="Aliens (1986)",
    categories=["Sci-Fi"],
    persona_id="p1",
    persona_name="Space Opera",
    persona_description="Space battles, aliens and robots.",
    evidence_titles=["Alien (1979)", "Star Wars (1977)"],
)
"""One recommendation to explain, with its persona and evidence."""


def grounded_explanations(req, sentence: str = "Because you enjoyed {title}, this one should land well.") -> str | None:
    """For an ``explain_recommendations`` request: one explanation per item, citing the first
    evidence title the schema allows (``sentence`` gets ``title`` without its year); None for
    any other request."""
    props = (req.json_schema or {}).get("properties", {})
    if "explanations" not in props:
        return None
    out = []
    for k, e in enumerate(props["explanations"]["prefixItems"], start=1):
        t = e["properties"]["cited_titles"]["items"]["enum"][0]
        out.append({"item": k, "cited_titles": [t], "explanation": sentence.format(title=t.split(" (")[0])})
    return json.dumps({"explanations": out})


def category_description(req) -> str | None:
    """For a ``describe_persona`` request: a valid name and description from the persona's
    largest category; None for any other request."""
    if "description" not in (req.json_schema or {}).get("properties", {}):
        return None
    user = req.messages[-1].content
    shares = json.loads(user.split("categories (percent of titles): ", 1)[1].split("\n", 1)[0])
    cat = max(shares, key=shares.get)
    return json.dumps({"name": f"Devoted {cat} Fan", "description": f"Seeks out {cat.lower()} stories again and again."})
