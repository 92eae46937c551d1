"""Reading a request into a typed :class:`~personas.request.Request`, by rules (no model).

The rules know the words people use for genres and moods ("something light and funny",
"a scary movie", "for kids"), periods ("from the 80s", "before 1970", "something recent"),
references ("like Star Wars", "more like the second one"), refusals ("not Batman", "no horror")
and follow-ups ("more", "other ones"). What they cannot check against the catalog ("not too
long": there are no running times) is recorded in ``Request.unsupported`` so that the reply can
say so. Words left over become free-text ``content``, matched against the catalog's text index.

Example:
    >>> ctx = ParseContext(categories=("Comedy", "Horror", "Thriller"), titles=("Heat (1995)",))
    >>> parse_request("a scary movie from the 80s", ctx).wanted_categories
    ['Horror', 'Thriller']
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from personas.request import Period, Request

# mood / genre words -> ML-style category names (kept only when the catalog has the category)
_GENRE_WORDS: dict[str, tuple[str, ...]] = {
    r"funny|comed(y|ies)|comic|hilarious|laugh(s|ter)?|humou?r(ous)?|silly|goofy|lighthearted|light-hearted|"
    r"feel-?good|cheerful|uplifting|rom-?coms?": ("Comedy",),
    r"light": ("Comedy",),
    r"scary|scare|frightening|terrifying|creepy|spooky": ("Horror", "Thriller"),
    r"horror|slasher|zombies?|haunted|gory|vampires?|werewolf|werewolves": ("Horror",),
    r"thrillers?|suspense(ful)?|tense|nail-?biting|gripping": ("Thriller",),
    r"romantic|romance|love stor(y|ies)|date night|rom-?coms?": ("Romance",),
    r"action|action-packed|explosions?|adrenaline|shoot-?outs?|martial arts": ("Action",),
    r"adventures?|adventurous|quests?|swashbuckl\w*": ("Adventure",),
    r"animated|animation|cartoons?|anime": ("Animation",),
    r"kids|children'?s?|child|family|for my (son|daughter)|little ones": ("Children's",),
    r"crime|gangsters?|mafia|mob|heists?|criminals?": ("Crime",),
    r"documentar(y|ies)|docs?": ("Documentary",),
    r"dramas?|dramatic|tear-?jerkers?|moving|serious|emotional": ("Drama",),
    r"fantasy|magic(al)?|fairy[- ]?tales?|dragons?|wizards?": ("Fantasy",),
    r"noir|film-noir": ("Film-Noir",),
    r"musicals?|singing|song-and-dance": ("Musical",),
    r"myster(y|ies)|whodunn?its?|detectives?|puzzl(e|ing)": ("Mystery",),
    r"sci-?fi|science[- ]fiction|space|futuristic|robots?|aliens?|outer space": ("Sci-Fi",),
    r"war|wartime|battles?|soldiers?|ww(ii|2)|world war": ("War",),
    r"westerns?|cowboys?|wild west": ("Western",),
}
# moods that rule genres out when asked for ("something light" is not a war film)
_MOOD_EXCLUDES: dict[str, tuple[str, ...]] = {
    r"light|lighthearted|light-hearted|feel-?good|cheerful|uplifting": ("Horror", "War", "Film-Noir"),
    r"kids|children'?s?|child|family|for my (son|daughter)|little ones": ("Horror", "Film-Noir", "Crime"),
}
_VIOLENT = r"violent|violence|gory|bloody|brutal"
_VIOLENT_GENRES = ("Horror", "War", "Crime", "Action")

_NEGATION = re.compile(r"\b(no|not|nothing|without|avoid|except|never|anything but|but not|other than|"
                       r"don'?t (want|like|need)|isn'?t|non)\b[\s\w'-]{0,20}$", re.I)
_CUE_LIKE = re.compile(r"\b(like|similar to|as good as|such as|in the vein of|reminds? me of|same as|"
                       r"fans? of|enjoyed|loved|along the lines of|than)\s*$", re.I)
_CUE_NOT = re.compile(r"\b(not|no|except|without|other than|anything but|seen|already seen|watched)\s*$", re.I)

_DECADE_WORDS = {"twenties": 1920, "thirties": 1930, "forties": 1940, "fifties": 1950, "sixties": 1960,
                 "seventies": 1970, "eighties": 1980, "nineties": 1990}
_DECADE_FULL = re.compile(r"\b(1[89]\d0|20[0-2]0)'?s\b", re.I)
_DECADE_SHORT = re.compile(r"(?<![\w])'?([2-9]0)'?s\b", re.I)
_BETWEEN = re.compile(r"\b(?:between|from)\s+(1[89]\d\d|20\d\d)\s+(?:and|to|until|till)\s+(1[89]\d\d|20\d\d)\b|"
                      r"\b(1[89]\d\d|20\d\d)\s*[-\u2013]\s*(1[89]\d\d|20\d\d)\b", re.I)
_BEFORE = re.compile(r"\b(?:before|pre-?|older than|earlier than|up to|until)\s*(1[89]\d\d|20\d\d)\b", re.I)
_AFTER = re.compile(r"\b(?:after|since|post-?|newer than|later than)\s*(1[89]\d\d|20\d\d)\b|"
                    r"\bfrom\s+(1[89]\d\d|20\d\d)\s+(?:on|onwards?)\b", re.I)
_IN_YEAR = re.compile(r"\b(?:in|of|from|released in|made in)\s+(1[89]\d\d|20\d\d)\b", re.I)
_OLD = re.compile(r"\b(old|older|classics?|vintage|golden age|black and white|black-and-white)\b", re.I)
_RECENT = re.compile(r"\b(recent|new|newer|newest|latest|modern|current)\b", re.I)

_MORE = re.compile(r"^\s*(more|more please|some more|others?|other ones|other options|another( one)?|"
                   r"anything else|something else|next|show me more|different ones|more of (that|those|these)|"
                   r"more like (that|this|those|these))\s*[.!?]*\s*$", re.I)
_UNSUPPORTED = {r"\b(not too long|short|shorter|under (two|2|an?|one|1)\s*(hours?|h)|quick watch|brief)\b":
                "running time (the catalog has no film lengths)",
                r"\b(long|epic length|over (two|three|2|3) hours)\b(?! time)": "running time (the catalog has no film lengths)",
                r"\b(in (french|spanish|german|italian|japanese|english)|subtitled|subtitles|foreign language)\b":
                "language (the catalog has no languages)",
                r"\b(on netflix|streaming|free to watch|on tv)\b": "where to watch (the catalog has no providers)",
                r"\b(oscar|award[- ]winning|critically acclaimed|highly rated)\b": "awards and critics (the catalog has none)"}
_STOP = set("""a an the i me my we our you your something some somethin anything any movie movies film films flick
flicks one ones to watch see tonight today tomorrow weekend please want wanna would like love could can
show give recommend suggest find get me for with and or of in on at about that this it is be maybe perhaps
really very good great nice fun kind sort type bit little just also more less too im i'm id i'd let's lets
what how some thing stuff pick picks option options mood feel feeling night evening now new old kinda sorta
which will shall should need looking look hey hi hello there so but not no nothing without from by as
mostly quite pretty lot lots much many others other else another similar same""".split())


@dataclass
class ParseContext:
    """What the rules may look at besides the message."""

    categories: Sequence[str] = ()
    """The catalog's categories (only these can be wanted or unwanted)."""
    titles: Sequence[str] = ()
    """Every catalog title, in catalog order (``item_ids`` gives their ids)."""
    item_ids: Sequence[str] = ()
    """Catalog item ids, in the order of ``titles``."""
    max_year: int | None = None
    """The newest release year in the catalog ("recent" is relative to it)."""
    min_year: int | None = None
    """The oldest release year in the catalog."""
    last_list: Sequence[str] = ()
    """Item ids of the list last shown in this thread (what "the second one" means)."""
    shown: Sequence[str] = ()
    """Every item id shown in this thread."""
    refused: Sequence[str] = ()
    """Item ids the person refused in this thread (never shown again)."""
    previous: Request | None = None
    """The thread's previous request ("more" repeats it)."""
    persona_categories: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    """Persona id -> its category shares (which personas a genre request activates)."""
    reference: int | None = None
    """A list position the message names ("the second one"), found by the intent reader."""
    title_index: object | None = None
    """A prebuilt :class:`agent.llm.tasks.TitleIndex` over ``titles`` (built here when None)."""


def _known(ctx: ParseContext) -> dict[str, str]:
    return {c.lower(): c for c in ctx.categories}


def _category_hits(text: str, ctx: ParseContext) -> tuple[list[str], list[str], list[tuple[int, int]]]:
    """(wanted, unwanted, spans): categories the text names, split by negation, and where."""
    known = _known(ctx)
    wanted: list[str] = []
    unwanted: list[str] = []
    spans: list[tuple[int, int]] = []
    # a category named by its own catalog name counts too ("Film-Noir", "Crime")
    patterns = dict(_GENRE_WORDS)
    for low, name in known.items():
        if low != "unknown":
            patterns.setdefault(re.escape(low), (name,))

    def add(lst: list[str], names) -> None:
        for n in names:
            c = known.get(n.lower())
            if c and c not in lst:
                lst.append(c)

    for pat, names in patterns.items():
        for m in re.finditer(r"(?<![\w-])(" + pat + r")(?![\w-])", text, re.I):
            if pat == "light" and re.match(r"\s*(of|year|saber|house|s\b)", text[m.end():], re.I):
                continue  # "light of day", "lightsaber": not a mood
            spans.append(m.span())
            negated = bool(_NEGATION.search(text[: m.start()][-40:]))
            add(unwanted if negated else wanted, names)
            if not negated:
                for mpat, excl in _MOOD_EXCLUDES.items():
                    if re.fullmatch(mpat, m.group(1), re.I):
                        add(unwanted, excl)
    for m in re.finditer(r"(?<![\w-])(" + _VIOLENT + r")(?![\w-])", text, re.I):
        spans.append(m.span())
        if _NEGATION.search(text[: m.start()][-40:]) or re.search(r"\btoo\s*$", text[: m.start()], re.I):
            add(unwanted, _VIOLENT_GENRES)
    unwanted = [c for c in unwanted if c not in wanted or _explicitly_negated(text, c)]
    wanted = [c for c in wanted if c not in unwanted]
    return wanted, unwanted, spans


def _explicitly_negated(text: str, category: str) -> bool:
    return bool(re.search(r"\b(no|not|without)\s+(a\s+|an\s+)?" + re.escape(category.lower()), text.lower()))


def _period(text: str, max_year: int | None) -> tuple[Period | None, list[tuple[int, int]]]:
    spans: list[tuple[int, int]] = []
    m = _BETWEEN.search(text)
    if m:
        a, b = [int(x) for x in m.groups() if x][:2]
        spans.append(m.span())
        return Period(start=min(a, b), end=max(a, b)), spans
    m = _DECADE_FULL.search(text)
    if m:
        d = int(m.group(1))
        spans.append(m.span())
        return Period(start=d, end=d + 9), spans
    m = _DECADE_SHORT.search(text)
    if m:
        d = 1900 + int(m.group(1))
        spans.append(m.span())
        return Period(start=d, end=d + 9), spans
    for word, d in _DECADE_WORDS.items():
        m = re.search(r"\b" + word + r"\b", text, re.I)
        if m:
            spans.append(m.span())
            return Period(start=d, end=d + 9), spans
    m = _BEFORE.search(text)
    if m:
        spans.append(m.span())
        return Period(end=int(m.group(1)) - (0 if re.search(r"up to|until", m.group(0), re.I) else 1)), spans
    m = _AFTER.search(text)
    if m:
        spans.append(m.span())
        y = int(m.group(1) or m.group(2))
        if m.group(2):
            return Period(start=y), spans
        return Period(start=y + (1 if re.match(r"after|newer|later|post", m.group(0), re.I) else 0)), spans
    m = _IN_YEAR.search(text)
    if m:
        spans.append(m.span())
        y = int(m.group(1))
        return Period(start=y, end=y), spans
    if max_year:
        m = _OLD.search(text)
        if m and not re.search(r"\bhow old\b", text, re.I):
            spans.append(m.span())
            return Period(end=max_year - 20), spans
        m = _RECENT.search(text)
        if m:
            spans.append(m.span())
            return Period(start=max_year - 4), spans
    return None, spans


def _titles(text: str, ctx: ParseContext) -> list[tuple[int, int, int, str]]:
    """``(catalog position, start char, end char, cue)`` for each title the text names, longest
    first; ``cue`` is ``like``, ``not`` or ``named``. A title counts only when the person clearly
    means it: after a cue ("like", "not"), or written with capitals, or three words or longer
    (so that "a ghost story" is not a request for *Ghost*)."""
    if not ctx.titles:
        return []
    index = ctx.title_index
    if index is None:
        from agent.llm.tasks import title_index

        index = title_index(tuple(ctx.titles))
        ctx.title_index = index
    out = []
    for pos, words in index.find(text):
        pattern = r"(?<![\w])" + r"[\W_]+".join(re.escape(w) for w in words) + r"(?![\w])"
        m = re.search(pattern, text, re.I)
        if m is None:
            continue
        before = text[: m.start()]
        cue = "not" if _CUE_NOT.search(before) else "like" if _CUE_LIKE.search(before) else "named"
        original = m.group(0)
        capitalised = any(w[:1].isupper() for w in re.findall(r"[A-Za-z0-9']+", original)
                          if w.lower() not in ("the", "a", "an", "of", "and"))
        if cue == "named" and not (capitalised or len(words) >= 3):
            continue
        if len(words) == 1 and len(words[0]) < 5 and cue == "named":
            continue
        if all(w in _STOP or _is_genre_word(w) for w in words) and not capitalised:
            continue  # "a love story": genre words, not the 1970 film
        out.append((pos, m.start(), m.end(), cue))
    out.sort(key=lambda t: t[1] - t[2])
    # drop a title inside a longer one ("Alien" inside "Aliens vs ...")
    kept: list[tuple[int, int, int, str]] = []
    for t in out:
        if not any(k[1] <= t[1] and t[2] <= k[2] for k in kept):
            kept.append(t)
    return kept


def _is_genre_word(w: str) -> bool:
    return any(re.fullmatch(p, w, re.I) for p in _GENRE_WORDS)


def _blank(text: str, spans: list[tuple[int, int]]) -> str:
    """``text`` with the characters of ``spans`` replaced by spaces (offsets stay valid)."""
    chars = list(text)
    for a, b in spans:
        for i in range(a, b):
            chars[i] = " "
    return "".join(chars)


def _content(text: str, spans: list[tuple[int, int]]) -> str | None:
    """Words the other rules did not use, when they say something (two letters or more, not filler)."""
    words = [w for w in re.findall(r"[a-z][a-z'-]+", _blank(text, spans).lower()) if w not in _STOP and len(w) > 2]
    words = [w for w in words if not _is_genre_word(w)]
    return " ".join(words) if words else None


def activated_personas(wanted: Sequence[str], persona_categories: Mapping[str, Mapping[str, float]],
                       min_share_of_best: float = 0.5) -> list[str]:
    """Personas whose category mix covers the wanted categories at least ``min_share_of_best``
    as well as the best-covering persona does (none when no persona has any of them)."""
    if not wanted or not persona_categories:
        return []
    scores = {pid: sum(float(cats.get(c, 0.0)) for c in wanted) for pid, cats in persona_categories.items()}
    best = max(scores.values())
    if best <= 0:
        return []
    return [pid for pid, s in scores.items() if s >= min_share_of_best * best]


def repeats_previous(message: str, ctx: ParseContext) -> bool:
    """True for "more", "other ones"...: the thread's previous request again, on new titles."""
    return ctx.previous is not None and bool(_MORE.match((message or "").strip()))


def parse_request(message: str, ctx: ParseContext) -> Request:
    """The rules' reading of ``message`` as a :class:`Request` (see the module docstring)."""
    text = (message or "").strip()
    ids = list(ctx.item_ids)
    exclude = list(dict.fromkeys(list(ctx.refused)))
    # "more", "other ones": the previous request again, without what this thread showed
    if repeats_previous(text, ctx):
        prev = ctx.previous
        excl = list(dict.fromkeys([*prev.exclude_items, *exclude, *ctx.shown]))
        ref, label = prev.reference_item, prev.reference_label
        if re.search(r"like (that|this)", text, re.I) and ctx.reference and 1 <= ctx.reference <= len(ctx.last_list):
            ref, label = ctx.last_list[ctx.reference - 1], "that one"
        return prev.model_copy(update={"text": text, "exclude_items": excl, "reference_item": ref,
                                       "reference_label": label, "source": "rules"})
    named = _titles(text, ctx)
    blanked = _blank(text, [(a, b) for _, a, b, _ in named])  # "like Aliens" is not a Sci-Fi request
    wanted, unwanted, spans = _category_hits(blanked, ctx)
    period, pspans = _period(blanked, ctx.max_year)
    spans += pspans
    reference_item = reference_label = None
    # "more like the second one", "like #3": a position in the last list
    if ctx.reference is not None and 1 <= ctx.reference <= len(ctx.last_list) and re.search(
            r"\b(like|similar|more|same)\b", text, re.I):
        reference_item = ctx.last_list[ctx.reference - 1]
        reference_label = _reference_words(text) or f"#{ctx.reference}"
        spans.append((0, len(text)))  # the words only name the item
    for pos, a, b, cue in named:
        if pos >= len(ids):
            continue
        spans.append((a, b))
        if cue == "not":
            exclude.append(ids[pos])
        elif reference_item is None:
            reference_item, reference_label = ids[pos], text[a:b]
    exclude += list(ctx.shown)  # a thread never shows a title twice: every list is new titles
    if reference_item is not None:
        exclude.append(reference_item)
    unsupported = []
    for pat, what in _UNSUPPORTED.items():
        m = re.search(pat, text, re.I)
        if m:
            spans.append(m.span())
            if what not in unsupported:
                unsupported.append(what)
    for m in re.finditer(r"\b(nothing|not|anything)\s+(i'?ve|i have|i already)\s+(seen|watched)\b", text, re.I):
        spans.append(m.span())  # seen titles are never recommended anyway
    content = _content(text, spans) if reference_item is None else None
    personas = activated_personas(wanted, ctx.persona_categories)
    return Request(text=text, wanted_categories=wanted, unwanted_categories=unwanted, content=content,
                   reference_item=reference_item, reference_label=reference_label, period=period,
                   exclude_items=list(dict.fromkeys(exclude)), personas=personas, unsupported=unsupported,
                   source="rules")


def _reference_words(text: str) -> str | None:
    m = re.search(r"\b(the\s+)?(first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth|last|"
                  r"#\s*\d+|number\s+\d+)(\s+one)?\b", text, re.I)
    return m.group(0) if m else None


__all__ = ["ParseContext", "activated_personas", "parse_request", "repeats_previous"]
