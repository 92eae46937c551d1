"""Persona induction: cluster a user's positive items, choose how many personas, name them.

Criterion for the number of personas (stated, tested): for each ``K`` in ``2..max_personas``
run spherical k-means (FAISS) in the configured item space; a ``K`` is admissible when every
cluster holds at least ``min_support`` items; pick the admissible ``K`` with the highest mean
silhouette (cosine distance); keep a single persona when no admissible ``K`` reaches
``min_silhouette`` or the user has fewer than ``2 * min_support`` positives.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from memory.catalog import Catalog
from personas.model import Persona, PersonaSet, utcnow
from personas.naming import PersonaDraft, PersonaWriter, TemplatePersonaWriter
from personas.spaces import SPACES, l2_normalize


class InductionConfig(BaseModel):
    """Settings of persona induction."""

    model_config = ConfigDict(extra="forbid")

    space: str = Field("both", pattern="^(" + "|".join(SPACES) + ")$")
    """Item space to cluster in: collaborative, text, categories or both."""
    max_personas: int = Field(5, ge=1, le=16)
    """P_max: the most personas a user can have."""
    min_support: int = Field(4, ge=1)
    """Fewest positive items a persona must rest on."""
    min_silhouette: float = Field(0.02, ge=-1, le=1)
    """Below this mean silhouette, splitting is not worth it: one persona."""
    niter: int = Field(25, ge=1)
    """k-means iterations."""
    nredo: int = Field(5, ge=1)
    """k-means restarts (the best objective is kept)."""
    seed: int = 0
    """Seed of the k-means initialisation: same seed, same personas."""


def silhouette_cosine(V: np.ndarray, labels: np.ndarray, k: int, D: np.ndarray | None = None) -> float:
    """Mean silhouette with cosine distance for unit rows ``V`` (points in singleton clusters score 0).

    ``D`` (the cosine distance matrix) can be passed in when several labelings are scored.
    """
    n = len(V)
    if D is None:
        D = 1.0 - V @ V.T
    onehot = np.zeros((n, k), dtype=D.dtype)
    onehot[np.arange(n), labels] = 1.0
    sums = D @ onehot  # (n, k) total distance to each cluster
    counts = onehot.sum(0)
    own = counts[labels]
    a = sums[np.arange(n), labels] / np.maximum(own - 1, 1)
    other = sums / np.where(counts > 0, counts, np.inf)
    other[np.arange(n), labels] = np.inf
    b = other.min(axis=1)
    s = (b - a) / np.maximum(np.maximum(a, b), 1e-12)
    s[own <= 1] = 0.0
    return float(s.mean())


def _kmeans(V: np.ndarray, k: int, cfg: InductionConfig) -> tuple[np.ndarray, np.ndarray]:
    from memory.faiss_runtime import load_faiss

    faiss = load_faiss()

    km = faiss.Kmeans(V.shape[1], k, niter=cfg.niter, nredo=cfg.nredo, seed=cfg.seed, spherical=True,
                      verbose=False, min_points_per_centroid=1, max_points_per_centroid=100000)
    km.train(np.ascontiguousarray(V, dtype=np.float32))
    _, lab = km.index.search(np.ascontiguousarray(V, dtype=np.float32), 1)
    return lab.ravel().astype(np.int64), km.centroids


def choose_clusters(V: np.ndarray, cfg: InductionConfig) -> tuple[np.ndarray, dict]:
    """Cluster labels (0..K-1, largest cluster first) for unit rows ``V`` and the criterion trace."""
    n = len(V)
    trace: dict = {"n_items": n, "silhouette": {}}
    best_k, best_s, best_lab = 1, -np.inf, np.zeros(n, dtype=np.int64)
    kmax = min(cfg.max_personas, n // cfg.min_support)
    D = (1.0 - V @ V.T).astype(np.float32) if kmax >= 2 else None
    for k in range(2, kmax + 1):
        lab, _ = _kmeans(V, k, cfg)
        sizes = np.bincount(lab, minlength=k)
        if sizes.min() < cfg.min_support:
            trace["silhouette"][k] = None  # inadmissible: a cluster below min_support
            continue
        s = silhouette_cosine(V, lab, k, D)
        trace["silhouette"][k] = round(s, 4)
        if s > best_s:
            best_k, best_s, best_lab = k, s, lab
    if best_k > 1 and best_s < cfg.min_silhouette:
        best_k, best_lab = 1, np.zeros(n, dtype=np.int64)
    # relabel: largest cluster first, ties by smallest member index (deterministic ids)
    sizes = np.bincount(best_lab, minlength=best_k)
    first = np.array([np.flatnonzero(best_lab == c)[0] for c in range(best_k)])
    order = sorted(range(best_k), key=lambda c: (-sizes[c], first[c]))
    remap = np.empty(best_k, dtype=np.int64)
    remap[order] = np.arange(best_k)
    trace["k"] = best_k
    return remap[best_lab], trace


class PersonaInducer:
    """Induces a :class:`PersonaSet` per user from their positive items.

    Example:
        >>> inducer = PersonaInducer(catalog, item_space, text_vectors)            # doctest: +SKIP
        >>> pset = inducer.induce("42", positive_positions)                       # doctest: +SKIP
        >>> [p.name for p in pset.personas]                                       # doctest: +SKIP
        ['Drama & Romance', 'Sci-Fi & Action']
    """

    def __init__(self, catalog: Catalog, item_space: np.ndarray, text_vectors: np.ndarray | None = None,
                 config: InductionConfig | None = None, writer: PersonaWriter | None = None):
        self.catalog = catalog
        self.space = l2_normalize(item_space)
        self.text_vectors = None if text_vectors is None else l2_normalize(text_vectors)
        self.config = config or InductionConfig()
        self.writer = writer or TemplatePersonaWriter()
        self._cat = catalog.category_distribution()

    def cluster(self, positives: Sequence[int]) -> tuple[list[np.ndarray], dict]:
        """Groups of item positions (one per persona, most representative first) and the trace."""
        pos = np.asarray(positives, dtype=np.int64)
        if len(pos) == 0:
            return [], {"n_items": 0, "k": 0, "silhouette": {}}
        V = self.space[pos]
        labels, trace = choose_clusters(V, self.config)
        groups = []
        for c in range(trace["k"]):
            members = pos[labels == c]
            centroid = l2_normalize(self.space[members].mean(0, keepdims=True))[0]
            sim = self.space[members] @ centroid
            groups.append(members[np.lexsort((members, -sim))])
        return groups, trace

    def drafts(self, groups: Sequence[np.ndarray]) -> list[PersonaDraft]:
        n_total = sum(len(g) for g in groups)
        all_items = np.concatenate(groups) if groups else np.zeros(0, np.int64)
        user_share = self._cat[all_items].mean(0) if len(all_items) else np.zeros(len(self.catalog.categories))
        drafts = []
        for k, g in enumerate(groups):
            share = self._cat[g].mean(0)
            tot = share.sum()
            shares = {c: float(s / tot) for c, s in zip(self.catalog.categories, share) if s > 0} if tot else {}
            lift = {c: float(share[i] / user_share[i]) for i, c in enumerate(self.catalog.categories)
                    if share[i] > 0 and user_share[i] > 0}
            drafts.append(PersonaDraft(persona_id=f"p{k + 1}", titles=self.catalog.titles(g[:10]),
                                       category_shares=shares, lift=lift, weight=len(g) / max(n_total, 1),
                                       n_items=len(g)))
        return drafts

    def induce(self, user_id: str, positives: Sequence[int]) -> PersonaSet:
        """The user's personas (an empty set for a user without positives)."""
        groups, trace = self.cluster(positives)
        drafts = self.drafts(groups)
        texts = self.writer.write(user_id, drafts) if drafts else []
        now = utcnow()
        personas = []
        for d, g, (name, desc) in zip(drafts, groups, texts):
            emb: list[float] = []
            if self.text_vectors is not None:
                emb = l2_normalize(self.text_vectors[g].mean(0, keepdims=True))[0].tolist()
            top = dict(sorted(d.category_shares.items(), key=lambda kv: -kv[1])[:5])
            personas.append(Persona(
                persona_id=d.persona_id, user_id=user_id, name=name, description=desc, embedding=emb,
                weight=round(d.weight, 6), evidence=[self.catalog.item(int(i)).item_id for i in g],
                categories={c: round(v, 4) for c, v in top.items()}, created_at=now, updated_at=now))
        if personas:  # weights rounded above: renormalise the last so they sum to exactly 1
            rest = sum(p.weight for p in personas[:-1])
            personas[-1].weight = max(0.0, round(1.0 - rest, 6))
        return PersonaSet(user_id=user_id, personas=personas,
                          induction={**self.config.model_dump(), "trace": trace})
