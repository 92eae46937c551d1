"""``plural eval rec``: accuracy and crowding out, Plural's modes beside the strongest baselines.

Protocol (DESIGN.md section 3; the issue's reference protocol by default): ratings >= 4 are
positives; users with >= 5 positives; a seeded per-user random 80/20 split of positives (or a
temporal leave-last split, or a predefined split); full ranking over every item outside the
user's training positives (``exclude="seen"`` also removes non-positive training ratings).

Every hyperparameter is chosen on a validation split carved from the training part, never on
test; the chosen values and every variant tried are written to the output.

Selection rules (validation, K = 10):

* EASE lambda and ItemKNN k: the highest NDCG.
* The Steck reference: among EASE + Steck variants (both relevance kinds, every lambda) with
  NDCG >= ``accuracy_floor`` x EASE, the lowest genre C_KL.
* ``plural:persona_calibrated``: among joint variants with NDCG >= ``accuracy_floor`` x EASE,
  minority recall not measurably below EASE's (the paired 95% bootstrap interval of the per-user
  difference reaches zero: validation users have few test items, so a fixed ratio there is
  mostly noise) and coverage >= ``coverage_factor`` x the Steck reference's, the lowest C_KL;
  when none qualifies, the constraint on coverage, then on minority recall, is dropped (and the
  output says so).
* ``plural:persona_only`` (no genre information): among persona-only variants with
  NDCG >= ``accuracy_floor`` x EASE, the lowest C_KL; else the highest NDCG.

What is reported is what the product does. The test lists of every mode whose ranking reads the
exposure counts (``plural:persona_calibrated``; ``plural:persona_only`` when its chosen beta is
above 0) are not computed by the vectorised re-ranker: the users are *replayed* through the
product's own path, a :class:`~personas.recommender.PersonaRecommender` over the split (the EASE
fitted on train, a :class:`~memory.history.HistoryIndex` of the training rows, the split's
induced personas in an :class:`~personas.store.InMemoryPersonaStore`, ``exclude`` as the
protocol's), whose ``recommend`` is called user by user in the split's user order with the
chosen settings as its mode; each list's items are added to an
:class:`~personas.exposure.InMemoryExposureStore` (in a transaction) before the next user, as a
chat turn or an API call commits what it showed. Every replay starts from a fresh, empty store:
one per list length (``--k 10 20`` replays twice, 10 and 20 items each time) and per variant.
``persona_calibrated`` is also replayed with ``beta = 0`` (its other settings unchanged): the
document's ``exposure_bonus`` section has both, and the research bar is stated for both.

Validation (and the test trade-off points) keep the vectorised re-ranker as a selection
device, with the replay's exposure semantics: counts start at zero for each variant and are
updated after every user in the same user order (``exposure_chunk = 1``, exact). What still
differs from the replay is recorded on test in ``replay.per_k`` (the share of users whose
vectorised list equals the replayed one): base scores come from one sparse product instead of
the sum of the personas' contributions (float rounding can swap near-tied candidates), ``p(g|u)``
from a matrix product, and a user without personas is re-ranked instead of given the popularity
fallback.
"""

from __future__ import annotations

import itertools
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import scipy.sparse as sp
from pydantic import BaseModel, ConfigDict, Field

from evals.baselines import ContentMean, MultVAE, MultVAEConfig, Popularity
from evals.metrics import ListEvaluation, evaluate_lists, user_profiles
from evals.plural_batch import SplitPersonas, induce_for_split, persona_fill_lists
from evals.report import json_number as _num
from evals.splits import SplitArrays, SplitConfig, rank_unseen, split_dataset, validation_split
from evals.stats import bootstrap_ci, paired_comparison
from memory.dataset import Dataset
from memory.errors import DataFormatError, UsageError
from memory.history import HistoryIndex
from personas.calibration import CalibrationConfig, calibrated_rerank
from personas.exposure import InMemoryExposureStore
from personas.induction import InductionConfig
from personas.ranking import CalibratedMode
from personas.recommender import PersonaRecommender
from personas.scorers import EASE, ItemKNN
from personas.store import InMemoryPersonaStore

SCHEMA_VERSION = 1

BASELINES = ("popularity", "itemknn", "ease", "ease+steck", "content", "multvae")
PLURAL_MODELS = ("plural:relevance", "plural:persona_fill", "plural:calibrated", "plural:persona_calibrated",
                 "plural:persona_only")
ALL_MODELS = BASELINES + PLURAL_MODELS
KEY_METRICS = ("NDCG", "Recall", "HR", "C_KL", "TDD_genre", "TDD_persona", "MinorityRecall", "ILD", "Coverage")


class EvalConfig(BaseModel):
    """Settings of ``plural eval rec``."""

    model_config = ConfigDict(extra="forbid")

    ks: list[int] = Field(default_factory=lambda: [10, 20])
    """List lengths every metric is reported at."""
    models: list[str] | None = None
    """Models to run (default: all). EASE always runs: it is the reference."""
    split: SplitConfig = Field(default_factory=SplitConfig)
    """How test positives are held out (the validation split is carved the same way from train)."""
    exclude: Literal["positives", "seen"] = "positives"
    """Items never ranked for a user: training positives (the reference protocol) or every
    training interaction."""
    ease_l2_grid: list[float] = Field(default_factory=lambda: [50.0, 100.0, 200.0, 400.0, 800.0])
    """EASE lambda candidates."""
    itemknn_k_grid: list[int] = Field(default_factory=lambda: [50, 100, 200])
    """ItemKNN neighbourhood sizes."""
    steck_lambdas: list[float] = Field(default_factory=lambda: [0.05, 0.1, 0.15, 0.2, 0.22, 0.25, 0.27, 0.3, 0.35,
                                                                0.4, 0.5, 0.6, 0.7])
    """Steck lambda grid (each tried with rank and min-max relevance)."""
    joint_lambdas: list[float] = Field(default_factory=lambda: [0.2, 0.25, 0.3, 0.35])
    """Genre weight of the joint persona objective."""
    joint_mus: list[float] = Field(default_factory=lambda: [0.0, 0.05])
    """Persona-KL weights of the joint objective."""
    joint_betas: list[float] = Field(default_factory=lambda: [0.02, 0.04, 0.06])
    """Exposure-bonus weights of the joint objective."""
    joint_gammas: list[float] = Field(default_factory=lambda: [0.25])
    """Intent-aware (within-persona rank) relevance shares of the joint objective."""
    persona_only_mus: list[float] = Field(default_factory=lambda: [0.05, 0.1, 0.2, 0.4])
    """Persona-KL weights of the persona-only variants (no genre term)."""
    persona_only_betas: list[float] = Field(default_factory=lambda: [0.0, 0.04])
    """Exposure-bonus weights of the persona-only variants."""
    candidates: int = Field(100, gt=0)
    """Top-N base items every re-ranker chooses from."""
    accuracy_floor: float = Field(0.98, gt=0, le=1)
    """Selection: NDCG@10 must stay at or above this share of EASE's."""
    minority_floor: float = Field(0.98, gt=0, le=1)
    """Selection: minority-taste recall@10 must stay at or above this share of EASE's."""
    coverage_factor: float = Field(1.3, gt=0)
    """Selection: the joint mode's coverage@10 must reach this multiple of the Steck reference's."""
    induction: InductionConfig = Field(default_factory=InductionConfig)
    """Persona induction settings (fitted on training positives only)."""
    embedder: str = "all-MiniLM-L6-v2"
    """Text embedder for the content baseline, the text item space and intra-list diversity."""
    multvae: MultVAEConfig = Field(default_factory=MultVAEConfig)
    """Mult-VAE settings."""
    bootstrap: int = Field(1000, ge=100)
    """Bootstrap resamples for confidence intervals."""
    tradeoff_on_test: bool = True
    """Also score every Steck and joint variant on test (K=10) for the trade-off plot; the
    choice is still made on validation."""

    def selected_models(self) -> list[str]:
        if not self.models:
            return list(ALL_MODELS)
        unknown = [m for m in self.models if m not in ALL_MODELS]
        if unknown:
            raise UsageError("model", unknown[0], ALL_MODELS)
        return list(dict.fromkeys(["ease", *self.models]))


@dataclass
class _Stage:
    """Arrays of one split (validation or test) plus the fitted EASE and its scores."""

    name: str
    arrays: SplitArrays
    exclude: sp.csr_matrix
    profiles: np.ndarray
    ease: EASE | None = None
    scores: np.ndarray | None = None
    personas: SplitPersonas | None = None
    cache: dict = field(default_factory=dict)


@dataclass
class RunOutputs:
    """What ``run()`` ranked with and what it listed, kept for inspection (tests, notebooks)."""

    split: object
    """The :class:`~evals.splits.Split` (``split.train`` is every training row)."""
    users: list[str]
    """Evaluated users, in the order of every list's rows and of the replay."""
    scorer: EASE
    """EASE fitted on the training positives (the replay's scorer)."""
    personas: SplitPersonas | None
    """The personas induced from the training positives."""
    lists: dict[str, dict[int, np.ndarray]]
    """Model -> K -> ``(users, K)`` item positions as evaluated (``-1`` pads)."""
    without_bonus: dict[int, np.ndarray] | None = None
    """``persona_calibrated`` replayed with ``beta = 0``, per K."""


class _ReplayPersonaStore(InMemoryPersonaStore):
    """The in-memory persona store, read-only in a replay: ``get`` hands out the stored set
    itself rather than a deep copy (the replay never changes a persona, and copying every
    persona's text embedding was a third of a replay's time). Same sets, same lists: the tests
    replay through a plain :class:`InMemoryPersonaStore` and compare."""

    def get(self, user_id: str):
        with self._lock:
            return self._current.get(str(user_id))


def _versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("plural", "numpy", "scipy", "torch", "faiss-cpu", "sentence-transformers", "pydantic"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


class RecEvaluation:
    """One evaluation run. ``run()`` returns the result document (see ``docs/eval-schema.md``).

    Example:
        >>> from memory.loaders import DataSource
        >>> doc = RecEvaluation(DataSource(dataset="ml-100k").load(), EvalConfig()).run()   # doctest: +SKIP
        >>> doc["models"]["ease"]["metrics"]["NDCG@10"]                                   # doctest: +SKIP
        0.33
    """

    def __init__(self, dataset: Dataset, config: EvalConfig | None = None,
                 progress: Callable[[str, int], Callable[..., None]] | None = None, *,
                 ray: bool | str = False, shard_size: int = 100):
        """``ray``: False runs everything here; True or an address runs the per-user persona
        induction of both splits on Ray in shards of ``shard_size`` users
        (:mod:`evals.ray_shards`: what runs where); the document is the same either way."""
        self.dataset = dataset
        self.ray = ray
        self._map_shards = None
        if ray is not False and ray is not None:
            from evals.ray_shards import ray_map_shards

            self._map_shards = ray_map_shards(ray, shard_size)
        self.config = config or EvalConfig()
        self.models = self.config.selected_models()
        if not self.config.ks or min(self.config.ks) <= 0:
            raise UsageError("ks", self.config.ks, "one or more positive integers")
        self.ks = sorted(set(self.config.ks))
        self.kmax = max(self.ks)
        self._progress = progress or (lambda desc, total: (lambda n=1: None))
        self.timings: dict[str, float] = {}
        self.catalog = dataset.catalog
        self.C = self.catalog.category_distribution()
        self.outputs: RunOutputs | None = None
        """Set by ``run()``."""

    # ------------------------------------------------------------------ helpers
    def _timed(self, name: str):
        outer = self

        class _T:
            def __enter__(self):
                self.t = time.perf_counter()

            def __exit__(self, *exc):
                outer.timings[name] = round(outer.timings.get(name, 0.0) + time.perf_counter() - self.t, 3)

        return _T()

    def _stage(self, name: str, arrays: SplitArrays) -> _Stage:
        excl = arrays.history if self.config.exclude == "positives" else arrays.seen
        return _Stage(name, arrays, excl, user_profiles(arrays.history, self.C))

    def _evaluate(self, stage: _Stage, top: np.ndarray, ks, personas: SplitPersonas | None = None,
                  embeddings: np.ndarray | None = None) -> ListEvaluation:
        labels = personas.labels(top) if personas is not None else None
        return evaluate_lists(top, stage.arrays.test, stage.arrays.history, self.catalog, ks=ks,
                              item_embeddings=embeddings, persona_labels=labels,
                              persona_weights=personas.weights if personas is not None else None)

    def _base(self, stage: _Stage) -> tuple[np.ndarray, np.ndarray]:
        if "base" not in stage.cache:
            cand = rank_unseen(stage.scores, stage.exclude, self.config.candidates)
            cs = np.take_along_axis(stage.scores, np.maximum(cand, 0), axis=1)
            stage.cache["base"] = (cand, np.where(cand >= 0, cs, -np.inf))
        return stage.cache["base"]

    def _rerank(self, stage: _Stage, cfg: CalibrationConfig) -> np.ndarray:
        cand, cs = self._base(stage)
        kw = {}
        if cfg.mu > 0 or cfg.gamma > 0:
            p = stage.personas
            kw["cand_persona"] = np.take_along_axis(p.responsible, np.maximum(cand, 0), axis=1).astype(np.int64)
            kw["persona_weights"] = p.weights
            kw["cand_persona_rank"] = np.take_along_axis(p.persona_rank, np.maximum(cand, 0), axis=1)
        if cfg.beta > 0:
            # as the replay: counts start empty for every variant and grow after every user
            kw["exposure"] = np.zeros(len(self.catalog))
            cfg = cfg.model_copy(update={"exposure_chunk": 1})
        return calibrated_rerank(cand, cs, stage.profiles, self.C, cfg, **kw)

    # ------------------------------------------------------------------ the product's path
    def recommender(self, train_log, stage: _Stage) -> PersonaRecommender:
        """The product's recommender over a split: ``stage``'s fitted EASE, a history index of
        the training rows, the stage's personas in an in-memory store, the protocol's exclusion."""
        history = HistoryIndex.build(train_log, self.catalog, self.config.split.positive_threshold)
        store = _ReplayPersonaStore()
        store.put_many(stage.personas.sets)
        return PersonaRecommender(self.catalog, stage.ease, history, store, exclude=self.config.exclude,
                                  provenance={"evaluation": "plural eval rec", "split": stage.name})

    def replay(self, rec: PersonaRecommender, users: list[str], cfg: CalibrationConfig, k: int,
               name: str = "eval") -> tuple[np.ndarray, int]:
        """``(users, k)`` lists of ``rec.recommend(user, k, mode)`` for each user in order, the
        mode being ``cfg``; a fresh exposure store, each list added to it before the next user
        (as a turn commits what it showed). Returns the lists and the showings counted."""
        mode = CalibratedMode(name, f"plural eval rec: {cfg.label()}", cfg)
        store = InMemoryExposureStore()
        rec.exposure = store
        top = np.full((len(users), k), -1, np.int64)
        try:
            for r, u in enumerate(users):
                ids = [it.item_id for it in rec.recommend(u, k, mode).items]
                with store.transaction():
                    store.add(ids)
                if ids:
                    top[r, :len(ids)] = self.catalog.indices(ids)
        finally:
            rec.exposure = None
        return top, store.total()

    def _fit_ease(self, stage: _Stage, l2: float) -> None:
        stage.ease = EASE(l2=l2).fit(stage.arrays.train_matrix)
        rows = self._rows(stage)
        stage.scores = stage.ease.score_batch(stage.arrays.history if rows is None else rows)
        stage.cache.clear()

    @staticmethod
    def _rows(stage: _Stage):
        return None  # history rows are already in evaluated-user order

    def _summary(self, ev: ListEvaluation, k: int = 10) -> dict:
        m = ev.means()
        return {name: round(float(m[f"{name}@{k}"]), 6) for name in ("NDCG", "C_KL", "MinorityRecall", "Coverage",
                                                                      "Recall", "TDD_genre", "TDD_persona")
                if f"{name}@{k}" in m}

    def _bonus_doc(self, test: _Stage, ease: ListEvaluation, no_bonus: dict[int, np.ndarray],
                   embeddings: np.ndarray, models_doc: dict, chosen: CalibrationConfig,
                   without: CalibrationConfig) -> dict:
        """``persona_calibrated`` with its chosen exposure bonus and with ``beta = 0`` (both replayed)."""
        cfg = self.config
        names = [f"{m}@{k}" for k in self.ks for m in ("NDCG", "C_KL", "MinorityRecall", "Coverage", "Recall",
                                                        "TDD_persona")]
        with_doc = models_doc["plural:persona_calibrated"]
        out = {"beta": chosen.beta, "with_bonus_label": chosen.label(), "without_bonus_label": without.label(),
               "lists": "replay (PersonaRecommender.recommend, fresh exposure per k)",
               "with_bonus": {"metrics": {n: with_doc["metrics"].get(n) for n in names},
                              "vs_ease": {n: with_doc["vs_ease"].get(n) for n in names if n in with_doc["vs_ease"]},
                              "attributed_share": with_doc["attributed_share"]}}
        evs = [self._evaluate(test, no_bonus[k], (k,), test.personas, embeddings) for k in self.ks]
        ev = ListEvaluation({n: v for e in evs for n, v in e.per_user.items()},
                            {n: v for e in evs for n, v in e.coverage.items()})
        means = ev.means()
        vs = {}
        for n in names:
            if n in ev.per_user and n in ease.per_user:
                pc = paired_comparison(ev.per_user[n], ease.per_user[n], n_resamples=cfg.bootstrap,
                                       seed=cfg.split.seed)
                vs[n] = {"ratio": _num(pc.ratio), "difference": _num(pc.difference),
                         "ci": [_num(pc.ci_low), _num(pc.ci_high)], "p_value": _num(pc.p_value), "n": pc.n}
            elif n in ev.coverage and n in ease.coverage:
                vs[n] = {"ratio": _num(ev.coverage[n] / ease.coverage[n]) if ease.coverage[n] else None}
        listed = sum(int((no_bonus[k] >= 0).sum()) for k in self.ks)
        attributed = sum(int(((test.personas.labels(no_bonus[k]) >= 0) & (no_bonus[k] >= 0)).sum())
                         for k in self.ks)
        out["without_bonus"] = {"metrics": {n: _num(means.get(n)) for n in names}, "vs_ease": vs,
                                "attributed_share": round(attributed / max(listed, 1), 6)}
        out["coverage_gain_from_bonus"] = {
            str(k): _num(out["with_bonus"]["metrics"][f"Coverage@{k}"] / out["without_bonus"]["metrics"][f"Coverage@{k}"])
            if out["without_bonus"]["metrics"][f"Coverage@{k}"] else None for k in self.ks}
        return out

    # ------------------------------------------------------------------ validation
    def _tune(self, val: _Stage, text_vectors: np.ndarray) -> dict:
        cfg = self.config
        tuning: dict = {}
        bar = self._progress("Tuning on validation", len(cfg.ease_l2_grid) + len(cfg.itemknn_k_grid) + 3)
        with self._timed("tune_ease"):
            grid = {}
            for l2 in cfg.ease_l2_grid:
                self._fit_ease(val, l2)
                top = rank_unseen(val.scores, val.exclude, 10)
                grid[l2] = self._summary(self._evaluate(val, top, (10,)))["NDCG"]
                bar()
            best_l2 = max(grid, key=lambda k: (grid[k], -k))
            tuning["ease"] = {"grid_ndcg@10": {str(k): v for k, v in grid.items()}, "chosen_l2": best_l2}
            self._fit_ease(val, best_l2)
        if "itemknn" in self.models:
            with self._timed("tune_itemknn"):
                grid = {}
                for k in cfg.itemknn_k_grid:
                    m = ItemKNN(k=k).fit(val.arrays.train_matrix)
                    top = rank_unseen(m.score_batch(val.arrays.history), val.exclude, 10)
                    grid[k] = self._summary(self._evaluate(val, top, (10,)))["NDCG"]
                    bar()
                tuning["itemknn"] = {"grid_ndcg@10": {str(k): v for k, v in grid.items()},
                                     "chosen_k": max(grid, key=lambda k: (grid[k], -k))}
        ease_top = rank_unseen(val.scores, val.exclude, 10)
        ease_ev = self._evaluate(val, ease_top, (10,))
        ease_val = self._summary(ease_ev)
        tuning["ease"]["validation@10"] = ease_val

        with self._timed("tune_steck"):
            steck = []
            for rel, lam in itertools.product(("rank", "minmax"), cfg.steck_lambdas):
                c = CalibrationConfig(lam=lam, relevance=rel, k=10, n_candidates=cfg.candidates)
                steck.append({"config": c.model_dump(), "label": "steck " + c.label(),
                              "validation@10": self._summary(self._evaluate(val, self._rerank(val, c), (10,)))})
            bar()
        floor = cfg.accuracy_floor * ease_val["NDCG"]
        ok = [v for v in steck if v["validation@10"]["NDCG"] >= floor]
        pool = ok or steck
        ref = min(pool, key=lambda v: (v["validation@10"]["C_KL"], -v["validation@10"]["NDCG"])) if ok else \
            max(pool, key=lambda v: v["validation@10"]["NDCG"])
        tuning["steck"] = {"variants": steck, "chosen": ref["config"], "chosen_label": ref["label"],
                           "rule": f"lowest C_KL@10 with NDCG@10 >= {cfg.accuracy_floor} x EASE (validation)"}

        needs_personas = any(m in self.models for m in ("plural:persona_calibrated", "plural:persona_only"))
        if needs_personas:
            with self._timed("tune_personas_induction"):
                tick = self._progress("Personas (validation)", len(val.arrays.users))
                val.personas = induce_for_split(self.catalog, val.ease, val.arrays.train_matrix, val.arrays.users,
                                                val.arrays.history, val.exclude, text_vectors, cfg.induction,
                                                tick=tick, map_shards=self._map_shards)
            with self._timed("tune_joint"):
                joint = []
                for lam, mu, beta, gamma in itertools.product(cfg.joint_lambdas, cfg.joint_mus, cfg.joint_betas,
                                                              cfg.joint_gammas):
                    c = CalibrationConfig(lam=lam, mu=mu, beta=beta, gamma=gamma, resort=True, k=10,
                                          n_candidates=cfg.candidates, exposure_chunk=1)
                    ev = self._evaluate(val, self._rerank(val, c), (10,), val.personas)
                    pc = paired_comparison(ev["MinorityRecall@10"], ease_ev["MinorityRecall@10"],
                                           n_resamples=cfg.bootstrap, seed=cfg.split.seed)
                    joint.append({"config": c.model_dump(), "label": "joint " + c.label(),
                                  "validation@10": {**self._summary(ev),
                                                    "MinorityRecall_diff_ci": [_num(pc.ci_low), _num(pc.ci_high)]}})
                bar()
                only = []
                for mu, beta in itertools.product(cfg.persona_only_mus, cfg.persona_only_betas):
                    c = CalibrationConfig(lam=0.0, mu=mu, beta=beta, resort=True, k=10, n_candidates=cfg.candidates,
                                          exposure_chunk=1)
                    only.append({"config": c.model_dump(), "label": "persona-only " + c.label(),
                                 "validation@10": self._summary(self._evaluate(val, self._rerank(val, c), (10,),
                                                                               val.personas))})
                bar()
            ref_cov = ref["validation@10"]["Coverage"]

            def minority_kept(v):  # not measurably below EASE on validation
                return v["MinorityRecall_diff_ci"][1] is not None and v["MinorityRecall_diff_ci"][1] >= 0

            tiers = [("accuracy, minority recall and coverage",
                      lambda v: v["NDCG"] >= floor and minority_kept(v)
                      and v["Coverage"] >= cfg.coverage_factor * ref_cov),
                     ("accuracy and minority recall (no variant reached the coverage floor)",
                      lambda v: v["NDCG"] >= floor and minority_kept(v)),
                     ("accuracy only (no variant kept minority recall)", lambda v: v["NDCG"] >= floor)]
            chosen, met = None, "none: highest NDCG"
            for name, pred in tiers:
                ok = [v for v in joint if pred(v["validation@10"])]
                if ok:
                    chosen = min(ok, key=lambda v: (v["validation@10"]["C_KL"], -v["validation@10"]["Coverage"]))
                    met = name
                    break
            if chosen is None:
                chosen = max(joint, key=lambda v: v["validation@10"]["NDCG"])
            tuning["persona_calibrated"] = {"variants": joint, "chosen": chosen["config"],
                                            "chosen_label": chosen["label"], "constraints_met": met}
            ok = [v for v in only if v["validation@10"]["NDCG"] >= floor]
            best_only = (min(ok, key=lambda v: v["validation@10"]["C_KL"]) if ok
                         else max(only, key=lambda v: v["validation@10"]["NDCG"]))
            tuning["persona_only"] = {"variants": only, "chosen": best_only["config"],
                                      "chosen_label": best_only["label"]}
        bar()
        return tuning

    # ------------------------------------------------------------------ the run
    def run(self) -> dict:
        """The evaluation; with ``ray`` one Ray session (connected or started) spans the run."""
        if self._map_shards is None:
            return self._run()
        from agent.batch import ray_session

        with ray_session(self.ray):
            return self._run()

    def _run(self) -> dict:
        cfg = self.config
        t_all = time.perf_counter()
        with self._timed("split"):
            split = split_dataset(self.dataset, cfg.split)
            if len(split.test) == 0 or not split.users:
                raise DataFormatError(self.dataset.source or self.dataset.name,
                                      "empty test set: no user has a held-out positive (check the positive "
                                      "threshold, min positives and the test file)")
            test = self._stage("test", split.arrays(self.catalog))
            val = self._stage("validation", validation_split(split).arrays(self.catalog))
        with self._timed("embed_items"):
            from memory.embeddings import make_embedder

            text_vectors = make_embedder(cfg.embedder).embed(self.catalog.texts())
        tuning = self._tune(val, text_vectors)

        lists: dict[str, dict[int, np.ndarray]] = {}
        fit_s: dict[str, float] = {}
        params: dict[str, dict] = {}
        A = test.arrays
        bar = self._progress("Fitting models on train", len(self.models))

        def add(name: str, top_by_k: dict[int, np.ndarray], seconds: float, p: dict):
            lists[name] = top_by_k
            fit_s[name] = round(seconds, 3)
            params[name] = p
            bar()

        rec: PersonaRecommender | None = None
        no_bonus: dict[int, np.ndarray] | None = None
        c0: CalibrationConfig | None = None
        replay_doc: dict = {
            "what": "test lists of the modes marked params.lists = 'replay': PersonaRecommender.recommend for "
                    "each evaluated user in the split's user order, each list's items added to the exposure "
                    "counts (in a transaction) before the next user",
            "exposure": "a fresh InMemoryExposureStore per replay: per list length and per variant",
            "exclude": cfg.exclude, "users": len(A.users), "per_k": {}}

        def full_rank(scores: np.ndarray) -> dict[int, np.ndarray]:
            top = rank_unseen(scores, test.exclude, self.kmax)
            return {k: top[:, :k] for k in self.ks}

        t = time.perf_counter()
        self._fit_ease(test, tuning["ease"]["chosen_l2"])
        add("ease", full_rank(test.scores), time.perf_counter() - t, {"l2": tuning["ease"]["chosen_l2"]})
        if "popularity" in self.models:
            t = time.perf_counter()
            m = Popularity().fit(A.train_matrix)
            add("popularity", full_rank(m.score_batch(A.history)), time.perf_counter() - t, {})
        if "itemknn" in self.models:
            t = time.perf_counter()
            m = ItemKNN(k=tuning["itemknn"]["chosen_k"]).fit(A.train_matrix)
            add("itemknn", full_rank(m.score_batch(A.history)), time.perf_counter() - t,
                {"k": tuning["itemknn"]["chosen_k"]})
        steck_cfg = CalibrationConfig.model_validate(tuning["steck"]["chosen"])
        for name in ("ease+steck", "plural:calibrated"):
            if name in self.models:
                t = time.perf_counter()
                add(name, {k: self._rerank(test, steck_cfg.model_copy(update={"k": k})) for k in self.ks},
                    time.perf_counter() - t, {"calibration": steck_cfg.model_dump(exclude={"k"})})
        if "content" in self.models:
            t = time.perf_counter()
            m = ContentMean(text_vectors).fit(A.train_matrix)
            add("content", full_rank(m.score_batch(A.history)), time.perf_counter() - t,
                {"embedder": cfg.embedder})
        if "multvae" in self.models:
            with self._timed("multvae"):
                t = time.perf_counter()
                m = MultVAE(cfg.multvae).fit(A.train_matrix)
                add("multvae", full_rank(m.score_batch(A.history)), time.perf_counter() - t,
                    cfg.multvae.model_dump())
        if any(m.startswith("plural:") for m in self.models):
            with self._timed("test_personas_induction"):
                tick = self._progress("Personas (train)", len(A.users))
                test.personas = induce_for_split(self.catalog, test.ease, A.train_matrix, A.users, A.history,
                                                 test.exclude, text_vectors, cfg.induction, tick=tick,
                                                 map_shards=self._map_shards)
            if "plural:relevance" in self.models:
                add("plural:relevance", {k: v.copy() for k, v in lists["ease"].items()}, 0.0,
                    {"mode": "relevance"})
            if "plural:persona_fill" in self.models:
                t = time.perf_counter()
                add("plural:persona_fill", {k: persona_fill_lists(test.scores, test.exclude, test.personas, k)
                                            for k in self.ks}, time.perf_counter() - t, {"mode": "persona_fill"})
            for name, key in (("plural:persona_calibrated", "persona_calibrated"),
                              ("plural:persona_only", "persona_only")):
                if name not in self.models:
                    continue
                c = CalibrationConfig.model_validate(tuning[key]["chosen"])
                p = {"calibration": c.model_dump(exclude={"k"})}
                t = time.perf_counter()
                if c.beta > 0 or name == "plural:persona_calibrated":
                    # the product's path: PersonaRecommender.recommend, user by user, fresh exposure
                    with self._timed("replay"):
                        if rec is None:
                            rec = self.recommender(split.train, test)
                        by_k = {}
                        for k in self.ks:
                            by_k[k], shown = self.replay(rec, A.users, c, k, name)
                            replay_doc["per_k"].setdefault(str(k), {})[name] = {"showings": shown}
                    p["lists"] = "replay"
                    add(name, by_k, time.perf_counter() - t, p)
                else:  # no exposure in its ranking: the vectorised re-ranker
                    p["lists"] = "vectorised"
                    add(name, {k: self._rerank(test, c.model_copy(update={"k": k})) for k in self.ks},
                        time.perf_counter() - t, p)
            if "plural:persona_calibrated" in self.models:
                c = CalibrationConfig.model_validate(tuning["persona_calibrated"]["chosen"])
                with self._timed("replay"):
                    for k in self.ks:
                        # what the vectorised re-ranker (the selection device) gives on test
                        vec = self._rerank(test, c.model_copy(update={"k": k}))
                        got = lists["plural:persona_calibrated"][k]
                        replay_doc["per_k"][str(k)]["plural:persona_calibrated"].update(
                            vectorised_identical_share=_num(np.mean((vec == got).all(axis=1))),
                            vectorised_identical_sets_share=_num(np.mean(
                                (np.sort(vec, axis=1) == np.sort(got, axis=1)).all(axis=1))))
                    if c.beta > 0:
                        c0 = c.model_copy(update={"beta": 0.0})
                        no_bonus = {k: self.replay(rec, A.users, c0, k, "plural:persona_calibrated")[0]
                                    for k in self.ks}
                    else:
                        c0, no_bonus = c, lists["plural:persona_calibrated"]
                replay_doc["users_without_personas"] = int((test.personas.n_personas == 0).sum())

        # ---------------------------------------------------------- metrics
        models_doc: dict = {}
        per_user: dict[str, ListEvaluation] = {}
        bar = self._progress("Metrics and bootstrap", len(lists))
        with self._timed("metrics"):
            for name, by_k in lists.items():
                personas = test.personas if name.startswith("plural:") else None
                evs = [self._evaluate(test, by_k[k], (k,), personas, text_vectors) for k in self.ks]
                merged = ListEvaluation({n: v for e in evs for n, v in e.per_user.items()},
                                        {n: v for e in evs for n, v in e.coverage.items()})
                per_user[name] = merged
                attributed = None
                if personas is not None:
                    labs = [personas.labels(by_k[k]) for k in self.ks]
                    listed = sum(int((by_k[k] >= 0).sum()) for k in self.ks)
                    attributed = round(sum(int(((lab >= 0) & (by_k[k] >= 0)).sum())
                                           for lab, k in zip(labs, self.ks)) / max(listed, 1), 6)
                models_doc[name] = {"metrics": {n: _num(v) for n, v in merged.means().items()},
                                    "params": params[name], "fit_s": fit_s[name],
                                    "attributed_share": attributed}
                bar()
        with self._timed("bootstrap"):
            ref = per_user["ease"]
            for name, ev in per_user.items():
                ci, vs = {}, {}
                for metric, values in ev.per_user.items():
                    b = bootstrap_ci(values, n_resamples=cfg.bootstrap, seed=cfg.split.seed)
                    ci[metric] = [_num(b.low), _num(b.high)]
                    if name != "ease" and metric in ref.per_user:
                        pc = paired_comparison(values, ref.per_user[metric], n_resamples=cfg.bootstrap,
                                               seed=cfg.split.seed)
                        vs[metric] = {"ratio": _num(pc.ratio), "difference": _num(pc.difference),
                                      "ci": [_num(pc.ci_low), _num(pc.ci_high)], "p_value": _num(pc.p_value),
                                      "n": pc.n}
                for metric, value in ev.coverage.items():
                    if name != "ease":
                        vs[metric] = {"ratio": _num(value / ref.coverage[metric]) if ref.coverage[metric] else None}
                models_doc[name]["ci95"] = ci
                models_doc[name]["vs_ease"] = vs

        # ---------------------------------------------------------- with and without the bonus
        exposure_bonus = None
        if no_bonus is not None:
            with self._timed("metrics"):
                exposure_bonus = self._bonus_doc(test, per_user["ease"], no_bonus, text_vectors, models_doc,
                                                 CalibrationConfig.model_validate(
                                                     tuning["persona_calibrated"]["chosen"]), c0)

        # ---------------------------------------------------------- trade-off points on test
        tradeoff = []
        if cfg.tradeoff_on_test:
            with self._timed("tradeoff_test"):
                bar = self._progress("Trade-off variants on test", 3)
                families = [("steck", tuning["steck"]["variants"])]
                if "persona_calibrated" in tuning:
                    families += [("joint", tuning["persona_calibrated"]["variants"]),
                                 ("persona-only", tuning["persona_only"]["variants"])]
                for family, variants in families:
                    for v in variants:
                        c = CalibrationConfig.model_validate(v["config"])
                        s = self._summary(self._evaluate(test, self._rerank(test, c), (10,), test.personas))
                        v["test@10"] = s
                        tradeoff.append({"family": family, "label": v["label"], **s})
                    bar()

        by_tastes = {}
        if test.personas is not None:
            n_p = test.personas.n_personas
            for name, ev in per_user.items():
                vals = ev.per_user.get("MinorityRecall@10")
                if vals is None:
                    continue
                by_tastes[name] = {str(k): {"mean": _num(np.nanmean(vals[n_p == k])) if np.isfinite(
                    vals[n_p == k]).any() else None, "users": int((n_p == k).sum())}
                    for k in sorted(set(n_p.tolist()))}
        self.timings["total"] = round(time.perf_counter() - t_all, 3)
        doc = {
            "schema_version": SCHEMA_VERSION,
            "dataset": {**{k: v for k, v in self.dataset.describe().items() if k != "categories"},
                        "evaluated_users": len(A.users), "test_positives": int(A.test.nnz),
                        "validation_users": len(val.arrays.users)},
            "config": cfg.model_dump(mode="json"),
            "versions": _versions(),
            "tuning": tuning,
            "models": models_doc,
            "tradeoff": tradeoff,
            "minority_recall_by_tastes": by_tastes,
            "replay": replay_doc,
            "timings_s": self.timings,
        }
        if exposure_bonus is not None:
            doc["exposure_bonus"] = exposure_bonus
        doc["research_bar"] = research_bar(doc, cfg)
        self.outputs = RunOutputs(split, list(A.users), test.ease, test.personas, lists, no_bonus)
        return doc


def research_bar(doc: dict, cfg: EvalConfig) -> dict:
    """The issue's checks on the test split, from a result document (on the reported lists: for
    ``persona_calibrated`` the replay through the product's path; also without its bonus)."""
    m = doc["models"]
    out: dict = {}

    def g(name, metric):
        return m.get(name, {}).get("metrics", {}).get(metric)

    e = {k: g("ease", f"{k}@10") for k in ("NDCG", "C_KL", "MinorityRecall", "Coverage")}
    if "plural:relevance" in m:
        out["a_relevance_equals_ease"] = {
            "ndcg_ratio": round(g("plural:relevance", "NDCG@10") / e["NDCG"], 6),
            "attributed_share": m["plural:relevance"]["attributed_share"],
            "passed": abs(g("plural:relevance", "NDCG@10") - e["NDCG"]) < 1e-12
            and m["plural:relevance"]["attributed_share"] == 1.0}

    def bar_b(pm: dict, attributed) -> dict:
        s = "ease+steck"
        checks = {
            "ndcg_ratio": pm["NDCG@10"] / e["NDCG"],
            "c_kl_ratio": pm["C_KL@10"] / e["C_KL"],
            "steck_ndcg_ratio": g(s, "NDCG@10") / e["NDCG"],
            "steck_c_kl_ratio": g(s, "C_KL@10") / e["C_KL"],
            "minority_recall_ratio": pm["MinorityRecall@10"] / e["MinorityRecall"],
            "steck_minority_recall_ratio": g(s, "MinorityRecall@10") / e["MinorityRecall"],
            "coverage_ratio": pm["Coverage@10"] / e["Coverage"],
            "steck_coverage_ratio": g(s, "Coverage@10") / e["Coverage"],
            "coverage_vs_steck": pm["Coverage@10"] / g(s, "Coverage@10"),
            "attributed_share": attributed,
        }
        checks = {k: round(v, 4) for k, v in checks.items()}
        passed = {"ndcg": checks["ndcg_ratio"] >= cfg.accuracy_floor,
                  "c_kl_not_above_steck": pm["C_KL@10"] <= g(s, "C_KL@10"),
                  "minority_recall": checks["minority_recall_ratio"] >= cfg.minority_floor,
                  "coverage": checks["coverage_vs_steck"] >= cfg.coverage_factor,
                  "attributed": checks["attributed_share"] == 1.0}
        return {**checks, "checks": passed, "passed": all(passed.values())}

    if "plural:persona_calibrated" in m and "ease+steck" in m and e["NDCG"] is not None:
        p = "plural:persona_calibrated"
        out["b_persona_calibrated_vs_steck"] = {
            **bar_b(m[p]["metrics"], m[p]["attributed_share"]),
            "lists": m[p]["params"].get("lists", "vectorised")}
        nb = doc.get("exposure_bonus", {}).get("without_bonus")
        if nb:  # the same bar for the same settings without the exposure bonus (beta = 0)
            out["b_without_exposure_bonus"] = {**bar_b(nb["metrics"], nb["attributed_share"]),
                                               "beta": 0.0, "lists": "replay"}
    if "plural:persona_fill" in m or "plural:persona_only" in m:
        out["c_persona_only"] = {name: {k: round(g(name, f"{k}@10") / e[k], 4) for k in e}
                                 for name in ("plural:persona_fill", "plural:persona_only") if name in m}
    return out
