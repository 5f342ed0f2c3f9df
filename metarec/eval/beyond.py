"""Beyond accuracy: how much of the catalogue, how novel, how concentrated, how varied.

All four read the top-K lists a method recommends to the test users:

- ``coverage@K``: distinct recommended items / catalogue size.
- ``novelty@K``: mean self-information −log₂ p(i) of recommended items, p(i) the share of
  training users who interacted with i, smoothed as (count + 1) / (users + 1) so unseen
  items are finite. Per user, then averaged.
- ``gini@K``: Gini coefficient of how often each catalogue item is recommended (0: every
  item equally often; near 1: a few items everywhere) — popularity bias.
- ``diversity@K``: mean pairwise cosine distance (1 − cos) between a list's items, in an
  embedding shared by all methods (items with a zero vector count as distance 1). Per user.
"""

from __future__ import annotations

import numpy as np


def user_counts(sequences: list[np.ndarray], n_items: int) -> np.ndarray:
    """(N,) how many of the users' histories hold each item (the popularity novelty reads)."""
    return np.bincount(np.concatenate([np.unique(s) for s in sequences]), minlength=n_items)


def coverage(lists: np.ndarray, n_items: int) -> float:
    """Share of the ``n_items`` catalogue in the (U, K) lists (-1 = empty slot)."""
    return len(np.unique(lists[lists >= 0])) / n_items


def novelty(lists: np.ndarray, popularity: np.ndarray, n_users: int) -> np.ndarray:
    """(U,) mean −log₂((count + 1) / (n_users + 1)) over each list; ``popularity`` (N,) counts."""
    information = -np.log2((popularity + 1.0) / (n_users + 1.0))
    real = lists >= 0
    values = np.where(real, information[np.clip(lists, 0, None)], 0.0)
    return values.sum(axis=1) / np.maximum(real.sum(axis=1), 1)


def gini(lists: np.ndarray, n_items: int) -> float:
    """Gini coefficient of the (N,) counts of each item across all lists."""
    counts = np.sort(np.bincount(lists[lists >= 0], minlength=n_items)).astype(np.float64)
    if counts.sum() == 0:
        return 0.0
    ranks = np.arange(1, n_items + 1)
    return float(((2 * ranks - n_items - 1) * counts).sum() / (n_items * counts.sum()))


def diversity(lists: np.ndarray, embeddings: np.ndarray) -> np.ndarray:
    """(U,) mean pairwise cosine distance within each list; ``embeddings`` (N, d)."""
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    unit = np.divide(embeddings, norms, out=np.zeros_like(embeddings), where=norms > 0)
    values = np.zeros(len(lists))
    for row, items in enumerate(lists):
        items = items[items >= 0]
        if len(items) < 2:
            continue
        similarity = unit[items] @ unit[items].T
        pairs = np.triu_indices(len(items), k=1)
        values[row] = float(np.mean(1.0 - similarity[pairs]))
    return values


def beyond_accuracy(
    lists: np.ndarray, k: int, popularity: np.ndarray, n_users: int, embeddings: np.ndarray
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Catalogue-level (``coverage@k``, ``gini@k``) and per-user (``novelty@k``,
    ``diversity@k``) measures of the first ``k`` items of each (U, ≥k) list."""
    top = lists[:, :k]
    n_items = len(popularity)
    catalogue = {f"coverage@{k}": coverage(top, n_items), f"gini@{k}": gini(top, n_items)}
    per_user = {
        f"novelty@{k}": novelty(top, popularity, n_users),
        f"diversity@{k}": diversity(top, embeddings),
    }
    return catalogue, per_user
