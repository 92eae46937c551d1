"""The item catalog: ids, titles, text and categories, in a fixed item order.

Items are addressed two ways: by their external id (a string, as in the data files) and by
their position (``0..n_items-1``), which every matrix in Plural uses. ``Catalog.index`` maps one
to the other.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from memory.errors import UnknownItemError, UsageError


class Item(BaseModel):
    """One catalog item."""

    model_config = ConfigDict(frozen=True)

    item_id: str
    """External id, as in the data files."""
    title: str
    """Human-readable title shown in lists and explanations."""
    text: str = ""
    """Free text describing the item; this is what the text embedding model reads."""
    categories: tuple[str, ...] = Field(default_factory=tuple)
    """Categories (genres); used for calibration metrics and persona names."""


class Catalog:
    """An immutable, ordered collection of :class:`Item`.

    Example:
        >>> cat = Catalog.from_items([Item(item_id="1", title="Toy Story", categories=("Comedy",))])
        >>> cat.index("1"), cat.title(0)
        (0, 'Toy Story')
    """

    def __init__(self, items: Iterable[Item]):
        items = list(items)
        ids = [it.item_id for it in items]
        if len(set(ids)) != len(ids):
            seen: set[str] = set()
            dup = next(i for i in ids if i in seen or seen.add(i))  # type: ignore[func-returns-value]
            raise UsageError("catalog", f"duplicate item id {dup!r}", "unique item ids")
        self._items: tuple[Item, ...] = tuple(items)
        self._titles: tuple[str, ...] = tuple(it.title for it in items)
        self._pos: dict[str, int] = {iid: k for k, iid in enumerate(ids)}
        cats = sorted({c for it in items for c in it.categories})
        self.categories: tuple[str, ...] = tuple(cats)
        """Sorted vocabulary of every category in the catalog."""
        self._cat_pos = {c: k for k, c in enumerate(cats)}
        self._category_dist: np.ndarray | None = None

    @classmethod
    def from_items(cls, items: Iterable[Item]) -> "Catalog":
        """Build a catalog from items (kept in the given order)."""
        return cls(items)

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self):
        return iter(self._items)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._pos

    @property
    def item_ids(self) -> tuple[str, ...]:
        """External ids in catalog order."""
        return tuple(it.item_id for it in self._items)

    def item(self, pos: int) -> Item:
        """The item at position ``pos``."""
        return self._items[pos]

    def get(self, item_id: str) -> Item:
        """The item with external id ``item_id``; raises :class:`UnknownItemError`."""
        return self._items[self.index(item_id)]

    def index(self, item_id: str) -> int:
        """Position of ``item_id``; raises :class:`UnknownItemError` naming examples of known ids."""
        try:
            return self._pos[str(item_id)]
        except KeyError:
            raise UnknownItemError(str(item_id), self._pos) from None

    def indices(self, item_ids: Iterable[str], *, where: str = "catalog") -> np.ndarray:
        """Positions of several ids (int64 array), failing on the first unknown one."""
        out = []
        for iid in item_ids:
            pos = self._pos.get(str(iid))
            if pos is None:
                raise UnknownItemError(str(iid), self._pos, where=where)
            out.append(pos)
        return np.asarray(out, dtype=np.int64)

    def title(self, pos: int) -> str:
        return self._items[pos].title

    def all_titles(self) -> tuple[str, ...]:
        """Every title, in catalog order (what "a title the catalog knows" means to the checks)."""
        return self._titles

    def titles(self, positions: Sequence[int]) -> list[str]:
        return [self._items[p].title for p in positions]

    def texts(self) -> list[str]:
        """The text of every item, in catalog order (what the text embedder reads)."""
        return [it.text or it.title for it in self._items]

    def category_distribution(self) -> np.ndarray:
        """``p(g|i)`` as an (n_items, n_categories) float64 matrix: ``1/|genres(i)|`` per genre of i.

        Items without categories have an all-zero row.
        """
        if self._category_dist is None:
            m = np.zeros((len(self), len(self.categories)), dtype=np.float64)
            for k, it in enumerate(self._items):
                if it.categories:
                    share = 1.0 / len(set(it.categories))
                    for c in set(it.categories):
                        m[k, self._cat_pos[c]] = share
            self._category_dist = m
        return self._category_dist

    def items_in_categories(self, categories: Iterable[str]) -> np.ndarray:
        """Boolean mask of items that have at least one of ``categories`` (case-insensitive)."""
        wanted = {c.lower() for c in categories}
        known = {c.lower(): c for c in self.categories}
        unknown = [c for c in wanted if c not in known]
        if unknown:
            raise UsageError("category", unknown[0], self.categories)
        cols = [self._cat_pos[known[c]] for c in wanted]
        return (self.category_distribution()[:, cols] > 0).any(axis=1) if cols else np.zeros(len(self), dtype=bool)

    def to_records(self) -> list[dict]:
        return [it.model_dump() for it in self._items]

    @classmethod
    def from_records(cls, records: Iterable[dict]) -> "Catalog":
        return cls(Item(**{**r, "categories": tuple(r.get("categories") or ())}) for r in records)
