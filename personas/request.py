"""A request as a typed constraint on the exact engine.

A person's message ("a scary movie from the 80s", "more like the second one", "not Batman")
is parsed (:mod:`agent.request_parser`, rules, optionally an LLM validated against them) into a
:class:`Request`. :class:`RequestScorer` applies it to one user's personalised scores:

* **hard constraints filter** the candidates: wanted categories (an item needs at least one of
  them), unwanted categories (it may have none), a period of release years, excluded items;
* **soft constraints re-score**: free-text content (cosine to the request in the item text
  space) and a reference item ("like X": its neighbours under the collaborative scorer, in the
  text space and by category overlap) give each candidate a request match in [0, 1]; the titles
  the user rated low are a negative history. The final score is

  ``s(i) = p(i) + f(i) + h(i) - dislike_weight * n(i) + sigma * (mix * (c(i) + t(i)) + reference_mix * r(i) - relatives_weight * v(i))``

  where ``p(i)`` is the personalised score (the exact sum of the persona contributions, as
  without a request), ``f`` the boost of the personas the request activates (``persona_boost -
  1`` times their contributions), ``h`` the history focus (``history_focus`` times the score
  that the user's own items of the wanted categories give ``i``), ``n(i) = sum_d max(B[d, i], 0)``
  the score the user's low-rated titles would give ``i``, counting each title's closest
  ``dislike_neighbours`` only (0: all), ``v(i)`` how close a relative ``i`` is, by text, of a
  title the user rated low (a sequel, a remake), ``c`` the category match (several wanted categories:
  the first named counts fully), ``t`` the free-text match and ``r`` the reference match, each
  in [0, 1], and ``sigma`` the spread of the user's best 100 candidates (best minus 100th best:
  ``mix`` is scale-free, 1.0 moves an item across the competitive part of the list).

  Every weight is a :class:`RequestConfig` field chosen by ``plural eval chat`` on a validation
  split (see the README). The personalised part keeps its exact attribution: the persona
  contributions of ``p(i)`` are untouched; the request term is reported beside them
  (``Recommendation.request_term``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from memory.catalog import Catalog
from memory.errors import UsageError

_YEAR_IN_TITLE = re.compile(r"\((\d{4})\)\s*$")


class Period(BaseModel):
    """Release years, inclusive at both ends; an open end is ``None``."""

    model_config = ConfigDict(extra="forbid")

    start: int | None = None
    """First year allowed (None: no lower bound)."""
    end: int | None = None
    """Last year allowed (None: no upper bound)."""

    @model_validator(mode="after")
    def _ordered(self) -> "Period":
        if self.start is None and self.end is None:
            raise ValueError("a period needs a start year, an end year or both")
        if self.start is not None and self.end is not None and self.start > self.end:
            raise ValueError(f"period start {self.start} is after its end {self.end}")
        return self

    def label(self) -> str:
        if self.start is not None and self.end is not None:
            if self.end - self.start == 9 and self.start % 10 == 0:
                return f"the {self.start}s"
            return f"{self.start}\u2013{self.end}" if self.start != self.end else str(self.start)
        return f"from {self.start} on" if self.start is not None else f"up to {self.end}"


class Request(BaseModel):
    """What a person asks for, as constraints on the engine. Empty fields constrain nothing.

    Example:
        >>> Request(text="a scary movie", wanted_categories=["Horror", "Thriller"]).is_empty()
        False
    """

    model_config = ConfigDict(extra="forbid")

    text: str = ""
    """The message as the person wrote it."""
    wanted_categories: list[str] = Field(default_factory=list)
    """Hard: an item must have at least one of these catalog categories (ORed)."""
    unwanted_categories: list[str] = Field(default_factory=list)
    """Hard: an item may have none of these categories."""
    content: str | None = None
    """Soft: free text matched against the catalog's text index ("about ghosts", "space")."""
    reference_item: str | None = None
    """Soft: the item id of "like X" / "more like the second one"; its neighbours rank first."""
    reference_label: str | None = None
    """How the person named the reference ("the second one", "Star Wars"), for the reply."""
    period: Period | None = None
    """Hard: release years."""
    exclude_items: list[str] = Field(default_factory=list)
    """Hard: item ids never to show ("not X", refused or already shown in this thread)."""
    personas: list[str] = Field(default_factory=list)
    """Persona ids the request activates (their contributions are boosted)."""
    unsupported: list[str] = Field(default_factory=list)
    """Parts of the request the catalog cannot check (e.g. "not too long": no running times);
    the reply says so instead of pretending."""
    source: str = "rules"
    """Who filled this object: ``rules``, ``llm`` or ``llm_retry``."""

    def is_empty(self) -> bool:
        """True when nothing constrains or re-scores the list."""
        return not (self.wanted_categories or self.unwanted_categories or self.content or self.reference_item
                    or self.period or self.exclude_items or self.personas)

    def has_constraints(self) -> bool:
        """True when the request says something about the items themselves (not only exclusions)."""
        return bool(self.wanted_categories or self.unwanted_categories or self.content or self.reference_item
                    or self.period)

    def describe(self, catalog: Catalog | None = None) -> str:
        """The request in a few words, as the reply states it ("Horror or Thriller, from the 1980s")."""
        parts: list[str] = []
        if self.wanted_categories:
            parts.append(" or ".join(self.wanted_categories))
        if self.reference_item is not None:
            name = self.reference_label
            if catalog is not None and self.reference_item in catalog:
                name = catalog.get(self.reference_item).title
            parts.append(f"like {name or self.reference_item}")
        if self.content:
            parts.append(f"about \u201c{self.content}\u201d")
        if self.period is not None:
            parts.append(self.period.label())
        if self.unwanted_categories:
            parts.append("no " + " or ".join(self.unwanted_categories))
        return ", ".join(parts)


class RequestConfig(BaseModel):
    """How a :class:`Request` re-scores the personalised list. The defaults are the mix ``plural
    eval chat`` chose on ML-100K's validation split (the mean of NDCG@10 of a held-out liked item
    and the request's satisfaction; see the README's chat results), never set by hand."""

    model_config = ConfigDict(extra="forbid")

    mode: str | None = None
    """Ranking mode of a list that answers a request (None: the caller's mode, e.g. the chat's
    ``persona_calibrated``); the person's request, not their history's genre mix, says what
    the list should be."""
    mix: float = Field(8.0, ge=0)
    """Weight of the free-text and category match, in units of the spread of the user's scores
    (see ``spread_top``): 0 ranks by the personalised score alone (the request only filters)."""
    reference_mix: float = Field(16.0, ge=0)
    """Weight of the "like X" match, in the same units as ``mix``."""
    secondary_category_share: float = Field(0.5, ge=0, le=1)
    """Several wanted categories: an item with the first one (the one the words name most
    directly, e.g. Horror for "scary") matches 1, one with only a later one this share."""
    reference_text_share: float = Field(0.0, ge=0, le=1)
    """"Like X": share of the text-space cosine in the reference match."""
    reference_genre_share: float = Field(0.5, ge=0, le=1)
    """"Like X": share of the category overlap (Jaccard of the two items' categories) in the
    reference match; the rest (1 - text share - genre share) is the collaborative scorer's
    item-item weight, rescaled to [0, 1] over the catalog."""
    reference_pool: int = Field(30, gt=0)
    """"Like X": only the reference's ``reference_pool`` nearest items are candidates (the
    list must be visibly like it); fewer candidates than ``k`` widen the pool to all."""
    content_pool: int = Field(100, gt=0)
    """Free-text content: only the ``content_pool`` best-matching items are candidates."""
    persona_boost: float = Field(1.5, ge=1.0)
    """Multiplier of the contributions of the personas a request activates (those holding its
    categories); 1 boosts none."""
    history_focus: float = Field(2.0, ge=0)
    """A request for categories: the user's own history items in them count ``1 + history_focus``
    times in the score (0: the whole history counts alike)."""
    dislike_weight: float = Field(2.0, ge=0)
    """Weight of the negative history: the score the titles the user rated low (or disliked in
    conversation) give an item is subtracted this many times, so their close neighbours drop."""
    dislike_neighbours: int = Field(5, ge=0)
    """Only an item among the ``dislike_neighbours`` closest neighbours of a low-rated title (by
    the scorer's weights) is pulled down by it; 0: every item it has a positive weight to."""
    relatives_weight: float = Field(1.0, ge=0)
    """Weight, in the units of ``mix``, of the penalty on close relatives of titles the user rated
    low by their text (a sequel, a remake: text cosine above ``relatives_threshold``, rescaled
    to [0, 1] above it): what the collaborative negative history misses when the user's liked
    titles point at the relative more than the disliked ones point away."""
    relatives_threshold: float = Field(0.7, ge=0, lt=1)
    """Text cosine above which an item counts as a close relative of a title the user rated low."""
    spread_top: int = Field(100, gt=1)
    """The unit of ``mix``: the best candidate's personalised score minus the ``spread_top``-th
    best's, so that 1.0 moves an item across the user's competitive candidates."""
    dislike_threshold: float = 2.0
    """Ratings at or below this count as dislikes for the penalty."""

    @classmethod
    def neutral(cls) -> "RequestConfig":
        """Every soft term off: the request only filters (its "like X" and free-text pools
        included) and the personalised score ranks. ``plural eval chat`` searches from here, so
        what it chooses does not depend on the defaults."""
        return cls(mode=None, mix=0.0, reference_mix=0.0, reference_text_share=0.3, reference_genre_share=0.3,
                   reference_pool=100, persona_boost=1.0, history_focus=0.0, dislike_weight=0.0,
                   dislike_neighbours=10, relatives_weight=0.0, relatives_threshold=0.8)

    @field_validator("mode")
    @classmethod
    def _known_mode(cls, v: str | None) -> str | None:
        from personas.ranking import RANKING_MODES

        if v is not None and v not in RANKING_MODES:
            raise ValueError(f"mode {v!r} is not a ranking mode; known: {sorted(RANKING_MODES)}")
        return v


def item_years(catalog: Catalog) -> np.ndarray:
    """Release year of every item from its title's "(1995)" suffix; 0 where unknown."""
    out = np.zeros(len(catalog), dtype=np.int32)
    for k, title in enumerate(catalog.all_titles()):
        m = _YEAR_IN_TITLE.search(title)
        if m:
            out[k] = int(m.group(1))
    return out


def _unit_rows(a: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(a, axis=1, keepdims=True)
    n[n == 0] = 1.0
    return a / n


class RequestScorer:
    """Applies :class:`Request` objects to personalised scores over one catalog.

    ``text_vectors`` are the item text embeddings (rows in catalog order), ``embed`` turns a
    text into a vector of the same space (needed only for free-text ``content``), ``B`` the
    collaborative scorer's item-item weights.
    """

    def __init__(self, catalog: Catalog, B, text_vectors: np.ndarray | None = None, embed=None,
                 config: RequestConfig | None = None):
        self.catalog, self.B = catalog, B
        self.config = config or RequestConfig()
        self.text = _unit_rows(np.asarray(text_vectors, dtype=np.float32)) if text_vectors is not None else None
        self.embed = embed
        self.years = item_years(catalog)
        self._genres: np.ndarray | None = None

    # ---- hard constraints --------------------------------------------------------------
    def allowed(self, request: Request) -> np.ndarray:
        """Boolean mask of the items the request's hard constraints allow."""
        n = len(self.catalog)
        mask = np.ones(n, dtype=bool)
        if request.wanted_categories:
            mask &= self.catalog.items_in_categories(request.wanted_categories)
        if request.unwanted_categories:
            mask &= ~self.catalog.items_in_categories(request.unwanted_categories)
        if request.period is not None:
            y = self.years
            known = y > 0
            if request.period.start is not None:
                mask &= known & (y >= request.period.start)
            if request.period.end is not None:
                mask &= known & (y <= request.period.end)
        if request.exclude_items:
            ids = [i for i in request.exclude_items if i in self.catalog]
            if ids:
                mask[self.catalog.indices(ids)] = False
        return mask

    # ---- soft constraints --------------------------------------------------------------
    def collaborative_neighbours(self, pos: int) -> np.ndarray:
        """The scorer's item-item weights from item ``pos`` to every item, rescaled to [0, 1]
        (negative weights are 0; the item itself is 0)."""
        row = self.B[pos]
        row = np.asarray(row.todense()).ravel() if hasattr(row, "todense") else np.asarray(row, dtype=np.float64)
        row = np.clip(row.astype(np.float64), 0, None)
        row[pos] = 0.0
        top = row.max()
        return row / top if top > 0 else row

    def text_neighbours(self, pos: int) -> np.ndarray | None:
        """Cosine in the item text space from item ``pos`` to every item, clipped to [0, 1]."""
        if self.text is None:
            return None
        sim = _stretch((self.text @ self.text[pos]).astype(np.float64))
        sim[pos] = 0.0
        return sim

    def genre_overlap(self, pos: int) -> np.ndarray:
        """Jaccard overlap of every item's categories with item ``pos``'s (0 for the item itself
        and for items without categories)."""
        if self._genres is None:
            self._genres = (self.catalog.category_distribution() > 0).astype(np.float32)
        g = self._genres
        inter = g @ g[pos]
        union = g.sum(axis=1) + g[pos].sum() - inter
        out = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0).astype(np.float64)
        out[pos] = 0.0
        return out

    def reference_similarity(self, pos: int) -> np.ndarray:
        """How like item ``pos`` every item is, in [0, 1]: the collaborative neighbours, the text
        neighbours and the category overlap, mixed by the config's shares."""
        text = self.config.reference_text_share if self.text is not None else 0.0
        genre = self.config.reference_genre_share
        if text + genre > 1:
            text, genre = text / (text + genre), genre / (text + genre)
        sim = (1 - text - genre) * self.collaborative_neighbours(pos)
        if text:
            sim = sim + text * self.text_neighbours(pos)
        if genre:
            sim = sim + genre * self.genre_overlap(pos)
        return sim

    def content_similarity(self, content: str) -> np.ndarray | None:
        """Cosine of every item's text to ``content``, rescaled so the best match is 1."""
        if self.text is None or self.embed is None:
            return None
        q = np.asarray(self.embed(content), dtype=np.float32).ravel()
        qn = np.linalg.norm(q)
        if qn == 0:
            return None
        return _stretch((self.text @ (q / qn)).astype(np.float64))

    def match(self, request: Request) -> tuple[np.ndarray | None, np.ndarray | None]:
        """``(m, pool)``: the weighted request match per item (``mix`` x category and content
        match + ``reference_mix`` x reference match; None when nothing is soft), and a mask of
        the items close enough to count as candidates (None: no pool restriction)."""
        parts: list[np.ndarray] = []
        pool: np.ndarray | None = None
        if len(request.wanted_categories) > 1:
            first = self.catalog.items_in_categories(request.wanted_categories[:1])
            parts.append(np.where(first, 1.0, self.config.secondary_category_share) * self.config.mix)
        if request.reference_item is not None and request.reference_item in self.catalog:
            pos = self.catalog.index(request.reference_item)
            sim = self.reference_similarity(pos)
            parts.append(sim * self.config.reference_mix)
            pool = _top_mask(sim, self.config.reference_pool)
        if request.content:
            sim = self.content_similarity(request.content)
            if sim is not None:
                parts.append(sim * self.config.mix)
                cpool = _top_mask(sim, self.config.content_pool)
                pool = cpool if pool is None else (pool | cpool)
        if not parts:
            return None, None
        return np.sum(parts, axis=0), pool

    def dislike_penalty(self, disliked: Sequence[int]) -> np.ndarray | None:
        """``n(i) = sum_d max(B[d, i], 0)`` over the disliked item positions ``d``, counting only
        the ``dislike_neighbours`` strongest weights of each ``d`` (its close relatives; 0: all),
        in score units (0 for the disliked items themselves; None when nothing was disliked)."""
        d = np.unique(np.asarray(list(disliked), dtype=np.int64))
        if len(d) == 0:
            return None
        rows = self.B[d]
        rows = np.clip(np.asarray(rows.todense()) if hasattr(rows, "todense") else np.asarray(rows), 0, None)
        m = self.config.dislike_neighbours
        if 0 < m < rows.shape[1]:
            cut = -np.partition(-rows, m - 1, axis=1)[:, m - 1:m]  # each row's m-th largest weight
            rows = np.where(rows >= cut, rows, 0.0)
        pen = rows.sum(axis=0).astype(np.float64)
        pen[d] = 0.0
        return pen

    def dislike_relatives(self, disliked: Sequence[int]) -> np.ndarray | None:
        """Per item in [0, 1]: how close a relative it is, by text, of the nearest disliked item
        (``(cosine - relatives_threshold) / (1 - relatives_threshold)``, clipped; 0 for the
        disliked items; None without a text space, a weight or dislikes)."""
        d = np.unique(np.asarray(list(disliked), dtype=np.int64))
        if self.text is None or len(d) == 0 or self.config.relatives_weight == 0:
            return None
        tau = self.config.relatives_threshold
        near = np.clip((self.text[d] @ self.text.T - tau) / (1 - tau), 0, 1).max(axis=0).astype(np.float64)
        near[d] = 0.0
        return near

    def history_focus(self, request: Request, history: Sequence[int]) -> np.ndarray | None:
        """The extra score from the user's own history items in the wanted categories, times
        ``history_focus`` (None when the request wants no category or the weight is 0): tonight's
        request says which part of the history matters."""
        if not request.wanted_categories or self.config.history_focus == 0 or len(history) == 0:
            return None
        h = np.asarray(history, dtype=np.int64)
        h = h[self.catalog.items_in_categories(request.wanted_categories)[h]]
        if len(h) == 0:
            return None
        rows = self.B[h]
        total = np.asarray(rows.sum(axis=0)).ravel() if hasattr(rows, "todense") else rows.sum(axis=0)
        return self.config.history_focus * np.asarray(total, dtype=np.float64)

    def rescore(self, scores: np.ndarray, allowed: np.ndarray, match: np.ndarray | None,
                penalty: np.ndarray | None, extra: Sequence[np.ndarray] = (),
                relatives: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(final scores, request term)``: ``scores + sum(extra) - dislike_weight * penalty +
        sigma * (match - relatives_weight * relatives)``, with ``sigma`` the :func:`score_spread`
        of ``scores`` over ``allowed``; ``extra`` terms and ``penalty`` are in score units
        (persona boost, history focus, negative history)."""
        term = np.zeros(len(scores), dtype=np.float64)
        for t in extra:
            term += t
        if penalty is not None:
            term -= self.config.dislike_weight * penalty
        if match is not None or relatives is not None:
            sigma = score_spread(scores[allowed] if allowed.any() else scores, self.config.spread_top)
            if match is not None:
                term += sigma * match
            if relatives is not None:
                term -= sigma * self.config.relatives_weight * relatives
        if match is None and penalty is None and relatives is None and not extra:
            return scores, term
        return (scores + term).astype(scores.dtype), term


def score_spread(scores: np.ndarray, top: int = 100) -> float:
    """The scale the request term is measured in: the best candidate's score minus the
    ``top``-th best's (the competitive part of the list; 1.0 when all scores are equal)."""
    if len(scores) == 0:
        return 1.0
    n = min(top, len(scores))
    part = np.partition(scores, len(scores) - n)[len(scores) - n:]
    spread = float(part.max() - part.min())
    return spread if spread > 0 else 1.0


def _stretch(cos: np.ndarray) -> np.ndarray:
    """Cosines rescaled to [0, 1] from the catalog's median (0) to its best match (1): sentence
    embeddings put most unrelated items at 0.2-0.5, which would otherwise dilute the match."""
    med, top = float(np.median(cos)), float(cos.max())
    if top <= med:
        return np.zeros_like(cos)
    return np.clip((cos - med) / (top - med), 0, 1)


def _top_mask(sim: np.ndarray, n: int) -> np.ndarray:
    """Mask of the ``n`` largest positive entries of ``sim``."""
    mask = np.zeros(len(sim), dtype=bool)
    pos = np.flatnonzero(sim > 0)
    if len(pos) <= n:
        mask[pos] = True
        return mask
    top = pos[np.argpartition(-sim[pos], n - 1)[:n]]
    mask[top] = True
    return mask


def check_categories(catalog: Catalog, categories: Sequence[str]) -> list[str]:
    """The catalog's spelling of each category; an unknown one is a usage error naming the known ones."""
    known = {c.lower(): c for c in catalog.categories}
    out = []
    for c in categories:
        if c.lower() not in known:
            raise UsageError("category", c, catalog.categories or "none: the items file had no categories")
        out.append(known[c.lower()])
    return out


__all__ = ["Period", "Request", "RequestConfig", "RequestScorer", "check_categories", "item_years"]
