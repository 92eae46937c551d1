"""``plural eval refine``: does test-time persona refinement help on the user's next items?

Protocol (PersonaAgent's test-time loop, DESIGN.md section 1, measured offline):

1. **Split.** :func:`evals.splits.split_dataset` (seeded; by default a per-user random 80/20 of
   positives, ratings >= 4). Only the training rows go further.
2. **Engine on train only.** The training rows and the catalog are written to a work folder and
   an :class:`~agent.engine.Engine` is built from them (scorer, item texts, personas). The run
   checks that no held-out (user, item) pair is in the engine's histories, and stops if one is.
3. **Users.** ``users`` evaluated users (seeded sample) among those with at least
   ``reveal + min_remaining`` held-out positives.
4. **Revealed feedback.** Per user (seeded per user): ``reveal`` held-out positives (*like*) and
   ``reveal_negatives`` negatives (*dislike*): items the user rated <= ``negative_rating`` in the
   data, else sampled items the user never rated (the report counts both), in a random order.
   Each goes through the agent's real feedback path, :meth:`AgentRuntime.feedback` then
   :meth:`AgentRuntime.commit`: numeric update of the responsible persona (a like adds the item
   to its evidence, a dislike lowers its weight), the textual gradient on the latest n = 3
   reactions (simulate, textual loss, rewrite) and the drift guard, exactly as in chat.
5. **Measured on the remaining items, before and after** (the personas as built, then as left
   by the last feedback):

   * ranking: NDCG@k and Recall@k of the user's top-k in each ranking mode, full ranking over
     items outside the training history and the revealed items, truth = remaining held-out
     positives;
   * reaction prediction: for each remaining held-out positive (accept) and as many held-back
     negatives (reject; up to ``eval_items`` each), the persona responsible for the item
     predicts the reaction with the refiner's own simulator (the LLM's ``simulate_reaction``,
     or embedding similarity without an LLM); balanced accuracy (mean of the accept and reject
     recalls). Also the text-match AUC: how often a positive's text is closer to its persona's
     text than a negative's (text embeddings), a smooth measure of the same thing;
   * "numbers only": the after-refinement evidence and weights with the *before* texts, which
     separates what the textual rewrite did from what the numeric update did. Ranking reads
     evidence and weights only, never persona text, so only reaction prediction has this column.

6. **Statistics.** Per-user paired comparison (after vs before, after vs numbers only):
   difference of means, bootstrap 95% interval over users, Wilcoxon p. Also: the drift guard's
   decisions (aligned: no rewrite needed; accepted; rejected; no valid rewrite), text changes,
   LLM fallback counters per reason, the first LLM error.

With ``llm=None`` every text step uses the refiner's deterministic templates and the embedding
simulator: fast (about a second per user on ML-100K), and a real measurement of that
configuration. With an LLM (``plural eval refine --llm transformers --users 4 --eval-items 5``:
the packaged SmolLM2 on CPU, several minutes per user on two cores, since every simulated
reaction is a generation; or ``--llm openai --base-url ...`` / ``--llm vllm --model ...`` for
larger models), the simulator, loss and rewrite are the model's, each validated, retried once
and counted when it falls back.

Example:
    >>> from memory.loaders import DataSource
    >>> doc = run_refine_eval(DataSource(dataset="ml-100k").load(), RefineEvalConfig(users=20))  # doctest: +SKIP
    >>> doc["metrics"]["NDCG@10:relevance"]["after"] > doc["metrics"]["NDCG@10:relevance"]["before"]  # doctest: +SKIP
"""

from __future__ import annotations

import tempfile
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from agent.llm.base import LLMBackend
from agent.llm.validated import FallbackCounter
from evals.metrics import hit_matrix, ndcg_at_k, recall_at_k
from evals.report import config_from_options
from evals.report import json_number as _num
from evals.report import fmt_cell as _fmt
from evals.splits import Split, SplitConfig, split_dataset
from evals.stats import paired_comparison
from memory.dataset import Dataset
from memory.errors import DataFormatError, PluralError, UnknownUserError, UsageError
from personas.model import PersonaSet

SCHEMA_VERSION = 1


class DataLeakError(PluralError):
    """A held-out (user, item) pair reached the engine the evaluation is run on."""


class RefineEvalConfig(BaseModel):
    """Settings of ``plural eval refine``."""

    model_config = ConfigDict(extra="forbid")

    users: int = Field(50, gt=0)
    """Evaluated users, sampled (seeded) among the eligible ones."""
    user_ids: list[str] | None = None
    """Evaluate exactly these users instead (each must be eligible)."""
    reveal: int = Field(3, ge=1, le=20)
    """Held-out positives revealed as likes."""
    reveal_negatives: int = Field(2, ge=0, le=20)
    """Negatives revealed as dislikes."""
    min_remaining: int = Field(2, ge=1)
    """Held-out positives that must remain unrevealed for a user to be eligible."""
    eval_items: int = Field(10, ge=1, le=100)
    """Reaction prediction: at most this many remaining positives, and as many negatives, per user."""
    negative_rating: float = 2.0
    """Ratings at or below this make an item a negative of the user."""
    k: int = Field(10, gt=0)
    """List length of the ranking metrics."""
    modes: list[str] = Field(default_factory=lambda: ["relevance", "persona_calibrated"])
    """Ranking modes measured."""
    split: SplitConfig = Field(default_factory=SplitConfig)
    """How held-out positives are chosen (its seed is the run's seed)."""
    seed: int = 0
    """Seed of the split, the user sample, the revealed items and the refiner."""
    describe_personas: bool = True
    """With an LLM: have it write the persona text first, as the agent does before a user's first
    list, so that "before" is the text the agent would refine."""
    bootstrap: int = Field(1000, ge=100)
    """Bootstrap resamples of the paired intervals."""

    @classmethod
    def from_options(cls, **options: Any) -> RefineEvalConfig:
        """Build from CLI options; a bad value is a :class:`UsageError` naming the option."""
        cfg = config_from_options(cls, options)
        from personas.ranking import get_mode

        for m in cfg.modes:
            get_mode(m)  # unknown modes fail before any work, naming the modes that exist
        return cfg.model_copy(update={"split": cfg.split.model_copy(update={"seed": cfg.seed})})


# ---- the engine on the training rows ----------------------------------------------------------
def build_train_engine(dataset: Dataset, split: Split, engine_config, folder: Path):
    """An engine built from ``split.train`` and the catalog only (written to ``folder``)."""
    import pandas as pd

    from agent.engine import Engine
    from memory.loaders import ColumnMapping, DataSource

    folder.mkdir(parents=True, exist_ok=True)
    split.train.to_frame().to_csv(folder / "train.csv", index=False)
    cat = dataset.catalog
    pd.DataFrame({"item": list(cat.item_ids), "title": [it.title for it in cat],
                  "categories": ["|".join(it.categories) for it in cat],
                  "text": [it.text or it.title for it in cat]}).to_csv(folder / "items.csv", index=False)
    source = DataSource(dataset=None, data=str(folder / "train.csv"), items=str(folder / "items.csv"),
                        columns=ColumnMapping(text="text"))
    return Engine.open(source, engine_config, folder / "engine")


def _items_by_user(log) -> dict[str, list[str]]:
    out: dict[str, set[str]] = {}
    for u, i in zip(log.users, log.items):
        out.setdefault(str(u), set()).add(str(i))
    return {u: sorted(v, key=_id_key) for u, v in out.items()}


def _id_key(x: str):
    return (0, int(x), "") if x.isdigit() else (1, 0, x)


def check_no_leak(engine, test_items: dict[str, list[str]]) -> dict:
    """Raise :class:`DataLeakError` when a held-out pair is in the engine's histories."""
    pairs = 0
    for u, items in test_items.items():
        if u not in engine.history:
            continue
        seen = set(engine.history.seen(u).tolist())
        pos = engine.catalog.indices(items)
        leaked = [i for i, p in zip(items, pos) if int(p) in seen]
        if leaked:
            raise DataLeakError(f"held-out item {leaked[0]!r} of user {u!r} is in the engine's history")
        pairs += len(items)
    return {"held_out_pairs_checked": pairs, "in_engine_history": 0}


# ---- per-user measurements -------------------------------------------------------------------
def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    return float(((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean())


class RefineEvaluation:
    """One run (see the module docstring). ``run()`` returns the result document."""

    def __init__(self, dataset: Dataset, config: RefineEvalConfig | None = None, engine_config=None,
                 backend: LLMBackend | None = None, work_dir: str | Path | None = None,
                 progress: Callable[[str, int], Callable[..., None]] | None = None):
        from agent.config import EngineConfig

        self.dataset = dataset
        self.config = config or RefineEvalConfig()
        base = engine_config or EngineConfig()
        # the engine's positives must be the split's positives
        self.engine_config = base.model_copy(update={"positive_threshold": self.config.split.positive_threshold})
        self.backend = backend
        self.work_dir = Path(work_dir) if work_dir else None
        self._progress = progress or (lambda desc, total: (lambda n=1: None))
        self.counter = FallbackCounter()
        self.errors: list[str] = []

    # ---- choosing users and items ------------------------------------------------------------
    def _select_users(self, split: Split, test_items: dict[str, list[str]]) -> tuple[list[str], int]:
        cfg = self.config
        need = cfg.reveal + cfg.min_remaining
        eligible = [u for u in split.users if len(test_items.get(u, [])) >= need]
        if cfg.user_ids:
            known = set(self.dataset.interactions.user_ids())
            for u in cfg.user_ids:
                if u not in known:
                    raise UnknownUserError(u, self.dataset.interactions.user_ids())
                if u not in eligible:
                    raise UsageError("user_ids", u, f"a user with at least {need} held-out positives (reveal "
                                                  f"{cfg.reveal} + {cfg.min_remaining} to measure on); this one "
                                                  f"has {len(test_items.get(u, []))}")
            return list(dict.fromkeys(cfg.user_ids)), len(eligible)
        if not eligible:
            raise DataFormatError(self.dataset.source or self.dataset.name,
                                  f"no user has {need} held-out positives; lower --reveal")
        rng = np.random.default_rng(cfg.seed)
        picked = sorted(rng.choice(len(eligible), size=min(cfg.users, len(eligible)), replace=False))
        return [eligible[k] for k in picked], len(eligible)

    def _ratings(self) -> dict[str, dict[str, float]]:
        """user -> item -> highest rating, over all the data (train and test)."""
        out: dict[str, dict[str, float]] = {}
        logs = [self.dataset.interactions] + ([self.dataset.test] if self.dataset.test is not None else [])
        for log in logs:
            for u, i, r in zip(log.users, log.items, log.ratings):
                d = out.setdefault(str(u), {})
                d[str(i)] = max(float(r), d.get(str(i), -np.inf))
        return out

    def _plan(self, u: str, held_out: list[str], ratings: dict[str, float]) -> dict:
        """The user's revealed events, remaining positives and held-back negatives (seeded per user)."""
        cfg = self.config
        rng = np.random.default_rng([cfg.seed, zlib.crc32(u.encode())])
        order = rng.permutation(len(held_out))
        revealed_pos = [held_out[k] for k in order[: cfg.reveal]]
        remaining = [held_out[k] for k in order[cfg.reveal:]]
        eval_pos = remaining[: cfg.eval_items]
        low = sorted((i for i, r in ratings.items() if r <= cfg.negative_rating and i in self.catalog_ids),
                     key=_id_key)
        low = [low[k] for k in rng.permutation(len(low))]
        need = cfg.reveal_negatives + len(eval_pos)
        negs = [(i, "low_rated") for i in low[:need]]
        if len(negs) < need:
            ids = self.catalog_ids_list
            for k in rng.permutation(len(ids)):
                if len(negs) >= need:
                    break
                if ids[k] not in ratings:
                    negs.append((ids[k], "sampled_unseen"))
        events = [(i, "like", "held_out_positive") for i in revealed_pos] + \
                 [(i, "dislike", src) for i, src in negs[: cfg.reveal_negatives]]
        events = [events[k] for k in rng.permutation(len(events))]
        return {"events": events, "remaining": remaining, "eval_pos": eval_pos,
                "eval_neg": negs[cfg.reveal_negatives:]}

    # ---- measurements ----------------------------------------------------------------------
    def _ranking(self, u: str, exclude: list[str], truth: list[str]) -> dict[str, float]:
        cat, k = self.engine.catalog, self.config.k
        truth_pos = cat.indices(truth)
        out = {}
        for mode in self.config.modes:
            rec = self.engine.recommend(u, k, mode, exclude_items=exclude)
            top = [cat.index(r.item_id) for r in rec.items][:k]
            top = np.array([top + [-1] * (k - len(top))], dtype=np.int64)
            hits = hit_matrix(top, [truth_pos], len(cat))
            n = np.array([len(truth_pos)])
            out[f"NDCG@{k}:{mode}"] = float(ndcg_at_k(hits, n, k)[0])
            out[f"Recall@{k}:{mode}"] = float(recall_at_k(hits, n, k)[0])
        return out

    def _reactions(self, u: str, pset: PersonaSet, sim, pos: list[str], neg: list[str],
                   memo: dict[tuple[str, str, str], bool]) -> dict[str, float]:
        """Reaction prediction of ``pset`` on the items. ``memo`` holds the simulator's earlier
        answers for this user: the simulator reads only a persona's text and the item, so "numbers
        only" (the before texts) costs no new simulation (each is an LLM call with a model)."""
        cat, refiner = self.engine.catalog, self.runtime.refiner
        items = pos + neg
        if not items or not pset.personas:
            return {"ReactionAcc": float("nan"), "ReactionAUC": float("nan")}
        ps, _ = self.engine.recommender.persona_scores(u, pset)
        positions = cat.indices(items)
        resp = ps.responsible(positions)
        pred = np.zeros(len(items), dtype=bool)
        for r in np.unique(resp):
            p = pset.personas[int(r)]
            idx = [i for i in np.flatnonzero(resp == r) if (p.name, p.description, items[i]) not in memo]
            if idx:
                for i, v in zip(idx, sim.predict(p, [refiner.view(items[i]) for i in idx])):
                    memo[(p.name, p.description, items[i])] = bool(v)
            for i in np.flatnonzero(resp == r):
                pred[i] = memo[(p.name, p.description, items[i])]
        truth = np.array([True] * len(pos) + [False] * len(neg))
        recalls = [float((pred[truth] == truth[truth]).mean()) if truth.any() else np.nan,
                   float((pred[~truth] == truth[~truth]).mean()) if (~truth).any() else np.nan]
        pv = self.engine.embedder().embed([f"{p.name}. {p.description}" for p in pset.personas])
        sims = np.einsum("ij,ij->i", self.item_vectors[positions], pv[resp])
        return {"ReactionAcc": float(np.nanmean(recalls)), "ReactionAUC": _auc(sims[truth], sims[~truth])}

    def _measure(self, u: str, pset: PersonaSet, sim, plan: dict, exclude: list[str], ranking: bool,
                 memo: dict) -> dict:
        out = self._ranking(u, exclude, plan["remaining"]) if ranking else {}
        out.update(self._reactions(u, pset, sim, plan["eval_pos"], [i for i, _ in plan["eval_neg"]], memo))
        return out

    # ---- the run ---------------------------------------------------------------------------
    def run(self) -> dict:
        if self.work_dir is not None:
            return self._run(self.work_dir)
        with tempfile.TemporaryDirectory(prefix="plural-eval-refine-") as tmp:
            return self._run(Path(tmp))

    def _run(self, folder: Path) -> dict:
        from agent.refine import RefineConfig
        from agent.runtime import AgentConfig, AgentRuntime

        cfg = self.config
        t_all = time.perf_counter()
        timings: dict[str, float] = {}
        t = time.perf_counter()
        split = split_dataset(self.dataset, cfg.split)
        test_items = _items_by_user(split.test)
        users, n_eligible = self._select_users(split, test_items)
        timings["split"] = round(time.perf_counter() - t, 3)

        t = time.perf_counter()
        self.engine = build_train_engine(self.dataset, split, self.engine_config, folder)
        leak = check_no_leak(self.engine, test_items)
        self.item_vectors = np.load(self.engine.data_dir / "item_text.npy")
        self.catalog_ids = set(self.engine.catalog.item_ids)
        self.catalog_ids_list = list(self.engine.catalog.item_ids)
        self.runtime = AgentRuntime(self.engine, self.backend,
                                    AgentConfig(llm_prose="off", refine=RefineConfig(seed=cfg.seed)))
        timings["build_engine"] = round(time.perf_counter() - t, 3)

        ratings = self._ratings()
        rows = []
        tick = self._progress("Refining held-out users", len(users))
        t = time.perf_counter()
        try:
            for u in users:
                rows.append(self._user(u, test_items[u], ratings.get(u, {})))
                tick()
        finally:
            self.engine.close()
        timings["users"] = round(time.perf_counter() - t, 3)
        timings["per_user_mean"] = round(timings["users"] / max(1, len(users)), 3)
        timings["total"] = round(time.perf_counter() - t_all, 3)
        return self._document(rows, split, leak, n_eligible, timings)

    def _user(self, u: str, held_out: list[str], ratings: dict[str, float]) -> dict:
        cfg, rt = self.config, self.runtime
        t0 = time.perf_counter()
        plan = self._plan(u, held_out, ratings)
        described = None
        if self.backend is not None and cfg.describe_personas:
            described = rt.language.ensure_persona_text(u)
            if described:
                self._count(described.get("fallbacks"), described.get("llm_error"))
        store = self.engine.persona_store
        before = store.get(u) or PersonaSet(user_id=u, personas=[])
        revealed = [i for i, _, _ in plan["events"]]
        sim = rt.refiner.simulator()
        memo: dict[tuple[str, str, str], bool] = {}
        m_before = self._measure(u, before, sim, plan, revealed, ranking=True, memo=memo)

        events = []
        for item, reaction, source in plan["events"]:
            outcome, pending = rt.feedback(u, item, reaction)
            rt.commit(u, pending)
            r = outcome.refinement or {}
            guard = r.get("guard") or {}
            if r.get("loss_source") == "aligned":
                decision = "aligned"
            elif "new" in guard:
                decision = "accepted" if guard.get("accepted") else "rejected"
            elif outcome.persona_id is None:
                decision = "no_persona"
            else:
                decision = "no_valid_rewrite"
            self._count(r.get("fallbacks"), r.get("llm_error"))
            events.append({"item_id": item, "title": outcome.title, "reaction": reaction, "source": source,
                           "persona_id": outcome.persona_id, "decision": decision,
                           "guard": {k: guard[k] for k in ("old", "new", "simulator") if k in guard},
                           "text_changed": bool(r.get("text_changed")), "loss": r.get("loss"),
                           "loss_source": r.get("loss_source"), "rewrite_source": r.get("rewrite_source"),
                           "proposed": r.get("proposed")})

        after = store.get(u) or before
        old_text = {p.persona_id: (p.name, p.description) for p in before.personas}
        numbers_only = after.model_copy(update={"personas": [
            p.model_copy(update={"name": old_text[p.persona_id][0], "description": old_text[p.persona_id][1]})
            if p.persona_id in old_text else p for p in after.personas]})
        m_after = self._measure(u, after, sim, plan, revealed, ranking=True, memo=memo)
        m_numbers = self._measure(u, numbers_only, sim, plan, revealed, ranking=False, memo=memo)
        if hasattr(sim, "fallbacks"):  # the LLM simulator's counts over the measurements
            self._count(sim.fallbacks.as_dict(), getattr(sim, "llm_error", None))
        changed = [{"persona_id": p.persona_id, "before": {"name": old_text[p.persona_id][0],
                                                           "description": old_text[p.persona_id][1]},
                    "after": {"name": p.name, "description": p.description}}
                   for p in after.personas if p.persona_id in old_text and
                   (p.name, p.description) != old_text[p.persona_id]]
        return {"user_id": u, "held_out": len(held_out), "remaining": len(plan["remaining"]),
                "reaction_items": {"positives": len(plan["eval_pos"]), "negatives": len(plan["eval_neg"]),
                                   "negative_sources": _count_sources(plan["eval_neg"])},
                "personas": len(before.personas), "events": events,
                "metrics": {"before": _round(m_before), "after": _round(m_after),
                            "numbers_only": _round(m_numbers)},
                "text_changes": changed, "seconds": round(time.perf_counter() - t0, 3)}

    def _count(self, fallbacks: dict | None, error: str | None) -> None:
        if fallbacks:
            self.counter = self.counter.merge(FallbackCounter.model_validate(
                {k: v for k, v in fallbacks.items() if k != "fallback_rate"}))
        if error:
            self.errors.append(error)

    # ---- the document ----------------------------------------------------------------------
    def _document(self, rows: list[dict], split: Split, leak: dict, n_eligible: int, timings: dict) -> dict:
        cfg = self.config
        names = list(rows[0]["metrics"]["before"]) if rows else []
        metrics = {}
        for name in names:
            b = np.array([r["metrics"]["before"][name] for r in rows], dtype=np.float64)
            a = np.array([r["metrics"]["after"][name] for r in rows], dtype=np.float64)
            pc = paired_comparison(a, b, n_resamples=cfg.bootstrap, seed=cfg.seed)
            entry = {"before": _num(np.nanmean(b)), "after": _num(np.nanmean(a)),
                     "difference": _num(pc.difference), "ci95": [_num(pc.ci_low), _num(pc.ci_high)],
                     "p_value": _num(pc.p_value), "n": pc.n}
            if name in rows[0]["metrics"]["numbers_only"]:
                o = np.array([r["metrics"]["numbers_only"][name] for r in rows], dtype=np.float64)
                tc = paired_comparison(a, o, n_resamples=cfg.bootstrap, seed=cfg.seed)
                entry["numbers_only"] = _num(np.nanmean(o))
                entry["text_effect"] = {"difference": _num(tc.difference), "ci95": [_num(tc.ci_low), _num(tc.ci_high)],
                                        "p_value": _num(tc.p_value), "n": tc.n}
            metrics[name] = entry
        events = [e for r in rows for e in r["events"]]
        decisions = {d: sum(e["decision"] == d for e in events)
                     for d in ("aligned", "accepted", "rejected", "no_valid_rewrite", "no_persona")}
        proposals = decisions["accepted"] + decisions["rejected"]
        guard = {"events": len(events), **decisions,
                 "accept_rate": _num(decisions["accepted"] / proposals) if proposals else None,
                 "by_reaction": {r: {d: sum(e["decision"] == d and e["reaction"] == r for e in events)
                                     for d in decisions} for r in ("like", "dislike")},
                 "simulator": self.runtime.refiner.simulator().name}
        ds = self.dataset.describe()
        neg_sources = {"revealed": _count_sources([(e["item_id"], e["source"]) for e in events
                                                   if e["reaction"] == "dislike"]),
                       "measured": {k: sum(r["reaction_items"]["negative_sources"].get(k, 0) for r in rows)
                                    for k in ("low_rated", "sampled_unseen")}}
        from evals.harness import _versions

        return {
            "schema_version": SCHEMA_VERSION,
            "kind": "refine",
            "dataset": {"name": ds["name"], "items": ds["items"], "users": ds["users"],
                        "eligible_users": n_eligible, "evaluated_users": len(rows),
                        "held_out_positives": len(split.test)},
            "config": cfg.model_dump(mode="json"),
            "engine": {"embedder": self.engine_config.embedder, "scorer": self.engine_config.scorer,
                       "config_key": self.engine_config.cache_key()},
            "llm": {"backend": self.backend.name if self.backend else "none",
                    "model": self.backend.model_name if self.backend else None},
            "leak_check": leak,
            "metrics": metrics,
            "guard": guard,
            "text_changes": {"events_with_text_change": sum(e["text_changed"] for e in events),
                             "personas_changed": sum(len(r["text_changes"]) for r in rows),
                             "personas": sum(r["personas"] for r in rows)},
            "negatives": neg_sources,
            "fallbacks": self.counter.as_dict(),
            "llm_error": self.errors[0] if self.errors else None,
            "versions": _versions(),
            "users": rows,
            "timings_s": timings,
        }


def _count_sources(pairs: Sequence[tuple[str, str]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for _, src in pairs:
        out[src] = out.get(src, 0) + 1
    return out


def _round(d: dict[str, float]) -> dict[str, float | None]:
    return {k: _num(v) for k, v in d.items()}


def run_refine_eval(dataset: Dataset, config: RefineEvalConfig | None = None, engine_config=None,
                    backend: LLMBackend | None = None, work_dir: str | Path | None = None, progress=None) -> dict:
    """Run :class:`RefineEvaluation`; returns the result document."""
    return RefineEvaluation(dataset, config, engine_config, backend, work_dir, progress).run()


# ---- reports ----------------------------------------------------------------------------------
def markdown_refine_report(doc: dict) -> str:
    """The run as Markdown: protocol line, before/after table, the guard, fallbacks, examples."""
    cfg, ds, g = doc["config"], doc["dataset"], doc["guard"]
    llm = doc["llm"]
    out = [f"# Test-time persona refinement: {ds['name']}", "",
           (f"{ds['evaluated_users']} held-out users (of {ds['eligible_users']} eligible), split seed "
            f"{cfg['seed']}; engine built on the training rows only ({doc['leak_check']['held_out_pairs_checked']} "
            f"held-out pairs checked, {doc['leak_check']['in_engine_history']} in the engine). Per user "
            f"{cfg['reveal']} held-out positives revealed as likes and {cfg['reveal_negatives']} negatives as "
            f"dislikes, each through the agent's feedback path (numeric update, textual gradient, drift guard); "
            f"measured on the remaining items. LLM: `{llm['backend']}` ({llm['model']}); simulator: "
            f"`{g['simulator']}`. Run time {doc['timings_s']['total']:.1f} s "
            f"({doc['timings_s']['per_user_mean']:.2f} s per user)."), "",
           ("| metric | before | numbers only | after | after − before [95% CI] | p | after − numbers only "
            "[95% CI] | users |"), "|---|---|---|---|---|---|---|---|"]
    for name, m in doc["metrics"].items():
        te = m.get("text_effect")
        te_s = (f"{_fmt(te['difference'], sign=True)} [{_fmt(te['ci95'][0], sign=True)}, "
                f"{_fmt(te['ci95'][1], sign=True)}]") if te else "– (ranking reads no text)"
        out.append(f"| {name} | {_fmt(m['before'])} | {_fmt(m.get('numbers_only'))} | {_fmt(m['after'])} | "
                   f"{_fmt(m['difference'], sign=True)} [{_fmt(m['ci95'][0], sign=True)}, "
                   f"{_fmt(m['ci95'][1], sign=True)}] | {_fmt(m['p_value'], 3)} | {te_s} | {m['n']} |")
    out += ["", ("ReactionAcc: balanced accuracy of the responsible persona's simulated reactions on remaining "
                 "held-out positives and held-back negatives; ReactionAUC: how often a positive's text is closer "
                 "to its persona's text than a negative's. \"Numbers only\": the refined evidence and weights with "
                 "the old texts, so \"after − numbers only\" is the textual rewrite's own effect. Intervals: "
                 "bootstrap over users (paired); p: Wilcoxon signed-rank."), "",
            "## Drift guard", "",
            (f"{g['events']} feedback events: {g['aligned']} already predicted by the persona (no rewrite), "
             f"{g['accepted'] + g['rejected']} rewrites judged by the guard: **{g['accepted']} accepted, "
             f"{g['rejected']} rejected** (accept rate {_fmt(g['accept_rate'], 3)}), {g['no_valid_rewrite']} "
             f"without a valid rewrite. Likes: {g['by_reaction']['like']}; dislikes: "
             f"{g['by_reaction']['dislike']}."), "",
            (f"Persona texts changed: {doc['text_changes']['personas_changed']} of "
             f"{doc['text_changes']['personas']} personas ({doc['text_changes']['events_with_text_change']} "
             f"accepted text changes). Negatives: revealed {doc['negatives']['revealed']}, measured "
             f"{doc['negatives']['measured']}."), "",
            "## LLM outputs", ""]
    f = doc["fallbacks"]
    out.append(f"{f['total']} results: {f['llm']} from the LLM, {f['llm_retry']} after a retry, {f['template']} "
               f"templates ({100 * f['fallback_rate']:.0f}%); reasons {f['fallbacks'] or '–'}; rejected answers "
               f"{f['rejections'] or '–'}." + (f" LLM error: `{doc['llm_error']}`." if doc.get("llm_error") else ""))
    examples = [(r["user_id"], c) for r in doc["users"] for c in r["text_changes"]][:5]
    if examples:
        out += ["", "## Examples of accepted rewrites", ""]
        for u, c in examples:
            out.append(f"- user {u} {c['persona_id']}: **{c['before']['name']}** — {c['before']['description']}  \n"
                       f"  → **{c['after']['name']}** — {c['after']['description']}")
    out += ["", "## Timings (s)", "", ", ".join(f"{k} {v}" for k, v in doc["timings_s"].items()), ""]
    return "\n".join(out)


def write_refine_reports(doc: dict, out_dir: str | Path) -> dict[str, str]:
    """Write ``results.json`` and ``results.md``; returns their paths."""
    from evals.report import write_json_and_markdown  # noqa: PLC0415

    return {k: str(v) for k, v in write_json_and_markdown(doc, out_dir, markdown_refine_report(doc)).items()}
