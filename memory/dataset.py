"""A dataset: a catalog, its interaction log and, for predefined splits, a test log."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from memory.catalog import Catalog
from memory.interactions import InteractionLog


@dataclass(frozen=True)
class Dataset:
    """What every layer above ``memory`` reads.

    ``interactions`` is the training history for predefined splits and the full log otherwise;
    ``test`` is only set when the data came as separate train and test files.
    """

    name: str
    """Short name used in reports and cache folders (``ml-100k``, ``ml-1m``, ``synthetic``...)."""
    catalog: Catalog
    interactions: InteractionLog
    test: InteractionLog | None = None
    source: str = ""
    """Where it was read from (a path or a package), for provenance."""
    meta: dict = field(default_factory=dict)

    def fingerprint(self) -> str:
        """A short content hash: caches built from this dataset are keyed by it."""
        h = hashlib.sha1()
        h.update(self.name.encode())
        for iid, it in zip(self.catalog.item_ids, self.catalog):
            h.update(f"{iid}\x1f{it.title}\x1f{it.text}\x1f{'|'.join(it.categories)}\x1e".encode())
        for log in (self.interactions, self.test):
            if log is None:
                continue
            h.update(str(len(log)).encode())
            h.update(log.users.astype(str).tobytes() if len(log) else b"")
            h.update(log.items.astype(str).tobytes() if len(log) else b"")
            h.update(log.ratings.tobytes())
            h.update(log.timestamps.tobytes())
        return h.hexdigest()[:16]

    def describe(self) -> dict:
        """Counts for ``plural data info``."""
        log = self.interactions
        users = log.user_ids()
        out = {
            "name": self.name,
            "source": self.source,
            "items": len(self.catalog),
            "users": len(users),
            "interactions": len(log),
            "density": round(len(log) / max(1, len(users) * len(self.catalog)), 5),
            "rating_min": float(log.ratings.min()) if len(log) else None,
            "rating_max": float(log.ratings.max()) if len(log) else None,
            "categories": list(self.catalog.categories),
        }
        if self.test is not None:
            out["test_interactions"] = len(self.test)
            out["test_users"] = len(self.test.user_ids())
        return out
