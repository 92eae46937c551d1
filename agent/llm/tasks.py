"""The LLM's jobs in Plural, each validated, retried once and backed by a deterministic template.

* :func:`describe_personas`: a name and description per persona, from its evidence.
* :func:`route_request`: which personas a conversational request activates.
* :func:`select_personas`: the persona responsible for each candidate item; with
  :func:`combine_selection` against the numeric attention (``attention``/``llm``/``both``).
* :func:`explain_recommendations`: one grounded explanation per recommendation, all in one
  batched call; an explanation may cite and mention only its own evidence titles.

Inputs are small pydantic models, so callers (the engine, the CLI, evaluations) need not
share types with ``personas``. Every function takes ``backend=None`` for templates only,
never raises for model output or backend failures, and returns a :class:`TaskResult` with
provenance, fallback counters and ``llm_error``.

Example:
    >>> from agent.llm.fake import ScriptedLLM
    >>> ps = [PersonaInput(persona_id="p1", name="Noir", description="Dark crime films."),
    ...       PersonaInput(persona_id="p2", name="Laughs", description="Light comedies.")]
    >>> r = route_request(ScriptedLLM(['{"personas": ["Laughs (p2)"]}']), "something funny tonight", ps)
    >>> r.items[0].persona_ids, r.items[0].source
    (['p2'], 'llm')
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agent.llm.base import LLMBackend, SamplingConfig
from agent.llm.claims import (ClaimFacts, check_claims, check_genres, check_years, genres_named, title_year,
                              without_titles)
from agent.llm.validated import (
    FallbackCounter,
    Job,
    Judged,
    Rejected,
    TaskResult,
    provenance,
    run_validated,
)
from memory.errors import UsageError
from prompts import load_prompt

log = logging.getLogger("plural.llm")

MAX_DESCRIPTION_CHARS = 240
MAX_EXPLANATION_CHARS = 200
MAX_PROMPT_TITLES = 12

DEFAULT_SAMPLING = {
    "describe_personas": SamplingConfig(max_tokens=96, frequency_penalty=0.5),
    "route_request": SamplingConfig(max_tokens=32),
    "select_personas": SamplingConfig(max_tokens=32),
    "explain_recommendations": SamplingConfig(max_tokens=96, frequency_penalty=0.5),
}
"""Greedy decoding and a token budget per task (explanations: per item in a request). Prose
tasks get a frequency penalty: small models otherwise loop ("a hero and a villain, and a hero...")."""


# -- inputs ---------------------------------------------------------------------------------
class PersonaInput(BaseModel):
    """What the LLM tasks need to know about one persona."""

    model_config = ConfigDict(extra="forbid")

    persona_id: str
    name: str = ""
    """Current name (the template's, before an LLM writes one); the describe fallback."""
    description: str = ""
    """Current description; the describe fallback."""
    evidence_titles: list[str] = Field(default_factory=list)
    """Titles of the items behind the persona, most representative first."""
    categories: dict[str, float] = Field(default_factory=dict)
    """Category -> share of the evidence (0..1)."""
    weight: float | None = None
    """Share of the user's taste; breaks ties in template choices."""
    evidence_categories: list[str] = Field(default_factory=list)
    """Categories of the evidence titles (a description may call the taste by these genres)."""

    @classmethod
    def from_persona(cls, persona: Any, titles: Sequence[str],
                     evidence_categories: Sequence[str] = ()) -> PersonaInput:
        """From a ``personas.model.Persona``, the titles of its evidence items and their categories."""
        return cls(
            persona_id=persona.persona_id,
            name=persona.name,
            description=persona.description,
            evidence_titles=list(titles),
            categories=dict(persona.categories),
            weight=persona.weight,
            evidence_categories=sorted(set(evidence_categories)),
        )

    def label(self) -> str:
        """``Name (id)``: how routing and selection prompts name the persona (unique thanks to the id)."""
        return f"{_clean(self.name) or _category_name(self.categories)} ({self.persona_id})"

    def card(self) -> dict[str, str]:
        """``{label, description}`` as the routing and selection prompts show it."""
        return {"label": self.label(), "description": self.description or _template_description(self)}


class CandidateInput(BaseModel):
    """A candidate item whose responsible persona is to be confirmed."""

    model_config = ConfigDict(extra="forbid")

    item_id: str
    title: str
    categories: list[str] = Field(default_factory=list)


class RecommendationInput(BaseModel):
    """One recommendation to explain: the item, its responsible persona and the evidence."""

    model_config = ConfigDict(extra="forbid")

    item_id: str
    title: str
    categories: list[str] = Field(default_factory=list)
    persona_id: str
    persona_name: str
    persona_description: str = ""
    evidence_titles: list[str] = Field(default_factory=list)
    """Titles from the user's history that support this item (the only titles it may cite)."""
    evidence_categories: list[str] = Field(default_factory=list)
    """Categories of the evidence titles (a sentence may call them by these genres)."""
    user_tastes: list[str] = Field(default_factory=list)
    """Categories of the user's personas (the only tastes a sentence may credit the user with;
    empty: the persona's own categories, read from its name)."""


# -- outputs --------------------------------------------------------------------------------
class PersonaText(Judged):
    """A persona's name and description, and who wrote them."""

    persona_id: str
    name: str
    description: str


class Routing(Judged):
    """The personas a request activates, best first."""

    request: str
    persona_ids: list[str]


class PersonaChoice(Judged):
    """The persona responsible for one candidate."""

    item_id: str
    persona_id: str


class Explanation(Judged):
    """A recommendation's explanation and the evidence titles it cites."""

    item_id: str
    text: str
    cited_titles: list[str]


# -- what the model must answer (validated with pydantic, then checked for meaning) ---------
NAME_PATTERN = r"^[A-Z][A-Za-z'&-]{2,}( [A-Za-z'&-]+){0,4}$"
"""Persona names: 1 to 5 words of letters; the first is capitalised, 3+ letters (the grammar enforces it)."""


class _DescribeOut(BaseModel):
    name: str = Field(pattern=NAME_PATTERN)
    description: str = Field(min_length=20, max_length=400)


class _RouteOut(BaseModel):
    personas: list[str] = Field(min_length=1, max_length=8)


class _SelectOut(BaseModel):
    persona: str


class _ExplainEntry(BaseModel):
    item: int = Field(ge=1)
    cited_titles: list[str] = Field(min_length=1, max_length=3)
    explanation: str = Field(min_length=20, max_length=400)


class _ExplainOut(BaseModel):
    explanations: list[_ExplainEntry] = Field(min_length=1)


OUTPUT_MODELS = {
    "describe_persona": _DescribeOut,
    "route_request": _RouteOut,
    "select_persona": _SelectOut,
    "explain_recommendations": _ExplainOut,
}
"""Prompt name -> the pydantic model that validates its answers (a test matches it to the prompt's schema)."""


# -- helpers --------------------------------------------------------------------------------
_YEAR = re.compile(r"\s*\(\d{4}\)\s*$")
_WORD = re.compile(r"[a-z0-9']+")
_STOP = frozenset(
    [
        "a",
        "an",
        "the",
        "and",
        "or",
        "of",
        "to",
        "in",
        "on",
        "for",
        "with",
        "something",
        "some",
        "me",
        "my",
        "i",
        "we",
        "tonight",
        "today",
        "want",
        "like",
        "watch",
        "see",
        "movie",
        "movies",
        "film",
        "films",
        "show",
        "please",
        "would",
        "could",
        "about",
        "that",
        "this",
    ]
)


def _clean(text: str) -> str:
    return " ".join(text.split())


def _title_key(title: str) -> str:
    return _YEAR.sub("", title).strip().lower()


_TRAILING_ARTICLE = re.compile(r"^(.*), (the|a|an|il|la|le|les|l'|das|der|die|el|los)$")


def _title_keys(title: str) -> list[str]:
    """Ways a text may name a title: ``"Godfather, The (1972)"`` -> ``godfather, the``,
    ``the godfather``, ``godfather`` (MovieLens moves leading articles to the end)."""
    key = _title_key(title)
    m = _TRAILING_ARTICLE.match(key)
    return [key, f"{m.group(2)} {m.group(1)}", m.group(1)] if m else [key]


def _words_of(text: str) -> list[str]:
    """Lower-case alphanumeric runs: how titles and texts are compared (punctuation is a boundary)."""
    return re.findall(r"[a-z0-9]+", text.lower())


class TitleIndex:
    """Which of many titles a text names: every way of writing each title (:func:`_title_keys`,
    4+ characters) as a word sequence, looked up by the text's word n-grams. One pass over the
    text instead of a regex per title (a 1,682-title catalog took ~180 ms a check that way)."""

    def __init__(self, titles: Sequence[str]):
        self.titles = list(titles)
        self._keys: dict[tuple[str, ...], int] = {}
        for i, t in enumerate(self.titles):
            for key in _title_keys(t):
                words = tuple(_words_of(key))
                if words and len(" ".join(words)) >= 4:
                    self._keys.setdefault(words, i)
        self._longest = max((len(k) for k in self._keys), default=0)

    def find(self, text: str) -> list[tuple[int, tuple[str, ...]]]:
        """``(title position, the words that named it)`` for each title named, in title order."""
        words = _words_of(text)
        hits: dict[int, tuple[str, ...]] = {}
        for i in range(len(words)):
            for n in range(min(self._longest, len(words) - i), 0, -1):
                pos = self._keys.get(tuple(words[i:i + n]))
                if pos is not None and len(hits.get(pos, ())) < n:
                    hits[pos] = tuple(words[i:i + n])
        return sorted(hits.items())


@functools.lru_cache(maxsize=256)
def title_index(titles: tuple[str, ...]) -> TitleIndex:
    """A :class:`TitleIndex`, built once per title list (the catalog's is asked for on every check)."""
    return TitleIndex(titles)


def _mentions(text: str, titles: Sequence[str]) -> list[str]:
    """Titles (year suffix ignored, 4+ characters) that occur in ``text`` as whole words."""
    index = title_index(tuple(titles))
    return [index.titles[pos] for pos, _ in index.find(text)]


def _foreign_titles(text: str, allowed: Sequence[str], known: Sequence[str]) -> list[str]:
    """Known titles in ``text`` that are not allowed (an allowed title may contain a shorter known one)."""
    allowed_keys = [_title_key(a) for a in allowed]
    return [
        t
        for t in _mentions(text, known)
        if _title_key(t) not in allowed_keys and not any(_title_key(t) in a for a in allowed_keys)
    ]


_CATEGORY_WORDS = {"sci-fi": ("sci-fi", "science fiction", "science-fiction", "scifi"),
                   "children's": ("children", "kids", "family"), "film-noir": ("noir",)}


def _names_category(text: str, categories: Mapping[str, float]) -> bool:
    """Whether ``text`` names one of ``categories`` (a category's usual synonyms count)."""
    low = text.lower()
    for c in categories:
        key = c.lower()
        words = _CATEGORY_WORDS.get(key, (key.rstrip("s"),))
        if any(re.search(r"(?<![a-z])" + re.escape(w), low) for w in words):
            return True
    return False


def _example_answers(prompt) -> list[str]:
    """Every string in the prompt's worked-example answers (its assistant turns)."""
    out: list[str] = []

    def walk(v):
        if isinstance(v, str):
            out.append(v)
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)

    for answer in prompt.example_answers():
        try:
            walk(json.loads(answer))
        except ValueError:
            out.append(answer)
    return out


def _copied_from(text: str, sources: Sequence[str], n: int = 5) -> str | None:
    """A run of ``n`` words that ``text`` shares with one of ``sources`` (a small model's habit of
    copying the worked example), or None."""
    words = re.findall(r"[a-z0-9']+", text.lower())
    grams = {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)}
    for src in sources:
        w = re.findall(r"[a-z0-9']+", src.lower())
        for i in range(len(w) - n + 1):
            g = " ".join(w[i:i + n])
            if g in grams:
                return g
    return None


def _regex_escape(text: str) -> str:
    """Escape for a JSON-schema (ECMA) regex."""
    return re.sub(r"([\\^$.|?*+()\[\]{}/])", r"\\\1", text)


def _grounded_opening(titles: Sequence[str]) -> str:
    """A pattern for an explanation that opens by naming one of ``titles`` (the year optional).

    Constrained decoders (xgrammar, vLLM) then cannot produce an explanation that rests on
    nothing; bounded repeats (``{m,n}``) are avoided because xgrammar 0.2 rejects them here.
    """
    alts = []
    for t in dict.fromkeys(titles):
        m = _YEAR.search(t)
        base = _YEAR.sub("", t).strip()
        alts.append(_regex_escape(base) + (f"( {_regex_escape(m.group(0).strip())})?" if m else ""))
    return (r"^(Because you (liked|enjoyed|loved)|Since you (liked|enjoyed|loved)|If you (liked|enjoyed|loved)) ("
            + "|".join(alts) + r")[,;]? [A-Za-z0-9 ,.;:!?&'()-]+$")


def _top_categories(categories: Mapping[str, float], k: int) -> list[str]:
    return [c for c, _ in sorted(categories.items(), key=lambda kv: (-kv[1], kv[0]))[:k]]


def _category_name(categories: Mapping[str, float]) -> str:
    top = _top_categories(categories, 2)
    return " & ".join(top) if top else "Eclectic"


def _join(words: Sequence[str]) -> str:
    words = list(words)
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _template_description(p: PersonaInput) -> str:
    cats = _top_categories(p.categories, 3)
    titles = [_YEAR.sub("", t).strip() for t in p.evidence_titles[:3]]
    text = f"Enjoys {_join(cats)} titles" if cats else "Enjoys a varied mix of titles"
    if titles:
        text += f", such as {_join(titles)}"
    return text + "."


def _persona_id(answer: str, by_label: Mapping[str, str]) -> str:
    """The persona id an answer names: an exact label, or a bare id (servers without schema support)."""
    answer = answer.strip()
    if answer in by_label:
        return by_label[answer]
    if answer in by_label.values():
        return answer
    raise Rejected("unknown_persona", f"{answer!r} is not one of the personas {list(by_label)}")


_IDIOM_ECHOES = frozenset({"again", "more", "over", "on", "round", "through", "back", "out", "up", "down", "by",
                           "time", "better", "worse", "less", "bigger", "stranger", "darker", "funnier"})


def _repetitive(text: str) -> str | None:
    """Why ``text`` reads as a degenerate loop (a small model's usual failure), or None.

    A word trigram that occurs twice, or fewer than half the words distinct in a text of 12+
    words, is a loop: one sentence of real prose does neither.
    """
    words = re.findall(r"[a-z0-9']+", text.lower())
    grams = [tuple(words[i:i + 3]) for i in range(len(words) - 2)]
    seen: set[tuple[str, ...]] = set()
    for g in grams:
        if g in seen:
            return f"repeats {' '.join(g)!r}"
        seen.add(g)
    if len(words) >= 12 and len(set(words)) < 0.5 * len(words):
        return "repeats its words"
    for echo in re.finditer(r"\b([a-z][a-z']+(?: [a-z][a-z']+)?) (?:and|or) \1\b", " ".join(words)):
        if echo.group(1) not in _IDIOM_ECHOES:  # "both entertaining and entertaining"
            return f"joins {echo.group(1)!r} to itself"
    return None


_YEAR_IN_TEXT = re.compile(r"\((1[89]\d\d|20\d\d)\)")


def _unanchored_year(text: str, titles: Sequence[str]) -> str | None:
    """A "(1994)" that follows none of ``titles``: the model made up a film ("Drama (1994)")."""
    low = text.lower()
    keys = [k for t in titles for k in _title_keys(t) if len(k) >= 3]
    for m in _YEAR_IN_TEXT.finditer(low):
        before = low[: m.start()].rstrip()
        if not any(before.endswith(k) for k in keys):
            words = before.split()[-3:]
            return f"{' '.join(words)} ({m.group(1)})".strip()
    return None


def _plain(text: str) -> str:
    """Lower-case words only: "Fan, The" and "fan the" compare equal."""
    return " ".join(re.findall(r"[a-z0-9']+", text.lower()))


def _is_title(name: str, titles: Sequence[str]) -> bool:
    """``name`` is one of ``titles``, or the opening words of one ("Three Colors" of "Three
    Colors: Red"), in any article order, punctuation ignored."""
    plain = _plain(name)
    if not plain:
        return False
    for t in titles:
        for k in _title_keys(t):
            pk = _plain(k)
            if plain == pk or (len(plain.split()) >= 2 and f"{pk} ".startswith(f"{plain} ")):
                return True
    return False


def _only_titles(text: str, titles: Sequence[str], min_other_words: int = 3) -> bool:
    """``text`` is little more than a list of ``titles`` ("My Best Friend's Wedding (1997)")."""
    rest = f" {_plain(_YEAR_IN_TEXT.sub(' ', text))} "
    for t in titles:
        for k in sorted(_title_keys(t), key=len, reverse=True):
            pk = _plain(k)
            if pk:
                rest = rest.replace(f" {pk} ", " ")
    return len([w for w in rest.split() if w not in {"and", "or", "e", "g", "eg", "like"}]) < min_other_words


# Claims that the user already knows or loves the item being recommended: untrue by construction
# (recommended items are ones the user has not rated), a small model's favourite flourish.
_FALSE_FAMILIARITY = re.compile(
    r"\b(?:(?:is|was|are) (?:a |an |one of )?(?:your |the )?(?:all[- ]time )?favou?rites?"
    r"|favou?rites? of yours|you(?:'ve| have)? (?:already )?(?:seen|watched) (?:it|this)"
    r"|you (?:loved|liked|enjoyed) (?:it|this (?:one|film|movie|title)))\b"
)


def _check_prose(text: str, what: str, min_words: int) -> None:
    """Reject text that talks about the format instead of the taste, loops, or is too short to mean anything."""
    low = text.lower()
    if "json" in low or "{" in text or "<" in text:
        raise Rejected("meta_text", f"the {what} talks about the answer format instead of the titles")
    if len(text.split()) < min_words:
        raise Rejected("too_short", f"the {what} has fewer than {min_words} words")
    loop = _repetitive(text)
    if loop:
        raise Rejected("repetitive", f"the {what} {loop}")


def _sampling(task: str, sampling: SamplingConfig | None) -> SamplingConfig:
    return sampling or DEFAULT_SAMPLING[task]


def _check_unique_ids(personas: Sequence[PersonaInput]) -> list[str]:
    ids = [p.persona_id for p in personas]
    if len(set(ids)) != len(ids):
        raise UsageError("persona ids", ids, "unique ids within one user")
    return ids


def _finish(task: str, prompt, backend, items, counter, llm_error) -> TaskResult:
    result = TaskResult(
        task=task, items=items, provenance=provenance(prompt, backend), fallbacks=counter, llm_error=llm_error
    )
    log.info(
        "%s: %d results, %d from the LLM (%d after retry), %d templates %s%s",
        task,
        counter.total,
        counter.llm + counter.llm_retry,
        counter.llm_retry,
        counter.template,
        counter.fallbacks or "",
        f"; llm_error: {llm_error}" if llm_error else "",
    )
    return result


# -- describe -------------------------------------------------------------------------------
def describe_personas(
    backend: LLMBackend | None,
    personas: Sequence[PersonaInput],
    *,
    sampling: SamplingConfig | None = None,
    max_description_chars: int = MAX_DESCRIPTION_CHARS,
    catalog_categories: Sequence[str] | None = None,
) -> TaskResult[PersonaText]:
    """Name and describe each persona of one user from its evidence (one batched call).

    Checks: names distinct within the user (from the other personas' current names, and later
    duplicates among the answers fall back), descriptions within
    ``max_description_chars`` and mentioning no title of the user's other personas. The
    template keeps the persona's current text when it has one, else builds it from the top
    categories and titles.

    Example:
        >>> p = PersonaInput(persona_id="p1", evidence_titles=["Alien (1979)"], categories={"Sci-Fi": 1.0})
        >>> describe_personas(None, [p]).items[0].name      # no LLM: the template
        'Sci-Fi'
    """
    task, prompt = "describe_personas", load_prompt("describe_persona")
    _check_unique_ids(personas)
    known = [t for p in personas for t in p.evidence_titles] + list(prompt.example_titles)
    jobs = []
    for p in personas:
        others = [q.name for q in personas if q.persona_id != p.persona_id and q.name]

        def check(out: _DescribeOut, p=p, others=others) -> _DescribeOut:
            name, desc = _clean(out.name), _clean(out.description)
            if len(desc) > max_description_chars:
                raise Rejected(
                    "length", f"the description has {len(desc)} characters; at most {max_description_chars}"
                )
            _check_prose(desc, "description", 5)
            made_up = _unanchored_year(name + " " + desc, p.evidence_titles)
            if made_up:
                raise Rejected("invented_title", f"names {made_up!r}, a film not among this taste's titles")
            if name.lower() in {o.lower() for o in others}:
                raise Rejected(
                    "duplicate_name", f"the name {name!r} is already used by another taste of this user"
                )
            foreign = _foreign_titles(name + " " + desc, p.evidence_titles, known)
            if foreign:
                raise Rejected(
                    "foreign_title", f"mentions {foreign[0]!r}, which is not among this taste's titles"
                )
            if _is_title(name, p.evidence_titles):
                raise Rejected("title_as_name", f"the name {name!r} is a title, not a taste")
            if _only_titles(desc, p.evidence_titles):
                raise Rejected("only_titles", "the description lists titles instead of describing a taste")
            if re.search(r"\w+: ?\d", desc):
                raise Rejected("meta_text", "the description lists counts instead of describing a taste")
            if not (_mentions(desc, p.evidence_titles) or _names_category(desc, p.categories)):
                # grounding: a description must rest on this taste's titles or categories
                raise Rejected("ungrounded", "the description names none of this taste's titles or categories")
            cats = {c for c, share in p.categories.items() if share > 0} | set(p.evidence_categories)
            facts = ClaimFacts(titles=p.evidence_titles, categories=cats, tastes=cats, names=[name],
                               known_categories=catalog_categories)
            check_claims(desc, facts)
            check_years(name, facts)  # a name is free to be creative, not to claim other genres or years
            check_genres(without_titles(name, p.evidence_titles), facts)
            return _DescribeOut(name=name, description=desc)

        variables = {
            "titles": p.evidence_titles[:MAX_PROMPT_TITLES],
            "categories": {
                c: round(100 * s) for c, s in sorted(p.categories.items(), key=lambda kv: -kv[1])[:5]
            },
            "avoid_names": others,
            "max_description_chars": max_description_chars,
        }
        schema = copy.deepcopy(prompt.output_schema)
        # (an opening forced on a genre was tried: SmolLM2 then stopped after two words, 0/7 valid)
        schema["properties"]["description"]["maxLength"] = max_description_chars
        jobs.append(Job(variables=variables, schema=schema, check=check))
    counter = FallbackCounter()
    outcomes, llm_error = run_validated(
        backend, prompt, jobs, _DescribeOut, _sampling(task, sampling), counter, task=task
    )
    items: list[PersonaText] = []
    seen: set[str] = set()
    for p, o in zip(personas, outcomes):
        source, reason = o.source, o.reason
        if o.value is not None and o.value.name.lower() in seen:
            source, reason = "template", "duplicate_name"
            counter.reject(reason)
        if source != "template":
            item = PersonaText(
                persona_id=p.persona_id, name=o.value.name, description=o.value.description, source=source
            )
        else:
            item = PersonaText(
                persona_id=p.persona_id,
                name=p.name or _category_name(p.categories),
                description=p.description or _template_description(p),
                source="template",
                fallback_reason=reason,
            )
        seen.add(item.name.lower())
        counter.record(item.source, item.fallback_reason)
        items.append(item)
    return _finish(task, prompt, backend, items, counter, llm_error)


# -- route ----------------------------------------------------------------------------------
def _words(text: str) -> set[str]:
    # a 5-letter prefix is a cheap stemmer: "comedies"/"comedy", "thrilling"/"thriller"
    return {w[:5] for w in _WORD.findall(text.lower()) if w not in _STOP and len(w) > 2}


def template_route(
    request: str,
    personas: Sequence[PersonaInput],
    scores: Mapping[str, float] | None = None,
    max_personas: int = 2,
) -> list[str]:
    """Deterministic routing: by ``scores`` (say, embedding similarity) when given, else word overlap.

    Personas within 80% of the best score join it (up to ``max_personas``). With no signal at
    all (no overlap) every persona is returned: the request does not narrow the user's tastes.
    """
    ids = [p.persona_id for p in personas]
    if scores:
        s = {pid: float(scores.get(pid, float("-inf"))) for pid in ids}
    else:
        req = _words(request)
        s = {}
        for p in personas:
            text = " ".join([p.name, p.description, " ".join(p.categories)])
            s[p.persona_id] = float(len(req & _words(text)))
        if max(s.values(), default=0.0) <= 0:
            return ids
    ranked = sorted(ids, key=lambda pid: (-s[pid], ids.index(pid)))
    best = s[ranked[0]]
    keep = [pid for pid in ranked if s[pid] >= best - abs(best) * 0.2]
    return keep[:max_personas]


def route_request(
    backend: LLMBackend | None,
    requests: str | Sequence[str],
    personas: Sequence[PersonaInput],
    *,
    max_personas: int = 2,
    fallback_scores: Mapping[str, float] | Sequence[Mapping[str, float]] | None = None,
    sampling: SamplingConfig | None = None,
) -> TaskResult[Routing]:
    """The persona ids each conversational request activates, best first (one batched call).

    The schema restricts ids to the user's own (an ``enum``); answers are still checked, as a
    server may ignore the schema. ``fallback_scores`` (per persona, or one mapping per request)
    drive the template, see :func:`template_route`.

    Example:
        >>> ps = [PersonaInput(persona_id="p1", name="Noir"), PersonaInput(persona_id="p2", name="Comedy")]
        >>> route_request(None, "a comedy please", ps).items[0].persona_ids
        ['p2']
    """
    task, prompt = "route_request", load_prompt("route_request")
    if max_personas < 1:
        raise UsageError("max_personas", max_personas, "1 or more")
    ids = _check_unique_ids(personas)
    if not ids:
        raise UsageError("personas", [], "at least one persona to route to")
    texts = [requests] if isinstance(requests, str) else list(requests)
    if isinstance(fallback_scores, Mapping) or fallback_scores is None:
        score_list = [fallback_scores] * len(texts)
    else:
        score_list = list(fallback_scores)
    limit = min(max_personas, len(ids))
    by_label = {p.label(): p.persona_id for p in personas}
    schema = copy.deepcopy(prompt.output_schema)
    schema["properties"]["personas"]["items"]["enum"] = list(by_label)
    schema["properties"]["personas"]["maxItems"] = limit
    cards = [p.card() for p in personas]

    def check(out: _RouteOut) -> list[str]:
        return list(dict.fromkeys(_persona_id(x, by_label) for x in out.personas))[:limit]

    jobs = [
        Job(variables={"personas": cards, "request": t, "max_personas": limit}, schema=schema, check=check)
        for t in texts
    ]
    counter = FallbackCounter()
    outcomes, llm_error = run_validated(
        backend, prompt, jobs, _RouteOut, _sampling(task, sampling), counter, task=task
    )
    items = []
    for t, sc, o in zip(texts, score_list, outcomes):
        if o.value is not None:
            item = Routing(request=t, persona_ids=o.value, source=o.source)
        else:
            item = Routing(
                request=t,
                persona_ids=template_route(t, personas, sc, limit),
                source="template",
                fallback_reason=o.reason,
            )
        counter.record(item.source, item.fallback_reason)
        items.append(item)
    return _finish(task, prompt, backend, items, counter, llm_error)


# -- select ---------------------------------------------------------------------------------
def template_select(
    candidate: CandidateInput, personas: Sequence[PersonaInput], attention: Mapping[str, float] | None = None
) -> str:
    """Deterministic choice: the attention argmax when given, else the best category overlap, then weight."""
    ids = [p.persona_id for p in personas]
    if attention:
        return max(ids, key=lambda pid: (attention.get(pid, float("-inf")), -ids.index(pid)))

    def overlap(p: PersonaInput) -> tuple[float, float, int]:
        return (
            sum(p.categories.get(c, 0.0) for c in candidate.categories),
            p.weight or 0.0,
            -ids.index(p.persona_id),
        )

    return max(personas, key=overlap).persona_id


def select_personas(
    backend: LLMBackend | None,
    candidates: Sequence[CandidateInput],
    personas: Sequence[PersonaInput],
    *,
    attention: Mapping[str, Mapping[str, float]] | None = None,
    sampling: SamplingConfig | None = None,
) -> TaskResult[PersonaChoice]:
    """The persona responsible for each candidate (one batched call for the whole list).

    ``attention`` (item id -> persona id -> weight) is not shown to the model; it drives the
    template, so a fallback agrees with the numeric engine. Combine both with
    :func:`combine_selection`.
    """
    task, prompt = "select_personas", load_prompt("select_persona")
    ids = _check_unique_ids(personas)
    if not ids:
        raise UsageError("personas", [], "at least one persona to choose from")
    by_label = {p.label(): p.persona_id for p in personas}
    schema = copy.deepcopy(prompt.output_schema)
    schema["properties"]["persona"]["enum"] = list(by_label)
    cards = [p.card() for p in personas]

    def check(out: _SelectOut) -> str:
        return _persona_id(out.persona, by_label)

    jobs = [
        Job(
            variables={"personas": cards, "item": {"title": c.title, "categories": c.categories}},
            schema=schema,
            check=check,
        )
        for c in candidates
    ]
    counter = FallbackCounter()
    outcomes, llm_error = run_validated(
        backend, prompt, jobs, _SelectOut, _sampling(task, sampling), counter, task=task
    )
    items = []
    for c, o in zip(candidates, outcomes):
        if o.value is not None:
            item = PersonaChoice(item_id=c.item_id, persona_id=o.value, source=o.source)
        else:
            att = (attention or {}).get(c.item_id)
            item = PersonaChoice(
                item_id=c.item_id,
                persona_id=template_select(c, personas, att),
                source="template",
                fallback_reason=o.reason,
            )
        counter.record(item.source, item.fallback_reason)
        items.append(item)
    return _finish(task, prompt, backend, items, counter, llm_error)


class CombinedChoice(BaseModel):
    """The persona finally credited with one item, and what each signal said."""

    item_id: str
    persona_id: str
    attention_persona_id: str
    llm_persona_id: str | None
    """The LLM's own choice (``None`` when it fell back to the template or was not asked)."""
    decided_by: Literal["attention", "llm", "agreement"]


class SelectionReport(BaseModel):
    """Per-item choices under one mode, and how often the LLM disagreed with attention."""

    mode: Literal["attention", "llm", "both"]
    choices: list[CombinedChoice]
    compared: int
    """Items with both an attention argmax and an LLM-written choice."""
    disagreement_rate: float | None
    """Share of ``compared`` items where the two differ (``None`` when nothing was compared)."""


def combine_selection(
    attention: Mapping[str, Mapping[str, float]],
    llm: TaskResult[PersonaChoice] | None = None,
    mode: Literal["attention", "llm", "both"] = "both",
    *,
    min_attention_share: float = 0.5,
) -> SelectionReport:
    """Choose the responsible persona per item from attention, the LLM, or both.

    * ``attention``: the argmax of the numeric attention (the engine's exact attribution).
    * ``llm``: the LLM's choice where it gave a valid one, else the attention argmax.
    * ``both``: the LLM's choice when the attention it gets is at least ``min_attention_share``
      of the maximum (language breaks near-ties), else the attention argmax: the LLM cannot
      credit a persona the numbers barely support.

    Items are those of ``attention``, in its order.

    Example:
        >>> att = {"i1": {"p1": 0.6, "p2": 0.4}, "i2": {"p1": 0.9, "p2": 0.1}}
        >>> combine_selection(att, None, "attention").choices[0].persona_id
        'p1'
    """
    if mode not in ("attention", "llm", "both"):
        raise UsageError("selection mode", mode, ["attention", "llm", "both"])
    llm_by_item = {}
    if llm is not None:
        llm_by_item = {c.item_id: c.persona_id for c in llm.items if c.source != "template"}
    choices, compared, differ = [], 0, 0
    for item_id, att in attention.items():
        if not att:
            raise UsageError(f"attention of item {item_id!r}", {}, "at least one persona weight")
        top = max(att, key=lambda pid: att[pid])
        pick = llm_by_item.get(item_id)
        if pick is not None:
            compared += 1
            differ += pick != top
        if mode == "attention" or pick is None:
            chosen, by = top, "attention"
        elif pick == top:
            chosen, by = top, "agreement"
        elif mode == "llm":
            chosen, by = pick, "llm"
        else:
            best = att[top]
            ok = att.get(pick, float("-inf")) >= min_attention_share * best if best > 0 else False
            chosen, by = (pick, "llm") if ok else (top, "attention")
        choices.append(
            CombinedChoice(
                item_id=item_id,
                persona_id=chosen,
                attention_persona_id=top,
                llm_persona_id=pick,
                decided_by=by,
            )
        )
    rate = differ / compared if compared else None
    return SelectionReport(mode=mode, choices=choices, compared=compared, disagreement_rate=rate)


# -- explain --------------------------------------------------------------------------------
def template_explanation(rec: RecommendationInput) -> Explanation:
    """Deterministic explanation: the persona and up to two evidence titles."""
    cited = rec.evidence_titles[:2]
    persona = rec.persona_name or rec.persona_id
    if cited:
        text = f"Recommended for your \u201c{persona}\u201d taste, because you enjoyed {_join(cited)}."
    else:
        text = f"Recommended for your \u201c{persona}\u201d taste."
    return Explanation(item_id=rec.item_id, text=text, cited_titles=cited, source="template")


def explain_recommendations(
    backend: LLMBackend | None,
    recommendations: Sequence[RecommendationInput],
    *,
    items_per_request: int = 1,
    max_chars: int = MAX_EXPLANATION_CHARS,
    catalog_titles: Sequence[str] = (),
    catalog_categories: Sequence[str] | None = None,
    sampling: SamplingConfig | None = None,
) -> TaskResult[Explanation]:
    """One explanation per recommendation, from its persona and evidence, in one batched call.

    The list is cut into requests of ``items_per_request`` recommendations (1 suits small
    models and batches best; a large served model can take the whole list in one request), and
    all requests go to the backend in one ``generate`` call. Checks per explanation: it cites
    1-3 titles, all from its own evidence (the schema makes them an ``enum``); its text
    mentions no other known title (the other recommendations' titles and evidence, plus
    ``catalog_titles``); it fits in ``max_chars``. A request whose answer fails falls back for
    all its items.

    Example:
        >>> rec = RecommendationInput(item_id="i9", title="Heat (1995)", persona_id="p1",
        ...                           persona_name="Noir", evidence_titles=["Se7en (1995)"])
        >>> explain_recommendations(None, [rec]).items[0].text
        'Recommended for your “Noir” taste, because you enjoyed Se7en (1995).'
    """
    task, prompt = "explain_recommendations", load_prompt("explain_recommendations")
    newest = max((y for t in catalog_titles if (y := title_year(t)) is not None), default=None)
    lexicon = ClaimFacts(known_categories=catalog_categories).lexicon()
    if items_per_request < 1:
        raise UsageError("items_per_request", items_per_request, "1 or more")
    recs = list(recommendations)
    known = list(
        dict.fromkeys(
            [t for r in recs for t in [r.title, *r.evidence_titles]]
            + list(catalog_titles)
            + list(prompt.example_titles)
        )
    )
    groups = [recs[i : i + items_per_request] for i in range(0, len(recs), items_per_request)]
    example_texts = _example_answers(prompt)
    base = prompt.output_schema
    entry = base["properties"]["explanations"]["items"]
    jobs, job_of_group = [], []
    s = _sampling(task, sampling)
    for g in groups:
        askable = all(r.evidence_titles for r in g)  # nothing to cite: the template says so honestly
        if not askable:
            job_of_group.append(None)
            continue
        schema = copy.deepcopy(base)
        prefix = []
        for k, r in enumerate(g, start=1):
            e = copy.deepcopy(entry)
            e["properties"]["item"] = {"type": "integer", "const": k}
            e["properties"]["cited_titles"]["items"] = {
                "type": "string",
                "enum": list(dict.fromkeys(r.evidence_titles)),
            }
            e["properties"]["cited_titles"]["maxItems"] = min(3, len(set(r.evidence_titles)))
            # grounded by construction: the sentence opens on one of its own evidence titles
            e["properties"]["explanation"]["pattern"] = _grounded_opening(r.evidence_titles[:MAX_PROMPT_TITLES])
            for bound in ("minLength", "maxLength"):  # xgrammar ignores them beside a pattern; checked after
                e["properties"]["explanation"].pop(bound, None)
            prefix.append(e)
        arr = schema["properties"]["explanations"]
        arr.pop("items", None)
        arr.update(prefixItems=prefix, items=False, minItems=len(g), maxItems=len(g))

        def check(out: _ExplainOut, g=g) -> list[_ExplainEntry]:
            if len(out.explanations) != len(g):
                raise Rejected("count", f"{len(out.explanations)} explanations for {len(g)} items")
            for k, (ex, r) in enumerate(zip(out.explanations, g), start=1):
                if ex.item != k:
                    raise Rejected("count", f"entry {k} is numbered {ex.item}")
                bad = [t for t in ex.cited_titles if t not in r.evidence_titles]
                if bad:
                    raise Rejected(
                        "uncited_title", f"item {k} cites {bad[0]!r}, which is not in its evidence"
                    )
                text = _clean(ex.explanation)
                _check_prose(text, f"explanation of item {k}", 6)
                claim = _FALSE_FAMILIARITY.search(text.lower())
                if claim:
                    raise Rejected("false_claim", f"item {k} says {claim.group(0)!r} of a title the user has "
                                                  "not seen yet")
                made_up = _unanchored_year(text, [r.title, *r.evidence_titles])
                if made_up:
                    raise Rejected("invented_title", f"item {k} names {made_up!r}, a film not in its evidence")
                desc = _clean(r.persona_description).lower()
                if len(desc) >= 30 and desc in text.lower():
                    raise Rejected(
                        "copied_input", f"item {k} repeats the persona description instead of explaining"
                    )
                if len(text) > max_chars:
                    raise Rejected("length", f"item {k}: {len(text)} characters; at most {max_chars}")
                copied = _copied_from(text, example_texts)
                if copied:
                    raise Rejected("copied_example", f"item {k} copies the prompt's example ({copied!r})")
                named = _mentions(text, r.evidence_titles)
                if not named:
                    # grounding: the sentence itself must name what it rests on
                    raise Rejected("ungrounded", f"item {k}'s explanation names none of its evidence titles")
                ex.cited_titles = [*ex.cited_titles, *named]  # what the text names is cited too
                foreign = _foreign_titles(text, [r.title, *r.evidence_titles], known)
                if foreign:
                    raise Rejected(
                        "foreign_title", f"item {k} mentions {foreign[0]!r}, which is not in its evidence"
                    )
                tastes = set(r.user_tastes) or {c for c, _ in genres_named(r.persona_name, lexicon)}
                check_claims(text, ClaimFacts(titles=[r.title, *r.evidence_titles],
                                              categories={*r.categories, *r.evidence_categories},
                                              tastes=tastes, names=[r.persona_name], newest_year=newest,
                                              item_title=r.title, known_categories=catalog_categories))
                ex.explanation = text
                ex.cited_titles = list(dict.fromkeys(ex.cited_titles))
            return out.explanations

        rows = [
            {
                "title": r.title,
                "categories": r.categories,
                "persona_name": r.persona_name,
                "persona_description": r.persona_description,
                "evidence_titles": r.evidence_titles[:MAX_PROMPT_TITLES],
            }
            for r in g
        ]
        job_of_group.append(len(jobs))
        jobs.append(
            Job(variables={"recommendations": rows, "max_chars": max_chars}, schema=schema, check=check)
        )
    s = s.model_copy(update={"max_tokens": s.max_tokens * items_per_request})
    counter = FallbackCounter()
    outcomes, llm_error = run_validated(backend, prompt, jobs, _ExplainOut, s, counter, task=task)
    items: list[Explanation] = []
    for g, j in zip(groups, job_of_group):
        o = outcomes[j] if j is not None else None
        for k, r in enumerate(g):
            if o is not None and o.value is not None:
                ex = o.value[k]
                item = Explanation(
                    item_id=r.item_id, text=ex.explanation, cited_titles=ex.cited_titles, source=o.source
                )
            else:
                item = template_explanation(r)
                item.fallback_reason = o.reason if o is not None else "no_evidence"
            counter.record(item.source, item.fallback_reason)
            items.append(item)
    return _finish(task, prompt, backend, items, counter, llm_error)
