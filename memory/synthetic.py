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
