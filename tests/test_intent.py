"""Reading a chat message's intent by rules: requests, refinements, reactions, why, personas."""

from __future__ import annotations

import pytest

from agent.graph.intent import find_reference, understand_by_rules


@pytest.mark.parametrize("message, intent, reference, reaction", [
    ("something light and funny tonight", "recommend", None, None),
    ("a scary movie", "recommend", None, None),
    ("more like the second one", "refine", 2, None),
    ("why the third?", "why", 3, None),
    ("not the first one, too violent", "feedback", 1, "dislike"),
    ("not #2", "feedback", 2, "dislike"),
    ("not number 3", "feedback", 3, "dislike"),
    ("loved the second one", "feedback", 2, "like"),
    ("that one is too violent", "feedback", 1, "dislike"),
    ("not too long please", "recommend", None, None),       # a wish about the next list, not a reaction
    ("nothing too scary", "recommend", None, None),
    ("show my personas", "personas", None, None),
    ("something else", "refine", None, None),
])
def test_rules_read_the_intent_with_a_list_shown(message, intent, reference, reaction):
    u = understand_by_rules(message, list_length=5)
    assert (u.intent, u.reference, u.reaction) == (intent, reference, reaction)


def test_without_a_list_a_reaction_cannot_be_meant():
    assert understand_by_rules("not the first one", list_length=0).intent == "recommend"


@pytest.mark.parametrize("text, n, ref", [("the last one", 4, 4), ("#3", 5, 3), ("a funny one", 5, None),
                                           ("the one with the shark", 5, None), ("number one", 5, 1)])
def test_list_positions(text, n, ref):
    assert find_reference(text, n) == ref
