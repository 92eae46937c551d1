"""The engine's data directory: staged builds, reuse, isolation of configurations."""

from __future__ import annotations

import json

import numpy as np
import pytest

from agent.config import EngineConfig
from agent.engine import Engine, default_data_dir
from memory.errors import UnknownUserError, UsageError
from memory.loaders import DataSource


def test_reopen_restores_the_same_recommendations(synthetic_engine):
    again = Engine.open(DataSource(dataset="synthetic"), synthetic_engine.config, synthetic_engine.data_dir)
    a = synthetic_engine.recommend("11", k=10, mode="persona_fill")
    b = again.recommend("11", k=10, mode="persona_fill")
    assert [r.model_dump() for r in a.items] == [r.model_dump() for r in b.items]
    assert a.provenance["personas"] == b.provenance["personas"]


def test_failed_validation_writes_nothing(tmp_path, hash_config):
    target = tmp_path / "dd"

    def reject(history):
        raise UnknownUserError("ghost", history.user_ids)

    with pytest.raises(UnknownUserError):
        Engine.open(DataSource(dataset="synthetic"), hash_config, target, validate=reject)
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_failed_build_leaves_no_staging_folder(tmp_path, hash_config, monkeypatch):
    import personas.induction as induction

    def boom(self, user_id, positives):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(induction.PersonaInducer, "induce", boom)
    with pytest.raises(RuntimeError):
        Engine.open(DataSource(dataset="synthetic"), hash_config, tmp_path / "dd")
    assert list(tmp_path.iterdir()) == []


def test_configs_get_their_own_folders_and_explicit_folder_is_never_overwritten(tmp_path, hash_config,
                                                                                 synthetic_engine):
    other = hash_config.model_copy(update={"scorer": "itemknn"})
    src = DataSource(dataset="synthetic")
    assert default_data_dir(src, other) != default_data_dir(src, hash_config)
    with pytest.raises(UsageError, match="--rebuild"):
        Engine.open(src, other, synthetic_engine.data_dir)


def test_manifest_records_config_and_counts(synthetic_engine):
    m = json.loads((synthetic_engine.data_dir / "manifest.json").read_text())
    assert m["dataset"]["users"] == 120 and m["config"]["embedder"] == "hash:128"
    assert sum(m["personas_per_user"].values()) == 120
    assert set(m["timings_s"]) >= {"scorer", "embed", "induction"}


def test_config_round_trips_and_rejects_unknown_keys(tmp_path):
    cfg = EngineConfig()
    assert EngineConfig.model_validate(cfg.model_dump()).model_dump() == cfg.model_dump()
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"scorer": "ease", "embeder": "hash"}))
    with pytest.raises(ValueError, match="embeder"):
        EngineConfig.from_file(p)
    t = tmp_path / "c.toml"
    t.write_text('scorer = "itemknn"\n[induction]\nmax_personas = 3\n')
    assert EngineConfig.from_file(t).induction.max_personas == 3


@pytest.mark.slow
def test_movielens_100k_smoke():
    """The real thing: packaged ML-100K, packaged MiniLM, EASE, personas for all 943 users."""
    engine = Engine.open(DataSource(dataset="ml-100k"))
    assert engine.manifest["dataset"]["users"] == 943
    counts = {int(k): v for k, v in engine.manifest["personas_per_user"].items()}
    assert sum(counts.values()) == 943 and sum(v for k, v in counts.items() if k >= 2) > 600
    out = engine.recommend("1", k=10, mode="persona_fill")
    assert len(out.items) == 10 and all(r.persona and r.evidence for r in out.items)
    assert len({r.persona.id for r in out.items}) >= 2
    rel = engine.recommend("1", k=10)
    base = engine.scorer.score(engine.history.positives("1"))
    base[engine.history.seen("1")] = -np.inf
    assert [r.item_id for r in rel.items] == [engine.catalog.item(int(i)).item_id for i in np.argsort(-base)[:10]]
    q = engine.recommend("1", k=5, query="animated film for children")
    assert sum(("Animation" in r.categories) or ("Children's" in r.categories) for r in q.items) >= 3


def test_a_data_dir_reopens_from_its_manifest_alone(synthetic_engine, tmp_path):
    from agent.engine import Engine
    from memory.errors import UsageError

    again = Engine.open_data_dir(synthetic_engine.data_dir)
    assert again.config.cache_key() == synthetic_engine.config.cache_key()
    assert again.recommend("3", k=5).items[0].item_id == synthetic_engine.recommend("3", k=5).items[0].item_id
    with pytest.raises(UsageError, match="manifest.json"):
        Engine.open_data_dir(tmp_path)


def test_a_data_directory_from_before_the_auto_scorer_reopens_by_its_folder(tmp_path, hash_config):
    """Manifests written before ``scorer="auto"`` carry ``config.scorer = "ease"`` and no
    top-level ``scorer``: reopening such a folder (a copy too, as the load test makes) works."""
    import json
    import shutil

    from agent.engine import Engine
    from memory.loaders import DataSource

    built = Engine.open(DataSource(dataset="synthetic"), hash_config, tmp_path / "dd")
    folder = tmp_path / "copy"
    shutil.copytree(built.data_dir, folder)
    built.close()
    path = folder / "manifest.json"
    m = json.loads(path.read_text())
    m.pop("scorer", None)
    m["config"]["scorer"] = "ease"
    for key in ("dense_max_items", "sparse_ease", "eager_max_users"):
        m["config"].pop(key, None)
    path.write_text(json.dumps(m))
    again = Engine.open_data_dir(folder)
    try:
        assert len(again.recommend(again.history.user_ids[0], 5).items) == 5
    finally:
        again.close()
