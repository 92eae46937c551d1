"""Shared fixtures: an isolated cache folder, the synthetic dataset, a built synthetic engine."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _single_thread_faiss():
    """FAISS's OpenMP start-up dominates on tiny data (k-means on 200 points: ~0.3 s on 2 cores
    against 0.2 ms on one thread); Plural configures it through memory.faiss_runtime, and so do
    the tests, before any test imports faiss on its own."""
    from memory.faiss_runtime import load_faiss

    load_faiss()
    yield


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Every test run writes caches and data directories under a temp folder, never ~/.cache."""
    root = tmp_path_factory.mktemp("plural-cache")
    old = {k: os.environ.get(k) for k in ("PLURAL_CACHE_DIR", "PLURAL_DATA_DIR", "HF_HUB_OFFLINE")}
    # the embedding cache is shared across runs when the caller sets PLURAL_TEST_CACHE (faster reruns)
    os.environ["PLURAL_CACHE_DIR"] = os.environ.get("PLURAL_TEST_CACHE") or str(root / "cache")
    os.environ["PLURAL_DATA_DIR"] = str(root / "data")
    os.environ["HF_HUB_OFFLINE"] = "1"
    yield root
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def synthetic():
    from memory.synthetic import generate_synthetic

    return generate_synthetic(seed=0)


@pytest.fixture(scope="session")
def hash_config():
    from agent.config import EngineConfig

    return EngineConfig(embedder="hash:128")


@pytest.fixture(scope="session")
def synthetic_engine(tmp_path_factory, hash_config):
    from agent.engine import Engine
    from memory.loaders import DataSource

    ddir = tmp_path_factory.mktemp("synthetic-engine") / "data"
    return Engine.open(DataSource(dataset="synthetic"), hash_config, ddir)


def adjusted_rand_index(a, b) -> float:
    """ARI of two labelings (used to compare induced personas with planted ones)."""
    from evals.persona_quality import adjusted_rand_index as ari

    return ari(a, b)
