"""The engine's build configuration: what a data directory is built with.

A data directory is keyed by the data source and this configuration, so two configurations
never share (or overwrite) each other's caches.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from memory.errors import UsageError
from personas.attention import AttentionConfig
from personas.request import RequestConfig
from personas.induction import InductionConfig
from personas.scorers import EASEConfig, ItemKNNConfig, SparseEASEConfig


class EngineConfig(BaseModel):
    """Everything that shapes what ``plural`` builds for a dataset."""

    model_config = ConfigDict(extra="forbid")

    scorer: Literal["auto", "ease", "itemknn", "sparse_ease"] = "auto"
    """Collaborative scorer whose contributions the personas split. ``auto`` (resolved at build
    time, recorded in the manifest): dense ``ease`` up to ``dense_max_items`` items, else
    ``sparse_ease`` (see :meth:`resolve_scorer`)."""
    dense_max_items: int = Field(10_000, gt=0)
    """``scorer="auto"``: the most items dense EASE is fitted for. Dense EASE inverts an
    (items x items) float64 matrix: at 10,000 items ~1.5 min and ~2.4 GB peak on 2 cores, at
    20,000 ~12 min and ~10 GB (time n^3, memory n^2); sparse EASE fits 20,000 items in about a
    minute with memory linear in the items (docs/scale.md)."""
    ease: EASEConfig = Field(default_factory=EASEConfig)
    """EASE settings (lambda)."""
    sparse_ease: SparseEASEConfig = Field(default_factory=SparseEASEConfig)
    """Sparse (local-neighbourhood) EASE settings: lambda, neighbours per item."""
    itemknn: ItemKNNConfig = Field(default_factory=ItemKNNConfig)
    """ItemKNN settings."""
    positive_threshold: float | None = 4.0
    """Ratings at or above this are positives (None: every interaction is positive)."""
    embedder: str = "all-MiniLM-L6-v2"
    """Text embedding model: the packaged MiniLM, a local folder, or ``hash``/``hash:DIM`` (tests)."""
    collaborative_dim: int = Field(64, gt=0)
    """Dimensions of the collaborative item space (truncated SVD)."""
    induction: InductionConfig = Field(default_factory=InductionConfig)
    """Persona induction settings."""
    attention: AttentionConfig = Field(default_factory=AttentionConfig)
    """Attention rule and evidence count (read at query time; not part of the cache key)."""
    request: RequestConfig = Field(default_factory=RequestConfig)
    """How a chat request re-scores the personalised list (read at query time; not part of the cache key)."""
    personas_at_build: Literal["auto", "all", "lazy"] = "auto"
    """When personas are induced. ``lazy``: on each user's first request (deterministic, stored
    once; :meth:`agent.engine.Engine.induce_personas` induces many at once, in parallel);
    ``all``: every user at build; ``auto``: ``all`` up to ``eager_max_users`` users, else
    ``lazy``. Either way a user gets the same personas."""
    eager_max_users: int = Field(5_000, ge=0)
    """``personas_at_build="auto"``: the most users whose personas are induced at build
    (~6 ms a user on one core: 5,000 users ~30 s)."""

    def resolve_scorer(self, n_items: int) -> str:
        """The scorer a build over ``n_items`` items fits: ``scorer`` itself unless ``auto``."""
        if self.scorer != "auto":
            return self.scorer
        return "ease" if n_items <= self.dense_max_items else "sparse_ease"

    def scorer_settings(self, kind: str) -> dict:
        """The settings of scorer ``kind`` (a resolved name)."""
        return getattr(self, kind).model_dump()

    def induce_at_build(self, n_users: int) -> bool:
        """Whether a build over ``n_users`` users induces every user's personas."""
        if self.personas_at_build == "auto":
            return n_users <= self.eager_max_users
        return self.personas_at_build == "all"

    def cache_key(self) -> str:
        """Hash of the settings that change what is built.

        Kept stable across releases for existing data directories: the fields added with the
        ``auto`` scorer and lazy personas are left out while at their defaults, and ``auto`` is
        hashed as the ``ease`` that was the default before it (an explicit ``ease`` hashes apart,
        so the two never share a folder where they would build different scorers).
        """
        d = self.model_dump(mode="json", exclude={"attention", "request"})
        for name in _LATER_FIELDS:
            if d[name] == _DEFAULTS[name]:
                d.pop(name)
        if d["scorer"] == "auto":
            d["scorer"] = "ease"
        elif d["scorer"] == "ease":
            d["scorer_choice"] = "explicit"
        return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]

    @classmethod
    def from_file(cls, path: str | Path) -> "EngineConfig":
        """Read a JSON or TOML file (unknown keys are an error naming the key)."""
        p = Path(path)
        if not p.exists():
            raise UsageError("config file", str(p), "an existing .json or .toml file")
        text = p.read_text()
        if p.suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        else:
            data = json.loads(text)
        return cls.model_validate(data)


_LATER_FIELDS = ("dense_max_items", "sparse_ease", "personas_at_build", "eager_max_users")
"""Fields added after data-directory format 3 shipped (see :meth:`EngineConfig.cache_key`)."""
_DEFAULTS = {name: v for name, v in EngineConfig().model_dump(mode="json").items() if name in _LATER_FIELDS}
