"""Fact checks on what a model writes about films and tastes: every claim must be true of the data.

A small model's sentence can cite the right evidence and still be false ("this classic comedy
has aired in 1984" of a 1992 drama, "your tastes for Westerns" for a user with none, "a must-buy
for any D&D fan", "if you enjoyed Aliens and Crows" when the evidence is *The Crow*). The checks
here narrow what a sentence may say to what the catalog and the user's personas support:

* **years**: every year it names is the release year of a title it may talk about;
* **genres**: a genre it names is one of the item's categories, or of the tastes it may speak
  of (the persona's, the user's); "classic" only for a film at least ``classic_age`` years older
  than the newest film of the catalog;
* **tastes**: "your love of X", "your taste for X" name a genre of the user's own personas;
* **names**: a capitalised word that is not a sentence opener must come from a title it may
  cite, a category, or the persona's name (no invented films, fandoms or people);
* **unverifiable praise**: awards, box office, "must-see", "any X fan", "one of the most popular
  films in the history of cinema", "iconic": the catalog has no such facts, so the model may not
  claim them.

Each check raises :class:`~agent.llm.validated.Rejected` with a reason the fallback counters
count (``wrong_year``, ``wrong_genre``, ``wrong_taste``, ``unknown_name``, ``unverifiable``).

Example:
    >>> facts = ClaimFacts(titles=["Heat (1995)"], categories={"Crime", "Thriller"}, tastes={"Crime"})
    >>> check_claims("Because you enjoyed Heat, this crime thriller should grip you.", facts)
    >>> check_claims("Since you enjoyed Heat, this classic comedy has aired in 1984.", facts)
    Traceback (most recent call last):
    ...
    agent.llm.validated.Rejected: wrong_year: it names 1984, the year of none of its titles
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from agent.llm.validated import Rejected

# genre words a sentence may use -> the catalog category each one claims (MovieLens names; a
# catalog without the category makes the word a claim nothing can support)
GENRE_WORDS: dict[str, str] = {
    "comedy": "Comedy", "comedies": "Comedy", "comedic": "Comedy", "funny": "Comedy",
    "drama": "Drama", "dramas": "Drama",
    "thriller": "Thriller", "thrillers": "Thriller",
    "horror": "Horror", "scary": "Horror",
    "western": "Western", "westerns": "Western",
    "action": "Action",
    "adventure": "Adventure", "adventures": "Adventure",
    "animated": "Animation", "animation": "Animation", "cartoon": "Animation", "cartoons": "Animation",
    "children's": "Children's", "kids": "Children's",
    "crime": "Crime", "gangster": "Crime", "heist": "Crime",
    "documentary": "Documentary", "documentaries": "Documentary",
    "fantasy": "Fantasy",
    "noir": "Film-Noir",
    "musical": "Musical", "musicals": "Musical",
    "mystery": "Mystery", "mysteries": "Mystery", "whodunit": "Mystery",
    "romance": "Romance", "romantic": "Romance", "romances": "Romance",
    "sci-fi": "Sci-Fi", "science-fiction": "Sci-Fi", "scifi": "Sci-Fi", "space": "Sci-Fi",
    "war": "War",
}
# praise the catalog cannot back: awards, sales, fandoms, imperatives to buy
_UNVERIFIABLE = re.compile(
    r"\b(must[- ](?:buy|see|watch|have|own)|a must\b|oscars?|academy awards?|award[- ]winning|awards?|"
    r"acclaimed|box[- ]office|blockbusters?|best[- ]sell\w*|critics?|reviewers?|masterpieces?|"
    r"(?:any|every|all|true|real)\s+(?:[\w&'-]+\s+){0,2}fans?|fans? of|cult (?:classic|hit|favou?rite)|"
    r"(?:the\s+)?most\s+(?:popular|famous|celebrated|beloved|influential|successful|watched|loved)|"
    r"greatest|of all[- ]time|all[- ]time|in (?:the )?history of (?:cinema|film|movies)|ever made|"
    r"legendary|iconic|world[- ]famous|widely regarded|highly rated|top[- ]rated|record[- ]breaking)\b",
    re.I)
_TASTE = re.compile(r"\byour\s+(?:\w+\s+){0,2}?(?:taste|tastes|love|passion|interest|fondness|liking|"
                    r"appreciation|penchant)\s+(?:for|of|in)\s+((?:[\w'-]+[\s,]+){0,5}[\w'-]+)", re.I)
_YEAR = re.compile(r"(?<!\d)(1[89]\d\d|20\d\d)(?!\d)")
_TITLE_YEAR = re.compile(r"\((\d{4})\)\s*$")
_SENTENCE_OPENERS = frozenset("""a an the this that these those it its if since because as and but or so for
with while when what who i you your we they he she there here now then also both each every one such
so just yet though although however overall perhaps maybe""".split())
_ALWAYS_ALLOWED = frozenset({"i", "i'm", "i'd", "i've", "you", "your", "tv", "dvd", "ok"})


@dataclass
class ClaimFacts:
    """What a sentence may speak of."""

    titles: Iterable[str] = ()
    """Titles it may name (the item and its evidence, as the catalog writes them)."""
    categories: set[str] = field(default_factory=set)
    """Categories it may attribute to the item (the item's own, and those of titles it cites)."""
    tastes: set[str] = field(default_factory=set)
    """Categories of the user's tastes it may speak of (the persona's, or all the user's personas')."""
    names: Iterable[str] = ()
    """Other names it may use (the persona's name)."""
    newest_year: int | None = None
    """The newest release year in the catalog ("classic" is relative to it)."""
    classic_age: int = 20
    """A film is a "classic" when it is at least this many years older than ``newest_year``."""
    item_title: str | None = None
    """The title of the item the sentence is about (for "classic")."""
    known_categories: Iterable[str] | None = None
    """The catalog's categories: a genre word claims something only when its category is one of
    them, and each of them, named as a word, is a genre word too (None: the MovieLens genres)."""

    def lexicon(self) -> dict[str, str]:
        """Genre word -> the category it claims, for this catalog."""
        if self.known_categories is None:
            return GENRE_WORDS
        known = set(self.known_categories)
        words = {w: c for w, c in GENRE_WORDS.items() if c in known}
        for c in known:
            low = c.lower()
            words.setdefault(low, c)
            words.setdefault(low + "s", c)
        return words


def title_year(title: str) -> int | None:
    m = _TITLE_YEAR.search(title)
    return int(m.group(1)) if m else None


def genres_named(text: str, lexicon: dict[str, str] | None = None) -> list[tuple[str, int]]:
    """``(category, character offset)`` for each genre word in ``text`` (``lexicon``: genre word
    -> category, default :data:`GENRE_WORDS`)."""
    words = GENRE_WORDS if lexicon is None else lexicon
    out = []
    for m in re.finditer(r"[a-z][a-z'&-]*", text.lower()):
        w = m.group(0).strip("'")
        if w in words:
            out.append((words[w], m.start()))
        elif "-" in w:  # "action-packed", "sci-fi-laden": the first part may be a genre
            head = w.split("-")[0]
            if w.startswith(("sci-fi", "science-fiction")) and "sci-fi" in words:
                out.append((words["sci-fi"], m.start()))
            elif head in words and head not in ("space",):
                out.append((words[head], m.start()))
    return out


def without_titles(text: str, titles: Iterable[str]) -> str:
    """``text`` with every mention of ``titles`` blanked (any article order, year optional), so
    that the words of a title ("War Games", "The Crow") are not read as claims."""
    out = text
    keys = set()
    for t in titles:
        base = _TITLE_YEAR.sub("", t).strip()
        keys.add(base)
        m = re.match(r"^(.*), (The|A|An|Il|La|Le|Les|L'|Das|Der|Die|El|Los)$", base)
        if m:
            keys |= {f"{m.group(2)} {m.group(1)}", m.group(1)}
    for k in sorted(keys, key=len, reverse=True):
        if len(k) >= 2:
            out = re.sub(r"(?<![\w])" + re.escape(k) + r"(\s*\(\d{4}\))?(?![\w])", " ", out, flags=re.I)
    return out


def check_years(text: str, facts: ClaimFacts) -> None:
    allowed = {y for t in facts.titles if (y := title_year(t)) is not None}
    for m in _YEAR.finditer(text):
        if int(m.group(1)) not in allowed:
            raise Rejected("wrong_year", f"it names {m.group(1)}, the year of none of its titles")


def check_genres(text: str, facts: ClaimFacts) -> None:
    allowed = set(facts.categories) | set(facts.tastes)
    for cat, _ in genres_named(text, facts.lexicon()):
        if cat not in allowed:
            raise Rejected("wrong_genre", f"it calls something {cat}, which neither the item nor the taste is")
    if re.search(r"\bclassics?\b", text, re.I):
        year = title_year(facts.item_title or "")
        if year is None or facts.newest_year is None or facts.newest_year - year < facts.classic_age:
            raise Rejected("wrong_genre", f"it calls a {year or 'recent'} film a classic")


def check_tastes(text: str, facts: ClaimFacts) -> None:
    for m in _TASTE.finditer(text):
        named = [c for c, _ in genres_named(m.group(1), facts.lexicon())]
        bad = [c for c in named if c not in facts.tastes]
        if bad:
            raise Rejected("wrong_taste", f"it speaks of the user's taste for {bad[0]}, which none of their "
                                          "personas holds")


def _allowed_words(facts: ClaimFacts) -> set[str]:
    words: set[str] = set(_ALWAYS_ALLOWED)
    for t in [*facts.titles, *facts.names, *facts.categories, *facts.tastes]:
        words |= {w.lower() for w in re.findall(r"[A-Za-z0-9][\w'&.-]*", t)}
    words |= set(facts.lexicon())
    return words


def check_names(text: str, facts: ClaimFacts) -> None:
    allowed = _allowed_words(facts)
    for m in re.finditer(r"[A-Za-z][\w'&.-]*", text):
        word = m.group(0).rstrip(".'")
        if not word[:1].isupper() and not any(c.isupper() for c in word[1:]) and "&" not in word:
            continue
        before = text[: m.start()].rstrip()
        opener = not before or before[-1] in ".!?:;\"(\u201c"
        low = word.lower()
        if low in allowed or (low.endswith("'s") and low[:-2] in allowed):
            continue
        if opener:
            # any word may open a sentence; a capitalised run after it is a name ("Star Trek fans")
            after = re.match(r"\s+([A-Z][\w'&.-]*)", text[m.end():])
            if low in _SENTENCE_OPENERS or after is None or after.group(1).lower() in allowed:
                continue
        raise Rejected("unknown_name", f"it names {word!r}, which is none of its titles, genres or tastes")


def check_unverifiable(text: str) -> None:
    m = _UNVERIFIABLE.search(text)
    if m:
        raise Rejected("unverifiable", f"it claims {m.group(0)!r}, which the catalog cannot support")


def check_claims(text: str, facts: ClaimFacts) -> None:
    """Every check of the module docstring, in order; raises :class:`Rejected` on the first failure."""
    check_unverifiable(text)
    check_years(text, facts)
    prose = without_titles(text, facts.titles)  # a title's own words are not claims about genres
    check_tastes(prose, facts)
    check_genres(prose, facts)
    check_names(text, facts)


__all__ = ["GENRE_WORDS", "ClaimFacts", "check_claims", "check_genres", "check_names", "check_tastes",
           "check_unverifiable", "check_years", "genres_named", "title_year", "without_titles"]
