"""``plural eval rec`` reports what the product does: the lists of the modes that read the
exposure counts are ``PersonaRecommender.recommend``'s, user by user, on an exposure state that
starts empty and grows with every list shown."""

from __future__ import annotations

import numpy as np
import pytest

from evals.harness import EvalConfig, RecEvaluation
from memory.errors import UsageError
from memory.history import HistoryIndex
from personas.calibration import CalibrationConfig
from personas.exposure import InMemoryExposureStore
from personas.ranking import CalibratedMode
from personas.recommender import PersonaRecommender
from personas.store import InMemoryPersonaStore

MODELS = ["ease", "ease+steck", "plural:persona_calibrated"]
# one joint variant with a strong bonus, so that the exposure state visibly steers the lists
QUICK = dict(models=MODELS, ks=[5, 10], embedder="hash:64", bootstrap=100, ease_l2_grid=[200.0],
             steck_lambdas=[0.2], joint_lambdas=[0.25], joint_mus=[0.05], joint_betas=[0.3], joint_gammas=[0.25],
             persona_only_mus=[0.1], persona_only_betas=[0.0], tradeoff_on_test=False)


def _run(dataset):
    ev = RecEvaluation(dataset, EvalConfig(**QUICK))
    return ev, ev.run()


@pytest.fixture(scope="module")
def evaluated(synthetic):
    return _run(synthetic.dataset)


def _recommender(ev: RecEvaluation, exclude: str = "positives") -> PersonaRecommender:
    """Built here from the run's parts, independently of the harness's own replay."""
    out, catalog = ev.outputs, ev.catalog
    history = HistoryIndex.build(out.split.train, catalog, ev.config.split.positive_threshold)
    store = InMemoryPersonaStore()
    store.put_many(out.personas.sets)
    return PersonaRecommender(catalog, out.scorer, history, store, exclude=exclude)


def _chosen(doc) -> CalibrationConfig:
    return CalibrationConfig.model_validate(doc["tuning"]["persona_calibrated"]["chosen"])


def _live_lists(rec: PersonaRecommender, users, mode, k: int, exposure=None) -> np.ndarray:
    """Each user's ``recommend`` in turn, the list's items committed to the exposure store after it."""
    exposure = exposure if exposure is not None else InMemoryExposureStore()
    rec.exposure = exposure
    top = np.full((len(users), k), -1, np.int64)
    for r, u in enumerate(users):
        ids = [it.item_id for it in rec.recommend(u, k, mode).items]
        with exposure.transaction():
            exposure.add(ids)
        top[r, :len(ids)] = rec.catalog.indices(ids)
    return top


def _coverage(top: np.ndarray) -> int:
    return len(np.unique(top[top >= 0]))


def test_reported_lists_are_live_recommend_user_by_user(evaluated):
    ev, doc = evaluated
    cfg = _chosen(doc)
    assert cfg.beta > 0 and doc["models"]["plural:persona_calibrated"]["params"]["lists"] == "replay"
    rec = _recommender(ev)
    mode = CalibratedMode("persona_calibrated", "the evaluation's choice", cfg)
    for k in ev.ks:
        live = _live_lists(rec, ev.outputs.users, mode, k)
        assert np.array_equal(ev.outputs.lists["plural:persona_calibrated"][k], live), k
        assert doc["replay"]["per_k"][str(k)]["plural:persona_calibrated"]["showings"] == int((live >= 0).sum())


def test_without_bonus_lists_are_live_recommend_with_beta_zero(evaluated):
    ev, doc = evaluated
    rec = _recommender(ev)
    mode = CalibratedMode("persona_calibrated", "beta 0", _chosen(doc).model_copy(update={"beta": 0.0}))
    for k in ev.ks:
        assert np.array_equal(ev.outputs.without_bonus[k], _live_lists(rec, ev.outputs.users, mode, k))
    eb = doc["exposure_bonus"]
    assert eb["beta"] == _chosen(doc).beta and eb["without_bonus_label"] == "rank lam=0.25 gamma=0.25 mu=0.05 resort"
    for k in ev.ks:
        assert eb["with_bonus"]["metrics"][f"Coverage@{k}"] >= eb["without_bonus"]["metrics"][f"Coverage@{k}"]
        assert eb["with_bonus"]["metrics"][f"NDCG@{k}"] == doc["models"]["plural:persona_calibrated"]["metrics"][
            f"NDCG@{k}"]
    rb = doc["research_bar"]
    assert rb["b_persona_calibrated_vs_steck"]["lists"] == "replay"
    assert rb["b_without_exposure_bonus"]["coverage_ratio"] == pytest.approx(
        eb["without_bonus"]["metrics"]["Coverage@10"] / doc["models"]["ease"]["metrics"]["Coverage@10"], abs=1e-4)


def test_the_bonus_spreads_a_repeated_user_over_the_catalog(evaluated):
    """A case built to show it: one user asked again and again. Without the bonus every list is
    the same; with it, what was shown loses its bonus and later lists move on to unshown items."""
    ev, doc = evaluated
    rec = _recommender(ev)
    users = [ev.outputs.users[0]] * 12
    cfg = _chosen(doc)
    with_bonus = _live_lists(rec, users, CalibratedMode("pc", "", cfg), 10)
    without = _live_lists(rec, users, CalibratedMode("pc0", "", cfg.model_copy(update={"beta": 0.0})), 10)
    assert (without == without[0]).all() and _coverage(without) == 10
    assert not (with_bonus == with_bonus[0]).all()
    assert _coverage(with_bonus) > _coverage(without)
    # the first list is the same either way: nothing was shown yet, so every candidate has the bonus
    assert set(with_bonus[0]) == set(without[0])


def test_beta_zero_lists_do_not_depend_on_the_exposure_state(evaluated):
    ev, doc = evaluated
    rec = _recommender(ev)
    users = ev.outputs.users[:25]
    rng = np.random.default_rng(0)
    busy = InMemoryExposureStore()
    busy.add(list(rng.choice(ev.catalog.item_ids, size=3 * len(ev.catalog))))
    cfg0 = _chosen(doc).model_copy(update={"beta": 0.0})
    mode0 = CalibratedMode("pc0", "", cfg0)
    assert not mode0.uses_exposure
    fresh = _live_lists(rec, users, mode0, 10)
    assert np.array_equal(fresh, _live_lists(rec, users, mode0, 10, exposure=busy))
    # while with the bonus the same prefilled state does change the lists
    mode = CalibratedMode("pc", "", _chosen(doc))
    busy2 = InMemoryExposureStore()
    busy2.add(list(rng.choice(ev.catalog.item_ids, size=3 * len(ev.catalog))))
    assert not np.array_equal(_live_lists(rec, users, mode, 10), _live_lists(rec, users, mode, 10, exposure=busy2))


def test_every_run_starts_from_a_fresh_exposure_state(synthetic, evaluated):
    ev, doc = evaluated
    again, doc2 = _run(synthetic.dataset)
    for k in ev.ks:
        assert np.array_equal(ev.outputs.lists["plural:persona_calibrated"][k],
                              again.outputs.lists["plural:persona_calibrated"][k])
        assert np.array_equal(ev.outputs.without_bonus[k], again.outputs.without_bonus[k])
    assert doc2["models"]["plural:persona_calibrated"]["metrics"] == doc["models"]["plural:persona_calibrated"]["metrics"]
    assert doc2["exposure_bonus"] == doc["exposure_bonus"]
    # and the same object run twice gives the same lists again (no state carried between runs)
    doc3 = again.run()
    assert doc3["models"]["plural:persona_calibrated"]["metrics"] == doc["models"]["plural:persona_calibrated"]["metrics"]


def test_tuning_uses_the_replays_exposure_semantics(evaluated):
    _, doc = evaluated
    assert all(v["config"]["exposure_chunk"] == 1 for v in doc["tuning"]["persona_calibrated"]["variants"])
    share = doc["replay"]["per_k"]["10"]["plural:persona_calibrated"]["vectorised_identical_share"]
    assert 0.5 <= share <= 1.0  # the selection device and the product mostly agree, list for list


def test_exclusion_of_the_recommender(evaluated):
    ev, _ = evaluated
    train = ev.outputs.split.train
    low = train.take(train.ratings < ev.config.split.positive_threshold)
    user = next(u for u in ev.outputs.users if low.has_user(u))
    disliked = set(ev.catalog.indices(list(low.for_user(user).items)).tolist())
    liked = set(HistoryIndex.build(train, ev.catalog, 4.0).positives(user).tolist())
    for exclude, banned in (("seen", liked | disliked), ("positives", liked)):
        ctx, _, _ = _recommender(ev, exclude).context(user)
        assert set(np.flatnonzero(~ctx.allowed).tolist()) == banned, exclude
    assert PersonaRecommender.__init__.__defaults__[-1] == "seen"  # the live behaviour by default
    with pytest.raises(UsageError, match="exclude"):
        _recommender(ev, "everything")
