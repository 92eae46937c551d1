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
from personas.scorers import EASEConfig, ItemKNNConfig


class EngineConfig(BaseModel):
    """Everything that shapes what ``plural`` builds for a dataset."""

    model_config = ConfigDict(extra="forbid")

    scorer: Literal["ease", "itemknn"] = "ease"
    """Collaborative scorer whose contributions the personas split."""
    ease: EASEConfig = Field(default_factory=EASEConfig)
    """EASE settings (lambda)."""
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

    def cache_key(self) -> str:
        """Hash of the settings that change what is built."""
        d = self.model_dump(mode="json", exclude={"attention", "request"})
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
