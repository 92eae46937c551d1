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


class TemplatePersonaWriter(PersonaWriter):
    """Deterministic names ("Sci-Fi & Action") and descriptions citing representative titles."""

    def __init__(self, max_categories: int = 2, n_titles: int = 3):
        self.max_categories, self.n_titles = max_categories, n_titles

    def _ranked_categories(self, d: PersonaDraft) -> list[str]:
        # share x sqrt(lift): what is both frequent here and more frequent here than elsewhere
        scored = {g: s * np.sqrt(d.lift.get(g, 1.0)) for g, s in d.category_shares.items() if s > 0}
        return [g for g, _ in sorted(scored.items(), key=lambda kv: (-kv[1], kv[0]))]

    def write(self, user_id: str, drafts: Sequence[PersonaDraft]) -> list[tuple[str, str]]:
        ranked = [self._ranked_categories(d) for d in drafts]
        names: list[str] = []
        for d, cats in zip(drafts, ranked):
            top = [g for g in cats if d.category_shares.get(g, 0) >= 0.12][: self.max_categories] or cats[:1]
            names.append(" & ".join(top) if top else "Eclectic")
        # make names unique within the user: a third category only when it is a real part of
        # this persona (>= 12% of it) and not of its namesakes, else a representative title
        for _ in range(2):
            dup = {n for n, c in Counter(names).items() if c > 1}
            if not dup:
                break
            for k, (d, cats) in enumerate(zip(drafts, ranked)):
                if names[k] not in dup:
                    continue
                mates = [j for j in range(len(drafts)) if j != k and names[j] == names[k]]
                used = names[k].split(" & ")
                extra = [g for g in cats if g not in used and d.category_shares.get(g, 0) >= 0.12
                         and all(drafts[j].category_shares.get(g, 0) < d.category_shares[g] for j in mates)]
                if extra and names[k].count("&") < 2:
                    names[k] = f"{names[k]} & {extra[0]}"
                elif d.titles:
                    names[k] = f"{names[k]} (like {_strip_year(d.titles[0])})"[:80]
        out = []
        for d, name, cats in zip(drafts, names, ranked):
            main = [g for g in cats if d.category_shares.get(g, 0) >= 0.12][:3] or cats[:1]
            share = sum(d.category_shares.get(g, 0) for g in main)
            titles = [_strip_year(t) for t in d.titles[: self.n_titles]]
            era = _decade(d.titles)
            parts = [f"Enjoys {', '.join(main[:-1]) + ' and ' + main[-1] if len(main) > 1 else (main[0] if main else 'varied')} "
                     f"titles ({round(100 * share)}% of the {d.n_items} titles behind this taste)"]
            if era:
                parts[0] += f", mostly from {era}"
            if titles:
                parts.append(f"e.g. {', '.join(titles)}")
            out.append((name, "; ".join(parts) + "."))
        return out
