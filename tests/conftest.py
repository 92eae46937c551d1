"""Shared fixtures: an isolated cache folder, the synthetic dataset, a built synthetic engine."""

from __future__ import annotations

import os

import numpy as np
import pytest


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
    from math import comb

    a, b = np.asarray(a), np.asarray(b)
    _, a = np.unique(a, return_inverse=True)
    _, b = np.unique(b, return_inverse=True)
    ct = np.zeros((a.max() + 1, b.max() + 1), dtype=np.int64)
    np.add.at(ct, (a, b), 1)
    sc = sum(comb(int(x), 2) for x in ct.ravel())
    sa = sum(comb(int(x), 2) for x in ct.sum(1))
    sb = sum(comb(int(x), 2) for x in ct.sum(0))
    n = comb(len(a), 2)
    expected = sa * sb / n if n else 0.0
    mx = (sa + sb) / 2
    return 1.0 if mx == expected else (sc - expected) / (mx - expected)
