"""Attention and ranking: exact decomposition, attention rows, responsible personas, modes."""

from __future__ import annotations

import numpy as np
import pytest

from memory.errors import UsageError
from personas.attention import AttentionConfig, PersonaScores
from personas.ranking import RankingContext, apportion, get_mode


@pytest.fixture(scope="module")
def rec(synthetic_engine):
    return synthetic_engine.recommender


def test_decomposition_is_exact(rec):
    for u in rec.history.user_ids[:40]:
        ps, pset = rec.persona_scores(u)
        base = rec.scorer.score(rec.history.positives(u))
        assert np.allclose(ps.contributions.sum(0) + ps.residual, base, atol=1e-5)
        assert not ps.residual.any()  # induction assigns every positive to a persona


def test_attention_rows_sum_to_one_and_name_the_largest_contributor(rec):
    ps, pset = rec.persona_scores("7")
    items = np.arange(50)
    for rule in ("share", "softmax"):
        att = ps.attention(items, AttentionConfig(rule=rule))
        assert att.shape == (50, len(pset.personas))
        assert np.allclose(att.sum(1), 1.0) and (att >= 0).all()
    att = ps.attention(items)
    resp = ps.responsible(items)
    pos = ps.contributions[:, items].max(0) > 0
    assert np.array_equal(att.argmax(1)[pos], resp[pos])


def test_residual_keeps_decomposition_exact_for_unclaimed_history(rec):
    ps, pset = rec.persona_scores("3")
    hist = rec.history.positives("3")
    partial = PersonaScores.compute(rec.scorer, pset.ids[:1], ps.groups[:1], history=hist)
    assert np.allclose(partial.scores, rec.scorer.score(hist), atol=1e-5)
    assert partial.residual.any()


def test_relevance_mode_ranks_exactly_as_the_base_scorer(rec):
    for u in rec.history.user_ids[:30]:
        out = rec.recommend(u, k=20, mode="relevance")
        base = rec.scorer.score(rec.history.positives(u))
        base[rec.history.seen(u)] = -np.inf
        order = np.lexsort((np.arange(len(base)), -base))[:20]
        assert [r.item_id for r in out.items] == [rec.catalog.item(int(i)).item_id for i in order]


def test_every_item_is_attributed_with_evidence_and_seen_items_are_excluded(rec):
    for u in rec.history.user_ids[:20]:
        for mode in ("relevance", "persona_fill"):
            out = rec.recommend(u, k=10, mode=mode)
            seen = {rec.catalog.item(int(i)).item_id for i in rec.history.seen(u)}
            pset = rec.persona_set(u)
            assert len(out.items) == 10
            for r in out.items:
                assert r.item_id not in seen
                assert r.persona is not None and r.persona.id in pset.ids
                assert abs(sum(r.attention.values()) - 1.0) < 1e-5
                assert r.evidence and all(e.item_id in pset.get(r.persona.id).evidence for e in r.evidence)
                assert r.persona.name in r.explanation and r.evidence[0].title in r.explanation


def test_apportion_largest_remainder():
    assert apportion(np.array([0.5, 0.3, 0.2]), 10).tolist() == [5, 3, 2]
    assert apportion(np.array([0.45, 0.35, 0.2]), 10).tolist() == [5, 3, 2]  # 4.5,3.5,2.0: ties to the lower index
    assert apportion(np.array([1, 1, 1]), 10).sum() == 10


def test_persona_fill_allocates_slots_by_weight():
    # 3 personas, weights 0.5/0.3/0.2; persona 0 owns the 20 best-scored items
    n = 60
    scores = np.linspace(1, 0, n).astype(np.float32)
    responsible = np.array([0] * 20 + [1] * 20 + [2] * 20)
    ctx = RankingContext(scores=scores, allowed=np.ones(n, bool), responsible=responsible,
                         persona_weights=np.array([0.5, 0.3, 0.2]))
    chosen = get_mode("persona_fill").select(ctx, 10)
    assert np.bincount(responsible[chosen], minlength=3).tolist() == [5, 3, 2]
    assert chosen.tolist() == sorted(chosen.tolist())  # score order kept (scores fall with position)
    # relevance would give persona 0 every slot: the crowding out persona_fill removes
    assert np.bincount(responsible[get_mode("relevance").select(ctx, 10)], minlength=3).tolist() == [10, 0, 0]


def test_persona_fill_gives_unfillable_slots_to_the_best_remaining():
    n = 30
    scores = np.linspace(1, 0, n).astype(np.float32)
    responsible = np.array([0] * 28 + [1] * 2)
    allowed = np.ones(n, bool)
    ctx = RankingContext(scores=scores, allowed=allowed, responsible=responsible,
                         persona_weights=np.array([0.5, 0.5]))
    chosen = get_mode("persona_fill").select(ctx, 10)
    assert len(chosen) == 10 and set(responsible[chosen].tolist()) == {0, 1}
    assert np.bincount(responsible[chosen]).tolist() == [8, 2]


def test_filters_and_usage_errors(rec):
    cat = rec.catalog.categories[0]
    out = rec.recommend("5", k=5, categories=[cat.lower()])
    assert all(cat in r.categories for r in out.items)
    with pytest.raises(UsageError, match="category"):
        rec.recommend("5", k=5, categories=["Nope"])
    with pytest.raises(UsageError, match="positive integer"):
        rec.recommend("5", k=0)
    with pytest.raises(UsageError, match="persona_fill.*relevance"):
        rec.recommend("5", mode="bogus")
    some = list(rec.catalog.item_ids[:40])
    out = rec.recommend("5", k=5, candidate_items=some)
    assert all(r.item_id in some for r in out.items)


def test_persona_focus_moves_the_list_toward_the_focused_persona(rec):
    pset = rec.persona_set("9")
    weakest = pset.personas[-1].persona_id
    plain = rec.recommend("9", k=10)
    focused = rec.recommend("9", k=10, persona_focus={weakest: 3.0})
    count = lambda out: sum(r.persona.id == weakest for r in out.items)  # noqa: E731
    assert count(focused) > count(plain)
    with pytest.raises(UsageError, match="persona id"):
        rec.recommend("9", persona_focus={"p99": 2.0})
