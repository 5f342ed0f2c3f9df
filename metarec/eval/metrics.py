"""Ranking metrics exactly as docs/protocols.md defines them, as small pure functions.

Everything derives from the 1-based rank of each relevant item in the full ranking of
the non-excluded items. Ties in score are broken by item index (lower first), the order
a stable descending sort gives, so results do not depend on the sorting algorithm.
"""

from __future__ import annotations

import numpy as np


def relevant_ranks(scores: np.ndarray, relevant: np.ndarray, excluded: np.ndarray) -> np.ndarray:
    """Rank of each relevant item among the non-excluded items.

    scores: (B, N) float; relevant: (B, Q) int item indices, -1 for padding;
    excluded: (B, N) bool, items removed from the ranking (never a relevant item).
    Returns (B, Q) float ranks starting at 1, ``inf`` at padding.
    """
    padded = relevant < 0
    safe = np.where(padded, 0, relevant)
    relevant_scores = np.take_along_axis(scores, safe, axis=1)[:, :, None]  # (B, Q, 1)
    item_index = np.arange(scores.shape[1])[None, None, :]
    all_scores = scores[:, None, :]
    ahead = (all_scores > relevant_scores) | (
        (all_scores == relevant_scores) & (item_index < safe[:, :, None])
    )
    ahead &= ~excluded[:, None, :]
    ranks = 1.0 + ahead.sum(axis=2)
    return np.where(padded, np.inf, ranks)


def _ideal_dcg(n_relevant: np.ndarray, k: int) -> np.ndarray:
    discounts = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(2, k + 2)))])
    return discounts[np.minimum(n_relevant, k)]


def metrics_at_k(ranks: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Per-user recall@k, ndcg@k, hr@k and precision@k from (B, Q) ranks (inf = padding).

    Every user needs at least one relevant item. Returns (B,) arrays keyed ``name@k``.
    """
    n_relevant = np.isfinite(ranks).sum(axis=1)
    if (n_relevant == 0).any():
        raise ValueError("every user needs at least one relevant item")
    hits = ranks <= k
    n_hits = hits.sum(axis=1)
    dcg = np.where(hits, 1.0 / np.log2(np.where(hits, ranks, 1.0) + 1.0), 0.0).sum(axis=1)
    return {
        f"recall@{k}": n_hits / np.minimum(n_relevant, k),
        f"ndcg@{k}": dcg / _ideal_dcg(n_relevant, k),
        f"hr@{k}": hits.any(axis=1).astype(np.float64),
        f"precision@{k}": n_hits / k,
    }


def reciprocal_rank(ranks: np.ndarray) -> np.ndarray:
    """Per-user 1 / rank of the first relevant item, (B, Q) ranks → (B,)."""
    return 1.0 / ranks.min(axis=1)


def all_metrics(ranks: np.ndarray, ks: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Every metric at every cutoff in ``ks`` plus ``mrr``, as per-user (B,) arrays."""
    per_user: dict[str, np.ndarray] = {}
    for k in ks:
        per_user.update(metrics_at_k(ranks, k))
    per_user["mrr"] = reciprocal_rank(ranks)
    return per_user


def subset_metrics(
    ranks: np.ndarray, in_subset: np.ndarray, ks: tuple[int, ...]
) -> dict[str, np.ndarray]:
    """`all_metrics` with only the relevant items marked in ``in_subset`` counted relevant.

    ranks: (B, Q) as `relevant_ranks` gives them; in_subset: (B, Q) bool. The other
    relevant items keep their places in the ranking, they just no longer count as hits.
    Returns (B,) arrays, NaN for users with no relevant item in the subset.
    """
    kept = in_subset & np.isfinite(ranks)
    users = kept.any(axis=1)
    subset_ranks = np.where(kept, ranks, np.inf)
    subset_ranks[~users, 0] = 1.0  # a stand-in so every row is defined; its values become NaN
    return {
        name: np.where(users, values, np.nan)
        for name, values in all_metrics(subset_ranks, ks).items()
    }


def bootstrap_ci(
    values: np.ndarray, n_resamples: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of (U,) per-user values."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(values), size=(n_resamples, len(values)))
    means = values[picks].mean(axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)
