"""Embedders: the deterministic hash embedder and the packaged sentence-transformers model with its cache."""

from __future__ import annotations

import numpy as np
import pytest

from memory.embeddings import EmbeddingCache, HashEmbedder, SentenceTransformerEmbedder, make_embedder
from memory.errors import UsageError


class EmbedderContract:
    def make(self, tmp_path):
        raise NotImplementedError

    def test_unit_rows_and_determinism(self, tmp_path):
        e = self.make(tmp_path)
        v = e.embed(["a space opera with aliens", "a quiet family drama", "a space opera with aliens"])
        assert v.dtype == np.float32 and v.shape == (3, e.dim)
        assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
        assert np.allclose(v[0], v[2])
        assert v[0] @ v[1] < 0.99

    def test_related_texts_are_closer(self, tmp_path):
        e = self.make(tmp_path)
        a, b, c = e.embed(["space opera with aliens and starships", "aliens and starships in space",
                           "a romantic wedding in paris"])
        assert a @ b > a @ c


class TestHashEmbedder(EmbedderContract):
    def make(self, tmp_path):
        return HashEmbedder(dim=128, seed=1)

    def test_seed_changes_vectors(self):
        assert not np.allclose(HashEmbedder(64, 0).embed(["x y"]), HashEmbedder(64, 1).embed(["x y"]))

    def test_empty_text_is_a_zero_row(self):
        assert not HashEmbedder(16).embed([""]).any()


@pytest.mark.slow
class TestPackagedMiniLM(EmbedderContract):
    def make(self, tmp_path):
        return SentenceTransformerEmbedder(cache_dir=str(tmp_path / "c"))

    def test_cache_is_keyed_by_model_and_text(self, tmp_path):
        e = self.make(tmp_path)
        first = e.embed(["a heist thriller"])
        assert e.dim == 384
        cache = EmbeddingCache(tmp_path / "c" / "embeddings.sqlite")
        got = cache.get_many(e.name, ["a heist thriller"])
        assert len(got) == 1 and np.allclose(next(iter(got.values())), first[0])
        assert cache.get_many("st:other-model", ["a heist thriller"]) == {}
        again = SentenceTransformerEmbedder(cache_dir=str(tmp_path / "c"))
        assert np.allclose(again.embed(["a heist thriller"]), first)
        assert again._model is None  # served from the cache, model never loaded


def test_unknown_model_lists_what_is_available(tmp_path):
    e = make_embedder("no-such-model-anywhere", cache_dir=str(tmp_path))
    with pytest.raises(UsageError, match="packaged"):
        e.embed(["x"])


def test_make_embedder_hash_spec():
    e = make_embedder("hash:32")
    assert isinstance(e, HashEmbedder) and e.dim == 32
