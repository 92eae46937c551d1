"""Batch work on Ray: ``batch_recommend`` and ``plural batch recommend`` give the same table in
process and on a local Ray (started here with 2 CPUs), equal to ``Engine.recommend`` user by
user, read-only, with exposure-reading modes on a frozen snapshot."""

from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import pytest

from agent.batch import COLUMNS, FrozenExposure, batch_recommend, exposure_snapshot
from agent.cli import main
from agent.engine import Engine
from memory.errors import UnknownUserError, UsageError


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def data_dir(synthetic_engine, tmp_path_factory):
    """A copy of the synthetic data directory with some exposure already counted, so that
    ``persona_calibrated``'s bonus has something to read (the shared fixture stays untouched)."""
    ddir = tmp_path_factory.mktemp("batch") / "data"
    shutil.copytree(synthetic_engine.data_dir, ddir)
    engine = Engine.open_data_dir(ddir)
    ids = list(engine.catalog.item_ids)
    engine.exposure_store().add(ids[:40] * 3 + ids[40:80])
    engine.close()
    return ddir


def _rows_by_user(table) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for row in table.to_pylist():
        out.setdefault(row["user_id"], []).append(row)
    return out


def test_in_process_rows_are_engine_recommend_with_the_snapshot(data_dir):
    table = batch_recommend(data_dir, None, 5, "persona_calibrated")
    assert table.column_names == list(COLUMNS)
    engine = Engine.open_data_dir(data_dir)
    try:
        before = engine.exposure_store().total()
        snap = exposure_snapshot(engine)
        assert sum(snap.values()) == before == 160
        engine.recommender.exposure = FrozenExposure(snap)
        users = engine.history.user_ids
        got = _rows_by_user(table)
        assert list(got) == list(users)  # every user, in the data directory's order
        for u in users:
            want = engine.recommend(u, 5, "persona_calibrated").items
            rows = got[u]
            assert [r["item_id"] for r in rows] == [w.item_id for w in want]
            assert [r["rank"] for r in rows] == list(range(1, len(want) + 1))
            for r, w in zip(rows, want):
                assert r["score"] == w.score and r["explanation"] == w.explanation
                assert r["persona_id"] == (w.persona.id if w.persona else None)
                assert r["evidence_ids"] == [e.item_id for e in w.evidence]
                assert dict(r["attention_by_persona"]) == w.attention
        # nothing was written: the batch counted no exposure
        engine.recommender.exposure = engine.exposure_store()
        assert engine.exposure_store().total() == before
    finally:
        engine.close()
    meta = json.loads(table.schema.metadata[b"plural.provenance"])
    assert meta["exposure"] == "frozen snapshot" and meta["exposure_showings"] == 160


def test_snapshot_matters_and_lists_do_not_depend_on_order_or_shards(data_dir, tmp_path):
    users = ["7", "3", "11", "1", "42", "5"]
    a = batch_recommend(data_dir, users, 10, "persona_calibrated", shard_size=2)
    b = batch_recommend(data_dir, list(reversed(users)), 10, "persona_calibrated", shard_size=4)
    assert list(_rows_by_user(a)) == users  # the order asked for
    assert _rows_by_user(a) == _rows_by_user(b)
    # the same users on a copy with no exposure at all: the bonus reads the snapshot, so lists move
    fresh = tmp_path / "fresh"
    shutil.copytree(data_dir, fresh)
    e = Engine.open_data_dir(fresh)
    e.exposure_store().reset()
    e.close()
    c = batch_recommend(fresh, users, 10, "persona_calibrated", shard_size=3)
    assert _rows_by_user(c) != _rows_by_user(a)


def test_ray_gives_the_in_process_table(ray_local, data_dir):
    for mode in ("relevance", "persona_calibrated"):
        local = batch_recommend(data_dir, None, 10, mode, shard_size=25)
        on_ray = batch_recommend(data_dir, None, 10, mode, ray=True, shard_size=25, workers=2)
        assert on_ray.num_rows == local.num_rows == 10 * 120
        assert on_ray.equals(local), mode
        assert on_ray.schema.metadata == local.schema.metadata


def test_cli_writes_the_same_parquet_in_process_and_on_ray(ray_local, data_dir, tmp_path, capsys):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"embedder": "hash:128"}))
    ids = tmp_path / "users.txt"
    ids.write_text("3\n1\n\n9\n")
    common = ["batch", "recommend", "--dataset", "synthetic", "--config", str(cfg), "--data-dir", str(data_dir),
              "--users-file", str(ids), "--users", "2", "--k", "4", "--mode", "persona_calibrated", "--json"]
    assert main([*common, "--out", str(tmp_path / "a.parquet")]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["users"] == 4 and doc["rows"] == 16 and doc["where"] == "in-process"
    assert main([*common, "--out", str(tmp_path / "b.parquet"), "--ray", "--shard-size", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["where"].startswith("ray")
    a, b = pq.read_table(tmp_path / "a.parquet"), pq.read_table(tmp_path / "b.parquet")
    assert a.equals(b)
    assert list(dict.fromkeys(a.column("user_id").to_pylist())) == ["2", "3", "1", "9"]
    want = batch_recommend(data_dir, ["2", "3", "1", "9"], 4, "persona_calibrated")
    assert a.equals(want.replace_schema_metadata(a.schema.metadata))


@pytest.mark.parametrize("kw,err,needle", [
    (dict(users=["1", "nobody"]), UnknownUserError, "nobody"),
    (dict(k=0), UsageError, "positive integer"),
    (dict(mode="best"), UsageError, "persona_calibrated"),
    (dict(shard_size=0), UsageError, "users per shard"),
    (dict(users="1"), UsageError, "list of user ids"),
])
def test_bad_arguments_name_the_value_and_what_is_allowed(data_dir, kw, err, needle):
    args = {"users": None, "k": 5, "mode": "relevance", **kw}
    with pytest.raises(err, match=needle):
        batch_recommend(data_dir, args.pop("users"), args.pop("k"), args.pop("mode"), **args)


def test_frozen_exposure_is_read_only():
    fx = FrozenExposure({"a": 2, "b": 0})
    assert fx.counts(["a", "b", "c"]).tolist() == [2, 0, 0] and fx.total() == 2
    with pytest.raises(UsageError, match="read-only"):
        fx.add(["a"])


def test_cli_usage_errors(capsys, data_dir, tmp_path):
    code = main(["batch", "recommend", "--data-dir", str(data_dir), "--dataset", "synthetic",
                 "--out", str(tmp_path / "x.csv")])
    assert code == 2 and ".parquet" in capsys.readouterr().err


def test_eval_rec_on_ray_gives_the_in_process_document(ray_local, synthetic):
    """``plural eval rec --ray`` shards the per-user persona induction of both splits over Ray
    tasks; every list, metric and choice is the in-process run's."""
    from evals.harness import EvalConfig, RecEvaluation

    # tests/test_exposure_replay.py's quick run: one variant per family, a strong exposure bonus
    QUICK = dict(models=["ease", "ease+steck", "plural:persona_calibrated", "plural:persona_only"], ks=[5, 10],
                 embedder="hash:64", bootstrap=100, ease_l2_grid=[200.0], steck_lambdas=[0.2], joint_lambdas=[0.25],
                 joint_mus=[0.05], joint_betas=[0.3], joint_gammas=[0.25], persona_only_mus=[0.1],
                 persona_only_betas=[0.0], tradeoff_on_test=False)

    local = RecEvaluation(synthetic.dataset, EvalConfig(**QUICK))
    a = local.run()
    remote = RecEvaluation(synthetic.dataset, EvalConfig(**QUICK), ray=True, shard_size=7)
    b = remote.run()
    for doc in (a, b):
        doc.pop("timings_s")
        for m in doc["models"].values():
            m.pop("fit_s")
    assert a == b
    for name, by_k in local.outputs.lists.items():
        for k, top in by_k.items():
            assert (top == remote.outputs.lists[name][k]).all(), (name, k)
    pa, pb = local.outputs.personas, remote.outputs.personas
    assert (pa.responsible == pb.responsible).all() and (pa.persona_rank == pb.persona_rank).all()
    assert [[p.evidence for p in s.personas] for s in pa.sets] == [[p.evidence for p in s.personas] for s in pb.sets]
