"""``plural eval refine``: the engine sees training rows only, feedback goes through the agent's
refinement, before/after figures and the guard's decisions are reported, runs are reproducible."""

from __future__ import annotations

import json

import pytest

from agent.llm import ScriptedLLM
from evals.refine_eval import RefineEvalConfig, _items_by_user, check_no_leak, run_refine_eval
from evals.splits import SplitConfig, split_dataset
from memory.errors import UnknownUserError, UsageError
from memory.loaders import DataSource


@pytest.fixture(scope="module")
def dataset():
    return DataSource(dataset="synthetic").load()


def _run(dataset, hash_config, tmp_path=None, backend=None, **options):
    cfg = RefineEvalConfig.from_options(**{"users": 6, **options})
    return run_refine_eval(dataset, cfg, hash_config, backend, work_dir=tmp_path)


def _user_text(req) -> str:
    return req.messages[-1].content


def refine_llm(rewrite: str = "valid"):
    """A scripted LLM for the refinement tasks, answering by the request's schema.

    The simulator accepts everything, so every dislike is a mismatch that the loss and the rewrite
    work on; ``rewrite="invalid"`` answers the rewrite with text that is not JSON.
    """

    def answer(req) -> str:
        props = (req.json_schema or {}).get("properties", {})
        user = _user_text(req)
        if "reaction" in props:
            return json.dumps({"reaction": "accept", "rating": 4, "reason": "sounds like me"})
        if "loss" in props:
            title = user.split("<comparisons>")[1].strip().split(":")[0].strip().strip('"')
            return json.dumps({"loss": f"The persona did not foresee the reaction to {title}.", "missing": [],
                               "wrong": []})
        if "changes" in props:
            if rewrite == "invalid":
                return "I would rather not answer in JSON."
            old = json.loads(user.split("<persona>")[1].split(". ")[0])
            titles = json.loads(user.split("<evidence>")[1].split("</evidence>")[0])
            shown = ", ".join(t.split(" (")[0] for t in titles[:3])
            return json.dumps({"name": f"{old} Revised", "description": f"{old} stories such as {shown}.",
                               "changes": "named the latest titles"})
        if "description" in props:  # describe_persona: invalid on purpose (the template text stays)
            return json.dumps({"name": "x", "description": "short"})
        if "facts" in props:
            return json.dumps({"facts": [{"text": "Reacts to the latest titles it was shown.", "sources": [1]}]})
        raise AssertionError(f"unexpected request schema {sorted(props)}")

    return ScriptedLLM(answer)


@pytest.fixture(scope="module")
def plain(dataset, hash_config, tmp_path_factory):
    """One run without an LLM, its engine kept in a folder: (result document, folder)."""
    folder = tmp_path_factory.mktemp("refine-run")
    return _run(dataset, hash_config, folder), folder


def test_reports_before_and_after_for_ranking_and_reactions_and_the_guard(plain):
    doc, _ = plain
    m = doc["metrics"]
    assert set(m) == {"NDCG@10:relevance", "Recall@10:relevance", "NDCG@10:persona_calibrated",
                      "Recall@10:persona_calibrated", "ReactionAcc", "ReactionAUC"}
    for name, entry in m.items():
        assert 0.0 <= entry["before"] <= 1.0 and 0.0 <= entry["after"] <= 1.0, name
        assert entry["n"] == 6
    assert "numbers_only" in m["ReactionAcc"] and "numbers_only" not in m["NDCG@10:relevance"]
    g = doc["guard"]
    assert g["events"] == 6 * (3 + 2)  # every revealed item went through the feedback path
    assert g["aligned"] + g["accepted"] + g["rejected"] + g["no_valid_rewrite"] + g["no_persona"] == g["events"]
    assert g["simulator"] == "embedding" and doc["llm"]["backend"] == "none"
    assert doc["text_changes"]["events_with_text_change"] == g["accepted"]
    assert doc["fallbacks"]["fallbacks"] == {"no_llm": doc["fallbacks"]["total"]}
    assert doc["leak_check"]["in_engine_history"] == 0 and doc["leak_check"]["held_out_pairs_checked"] > 0
    for row in doc["users"]:
        reactions = sorted(e["reaction"] for e in row["events"])
        assert reactions == ["dislike"] * 2 + ["like"] * 3
        assert row["remaining"] == row["held_out"] - 3


def test_the_engine_never_sees_held_out_items(plain, dataset, hash_config):
    doc, tmp_path = plain
    from agent.engine import Engine

    engine = Engine.open(DataSource.model_validate(json.loads((tmp_path / "engine/manifest.json").read_text())
                                                   ["source"]), hash_config, tmp_path / "engine")
    split = split_dataset(dataset, SplitConfig(seed=0))
    held_out = _items_by_user(split.test)
    assert sum(len(v) for v in held_out.values()) == doc["leak_check"]["held_out_pairs_checked"]
    for u, items in held_out.items():  # no held-out pair in the histories the engine was built from
        assert not set(engine.catalog.indices(items).tolist()) & set(engine.history.seen(u).tolist())
    for row in doc["users"]:  # after refinement, only the revealed likes joined the personas' evidence
        u = row["user_id"]
        revealed = {e["item_id"] for e in row["events"] if e["reaction"] == "like"}
        evidence = {i for p in engine.persona_store.get(u).personas for i in p.evidence}
        assert evidence & set(held_out[u]) == revealed
    engine.close()


def test_leak_check_fails_loudly(dataset, hash_config, tmp_path):
    from evals.refine_eval import DataLeakError, build_train_engine

    split = split_dataset(dataset, SplitConfig(seed=0))
    engine = build_train_engine(dataset, split, hash_config, tmp_path)
    u = split.users[0]
    seen_item = engine.catalog.item(int(engine.history.seen(u)[0])).item_id
    with pytest.raises(DataLeakError, match=u):
        check_no_leak(engine, {u: [seen_item]})
    engine.close()


def test_same_seed_same_result_other_seed_other_users(plain, dataset, hash_config):
    a, b = json.loads(json.dumps(plain[0])), _run(dataset, hash_config)
    for doc in (a, b):
        doc.pop("timings_s")
        for r in doc["users"]:
            r.pop("seconds")
    assert a == b
    c = _run(dataset, hash_config, seed=1)
    assert [r["user_id"] for r in c["users"]] != [r["user_id"] for r in a["users"]]


def test_llm_refinement_is_counted_and_rewrites_reach_the_guard(dataset, hash_config):
    doc = _run(dataset, hash_config, backend=refine_llm(), users=4)
    assert doc["llm"]["backend"] == "scripted" and doc["guard"]["simulator"] == "llm"
    f = doc["fallbacks"]
    assert f["llm"] > 0 and f["fallbacks"].get("schema") == sum(r["personas"] for r in doc["users"])
    judged = doc["guard"]["accepted"] + doc["guard"]["rejected"]
    assert judged > 0
    rewrites = [e for r in doc["users"] for e in r["events"] if e["decision"] in ("accepted", "rejected")]
    assert all(e["rewrite_source"] == "llm" and e["proposed"]["name"].endswith("Revised") for e in rewrites)
    assert all(c["after"]["name"].endswith("Revised") for r in doc["users"] for c in r["text_changes"])


def test_invalid_rewrites_fall_back_and_are_counted(dataset, hash_config):
    doc = _run(dataset, hash_config, backend=refine_llm(rewrite="invalid"), users=3)
    f = doc["fallbacks"]
    assert f["rejections"].get("invalid_json", 0) >= 2  # first answer and the retry
    assert f["fallbacks"].get("invalid_json", 0) >= 1
    assert all(e["rewrite_source"] in ("template", "none") for r in doc["users"] for e in r["events"])


def test_bad_input_is_named(dataset, hash_config):
    with pytest.raises(UnknownUserError):
        _run(dataset, hash_config, user_ids=["no-such-user"])
    with pytest.raises(UsageError, match="held-out positives"):
        _run(dataset, hash_config, user_ids=["1"], reveal=20)
    with pytest.raises(UsageError, match="--reveal"):
        RefineEvalConfig.from_options(reveal=0)
    with pytest.raises(UsageError, match="mode"):
        RefineEvalConfig.from_options(modes=["best"])


def test_cli_in_process(tmp_path, capsys):
    from agent.cli import main

    out = tmp_path / "refine"
    code = main(["eval", "refine", "--dataset", "synthetic", "--embedder", "hash:128", "--users", "3",
                 "--reveal", "2", "--reveal-negatives", "1", "--mode", "relevance", "--out", str(out)])
    assert code == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["config"]["reveal"] == 2 and doc["dataset"]["evaluated_users"] == 3
    assert set(doc["metrics"]) == {"NDCG@10:relevance", "Recall@10:relevance", "ReactionAcc", "ReactionAUC"}
    md = (out / "results.md").read_text()
    assert "Drift guard" in md and "ReactionAcc" in md
    assert main(["eval", "refine", "--dataset", "synthetic", "--embedder", "hash:128", "--user", "nobody",
                 "--out", str(out)]) == 2
    assert main(["eval", "refine", "--dataset", "synthetic", "--users", "0"]) == 2
    assert "--users" in capsys.readouterr().err


def test_no_persona_text_and_item_pair_is_simulated_twice(dataset, hash_config, monkeypatch):
    """"Numbers only" keeps the before texts: their reactions are reused, not asked of the model again."""
    from agent.refine import LLMSimulator
    from evals import refine_eval

    asked: list[tuple[str, str, str]] = []
    measuring = []
    real_predict, real_measure = LLMSimulator.predict, refine_eval.RefineEvaluation._measure

    def predict(self, persona, items):
        if measuring:
            asked.extend((persona.name, persona.description, it.item_id) for it in items)
        return real_predict(self, persona, items)

    def measure(self, *args, **kwargs):
        measuring.append(1)
        try:
            return real_measure(self, *args, **kwargs)
        finally:
            measuring.pop()

    monkeypatch.setattr(LLMSimulator, "predict", predict)
    monkeypatch.setattr(refine_eval.RefineEvaluation, "_measure", measure)
    _run(dataset, hash_config, backend=refine_llm(), users=2)
    assert asked and len(asked) == len(set(asked))
