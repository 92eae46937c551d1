"""plural eval chat on the synthetic data: simulated users, the four systems, the tuned request
mix, the report files; and the checks that make the evaluation mean something (requests are
about the held-out item, the old chat ignores categories, a refusal is never shown again)."""

from __future__ import annotations

import json

import pytest

from evals.chat_eval import REQUEST_TYPES, ChatEvalConfig, make_probes, run_chat_eval, write_chat_reports
from memory.errors import UsageError


@pytest.fixture(scope="module")
def doc(synthetic, hash_config):
    cfg = ChatEvalConfig(users=16, tune_users=10, bootstrap=200)
    return run_chat_eval(synthetic.dataset, cfg, hash_config)


def test_every_system_answers_every_request_type_and_the_report_is_complete(doc, tmp_path):
    assert set(doc["systems"]) == {"chat", "chat_before", "request_only", "ease_filter"}
    for t in (*REQUEST_TYPES, "refusal", "more_like"):
        assert set(doc["results"][t]) == set(doc["systems"])
    assert doc["leak_check"]["in_engine_history"] == 0 and doc["simulated_users"] == 16
    paths = write_chat_reports(doc, tmp_path / "out")
    assert json.loads(open(paths["json"]).read())["task"] == "chat"
    md = open(paths["markdown"]).read()
    assert "EASE + request as filter" in md and "## Targets" in md and "refusal respected" in md
    assert doc["request_mix"]["chosen_on"] == "validation" and doc["tuning"]["grid"]


def test_requests_are_satisfied_and_refusals_respected_by_the_chat(doc):
    res = doc["results"]
    assert res["category"]["chat"]["satisfaction"]["mean"] == 1.0
    assert res["category_period"]["chat"]["satisfaction"]["mean"] == 1.0
    assert res["refusal"]["chat"]["satisfaction"]["mean"] == 1.0
    # the chat as it was ignored the category; the request path does not
    assert res["category"]["chat_before"]["satisfaction"]["mean"] < 0.9
    # not one list for everyone: two users asking the same get different lists
    assert res["category"]["chat"]["overlap"]["mean"] < 1.0
    assert res["category"]["request_only"]["overlap"]["mean"] > res["category"]["chat"]["overlap"]["mean"]
    assert doc["latency"]["chat"]["p50_ms"] > 0 and "p50_turn" in doc["targets"]


def test_probes_ask_about_the_held_out_item(synthetic_engine):
    from evals.chat_eval import _year

    cat = synthetic_engine.catalog
    # a "held-out" item per user: any unseen dated item of a category
    held = {}
    for u in synthetic_engine.history.user_ids[:10]:
        seen = set(synthetic_engine.history.seen(u).tolist())
        held[u] = [cat.item(i).item_id for i in range(len(cat)) if i not in seen][:3]
    probes = make_probes(synthetic_engine, held, 6, seed=3)
    assert len(probes) == 6 and len({p.user for p in probes}) == 6
    for p in probes:
        item = cat.get(p.target)
        assert p.target in held[p.user] and p.category in item.categories
        assert p.messages["category_period"].endswith(f"{p.decade % 100}s" if p.decade < 2000 else f"{p.decade}s")
        assert p.decade <= _year(item.title) <= p.decade + 9
        assert synthetic_engine.catalog.index(p.anchor) in set(synthetic_engine.history.positives(p.user).tolist())
        assert p.partner != p.user


def test_bad_options_name_the_value():
    with pytest.raises(UsageError, match="systems"):
        ChatEvalConfig.from_options(systems=["chat", "bogus"])
