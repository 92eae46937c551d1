"""``plural eval chat``: does the chat do what the person asks, for this person?

Protocol (conversational recommendation judged by whether it satisfies the request):

1. **Split.** :func:`evals.splits.split_dataset` (seeded per-user 80/20 of positives). The engine
   is built on the training rows only (:func:`evals.refine_eval.build_train_engine`), and a leak
   check stops the run if a held-out pair is in its histories.
2. **Simulated users.** ``users`` users (seeded) with a held-out liked item ``t`` that has a
   category and a release year. Each gets requests at four levels of detail, all about ``t``:

   * ``category``: its category ("a comedy"; one of ``t``'s categories, seeded);
   * ``category_period``: the category and ``t``'s decade ("a comedy from the 90s");
   * ``like_item``: "something like X", X the user's training positive the scorer links most
     to ``t`` (the largest item-item weight ``B[X, t]``);
   * ``free_text``: the category and ``t``'s title words, lower-cased and out of order, as a
     description ("a comedy about trousers wrong");

   then two follow-ups in the category request's thread: ``refusal`` ("not the first one") and
   ``more_like`` ("more like the third one", the listed item the scorer links most to ``t``).
3. **Systems**, each on its own copy of the train-only engine, answering the same messages:

   * ``chat``: Plural's chat as it is, :meth:`agent.api.PluralAgent.chat` (rules, no LLM);
   * ``chat_before``: Plural's chat before requests were constraints (the baseline this fixes):
     the request only picks personas to boost (routing by the title it names or the genres it
     evokes), "more like #k" narrows to the item's semantic neighbours;
   * ``request_only``: a non-personalised ranker: the same parsed request, its hard constraints
     as a filter, its soft match (catalog search for free text, the item's neighbours for "like
     X") then popularity;
   * ``ease_filter``: EASE with the parsed request as a filter (hard constraints and the
     free-text / "like X" candidate pools), ranked by EASE's score.
4. **Measured**, per request type, as the mean over users with a 95% bootstrap interval:
   request satisfaction (share of listed items with the requested category, and in the decade;
   for ``like_item`` / ``more_like``, the category overlap (Jaccard) and the co-rating cosine of
   the listed items with X, beside the same for the user's most popular unseen items), HR and
   NDCG at 5 and 10 of ``t``, ``disliked@10`` (the same gain summed over held-out titles the
   user rated low, shown in the list: 20% of each user's ratings <= 2 are held out too),
   personalisation (overlap at 10 between this user's list and a seeded other user's list for
   the same message: 1 means not personalised), refusal respected (the refused item never
   listed again in the thread), and each turn's latency (p50, p95).
5. **Tuning.** The request mix (:class:`personas.request.RequestConfig`: the weights of the
   free-text and "like X" matches, the reference's text and category shares, the dislike
   penalty, and the persona boost) is chosen on a validation split carved from the training
   rows (:func:`evals.splits.validation_split`, with its own held-out dislikes), never on test,
   by ``0.5 (NDCG@10 - disliked@10) + 0.5 satisfaction`` over the request types each weight
   affects: a list must be what was asked for, and hold titles the person would like, not ones
   they would rate low. The grid and the choice are in the results.

Example:
    >>> from memory.loaders import DataSource
    >>> doc = run_chat_eval(DataSource(dataset="ml-100k").load(), ChatEvalConfig(users=50))  # doctest: +SKIP
    >>> doc["results"]["category"]["chat"]["satisfaction"]["mean"]  # doctest: +SKIP
    1.0
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from pydantic import BaseModel, ConfigDict, Field

from evals.refine_eval import _items_by_user, build_train_engine, check_no_leak
from evals.report import config_from_options
from evals.report import fmt_cell as _fmt
from evals.report import json_number as _num
from evals.splits import Split, SplitConfig, split_dataset, validation_split
from evals.stats import bootstrap_ci
from memory.dataset import Dataset
from memory.errors import UsageError

SCHEMA_VERSION = 1
REQUEST_TYPES = ("category", "category_period", "like_item", "free_text")
FOLLOW_UPS = ("refusal", "more_like")
SYSTEMS = ("chat", "chat_before", "request_only", "ease_filter")
SYSTEM_NAMES = {
    "chat": "Plural chat (requests as constraints)",
    "chat_before": "Plural chat before (routing only)",
    "request_only": "Request only (catalog search + popularity)",
    "ease_filter": "EASE + request as filter",
}
_ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth")
# how a person names a MovieLens category (others: "a <category> film")
CATEGORY_PHRASES = {
    "Action": "an action movie", "Adventure": "an adventure film", "Animation": "an animated film",
    "Children's": "a children's film", "Comedy": "a comedy", "Crime": "a crime film",
    "Documentary": "a documentary", "Drama": "a drama", "Fantasy": "a fantasy film", "Film-Noir": "a film noir",
    "Horror": "a horror movie", "Musical": "a musical", "Mystery": "a mystery", "Romance": "a romance",
    "Sci-Fi": "a sci-fi movie", "Thriller": "a thriller", "War": "a war movie", "Western": "a western",
}
_TITLE_STOP = set("a an the of and or in on at to for with from by is it its as be de la le les el".split())


class ChatEvalConfig(BaseModel):
    """Settings of ``plural eval chat``."""

    model_config = ConfigDict(extra="forbid")

    users: int = Field(200, ge=2)
    """Simulated users on test (seeded sample)."""
    tune_users: int = Field(150, ge=2)
    """Simulated users on the validation split (choosing the request mix)."""
    k: int = Field(10, ge=5, le=50)
    """List length of every answer (HR and NDCG are read at 5 and at ``k``)."""
    seed: int = 0
    """Seed of the split, the users, their requests and the personalisation partners."""
    split: SplitConfig = Field(default_factory=SplitConfig)
    """How held-out positives are chosen (its seed is the run's seed)."""
    systems: list[str] = Field(default_factory=lambda: list(SYSTEMS))
    """Systems compared (see the module docstring)."""
    tune: bool = True
    """Choose the request mix on a validation split (else the configured defaults)."""
    dislike_fraction: float = Field(0.2, ge=0, lt=1)
    """Share of each user's low-rated rows (ratings at or below ``dislike_rating``) held out
    too: titles they would rate low, which a good list does not show."""
    dislike_rating: float = 2.0
    """Ratings at or below this are dislikes."""
    bootstrap: int = Field(1000, ge=100)
    """Bootstrap resamples of the intervals."""
    mode: str = "persona_calibrated"
    """Ranking mode of the two Plural chats (the chat's default)."""

    @classmethod
    def from_options(cls, **options: Any) -> "ChatEvalConfig":
        """Build from CLI options; a bad value is a :class:`UsageError` naming the option."""
        cfg = config_from_options(cls, options)
        bad = [s for s in cfg.systems if s not in SYSTEMS]
        if bad:
            raise UsageError("systems", bad[0], list(SYSTEMS))
        return cfg.model_copy(update={"split": cfg.split.model_copy(update={"seed": cfg.seed})})


# ---- simulated users ---------------------------------------------------------------------------
@dataclass
class Probe:
    """One simulated user and the messages they send."""

    user: str
    target: str
    """The held-out liked item every request is about."""
    category: str
    decade: int
    anchor: str
    """The training item of "something like X"."""
    partner: str
    """Another user who sends the same messages (personalisation)."""
    messages: dict[str, str] = field(default_factory=dict)


def display_title(title: str) -> str:
    """How a person writes a MovieLens title: ``"Godfather, The (1972)"`` -> ``"The Godfather"``."""
    from personas.naming import _strip_year

    return _strip_year(title)


def category_phrase(category: str) -> str:
    return CATEGORY_PHRASES.get(category, f"a {category.lower()} film")


def _year(title: str) -> int | None:
    m = re.search(r"\((\d{4})\)\s*$", title)
    return int(m.group(1)) if m else None


def _free_text(title: str, category: str, rng: np.random.Generator) -> str:
    words = [w for w in re.findall(r"[a-z0-9']+", display_title(title).lower()) if w not in _TITLE_STOP]
    if len(words) > 1:  # out of order: a description of the film, not its title
        words = words[1:] + words[:1]
    noun = category_phrase(category)
    return f"{noun} about {' '.join(words)}" if words else noun


def make_probes(engine, held_out: dict[str, list[str]], n_users: int, seed: int) -> list[Probe]:
    """Simulated users over ``engine`` (trained without ``held_out``), seeded."""
    cat = engine.catalog
    rng = np.random.default_rng(seed)
    eligible = []
    for u, items in sorted(held_out.items()):
        if u not in engine.history or len(engine.history.positives(u)) == 0:
            continue
        good = [i for i in items if i in cat and _year(cat.get(i).title)
                and [c for c in cat.get(i).categories if c.lower() != "unknown"]]
        if good:
            eligible.append((u, good))
    if len(eligible) < 2:
        raise UsageError("users", n_users, f"a dataset with 2+ users holding a dated, categorised held-out item "
                                           f"(found {len(eligible)})")
    pick = rng.choice(len(eligible), size=min(n_users, len(eligible)), replace=False)
    chosen = [eligible[i] for i in sorted(pick)]
    users = [u for u, _ in chosen]
    B = engine.scorer.B
    probes = []
    for k, (u, items) in enumerate(chosen):
        t = items[int(rng.integers(len(items)))]
        it = cat.get(t)
        cats = [c for c in it.categories if c.lower() != "unknown"]
        g = cats[int(rng.integers(len(cats)))]
        decade = _year(it.title) // 10 * 10
        tpos = cat.index(t)
        pos = engine.history.positives(u)
        col = np.asarray(B[pos, tpos].todense()).ravel() if sp.issparse(B) else np.asarray(B[pos, tpos]).ravel()
        anchor = cat.item(int(pos[int(np.argmax(col))])).item_id
        partner = users[(k + 1 + int(rng.integers(len(users) - 1))) % len(users)]
        p = Probe(user=u, target=t, category=g, decade=decade, anchor=anchor, partner=partner)
        noun = category_phrase(g)
        p.messages = {
            "category": noun,
            "category_period": f"{noun} from the {decade % 100}s" if 1920 <= decade < 2000 else f"{noun} from the {decade}s",
            "like_item": f"something like {display_title(cat.get(anchor).title)}",
            "free_text": _free_text(it.title, g, rng),
        }
        probes.append(p)
    return probes


# ---- the systems -------------------------------------------------------------------------------
@dataclass
class _Thread:
    """A conversation's state, for the systems that do not keep one themselves."""

    last: list[str] = field(default_factory=list)
    shown: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    previous: Any = None


class ChatSystem(ABC):
    """Answers chat messages with item lists; one instance per system and run."""

    name: str

    def __init__(self, engine, k: int, mode: str):
        self.engine, self.k, self.mode = engine, k, mode
        self._threads: dict[str, _Thread] = {}

    @abstractmethod
    def turn(self, user: str, thread: str, message: str) -> list[str]:
        """The item ids listed in answer to ``message`` (empty for feedback)."""

    def close(self) -> None:
        pass


class PluralChat(ChatSystem):
    """Plural's chat, through :meth:`agent.api.PluralAgent.chat` (templates, no LLM)."""

    name = "chat"

    def __init__(self, engine, k: int, mode: str, request_config=None):
        super().__init__(engine, k, mode)
        from agent.api import PluralAgent
        from agent.runtime import AgentConfig, AgentRuntime

        if request_config is not None:
            engine.config = engine.config.model_copy(update={"request": request_config})
            engine.recommender.request_scorer = None
        self.agent = PluralAgent(AgentRuntime(engine, None, AgentConfig(k=k, mode=mode, llm_prose="off")))

    def turn(self, user: str, thread: str, message: str) -> list[str]:
        reply = self.agent.chat(user, message, thread)
        if reply.error:
            raise RuntimeError(f"chat failed for user {user!r} on {message!r}: {reply.error}")
        return [i.item_id for i in reply.items]

    def close(self) -> None:
        self.agent.close()


class LegacyChat(ChatSystem):
    """Plural's chat as it was before requests were constraints (see the module docstring)."""

    name = "chat_before"

    def __init__(self, engine, k: int, mode: str):
        super().__init__(engine, k, mode)
        from agent.runtime import AgentConfig, AgentRuntime

        self.runtime = AgentRuntime(engine, None, AgentConfig(k=k, mode=mode, llm_prose="off"))

    def turn(self, user: str, thread: str, message: str) -> list[str]:
        from agent.graph.intent import understand_by_rules

        th = self._threads.setdefault(thread, _Thread())
        u = understand_by_rules(message, len(th.last))
        if u.intent == "feedback":
            item = th.last[(u.reference or 1) - 1]
            outcome, pending = self.runtime.feedback(user, item, u.reaction or "like", text=message, use_llm=False)
            self.runtime.commit(user, pending)
            return []
        lang, rt = self.runtime.language, self.runtime
        reacted = list(rt.memory.reacted_items(user))
        focus: dict[str, float] = {}
        query = None
        exclude = list(reacted)
        like = th.last[u.reference - 1] if u.intent == "refine" and u.reference and u.reference <= len(th.last) else None
        request = message if not (like and len(message.split()) <= 6) else None
        if like is not None:
            pid = rt.responsible_persona(user, like)
            if pid:
                focus[pid] = lang.config.route_boost
            query = self.engine.catalog.get(like).text
            exclude.append(like)
        if request:
            routed, _ = lang.route(user, request)
            focus.update(routed)
        if u.intent == "refine":
            exclude += th.last
        out = self.engine.recommend(user, self.k, self.mode, query=query, persona_focus=focus or None,
                                    exclude_items=exclude)
        if like is not None and len(out.items) < self.k:
            out = self.engine.recommend(user, self.k, self.mode, persona_focus=focus or None, exclude_items=exclude)
        th.last = [r.item_id for r in out.items]
        return th.last


class _ParsedRequests(ChatSystem):
    """A system that reads messages with Plural's rules and keeps the thread itself."""

    def turn(self, user: str, thread: str, message: str) -> list[str]:
        from agent.graph.intent import understand_by_rules
        from agent.request_parser import parse_request

        th = self._threads.setdefault(thread, _Thread())
        u = understand_by_rules(message, len(th.last))
        if u.intent == "feedback":
            item = th.last[(u.reference or 1) - 1]
            if u.reaction == "dislike":
                th.refused.append(item)
            return []
        ctx = self.engine.parse_context(user, last_list=th.last, shown=th.shown, refused=th.refused,
                                        previous=th.previous, reference=u.reference)
        req = parse_request(message, ctx)
        if u.intent == "refine" and th.previous is not None and not req.has_constraints():
            ctx = self.engine.parse_context(user, shown=th.shown, refused=th.refused, previous=th.previous)
            req = parse_request("more", ctx)
        items = self.rank(user, req)
        th.last, th.previous = items, req
        th.shown = list(dict.fromkeys([*th.shown, *items]))
        return items

    def candidates(self, user: str, req) -> tuple[np.ndarray, np.ndarray | None]:
        """(allowed mask, soft match or None): unseen items passing the hard constraints, narrowed
        to the soft part's pool while it holds ``k`` items."""
        rs = self.engine.request_scorer()
        allowed = rs.allowed(req)
        allowed[self.engine.history.seen(user)] = False
        match, pool = rs.match(req)
        if pool is not None and int((allowed & pool).sum()) >= self.k:
            allowed &= pool
        return allowed, match

    @abstractmethod
    def rank(self, user: str, req) -> list[str]:
        ...

    def _top(self, scores: np.ndarray, allowed: np.ndarray) -> list[str]:
        idx = np.flatnonzero(allowed)
        if len(idx) == 0:
            return []
        order = idx[np.lexsort((idx, -scores[idx]))][: self.k]
        return [self.engine.catalog.item(int(i)).item_id for i in order]


class RequestOnly(_ParsedRequests):
    """Non-personalised: the request's match, then popularity (log-scaled to [0, 1])."""

    name = "request_only"

    def __init__(self, engine, k: int, mode: str, popularity_weight: float = 0.5):
        super().__init__(engine, k, mode)
        pop = np.log1p(engine.recommender.popularity.astype(np.float64))
        self.pop = pop / pop.max() if pop.max() > 0 else pop
        self.popularity_weight = popularity_weight

    def rank(self, user: str, req) -> list[str]:
        allowed, match = self.candidates(user, req)
        score = self.popularity_weight * self.pop + (match if match is not None else 0.0)
        return self._top(score, allowed)


class EaseFilter(_ParsedRequests):
    """EASE's score over the items the parsed request allows."""

    name = "ease_filter"

    def rank(self, user: str, req) -> list[str]:
        allowed, _ = self.candidates(user, req)
        ps, _ = self.engine.recommender.persona_scores(user)
        return self._top(np.asarray(ps.scores, dtype=np.float64), allowed)


# ---- measuring ---------------------------------------------------------------------------------
class _Judge:
    """What the lists are measured against (read from the train-only engine's data)."""

    def __init__(self, engine):
        self.engine = engine
        cat = engine.catalog
        self.genres = (cat.category_distribution() > 0).astype(np.float32)
        self.years = np.array([_year(t) or 0 for t in cat.all_titles()])
        X = engine.history.positive_matrix(len(cat)).tocsc().astype(np.float32)
        self.raters = X
        self.norms = np.sqrt(np.asarray(X.multiply(X).sum(axis=0)).ravel())
        self.popular_order = np.argsort(-engine.recommender.popularity, kind="stable")

    def pos(self, ids: Sequence[str]) -> np.ndarray:
        return self.engine.catalog.indices(list(ids)) if ids else np.zeros(0, dtype=np.int64)

    def satisfied(self, ids: Sequence[str], category: str, decade: int | None = None) -> float:
        if not ids:
            return float("nan")
        ok = [category in self.engine.catalog.get(i).categories and
              (decade is None or decade <= self.years[self.engine.catalog.index(i)] <= decade + 9) for i in ids]
        return float(np.mean(ok))

    def genre_overlap(self, ids: Sequence[str], ref: str) -> float:
        if not ids:
            return float("nan")
        g, r = self.genres[self.pos(ids)], self.genres[self.engine.catalog.index(ref)]
        inter = g @ r
        union = g.sum(axis=1) + r.sum() - inter
        return float(np.mean(np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)))

    def co_rating(self, ids: Sequence[str], ref: str) -> float:
        if not ids:
            return float("nan")
        p, r = self.pos(ids), self.engine.catalog.index(ref)
        inter = np.asarray((self.raters[:, p].T @ self.raters[:, r]).todense()).ravel()
        den = self.norms[p] * self.norms[r]
        return float(np.mean(np.divide(inter, den, out=np.zeros_like(inter), where=den > 0)))

    def popular_unseen(self, user: str, k: int, exclude: Sequence[str] = ()) -> list[str]:
        seen = set(self.engine.history.seen(user).tolist()) | {self.engine.catalog.index(i) for i in exclude}
        out = [int(i) for i in self.popular_order if int(i) not in seen][:k]
        return [self.engine.catalog.item(i).item_id for i in out]


def _ranking(ids: Sequence[str], target: str, k: int, dislikes: set[str] | None = None) -> dict[str, float]:
    """HR and NDCG of ``target`` at 5 and ``k``; with ``dislikes``, ``disliked@k``: the same gain
    (1 / log2(rank + 1)) summed over the held-out disliked titles the list shows."""
    rank = ids.index(target) + 1 if target in ids else None
    out = {}
    for cut in (5, k):
        hit = rank is not None and rank <= cut
        out[f"hr@{cut}"] = 1.0 if hit else 0.0
        out[f"ndcg@{cut}"] = 1.0 / np.log2(rank + 1) if hit else 0.0
    if dislikes is not None:
        out[f"disliked@{k}"] = float(sum(1.0 / np.log2(r + 2) for r, i in enumerate(ids[:k]) if i in dislikes))
    return out


def _overlap(a: Sequence[str], b: Sequence[str], k: int) -> float:
    if not a or not b:
        return float("nan")
    return len(set(a[:k]) & set(b[:k])) / k


@dataclass
class _Run:
    """Per-user measurements of one system."""

    rows: dict[str, list[dict]] = field(default_factory=lambda: {t: [] for t in (*REQUEST_TYPES, *FOLLOW_UPS)})
    latency: list[float] = field(default_factory=list)
    examples: list[dict] = field(default_factory=list)


def run_system(system: ChatSystem, probes: Sequence[Probe], judge: _Judge, k: int, *, follow_ups: bool = True,
               personalisation: bool = True, tick: Callable[[], None] | None = None, examples: int = 0,
               dislikes: dict[str, set[str]] | None = None) -> _Run:
    """Send every probe's messages to ``system`` and measure the answers (``dislikes``: each
    user's held-out low-rated titles)."""
    dislikes = dislikes or {}
    run = _Run()
    cat = judge.engine.catalog

    def ask(user: str, thread: str, message: str) -> list[str]:
        t0 = time.perf_counter()
        out = system.turn(user, thread, message)
        run.latency.append(time.perf_counter() - t0)
        return out

    partner_lists: dict[tuple[str, str], list[str]] = {}
    if personalisation:  # the same messages from another user, before anyone gives feedback
        for p in probes:
            for t in REQUEST_TYPES:
                partner_lists[(p.user, t)] = ask(p.partner, f"{p.user}-{t}-partner", p.messages[t])
    for n, p in enumerate(probes):
        for t in REQUEST_TYPES:
            ids = ask(p.user, f"{p.user}-{t}", p.messages[t])
            row = {"user": p.user, **_ranking(ids, p.target, k, dislikes.get(p.user, set())), "n_items": len(ids)}
            if t in ("category", "free_text"):
                row["satisfaction"] = judge.satisfied(ids, p.category)
            elif t == "category_period":
                row["satisfaction"] = judge.satisfied(ids, p.category, p.decade)
            else:
                popular = judge.popular_unseen(p.user, k, [p.anchor])
                row.update(satisfaction=judge.genre_overlap(ids, p.anchor), co_rating=judge.co_rating(ids, p.anchor),
                           popular_genre_overlap=judge.genre_overlap(popular, p.anchor),
                           popular_co_rating=judge.co_rating(popular, p.anchor))
            if personalisation:
                row["overlap"] = _overlap(ids, partner_lists[(p.user, t)], k)
            run.rows[t].append(row)
            if n < examples:
                run.examples.append({"user": p.user, "request": t, "message": p.messages[t],
                                     "titles": [cat.get(i).title for i in ids[:5]],
                                     "target": cat.get(p.target).title})
        if follow_ups:
            thread = f"{p.user}-follow"
            first = ask(p.user, thread, p.messages["category"])
            if first:
                ask(p.user, thread, "not the first one")
                refused = first[0]
                col = judge.engine.scorer.B[:, cat.index(p.target)]
                col = np.asarray(col.todense()).ravel() if sp.issparse(col) else np.asarray(col).ravel()
                options = list(range(1, min(len(first), 10)))
                pick = max(options, key=lambda j: col[cat.index(first[j])]) if options else 0
                ref = first[pick]
                more = ask(p.user, thread, f"more like the {_ORDINALS[pick]} one")
                run.rows["refusal"].append({"user": p.user, "satisfaction": float(refused not in more)})
                popular = judge.popular_unseen(p.user, k, first)
                run.rows["more_like"].append({
                    "user": p.user, **_ranking(more, p.target, k, dislikes.get(p.user, set())), "n_items": len(more),
                    "satisfaction": judge.genre_overlap(more, ref), "co_rating": judge.co_rating(more, ref),
                    "popular_genre_overlap": judge.genre_overlap(popular, ref),
                    "popular_co_rating": judge.co_rating(popular, ref)})
        if tick:
            tick()
    return run


def _summary(rows: list[dict], n_resamples: int, seed: int) -> dict:
    out: dict[str, Any] = {"n": len(rows)}
    keys = sorted({k for r in rows for k in r if k not in ("user",)})
    for key in keys:
        vals = np.array([r.get(key, np.nan) for r in rows], dtype=np.float64)
        ci = bootstrap_ci(vals, n_resamples, seed=seed)
        out[key] = {"mean": _num(ci.mean), "ci95": [_num(ci.low), _num(ci.high)], "n": ci.n}
    return out


# ---- tuning ------------------------------------------------------------------------------------
TUNING_GRID: dict[str, list] = {
    "mode": [None, "relevance"],
    "persona_boost": [1.0, 1.5, 2.0, 3.0],
    "history_focus": [0.0, 0.25, 0.5, 1.0, 2.0],
    "mix": [0.0, 0.5, 1.0, 2.0, 4.0, 8.0],
    "reference_mix": [0.0, 1.0, 2.0, 4.0, 8.0, 16.0],
    "reference_shares": [(0.3, 0.3), (0.0, 0.0), (0.5, 0.0), (0.0, 0.5), (0.2, 0.5), (0.4, 0.4)],
    "reference_pool": [30, 50, 100, 200],
    "dislikes": [(10, 0.0), (5, 1.0), (5, 2.0), (5, 4.0), (10, 1.0), (10, 2.0), (10, 4.0), (0, 1.0), (0, 2.0)],
    "relatives": [(0.8, 0.0), (0.7, 1.0), (0.7, 2.0), (0.7, 4.0), (0.8, 1.0), (0.8, 2.0), (0.8, 4.0), (0.9, 4.0)],
}
"""Coordinate search, in this order, each coordinate judged on the request types it affects.
``mode`` is the ranking mode of a list that answers a request (None: the chat's own mode).
``dislikes`` pairs (``dislike_neighbours``, ``dislike_weight``) and ``relatives`` pairs
(``relatives_threshold``, ``relatives_weight``); for these two, the settings whose objective is
within one paired standard error of the best are equally good, and of those the one that shows
the fewest held-out dislikes is chosen (a title the person would rate low is what they notice)."""
_TUNED_ON = {"mode": REQUEST_TYPES, "persona_boost": ("category", "category_period"), "history_focus": ("category", "category_period"),
             "mix": ("free_text",), "reference_mix": ("like_item",), "reference_shares": ("like_item",),
             "reference_pool": ("like_item",), "dislikes": REQUEST_TYPES, "relatives": REQUEST_TYPES}
_PAIRS = {"reference_shares": ("reference_text_share", "reference_genre_share"),
          "dislikes": ("dislike_neighbours", "dislike_weight"),
          "relatives": ("relatives_threshold", "relatives_weight")}


def _satisfaction(judge: "_Judge", p: Probe, t: str, ids: Sequence[str]) -> float:
    if t == "category_period":
        return judge.satisfied(ids, p.category, p.decade)
    if t == "like_item":
        return judge.genre_overlap(ids, p.anchor)
    return judge.satisfied(ids, p.category)


def _score_config(engine, judge: "_Judge", parsed: dict[tuple[str, str], Any], probes: Sequence[Probe], k: int,
                  mode: str, request_config, types: Sequence[str],
                  dislikes: dict[str, set[str]]) -> tuple[np.ndarray, np.ndarray]:
    """Per (probe, request type): the tuning objective, through the chat's request path
    (:meth:`agent.engine.Engine.recommend_request` on the rules' reading of each message),
    ``0.5 * (NDCG@k - disliked@k) + 0.5 * satisfaction`` (satisfaction 0 for an empty list),
    and disliked@k alone. A list must be what the person asked for, and hold what they would
    like, not what they would rate low."""
    engine.config = engine.config.model_copy(update={"request": request_config})
    engine.recommender.request_scorer = None
    vals, bad = [], []
    for p in probes:
        for t in types:
            out = engine.recommend_request(p.user, parsed[(p.user, t)], k, mode)
            ids = [r.item_id for r in out.items]
            sat = _satisfaction(judge, p, t, ids)
            r = _ranking(ids, p.target, k, dislikes.get(p.user, set()))
            vals.append(0.5 * (r[f"ndcg@{k}"] - r[f"disliked@{k}"]) + 0.5 * (0.0 if np.isnan(sat) else sat))
            bad.append(r[f"disliked@{k}"])
    return np.asarray(vals, dtype=np.float64), np.asarray(bad, dtype=np.float64)


def tune_request_mix(engine, probes: Sequence[Probe], k: int, mode: str, base_config,
                     tick: Callable[[], None] | None = None, dislikes: dict[str, set[str]] | None = None) -> dict:
    """Coordinate search over :data:`TUNING_GRID` on validation probes; returns the choice and the grid."""
    from agent.request_parser import parse_request

    parsed = {(p.user, t): parse_request(p.messages[t], engine.parse_context(p.user))
              for p in probes for t in REQUEST_TYPES}
    judge = _Judge(engine)
    cfg = base_config
    trace = []
    for name, values in TUNING_GRID.items():
        types = _TUNED_ON[name]
        scored = []
        for v in values:
            fields = _PAIRS.get(name)
            c = cfg.model_copy(update=dict(zip(fields, v)) if fields else {name: v})
            obj, bad = _score_config(engine, judge, parsed, probes, k, mode, c, types, dislikes or {})
            scored.append({"value": list(v) if isinstance(v, tuple) else v, "objective": float(obj.mean()),
                           f"disliked@{k}": float(bad.mean()), "config": c, "per_probe": obj})
            if tick:
                tick()
        best = max(scored, key=lambda e: e["objective"])
        for e in scored:  # paired: every setting answered the same requests
            diff = e["per_probe"] - best["per_probe"]
            e["se_vs_best"] = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else 0.0
        chosen = best
        if name in ("dislikes", "relatives"):  # one-standard-error rule, preferring fewer held-out dislikes
            near = [e for e in scored if e["objective"] >= best["objective"] - e["se_vs_best"]]
            chosen = min(near, key=lambda e: (e[f"disliked@{k}"], -e["objective"]))
        trace.append({"parameter": name, "judged_on": list(types),
                      "values": [{key: (_num(v) if isinstance(v, float) else v) for key, v in e.items()
                                  if key not in ("config", "per_probe")} for e in scored],
                      "chosen": chosen["value"]})
        cfg = chosen["config"]
    return {"request_config": cfg.model_dump(), "grid": trace,
            "objective": f"0.5 (NDCG@{k} of the held-out liked item - disliked@{k}) + 0.5 satisfaction, on validation"}


def _tuning_steps() -> int:
    return sum(len(v) for v in TUNING_GRID.values())


# ---- the run -----------------------------------------------------------------------------------
class ChatEvaluation:
    """One ``plural eval chat`` run (see the module docstring)."""

    def __init__(self, dataset: Dataset, config: ChatEvalConfig | None = None, engine_config=None,
                 progress: Callable[[str, int], Callable[[], None]] | None = None):
        from agent.config import EngineConfig

        self.dataset, self.config = dataset, config or ChatEvalConfig()
        self.engine_config = engine_config or EngineConfig()
        self._progress = progress or (lambda d, n: (lambda: None))

    def run(self) -> dict:
        with tempfile.TemporaryDirectory(prefix="plural-eval-chat-") as tmp:
            return self._run(Path(tmp))

    def _run(self, folder: Path) -> dict:
        cfg = self.config
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        split, dislikes = hold_out_dislikes(split_dataset(self.dataset, cfg.split), cfg.dislike_fraction,
                                            cfg.dislike_rating, cfg.seed)
        held_out = _liked_held_out(split)
        tuning = None
        request_config = self.engine_config.request
        if cfg.tune:
            t = time.perf_counter()
            val, val_dislikes = hold_out_dislikes(validation_split(split), cfg.dislike_fraction, cfg.dislike_rating,
                                                  cfg.seed + 1)
            val_engine = build_train_engine(self.dataset, val, self.engine_config, folder / "validation")
            check_no_leak(val_engine, _liked_held_out(val))
            check_no_leak(val_engine, {u: sorted(v) for u, v in val_dislikes.items()})
            val_probes = make_probes(val_engine, _liked_held_out(val), cfg.tune_users, cfg.seed + 1)
            tick = self._progress("Choosing the request mix (validation)", _tuning_steps())
            from personas.request import RequestConfig

            tuning = tune_request_mix(val_engine, val_probes, cfg.k, cfg.mode, RequestConfig.neutral(), tick,
                                      val_dislikes)
            tuning["started_from"] = "RequestConfig.neutral(): every soft term off"
            tuning["users"] = len(val_probes)
            val_engine.close()
            request_config = RequestConfig.model_validate(tuning["request_config"])
            timings["tune"] = round(time.perf_counter() - t, 2)
        t = time.perf_counter()
        base = build_train_engine(self.dataset, split, self.engine_config, folder / "test")
        leak = check_no_leak(base, _items_by_user(split.test))
        check_no_leak(base, {u: sorted(v) for u, v in dislikes.items()})
        probes = make_probes(base, held_out, cfg.users, cfg.seed)
        judge = _Judge(base)
        timings["build"] = round(time.perf_counter() - t, 2)
        runs: dict[str, _Run] = {}
        from agent.engine import Engine

        for name in cfg.systems:
            t = time.perf_counter()
            copy_dir = folder / f"system-{name}"
            shutil.copytree(base.data_dir, copy_dir)
            engine = Engine.open_data_dir(copy_dir)
            if name == "chat":
                system: ChatSystem = PluralChat(engine, cfg.k, cfg.mode, request_config)
            elif name == "chat_before":
                system = LegacyChat(engine, cfg.k, cfg.mode)
            elif name == "request_only":
                system = RequestOnly(engine, cfg.k, cfg.mode)
            else:
                system = EaseFilter(engine, cfg.k, cfg.mode)
            tick = self._progress(f"{SYSTEM_NAMES[name]}", len(probes))
            try:
                runs[name] = run_system(system, probes, judge, cfg.k, tick=tick, examples=3, dislikes=dislikes)
            finally:
                system.close()
                engine.close()
            timings[name] = round(time.perf_counter() - t, 2)
        base.close()
        timings["total"] = round(time.perf_counter() - t0, 2)
        return self._document(probes, runs, split, leak, tuning, request_config, timings)

    def _document(self, probes, runs: dict[str, _Run], split: Split, leak: dict, tuning, request_config,
                  timings: dict) -> dict:
        cfg = self.config
        results: dict[str, dict[str, Any]] = {}
        for t in (*REQUEST_TYPES, *FOLLOW_UPS):
            results[t] = {name: _summary(run.rows[t], cfg.bootstrap, cfg.seed) for name, run in runs.items()}
        latency = {name: {"p50_ms": _num(1000 * np.percentile(run.latency, 50)),
                          "p95_ms": _num(1000 * np.percentile(run.latency, 95)), "turns": len(run.latency)}
                   for name, run in runs.items() if run.latency}
        doc = {
            "schema_version": SCHEMA_VERSION, "task": "chat", "dataset": self.dataset.name,
            "config": cfg.model_dump(mode="json"), "engine_config": self.engine_config.model_dump(mode="json"),
            "split": {"seed": cfg.split.seed, "held_out_positives": len(split.test), "users": len(split.users)},
            "leak_check": leak, "simulated_users": len(probes),
            "systems": {n: SYSTEM_NAMES[n] for n in runs},
            "request_mix": {"request_config": request_config.model_dump(),
                            "chosen_on": "validation" if tuning else "defaults"},
            "tuning": tuning, "results": results, "latency": latency,
            "examples": {n: run.examples for n, run in runs.items()},
            "probes": [{"user": p.user, "target": p.target, "messages": p.messages} for p in probes[:20]],
            "timings_s": timings,
        }
        doc["paired"] = _paired(runs, cfg.k, cfg.bootstrap, cfg.seed)
        doc["targets"] = _targets(doc, cfg.k)
        return doc


def hold_out_dislikes(split: Split, fraction: float, rating: float, seed: int) -> tuple[Split, dict[str, set[str]]]:
    """``split`` with ``fraction`` of each user's low-rated training rows removed (seeded), and
    those held-out dislikes per user. The engine never sees them; a list that shows one shows a
    title the user would rate low."""
    import dataclasses

    tr = split.train
    low = np.flatnonzero(np.asarray(tr.ratings) <= rating) if tr.ratings is not None else np.zeros(0, np.int64)
    pick = low[np.random.default_rng(seed + 7919).random(len(low)) < fraction] if fraction > 0 else low[:0]
    keep = np.ones(len(tr), dtype=bool)
    keep[pick] = False
    held: dict[str, set[str]] = {}
    for i in pick:
        held.setdefault(str(tr.users[i]), set()).add(str(tr.items[i]))
    return dataclasses.replace(split, train=tr.take(keep)), held


def _paired(runs: dict[str, "_Run"], k: int, n_resamples: int, seed: int) -> dict:
    """Plural's chat against each other system, user by user (same users, same requests): the
    difference of HR@k and NDCG@k means with a bootstrap 95% interval and a Wilcoxon p."""
    from evals.stats import paired_comparison

    if "chat" not in runs:
        return {}
    out: dict[str, dict] = {}
    for t in (*REQUEST_TYPES, "more_like"):
        mine = {r["user"]: r for r in runs["chat"].rows[t]}
        out[t] = {}
        for other, run in runs.items():
            if other == "chat":
                continue
            theirs = {r["user"]: r for r in run.rows[t]}
            users = [u for u in mine if u in theirs]
            entry = {}
            for key in (f"hr@{k}", f"ndcg@{k}"):
                c = paired_comparison(np.array([mine[u][key] for u in users]), np.array([theirs[u][key] for u in users]),
                                      n_resamples=n_resamples, seed=seed)
                entry[key] = {"difference": _num(c.difference), "ci95": [_num(c.ci_low), _num(c.ci_high)],
                              "p": _num(c.p_value), "n": c.n}
            out[t][other] = entry
    return out


def _liked_held_out(split: Split) -> dict[str, list[str]]:
    """Held-out positives per user (the split's test rows are positives already)."""
    return _items_by_user(split.test)


def _targets(doc: dict, k: int) -> dict:
    """The issue's bars: category requests >= 95% satisfied; Plural's chat above both baselines
    in HR@k on at least 3 of the 4 request types; p50 turn <= 1 s without an LLM."""
    res = doc["results"]
    out: dict[str, Any] = {}
    chat = res["category"].get("chat")
    if chat:
        sat = chat["satisfaction"]["mean"]
        out["category_satisfied"] = {"value": sat, "bar": 0.95, "met": sat is not None and sat >= 0.95}
        wins = []
        for t in REQUEST_TYPES:
            mine = res[t]["chat"][f"hr@{k}"]["mean"]
            others = [res[t][b][f"hr@{k}"]["mean"] for b in ("request_only", "ease_filter") if b in res[t]]
            wins.append({"request": t, "chat": mine, "baselines": others,
                         "above_both": bool(others) and all(mine > o for o in others)})
        n = sum(w["above_both"] for w in wins)
        out["hit_rate_above_baselines"] = {"types": wins, "count": n, "bar": 3, "met": n >= 3}
    lat = doc["latency"].get("chat")
    if lat:
        out["p50_turn"] = {"value_ms": lat["p50_ms"], "bar_ms": 1000, "met": lat["p50_ms"] <= 1000}
    return out


def run_chat_eval(dataset: Dataset, config: ChatEvalConfig | None = None, engine_config=None,
                  progress=None) -> dict:
    """Run ``plural eval chat`` and return its result document."""
    return ChatEvaluation(dataset, config, engine_config, progress).run()


# ---- reports -----------------------------------------------------------------------------------
_LABELS = {"category": "category (\"a comedy\")", "category_period": "category + period (\"a comedy from the 90s\")",
           "like_item": "like X (\"something like Heat\")", "free_text": "free text (title words + category)",
           "refusal": "follow-up: refusal (\"not the first one\")", "more_like": "follow-up: \"more like the third one\""}


def _cell(m: dict | None, key: str) -> str:
    if not m or key not in m:
        return "–"
    v = m[key]
    return f"{_fmt(v['mean'], 3)} [{_fmt(v['ci95'][0], 3)}, {_fmt(v['ci95'][1], 3)}]"


def markdown_chat_report(doc: dict) -> str:
    k = doc["config"]["k"]
    lines = [f"# plural eval chat — {doc['dataset']}", "",
             f"{doc['simulated_users']} simulated users (seed {doc['config']['seed']}), engine fitted on the training "
             f"rows only (leak check: {doc['leak_check']['in_engine_history']} held-out pairs in its histories). "
             f"Lists of {k}; 95% bootstrap intervals over users.", ""]
    systems = list(doc["systems"])
    for t in (*REQUEST_TYPES, *FOLLOW_UPS):
        res = doc["results"][t]
        lines += [f"## {_LABELS[t]}", ""]
        if t == "refusal":
            lines += ["| system | refusal respected |", "|---|---|"]
            lines += [f"| {doc['systems'][s]} | {_cell(res.get(s), 'satisfaction')} |" for s in systems]
            lines.append("")
            continue
        sim = t in ("like_item", "more_like")
        head = ("| system | genre overlap with X (popular: same) | co-rating with X (popular) |" if sim else
                "| system | satisfied |")
        head += (f" HR@5 | HR@{k} | NDCG@5 | NDCG@{k} | disliked@{k} |"
                 + (" overlap@10 with another user |" if t in REQUEST_TYPES else ""))
        lines += [head, "|" + "---|" * (head.count("|") - 1)]
        for s in systems:
            m = res.get(s)
            if sim:
                row = (f"| {doc['systems'][s]} | {_cell(m, 'satisfaction')} ({_fmt(m['popular_genre_overlap']['mean'], 3)}) "
                       f"| {_cell(m, 'co_rating')} ({_fmt(m['popular_co_rating']['mean'], 3)}) |")
            else:
                row = f"| {doc['systems'][s]} | {_cell(m, 'satisfaction')} |"
            row += "".join(f" {_cell(m, key)} |" for key in ("hr@5", f"hr@{k}", "ndcg@5", f"ndcg@{k}", f"disliked@{k}"))
            if t in REQUEST_TYPES:
                row += f" {_cell(m, 'overlap')} |"
            lines.append(row)
        lines.append("")
    if doc.get("paired"):
        lines += [f"## Plural's chat minus each other system, paired by user (HR@{k} and NDCG@{k})", "",
                  "| request | " + " | ".join(doc["systems"][s] for s in systems if s != "chat") + " |",
                  "|---|" + "---|" * (len(systems) - 1)]
        for t, by in doc["paired"].items():
            cells = []
            for s in systems:
                if s == "chat" or s not in by:
                    continue
                h, n = by[s][f"hr@{k}"], by[s][f"ndcg@{k}"]
                cells.append(f"HR {_fmt(h['difference'], 3, sign=True)} [{_fmt(h['ci95'][0], 3, sign=True)}, "
                             f"{_fmt(h['ci95'][1], 3, sign=True)}]; NDCG {_fmt(n['difference'], 3, sign=True)}")
            lines.append(f"| {t} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Turn latency", "", "| system | p50 (ms) | p95 (ms) | turns |", "|---|---|---|---|"]
    for s, v in doc["latency"].items():
        lines.append(f"| {doc['systems'][s]} | {_fmt(v['p50_ms'], 1)} | {_fmt(v['p95_ms'], 1)} | {v['turns']} |")
    lines += ["", "## Targets", ""]
    tg = doc["targets"]
    if "category_satisfied" in tg:
        c = tg["category_satisfied"]
        lines.append(f"- category requests satisfied: {_fmt(c['value'], 3)} (bar 0.95): {'met' if c['met'] else 'NOT met'}")
        h = tg["hit_rate_above_baselines"]
        lines.append(f"- HR@{k} above both baselines on {h['count']} of 4 request types (bar 3): "
                     f"{'met' if h['met'] else 'NOT met'} ("
                     + ", ".join(f"{w['request']} {'yes' if w['above_both'] else 'no'}" for w in h["types"]) + ")")
    if "p50_turn" in tg:
        p = tg["p50_turn"]
        lines.append(f"- p50 turn {_fmt(p['value_ms'], 1)} ms (bar 1000 ms): {'met' if p['met'] else 'NOT met'}")
    mix = doc["request_mix"]
    lines += ["", "## Request mix", "",
              f"Chosen on {mix['chosen_on']} (objective: {(doc.get('tuning') or {}).get('objective', 'none')}): "
              + ", ".join(f"{key} {v}" for key, v in mix["request_config"].items()) + "."]
    if doc.get("tuning"):
        for step in doc["tuning"]["grid"]:
            vals = ", ".join(f"{v['value']}: {_fmt(v['objective'], 4)}" for v in step["values"])
            lines.append(f"- {step['parameter']} (on {', '.join(step['judged_on'])}): {vals} -> **{step['chosen']}**")
    lines += ["", "## Examples", ""]
    for s, exs in doc["examples"].items():
        for e in exs[:4]:
            lines.append(f"- {doc['systems'][s]}, user {e['user']}, “{e['message']}” (held out: {e['target']}): "
                         + "; ".join(e["titles"]))
    lines += ["", f"Timings (s): {doc['timings_s']}", ""]
    return "\n".join(lines)


def chat_plot(doc: dict, path: Path) -> None:
    """HR@k per request type and system, with the bootstrap intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = doc["config"]["k"]
    types = [t for t in (*REQUEST_TYPES, "more_like")]
    systems = list(doc["systems"])
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    width = 0.8 / max(len(systems), 1)
    for ax, key, title in ((axes[0], f"hr@{k}", f"HR@{k} of the held-out item"),
                           (axes[1], "satisfaction", "request satisfied (category; genre overlap for like-X)")):
        for n, s in enumerate(systems):
            means, lo, hi = [], [], []
            for t in types:
                m = doc["results"][t].get(s, {}).get(key)
                means.append(m["mean"] or 0 if m else 0)
                lo.append((m["mean"] or 0) - (m["ci95"][0] or 0) if m else 0)
                hi.append((m["ci95"][1] or 0) - (m["mean"] or 0) if m else 0)
            x = np.arange(len(types)) + n * width
            ax.bar(x, means, width, yerr=[lo, hi], capsize=2, label=doc["systems"][s])
        ax.set_xticks(np.arange(len(types)) + width * (len(systems) - 1) / 2)
        ax.set_xticklabels([t.replace("_", "\n") for t in types], fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_ylim(0, 1.05 if key == "satisfaction" else None)
    axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle(f"plural eval chat — {doc['dataset']}, {doc['simulated_users']} simulated users", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_chat_reports(doc: dict, out_dir: str | Path) -> dict[str, str]:
    from evals.report import write_json_and_markdown

    out = Path(out_dir)
    paths = write_json_and_markdown(doc, out, markdown_chat_report(doc))
    try:
        paths["plot"] = out / "chat.png"
        chat_plot(doc, paths["plot"])
    except ImportError:  # matplotlib is the `eval` extra
        paths.pop("plot", None)
    return {k: str(v) for k, v in paths.items()}


__all__ = ["ChatEvalConfig", "ChatEvaluation", "Probe", "make_probes", "markdown_chat_report", "run_chat_eval",
           "tune_request_mix", "write_chat_reports"]
