"""Score users with a recommender and turn the scores into per-user metrics.

Users are processed in batches so memory stays bounded by ``batch_size × catalogue``.
The history is excluded from the ranking; for the ``sampled`` protocol everything but
the candidates is excluded, so the same rank arithmetic serves both.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from metarec.data.splits import UserCase
from metarec.errors import MetarecError
from metarec.eval.metrics import all_metrics, relevant_ranks, subset_metrics

Scorer = Callable[[list[np.ndarray]], np.ndarray]


def case_ranks(scores: np.ndarray, cases: Sequence[UserCase]) -> np.ndarray:
    """(B, Q) ranks of each case's relevant items given (B, N) scores for those cases."""
    n_items = scores.shape[1]
    width = max(len(case.relevant) for case in cases)
    relevant = np.full((len(cases), width), -1, dtype=np.int64)
    excluded = np.zeros((len(cases), n_items), dtype=bool)
    for row, case in enumerate(cases):
        relevant[row, : len(case.relevant)] = case.relevant
        if case.candidates is None:
            excluded[row, case.history] = True
        else:
            excluded[row] = True
            excluded[row, case.candidates] = False
    return relevant_ranks(scores, relevant, excluded)


def top_k_mask(matrix: np.ndarray, k: int) -> np.ndarray:
    """(R, C) bool marking the ``k`` largest entries of each row of (R, C) ``matrix``.

    Exactly ``min(k, C)`` per row; among equal values the lower column index wins, as in
    a stable sort. Linear in R·C: the k-th largest value per row comes from a partition.
    """
    if k >= matrix.shape[1]:
        return np.ones(matrix.shape, dtype=bool)
    if k <= 0:
        return np.zeros(matrix.shape, dtype=bool)
    kth = np.partition(matrix, matrix.shape[1] - k, axis=1)[:, -k][:, None]
    above = matrix > kth
    at_kth = matrix == kth
    places_left = k - above.sum(axis=1, keepdims=True)
    return above | (at_kth & (np.cumsum(at_kth, axis=1) <= places_left))


def top_k_indices(matrix: np.ndarray, k: int) -> np.ndarray:
    """(R, min(k, C)) column indices of each row's ``k`` largest entries of (R, C)
    ``matrix``, best first; ties go to the lower index, as in a stable sort. Only the k
    best of each row are sorted: a partition per row, not a sort of the catalogue."""
    width = min(k, matrix.shape[1])
    best = np.nonzero(top_k_mask(matrix, width))[1].reshape(len(matrix), width)  # ascending
    order = np.argsort(-np.take_along_axis(matrix, best, axis=1), axis=1, kind="stable")
    return np.take_along_axis(best, order, axis=1)


def top_items(scores: np.ndarray, cases: Sequence[UserCase], k: int) -> np.ndarray:
    """(B, k) best item indices of (B, N) scores among what each case may rank (-1: none).

    Ties go to the lower item index, as in the metrics.
    """
    allowed = np.ones(scores.shape, dtype=bool)
    for row, case in enumerate(cases):
        if case.candidates is None:
            allowed[row, case.history] = False
        else:
            allowed[row] = False
            allowed[row, case.candidates] = True
    order = top_k_indices(np.where(allowed, scores, -np.inf), k)
    return np.where(np.take_along_axis(allowed, order, axis=1), order, -1)


def relevant_among(cases: Sequence[UserCase], items: np.ndarray, width: int) -> np.ndarray:
    """(U, width) bool: whether each case's relevant item (in order, padded) is in ``items``."""
    inside = np.zeros((len(cases), width), dtype=bool)
    for row, case in enumerate(cases):
        inside[row, : len(case.relevant)] = np.isin(case.relevant, items)
    return inside


def ranked_cases(
    score: Scorer,
    cases: Sequence[UserCase],
    ks: tuple[int, ...],
    batch_size: int = 128,
    name: str = "method",
    held_out: np.ndarray | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per-user metrics (each (U,), in ``cases`` order) and the (U, max(ks)) top lists.

    ``held_out``: item indices (coldstart-items) whose relevance is also measured alone,
    from the same ranking: ``held_out_<metric>``, NaN for users with no such relevant item.
    """
    chunks: list[np.ndarray] = []
    lists: list[np.ndarray] = []
    for start in range(0, len(cases), batch_size):
        batch = cases[start : start + batch_size]
        scores = np.asarray(score([case.history for case in batch]), dtype=np.float64)
        if not np.isfinite(scores).all():
            raise MetarecError(f"{name} produced NaN or infinite scores")
        chunks.append(case_ranks(scores, batch))
        lists.append(top_items(scores, batch, max(ks)))
    width = max(chunk.shape[1] for chunk in chunks)
    ranks = np.concatenate(
        [np.pad(c, ((0, 0), (0, width - c.shape[1])), constant_values=np.inf) for c in chunks]
    )
    per_user = all_metrics(ranks, ks)
    if held_out is not None:
        in_held_out = relevant_among(cases, held_out, width)
        for metric, values in subset_metrics(ranks, in_held_out, ks).items():
            per_user[f"held_out_{metric}"] = values
    return per_user, np.concatenate(lists)


def evaluate_cases(
    score: Scorer,
    cases: Sequence[UserCase],
    ks: tuple[int, ...],
    batch_size: int = 128,
    name: str = "method",
) -> dict[str, np.ndarray]:
    """Per-user metrics (each a (U,) array, in ``cases`` order) of a scoring function."""
    return ranked_cases(score, cases, ks, batch_size, name)[0]
