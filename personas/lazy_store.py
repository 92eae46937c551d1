"""Personas induced on a user's first read, stored once.

:class:`LazyPersonaStore` wraps any :class:`~personas.store.PersonaStore`. ``get`` of a user
without personas induces them (a deterministic function of the user's positives: the same sets
whatever the order, thread or process), then stores them in a transaction that first reads the
user again: when a concurrent first request stored theirs meanwhile, that set is returned and
nothing is written, so a user never has two version chains. Induction runs outside the
transaction (it is the slow part); only the check-and-insert holds the store's lock (SQLite:
``BEGIN IMMEDIATE``; Postgres: the user's row or advisory lock).

Writes, versions and transactions go straight to the wrapped store.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from personas.model import PersonaSet
from personas.store import PersonaStore


class LazyPersonaStore(PersonaStore):
    """A persona store that induces a known user's personas when they are first read.

    ``induce(user_id)`` returns the user's induced :class:`PersonaSet`, or None for a user it
    does not know (then ``get`` returns None, as the wrapped store would).

    Example:
        >>> store = LazyPersonaStore(SqlitePersonaStore(path), induce)            # doctest: +SKIP
        >>> store.get("42").personas[0].name                                        # doctest: +SKIP
        'Drama & Romance'
    """

    def __init__(self, inner: PersonaStore, induce: Callable[[str], PersonaSet | None]):
        self.inner = inner
        """The store that holds the personas."""
        self.induce = induce
        self.induced_here = 0
        """Users this wrapper induced and stored (for tests and benchmarks)."""

    def get(self, user_id: str) -> PersonaSet | None:
        pset = self.inner.get(user_id)
        if pset is not None:
            return pset
        return self.ensure(str(user_id))

    def ensure(self, user_id: str, induced: PersonaSet | None = None) -> PersonaSet | None:
        """The user's stored personas, inducing and storing them first when there are none
        (``induced``: a set already induced for this user, e.g. by a worker process)."""
        new = induced if induced is not None else self.induce(user_id)
        if new is None:
            return None
        with self.inner.transaction():
            current = self.inner.get(user_id)  # under the store's lock: a concurrent first write shows here
            if current is not None:
                return current
            self.inner.put_many([new], reason="induction")
            self.induced_here += 1
            return self.inner.get(user_id)

    def store_induced(self, sets: Iterable[PersonaSet]) -> int:
        """Store many induced sets in one transaction, skipping users who have personas by then;
        returns how many were stored."""
        with self.inner.transaction():
            fresh = [s for s in sets if self.inner.get(s.user_id) is None]
            if fresh:
                self.inner.put_many(fresh, reason="induction")
        self.induced_here += len(fresh)
        return len(fresh)

    # ---- everything else is the wrapped store's ------------------------------------------
    def _write(self, items) -> None:
        self.inner._write(items)

    def put_many(self, sets: Iterable[PersonaSet], reason: str = "induction", feedback: dict | None = None,
                 expected_versions: Mapping[str, Mapping[str, int]] | None = None) -> None:
        self.inner.put_many(sets, reason, feedback, expected_versions)

    def versions(self, user_id: str, persona_id: str | None = None):
        return self.inner.versions(user_id, persona_id)

    def users(self) -> list[str]:
        """Users whose personas are stored (induced ones only)."""
        return self.inner.users()

    def transaction(self):
        return self.inner.transaction()

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()

    def __getattr__(self, name: str):
        # store-specific extras (Postgres seeding and metadata, SQLite's connection for the
        # exposure and thread tables) stay reachable through the wrapper
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)
