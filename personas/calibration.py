"""Calibrated greedy re-ranking (Steck, RecSys 2018), extended with personas and exposure.

From a base scorer's top-N candidates, the list is built greedily; each step adds the item that
maximises the list objective

    (1 - lam) * sum_{i in L} rel(i)  -  lam * KL(p(g|u) || q~(g|L))
                                      -  mu  * KL(w(u)   || q~(persona|L))
                                      +  beta * sum_{i in L} novelty(i)

``q~ = (1 - alpha) q + alpha p`` (alpha = 0.01, Steck's smoothing). ``rel`` is ``rank``
(``1/log2(base_rank + 2)``, scale-free) or ``minmax`` (base scores min-max normalised over the
user's candidates, as in Steck's paper). The persona term counts each item for its responsible
persona and compares the list's persona mix with the persona weights ``w(u)``. The exposure
term rewards items shown to no one (or few users) so far; exposure is counted as lists are
produced and updated after every ``exposure_chunk`` users (``1``: after every user, as the
product counts what it shows). With ``mu = beta = 0`` this is exactly Steck's
re-ranker. ``resort`` re-orders the chosen set by base rank: calibration and coverage depend on
the set only, accuracy-at-rank improves.

The greedy step is vectorised over users and candidates: the list's genre (and persona) sums
are kept incrementally, so a step costs O(users x N x genres) array work.

Example:
    >>> import numpy as np
    >>> C = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # p(g|i) for 3 items, 2 genres
    >>> cand, scores = np.array([[0, 1, 2]]), np.array([[3.0, 2.0, 1.0]])
    >>> p = np.array([[0.5, 0.5]])                           # the user likes both genres equally
    >>> calibrated_rerank(cand, scores, p, C, CalibrationConfig(k=2, lam=0.0))
    array([[0, 1]])
    >>> calibrated_rerank(cand, scores, p, C, CalibrationConfig(k=2, lam=0.5))
    array([[0, 2]])
"""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

STECK_ALPHA = 0.01
SEQUENTIAL_BLOCK = 16
"""Users ranked together, then checked one by one, with ``exposure_chunk = 1``."""


class CalibrationConfig(BaseModel):
    """Settings of the calibrated greedy re-ranker."""

    model_config = ConfigDict(extra="forbid")

    lam: float = Field(0.25, ge=0, le=1)
    """Genre trade-off lambda: 0 keeps the base order, 1 optimises genre calibration alone."""
    mu: float = Field(0.0, ge=0)
    """Weight of persona miscalibration (the list's persona mix against the persona weights)."""
    beta: float = Field(0.0, ge=0)
    """Weight of the exposure bonus for items shown to few users so far (see ``novelty``)."""
    novelty: Literal["unseen", "inverse"] = "unseen"
    """Exposure bonus shape: ``unseen`` = 1 for items no one was shown yet, else 0;
    ``inverse`` = ``1 / (1 + exposure)``."""
    k: int = Field(10, gt=0)
    """Length of the re-ranked list."""
    n_candidates: int = Field(100, gt=0)
    """The base scorer's top-N unseen items the list is chosen from."""
    relevance: Literal["rank", "minmax"] = "rank"
    """``rank``: ``1/log2(base_rank+2)`` per chosen item; ``minmax``: the base score min-max
    normalised over the user's candidates (all 0 when every candidate scores the same)."""
    gamma: float = Field(0.0, ge=0, le=1)
    """Intent-aware share of relevance: ``(1-gamma) rel + gamma / log2(persona_rank + 2)``, where
    ``persona_rank`` is the candidate's rank in its responsible persona's own contribution
    ranking (so a minority persona's best items count as highly relevant)."""
    resort: bool = False
    """Re-order the chosen items by base rank."""
    alpha: float = Field(STECK_ALPHA, gt=0, le=1)
    """Smoothing of the list distribution toward the user's, ``q~ = (1-alpha) q + alpha p``."""
    chunk: int = Field(2048, gt=0)
    """Users re-ranked together (bounds memory at ``chunk * N * genres`` floats)."""
    exposure_chunk: int = Field(32, gt=0)
    """With ``beta > 0``: users re-ranked between two exposure updates. ``1`` is the product's
    semantics (every list counted before the next user is ranked), computed exactly but in
    batches (see ``calibrated_rerank``)."""

    def label(self) -> str:
        """A short name for reports, e.g. ``rank lam=0.3 mu=0.1 beta=0.05 resort``."""
        parts = [self.relevance, f"lam={self.lam:g}"]
        if self.gamma:
            parts.append(f"gamma={self.gamma:g}")
        if self.mu:
            parts.append(f"mu={self.mu:g}")
        if self.beta:
            parts.append(f"beta={self.beta:g}" + ("" if self.novelty == "unseen" else "/inv"))
        if self.resort:
            parts.append("resort")
        return " ".join(parts)


def relevance_gains(candidates: np.ndarray, scores: np.ndarray, kind: str) -> np.ndarray:
    """(users, N) relevance of each candidate (0 for padding)."""
    valid = candidates >= 0
    if kind == "rank":
        rel = np.broadcast_to(1.0 / np.log2(np.arange(candidates.shape[1]) + 2.0), candidates.shape)
        return np.where(valid, rel, 0.0)
    s = np.where(valid, scores, np.nan).astype(np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows (no candidates) are handled below
        lo = np.nanmin(s, axis=1, keepdims=True)
        hi = np.nanmax(s, axis=1, keepdims=True)
    span = hi - lo
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.where(span > 0, (s - lo) / np.where(span > 0, span, 1.0), 0.0)
    return np.where(valid, rel, 0.0)


def calibrated_rerank(candidates: np.ndarray, scores: np.ndarray, profiles: np.ndarray,
                      category_dist: np.ndarray, config: CalibrationConfig | None = None, *,
                      cand_persona: np.ndarray | None = None, persona_weights: np.ndarray | None = None,
                      exposure: np.ndarray | None = None, cand_persona_rank: np.ndarray | None = None,
                      ) -> np.ndarray:
    """Choose ``config.k`` items per user from ``candidates`` by the greedy objective above.

    Args:
        candidates: ``(users, N)`` item positions in base order (best first), ``-1`` for none.
        scores: ``(users, N)`` base scores of the candidates (read by ``minmax`` relevance only).
        profiles: ``(users, genres)`` the users' ``p(g|u)``.
        category_dist: ``(n_items, genres)`` ``p(g|i)``.
        cand_persona: ``(users, N)`` responsible persona index of each candidate (for ``mu``).
        persona_weights: ``(users, P)`` persona weights, zero-padded (for ``mu``).
        exposure: ``(n_items,)`` how often each item was already recommended (for ``beta``);
            incremented in place with the chosen lists.
        cand_persona_rank: ``(users, N)`` 0-based rank of each candidate in its responsible
            persona's contribution ranking (for ``gamma``).

    Returns:
        ``(users, k)`` chosen item positions (in pick order, or base order with ``resort``);
        ``-1`` pads users with fewer than ``k`` candidates. With ``lam = mu = beta = 0`` this is
        the base order. A user with an all-zero profile keeps the base order.
    """
    c = config or CalibrationConfig()
    candidates = np.asarray(candidates, dtype=np.int64)
    n_users, n_cand = candidates.shape
    C = np.asarray(category_dist, dtype=np.float32)
    P = np.asarray(profiles, dtype=np.float32)
    if P.shape != (n_users, C.shape[1]):
        raise ValueError(f"profiles must be ({n_users}, {C.shape[1]}), got {P.shape}")
    use_persona = c.mu > 0
    if use_persona and (cand_persona is None or persona_weights is None):
        raise ValueError("mu > 0 needs cand_persona and persona_weights")
    use_exposure = c.beta > 0
    if use_exposure and exposure is None:
        raise ValueError("beta > 0 needs the exposure counts")
    W = np.asarray(persona_weights, dtype=np.float32) if use_persona else None
    rel_all = relevance_gains(candidates, np.asarray(scores), c.relevance)
    if c.gamma > 0:
        if cand_persona_rank is None:
            raise ValueError("gamma > 0 needs cand_persona_rank")
        persona_gain = np.where(candidates >= 0, 1.0 / np.log2(np.asarray(cand_persona_rank, np.float64) + 2.0), 0.0)
        rel_all = (1.0 - c.gamma) * rel_all + c.gamma * persona_gain
    rel_all = rel_all.astype(np.float32)
    k = min(c.k, n_cand)
    out = np.full((n_users, c.k), -1, np.int64)

    def novelty_of(e: np.ndarray) -> np.ndarray:
        return (e == 0) if c.novelty == "unseen" else 1.0 / (1.0 + e)

    def block(sl: slice, novelty: np.ndarray | None) -> np.ndarray:
        """The chosen items of the users ``sl``, ``novelty`` (their candidates') held fixed."""
        cand = candidates[sl]
        b = cand.shape[0]
        rows = np.arange(b)
        p = P[sl]
        valid = cand >= 0
        cat = C[np.maximum(cand, 0)] * valid[..., None]  # (b, N, G)
        base = (1.0 - c.lam) * rel_all[sl]
        if novelty is not None:
            base = base + (c.beta * valid * novelty).astype(np.float32)
        # log(q~) is only needed where p > 0 (the KL's other terms are 0); adding 1 where p == 0
        # keeps the log finite there without a mask in the inner loop
        p_zero = (p == 0)[:, None, :].astype(np.float32)
        ap = (c.alpha * p)[:, None, :]
        if use_persona:
            w = W[sl]
            n_p = w.shape[1]
            onehot = np.zeros((b, n_cand, n_p), np.float32)
            cp = np.asarray(cand_persona[sl], dtype=np.int64)
            ok_p = valid & (cp >= 0) & (cp < n_p)
            onehot[rows[:, None].repeat(n_cand, 1)[ok_p], np.nonzero(ok_p)[1], cp[ok_p]] = 1.0
            w_zero = (w == 0)[:, None, :].astype(np.float32)
            aw = (c.alpha * w)[:, None, :]
            persona_sum = np.zeros((b, n_p), np.float32)
        taken = ~valid
        list_sum = np.zeros((b, C.shape[1]), np.float32)
        picks = np.full((b, k), -1, np.int64)
        for step in range(k):
            obj = base.copy()
            if c.lam > 0:
                q = (list_sum[:, None, :] + cat) / (step + 1.0)
                # -C_KL up to the constant sum_g p log p: the argmax is unchanged
                obj += c.lam * np.einsum("bg,bng->bn", p, np.log((1.0 - c.alpha) * q + ap + p_zero))
            if use_persona:
                qp = (persona_sum[:, None, :] + onehot) / (step + 1.0)
                obj += c.mu * np.einsum("bp,bnp->bn", w, np.log((1.0 - c.alpha) * qp + aw + w_zero))
            obj[taken] = -np.inf
            pick = np.argmax(obj, axis=1)  # first maximum: ties go to the better base rank
            ok = ~taken[rows, pick]
            picks[rows[ok], step] = pick[ok]
            taken[rows, pick] = True
            list_sum += cat[rows, pick] * ok[:, None]
            if use_persona:
                persona_sum += onehot[rows, pick] * ok[:, None]
        if c.resort:
            picks = np.where(picks >= 0, picks, n_cand)
            picks.sort(axis=1)
            picks = np.where(picks < n_cand, picks, -1)
        return np.where(picks >= 0, np.take_along_axis(cand, np.maximum(picks, 0), axis=1), -1)

    if use_exposure and c.exposure_chunk == 1:
        # Exposure after every user, as the product counts it (each list shown is added before
        # the next user's ranking). Exact but batched: a block of users is ranked against the
        # counts at its start; a user whose candidates' novelty changed meanwhile (an earlier
        # user of the block was shown one of them) is ranked again, alone, on the current
        # counts. Users are independent given their novelty, so this equals one-at-a-time.
        # (``inverse`` novelty changes with every showing: there users go one at a time.)
        valid_all = candidates >= 0
        step_users = min(c.chunk, SEQUENTIAL_BLOCK) if c.novelty == "unseen" else 1
        for s in range(0, n_users, step_users):
            sl = slice(s, s + step_users)
            nov0 = novelty_of(exposure[np.maximum(candidates[sl], 0)])
            chosen = block(sl, nov0)
            for j in range(chosen.shape[0]):
                r = s + j
                if j:
                    v = valid_all[r]
                    nov = novelty_of(exposure[np.maximum(candidates[r], 0)])
                    if not np.array_equal(nov[v], nov0[j][v]):
                        chosen[j] = block(slice(r, r + 1), nov[None, :])[0]
                out[r, :k] = chosen[j]
                np.add.at(exposure, chosen[j][chosen[j] >= 0], 1)
        return out
    step_users = min(c.chunk, c.exposure_chunk) if use_exposure else c.chunk
    for s in range(0, n_users, step_users):
        sl = slice(s, s + step_users)
        chosen = block(sl, novelty_of(exposure[np.maximum(candidates[sl], 0)]) if use_exposure else None)
        out[sl, :k] = chosen
        if use_exposure:
            np.add.at(exposure, chosen[chosen >= 0], 1)
    return out
