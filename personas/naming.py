"""Persona text without an LLM: names from dominant categories, descriptions from representative titles.

An LLM can rewrite the text later (``PersonaWriter``); this template is the always-available
fallback, so induction never depends on a model.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

_YEAR = re.compile(r"\((\d{4})\)\s*$")


@dataclass
class PersonaDraft:
    """What naming needs to know about one induced cluster."""

    persona_id: str
    titles: list[str]
    """Evidence titles, most representative first."""
    category_shares: dict[str, float]
    """Share of each category over the cluster's items (sums to 1 over categories)."""
    lift: dict[str, float] = field(default_factory=dict)
    """Category share in the cluster over its share in the user's whole history."""
    weight: float = 0.0
    n_items: int = 0


class PersonaWriter(ABC):
    """Writes persona names and descriptions for a user's drafts (an LLM does this in ``agent``)."""

    @abstractmethod
    def write(self, user_id: str, drafts: Sequence[PersonaDraft]) -> list[tuple[str, str]]:
        """(name, description) per draft, in order."""


def _decade(titles: Sequence[str]) -> str | None:
    years = [int(m.group(1)) for t in titles if (m := _YEAR.search(t))]
    if len(years) < 3:
        return None
    decades = Counter(y // 10 * 10 for y in years)
    dec, n = decades.most_common(1)[0]
    if n / len(years) >= 0.6:
        return f"the {dec}s"
    return None


_ARTICLE = re.compile(r"^(.*), (The|A|An|Il|La|Le|Les|L'|Das|Der|Die|El|Los)$")


def _strip_year(title: str) -> str:
    """``"Professional, The (1994)"`` -> ``"The Professional"`` (MovieLens files move articles last)."""
    t = _YEAR.sub("", title).strip()
    m = _ARTICLE.match(t)
    return f"{m.group(2)} {m.group(1)}".replace("L' ", "L'") if m else t


def _median_year(titles: Sequence[str]) -> int | None:
    years = [int(m.group(1)) for t in titles if (m := _YEAR.search(t))]
    return int(np.median(years)) if years else None


def _era(year: int | None) -> str | None:
    """A persona's era as a name prefix: "1990s", "1980s"..., "Classic" before 1970."""
    if year is None:
        return None
    return "Classic" if year < 1970 else f"{year // 10 * 10}s"


class TemplatePersonaWriter(PersonaWriter):
    """Deterministic names ("Sci-Fi & Action") and descriptions citing representative titles.

    Names are unique within a user and say what sets each persona apart. Two personas that
    share their main categories are told apart, in this order, by the category one holds
    clearly more of (at least ``distinct_margin`` more of its titles than its namesakes:
    "Drama, Comedy & Romance"), then by their era ("1990s Drama & Comedy" / "Classic Drama &
    Comedy"), and only then by a quoted representative title ('Drama & Comedy (“Big Night”)').
    """

    def __init__(self, max_categories: int = 2, n_titles: int = 3, min_share: float = 0.12,
                 distinct_margin: float = 0.05):
        self.max_categories, self.n_titles = max_categories, n_titles
        self.min_share, self.distinct_margin = min_share, distinct_margin

    def _ranked_categories(self, d: PersonaDraft) -> list[str]:
        # share x sqrt(lift): what is both frequent here and more frequent here than elsewhere
        scored = {g: s * np.sqrt(d.lift.get(g, 1.0)) for g, s in d.category_shares.items() if s > 0}
        return [g for g, _ in sorted(scored.items(), key=lambda kv: (-kv[1], kv[0]))]

    def _base_name(self, d: PersonaDraft, cats: list[str]) -> list[str]:
        return [g for g in cats if d.category_shares.get(g, 0) >= self.min_share][: self.max_categories] or cats[:1]

    def names(self, drafts: Sequence[PersonaDraft]) -> list[str]:
        """One distinct name per draft (see the class docstring)."""
        return self._names(drafts)[0]

    def _names(self, drafts: Sequence[PersonaDraft]) -> tuple[list[str], list[list[str]]]:
        """The names and the categories each one names."""
        ranked = [self._ranked_categories(d) for d in drafts]
        parts = [self._base_name(d, cats) for d, cats in zip(drafts, ranked)]
        eras: list[str | None] = [None] * len(drafts)
        hints: list[str | None] = [None] * len(drafts)

        def render(k: int) -> str:
            cats = parts[k]
            base = " & ".join(cats) if len(cats) < 3 else f"{', '.join(cats[:-1])} & {cats[-1]}"
            base = base or "Eclectic"
            if eras[k]:
                base = f"{eras[k]} {base}"
            if hints[k]:
                base = f"{base} (\u201c{hints[k]}\u201d)"
            return base[:80]

        def duplicates() -> list[list[int]]:
            groups: dict[str, list[int]] = {}
            for k in range(len(drafts)):
                groups.setdefault(render(k).lower(), []).append(k)
            return [g for g in groups.values() if len(g) > 1]

        for group in duplicates():  # 1. a category this persona holds clearly more of
            for k in group:
                mates = [j for j in group if j != k]
                d = drafts[k]
                margins = {g: d.category_shares.get(g, 0) - max(drafts[j].category_shares.get(g, 0) for j in mates)
                           for g in ranked[k] if g not in parts[k]}
                best = max(margins, key=lambda g: (margins[g], g), default=None)
                if best is not None and margins[best] >= self.distinct_margin and len(parts[k]) < 3:
                    parts[k] = [*parts[k], best]
        for group in duplicates():  # 2. the era, when theirs differ
            labels = {k: _era(_median_year(drafts[k].titles)) for k in group}
            if len(set(labels.values())) > 1:
                for k in group:
                    eras[k] = labels[k]
        for group in duplicates():  # 3. a representative title, quoted so it reads as one
            used: set[str] = set()
            for k in group:
                title = next((t for t in (_strip_year(x) for x in drafts[k].titles) if t not in used), None)
                if title:
                    hints[k] = title
                    used.add(title)
        return [render(k) for k in range(len(drafts))], parts

    def write(self, user_id: str, drafts: Sequence[PersonaDraft]) -> list[tuple[str, str]]:
        ranked = [self._ranked_categories(d) for d in drafts]
        names, named = self._names(drafts)
        out = []
        for d, name, cats, in_name in zip(drafts, names, ranked, named):
            main = [g for g in cats if d.category_shares.get(g, 0) >= self.min_share][:3] or cats[:1]
            main = list(dict.fromkeys([*main, *in_name]))[:3]  # the description speaks of what the name says
            share = sum(d.category_shares.get(g, 0) for g in main)
            titles = list(dict.fromkeys(_strip_year(t) for t in d.titles))[: self.n_titles]
            era = _decade(d.titles)
            genres = ", ".join(main[:-1]) + " and " + main[-1] if len(main) > 1 else (main[0] if main else "varied")
            parts = [f"Enjoys {genres} titles ({round(100 * share)}% of the {d.n_items} titles behind this taste)"]
            if era:
                parts[0] += f", mostly from {era}"
            if titles:
                parts.append(f"e.g. {', '.join(titles)}")
            out.append((name, "; ".join(parts) + "."))
        return out
