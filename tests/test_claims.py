"""The fact checks on model text (agent/llm/claims.py), on the false sentences users saw."""

from __future__ import annotations

import doctest

import pytest

import agent.llm.claims as claims
from agent.llm.claims import ClaimFacts, check_claims
from agent.llm.validated import Rejected

FACTS = ClaimFacts(titles=["Aliens (1986)", "Crow, The (1994)", "Schindler's List (1993)"],
                   categories={"Drama", "War"}, tastes={"Drama", "War", "Action"}, names=["Drama & War"],
                   newest_year=1998, item_title="Schindler's List (1993)")


@pytest.mark.parametrize("text, reason", [
    ("This classic comedy has aired in 1984.", "wrong_year"),
    ("It suits your tastes for Westerns.", "wrong_taste"),
    ("A must-buy for any D&D fan.", "unverifiable"),
    ("If you enjoyed Aliens and Crows, you will like this.", "unknown_name"),
    ("Three of the most popular films in the history of cinema.", "unverifiable"),
    ("An iconic drama, one of the greatest war films.", "unverifiable"),
    ("A comedy for your Drama & War taste.", "wrong_genre"),
])
def test_false_sentences_are_refused_with_their_reason(text, reason):
    with pytest.raises(Rejected) as e:
        check_claims(text, FACTS)
    assert e.value.reason == reason


@pytest.mark.parametrize("text", [
    "Because you enjoyed Aliens and The Crow, this war drama should hold you.",
    "Like Schindler's List, it is a drama set in wartime, for your Drama & War taste.",
    "A popular drama among people who liked Aliens.",
])
def test_true_sentences_pass(text):
    check_claims(text, FACTS)


def test_the_module_examples_hold():
    assert doctest.testmod(claims, raise_on_error=False).failed == 0
