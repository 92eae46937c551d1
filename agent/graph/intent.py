"""Understanding a chat message: what the person wants, which listed item they mean, how they
feel about it.

Rules first (deterministic, fast, tested); optionally the LLM (``understand_message`` prompt,
validated, with the rules as the fallback). Intents:

* ``recommend``: a new request ("something light and funny tonight").
* ``refine``: adjust the last list ("more like the second one", "something less dark").
* ``feedback``: a reaction to a listed item ("not that one, too violent", "loved the first").
* ``why``: a question about a listed item ("why the third?").
* ``personas``: "show my personas".
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict

from agent.llm.base import LLMBackend, SamplingConfig
from agent.llm.validated import FallbackCounter, Job, Rejected, run_validated
from prompts import load_prompt

Intent = Literal["recommend", "refine", "feedback", "why", "personas"]
INTENTS = ("recommend", "refine", "feedback", "why", "personas")

_ORDINALS = {"first": 1, "1st": 1, "one": 1, "second": 2, "2nd": 2, "two": 2, "third": 3, "3rd": 3, "three": 3,
             "fourth": 4, "4th": 4, "four": 4, "fifth": 5, "5th": 5, "five": 5, "sixth": 6, "6th": 6, "six": 6,
             "seventh": 7, "7th": 7, "seven": 7, "eighth": 8, "8th": 8, "eight": 8, "ninth": 9, "9th": 9,
             "nine": 9, "tenth": 10, "10th": 10, "ten": 10}
_ORDINAL_RE = re.compile(r"\b(?:the\s+)?(" + "|".join(_ORDINALS) + r")(?:\s+(?:one|movie|film|item|title|pick))?\b",
                         re.I)
_NUMBER_RE = re.compile(r"(?:#|\bno\.?\s*|\bnumber\s+|\bitem\s+)(\d{1,2})\b", re.I)
_LAST_RE = re.compile(r"\b(the\s+)?last\s+(one|movie|film|item|title|pick)\b", re.I)
_DEICTIC_RE = re.compile(r"\b(that|this|it)(\s+one)?\b", re.I)

_PERSONAS_RE = re.compile(r"\b(show|list|see|what are|tell me)\b.*\b(personas?|tastes|profiles?)\b|"
                          r"^\s*(my\s+)?personas?\s*\??$", re.I)
_WHY_RE = re.compile(r"^\s*why\b|\bwhy\s+(the|that|this|did|is|was|number|#|item|recommend)|\bexplain\b|"
                     r"\bhow come\b", re.I)
_NEG_RE = re.compile(r"\b(not\s+(that|this|it|the|for me|my thing|interested|(#|no\.?\s*|number\s+)\d{1,2})|no thanks|nope|don'?t\s+(like|want|"
                     r"enjoy|care)|dislike[sd]?|hated?|too\s+\w+|boring|awful|terrible|seen it|already seen|"
                     r"meh|skip)\b", re.I)
_POS_RE = re.compile(r"\b(loved?|enjoyed|great|perfect|awesome|amazing|brilliant|fantastic|"
                     r"(?<!i'd )(?<!would )(?<!i would )likes?d?\s+(it|that|this|the)|good (one|pick|choice)|"
                     r"yes please|will watch|watching it)\b", re.I)
_REFINE_RE = re.compile(r"\b(more like|similar to|something (else|similar|different)|less\s+\w+|more\s+\w+|"
                        r"instead|other (ones|options|picks)|(something|anything|stuff|films?|movies?|ones?) like)\b",
                        re.I)
_LIKE_AS_SIMILAR = re.compile(r"\b(more|something|anything|stuff|films?|movies?|ones?|similar)\s+(like|to)\b", re.I)


_WISH_NOT_TOO = re.compile(r"^\s*(something\s+|anything\s+)?(not|nothing|no)\s+too\b", re.I)


class Understanding(BaseModel):
    """What a message asks for."""

    model_config = ConfigDict(extra="forbid")

    intent: Intent
    reference: int | None = None
    """1-based position in the last list the message refers to (None: none named)."""
    reaction: Literal["like", "dislike"] | None = None
    """For feedback: the person's reaction."""
    request: str = ""
    """The message as a request (recommend / refine)."""
    source: Literal["rules", "llm", "llm_retry"] = "rules"


def find_reference(text: str, list_length: int) -> int | None:
    """The list position a message names ("the second one", "#3", "the last one")."""
    m = _NUMBER_RE.search(text)
    if m:
        return int(m.group(1))
    if _LAST_RE.search(text) and list_length:
        return list_length
    m = _ORDINAL_RE.search(text)
    if m:
        word = m.group(1).lower()
        # "one" alone is too common ("a funny one", "the one with the shark"): only "number one" counts
        if word == "one" and not re.search(r"\bnumber\s+one\b", text, re.I):
            return None
        return _ORDINALS[word]
    return None


def understand_by_rules(message: str, list_length: int = 0, focus: int | None = None) -> Understanding:
    """The rule-based reading of ``message`` (``focus``: the item "that one" refers to)."""
    text = message.strip()
    ref = find_reference(text, list_length)
    deictic = bool(_DEICTIC_RE.search(text))
    if _PERSONAS_RE.search(text):
        return Understanding(intent="personas", request=text)
    if _WHY_RE.search(text):
        return Understanding(intent="why", reference=ref or focus or (1 if list_length else None), request=text)
    has_list = list_length > 0
    # "more like the second one" asks for similar items; it is not a "like"
    neg, pos = bool(_NEG_RE.search(text)), bool(_POS_RE.search(_LIKE_AS_SIMILAR.sub(" ", text)))
    if ref is None and not deictic and _WISH_NOT_TOO.search(text):
        neg = False  # "not too long please", "nothing too scary": a wish about the next list, not a reaction
    if has_list and (neg or pos) and (ref is not None or deictic or not _REFINE_RE.search(text)):
        reaction = "dislike" if neg else "like"
        return Understanding(intent="feedback", reference=ref or focus or 1, reaction=reaction, request=text)
    if has_list and (_REFINE_RE.search(text) or ref is not None):
        return Understanding(intent="refine", reference=ref, request=text)
    return Understanding(intent="recommend", request=text)


class _LLMReading(BaseModel):
    model_config = ConfigDict(extra="forbid")
    intent: Intent
    reference: int | None
    reaction: Literal["like", "dislike", "none"]


def understand(message: str, list_length: int = 0, focus: int | None = None, backend: LLMBackend | None = None,
               counter: FallbackCounter | None = None) -> tuple[Understanding, str | None]:
    """The LLM's reading when a backend is given (validated; the rules otherwise), and any LLM error."""
    rules = understand_by_rules(message, list_length, focus)
    if backend is None:
        return rules, None
    prompt = load_prompt("understand_message")

    def check(out: _LLMReading) -> _LLMReading:
        if out.reference is not None and not (1 <= out.reference <= max(list_length, 0)):
            raise Rejected("reference", f"position {out.reference} is not in a list of {list_length}")
        if out.intent in ("feedback", "why", "refine") and list_length == 0:
            raise Rejected("no_list", f"intent {out.intent} needs a list, and none was shown")
        if out.intent == "feedback" and out.reaction == "none":
            raise Rejected("reaction", "feedback without a reaction")
        return out

    job = Job(variables={"message": message, "list_length": list_length}, schema=prompt.output_schema, check=check)
    outcomes, err = run_validated(backend, prompt, [job], _LLMReading, SamplingConfig(max_tokens=48),
                                  counter or FallbackCounter(), task="understand_message")
    o = outcomes[0]
    if o.value is None:
        return rules, err
    v = o.value
    ref = v.reference or (focus if v.intent in ("feedback", "why") else None) or rules.reference
    return Understanding(intent=v.intent, reference=ref, reaction=None if v.reaction == "none" else v.reaction,
                         request=message.strip(), source=o.source), err
