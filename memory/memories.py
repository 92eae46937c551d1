"""Typed memories on a :class:`MemoryStore` and an :class:`Embedder`: catalog, episodic, semantic.

Namespaces: ``("catalog",)`` for items, ``("user", uid, "episodic")`` for a user's events
(interactions, feedback, chat turns, recommendations shown) and ``("user", uid, "semantic")``
for what is known about the user (facts, summaries), each fact citing the episodic events it
came from. Every method that takes a user id reads and writes only that user's namespaces.

Example:
    >>> from memory.embeddings import HashEmbedder
    >>> from memory.store import InMemoryMemoryStore
    >>> emb = HashEmbedder(dim=64)
    >>> store = InMemoryMemoryStore(dim=64)
    >>> episodes, facts = EpisodicMemory(store, emb), SemanticMemory(store, emb)
    >>> e = episodes.record("42", "interaction", "watched Alien, loved the slow dread", {"item_id": "1"})
    >>> f = facts.add_fact("42", "enjoys slow-burn sci-fi horror", source_event_ids=[e.record_id])
    >>> [r.text for r, _ in facts.search("42", "sci-fi horror", k=1)]
    ['enjoys slow-burn sci-fi horror']
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from memory.catalog import Catalog
from memory.embeddings import Embedder
from memory.errors import UnknownItemError, UsageError
from memory.store import MemoryRecord, MemoryStore, Namespace, validate_namespace

CATALOG_NAMESPACE: Namespace = ("catalog",)
SECONDS_PER_DAY = 86_400.0


def episodic_namespace(user_id: str) -> Namespace:
    """``("user", user_id, "episodic")``, validated."""
    return _user_ns(user_id, "episodic")


def semantic_namespace(user_id: str) -> Namespace:
    """``("user", user_id, "semantic")``, validated."""
    return _user_ns(user_id, "semantic")


def _user_ns(user_id: Any, part: str) -> Namespace:
    if not isinstance(user_id, str) or not user_id or "/" in user_id or "\x00" in user_id:
        raise UsageError("user_id", user_id, "a non-empty str without '/' or NUL (pass str(uid) for numbers)")
    return validate_namespace(("user", user_id, part))


def forget_user(store: MemoryStore, user_id: str) -> int:
    """Delete everything stored about ``user_id`` (every ``("user", user_id, ...)`` namespace), atomically.

    Returns how many records were deleted.
    """
    _user_ns(user_id, "episodic")  # validates the id
    with store.transaction():
        return sum(store.delete_namespace(ns) for ns in store.namespaces(("user", user_id)))


class _Embedded:
    def __init__(self, store: MemoryStore, embedder: Embedder):
        if embedder.dim != store.dim:
            raise UsageError("embedder dim", embedder.dim,
                             f"{store.dim}, the store's dim (embedder {embedder.name!r})")
        self.store, self.embedder = store, embedder

    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        return self.embedder.embed(list(texts)) if texts else np.zeros((0, self.store.dim), np.float32)


# ----------------------------------------------------------------------------------------
class CatalogIndex(_Embedded):
    """Items by text, searchable by text or vector, optionally within a candidate set.

    Item ids are the catalog's external ids (strings), kept in each record's payload as
    ``item_id``; adding an item id again replaces its text and vector. The item-id map is
    cached in this object: call :meth:`refresh` after another object wrote the catalog.

    Example:
        >>> from memory.embeddings import HashEmbedder
        >>> from memory.store import InMemoryMemoryStore
        >>> cat = CatalogIndex(InMemoryMemoryStore(dim=64), HashEmbedder(dim=64))
        >>> cat.add_items({"1": "Alien: sci-fi horror in space", "2": "Toy Story: toys come alive"})
        >>> cat.search("toys", k=1)[0][0]
        '2'
    """

    namespace: Namespace = CATALOG_NAMESPACE

    def __init__(self, store: MemoryStore, embedder: Embedder):
        super().__init__(store, embedder)
        self._by_item: dict[str, int] | None = None

    def refresh(self) -> None:
        """Forget the cached item-id map; the next call rebuilds it from the store."""
        self._by_item = None

    def _map(self) -> dict[str, int]:
        if self._by_item is None:
            self._by_item = {str(r.payload["item_id"]): r.record_id  # type: ignore[misc]
                             for r in self.store.list(self.namespace, kind="item", newest_first=False)}
        return self._by_item

    def add_items(self, items: Mapping[str, str] | Iterable[tuple[str, str]],
                  timestamp: float | None = None) -> None:
        """Index ``item_id -> text`` pairs (a later duplicate within ``items`` wins)."""
        pairs = dict(items.items() if isinstance(items, Mapping) else items)
        for iid, text in pairs.items():
            if not isinstance(iid, str) or not isinstance(text, str):
                raise UsageError("item", (iid, text), "(item_id: str, text: str) pairs")
        if not pairs:
            return
        ts = time.time() if timestamp is None else timestamp
        vecs = self._embed(list(pairs.values()))
        known = self._map()
        with self.store.transaction():
            stale = [known[i] for i in pairs if i in known]
            self.store.delete(self.namespace, stale)
            recs = [MemoryRecord(kind="item", text=t, timestamp=ts, payload={"item_id": i})
                    for i, t in pairs.items()]
            ids = self.store.put(self.namespace, recs, vecs)
        # update the map only once the transaction committed
        known.update(zip(pairs, ids))

    def add_catalog(self, catalog: Catalog) -> None:
        """Index every item of ``catalog``: its title, then its text when it has one."""
        self.add_items({it.item_id: f"{it.title}. {it.text}" if it.text else it.title for it in catalog})

    def remove_items(self, item_ids: Iterable[str]) -> int:
        """Remove these items (absent ones are ignored); returns how many were removed."""
        known = self._map()
        drop = [i for i in dict.fromkeys(item_ids) if i in known]
        n = self.store.delete(self.namespace, [known[i] for i in drop])
        for i in drop:
            del known[i]
        return n

    def __len__(self) -> int:
        return len(self._map())

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._map()

    def search(self, text: str, k: int = 10,
               allowed_item_ids: Iterable[str] | None = None) -> list[tuple[str, float]]:
        """The ``k`` items most similar to ``text``, as ``(item_id, score)``, best first.

        ``allowed_item_ids`` restricts the answer to those items (a candidate set); an id that
        is not indexed raises :class:`UnknownItemError`.
        """
        return self.search_vector(self.embedder.embed_one(text), k, allowed_item_ids)

    def search_vector(self, vector: Any, k: int = 10,
                      allowed_item_ids: Iterable[str] | None = None) -> list[tuple[str, float]]:
        """Like :meth:`search` with an already embedded query (e.g. a persona vector)."""
        ids = None
        if allowed_item_ids is not None:
            known = self._map()
            allowed = list(dict.fromkeys(allowed_item_ids))
            for i in allowed:
                if i not in known:
                    raise UnknownItemError(i, known, where="catalog index")
            if not allowed:
                return []
            ids = [known[i] for i in allowed]
        hits = self.store.search(self.namespace, vector, k, kind="item", ids=ids)
        return [(str(r.payload["item_id"]), s) for r, s in hits]


# ----------------------------------------------------------------------------------------
class RecalledEvent(BaseModel):
    """An episodic record with the parts of its :meth:`EpisodicMemory.recall` score."""

    model_config = ConfigDict(frozen=True)

    record: MemoryRecord
    """The event."""
    score: float
    """``recency_weight * recency + (1 - recency_weight) * similarity``; results sort by it."""
    similarity: float
    """Inner product of the query and event embeddings (cosine, in [-1, 1])."""
    recency: float
    """``0.5 ** (age_days / half_life_days)``: 1 now, 0.5 one half-life ago (future events count as now)."""


class EpisodicMemory(_Embedded):
    """Time-stamped events of each user: interactions, feedback, chat turns, recommendations.

    ``clock`` (unix seconds) stamps events recorded without a timestamp and is "now" for
    :meth:`recall`; tests pass a fixed one.

    Example:
        >>> from memory.embeddings import HashEmbedder
        >>> from memory.store import InMemoryMemoryStore
        >>> mem = EpisodicMemory(InMemoryMemoryStore(dim=64), HashEmbedder(dim=64), clock=lambda: 1e9)
        >>> _ = mem.record("7", "chat_turn", "I want something light tonight")
        >>> [r.text for r in mem.recent("7", n=1)]
        ['I want something light tonight']
    """

    def __init__(self, store: MemoryStore, embedder: Embedder, clock: Callable[[], float] = time.time):
        super().__init__(store, embedder)
        self.clock = clock

    def record(self, user_id: str, kind: str, text: str, payload: Mapping[str, Any] | None = None,
               timestamp: float | None = None) -> MemoryRecord:
        """Store one event; returns it with its id."""
        rec = MemoryRecord(kind=kind, text=text, payload=dict(payload or {}),
                           timestamp=self.clock() if timestamp is None else timestamp)
        return self.record_many(user_id, [rec])[0]

    def record_many(self, user_id: str, events: Sequence[MemoryRecord]) -> list[MemoryRecord]:
        """Store several events in one write (e.g. a user's imported history); returns them with ids."""
        ns = episodic_namespace(user_id)
        events = list(events)
        ids = self.store.put(ns, events, self._embed([e.text for e in events]))
        return [e.model_copy(update={"record_id": i, "namespace": ns}) for e, i in zip(events, ids)]

    def recent(self, user_id: str, n: int = 10, kind: str | None = None) -> list[MemoryRecord]:
        """The ``n`` newest events, newest first."""
        return self.store.list(episodic_namespace(user_id), kind=kind, limit=n, newest_first=True)

    def get(self, user_id: str, event_ids: Sequence[int]) -> list[MemoryRecord]:
        """These events of this user (absent ids skipped)."""
        return self.store.get(episodic_namespace(user_id), event_ids)

    def search(self, user_id: str, text: str, k: int = 10,
               kind: str | None = None) -> list[tuple[MemoryRecord, float]]:
        """The ``k`` events most similar to ``text``, with their similarity, best first."""
        return self.store.search(episodic_namespace(user_id), self.embedder.embed_one(text), k, kind=kind)

    def recall(self, user_id: str, text: str, k: int = 10, recency_weight: float = 0.6,
               half_life_days: float = 30.0, kind: str | None = None,
               now: float | None = None) -> list[RecalledEvent]:
        """The ``k`` events that best blend recency and similarity to ``text``.

        ``score = w * recency + (1 - w) * similarity`` with ``recency = 0.5 ** (age / half_life)``.
        The default ``w = 0.6`` favours what happened lately; ``w = 0`` is pure similarity,
        ``w = 1`` pure recency. Every event of the user is scored (per-user memory is small),
        so the answer is exact.
        """
        if not 0.0 <= recency_weight <= 1.0:
            raise UsageError("recency_weight", recency_weight, "a number in [0, 1]")
        if not half_life_days > 0:
            raise UsageError("half_life_days", half_life_days, "a positive number of days")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise UsageError("k", k, "an integer >= 1")
        ns = episodic_namespace(user_id)
        n = self.store.count(ns, kind=kind)
        if n == 0:
            return []
        now = self.clock() if now is None else now
        half_life = half_life_days * SECONDS_PER_DAY
        out = []
        for rec, sim in self.store.search(ns, self.embedder.embed_one(text), n, kind=kind):
            age = max(0.0, now - rec.timestamp)
            rec_score = 0.5 ** (age / half_life)
            out.append(RecalledEvent(record=rec, similarity=sim, recency=rec_score,
                                     score=recency_weight * rec_score + (1 - recency_weight) * sim))
        out.sort(key=lambda e: (-e.score, -e.record.timestamp, e.record.record_id))
        return out[:k]

    def forget(self, user_id: str, event_ids: Sequence[int] | None = None) -> int:
        """Delete these events, or all of the user's events when ``event_ids`` is None."""
        ns = episodic_namespace(user_id)
        if event_ids is None:
            return self.store.delete_namespace(ns)
        return self.store.delete(ns, event_ids)


# ----------------------------------------------------------------------------------------
class SemanticMemory(_Embedded):
    """What is known about each user (facts, summaries), each citing the events it came from.

    ``source_ids`` of a fact are ids in the same user's episodic memory; they are checked on
    write, so a fact can never cite another user's events.

    Example:
        >>> from memory.embeddings import HashEmbedder
        >>> from memory.store import InMemoryMemoryStore
        >>> sem = SemanticMemory(InMemoryMemoryStore(dim=64), HashEmbedder(dim=64), clock=lambda: 0.0)
        >>> _ = sem.replace_facts("7", ["prefers comedies", "watches on weekends"])
        >>> [f.text for f in sem.facts("7")]
        ['prefers comedies', 'watches on weekends']
    """

    def __init__(self, store: MemoryStore, embedder: Embedder, clock: Callable[[], float] = time.time):
        super().__init__(store, embedder)
        self.clock = clock

    def _check_sources(self, user_id: str, source_ids: Iterable[int]) -> list[int]:
        ids = [int(i) for i in dict.fromkeys(source_ids)]
        if ids:
            found = {r.record_id for r in self.store.get(episodic_namespace(user_id), ids)}
            missing = [i for i in ids if i not in found]
            if missing:
                raise UsageError("source_event_ids", missing,
                                 f"ids of user {user_id!r}'s episodic events "
                                 f"({len(found)} of the given ids exist)")
        return ids

    def _draft(self, user_id: str, fact: str | MemoryRecord, kind: str) -> MemoryRecord:
        if isinstance(fact, str):
            fact = MemoryRecord(kind=kind, text=fact, timestamp=self.clock())
        elif not isinstance(fact, MemoryRecord):
            raise UsageError("fact", fact, "a str or a MemoryRecord")
        return fact.model_copy(update={"record_id": None, "namespace": (),
                                       "source_ids": self._check_sources(user_id, fact.source_ids)})

    def add_fact(self, user_id: str, text: str, source_event_ids: Sequence[int] = (), kind: str = "fact",
                 payload: Mapping[str, Any] | None = None) -> MemoryRecord:
        """Store one fact citing ``source_event_ids``; returns it with its id."""
        ns = semantic_namespace(user_id)
        rec = MemoryRecord(kind=kind, text=text, timestamp=self.clock(), payload=dict(payload or {}),
                           source_ids=self._check_sources(user_id, source_event_ids))
        return self.store.put_one(ns, rec, self.embedder.embed_one(text))

    def facts(self, user_id: str, kind: str | None = None) -> list[MemoryRecord]:
        """The user's facts (of ``kind`` if given), oldest first."""
        return self.store.list(semantic_namespace(user_id), kind=kind, newest_first=False)

    def search(self, user_id: str, text: str, k: int = 10,
               kind: str | None = None) -> list[tuple[MemoryRecord, float]]:
        """The ``k`` facts most similar to ``text``, with their similarity, best first."""
        return self.store.search(semantic_namespace(user_id), self.embedder.embed_one(text), k, kind=kind)

    def sources(self, user_id: str, fact: MemoryRecord) -> list[MemoryRecord]:
        """The episodic events a fact cites (those still stored)."""
        return self.store.get(episodic_namespace(user_id), fact.source_ids)

    def replace_facts(self, user_id: str, facts: Sequence[str | MemoryRecord], kind: str | None = None
                      ) -> list[MemoryRecord]:
        """Replace the user's facts (only those of ``kind`` if given) with ``facts``, atomically.

        A str becomes a fact of kind ``kind or "fact"``; a :class:`MemoryRecord` keeps its own
        kind, payload and ``source_ids``. Readers see the old set or the new one, never a mix.
        """
        ns = semantic_namespace(user_id)
        drafts = [self._draft(user_id, f, kind or "fact") for f in facts]
        vecs = self._embed([d.text for d in drafts])
        with self.store.transaction():
            old = [r.record_id for r in self.store.list(ns, kind=kind)]
            self.store.delete(ns, old)  # type: ignore[arg-type]
            ids = self.store.put(ns, drafts, vecs)
        return [d.model_copy(update={"record_id": i, "namespace": ns}) for d, i in zip(drafts, ids)]
