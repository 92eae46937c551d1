"""The scaling benchmark's core (generation, build, serving figures) on a tiny size, and the
large synthetic generator's planted structure."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def scale():
    spec = importlib.util.spec_from_file_location("bench_scale", ROOT / "benchmarks" / "scale.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_parse_size(scale):
    assert scale.parse_size("1Mx20k") == (1_000_000, 20_000)
    assert scale.parse_size("2500X600") == (2_500, 600)
    with pytest.raises(ValueError, match="USERSxITEMS"):
        scale.parse_size("1M")


def test_default_generator_is_unchanged(synthetic):
    """The small generator the tests rely on: content hash recorded before the large mode."""
    assert synthetic.dataset.fingerprint() == "d130192edc71f2a6"


def test_large_generator_plants_personas_and_is_deterministic():
    from memory.synthetic import generate_synthetic_large

    a = generate_synthetic_large(2_000, 400, n_topics=10, seed=3)
    b = generate_synthetic_large(2_000, 400, n_topics=10, seed=3)
    assert np.array_equal(a.history.items, b.history.items) and np.array_equal(a.history.ratings, b.history.ratings)
    assert len(a.catalog) == 400 and len(a.history.user_ids) == 2_000
    k = (a.user_topics >= 0).sum(1)
    assert set(k) == {2, 3}
    planted = 0
    for r, u in enumerate(a.history.user_ids[:200]):
        pos = a.history.positives(u)
        topics = a.item_topic[pos]
        assert set(topics) <= set(a.user_topics[r][a.user_topics[r] >= 0])  # positives come from planted topics
        planted += len(set(topics))
        items, ratings, ts = a.history.events(u)
        assert len(np.unique(items)) == len(items) and (np.diff(ts) > 0).all()
        assert (ratings[ratings < 3] <= 2).all() and (ratings >= 4).sum() == len(pos)
    assert planted / 200 >= 2.0
    with pytest.raises(ValueError, match="n_topics"):
        generate_synthetic_large(10, 5, n_topics=2)


def test_quick_core_build_and_serve(scale, tmp_path):
    ddir = tmp_path / "d"
    b = scale.build_step(600, 300, ddir, dense_max_items=100, eager_max_users=0)
    assert b["scorer"]["kind"] == "sparse_ease" and b["personas_at_build"] == "lazy"
    assert b["build_peak_rss_mb"] > 0 and b["data_dir_mb"] > 0 and b["interactions"] > 600 * 20
    s = scale.serve_step(ddir, requests=10, batch_users=20, induce_users=15, workers=1)
    assert s["first_request_users_without_personas"] == 10
    assert s["first_request_ms"]["n"] == 10 and s["recommend_ms"]["relevance"]["p50"] > 0
    assert s["induce_in_process"]["induced"] == 15 and "induce_workers" not in s
    assert s["batch"]["in_process"]["rows"] == 20 * 10
    rows = scale.summary_rows([{"size": "600x300", "build": b, "serve": s}])
    assert rows[0]["scorer"] == "sparse_ease" and rows[0]["recommend_p50_ms"] == s["recommend_ms"]["relevance"]["p50"]
    scale.plot(rows, tmp_path / "scale.png")
    assert (tmp_path / "scale.png").stat().st_size > 10_000
    json.dumps(rows)  # the JSON the script writes
    table = scale.markdown_table(rows).splitlines()
    assert len(table) == 3 and "sparse_ease" in table[2] and "600" in table[2]
