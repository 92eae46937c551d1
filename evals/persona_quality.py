"""``plural eval personas``: are the personas distinct, stable across runs, and do they cover
the user's history? (DESIGN.md section 3, persona quality.)

* Separation: mean pairwise cosine distance between a user's persona embeddings (users with at
  least two personas).
* Stability: induction is rerun with other seeds. Personas of a rerun are matched to the
  reference run's by the Hungarian method on cosine similarity; the variance across runs is
  the mean squared distance of matched persona embeddings to their mean over runs, the variance
  across personas the mean squared distance of a run's persona embeddings to their centroid.
  Their ratio must be well below 1. Also reported: how often the number of personas is the
  same, and the adjusted Rand index of item assignments between runs.
* Coverage: a history item is explained when its responsible persona (the largest
  contribution to the item's own score) holds at least ``threshold`` of the attention; coverage
  is the share of a user's history items that are explained.
"""

from __future__ import annotations

import time
from math import comb

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy.optimize import linear_sum_assignment

from personas.attention import AttentionConfig, PersonaScores
from personas.induction import PersonaInducer
from personas.model import PersonaSet


class PersonaEvalConfig(BaseModel):
    """Settings of ``plural eval personas``."""

    model_config = ConfigDict(extra="forbid")

    seeds: list[int] = Field(default_factory=lambda: [1, 2, 3])
    """Induction reruns compared with the stored personas (seed of the engine's config)."""
    coverage_threshold: float = Field(0.5, gt=0, le=1)
    """Attention share the responsible persona needs for a history item to count as explained."""
    max_users: int | None = Field(None, gt=0)
    """Evaluate only the first N users (None: all)."""


def adjusted_rand_index(a, b) -> float:
    """ARI of two labelings of the same items."""
    a, b = np.asarray(a), np.asarray(b)
    _, a = np.unique(a, return_inverse=True)
    _, b = np.unique(b, return_inverse=True)
    ct = np.zeros((a.max() + 1, b.max() + 1), dtype=np.int64)
    np.add.at(ct, (a, b), 1)
    sc = sum(comb(int(x), 2) for x in ct.ravel())
    sa = sum(comb(int(x), 2) for x in ct.sum(1))
    sb = sum(comb(int(x), 2) for x in ct.sum(0))
    n = comb(len(a), 2)
    expected = sa * sb / n if n else 0.0
    mx = (sa + sb) / 2
    return 1.0 if mx == expected else (sc - expected) / (mx - expected)


def _vectors(pset: PersonaSet) -> np.ndarray:
    return np.array([p.embedding for p in pset.personas], dtype=np.float64)


def separation(pset: PersonaSet) -> float | None:
    """Mean pairwise cosine distance of the persona embeddings (None below two personas)."""
    V = _vectors(pset)
    if len(V) < 2:
        return None
    V = V / np.linalg.norm(V, axis=1, keepdims=True)
    S = V @ V.T
    iu = np.triu_indices(len(V), 1)
    return float((1.0 - S[iu]).mean())


def stability_terms(ref: PersonaSet, reruns: list[PersonaSet]) -> tuple[float, float] | None:
    """(variance across runs, variance across personas) for one user; None below two personas."""
    R = _vectors(ref)
    if len(R) < 2:
        return None
    across_personas = float(((R - R.mean(0)) ** 2).sum(1).mean())
    matched = [R]
    for other in reruns:
        O = _vectors(other)
        if len(O) == 0:
            continue
        sim = R @ O.T
        rows, cols = linear_sum_assignment(-sim)
        M = R.copy()  # an unmatched persona (fewer personas in the rerun) counts as unchanged
        M[rows] = O[cols]
        matched.append(M)
    stack = np.stack(matched)  # (runs, personas, dim)
    across_runs = float(((stack - stack.mean(0)) ** 2).sum(2).mean())
    return across_runs, across_personas


def coverage(ps: PersonaScores, history: np.ndarray, threshold: float) -> float | None:
    """Share of history items whose responsible persona holds >= threshold of the attention."""
    if len(history) == 0 or len(ps.persona_ids) == 0:
        return None
    att = ps.attention(history, AttentionConfig())
    return float((att.max(axis=1) >= threshold).mean())


def run_persona_eval(engine, config: PersonaEvalConfig | None = None, progress=None) -> dict:
    """Persona quality over the engine's users; returns the result document."""
    cfg = config or PersonaEvalConfig()
    t0 = time.perf_counter()
    tick = (progress or (lambda d, n: (lambda k=1: None)))("Persona quality", 0)
    space = np.load(engine.data_dir / "item_space.npy")
    text = np.load(engine.data_dir / "item_text.npy")
    base_cfg = engine.config.induction
    inducers = [PersonaInducer(engine.catalog, space, text, base_cfg.model_copy(update={"seed": s}))
                for s in cfg.seeds]
    users = engine.history.user_ids[: cfg.max_users] if cfg.max_users else engine.history.user_ids
    tick = (progress or (lambda d, n: (lambda k=1: None)))("Persona quality", len(users))
    seps, runs_var, pers_var, ratios, same_k, aris, covs, counts = [], [], [], [], [], [], [], []
    for u in users:
        ref = engine.recommender.persona_set(u)
        tick()
        if not ref.personas:
            continue
        counts.append(len(ref.personas))
        pos = engine.history.positives(u)
        reruns = [ind.induce(u, pos) for ind in inducers]
        s = separation(ref)
        if s is not None:
            seps.append(s)
        st = stability_terms(ref, reruns)
        if st is not None:
            runs_var.append(st[0])
            pers_var.append(st[1])
            if st[1] > 0:
                ratios.append(st[0] / st[1])
        same_k.append(np.mean([len(r.personas) == len(ref.personas) for r in reruns]))
        lab_ref = {iid: k for k, p in enumerate(ref.personas) for iid in p.evidence}
        for r in reruns:
            lab = {iid: k for k, p in enumerate(r.personas) for iid in p.evidence}
            items = sorted(lab_ref)
            if len(items) >= 2 and len(ref.personas) >= 2:
                aris.append(adjusted_rand_index([lab_ref[i] for i in items], [lab.get(i, -1) for i in items]))
        ps, _ = engine.recommender.persona_scores(u, ref)
        c = coverage(ps, pos, cfg.coverage_threshold)
        if c is not None:
            covs.append(c)

    def stats(xs):
        xs = np.asarray(xs, dtype=np.float64)
        if len(xs) == 0:
            return None
        return {"mean": round(float(xs.mean()), 4), "median": round(float(np.median(xs)), 4),
                "p10": round(float(np.percentile(xs, 10)), 4), "p90": round(float(np.percentile(xs, 90)), 4),
                "users": int(len(xs))}

    doc = {
        "schema_version": 1,
        "dataset": engine.manifest["dataset"]["name"],
        "config": cfg.model_dump(), "induction": base_cfg.model_dump(),
        "users": len(users), "users_with_personas": len(counts),
        "personas_per_user": {str(k): int(v) for k, v in zip(*np.unique(counts, return_counts=True))},
        "separation": stats(seps),
        "stability": {"variance_across_runs": stats(runs_var), "variance_across_personas": stats(pers_var),
                      "ratio_runs_to_personas": stats(ratios),
                      "pooled_ratio": round(float(np.sum(runs_var) / np.sum(pers_var)), 4) if pers_var else None,
                      "same_number_of_personas": stats(same_k), "assignment_ari": stats(aris)},
        "coverage": {**(stats(covs) or {}), "threshold": cfg.coverage_threshold},
        "timings_s": {"total": round(time.perf_counter() - t0, 3)},
    }
    return doc


def markdown_persona_report(doc: dict) -> str:
    st = doc["stability"]

    def f(d, key="mean"):
        return "–" if not d else f"{d[key]:.3f}"

    lines = [f"# Persona quality: {doc['dataset']}", "",
             f"{doc['users_with_personas']} users with personas; personas per user: {doc['personas_per_user']}; "
             f"reruns with seeds {doc['config']['seeds']}; induction space `{doc['induction']['space']}`.", "",
             "| measure | mean | median | p10 | p90 |", "|---|---|---|---|---|"]
    rows = [("separation (mean pairwise cosine distance)", doc["separation"]),
            ("variance across runs", st["variance_across_runs"]),
            ("variance across personas", st["variance_across_personas"]),
            ("ratio runs / personas (per user)", st["ratio_runs_to_personas"]),
            ("same number of personas across runs", st["same_number_of_personas"]),
            ("item-assignment ARI between runs", st["assignment_ari"]),
            (f"coverage (attention >= {doc['coverage']['threshold']})", doc["coverage"] if doc["coverage"].get("mean")
             is not None else None)]
    for name, d in rows:
        lines.append(f"| {name} | {f(d)} | {f(d, 'median')} | {f(d, 'p10')} | {f(d, 'p90')} |")
    lines += ["", f"Pooled variance ratio (runs / personas): **{st['pooled_ratio']}** — stable personas need a value "
                  f"well below 1.", ""]
    return "\n".join(lines)
