"""Lazy, incremental personas: induced on first request, deterministic, stored once; induced in
bulk (in worker processes) on demand; updated by new interactions without a rebuild."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from memory.errors import UnknownUserError, UsageError


def _content(pset):
    """What induction decides (not when it ran): ids, names, weights, evidence, embeddings."""
    return [(p.persona_id, p.name, p.description, p.weight, tuple(p.evidence),
             tuple(np.round(np.asarray(p.embedding, np.float32), 6))) for p in pset.personas]


@pytest.fixture(scope="module")
def lazy_dir(tmp_path_factory, hash_config):
    from agent.engine import Engine
    from memory.loaders import DataSource

    cfg = hash_config.model_copy(update={"personas_at_build": "lazy"})
    ddir = tmp_path_factory.mktemp("lazy") / "data"
    Engine.open(DataSource(dataset="synthetic"), cfg, ddir).close()
    return ddir


@pytest.fixture
def lazy_engine(lazy_dir, tmp_path):
    """A fresh copy of the lazily built directory per test (tests write personas into it)."""
    import shutil

    from agent.engine import Engine

    ddir = tmp_path / "data"
    shutil.copytree(lazy_dir, ddir)
    e = Engine.open_data_dir(ddir, storage="sqlite")
    yield e
    e.close()


def test_a_lazy_build_stores_no_personas(lazy_engine):
    assert lazy_engine.manifest["personas_at_build"] == "lazy"
    assert lazy_engine.manifest["personas_per_user"] == {}
    assert lazy_engine.persona_store.users() == []


def test_small_data_is_induced_at_build_by_default(synthetic_engine, hash_config):
    assert hash_config.personas_at_build == "auto"
    assert synthetic_engine.manifest["personas_at_build"] == "all"
    assert len(synthetic_engine.persona_store.users()) == len(synthetic_engine.history.user_ids)
    assert hash_config.induce_at_build(hash_config.eager_max_users)
    assert not hash_config.induce_at_build(hash_config.eager_max_users + 1)
    assert not hash_config.model_copy(update={"personas_at_build": "lazy"}).induce_at_build(1)


def test_first_request_induces_once_and_equals_the_eager_build(lazy_engine, synthetic_engine):
    users = ["17", "3", "88", "1"]  # an order unlike the build's
    for u in users:
        out = lazy_engine.recommend(u, k=5)
        assert not out.cold_start and out.items[0].persona is not None
    assert lazy_engine.persona_store.induced_here == len(users)
    assert sorted(lazy_engine.persona_store.users()) == sorted(users)
    for u in users:
        assert _content(lazy_engine.persona_store.get(u)) == _content(synthetic_engine.persona_store.get(u))
        lazy_engine.recommend(u, k=5)
        assert [v.reason for v in lazy_engine.persona_store.versions(u)] == ["induction"] * len(
            lazy_engine.persona_store.get(u).personas)
    assert lazy_engine.persona_store.induced_here == len(users)  # stored once, read afterwards
    a = lazy_engine.recommend("17", k=10, mode="persona_fill")
    b = synthetic_engine.recommend("17", k=10, mode="persona_fill")
    assert [(r.item_id, r.persona.id, r.attention) for r in a.items] == \
           [(r.item_id, r.persona.id, r.attention) for r in b.items]


def test_unknown_user_still_fails(lazy_engine):
    with pytest.raises(UnknownUserError):
        lazy_engine.recommend("no-such-user", k=5)
    assert lazy_engine.persona_store.users() == []


def test_concurrent_first_requests_make_one_version_chain(lazy_engine):
    """Two engines (two connections) on one directory, both missing user 5 at once: induction
    is slowed so that both induce before either stores; one set is stored, both return it."""
    from agent.engine import Engine

    other = Engine.open_data_dir(lazy_engine.data_dir, storage="sqlite")
    try:
        barrier = threading.Barrier(2)
        results, errors = {}, []
        for e in (lazy_engine, other):
            real = e._induce_one

            def slow(uid, real=real):
                pset = real(uid)
                barrier.wait(timeout=10)  # both have induced, neither has stored
                time.sleep(0.05)
                return pset

            e.persona_store.induce = slow

        def first(name, e):
            try:
                results[name] = e.persona_store.get("5")
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=first, args=(n, e)) for n, e in (("a", lazy_engine), ("b", other))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        assert not errors
        assert lazy_engine.persona_store.induced_here + other.persona_store.induced_here == 1
        assert _content(results["a"]) == _content(results["b"])
        assert results["a"].personas[0].created_at == results["b"].personas[0].created_at  # the same stored set
        versions = lazy_engine.persona_store.versions("5")
        assert len(versions) == len(results["a"].personas) and {v.persona.version for v in versions} == {1}
    finally:
        other.close()


def test_induce_personas_in_workers_matches_first_requests(lazy_engine, synthetic_engine):
    users = lazy_engine.history.user_ids[:30]
    got = lazy_engine.induce_personas(users, workers=2, chunk=5)
    assert got["induced"] == got["stored"] == 30 and got["workers"] == 2
    for u in users[:30:7]:
        assert _content(lazy_engine.persona_store.get(u)) == _content(synthetic_engine.persona_store.get(u))
    again = lazy_engine.induce_personas(users)
    assert again["induced"] == 0 and again["stored"] == 0
    rest = lazy_engine.induce_personas()  # every user, in process
    assert rest["induced"] == len(lazy_engine.history.user_ids) - 30
    assert len(lazy_engine.persona_store.users()) == len(lazy_engine.history.user_ids)
    with pytest.raises(UnknownUserError):
        lazy_engine.induce_personas(["nobody"])
    with pytest.raises(UsageError, match="workers"):
        lazy_engine.induce_personas(workers=0)


def _new_items(engine, user, n=12):
    """Items of one catalogue topic the user never interacted with."""
    seen = {engine.catalog.item(int(i)).item_id for i in engine.history.seen(user)}
    topic = next(c for c in engine.catalog.categories
                 if c not in {c2 for p in engine.persona_store.get(user).personas for c2 in p.categories})
    pool = [it.item_id for it in map(engine.catalog.item, range(len(engine.catalog))) if it.categories[0] == topic and it.item_id not in seen]
    return pool[:n]


def test_new_interactions_update_only_that_users_personas(lazy_engine):
    e = lazy_engine
    before = e.persona_store.get("9")
    other_before = e.persona_store.get("10")
    items = _new_items(e, "9")
    after = e.add_interactions("9", items, [5.0] * len(items))
    assert after is not None
    assert set(items) <= {i for p in after.personas for i in p.evidence}  # a new taste is in the personas
    assert {v.reason for v in e.persona_store.versions("9")} == {"induction", "new interactions"}
    bumped = [p for p in after.personas if p.persona_id in before.ids]
    assert any(p.version == 2 for p in bumped)
    assert _content(e.persona_store.get("10")) == _content(other_before)
    assert [v.reason for v in e.persona_store.versions("10")] == ["induction"] * len(other_before.personas)
    assert set(items) <= {e.catalog.item(int(i)).item_id for i in e.history.seen("9")}
    recs = {r.item_id for r in e.recommend("9", k=20).items}
    assert not recs & set(items)
    # the same as inducing from scratch on the longer history (deterministic)
    fresh = e.inducer().induce("9", e.history.positives("9"))
    assert _content(fresh) == _content(after)


def test_new_interactions_survive_reopening_and_reach_worker_processes(lazy_engine):
    from agent.engine import Engine

    e = lazy_engine
    e.persona_store.get("12")
    items = _new_items(e, "12", 6)
    e.add_interactions("12", items, [4, 5, 4, 5, 4, 5], timestamps=[2_000_000_000 + k for k in range(6)])
    e.add_interactions("new-user", items[:5], [5] * 5)  # a user the build never saw
    assert e.persona_store.get("new-user") is not None
    again = Engine.open_data_dir(e.data_dir, storage="sqlite")
    try:
        items_12, ratings_12, ts_12 = again.history.events("12")
        assert [again.catalog.item(int(i)).item_id for i in items_12[-6:]] == items
        assert list(ts_12[-6:]) == [2_000_000_000 + k for k in range(6)]
        assert _content(again.persona_store.get("12")) == _content(e.persona_store.get("12"))
        assert "new-user" in again.history
    finally:
        again.close()
    # a worker process reads the overlay too: its set equals the in-process one
    e2 = Engine.open_data_dir(e.data_dir, storage="sqlite")
    try:
        from agent.engine import _worker_induce, _worker_init

        _worker_init(str(e2.data_dir), e2.config.model_dump(mode="json"))
        assert _content(_worker_induce(["12"])[0]) == _content(e2.persona_store.get("12"))
    finally:
        e2.close()


def test_add_interactions_rejects_bad_input(lazy_engine):
    with pytest.raises(UsageError, match="item id.*nope"):
        lazy_engine.add_interactions("1", ["nope"])
    with pytest.raises(UsageError, match="ratings"):
        lazy_engine.add_interactions("1", ["1", "2"], [5])
    with pytest.raises(UsageError, match="items"):
        lazy_engine.add_interactions("1", [])
    assert lazy_engine._overlay.rows() == []  # nothing was written


def test_a_user_without_personas_gets_them_from_the_longer_history(lazy_engine):
    e = lazy_engine
    assert e.persona_store.inner.get("20") is None
    seen = {e.catalog.item(int(j)).item_id for j in e.history.seen("20")}
    items = [i for i in e.catalog.item_ids if i not in seen][:3]
    assert e.add_interactions("20", items, [5] * len(items)) is None  # nothing to update yet
    pset = e.persona_store.get("20")  # first request: induced once, from history and the new items
    assert set(items) <= {i for p in pset.personas for i in p.evidence}
    assert {v.reason for v in e.persona_store.versions("20")} == {"induction"}


def test_data_build_command_induces_in_bulk(tmp_path):
    """``plural data build --induce`` (agent.data_build_cli) on a lazily built directory."""
    import json as _json

    import typer
    from typer.testing import CliRunner

    from agent.data_build_cli import data_build

    app = typer.Typer()
    app.command("build")(data_build)
    app.callback()(lambda: None)  # keep "build" a subcommand
    cfg = tmp_path / "plural.toml"
    cfg.write_text('embedder = "hash:64"\npersonas_at_build = "lazy"\n')
    args = ["build", "--dataset", "synthetic", "--config", str(cfg), "--data-dir", str(tmp_path / "d"), "--json"]
    r = CliRunner().invoke(app, args + ["--induce", "3", "--induce", "4"], catch_exceptions=False)
    doc = _json.loads(r.output)
    assert r.exit_code == 0 and doc["personas_at_build"] == "lazy" and doc["users_with_personas"] == 2
    r = CliRunner().invoke(app, args + ["--induce", "all", "--workers", "2"], catch_exceptions=False)
    doc = _json.loads(r.output)
    assert doc["induction"]["induced"] == doc["users"] - 2 and doc["users_with_personas"] == doc["users"]
    r = CliRunner().invoke(app, args + ["--workers", "0"])
    assert r.exit_code != 0
