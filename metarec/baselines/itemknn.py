"""Item-kNN: score = sum of cosine similarities between a candidate and the history items.

Similarity is the cosine between item columns of the training users' 0/1 interaction
matrix, without shrinkage; ``neighbours`` keeps only each item's top-k similarities
(None keeps all, the reference protocol's setting).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from metarec.data.matrix import interaction_matrix
from metarec.data.splits import UserCase
from metarec.eval.recommender import Recommender


def keep_top_k(matrix: np.ndarray, k: int) -> np.ndarray:
    """Zero all but the ``k`` largest entries of each row of (R, C) ``matrix``.

    Exactly ``k`` survive per row; among equal values the lower column index wins.
    """
    if k >= matrix.shape[1]:
        return matrix
    top = np.argsort(-matrix, axis=1, kind="stable")[:, :k]
    kept = np.zeros_like(matrix)
    np.put_along_axis(kept, top, np.take_along_axis(matrix, top, axis=1), axis=1)
    return kept


@dataclass
class ItemKNNConfig:
    neighbours: int | None


def cosine_item_similarity(matrix: np.ndarray) -> np.ndarray:
    """(N, N) cosine between the columns of a (U, N) 0/1 matrix; unseen items get 0."""
    co_counts = matrix.T @ matrix
    norms = np.sqrt(np.diag(co_counts))
    norms[norms == 0] = 1.0
    return co_counts / norms[:, None] / norms[None, :]


class ItemKNN(Recommender):
    def __init__(self, config: ItemKNNConfig) -> None:
        self.config = config
        self.similarity: np.ndarray | None = None

    def fit(self, train_sequences: list[np.ndarray], n_items: int, valid: list[UserCase]) -> None:
        similarity = cosine_item_similarity(interaction_matrix(train_sequences, n_items))
        if self.config.neighbours is not None:
            np.fill_diagonal(similarity, 0.0)  # an item is not its own neighbour
            similarity = keep_top_k(similarity, self.config.neighbours)
        self.similarity = similarity.astype(np.float32)

    def score(self, histories: list[np.ndarray]) -> np.ndarray:
        return np.stack([self.similarity[history].sum(axis=0) for history in histories])
