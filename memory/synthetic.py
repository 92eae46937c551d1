"""A synthetic dataset with planted personas: the ground truth that tests check induction against.

Each item has a main topic (its first category) and text drawn from that topic's vocabulary.
Each user has 2-4 planted personas, each a topic with a weight; the user's positives are drawn
persona by persona, so every positive item carries the index of the persona that produced it.
A few low-rated items per user are noise (seen, not positive).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from memory.catalog import Catalog, Item
from memory.dataset import Dataset
from memory.interactions import InteractionLog

TOPICS: dict[str, tuple[str, ...]] = {
    "Space": ("starship", "galaxy", "alien", "orbit", "planet", "astronaut", "nebula", "rocket"),
    "Romance": ("love", "wedding", "kiss", "heart", "couple", "paris", "letters", "summer"),
    "Horror": ("ghost", "haunted", "blood", "curse", "zombie", "scream", "night", "cellar"),
    "Western": ("cowboy", "sheriff", "saloon", "desert", "outlaw", "horse", "frontier", "gold"),
    "Comedy": ("laugh", "prank", "silly", "party", "roommate", "chaos", "goofy", "road"),
    "War": ("soldier", "battle", "trench", "general", "army", "medal", "siege", "platoon"),
    "Animation": ("cartoon", "talking", "animals", "magic", "princess", "toys", "forest", "dragon"),
    "Documentary": ("true", "interview", "archive", "history", "nature", "science", "journalist", "footage"),
}


@dataclass(frozen=True)
class SyntheticData:
    """The dataset plus its ground truth."""

    dataset: Dataset
    planted: dict[str, dict[str, int]]
    """user id -> {positive item id -> planted persona index}."""
    user_topics: dict[str, list[str]]
    """user id -> the topic of each planted persona, in index order."""


def generate_synthetic(n_users: int = 120, n_items_per_topic: int = 40, min_personas: int = 2,
                       max_personas: int = 3, positives_per_user: tuple[int, int] = (30, 60),
                       secondary_topic_rate: float = 0.15, seed: int = 0) -> SyntheticData:
    """Generate a catalog and interaction log with planted personas (deterministic for a seed)."""
    rng = np.random.default_rng(seed)
    topics = list(TOPICS)
    items: list[Item] = []
    by_topic: dict[str, list[str]] = {t: [] for t in topics}
    for t_idx, topic in enumerate(topics):
        vocab = TOPICS[topic]
        for k in range(n_items_per_topic):
            iid = str(t_idx * n_items_per_topic + k + 1)
            words = list(rng.choice(vocab, size=4, replace=False))
            cats = [topic]
            if rng.random() < secondary_topic_rate:
                other = topics[int(rng.integers(len(topics)))]
                if other != topic:
                    cats.append(other)
                    words.append(str(rng.choice(TOPICS[other])))
            title = f"The {words[0].title()} {words[1].title()} ({1970 + int(rng.integers(50))})"
            text = f"{title}. A film about {', '.join(words)}. Genres: {', '.join(cats)}."
            items.append(Item(item_id=iid, title=title, text=text, categories=tuple(cats)))
            by_topic[topic].append(iid)
    # Zipf-like popularity inside each topic, so collaborative signal looks like real data
    pop = 1.0 / np.arange(1, n_items_per_topic + 1) ** 0.6
    pop /= pop.sum()

    users, its, ratings, stamps = [], [], [], []
    planted: dict[str, dict[str, int]] = {}
    user_topics: dict[str, list[str]] = {}
    all_ids = [it.item_id for it in items]
    for u in range(1, n_users + 1):
        uid = str(u)
        k = int(rng.integers(min_personas, max_personas + 1))
        chosen = [str(t) for t in rng.choice(topics, size=k, replace=False)]
        w = rng.dirichlet(np.full(k, 2.0))
        w = 0.15 + 0.85 * w  # every planted taste keeps a real share
        w /= w.sum()
        n_pos = int(rng.integers(positives_per_user[0], positives_per_user[1] + 1))
        counts = np.maximum(5, np.round(w * n_pos).astype(int))
        labels: dict[str, int] = {}
        t0 = 1_000_000_000 + int(rng.integers(10_000_000))
        for p_idx, (topic, c) in enumerate(zip(chosen, counts)):
            c = min(int(c), n_items_per_topic)
            picks = rng.choice(by_topic[topic], size=c, replace=False, p=pop)
            for iid in picks:
                labels[str(iid)] = p_idx
        order = list(labels)
        rng.shuffle(order)
        for n, iid in enumerate(order):
            users.append(uid)
            its.append(iid)
            ratings.append(float(rng.choice([4.0, 5.0])))
            stamps.append(t0 + 3600 * n)
        for iid in rng.choice(all_ids, size=3, replace=False):
            if iid not in labels:  # noise: seen, disliked
                users.append(uid)
                its.append(str(iid))
                ratings.append(float(rng.choice([1.0, 2.0])))
                stamps.append(t0 + 3600 * (len(order) + 1))
        planted[uid] = labels
        user_topics[uid] = chosen
    log = InteractionLog(users, its, ratings, stamps)
    ds = Dataset("synthetic", Catalog(items), log, source=f"synthetic(seed={seed})",
                 meta={"seed": seed, "n_users": n_users})
    return SyntheticData(ds, planted, user_topics)


# ---- large scale -------------------------------------------------------------------------------
@dataclass(frozen=True)
class LargeSynthetic:
    """A large synthetic dataset as arrays (no per-row Python objects): the catalog, the
    histories ready to build from, and the planted personas."""

    catalog: Catalog
    history: "HistoryIndex"  # noqa: F821 (memory.history imports this module's layer)
    user_topics: np.ndarray
    """(users, 3) planted persona topics per user (topic indices; -1 where the user has 2)."""
    item_topic: np.ndarray
    """(items,) each item's main topic index."""
    meta: dict

    def describe(self) -> dict:
        """Counts in the shape of :meth:`memory.dataset.Dataset.describe`."""
        h = self.history
        n_int = int(h.indptr[-1])
        return {"name": "synthetic-large", "source": f"generate_synthetic_large({self.meta})",
                "items": len(self.catalog), "users": len(h.user_ids), "interactions": n_int,
                "density": round(n_int / max(1, len(h.user_ids) * len(self.catalog)), 7),
                "rating_min": float(h.ratings.min()), "rating_max": float(h.ratings.max()),
                "categories": list(self.catalog.categories)}


def generate_synthetic_large(n_users: int = 10_000, n_items: int = 5_000, *, n_topics: int | None = None,
                             positives_per_user: tuple[int, int] = (20, 60), noise_per_user: int = 3,
                             zipf: float = 0.6, seed: int = 0) -> LargeSynthetic:
    """The planted-persona generator of :func:`generate_synthetic`, vectorised for millions of
    users: items split evenly over ``n_topics`` topics (default ``max(8, n_items // 250)``),
    each user 2-3 planted topics with Dirichlet weights (each keeps a real share), positives
    drawn per topic with Zipf-like popularity (repeats dropped), ``noise_per_user`` low-rated
    items anywhere. Deterministic for a seed; about 3 s and 2 GB per million users.

    Example:
        >>> data = generate_synthetic_large(n_users=1_000, n_items=500, seed=1)
        >>> len(data.catalog), len(data.history.user_ids)
        (500, 1000)
    """
    from memory.history import HistoryIndex

    if n_users <= 0 or n_items <= 0:
        raise ValueError(f"n_users and n_items must be positive, got {n_users} and {n_items}")
    rng = np.random.default_rng(seed)
    T = n_topics or max(8, n_items // 250)
    if T < 3 or T > n_items:
        raise ValueError(f"n_topics must be between 3 and n_items ({n_items}), got {T}")
    names = list(TOPICS)[:T] if T <= len(TOPICS) else [f"Topic {t + 1:03d}" for t in range(T)]
    item_topic = np.arange(n_items) * T // n_items  # contiguous, even blocks
    starts = np.searchsorted(item_topic, np.arange(T))
    sizes = np.bincount(item_topic, minlength=T)
    years = 1970 + rng.integers(0, 50, n_items)
    items = []
    for k in range(n_items):  # one cheap object per item: the catalog is items, not interactions
        t = names[item_topic[k]]
        vocab = TOPICS.get(t) or (f"{t.lower().replace(' ', '')}word{j}" for j in range(3))
        title = f"{t} story {k + 1} ({years[k]})"
        items.append(Item(item_id=str(k + 1), title=title, text=f"{title}. A film about {', '.join(vocab)}. "
                          f"Genres: {t}.", categories=(t,)))
    catalog = Catalog(items)

    # planted personas: 2-3 distinct topics per user
    k_u = rng.integers(2, 4, n_users)
    t1 = rng.integers(0, T, n_users)
    t2 = (t1 + 1 + rng.integers(0, T - 1, n_users)) % T
    t3 = rng.integers(0, T, n_users)
    for _ in range(64):
        bad = (t3 == t1) | (t3 == t2)
        if not bad.any():
            break
        t3[bad] = rng.integers(0, T, int(bad.sum()))
    topics = np.stack([t1, t2, np.where(k_u == 3, t3, -1)], axis=1)
    w = rng.gamma(2.0, size=(n_users, 3))
    w[k_u == 2, 2] = 0.0
    w /= w.sum(1, keepdims=True)
    w = np.where(topics >= 0, 0.15 + 0.85 * w, 0.0)
    w /= w.sum(1, keepdims=True)
    n_pos = rng.integers(positives_per_user[0], positives_per_user[1] + 1, n_users)
    counts = np.where(topics >= 0, np.maximum(4, np.round(w * n_pos[:, None])), 0).astype(np.int64)

    # draws: per (user, persona) ``count`` items of the topic by inverse CDF of the popularity
    flat_user = np.repeat(np.repeat(np.arange(n_users), 3), counts.ravel())
    flat_topic = np.repeat(topics.ravel(), counts.ravel())
    u01 = rng.random(len(flat_user))
    rank = np.floor(sizes[flat_topic] * u01 ** (1.0 / (1.0 - zipf))).astype(np.int64)  # ~ rank^-zipf
    pos_items = starts[flat_topic] + np.minimum(rank, sizes[flat_topic] - 1)
    noise_user = np.repeat(np.arange(n_users), noise_per_user)
    noise_items = rng.integers(0, n_items, len(noise_user))
    users = np.concatenate([flat_user, noise_user])
    its = np.concatenate([pos_items, noise_items])
    ratings = np.concatenate([rng.choice(np.array([4.0, 5.0], np.float32), len(flat_user)),
                              rng.choice(np.array([1.0, 2.0], np.float32), len(noise_user))])
    # one row per (user, item): the first draw wins (positives come first, so noise never hides one)
    _, first = np.unique(users * np.int64(n_items) + its, return_index=True)
    users, its, ratings = users[first], its[first], ratings[first]
    order_key = rng.random(len(users)) + (ratings < 3)  # positives in random order, noise last
    t0 = 1_000_000_000 + rng.integers(0, 10_000_000, n_users)
    o = np.lexsort((order_key, users))
    users, its, ratings = users[o], its[o], ratings[o]
    cnt = np.bincount(users, minlength=n_users)
    indptr = np.concatenate([[0], np.cumsum(cnt)]).astype(np.int64)
    within = np.arange(len(users)) - indptr[users]
    stamps = t0[users] + 3600 * within
    history = HistoryIndex([str(u + 1) for u in range(n_users)], indptr, its.astype(np.int64), ratings,
                           stamps.astype(np.int64), 4.0)
    meta = {"n_users": n_users, "n_items": n_items, "n_topics": T, "seed": seed,
            "positives_per_user": list(positives_per_user)}
    return LargeSynthetic(catalog, history, topics, item_topic, meta)
