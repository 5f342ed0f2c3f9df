"""A seeded synthetic dataset with learnable structure, for fast tests.

Items belong to topics and carry text naming their topic. Each user prefers a few
topics (latent taste) and walks through them: the next item is usually the successor
of the current one within its topic, sometimes a jump to a fresh item of a preferred
topic. So popularity, item co-occurrence and order all carry signal, and a method
that learns nothing scores near chance.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from metarec.data.raw import RawData

TOPICS = ["space", "crime", "romance", "history", "comedy", "horror", "music", "sport"]


def synthetic_raw(
    n_users: int = 200,
    n_items: int = 120,
    min_length: int = 15,
    max_length: int = 40,
    n_topics: int = 6,
    follow_probability: float = 0.7,
    reverse_fraction: float = 0.0,
    seed: int = 0,
) -> RawData:
    """RawData of ``n_users`` users with histories of ``min_length..max_length`` items.

    A ``reverse_fraction`` of users walk their topics backwards (predecessor, not successor):
    a per-user rule the population model cannot know before seeing the user.
    """
    rng = np.random.default_rng(seed)
    topic_of_item = np.arange(n_items) % n_topics
    items_by_topic = [np.flatnonzero(topic_of_item == t) for t in range(n_topics)]
    popularity = rng.pareto(1.5, size=n_items) + 1.0
    rows = []
    for user in range(n_users):
        tastes = rng.choice(n_topics, size=2, replace=False)
        # drawn only when asked for, so reverse_fraction=0 keeps earlier seeds' datasets
        direction = -1 if reverse_fraction > 0 and rng.random() < reverse_fraction else 1
        available = sum(len(items_by_topic[topic]) for topic in tastes)
        length = min(int(rng.integers(min_length, max_length + 1)), available)
        seen: list[int] = []
        current = -1
        while len(seen) < length:
            if current >= 0 and rng.random() < follow_probability:
                topic_items = items_by_topic[topic_of_item[current]]
                position = int(np.searchsorted(topic_items, current))
                candidate = int(topic_items[(position + direction) % len(topic_items)])
            else:
                pool = items_by_topic[int(rng.choice(tastes))]
                weights = popularity[pool] / popularity[pool].sum()
                candidate = int(rng.choice(pool, p=weights))
            if candidate in seen:
                current = -1
                continue
            seen.append(candidate)
            current = candidate
        rows += [(user + 1, item + 1, 1_000_000 + 60 * step, 5.0) for step, item in enumerate(seen)]
    interactions = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "rating"])
    interactions["line"] = np.arange(1, len(interactions) + 1)
    items = pd.DataFrame(
        {
            "item_id": np.arange(1, n_items + 1),
            "text": [
                f"Item {i + 1} | {TOPICS[topic_of_item[i] % len(TOPICS)]}" for i in range(n_items)
            ],
            "line": np.arange(1, n_items + 1),
        }
    )
    return RawData(
        name="synthetic",
        interactions=interactions,
        interactions_path=Path("<synthetic interactions>"),
        items=items,
        items_path=Path("<synthetic items>"),
    )
